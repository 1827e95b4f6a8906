"""Multi-modal projector (paper §2.1 "MLP projector"; model.md §5).

LayerNorm over each D-dim patch vector *before* the kh*kw patches of a merged token are
concatenated, then Linear -> erf-GELU -> Linear into the language model's hidden size.
(The ViT MLP uses tanh-GELU; this one uses the exact erf form, as the checkpoint was trained.)

Shape legend: M merged tokens, K = kh*kw (4), D vision hidden (1152), E text hidden (2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kvl_core.config import KimiVLConfig


class MultiModalProjector(nn.Module):
    def __init__(self, cfg: KimiVLConfig):
        super().__init__()
        d = cfg.vision.hidden_size
        kh, kw = cfg.vision.merge_kernel_size
        self.pre_norm = nn.LayerNorm(d, eps=1e-5)
        self.linear_1 = nn.Linear(d * kh * kw, d * kh * kw)
        self.linear_2 = nn.Linear(d * kh * kw, cfg.text.hidden_size)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        # merged [M, K, D] -> [M, E]
        x = self.pre_norm(merged).flatten(1)
        return self.linear_2(F.gelu(self.linear_1(x)))
