"""The Moonlight language model: DeepSeek-V3 architecture with MLA attention and MoE layers
(paper §2.1 "MoE language model"; model.md §7).

Notable:
  * Multi-head Latent Attention: keys/values come from a low-rank latent (kv_lora_rank) plus one
    decoupled RoPE key head shared by all heads. Prefill expands the latent per head; decoding
    with a cache attends directly in latent space ("absorbed" weights: the query's no-RoPE part is
    projected through W_uk, the attention output through W_uv), so the cache stays compressed.
  * RoPE on the decoupled dims uses the checkpoint's interleaved-pair layout: pair i is dims
    (2i, 2i+1). Plain Llama rotate-half on these weights is wrong (logits off by ~3 on the fixture).
  * RMSNorm normalises in fp32 and casts back before the weight; `kv_a_layernorm` uses eps 1e-6
    whatever `rms_norm_eps` says (the reference builds it without an eps argument).
  * Softmax scale is (qk_nope + qk_rope)^-0.5; layer i < first_k_dense_replace is a dense SwiGLU,
    the rest are MoE (model/moe.py); untied lm_head; logits are returned in fp32.

Shape legend: B batch, T new positions, S all positions (cached + new), Hd hidden, nH heads,
dn qk_nope_head_dim, dr qk_rope_head_dim, dv v_head_dim, R kv_lora_rank, V vocab.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kvl_core.config import TextConfig
from kvl_core.model.cache import LatentCache
from kvl_core.model.moe import MoE, SwiGLU


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, T] -> cos, sin [B, 1, T, dim/2] in fp32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, device=positions.device).float() / dim)
    angles = positions.float()[..., None] * inv_freq
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]); output in de-interleaved order [rotated evens | rotated odds].

    The order change is harmless because q and k get the same permutation (dot products are
    unchanged); it is what the reference does, so intermediate tensors match it too.
    """
    xf = x.float()
    a, b = xf[..., 0::2], xf[..., 1::2]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)


class MLAttention(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.nh, self.dn, self.dr, self.dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.rank = cfg.kv_lora_rank
        self.scale = (self.dn + self.dr) ** -0.5
        hd, qd = cfg.hidden_size, self.nh * (self.dn + self.dr)
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(hd, qd, bias=False)
        else:
            self.q_a_proj = nn.Linear(hd, cfg.q_lora_rank, bias=cfg.attention_bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, qd, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hd, self.rank + self.dr, bias=cfg.attention_bias)
        self.kv_a_layernorm = RMSNorm(self.rank)  # eps 1e-6 on purpose, see module docstring
        self.kv_b_proj = nn.Linear(self.rank, self.nh * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(self.nh * self.dv, hd, bias=cfg.attention_bias)

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_uk [nH, dn, R] and W_uv^T [nH, R, dv], contiguous; rebuilt only when kv_b_proj changes."""
        w = self.kv_b_proj.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device)
        if getattr(self, "_absorbed_key", None) != key:
            wv = w.detach().view(self.nh, self.dn + self.dv, self.rank)
            self._absorbed = (wv[:, : self.dn].contiguous(), wv[:, self.dn :].transpose(1, 2).contiguous())
            self._absorbed_key = key
        return self._absorbed

    def forward(self, x, cos, sin, mask: torch.Tensor | None, cache: LatentCache | None):
        B, T, _ = x.shape
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_pe = q.view(B, T, self.nh, -1).transpose(1, 2).split([self.dn, self.dr], dim=-1)
        c, k_pe = self.kv_a_proj_with_mqa(x).split([self.rank, self.dr], dim=-1)
        c = self.kv_a_layernorm(c)  # [B, T, R]
        q_pe = apply_rope_interleaved(q_pe, cos, sin)  # [B, nH, T, dr]
        k_pe = apply_rope_interleaved(k_pe[:, None], cos, sin)[:, 0]  # [B, T, dr]

        past = cache.layer_len(self.layer_idx) if cache is not None else 0
        if cache is not None:
            cached = cache.append(self.layer_idx, torch.cat([c, k_pe], dim=-1))  # [B, S, R + dr]
        if past == 0:
            # Prefill / training: expand the latent into per-head keys and values.
            k_nope, v = self.kv_b_proj(c).view(B, T, self.nh, -1).transpose(1, 2).split([self.dn, self.dv], dim=-1)
            k = torch.cat([k_nope, k_pe[:, None].expand(B, self.nh, T, self.dr)], dim=-1)
            qf = torch.cat([q_nope, q_pe], dim=-1)
            # SDPA's fused (flash) kernels need v's head dim to equal q/k's (192 vs 128 here); zero
            # columns added to v leave the first dv output columns exact, and are ~4x faster on CPU
            # than the unfused fallback that builds the full T x T score matrix.
            pad = qf.shape[-1] - self.dv
            vp = F.pad(v, (0, pad)) if pad > 0 else v
            if isinstance(mask, DocumentLayout):
                o = mask.attend(qf, k, vp, self.scale)[..., : self.dv]
            else:
                o = F.scaled_dot_product_attention(qf, k, vp, attn_mask=mask, is_causal=mask is None and T > 1,
                                                   scale=self.scale)[..., : self.dv]
        else:
            # Decode: attend in latent space; q_nope.(W_uk c) == (W_uk^T q_nope).c and W_uv is applied after.
            w_uk, w_uv_t = self._absorbed_weights()
            q_lat = torch.matmul(q_nope, w_uk)  # [B, nH, T, R]
            # All heads share one latent key/value, so fold heads into the query axis: one bmm
            # against the cache, never a per-head copy of it.
            qf = torch.cat([q_lat, q_pe], dim=-1).reshape(B, self.nh * T, -1)
            scores = torch.bmm(qf, cached.transpose(1, 2)).view(B, self.nh, T, -1) * self.scale
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            probs = scores.float().softmax(-1).to(cached.dtype)
            o_lat = torch.bmm(probs.view(B, self.nh * T, -1), cached[..., : self.rank]).view(B, self.nh, T, self.rank)
            o = torch.matmul(o_lat, w_uv_t)  # [B, nH, T, dv]
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.nh * self.dv))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TextConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MLAttention(cfg, layer_idx)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_idx) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DeepseekV3Model(nn.Module):
    """`language_model.model`: embeddings, decoder layers, final norm."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        pad = cfg.pad_token_id if cfg.pad_token_id is not None and 0 <= cfg.pad_token_id < cfg.vocab_size else None
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # [B, T_kept, V] fp32 (None when the model returned only a loss)
    hidden_states: tuple[torch.Tensor, ...] | None = None
    past_key_values: LatentCache | None = None
    loss: torch.Tensor | None = None


def document_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """Packed sequences: [B, T] document ids -> [B, 1, T, T], causal within a document and nothing across.

    O(T^2) memory: the reference `DocumentLayout` is tested against, not what training uses."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


DOC_BACKENDS = ("auto", "sdpa", "flex", "flash", "mask")
FLEX_BLOCK = 128


def doc_attention_backend(device: torch.device, requested: str | None = None) -> str:
    """Which kernel computes document attention: KVL_DOC_ATTENTION (or `requested`) if set, else
    flash-attn's varlen kernel on CUDA when installed, FlexAttention on other CUDA, per-document SDPA on
    CPU. "mask" is the dense T x T reference (tests only)."""
    name = requested or os.environ.get("KVL_DOC_ATTENTION", "auto")
    if name not in DOC_BACKENDS:
        raise ValueError(f"KVL_DOC_ATTENTION={name!r}: choose from {', '.join(DOC_BACKENDS)}")
    if name != "auto":
        return name
    if device.type != "cuda":
        return "sdpa"
    try:
        import flash_attn  # noqa: F401

        return "flash"
    except ImportError:
        return "flex"


@dataclass
class DocumentLayout:
    """The documents of packed rows, computed once per forward and shared by every layer.

    A document is a maximal run of equal `doc_ids` in a row (rows hold whole documents in order; tail
    padding is one more document). Attention is causal inside each document and zero across, which is
    exactly `document_mask`, in O(T) memory:
      * sdpa  - documents of equal length are gathered into one [G, nH, n, d] batch and run through
                causal SDPA (its fused kernel, no n x n matrix on CPU); the work is sum(n_i^2).
      * flex  - FlexAttention with a block mask built from the document boundaries directly (never
                from a dense mask): O((T/128)^2) block metadata, fully masked blocks are skipped.
      * flash - flash-attn's varlen kernel over the rows flattened to one sequence (cu_seqlens).
    """

    doc_ids: torch.Tensor  # [B, T]
    backend: str = "sdpa"
    starts: list[int] = field(default_factory=list)  # flat start of each segment in the [B*T] order
    lengths: list[int] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_doc_ids(cls, doc_ids: torch.Tensor, backend: str | None = None) -> "DocumentLayout":
        B, T = doc_ids.shape
        change = torch.ones(B, T, dtype=torch.bool, device=doc_ids.device)
        change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
        starts = change.reshape(-1).nonzero().squeeze(1).cpu()
        ends = torch.cat([starts[1:], torch.tensor([B * T])])
        return cls(doc_ids, doc_attention_backend(doc_ids.device, backend), starts.tolist(), (ends - starts).tolist())

    # -- kernels -----------------------------------------------------------------------------------

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q, k [B, nH, T, d], v [B, nH, T, dv] -> [B, nH, T, dv]."""
        if self.backend == "mask":
            mask = self._cache.setdefault("mask", None)
            if mask is None:
                mask = self._cache["mask"] = document_mask(self.doc_ids)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if self.backend == "flex":
            return self._flex(q, k, v, scale)
        if self.backend == "flash":
            return self._flash(q, k, v, scale)
        return self._sdpa(q, k, v, scale)

    def _groups(self, device) -> tuple[list[tuple[int, torch.Tensor]], torch.Tensor]:
        """(length n, flat token indices [G*n]) per distinct document length, and the permutation that
        puts the concatenated group outputs back in token order; built once per forward."""
        got = self._cache.get("groups")
        if got is None:
            by_len: dict[int, list[int]] = {}
            for a, n in zip(self.starts, self.lengths):
                by_len.setdefault(n, []).append(a)
            groups = [(n, (torch.tensor(s, device=device)[:, None] + torch.arange(n, device=device)).flatten())
                      for n, s in by_len.items()]
            inverse = torch.cat([rows for _, rows in groups]).argsort()
            got = self._cache["groups"] = (groups, inverse)
        return got

    def _sdpa(self, q, k, v, scale):
        B, H, T, _ = q.shape
        if len(set(self.lengths)) == 1 and self.lengths[0] == T:  # one document per row
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=scale)
        flat = [t.transpose(1, 2).reshape(B * T, H, t.shape[-1]) for t in (q, k, v)]
        groups, inverse = self._groups(q.device)
        outs = []
        for n, rows in groups:
            qs, ks, vs = (t.index_select(0, rows).unflatten(0, (-1, n)).transpose(1, 2) for t in flat)
            o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=n > 1, scale=scale)  # [G, nH, n, dv]
            outs.append(o.transpose(1, 2).flatten(0, 1))
        return torch.cat(outs).index_select(0, inverse).view(B, T, H, -1).transpose(1, 2)

    def block_mask(self, device):
        """FlexAttention BlockMask of this layout, from per-block document ranges (no T x T tensor)."""
        bm = self._cache.get("block_mask")
        if bm is not None:
            return bm
        from torch.nn.attention.flex_attention import BlockMask

        doc = self.doc_ids
        B, T = doc.shape
        nb = (T + FLEX_BLOCK - 1) // FLEX_BLOCK
        padded = F.pad(doc, (0, nb * FLEX_BLOCK - T), value=-1)  # pad ids only appear in a last partial block
        blocks = padded.view(B, nb, FLEX_BLOCK)
        lo = blocks.masked_fill(blocks < 0, torch.iinfo(doc.dtype).max).amin(-1)  # [B, nb]
        hi = blocks.amax(-1)
        qi = torch.arange(nb, device=doc.device)
        causal = qi[:, None] >= qi[None, :]
        # Documents are in increasing id order along a row, so block ranges are intervals.
        overlap = (lo[:, :, None] <= hi[:, None, :]) & (lo[:, None, :] <= hi[:, :, None]) & causal  # [B, q, kv]
        single = lo == hi
        full_block = torch.ones(nb, dtype=torch.bool, device=doc.device)
        if T % FLEX_BLOCK:
            full_block[-1] = False
        full = (overlap & (qi[:, None] > qi[None, :]) & (single & full_block)[:, :, None] & (single & full_block)[:, None, :]
                & (lo[:, :, None] == lo[:, None, :]))
        partial = overlap & ~full

        def to_kv(m):  # [B, q, kv] bool -> (num [B, 1, q], indices [B, 1, q, kv]) with used ones first
            num = m.sum(-1, dtype=torch.int32)
            idx = torch.argsort(~m, dim=-1, stable=True).to(torch.int32)
            return num[:, None], idx[:, None]

        def mask_mod(b, h, q_idx, kv_idx):
            return (doc[b, q_idx] == doc[b, kv_idx]) & (q_idx >= kv_idx)

        kv_num, kv_idx = to_kv(partial)
        full_num, full_idx = to_kv(full)
        bm = BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                      seq_lengths=(T, T))
        self._cache["block_mask"] = bm
        return bm

    def _flex(self, q, k, v, scale):
        from torch.nn.attention.flex_attention import flex_attention

        fn = flex_attention
        if q.is_cuda:  # eager flex materialises the scores; the compiled kernel is the O(T) one
            fn = _compiled_flex()
        return fn(q, k, v, block_mask=self.block_mask(q.device), scale=scale)

    def _flash(self, q, k, v, scale):
        from flash_attn import flash_attn_varlen_func

        B, H, T, _ = q.shape
        cu = self._cache.get("cu")
        if cu is None:
            cu = self._cache["cu"] = torch.tensor(self.starts + [B * T], dtype=torch.int32, device=q.device)
        dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
        flat = [t.transpose(1, 2).reshape(B * T, H, t.shape[-1]).to(dtype) for t in (q, k, v)]
        o = flash_attn_varlen_func(*flat, cu, cu, max(self.lengths), max(self.lengths), softmax_scale=scale, causal=True)
        return o.to(q.dtype).view(B, T, H, -1).transpose(1, 2)


_FLEX = None


def _compiled_flex():
    global _FLEX
    if _FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX = torch.compile(flex_attention)
    return _FLEX


def attention_mask_4d(attention_mask: torch.Tensor | None, T: int, past: int, device) -> torch.Tensor | None:
    """Boolean [B|1, 1, T, S] mask (True = may attend), or None when plain causal attention suffices.

    A 4-D mask is passed through (packed training batches build block-diagonal causal masks).
    Query rows with no visible key (left padding) are opened up so SDPA yields finite values;
    nothing reads those rows.
    """
    if attention_mask is not None and attention_mask.dim() == 4:
        return attention_mask.bool()
    if attention_mask is None and past == 0:
        return None
    S = past + T
    q_pos = torch.arange(past, S, device=device)
    m = (torch.arange(S, device=device)[None, :] <= q_pos[:, None])[None, None]
    if attention_mask is not None:
        m = m & attention_mask[:, None, None, -S:].bool()
        m = m | ~m.any(-1, keepdim=True)
    return m


class DeepseekV3ForCausalLM(nn.Module):
    """`language_model`: token ids or embeddings -> fp32 logits, with an optional latent KV cache."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.config = cfg
        self.model = DeepseekV3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def new_cache(self, capacity: int = 0) -> LatentCache:
        return LatentCache(self.config.num_hidden_layers, capacity)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: LatentCache | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        doc_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        """`doc_ids` [B, T] marks the documents of a packed training row: attention stays inside each
        document (pass `position_ids` restarting at 0 per document alongside), in O(T) memory
        (`DocumentLayout`); it replaces `attention_mask`. `labels` [B, T] (-100 = ignored): return the
        summed cross-entropy as `loss` and no logits (`chunked_lm_loss`)."""
        layout = DocumentLayout.from_doc_ids(doc_ids) if doc_ids is not None else None
        if inputs_embeds is None:
            inputs_embeds = self.model.embed_tokens(input_ids)
        x = inputs_embeds
        B, T, _ = x.shape
        cache = past_key_values
        if cache is None and use_cache:
            cache = self.new_cache()
        past = cache.seq_len if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None and attention_mask.dim() == 2:
                # Left padding: positions count only real tokens (pads get 1, as the reference does).
                pos = attention_mask.long().cumsum(-1) - 1
                position_ids = pos.masked_fill(attention_mask == 0, 1)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=x.device).expand(B, T)
        cos, sin = rope_cos_sin(position_ids, self.config.qk_rope_head_dim, self.config.rope_theta)
        mask = layout if layout is not None else attention_mask_4d(attention_mask, T, past, x.device)
        hidden = [x] if output_hidden_states else None
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask, cache)
            if hidden is not None:
                hidden.append(x)
        x = self.model.norm(x)
        if hidden is not None:
            hidden[-1] = x  # the last entry is the final norm's output, as in HF
        if labels is not None:
            loss = chunked_lm_loss(self.lm_head, x, labels)
            return CausalLMOutput(logits=None, hidden_states=tuple(hidden) if hidden else None, loss=loss)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        logits = self.lm_head(x).float()
        return CausalLMOutput(logits=logits, hidden_states=tuple(hidden) if hidden else None, past_key_values=cache)


LOSS_CHUNK_TOKENS = 2048


def chunked_lm_loss(lm_head: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                    chunk: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Summed cross-entropy of `lm_head(x)` [.., V] against `labels` (-100 ignored), in fp32.

    The real vocabulary is 163,840: a 32K row's fp32 logits and their gradient alone are 43 GB. So the
    row goes through the head `chunk` tokens at a time and each chunk's logits are recomputed in
    backward (torch.utils.checkpoint) instead of kept: the peak is one chunk's logits whatever the row
    length. A row of at most `chunk` tokens takes the plain path (same bits as unchunked).
    """
    x, labels = x.flatten(0, -2), labels.flatten()

    def ce(xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(lm_head(xs).float(), ys, ignore_index=-100, reduction="sum")

    if x.shape[0] <= chunk:
        return ce(x, labels)
    from torch.utils.checkpoint import checkpoint

    run = (lambda xs, ys: checkpoint(ce, xs, ys, use_reentrant=False)) if torch.is_grad_enabled() else ce
    return torch.stack([run(x[a : a + chunk], labels[a : a + chunk]) for a in range(0, x.shape[0], chunk)]).sum()
