"""config.json reading: the reference-defaults trap, validation, round trip, presets."""

import json

import pytest

from kvl_core.config import KimiVLConfig, kimi_vl_a3b, preset, tiny
from kvl_core.errors import KvlError


def test_fixture_config_reads_as_the_tiny_preset(tiny_dir):
    cfg = KimiVLConfig.from_file(tiny_dir / "config.json")
    assert cfg == tiny()


def test_missing_text_keys_mean_the_reference_defaults_not_kimi_values():
    # The reference builds text_config through DeepSeek-V3's config class, so an absent key means
    # DeepSeek-V3-671B's default (rms_norm_eps 1e-6, rope_theta 1e4), not Kimi-VL's 1e-5 / 8e5.
    d = kimi_vl_a3b().to_hf_dict()
    for key in ("rms_norm_eps", "rope_theta", "num_nextn_predict_layers", "q_lora_rank"):
        del d["text_config"][key]
    cfg = KimiVLConfig.from_hf_dict(d)
    assert cfg.text.rms_norm_eps == 1e-6
    assert cfg.text.rope_theta == 10000.0
    assert cfg.text.num_nextn_predict_layers == 1
    assert cfg.text.q_lora_rank == 1536
    assert cfg.text.hidden_size == 2048  # present keys win


def test_round_trip_and_real_preset_shape(tmp_path):
    cfg = kimi_vl_a3b()
    cfg.save(tmp_path / "config.json")
    again = KimiVLConfig.from_file(tmp_path / "config.json")
    assert again == cfg
    assert (cfg.text.kv_lora_rank, cfg.text.n_routed_experts, cfg.vision.num_hidden_layers) == (512, 64, 27)
    assert cfg.media_placeholder_token_id == 163605


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(model_type="llava"), "unsupported model_type 'llava'"),
    (lambda d: d["text_config"].update(model_type="llama"), "text_config.model_type"),
    (lambda d: d["vision_config"].update(hidden_size=70), "divisible"),
    (lambda d: d["text_config"].update(num_key_value_heads=2), "num_key_value_heads"),
    (lambda d: d["text_config"].update(rope_scaling={"type": "yarn", "factor": 4}), "rope_scaling"),
])
def test_bad_configs_are_named(tmp_path, mutate, message):
    d = tiny().to_hf_dict()
    mutate(d)
    p = tmp_path / "config.json"
    p.write_text(json.dumps(d))
    with pytest.raises(KvlError, match=message) as e:
        KimiVLConfig.from_file(p)
    assert str(p) in str(e.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(KvlError, match="no such file"):
        KimiVLConfig.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(KvlError, match="not valid JSON"):
        KimiVLConfig.from_file(tmp_path / "bad.json")


def test_presets():
    assert preset("tiny").text.hidden_size == 64
    with pytest.raises(KvlError, match="unknown preset"):
        preset("huge")
