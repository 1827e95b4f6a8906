"""MoonViT, the native-resolution vision encoder of Kimi-VL (paper §2.1; model.md §4).

Notable:
  * NaViT packing: the patches of all images are concatenated into one sequence; attention is
    non-causal and restricted to each image (`cu_seqlens`), so a packed batch encodes every image
    exactly as if it were alone. (The reference's CPU "eager" path adds the block mask to the
    scores instead of masking, which is wrong for several images; we never do that.)
  * Two position signals: a learnable 64x64 absolute embedding resized per image with bicubic
    interpolation, plus a 2D RoPE whose even rotation pairs carry the column (width) angle and
    odd pairs the row (height) angle — the reference's docstring says the opposite, its code
    (which the checkpoint was trained with) does this.
  * Pre-norm blocks, tanh-GELU MLP, a final LayerNorm; the 2x2 patch merger has no weights.
  * Attention kernel: on CUDA in bf16/fp16, several packed images go through one varlen flash
    attention call over `cu_seqlens` (torch.nn.attention.varlen, the production kernel's
    semantics); elsewhere (the CPU, fp32) equal-length images are batched into SDPA calls.

Shape legend:
  L  packed patches over all images        N  images
  D  hidden size (1152)                    H  heads (16), d = D / H (72)
  (h, w)  one image's grid in patches      M  merged tokens = sum(h*w) / (kh*kw)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from kvl_core.config import VisionConfig


class PatchEmbed(nn.Module):
    """Conv2d patchify + bicubic-resized learnable absolute position embedding."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.pos_emb = PosEmb(cfg.init_pos_emb_height, cfg.init_pos_emb_width, cfg.hidden_size)

    def forward(self, pixel_values: torch.Tensor, grid_hws: torch.Tensor) -> torch.Tensor:
        # pixel_values [L, 3, p, p] -> [L, D]
        x = self.proj(pixel_values.to(self.proj.weight.dtype)).flatten(1)
        return x + self.pos_emb(grid_hws)


class PosEmb(nn.Module):
    def __init__(self, height: int, width: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(height, width, dim))
        nn.init.normal_(self.weight)

    def forward(self, grid_hws: torch.Tensor) -> torch.Tensor:
        # [H0, W0, D] -> [D, H0, W0] image for interpolate; one resize per distinct grid size.
        w = self.weight.permute(2, 0, 1).unsqueeze(0)
        cache: dict[tuple[int, int], torch.Tensor] = {}
        out = []
        for h, wd in grid_hws.tolist():
            if (h, wd) not in cache:
                # Same-size bicubic is the identity, so no special case is needed for (H0, W0).
                r = F.interpolate(w, size=(h, wd), mode="bicubic", align_corners=False)
                cache[(h, wd)] = r.squeeze(0).permute(1, 2, 0).flatten(0, 1)
            out.append(cache[(h, wd)])
        return torch.cat(out, 0)


@functools.lru_cache(maxsize=64)
def _rope2d_cos_sin(h: int, w: int, head_dim: int, theta: float, device: torch.device):
    """cos/sin [h*w, head_dim/2] for one image; pair 2k rotates by col*f_k, pair 2k+1 by row*f_k."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 4, device=device)[: head_dim // 4].float() / head_dim)
    rows = torch.arange(h, device=device).repeat_interleave(w).float()
    cols = torch.arange(w, device=device).repeat(h).float()
    angles = torch.stack([torch.outer(cols, freqs), torch.outer(rows, freqs)], dim=-1).flatten(1)
    return angles.cos(), angles.sin()


def rope2d_cos_sin(grid_hws: torch.Tensor, cfg: VisionConfig, device: torch.device):
    parts = [_rope2d_cos_sin(h, w, cfg.head_dim, cfg.rope_theta, device) for h, w in grid_hws.tolist()]
    return torch.cat([c for c, _ in parts]), torch.cat([s for _, s in parts])


def apply_rope_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2j], x[2j+1]) — a complex multiply — in fp32. x [L, H, d], cos [L, d/2]."""
    xf = x.float().unflatten(-1, (-1, 2))
    a, b = xf[..., 0], xf[..., 1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).to(x.dtype)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: list[int]) -> torch.Tensor:
    """Non-causal attention within each [cu_seqlens[i], cu_seqlens[i+1]) block. q/k/v [L, H, d] -> [L, H, d].

    Images of the same length are batched into one SDPA call; nothing is ever padded, so the work is
    sum(n_i^2) rather than N * max(n_i)^2.
    """
    lens = [b - a for a, b in zip(cu_seqlens[:-1], cu_seqlens[1:])]
    if len(lens) > 1 and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and _VARLEN_OK[0] \
            and _varlen_attn() is not None:
        cu = torch.tensor(cu_seqlens, dtype=torch.int32, device=q.device)
        try:
            return _varlen_attn()(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, max(lens), max(lens))
        except (RuntimeError, NotImplementedError):  # no flash kernel for this GPU/build: batched SDPA below
            _VARLEN_OK[0] = False
    if len(lens) == 1:
        return F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)).transpose(0, 1)
    out = torch.empty_like(q)
    by_len: dict[int, list[int]] = {}
    for i, n in enumerate(lens):
        by_len.setdefault(n, []).append(i)
    for n, idxs in by_len.items():
        starts = torch.tensor([cu_seqlens[i] for i in idxs], device=q.device)
        rows = (starts[:, None] + torch.arange(n, device=q.device)).flatten()
        # [G*n, H, d] -> [G, H, n, d]
        qs, ks, vs = (t.index_select(0, rows).unflatten(0, (len(idxs), n)).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qs, ks, vs)
        out.index_copy_(0, rows, o.transpose(1, 2).flatten(0, 1))
    return out


_VARLEN_OK = [True]


@functools.lru_cache(maxsize=1)
def _varlen_attn():
    """torch.nn.attention.varlen.varlen_attn (torch >= 2.10), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc0 = nn.Linear(dim, hidden)
        self.fc1 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc1(F.gelu(self.fc0(x), approximate="tanh"))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.norm0 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.norm1 = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.wqkv = nn.Linear(d, 3 * d)
        self.wo = nn.Linear(d, d)
        self.mlp = MLP(d, cfg.intermediate_size)

    def forward(self, x, cu_seqlens: list[int], cos, sin):
        L, D = x.shape
        q, k, v = self.wqkv(self.norm0(x)).view(L, 3, self.num_heads, -1).unbind(1)
        q, k = apply_rope_pairs(q, cos, sin), apply_rope_pairs(k, cos, sin)
        x = x + self.wo(varlen_attention(q, k, v, cu_seqlens).reshape(L, D))
        return x + self.mlp(self.norm1(x))


class Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.final_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class MoonViT(nn.Module):
    """`vision_tower`: (pixel_values [L,3,p,p], grid_hws [N,2]) -> encoder features [L, D] after the final norm."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, pixel_values: torch.Tensor, grid_hws: torch.Tensor) -> torch.Tensor:
        grid_hws = torch.as_tensor(grid_hws).reshape(-1, 2)
        sizes = (grid_hws[:, 0] * grid_hws[:, 1]).tolist()
        if sum(sizes) != pixel_values.shape[0]:
            raise ValueError(f"grid_hws covers {sum(sizes)} patches but pixel_values has {pixel_values.shape[0]}")
        if int(grid_hws.max()) >= min(self.config.rope_max_height, self.config.rope_max_width):
            raise ValueError(f"image grid {grid_hws.max().item()} patches per side exceeds the 2D-RoPE table")
        cu_seqlens = [0]
        for n in sizes:
            cu_seqlens.append(cu_seqlens[-1] + n)
        x = self.patch_embed(pixel_values, grid_hws)
        cos, sin = rope2d_cos_sin(grid_hws, self.config, x.device)
        for blk in self.encoder.blocks:
            x = blk(x, cu_seqlens, cos, sin)
        return self.encoder.final_layernorm(x)

    def patch_merger(self, x: torch.Tensor, grid_hws: torch.Tensor) -> torch.Tensor:
        """Group each kh x kw block of patches: [L, D] -> [M, kh*kw, D], tokens row-major over (h/kh, w/kw)."""
        kh, kw = self.config.merge_kernel_size
        out, start = [], 0
        for h, w in torch.as_tensor(grid_hws).reshape(-1, 2).tolist():
            seq = x[start : start + h * w]
            start += h * w
            seq = seq.view(h // kh, kh, w // kw, kw, -1).permute(0, 2, 1, 3, 4)
            out.append(seq.reshape((h // kh) * (w // kw), kh * kw, -1))
        return torch.cat(out, 0)


def merged_token_count(grid_hws: torch.Tensor, merge_kernel_size=(2, 2)) -> int:
    kh, kw = merge_kernel_size
    g = torch.as_tensor(grid_hws).reshape(-1, 2)
    return int(((g[:, 0] // kh) * (g[:, 1] // kw)).sum())
