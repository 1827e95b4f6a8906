"""Fresh-model initialisation per part (kvl_core.training.init): the scale each part starts at."""

import math

import pytest
import torch

from kvl_core.config import preset
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.training.init import init_weights, parse_scheme, part_rules


@pytest.fixture(scope="module")
def nano_params():
    cfg = preset("nano")
    cfg.torch_dtype = "float32"
    out = {}
    for scheme in ("kvl", "legacy", "kvl:zero_out=1"):
        torch.manual_seed(0)
        model = KimiVLForConditionalGeneration(cfg)
        init_weights(model, cfg.text.initializer_range, seed=0, scheme=scheme)
        out[scheme] = dict(model.named_parameters())
    return out


def _std(p):
    return float(p.detach().float().std())


def test_kvl_scheme_is_fan_in_scaled_in_the_vision_tower_and_projector(nano_params):
    p = nano_params["kvl"]
    conv = p["vision_tower.patch_embed.proj.weight"]  # [192, 3, 14, 14]: fan-in 588
    assert conv.shape == (192, 3, 14, 14)
    assert _std(conv) == pytest.approx(1 / math.sqrt(588), rel=0.05)
    qkv = p["vision_tower.encoder.blocks.0.wqkv.weight"]  # [576, 192]
    assert _std(qkv) == pytest.approx(1 / math.sqrt(192), rel=0.05)
    lin1 = p["multi_modal_projector.linear_1.weight"]  # [768, 768]
    assert _std(lin1) == pytest.approx(1 / math.sqrt(768), rel=0.05)
    assert _std(p["vision_tower.patch_embed.pos_emb.weight"]) == pytest.approx(1.0, rel=0.05)


def test_kvl_scheme_keeps_the_language_model_at_deepseeks_std(nano_params):
    p = nano_params["kvl"]
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight",
                 "language_model.model.layers.0.self_attn.o_proj.weight"):
        assert _std(p[name]) == pytest.approx(0.02, rel=0.05), name


def test_biases_norms_and_router_bias(nano_params):
    for p in nano_params.values():
        for name, t in p.items():
            if name.endswith("e_score_correction_bias") or (t.dim() == 1 and "norm" not in name):
                assert torch.count_nonzero(t) == 0, name
            elif t.dim() == 1:
                assert torch.all(t == 1), name


def test_legacy_scheme_is_the_old_rule_everywhere(nano_params):
    p = nano_params["legacy"]
    for name in ("vision_tower.patch_embed.proj.weight", "vision_tower.patch_embed.pos_emb.weight",
                 "multi_modal_projector.linear_1.weight", "language_model.model.embed_tokens.weight"):
        assert _std(p[name]) == pytest.approx(0.02, rel=0.05), name


def test_zero_out_zeroes_each_residual_output_projection_only(nano_params):
    p = nano_params["kvl:zero_out=1"]
    assert torch.count_nonzero(p["vision_tower.encoder.blocks.0.wo.weight"]) == 0
    assert torch.count_nonzero(p["vision_tower.encoder.blocks.0.mlp.fc1.weight"]) == 0
    assert torch.count_nonzero(p["language_model.model.layers.0.self_attn.o_proj.weight"]) == 0
    assert torch.count_nonzero(p["vision_tower.encoder.blocks.0.wqkv.weight"]) > 0


def test_same_seed_same_tensors_other_seed_other_tensors():
    cfg = preset("tiny")
    cfg.torch_dtype = "float32"
    a, b, c = (KimiVLForConditionalGeneration(cfg) for _ in range(3))
    init_weights(a, 0.02, 3)
    init_weights(b, 0.02, 3)
    init_weights(c, 0.02, 4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["vision_tower.patch_embed.proj.weight"], sc["vision_tower.patch_embed.proj.weight"])


def test_scheme_strings_are_checked():
    assert parse_scheme("kvl:pos=0.02,zero_out=1") == ("kvl", {"pos": "0.02", "zero_out": "1"})
    with pytest.raises(ValueError, match="unknown init scheme"):
        parse_scheme("xavier")
    with pytest.raises(ValueError, match="unknown init override"):
        part_rules("kvl", 0.02, {"lr": "1"})
