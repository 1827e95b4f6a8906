"""kvl Muon vs its oracles (training.md §1.4): torch.optim.Muon(adjust_lr_fn="match_rms_adamw") for
the Muon branch, torch.optim.AdamW for the AdamW branch, and an SVD-based closed form of NS5."""

from __future__ import annotations

import inspect
import io
import math
import textwrap

import pytest
import torch
from torch import nn

from kvl_core.training.muon import (
    NS_COEFFICIENTS,
    Muon,
    classify_params,
    count_muon_matrices,
    muon_scale,
    param_groups_for,
    zeropower_via_newtonschulz,
)

F32 = torch.float32


def _params(*shapes, seed=0, dtype=F32):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) * 0.1) for s in shapes]


def _grads(params, step, seed=100, scale=1.0):
    g = torch.Generator().manual_seed(seed + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * scale


# ---- Newton–Schulz ------------------------------------------------------------------------------


def _ns_closed_form(G: torch.Tensor, steps=5, eps=1e-7) -> torch.Tensor:
    """NS5 acts on singular values only: with X0 = G/(‖G‖_F+eps) = U diag(s) Vᵀ, each iteration maps
    s -> a·s + b·s³ + c·s⁵. An independent fp64 oracle for the matrix iteration."""
    a, b, c = NS_COEFFICIENTS
    G = G.double()
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    s = S / (torch.linalg.matrix_norm(G)[..., None] + eps)
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return U @ torch.diag_embed(s) @ Vh


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (64, 64), (3, 24, 40), (3, 40, 24)])
def test_ns_matches_singular_value_polynomial(shape):
    G = torch.randn(*shape, dtype=torch.float64)
    out = zeropower_via_newtonschulz(G, dtype=torch.float64)
    torch.testing.assert_close(out, _ns_closed_form(G), rtol=0, atol=1e-10)


def test_ns_rank_deficient_and_default_dtype():
    G = torch.randn(64, 4, dtype=torch.float64) @ torch.randn(4, 96, dtype=torch.float64)  # rank 4
    torch.testing.assert_close(zeropower_via_newtonschulz(G, dtype=torch.float64), _ns_closed_form(G),
                               rtol=0, atol=1e-10)
    out = zeropower_via_newtonschulz(torch.randn(32, 64))
    assert out.dtype == torch.bfloat16  # the report's default
    sv = torch.linalg.svdvals(out.float())
    assert 0.5 < sv.min() and sv.max() < 1.5  # "approximately orthogonal" band of NS5


# ---- oracle: torch.optim.Muon ---------------------------------------------------------------------


@pytest.fixture
def torch_muon_fp32(monkeypatch):
    """torch.optim.Muon with its own NS code run in fp32 instead of its hard-wired bf16.

    torch 2.13's `_zeropower_via_newtonschulz` casts with `grad.bfloat16()`; we re-compile that
    source with `grad.float().clone()` (the bf16 cast made a copy, and the NS then works in place).
    torch's addmm formulation stays, so the oracle remains an independent implementation."""
    mod = pytest.importorskip("torch.optim._muon")
    src = textwrap.dedent(inspect.getsource(mod._zeropower_via_newtonschulz))
    if "grad.bfloat16()" not in src:
        pytest.skip("this torch's Muon NS source changed; cannot make an fp32 oracle")
    scope = dict(vars(mod))
    exec(compile(src.replace("grad.bfloat16()", "grad.float().clone()"), "<torch Muon NS fp32>", "exec"), scope)
    monkeypatch.setattr(mod, "_zeropower_via_newtonschulz", scope["_zeropower_via_newtonschulz"])
    return torch.optim.Muon


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_muon_fp32(torch_muon_fp32, nesterov):
    """Same update within fp32 rounding.

    torch keeps the EMA buffer B = (1-μ)·M (M = Moonlight's sum-form buffer), so its NS input is
    (1-μ)·U. NS divides by the Frobenius norm, hence NS((1-μ)U) = NS(U) except for the eps term
    (ours ‖U‖+eps, torch max(‖U‖, eps)): a relative 1e-7/‖U‖ ≈ 1e-9 here. What remains is fp32
    rounding of two operation orders, which the quintic's large slope amplifies to ~1e-6 relative
    per update (measured here: ≤ 4.6e-6, as training.md §1.4). Bounds: 2e-5 relative per update,
    1e-6 absolute on weights that moved by 3e-2–5e-2 over 5 steps (measured max |ΔW|: 9e-8).
    """
    shapes = [(64, 128), (128, 64), (96, 96)]
    ours, theirs = _params(*shapes), _params(*shapes)
    start = [p.detach().clone() for p in ours]
    lr, wd = 2e-2, 0.1
    a = Muon([dict(params=ours[:2]), dict(params=ours[2:], lr=lr / 2, weight_decay=0.0)], lr=lr,
             weight_decay=wd, nesterov=nesterov, ns_dtype=F32)
    b = torch_muon_fp32([dict(params=theirs[:2]), dict(params=theirs[2:], lr=lr / 2, weight_decay=0.0)], lr=lr,
                        weight_decay=wd, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    for step in range(5):
        before_a = [p.detach().clone() for p in ours]
        before_b = [p.detach().clone() for p in theirs]
        _grads(ours, step)
        _grads(theirs, step)
        a.step()
        b.step()
        for pa, pb, xa, xb in zip(ours, theirs, before_a, before_b):
            da, db = pa.detach() - xa, pb.detach() - xb
            assert (da - db).norm() / db.norm() < 2e-5, (step, tuple(pa.shape))
    for pa, pb, p0 in zip(ours, theirs, start):
        assert (pa - pb).abs().max() < 1e-6
        assert (pa - p0).abs().max() > 1e-2  # the comparison is not vacuous


def test_muon_bf16_close_to_torch_bf16_on_full_rank_grads():
    """Both sides in bf16 (the shipped defaults): two bf16 formulations differ by their rounding,
    ~3e-2 relative per update on full-rank gradients (measured 3.0e-2–3.3e-2, as training.md §1.4);
    bound 6e-2."""
    if not hasattr(torch.optim, "Muon"):
        pytest.skip("torch.optim.Muon needs torch >= 2.9")
    ours, theirs = _params((128, 96)), _params((128, 96))
    a = Muon(ours, lr=1e-2)  # default ns_dtype is bf16
    b = torch.optim.Muon(theirs, lr=1e-2, adjust_lr_fn="match_rms_adamw")
    x0 = ours[0].detach().clone()
    _grads(ours, 0)
    _grads(theirs, 0)
    a.step()
    b.step()
    da, db = ours[0].detach() - x0, theirs[0].detach() - x0
    assert (da - db).norm() / db.norm() < 6e-2


def test_momentum_is_moonlight_sum_form_and_weight_decay_decoupled():
    """M_t = μM_{t-1} + G_t (state), U = G + μM (Nesterov), W ← W(1-ηλ) - η·0.2√max(A,B)·NS(U)."""
    (p,) = _params((24, 40))
    lr, wd, mu = 3e-2, 0.1, 0.95
    opt = Muon([p], lr=lr, weight_decay=wd, ns_dtype=torch.float64)
    g1, g2 = torch.randn(24, 40), torch.randn(24, 40)
    p.grad = g1.clone()
    opt.step()
    w1 = p.detach().clone()
    p.grad = g2.clone()
    opt.step()
    M = mu * g1 + g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], M, rtol=0, atol=1e-6)
    O = zeropower_via_newtonschulz(g2 + mu * M, dtype=torch.float64).float()
    expect = w1 * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * O
    torch.testing.assert_close(p.detach(), expect, rtol=0, atol=1e-7)


def test_zero_gradient_leaves_only_decay():
    """Decay uses the plain lr (not the 0.2·√max-scaled one) and applies to both branches."""
    m, v = _params((16, 32), (32,))
    m0, v0 = m.detach().clone(), v.detach().clone()
    opt = Muon([dict(params=[m]), dict(params=[v], algo="adamw")], lr=0.5, weight_decay=0.1, ns_dtype=F32)
    m.grad, v.grad = torch.zeros_like(m), torch.zeros_like(v)
    opt.step()
    assert torch.equal(m.detach(), m0 * (1 - 0.05))
    assert torch.equal(v.detach(), v0 * (1 - 0.05))


# ---- AdamW branch ---------------------------------------------------------------------------------


def test_adamw_branch_matches_torch_adamw():
    shapes = [(300, 64), (64,), (8, 8, 64)]
    ours, theirs = _params(*shapes), _params(*shapes)
    a = Muon(ours, algo="adamw", lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), adam_eps=1e-8)
    b = torch.optim.AdamW(theirs, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    for step in range(6):
        _grads(ours, step)
        _grads(theirs, step)
        a.step()
        b.step()
    for pa, pb in zip(ours, theirs):
        # same formula; only Python-float rounding of the bias corrections may differ
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-8)
    assert a.state[ours[0]]["step"] == 6


# ---- stacks, 4-D, validation ---------------------------------------------------------------------


def test_stacked_3d_and_stacked_group_equal_per_matrix_updates():
    E, A, B = 4, 24, 40
    (stack3d,) = _params((E, A, B))
    singles = [nn.Parameter(stack3d.detach()[e].clone()) for e in range(E)]
    grouped = [nn.Parameter(stack3d.detach()[e].clone()) for e in range(E)]
    o3 = Muon([stack3d], lr=2e-2, ns_dtype=F32)
    o2 = Muon(singles, lr=2e-2, ns_dtype=F32)
    og = Muon([dict(params=grouped, stack=True)], lr=2e-2, ns_dtype=F32)
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        G = torch.randn(E, A, B, generator=g)
        G[1] *= 1e3  # per-matrix normalisation: one large expert must not shrink the others' updates
        stack3d.grad = G.clone()
        for e in range(E):
            singles[e].grad = G[e].clone()
            grouped[e].grad = G[e].clone()
        o3.step(), o2.step(), og.step()
    for e in range(E):
        torch.testing.assert_close(stack3d.detach()[e], singles[e].detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(grouped[e].detach(), singles[e].detach(), rtol=0, atol=1e-6)
    assert o3.ns_calls == 3 and o3.ns_matrices == 3 * E
    assert og.ns_calls == 3 and og.ns_matrices == 3 * E
    assert o2.ns_calls == 3 * E


def test_4d_flatten_and_shape_validation():
    (conv,) = _params((8, 3, 3, 3))
    c0 = conv.detach().clone()
    opt = Muon([dict(params=[conv], flatten=True)], lr=1e-2, weight_decay=0.0, ns_dtype=torch.float64)
    G = torch.randn(8, 3, 3, 3)
    conv.grad = G.clone()
    opt.step()
    O = zeropower_via_newtonschulz((1 + 0.95) * G.reshape(8, 27), dtype=torch.float64).float().reshape(8, 3, 3, 3)
    torch.testing.assert_close(conv.detach(), c0 - 1e-2 * muon_scale((8, 27)) * O, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="4-D only with flatten"):
        Muon(_params((8, 3, 3, 3)))
    with pytest.raises(ValueError, match="1-D"):
        Muon(_params((8,)))
    with pytest.raises(ValueError, match="one shape"):
        Muon([dict(params=_params((4, 8), (8, 4)), stack=True)])
    with pytest.raises(ValueError, match="algo"):
        Muon(_params((4, 8)), algo="sgd")


def test_params_without_grad_get_no_state_and_are_untouched():
    a, b, c = _params((16, 32), (16, 32), (32,))
    b0 = b.detach().clone()
    c.requires_grad_(False)
    opt = Muon([dict(params=[a, b]), dict(params=[c], algo="adamw")], lr=1e-2, ns_dtype=F32)
    a.grad = torch.randn_like(a)
    opt.step()
    assert a in opt.state and b not in opt.state and c not in opt.state
    assert torch.equal(b.detach(), b0)  # no grad: no decay either (torch semantics)
    assert opt.ns_matrices == 1


def test_ns_counter_counts_matrices():
    ps = _params((16, 32), (32, 16), (3, 8, 16))
    opt = Muon([dict(params=ps[:2]), dict(params=ps[2:])], lr=1e-2, ns_dtype=F32)
    assert count_muon_matrices(opt.param_groups) == 5
    _grads(ps, 0)
    opt.step()
    assert (opt.ns_calls, opt.ns_matrices) == (3, 5)
    assert sorted(opt.last_ns_params) == [0, 1, 2]
    ps[0].grad = None
    opt.step()
    assert (opt.ns_calls, opt.ns_matrices) == (5, 9)


def test_update_rms_is_about_point_two_lr_on_full_rank_grads():
    """Lemma 1: full-rank NS output has RMS ≈ 1/√max(A,B); times 0.2·√max(A,B) gives ≈ 0.2 (NS5's
    singular values sit a little below 1, training.md measured 0.18–0.19)."""
    ps = _params((256, 256), (512, 128), (128, 512))
    lr = 1e-3
    opt = Muon([dict(params=[p]) for p in ps], lr=lr, weight_decay=0.0, ns_dtype=F32)
    before = [p.detach().clone() for p in ps]
    _grads(ps, 0)
    opt.step()
    for rms, p, p0 in zip(opt.last_update_rms, ps, before):
        assert 0.15 < rms / lr < 0.25
        measured = (p.detach() - p0).pow(2).mean().sqrt().item()
        assert measured == pytest.approx(rms, rel=1e-3)


# ---- checkpoints ----------------------------------------------------------------------------------


def test_state_dict_roundtrip_weights_only_continues_identically():
    def make():
        ps = _params((16, 32), (2, 8, 16), (32,))
        return ps, Muon([dict(params=ps[:2]), dict(params=ps[2:], algo="adamw")], lr=1e-2, ns_dtype=F32)

    ref, ro = make()
    for s in range(4):
        _grads(ref, s)
        ro.step()
    ps, opt = make()
    for s in range(2):
        _grads(ps, s)
        opt.step()
    buf = io.BytesIO()
    torch.save({"optim": opt.state_dict(), "params": [p.detach() for p in ps]}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)  # only tensors and plain Python values inside
    assert ck["optim"]["param_groups"][0]["ns_dtype"] == "float32"
    ps2, opt2 = make()
    with torch.no_grad():
        for p, v in zip(ps2, ck["params"]):
            p.copy_(v)
    opt2.load_state_dict(ck["optim"])
    for s in range(2, 4):
        _grads(ps2, s)
        opt2.step()
    for a, b in zip(ps2, ref):
        assert torch.equal(a, b)


# ---- which parameter goes where -----------------------------------------------------------------


def test_param_groups_for_tiny_kimi_vl():
    from kvl_core.config import tiny
    from kvl_core.model import KimiVLForConditionalGeneration

    model = KimiVLForConditionalGeneration(tiny())
    roles = classify_params(model)
    lm = "language_model.model.layers"
    expect = {
        f"{lm}.0.self_attn.q_proj.weight": "muon",
        f"{lm}.0.self_attn.kv_a_proj_with_mqa.weight": "muon",
        f"{lm}.0.self_attn.kv_b_proj.weight": "muon",
        f"{lm}.0.self_attn.o_proj.weight": "muon",
        f"{lm}.0.mlp.down_proj.weight": "muon",  # dense MLP
        f"{lm}.1.mlp.gate.weight": "muon",  # router
        f"{lm}.1.mlp.experts.5.up_proj.weight": "muon",
        f"{lm}.1.mlp.shared_experts.gate_proj.weight": "muon",
        "vision_tower.encoder.blocks.0.wqkv.weight": "muon",
        "vision_tower.encoder.blocks.1.mlp.fc1.weight": "muon",
        "multi_modal_projector.linear_1.weight": "muon",
        "multi_modal_projector.linear_2.weight": "muon",
        "language_model.model.embed_tokens.weight": "adamw",
        "language_model.lm_head.weight": "adamw",
        "vision_tower.patch_embed.proj.weight": "adamw",  # conv [64, 3, 14, 14]: an input embedding
        "vision_tower.patch_embed.pos_emb.weight": "adamw",  # learned [8, 8, 64]
        "vision_tower.patch_embed.proj.bias": "adamw",
        "vision_tower.encoder.blocks.0.wqkv.bias": "adamw",
        f"{lm}.0.self_attn.kv_a_layernorm.weight": "adamw",
        f"{lm}.2.input_layernorm.weight": "adamw",
        "multi_modal_projector.pre_norm.bias": "adamw",
        f"{lm}.1.mlp.gate.e_score_correction_bias": None,  # moved by expert load, never by gradients
    }
    for name, role in expect.items():
        assert roles[name] == role, name
    # every 2-D weight in the LM except embeddings is Muon; every 1-D param is AdamW
    for name, p in model.named_parameters():
        if p.ndim == 1 and "correction_bias" not in name:
            assert roles[name] == "adamw", name
        if name.startswith("language_model.model.layers") and p.ndim == 2:
            assert roles[name] == "muon", name

    groups = param_groups_for(model, 1e-3, ns_dtype="float32")
    by_name = {g["name"]: g for g in groups}
    stacked = by_name[f"muon:{lm}.1.mlp.experts.gate_proj"]
    assert stacked["stack"] and len(stacked["params"]) == tiny().text.n_routed_experts
    assert all(g["weight_decay"] == 0.1 for g in groups)  # decay on norms too (App. D)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(r is not None for r in roles.values())
    n_matrices = sum(r == "muon" for r in roles.values())
    assert count_muon_matrices(groups) == n_matrices
    Muon(groups)  # the groups are valid optimizer input

    baseline = param_groups_for(model, 1e-3, adamw_only=True)
    assert [g["algo"] for g in baseline] == ["adamw"]
    assert len(baseline[0]["params"]) == len(ids)

    # alignment stage: the LLM frozen before building the optimizer -> none of it is optimised
    model.language_model.requires_grad_(False)
    frozen = param_groups_for(model, 1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert not any(names[id(p)].startswith("language_model") for g in frozen for p in g["params"])


def test_param_roles_for_coca_heads():
    coca = pytest.importorskip("kvl_core.training.coca")
    heads = coca.CoCaHeads(coca.CoCaConfig(vocab_size=50, vision_hidden=32, embed_dim=16, text_width=32,
                                           text_layers=1, decoder_layers=1, heads=2, max_text_len=8))
    roles = classify_params(heads)
    assert roles["tok.weight"] == "adamw"  # nn.Embedding, whatever its name
    assert roles["pos"] == "adamw"
    assert roles["pool_query"] == "adamw"  # [1, 1, D]: a vector, not a matrix
    assert roles["lm_head.weight"] == "adamw"
    assert roles["logit_scale"] == roles["logit_bias"] == "adamw_no_decay"
    assert roles["image_proj.weight"] == "muon"
    assert roles["pool_attn.in_proj_weight"] == "muon"
    groups = {g["name"]: g for g in param_groups_for(heads, 1e-3)}
    assert groups["adamw_no_decay"]["weight_decay"] == 0.0
