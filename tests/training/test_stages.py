"""Stage recipes and their learning-rate schedules, checked against the paper's numbers (§2.3–2.4)."""

import math

import pytest

from kvl_core.errors import KvlError
from kvl_core.training.stages import STAGES, override, phase_bounds, stage


def test_every_stage_is_a_named_recipe():
    assert set(STAGES) == {"vit", "align", "pretrain", "cooldown", "longctx", "sft", "cot-sft"}
    for name in STAGES:
        cfg = stage(name)
        assert cfg.name == name and cfg.phases and abs(sum(p.fraction for p in cfg.phases) - 1) < 1e-9
    with pytest.raises(KvlError, match="unknown stage"):
        stage("rlhf")


def test_sft_schedule_is_the_papers():
    cfg = stage("sft")
    total = 1000
    (a0, b0), (a1, b1) = phase_bounds(cfg.phases, total)
    assert (a0, b0, a1, b1) == (0, 500, 500, 1000)
    assert [p.seq_len for p in cfg.phases] == [32768, 131072]
    peak1 = max(cfg.lr_at(s, total) for s in range(0, 500))
    assert math.isclose(peak1, 2e-5, rel_tol=1e-6)
    assert math.isclose(cfg.lr_at(499, total), 2e-6, rel_tol=1e-6)  # decays to 2e-6 ...
    peak2 = max(cfg.lr_at(s, total) for s in range(500, 1000))
    assert math.isclose(peak2, 1e-5, rel_tol=1e-6)  # ... re-warms to 1e-5 ...
    assert math.isclose(cfg.lr_at(999, total), 1e-6, rel_tol=1e-6)  # ... and ends at 1e-6
    assert cfg.lr_at(500, total) < 1e-5  # the second phase starts with a warm-up, not a jump
    assert cfg.supervise == "assistant"


def test_longctx_changes_rope_base_and_quadruples_context_twice():
    cfg = stage("longctx")
    assert [p.rope_theta for p in cfg.phases] == [800000.0, 800000.0]
    assert [p.seq_len for p in cfg.phases] == [4 * 8192, 16 * 8192]
    assert cfg.long_ratio == 0.25


def test_pretrain_ramps_the_multimodal_share_after_text_only_steps():
    cfg = stage("pretrain")
    assert cfg.multimodal_share(0, 1000) == 0.0
    shares = [cfg.multimodal_share(s, 1000) for s in range(0, 1000, 50)]
    assert shares == sorted(shares) and math.isclose(cfg.multimodal_share(999, 1000), 0.4)


def test_align_trains_only_vision_and_projector():
    assert stage("align").trainable == ["vision_tower", "multi_modal_projector"]
    assert stage("vit").loss == "coca" and stage("vit").caption_weight == 2.0


def test_override_rescales_lengths_and_lrs():
    cfg = override(stage("sft"), seq_len=64, lr=1e-3)
    assert [p.seq_len for p in cfg.phases] == [64, 256]
    assert math.isclose(cfg.phases[0].lr_peak, 1e-3) and math.isclose(cfg.phases[1].lr_peak, 5e-4)
    assert math.isclose(cfg.phases[0].lr_end, 1e-4)
