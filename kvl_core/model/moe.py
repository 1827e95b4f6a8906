"""Mixture-of-experts feed-forward of the Moonlight / DeepSeek-V3 language model (paper §2.1; model.md §7.4).

Notable:
  * Router ("noaux_tc"): sigmoid scores in fp32; a per-expert correction bias is added *only to
    choose* the experts (auxiliary-loss-free balancing) — the mixing weights are the unbiased
    scores, normalised over the chosen k and multiplied by `routed_scaling_factor`.
  * Optional group-limited routing (n_group/topk_group; Kimi-VL uses one group, a no-op).
  * Grouped dispatch: token->expert pairs are sorted by expert and each expert runs once on the
    gathered rows of its tokens; results are scattered back with a weighted index_add in fp32.
    Experts stay separate modules so parameter names match the checkpoint
    (`mlp.experts.{e}.{gate,up,down}_proj.weight`).
  * On CUDA the routed experts run as one grouped matmul over stacked weights (`torch._grouped_mm`
    with per-expert row offsets, else a padded batched matmul) with no host sync, so a decode step
    can be captured in a CUDA graph. The CPU keeps the per-expert loop, bit for bit as before; the
    grouped path equals it on the CPU (tests/model/test_moe.py). In inference the expert weights are
    moved once into two stacked buffers that the expert modules then view (same names, no extra
    memory); with gradients on, a differentiable stack is built per forward for the trainer.
  * Shared experts: one SwiGLU MLP of width n_shared_experts * moe_intermediate_size, added to
    the routed sum.

Shape legend: N tokens (flattened batch), Hd hidden, E routed experts, k experts per token,
I expert width, P = N*k (token, expert) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvl_core.config import TextConfig


class SwiGLU(nn.Module):
    """`down(silu(gate(x)) * up(x))` — the dense MLP, each expert, and the shared experts."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEGate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.top_k = cfg.num_experts_per_tok
        self.n_experts = cfg.n_routed_experts
        self.n_group = cfg.n_group or 1
        self.topk_group = cfg.topk_group or 1
        self.scoring_func = cfg.scoring_func
        self.topk_method = cfg.topk_method
        self.norm_topk_prob = cfg.norm_topk_prob
        self.scaling = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        nn.init.normal_(self.weight, std=cfg.initializer_range)
        # Not trained by gradients: the trainer nudges it from expert load (training.md).
        self.e_score_correction_bias = nn.Parameter(torch.zeros(cfg.n_routed_experts), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, Hd] -> (expert ids [N, k] int64, weights [N, k] fp32)."""
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid() if self.scoring_func == "sigmoid" else logits.softmax(-1)
        choice = scores
        if self.topk_method == "noaux_tc":
            choice = scores + self.e_score_correction_bias.float()
        if self.n_group > 1:
            # Keep the topk_group groups whose best-two scores sum highest; others cannot be chosen.
            g = choice.view(x.shape[0], self.n_group, -1)
            group_scores = g.topk(2, dim=-1).values.sum(-1) if self.topk_method == "noaux_tc" else g.amax(-1)
            keep = torch.zeros_like(group_scores).scatter_(1, group_scores.topk(self.topk_group, dim=-1).indices, 1.0)
            # -inf as DeepSeek's own inference code and transformers do; the HF remote code fills 0.0,
            # which lets a masked expert beat an allowed one whose biased score is negative.
            # (Kimi-VL has a single group, so this never changes its routing.)
            choice = choice.masked_fill(~keep.bool().repeat_interleave(g.shape[-1], dim=1), float("-inf"))
        idx = choice.topk(self.top_k, dim=-1, sorted=False).indices
        w = scores.gather(1, idx)
        if self.top_k > 1 and self.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * self.scaling


class MoE(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.gate = MoEGate(cfg)
        self.experts = nn.ModuleList(SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts))
        self.shared_experts = (
            SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w = self.gate(x)
        y = (self.routed_grouped(x, idx, w) if x.is_cuda else self.routed(x, idx, w)).to(x.dtype)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        return y.view(shape)

    def routed(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Grouped dispatch: sort the N*k (token, expert) pairs by expert, run each expert once."""
        k = idx.shape[1]
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        token_of = order // k
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        weights = w.flatten()[order]
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            rows = token_of[start : start + n]
            ye = self.experts[e](x.index_select(0, rows))
            out.index_add_(0, rows, ye.float() * weights[start : start + n, None])
            start += n
        return out

    # ---- grouped path (CUDA; also runs on the CPU for the equality tests) ---------------------------

    def expert_stacks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Stacked expert weights: gate|up [E, 2I, Hd] and down [E, Hd, I] (the Linear [out, in] layout)."""
        ex = self.experts
        params = [p for e in ex for p in (e.gate_proj.weight, e.up_proj.weight, e.down_proj.weight)]
        if torch.is_grad_enabled() and any(p.requires_grad for p in params):
            # Training: a fresh differentiable stack, so each expert's own parameter gets its gradient
            # (the optimizer and the checkpoint still see separate experts).
            return (torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in ex]),
                    torch.stack([e.down_proj.weight for e in ex]))
        stacks = getattr(self, "_stacks", None)
        if stacks is not None and self._stacks_valid(stacks):
            return stacks
        # Plain tensors even under inference_mode: they become the parameters' storage, which an
        # optimizer may later update in place.
        with torch.no_grad(), torch.inference_mode(False):
            gu = torch.stack([torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in ex])
            dn = torch.stack([e.down_proj.weight for e in ex])
        if all(type(p.data) is torch.Tensor for p in params):
            # Re-point every expert weight at its slice of the stacks: one copy of the weights, and
            # later in-place updates or load_state_dict copies land in the stacks too.
            inter = ex[0].gate_proj.weight.shape[0]
            for i, e in enumerate(ex):
                e.gate_proj.weight.data = gu[i, :inter]
                e.up_proj.weight.data = gu[i, inter:]
                e.down_proj.weight.data = dn[i]
            self._stacks = (gu, dn)
        return gu, dn

    def _stacks_valid(self, stacks) -> bool:
        gu, dn = stacks
        inter = self.experts[0].gate_proj.weight.shape[0]
        return all(e.gate_proj.weight.data_ptr() == gu[i, :inter].data_ptr() and e.up_proj.weight.data_ptr()
                   == gu[i, inter:].data_ptr() and e.down_proj.weight.data_ptr() == dn[i].data_ptr()
                   for i, e in ((0, self.experts[0]), (len(self.experts) - 1, self.experts[-1])))

    def routed_grouped(self, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, impl: str | None = None) -> torch.Tensor:
        """Same result as `routed`, with the experts as one grouped matmul and no host sync.

        impl: "grouped_mm" (torch._grouped_mm with row offsets per expert), "pairs" (each pair
        multiplies its own gathered expert weights: reads only the chosen experts, for decode-sized
        N*k <= E) or "padded" (every expert over a [E, N, Hd] buffer; N bounds any expert's rows).
        None picks grouped_mm where it runs, else pairs or padded by size.
        """
        N, k = idx.shape
        E = len(self.experts)
        gu, dn = self.expert_stacks()
        if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
            # The trainer's bf16 autocast over fp32 weights: bmm would be autocast, _grouped_mm is not.
            dt = torch.get_autocast_dtype(x.device.type)
            gu, dn = gu.to(dt), dn.to(dt)
        flat = idx.flatten()
        order = flat.argsort(stable=True)
        token_of = order // k
        expert_of = flat[order]  # [P] sorted
        xs = x.index_select(0, token_of).to(gu.dtype)  # [P, Hd]
        auto = impl is None
        if auto:
            impl = "grouped_mm" if _grouped_mm_ok(x, gu) else ("pairs" if N * k <= E else "padded")
        try:
            y = self._experts_grouped(impl, xs, gu, dn, flat, expert_of, N, E)
        except (RuntimeError, NotImplementedError):
            if not (auto and impl == "grouped_mm"):
                raise
            # This build or GPU has no usable grouped GEMM for these shapes: remember and fall back.
            _GROUPED_MM_BROKEN.add((x.device.index, tuple(gu.shape[1:])))
            y = self._experts_grouped("pairs" if N * k <= E else "padded", xs, gu, dn, flat, expert_of, N, E)
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        return out.index_add_(0, token_of, y.float() * w.flatten()[order][:, None])

    @staticmethod
    def _experts_grouped(impl, xs, gu, dn, flat, expert_of, N, E) -> torch.Tensor:
        """Sorted pair rows xs [P, Hd] -> expert outputs [P, Hd] (unweighted)."""
        inter = dn.shape[-1]
        if impl == "grouped_mm":
            # scatter_add, not bincount: bincount sizes its output from the max id (a host sync).
            counts = torch.zeros(E, dtype=torch.int64, device=xs.device).scatter_add_(0, flat, torch.ones_like(flat))
            # Each expert's rows start on a multiple of GROUP_ALIGN (the grouped GEMM's alignment, which
            # its backward needs too), padded with zero rows; the buffer has room for the worst case.
            padded = (counts + GROUP_ALIGN - 1) // GROUP_ALIGN * GROUP_ALIGN
            ends = padded.cumsum(0)
            P = flat.shape[0]
            dest = (ends - padded)[expert_of] + torch.arange(P, device=xs.device) - (counts.cumsum(0) - counts)[expert_of]
            buf = xs.new_zeros(P + E * (GROUP_ALIGN - 1), xs.shape[1]).index_copy(0, dest, xs)
            offs = ends.to(torch.int32)
            h = torch._grouped_mm(buf, gu.transpose(-2, -1), offs=offs)
            g, u = h.split(inter, dim=-1)
            # Rows past the last offset are outside every group (never read back).
            y = torch._grouped_mm(F.silu(g) * u, dn.transpose(-2, -1), offs=offs).index_select(0, dest)
        elif impl == "pairs":
            h = torch.bmm(gu.index_select(0, expert_of), xs[:, :, None])[..., 0]  # [P, 2I]
            g, u = h.split(inter, dim=-1)
            y = torch.bmm(dn.index_select(0, expert_of), (F.silu(g) * u)[:, :, None])[..., 0]
        elif impl == "padded":
            P = flat.shape[0]
            first = torch.searchsorted(expert_of, torch.arange(E, device=xs.device, dtype=expert_of.dtype))
            rank = torch.arange(P, device=xs.device) - first[expert_of]  # row of each pair inside its expert
            buf = xs.new_zeros(E, N, xs.shape[1])
            buf[expert_of, rank] = xs
            h = torch.bmm(buf, gu.transpose(1, 2))
            g, u = h.split(inter, dim=-1)
            y = torch.bmm(F.silu(g) * u, dn.transpose(1, 2))[expert_of, rank]
        else:
            raise ValueError(f"unknown grouped MoE implementation {impl!r}")
        return y


GROUP_ALIGN = 8  # rows; 16 bytes of bf16
_GROUPED_MM_BROKEN: set[tuple] = set()


def _grouped_mm_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    """torch._grouped_mm on CUDA wants bf16 and a Hopper-class GPU (sm90+); probe once per setting."""
    if not hasattr(torch, "_grouped_mm") or not x.is_cuda or w.dtype != torch.bfloat16:
        return False
    key = (x.device.index, tuple(w.shape[1:]))
    if key in _GROUPED_MM_BROKEN:
        return False
    if torch.cuda.get_device_capability(x.device) < (9, 0):
        _GROUPED_MM_BROKEN.add(key)
        return False
    return True
