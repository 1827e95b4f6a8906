"""CoCa-style objective for the standalone MoonViT stage (paper §2.3 "ViT Training Stages").

    L = L_siglip + lambda * L_caption,  lambda = 2

* L_siglip (Zhai et al. 2023, Alg. 1): pairwise sigmoid loss between L2-normalised image and text
  embeddings, logits = exp(t') <x_i, y_j> + b, targets +1 on the diagonal and -1 elsewhere,
  summed over pairs and divided by the batch size; t' = log 10 and b = -10 at init.
* L_caption: next-token cross-entropy of a tiny text decoder that cross-attends to the image's
  patch features (the paper's "text decoder ... conditioned on features from the image encoder").

The heads (image pooling, text tower, caption decoder) live beside the Kimi-VL checkpoint in
`coca.safetensors`; only MoonViT continues into the next stage.

Shape legend: N images (= captions) per step, L packed patches, D vision hidden, E embed dim,
S caption tokens (padded), d decoder width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CoCaConfig:
    vocab_size: int
    vision_hidden: int
    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 2
    decoder_layers: int = 2
    heads: int = 4
    max_text_len: int = 64
    pad_id: int = 0


class CoCaHeads(nn.Module):
    def __init__(self, cfg: CoCaConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.text_width
        # image side: attention pooling (one learned query, as SigLIP's MAP head) -> embedding
        self.pool_query = nn.Parameter(torch.randn(1, 1, cfg.vision_hidden) * 0.02)
        self.pool_attn = nn.MultiheadAttention(cfg.vision_hidden, cfg.heads if cfg.vision_hidden % cfg.heads == 0 else 1,
                                               batch_first=True)
        self.image_proj = nn.Linear(cfg.vision_hidden, cfg.embed_dim)
        # text tower: a small bidirectional encoder, mean-pooled over real tokens
        self.tok = nn.Embedding(cfg.vocab_size, d)
        self.pos = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02)
        layer = lambda: nn.TransformerEncoderLayer(d, cfg.heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.text_encoder = nn.TransformerEncoder(layer(), cfg.text_layers, enable_nested_tensor=False)
        self.text_proj = nn.Linear(d, cfg.embed_dim)
        # caption decoder: causal self-attention + cross-attention to the image's patches
        self.memory_proj = nn.Linear(cfg.vision_hidden, d)
        dec = nn.TransformerDecoderLayer(d, cfg.heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(dec, cfg.decoder_layers)
        self.dec_norm = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    @staticmethod
    def pad_images(feats: torch.Tensor, grid_hws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed [L, D] -> padded [N, Lmax, D] and a key-padding mask [N, Lmax] (True = padding)."""
        sizes = (grid_hws[:, 0] * grid_hws[:, 1]).tolist()
        out = feats.new_zeros(len(sizes), max(sizes), feats.shape[-1])
        pad = torch.ones(len(sizes), max(sizes), dtype=torch.bool, device=feats.device)
        start = 0
        for i, n in enumerate(sizes):
            out[i, :n] = feats[start : start + n]
            pad[i, :n] = False
            start += n
        return out, pad

    def forward(self, vision_feats: torch.Tensor, grid_hws: torch.Tensor, text_ids: torch.Tensor,
                caption_weight: float = 2.0) -> dict[str, torch.Tensor]:
        """vision_feats [L, D] (MoonViT output), text_ids [N, S] padded with pad_id -> losses."""
        cfg = self.cfg
        text_ids = text_ids[:, : cfg.max_text_len]
        mem, mem_pad = self.pad_images(vision_feats, grid_hws)
        q = self.pool_query.expand(mem.shape[0], -1, -1)
        pooled = self.pool_attn(q, mem, mem, key_padding_mask=mem_pad, need_weights=False)[0][:, 0]
        img = F.normalize(self.image_proj(pooled), dim=-1)

        real = text_ids != cfg.pad_id
        h = self.tok(text_ids) + self.pos[: text_ids.shape[1]]
        h = self.text_encoder(h, src_key_padding_mask=~real)
        h = (h * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        txt = F.normalize(self.text_proj(h), dim=-1)

        logits = img @ txt.T * self.logit_scale.exp() + self.logit_bias
        labels = 2 * torch.eye(len(logits), device=logits.device) - 1
        siglip = -F.logsigmoid(labels * logits).sum() / len(logits)

        # caption: predict token t+1 from tokens <= t, attending to the image patches
        inp, tgt = text_ids[:, :-1], text_ids[:, 1:].masked_fill(text_ids[:, 1:] == cfg.pad_id, -100)
        S = inp.shape[1]
        x = self.tok(inp) + self.pos[:S]
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).triu(1)
        x = self.decoder(x, self.memory_proj(mem), tgt_mask=causal, tgt_key_padding_mask=inp == cfg.pad_id,
                         memory_key_padding_mask=mem_pad)
        cap_logits = self.lm_head(self.dec_norm(x))
        caption = F.cross_entropy(cap_logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100)
        return {"loss": siglip + caption_weight * caption, "siglip": siglip.detach(), "caption": caption.detach()}
