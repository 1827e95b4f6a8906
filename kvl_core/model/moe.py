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
  * Shared experts: one SwiGLU MLP of width n_shared_experts * moe_intermediate_size, added to
    the routed sum.

Shape legend: N tokens (flattened batch), Hd hidden, E routed experts, k experts per token.
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
        y = self.routed(x, idx, w).to(x.dtype)
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
