"""Muon as Moonlight uses it, with an AdamW branch in the same optimizer (Moonlight report §2.1–2.3,
eq. 1–4; Kimi-VL report §2.2 "enhanced Muon"; design: shared/design/training.md §1).

For every Muon matrix W of shape [A, B] (A = out, B = in), momentum μ, lr η, weight decay λ:

    M_t = μ·M_{t-1} + G_t                          sum-form momentum (Moonlight eq. 1, toy_train.py)
    U_t = G_t + μ·M_t     (Nesterov; else M_t)     report footnote 1
    O_t = NS5(U_t)                                 eq. 2: X ← aX + (bXXᵀ + c(XXᵀ)²)X, 5 times,
                                                   X_0 = U/(‖U‖_F + eps), on the wide orientation
    W_t = W_{t-1}·(1 − ηλ) − η·0.2·√max(A, B)·O_t  eq. 4: decoupled decay with the UNscaled η; the
                                                   0.2·√max(A,B) factor (Lemma 1) gives the update
                                                   the RMS of a typical AdamW update (~0.2·η)

Everything else (embeddings, lm_head, norms, biases, the conv patch embedding, learned position
embeddings) takes AdamW with the same lr and weight decay (§2.2; App. D: decay on norm γ is kept).

Beyond the report, and why:
  * `ns_dtype` (default bf16 as in the report): fp32/fp64 make equivalence tests meaningful — bf16
    NS has a slope of a⁵≈487 at zero, so tiny input differences become percent-level output
    differences on rank-deficient gradients (training.md §1.4 "Pitfall"). "auto" picks bf16 on
    CUDA and on CPUs with native bf16 matmul, fp32 elsewhere: on an AVX2-only CPU bf16 matmul is
    emulated [measured here: NS5 of a 256x256 matrix 370 ms in bf16 vs 15 ms in fp32; the optimizer
    step of bench/bench_muon.py 5.7 s vs 0.37 s].
  * 3-D parameters [E, A, B] are E matrices: one batched NS, each matrix normalised and scaled by
    its own [A, B] (never flattened to [E·A, B]). Our model keeps experts as separate Linears, so a
    group with `stack=True` holds same-shape matrices (one expert projection of one MoE layer) that
    are stacked for one batched NS call — same maths, fewer kernel launches.
  * 4-D (hidden convs) only with `flatten=True`: viewed as [out, in·kh·kw], scaled by that shape.
  * `ns_matrices` / `ns_calls` count the work done (DeepSpeed once silently ran SGD instead of Muon;
    tests assert the counter moves) and `last_update_rms` keeps ‖ΔW‖_RMS per group for logging
    (Moonlight Algorithm 1, line 14).

State lives in the standard `Optimizer.state` ("momentum_buffer" for Muon; "step", "exp_avg",
"exp_avg_sq" for AdamW) and group options are plain Python values (the NS dtype is stored as its
name), so `state_dict()` round-trips through `torch.save` / `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MUON = "muon"
ADAMW = "adamw"

_DTYPE_NAMES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64,
                "float16": torch.float16}


def _dtype_name(d) -> str:
    if isinstance(d, torch.dtype):
        name = str(d).removeprefix("torch.")
    else:
        name = {"bf16": "bfloat16", "fp32": "float32", "fp64": "float64", "fp16": "float16"}.get(str(d), str(d))
    if name not in _DTYPE_NAMES and name != "auto":
        raise ValueError(f"ns_dtype must be 'auto' or one of {sorted(_DTYPE_NAMES)}, got {d!r}")
    return name


_CPU_BF16: bool | None = None


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX). Without it torch's bf16
    matmul is emulated, 4-300x slower than fp32 depending on shape and layout [measured on this
    AVX2-only CPU], and bf16 NS can cost as much as the forward/backward itself."""
    global _CPU_BF16
    if _CPU_BF16 is None:
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            _CPU_BF16 = "avx512_bf16" in flags or "amx_bf16" in flags
        except OSError:
            _CPU_BF16 = False
    return _CPU_BF16


def resolve_ns_dtype(name: str, device: torch.device) -> torch.dtype:
    """`ns_dtype="auto"`: bf16 (the report's choice) where it is fast — CUDA, or a CPU with native
    bf16 matmul — else fp32 (more accurate, and the fast path on other CPUs)."""
    if name != "auto":
        return _DTYPE_NAMES[name]
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        return torch.bfloat16
    return torch.float32


def zeropower_via_newtonschulz(G: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS,
                               eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """NS5 of report eq. 2 on the last two dims of G ([..., A, B]); returns `dtype`.

    Each matrix is normalised by its own Frobenius norm (so its spectral norm is ≤ 1) and the
    iteration runs on the wide orientation (the Gram matrix is min(A, B)² — the cheap side).
    """
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        S = X @ X.mT
        X = a * X + (b * S + c * (S @ S)) @ X
    return X.mT if tall else X


def _matrix_shape(p: torch.Tensor, flatten: bool) -> tuple[int, int]:
    if p.ndim == 4 and flatten:
        return p.shape[0], p[0].numel()
    return p.shape[-2], p.shape[-1]


def muon_scale(shape: tuple[int, int]) -> float:
    """0.2·√max(A, B) (Moonlight Lemma 1 / eq. 4): a full-rank orthogonal A×B matrix has RMS
    1/√max(A, B), so this puts the update's RMS at ~0.2, AdamW's typical value."""
    return 0.2 * math.sqrt(max(shape))


def _sumsq(t: torch.Tensor) -> torch.Tensor:
    """Σt² in at least fp32, in one reduction."""
    return torch.linalg.vector_norm(t, dtype=torch.promote_types(t.dtype, torch.float32)).square()


class Muon(torch.optim.Optimizer):
    """One optimizer for the whole model: groups with `algo="muon"` take Moonlight's Muon update,
    groups with `algo="adamw"` take AdamW (same lr/weight_decay semantics: decoupled, unscaled lr).

    Build the groups with `param_groups_for(model, lr, ...)`. Every option is a per-group default:
      lr, weight_decay      both branches; decay is decoupled, W ← W·(1 − lr·wd), with the plain lr
      momentum, nesterov    Muon: μ = 0.95, Nesterov (Moonlight §2.2)
      ns_steps, ns_coefficients, eps   NS5 with (3.4445, −4.7750, 2.0315), X_0 = U/(‖U‖_F + eps)
      ns_dtype              torch dtype or name: "bfloat16" (default), "float32", "float64", "auto"
      betas, adam_eps       AdamW branch: (0.9, 0.95), 1e-8 (Moonlight toy_train.py)
      algo                  "muon" | "adamw"
      stack                 Muon: the group's same-shape matrices share one batched NS call
      flatten               Muon: allow 4-D params, orthogonalised as [out, in·kh·kw]
    `track_rms` (constructor only): keep `last_update_rms` (one host sync per step).

    Parameters whose `.grad` is None are skipped (no state, no decay), like torch's optimizers;
    `kvl_core.training.distributed.all_reduce_grads` fills missing grads with zeros so that every
    expert's momentum keeps moving and world 1 ≡ world N.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_coefficients=NS_COEFFICIENTS,
                 ns_dtype=torch.bfloat16, eps: float = 1e-7, betas=(0.9, 0.95), adam_eps: float = 1e-8,
                 algo: str = MUON, stack: bool = False, flatten: bool = False, track_rms: bool = True):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid Muon options lr={lr} weight_decay={weight_decay} momentum={momentum}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_steps=ns_steps, ns_coefficients=tuple(ns_coefficients), ns_dtype=_dtype_name(ns_dtype),
                        eps=eps, betas=tuple(betas), adam_eps=adam_eps, algo=algo, stack=stack, flatten=flatten)
        self.track_rms = track_rms
        self.ns_calls = 0  # NS invocations (a batched stack counts once)
        self.ns_matrices = 0  # matrices orthogonalised (each expert of a stack counts once)
        self.last_ns_params: list[int] = []  # global param indices orthogonalised in the last step
        self.last_update_rms: list[float | None] = []
        super().__init__(params, defaults)

    # ---- groups ---------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        if "ns_dtype" in param_group:
            param_group = {**param_group, "ns_dtype": _dtype_name(param_group["ns_dtype"])}
        for key in ("ns_coefficients", "betas"):
            if key in param_group:
                param_group = {**param_group, key: tuple(param_group[key])}
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["algo"] not in (MUON, ADAMW):
            raise ValueError(f"param group algo must be 'muon' or 'adamw', got {group['algo']!r}")
        if group["algo"] == MUON:
            for p in group["params"]:
                ok = p.ndim in (2, 3) or (p.ndim == 4 and group["flatten"])
                if not ok:
                    raise ValueError(f"a Muon group holds a {p.ndim}-D parameter {tuple(p.shape)}; Muon takes "
                                     "2-D matrices, 3-D stacks [E, out, in], and 4-D only with flatten=True")
            if group["stack"] and len({tuple(p.shape) for p in group["params"]}) > 1:
                raise ValueError("a stacked Muon group must hold parameters of one shape")
        self._index = None  # param -> global index map, rebuilt lazily

    def _global_index(self) -> dict[int, int]:
        if getattr(self, "_index", None) is None:
            ids = [id(p) for g in self.param_groups for p in g["params"]]
            self._index = {pid: i for i, pid in enumerate(ids)}
        return self._index

    def _units(self, group: dict) -> list[list[torch.Tensor]]:
        """The independent pieces of work in a group: a whole stacked group, else one param each."""
        if group["algo"] == MUON and group["stack"]:
            return [list(group["params"])] if group["params"] else []
        return [[p] for p in group["params"]]

    def _owns(self, gi: int, ui: int) -> bool:
        return True  # DistMuon: only the owner rank steps a unit

    # ---- step -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.last_ns_params = []
        sq: list[torch.Tensor] = []
        counts: list[int] = []
        for gi, group in enumerate(self.param_groups):
            acc, n = None, 0
            for ui, unit in enumerate(self._units(group)):
                if not self._owns(gi, ui):
                    continue
                fn = self._muon_unit if group["algo"] == MUON else self._adamw_unit
                s, k = fn(group, unit)
                if k:
                    # stays on the params' device: one host sync per step, not one per matrix
                    acc = s.double() if acc is None else acc + s.double()
                    n += k
            sq.append(acc if acc is not None else torch.zeros((), dtype=torch.float64))
            counts.append(n)
        self._finish_rms(sq, counts)
        return loss

    def _finish_rms(self, sq: list[torch.Tensor], counts: list[int]) -> None:
        """sq[g]: sum of squared parameter deltas of group g (decay excluded), counts[g]: elements."""
        if not self.track_rms:
            return
        dev = next((t.device for t in sq if t.device.type != "cpu"), torch.device("cpu"))
        vals = torch.stack([t.to(dev) for t in sq]).tolist() if sq else []
        self.last_update_rms = [math.sqrt(v / n) if n else None for v, n in zip(vals, counts)]

    def _muon_unit(self, group: dict, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        params = [p for p in params if p.grad is not None]
        if not params:
            return None, 0
        O, step = self._muon_direction(group, params, [p.grad for p in params])
        lr, wd = group["lr"], group["weight_decay"]
        for i, p in enumerate(params):
            o = O[i] if len(params) > 1 else O
            p.mul_(1 - lr * wd)
            p.add_(o.reshape(p.shape).to(p.dtype), alpha=-step)
        if not self.track_rms:
            return None, 0
        return _sumsq(O) * step * step, O.numel()

    def _muon_direction(self, group: dict, params: list[torch.Tensor],
                        grads: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """Momentum and Newton-Schulz of one unit from its whole gradients: (O, step size) with O [A, B]
        or [n, A, B] for a stack. The momentum buffers live in `self.state[p]`, shaped like the grads
        (the sharded optimizer calls this on its owner rank with gathered gradients)."""
        mu, flatten = group["momentum"], group["flatten"]
        updates = []
        for p, g in zip(params, grads):
            if g.is_sparse:
                raise RuntimeError("Muon does not support sparse gradients")
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.zeros_like(g, memory_format=torch.preserve_format)
            buf.mul_(mu).add_(g)
            u = g.add(buf, alpha=mu) if group["nesterov"] else buf
            updates.append(u.reshape(g.shape[0], -1) if g.ndim == 4 else u)
        U = torch.stack(updates) if len(updates) > 1 else updates[0]
        O = zeropower_via_newtonschulz(U, group["ns_steps"], group["ns_coefficients"], group["eps"],
                                       resolve_ns_dtype(group["ns_dtype"], U.device))
        A, B = _matrix_shape(params[0], flatten)
        self.ns_calls += 1
        self.ns_matrices += O.numel() // (A * B)
        index = self._global_index()
        self.last_ns_params.extend(index[id(p)] for p in params)
        return O, group["lr"] * muon_scale((A, B))  # a unit's matrices share one shape, hence one scale

    def _adamw_unit(self, group: dict, params: list[torch.Tensor]) -> tuple[torch.Tensor | None, int]:
        (p,) = params
        if p.grad is None:
            return None, 0
        return self._adamw_apply(group, p, p.grad, self.state[p])

    def _adamw_apply(self, group: dict, p: torch.Tensor, g: torch.Tensor, state: dict) -> tuple[torch.Tensor | None, int]:
        """The elementwise AdamW update of `p` (a whole tensor, or one rank's shard of it) in place."""
        if g.is_sparse:
            raise RuntimeError("AdamW branch does not support sparse gradients")
        lr, wd, (b1, b2), eps = group["lr"], group["weight_decay"], group["betas"], group["adam_eps"]
        if "step" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        t = state["step"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        denom = (v.sqrt() / math.sqrt(bc2)).add_(eps)
        step = lr / bc1
        upd = m.div(denom)  # kept (not addcdiv) so its RMS costs one reduction, no second pass
        p.add_(upd, alpha=-step)
        if not self.track_rms:
            return None, 0
        return _sumsq(upd) * step * step, p.numel()


# ---- which parameter goes where ---------------------------------------------------------------

# Input/output embeddings go to AdamW even though they are matrices (Moonlight §2.2, toy_train.py):
# their rows are looked up (or are per-class vectors), not a linear map to orthogonalise. MoonViT's
# conv patch embedding and learned position embedding are input embeddings too (training.md §1.2).
EMBEDDING_NAMES = ("embed_tokens", "lm_head", "patch_embed", "pos_emb", "position_embedding")
# SigLIP/CoCa temperature and bias: scalars that set the loss scale; decay would pull t' to 0.
NO_DECAY_NAMES = ("logit_scale", "logit_bias")
# Aux-loss-free balancing bias: the trainer moves it from expert load (Moonlight App. C), never SGD.
NOT_GRADIENT_TRAINED = ("e_score_correction_bias",)
_EXPERT = re.compile(r"^(?P<stack>.*\.experts)\.\d+\.(?P<proj>[^.]+)\.weight$")


def param_role(name: str, p: torch.Tensor, embedding_ids: frozenset[int] = frozenset()) -> str | None:
    """The rule, one parameter at a time: "muon", "adamw", "adamw_no_decay", or None (not optimised).

    None      requires_grad=False (frozen, e.g. the LLM in the alignment stage) or the MoE router's
              correction bias
    adamw     ndim < 2 (norms, biases, scalars); embeddings by name (EMBEDDING_NAMES), by module type
              (nn.Embedding) or a learned table named `pos`; matrices with a dimension of 1 (vectors
              in disguise, e.g. an attention-pool query [1, 1, D]); ndim > 4
    adamw_no_decay  SigLIP logit_scale / logit_bias
    muon      every other 2-D/3-D matrix (attention, MLP, each expert, router gate, ViT, projector)
              and 4-D hidden convs (flattened)
    """
    if not p.requires_grad or any(k in name for k in NOT_GRADIENT_TRAINED):
        return None
    last = name.rsplit(".", 1)[-1]
    if any(k in name for k in NO_DECAY_NAMES):
        return "adamw_no_decay"
    if p.ndim < 2 or p.ndim > 4:
        return ADAMW
    if id(p) in embedding_ids or any(k in name for k in EMBEDDING_NAMES) or last == "pos":
        return ADAMW
    if min(_matrix_shape(p, flatten=True)) == 1:
        return ADAMW
    return MUON


def classify_params(model: nn.Module) -> dict[str, str | None]:
    """name -> role for every parameter of `model` (for logging and tests)."""
    emb = _embedding_ids(model)
    return {n: param_role(n, p, emb) for n, p in model.named_parameters()}


def _embedding_ids(model: nn.Module) -> frozenset[int]:
    return frozenset(id(p) for m in model.modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))
                     for p in m.parameters(recurse=False))


def param_groups_for(model: nn.Module, lr: float, weight_decay: float = 0.1, *, stack_experts: bool = True,
                     adamw_only: bool = False, **options) -> list[dict]:
    """Param groups for `Muon`/`DistMuon` following `param_role`. Group order and membership are a
    pure function of the model's parameter order, so every rank (and every world size) builds the
    same groups — which the optimizer state_dict format relies on.

    Groups (each dict has "name" for logging and "algo"; `options` such as ns_dtype/momentum/betas
    are copied into every group):
      "muon"                     all non-expert Muon matrices
      "muon:<prefix>.<proj>"     with stack_experts: the same projection of every expert of one MoE
                                 layer, e.g. "muon:...layers.1.mlp.experts.gate_proj", NS batched
      "adamw"                    embeddings, lm_head, norms, biases, patch/pos embeddings
      "adamw_no_decay"           logit_scale / logit_bias (weight_decay 0)
    Empty groups are left out. adamw_only=True is the AdamW baseline: the same parameters (frozen
    ones and the correction bias still excluded), all in the AdamW groups.
    """
    emb = _embedding_ids(model)
    muon, adamw, nodecay = [], [], []
    stacks: dict[tuple[str, str], list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        role = param_role(name, p, emb)
        if role is None:
            continue
        if role == ADAMW or (role == MUON and adamw_only):
            adamw.append(p)
        elif role == "adamw_no_decay":
            nodecay.append(p)
        else:
            m = _EXPERT.match(name) if stack_experts and p.ndim == 2 else None
            if m:
                stacks.setdefault((m["stack"], m["proj"]), []).append(p)
            else:
                muon.append(p)
    base = dict(lr=lr, weight_decay=weight_decay, **options)
    groups = []
    if muon:
        groups.append(dict(base, params=muon, algo=MUON, stack=False, name="muon"))
    for (prefix, proj), ps in stacks.items():
        if len({tuple(p.shape) for p in ps}) == 1:
            groups.append(dict(base, params=ps, algo=MUON, stack=True, name=f"muon:{prefix}.{proj}"))
        else:  # unequal experts cannot share one batched NS
            groups.append(dict(base, params=ps, algo=MUON, stack=False, name=f"muon:{prefix}.{proj}"))
    if adamw:
        groups.append(dict(base, params=adamw, algo=ADAMW, name="adamw"))
    if nodecay:
        groups.append(dict(base, params=nodecay, algo=ADAMW, name="adamw_no_decay", weight_decay=0.0))
    return groups


def count_muon_matrices(groups: Iterable[dict]) -> int:
    """How many matrices one full step orthogonalises (a 3-D [E, A, B] counts E)."""
    n = 0
    for g in groups:
        if g.get("algo", MUON) == MUON:
            for p in g["params"]:
                n += p.shape[0] if p.ndim == 3 else 1
    return n
