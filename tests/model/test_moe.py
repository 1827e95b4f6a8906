"""MoE router and grouped dispatch against a per-token reference written from model.md §7.4."""

import pytest
import torch

from kvl_core.config import TextConfig
from kvl_core.model.moe import MoE


def make(seed=0, **kw):
    cfg = TextConfig(hidden_size=32, moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=3,
                     n_shared_experts=2, **kw)
    torch.manual_seed(seed)
    moe = MoE(cfg)
    with torch.no_grad():
        moe.gate.weight.normal_()
        moe.gate.e_score_correction_bias.uniform_(-0.3, 0.3)
    return cfg, moe


def per_token_reference(cfg, moe, x):
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        scores = torch.sigmoid(moe.gate.weight.float() @ x[t].float())
        choice = scores + moe.gate.e_score_correction_bias
        if (cfg.n_group or 1) > 1:
            groups = choice.view(cfg.n_group, -1)
            best = groups.topk(2, -1).values.sum(-1).topk(cfg.topk_group).indices
            allowed = torch.zeros(cfg.n_group, dtype=torch.bool)
            allowed[best] = True
            choice = torch.where(allowed.repeat_interleave(groups.shape[1]), choice, torch.tensor(float("-inf")))
        idx = choice.topk(cfg.num_experts_per_tok).indices
        w = scores[idx] / scores[idx].sum() * cfg.routed_scaling_factor
        for e, we in zip(idx.tolist(), w):
            out[t] += we * moe.experts[e](x[t])
        out[t] += moe.shared_experts(x[t])
    return out


@torch.no_grad()
def test_grouped_dispatch_equals_per_token_loop():
    cfg, moe = make()
    x = torch.randn(23, 32)
    torch.testing.assert_close(moe(x), per_token_reference(cfg, moe, x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_group_limited_routing_stays_inside_chosen_groups():
    cfg, moe = make(seed=1, n_group=4, topk_group=2)
    x = torch.randn(40, 32)
    torch.testing.assert_close(moe(x), per_token_reference(cfg, moe, x), atol=1e-5, rtol=1e-5)
    idx, _ = moe.gate(x)
    for row in idx // 2:  # experts per group = 2
        assert row.unique().numel() <= 2


def test_bias_selects_but_does_not_weight():
    cfg, moe = make(seed=2)
    x = torch.randn(5, 32)
    with torch.no_grad():
        moe.gate.e_score_correction_bias.zero_()
        moe.gate.e_score_correction_bias[7] = 100.0  # forces expert 7 into every token's set
    idx, w = moe.gate(x)
    assert (idx == 7).any(-1).all()
    assert torch.allclose(w.sum(-1), torch.full((5,), cfg.routed_scaling_factor))
    assert (w < cfg.routed_scaling_factor).all()  # weight comes from the unbiased score, not the bias


def test_gradients_reach_router_and_experts_but_not_bias():
    cfg, moe = make(seed=3)
    moe(torch.randn(11, 32)).square().sum().backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.gate.e_score_correction_bias.grad is None
    used = [e for e in moe.experts if e.gate_proj.weight.grad is not None]
    assert used and all(e.gate_proj.weight.grad.abs().sum() > 0 for e in used)


# ---- the grouped path used on CUDA (runs on the CPU too) --------------------------------------

IMPLS = ["grouped_mm", "pairs", "padded"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("n", [1, 3, 37])
@torch.no_grad()
def test_grouped_experts_equal_the_loop(impl, n):
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    cfg, moe = make(seed=4)
    x = torch.randn(n, 32)
    idx, w = moe.gate(x)
    loop = moe.routed(x, idx, w)
    got = moe.routed_grouped(x, idx, w, impl=impl)
    # Same per-token accumulation order (experts ascending) as the loop: equal up to the matmul
    # kernel's own blocking.
    torch.testing.assert_close(got, loop, atol=2e-6, rtol=1e-6)


@torch.no_grad()
def test_grouped_experts_bf16_close_to_fp32_loop():
    cfg, moe = make(seed=5)
    x = torch.randn(19, 32)
    idx, w = moe.gate(x)
    ref = moe.routed(x, idx, w)
    moe16 = moe.to(torch.bfloat16)
    got = moe16.routed_grouped(x.bfloat16(), idx, w, impl="padded")
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


@torch.no_grad()
def test_inference_stacks_share_memory_and_follow_loaded_weights():
    cfg, moe = make(seed=6)
    names = sorted(moe.state_dict())
    gu, dn = moe.expert_stacks()
    assert sorted(moe.state_dict()) == names  # checkpoint names unchanged
    e3 = moe.experts[3]
    assert e3.up_proj.weight.data_ptr() == gu[3, cfg.moe_intermediate_size:].data_ptr()
    assert e3.down_proj.weight.data_ptr() == dn[3].data_ptr()
    new = {k: torch.randn_like(v) for k, v in moe.state_dict().items()}
    moe.load_state_dict(new)
    gu2, dn2 = moe.expert_stacks()
    assert gu2.data_ptr() == gu.data_ptr()
    torch.testing.assert_close(dn2[5], new["experts.5.down_proj.weight"], atol=0, rtol=0)
    x = torch.randn(9, 32)
    idx, w = moe.gate(x)
    torch.testing.assert_close(moe.routed_grouped(x, idx, w, impl="pairs"), moe.routed(x, idx, w), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_grouped_path_trains_the_same_gradients_as_the_loop(impl):
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    cfg, moe = make(seed=7)
    x = torch.randn(13, 32)
    idx, w = moe.gate(x)
    moe.routed(x, idx, w).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None and ".experts." in n}
    moe.zero_grad(set_to_none=True)
    idx, w = moe.gate(x)
    moe.routed_grouped(x, idx, w, impl=impl).square().sum().backward()
    got = {n: p.grad for n, p in moe.named_parameters() if p.grad is not None and ".experts." in n}
    assert ref.keys() <= got.keys() and moe.gate.weight.grad is not None
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-5)
