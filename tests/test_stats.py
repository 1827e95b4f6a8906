"""Parameter counts, checkpoint layout and KV-cache size computed from a config alone (kvl_core/stats.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvl_core import stats
from kvl_core.config import KimiVLConfig, kimi_vl_a3b, tiny


def test_real_config_counts_match_the_reference_exactly():
    # model.md §1.3: counts of the reference implementation with the released config.
    p = stats.param_stats(kimi_vl_a3b())
    assert p.vision == 416_866_032
    assert p.projector == 30_679_808
    assert p.lm_total == 15_960_110_208
    assert p.total == 16_407_656_048


def test_real_config_active_parameters():
    p = stats.param_stats(kimi_vl_a3b())
    # Worked out by hand: per MoE layer gate 64*2048 + bias 64, 6 of 64 experts at 3*1408*2048, shared 3*2816*2048.
    moe_active = 64 * 2048 + 64 + 6 * 3 * 1408 * 2048 + 3 * 2816 * 2048
    attn = 3072 * 2048 + 576 * 2048 + 512 + 4096 * 512 + 2048 * 2048
    non_embedding = 27 * (attn + 2 * 2048) + 3 * 11264 * 2048 + 26 * moe_active + 2048
    table = 163840 * 2048
    assert p.lm_active_non_embedding == non_embedding == 2_243_687_552
    assert p.lm_active_without_embedding_table == non_embedding + table
    assert p.lm_active == non_embedding + 2 * table == 2_914_776_192  # ~2.9B: the "A3B" headline figure
    assert p.lm["routed_experts"].total == 26 * 64 * 3 * 1408 * 2048
    assert p.lm["routed_experts"].active == 26 * 6 * 3 * 1408 * 2048
    assert p.active == p.lm_active + p.vision + p.projector
    # Every category but the routed experts is fully active.
    assert all(c.total == c.active for k, c in p.lm.items() if k != "routed_experts")


def test_real_config_tensor_count_matches_model_md():
    names = stats.expected_tensors(kimi_vl_a3b())
    # model.md §11: 27 ViT blocks x 12, 26 MoE layers x (2 + 192 + 3) tensors.
    vit = 3 + 27 * 12 + 2
    lm = 1 + 27 * (2 + 5) + 3 + 26 * (2 + 64 * 3 + 3) + 1 + 1
    assert len(names) == vit + 6 + lm
    assert names["language_model.model.layers.26.mlp.experts.63.down_proj.weight"] == (2048, 1408)
    assert names["language_model.model.layers.5.self_attn.kv_a_proj_with_mqa.weight"] == (576, 2048)
    assert names["multi_modal_projector.linear_1.weight"] == (4608, 4608)
    assert names["vision_tower.patch_embed.pos_emb.weight"] == (64, 64, 1152)
    assert "language_model.model.layers.0.mlp.gate.weight" not in names  # layer 0 is dense


def test_counts_are_the_sum_over_expected_tensors():
    for cfg in (kimi_vl_a3b(), tiny()):
        p = stats.param_stats(cfg)
        assert p.total == sum(math.prod(s) for s in stats.expected_tensors(cfg).values())


def test_expected_tensors_match_the_fixture_checkpoint(tiny_dir):
    from safetensors import safe_open

    cfg = KimiVLConfig.from_file(tiny_dir / "config.json")
    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert stats.expected_tensors(cfg) == stored
    assert stats.param_stats(cfg).total == sum(math.prod(s) for s in stored.values()) == 361_776


def test_meta_model_has_exactly_the_expected_tensors():
    torch = pytest.importorskip("torch")
    try:
        from kvl_core.model import KimiVLForConditionalGeneration
    except ImportError:
        pytest.skip("kvl_core.model is not available")
    # The real config (3 s on meta) is covered by the model's own tests; the tiny one exercises every family.
    for cfg in (tiny(),):
        with torch.device("meta"):
            model = KimiVLForConditionalGeneration(cfg)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == stats.expected_tensors(cfg)
        assert sum(p.numel() for p in model.parameters()) == stats.param_stats(cfg).total


def test_layout_variants():
    base = tiny()
    tied = dataclasses.replace(base, text=dataclasses.replace(base.text, tie_word_embeddings=True))
    assert "language_model.lm_head.weight" not in stats.expected_tensors(tied)
    assert stats.param_stats(base).total - stats.param_stats(tied).total == 300 * 64
    assert "lm_head" not in stats.param_stats(tied).lm

    lora = dataclasses.replace(base, text=dataclasses.replace(base.text, q_lora_rank=24, attention_bias=True))
    names = stats.expected_tensors(lora)
    a = "language_model.model.layers.0.self_attn."
    assert names[a + "q_a_proj.weight"] == (24, 64)
    assert names[a + "q_a_proj.bias"] == (24,)
    assert names[a + "q_b_proj.weight"] == (4 * 24, 24)
    assert names[a + "o_proj.bias"] == (64,)
    assert a + "q_proj.weight" not in names
    assert stats.lm_category(a + "q_a_layernorm.weight") == "norms"

    softmax = dataclasses.replace(base, text=dataclasses.replace(base.text, topk_method="greedy"))
    assert not any("e_score_correction_bias" in n for n in stats.expected_tensors(softmax))


def test_lm_categories():
    assert stats.lm_category("language_model.model.layers.3.mlp.gate.e_score_correction_bias") == "router"
    assert stats.lm_category("language_model.model.layers.3.mlp.experts.7.up_proj.weight") == "routed_experts"
    assert stats.lm_category("language_model.model.layers.3.mlp.shared_experts.up_proj.weight") == "shared_experts"
    assert stats.lm_category("language_model.model.layers.0.mlp.up_proj.weight") == "dense_mlp"
    assert stats.lm_category("language_model.model.layers.0.self_attn.kv_a_layernorm.weight") == "norms"
    with pytest.raises(ValueError):
        stats.lm_category("language_model.model.layers.0.something_new.weight")


def test_kv_cache_per_token():
    kv = stats.kv_cache_stats(kimi_vl_a3b())
    assert kv.dtype == "bfloat16"
    assert kv.latent_values_per_token == 576 * 27
    assert kv.latent_bytes_per_token == 576 * 27 * 2
    assert kv.naive_values_per_token == 27 * 16 * (192 + 128)
    assert kv.naive_bytes_per_token == 27 * 16 * 320 * 2
    assert stats.kv_cache_stats(kimi_vl_a3b(), "float32").latent_bytes_per_token == 576 * 27 * 4
    assert stats.kv_cache_stats(kimi_vl_a3b(), "torch.float16").latent_bytes_per_token == 576 * 27 * 2
    with pytest.raises(ValueError):
        stats.dtype_bytes("complex32")
