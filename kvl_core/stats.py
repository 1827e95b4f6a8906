"""Model size arithmetic from a `KimiVLConfig` alone: checkpoint tensor names/shapes, parameter counts, KV-cache size.

Nothing here touches weights or torch, so `kvl info` can describe a model from its `config.json` before the
weights are downloaded. `expected_tensors` is the single source of truth: one formula per tensor family of the
HF checkpoint layout (model.md §11); every count below is a sum over that map, so the numbers are exact per
tensor (LayerNorm weight+bias, biases, `e_score_correction_bias`) and equal `sum(p.numel())` of a faithful model.

"Active" parameters are those a single token touches: everything except the routed experts a token is not
routed to (num_experts_per_tok of n_routed_experts per MoE layer). Published "activated" figures differ in how
they treat the embedding table (a lookup reads one row) and the untied `lm_head`, so `ParamStats` reports the
three usual conventions side by side instead of picking one silently.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from kvl_core.config import KimiVLConfig

# Bytes per element of the dtype spellings found in config.json (`torch_dtype`) and safetensors headers.
DTYPE_BYTES: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}

# Order in which LM categories are reported.
LM_CATEGORIES = ("embeddings", "attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms",
                 "lm_head")

Shapes = dict[str, tuple[int, ...]]


def dtype_bytes(dtype: str) -> int:
    """Element size of a config/safetensors dtype name ("bfloat16", "torch.bfloat16", "BF16", ...)."""
    name = str(dtype).removeprefix("torch.")
    try:
        return DTYPE_BYTES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}") from None


# ---- checkpoint layout ----------------------------------------------------------------------------------------

def vision_tensors(cfg: KimiVLConfig) -> Shapes:
    """`vision_tower.*` (MoonViT): patch conv, learned pos-emb grid, pre-norm blocks with LayerNorm+bias."""
    v = cfg.vision
    h, i, p = v.hidden_size, v.intermediate_size, v.patch_size
    out: Shapes = {
        "vision_tower.patch_embed.proj.weight": (h, 3, p, p),
        "vision_tower.patch_embed.proj.bias": (h,),
        "vision_tower.patch_embed.pos_emb.weight": (v.init_pos_emb_height, v.init_pos_emb_width, h),
    }
    for b in range(v.num_hidden_layers):
        pre = f"vision_tower.encoder.blocks.{b}."
        for norm in ("norm0", "norm1"):
            out[pre + norm + ".weight"] = (h,)
            out[pre + norm + ".bias"] = (h,)
        out[pre + "wqkv.weight"] = (3 * h, h)
        out[pre + "wqkv.bias"] = (3 * h,)
        out[pre + "wo.weight"] = (h, h)
        out[pre + "wo.bias"] = (h,)
        out[pre + "mlp.fc0.weight"] = (i, h)
        out[pre + "mlp.fc0.bias"] = (i,)
        out[pre + "mlp.fc1.weight"] = (h, i)
        out[pre + "mlp.fc1.bias"] = (h,)
    out["vision_tower.encoder.final_layernorm.weight"] = (h,)
    out["vision_tower.encoder.final_layernorm.bias"] = (h,)
    return out


def projector_tensors(cfg: KimiVLConfig) -> Shapes:
    """`multi_modal_projector.*`: LayerNorm per patch, then an MLP on the 2x2-merged (concatenated) patches."""
    h = cfg.vision.hidden_size
    kh, kw = cfg.vision.merge_kernel_size
    m = h * kh * kw
    d = cfg.text.hidden_size
    return {
        "multi_modal_projector.pre_norm.weight": (h,),
        "multi_modal_projector.pre_norm.bias": (h,),
        "multi_modal_projector.linear_1.weight": (m, m),
        "multi_modal_projector.linear_1.bias": (m,),
        "multi_modal_projector.linear_2.weight": (d, m),
        "multi_modal_projector.linear_2.bias": (d,),
    }


def lm_tensors(cfg: KimiVLConfig) -> Shapes:
    """`language_model.*` (DeepSeek-V3 layout: MLA attention, dense layers then MoE layers)."""
    t = cfg.text
    d, nh = t.hidden_size, t.num_attention_heads
    pre = "language_model.model."
    out: Shapes = {pre + "embed_tokens.weight": (t.vocab_size, d)}
    for layer in range(t.num_hidden_layers):
        lp = f"{pre}layers.{layer}."
        out[lp + "input_layernorm.weight"] = (d,)
        out[lp + "post_attention_layernorm.weight"] = (d,)
        a = lp + "self_attn."
        # Bias placement follows the reference DeepseekV3Attention: `attention_bias` only on q_a / kv_a / o.
        if t.q_lora_rank is None:
            out[a + "q_proj.weight"] = (nh * t.qk_head_dim, d)
        else:
            out[a + "q_a_proj.weight"] = (t.q_lora_rank, d)
            if t.attention_bias:
                out[a + "q_a_proj.bias"] = (t.q_lora_rank,)
            out[a + "q_a_layernorm.weight"] = (t.q_lora_rank,)
            out[a + "q_b_proj.weight"] = (nh * t.qk_head_dim, t.q_lora_rank)
        out[a + "kv_a_proj_with_mqa.weight"] = (t.kv_lora_rank + t.qk_rope_head_dim, d)
        if t.attention_bias:
            out[a + "kv_a_proj_with_mqa.bias"] = (t.kv_lora_rank + t.qk_rope_head_dim,)
        out[a + "kv_a_layernorm.weight"] = (t.kv_lora_rank,)
        out[a + "kv_b_proj.weight"] = (nh * (t.qk_nope_head_dim + t.v_head_dim), t.kv_lora_rank)
        out[a + "o_proj.weight"] = (d, nh * t.v_head_dim)
        if t.attention_bias:
            out[a + "o_proj.bias"] = (d,)
        m = lp + "mlp."
        if t.is_moe_layer(layer):
            n = t.n_routed_experts
            out[m + "gate.weight"] = (n, d)
            if t.topk_method == "noaux_tc":
                out[m + "gate.e_score_correction_bias"] = (n,)
            for e in range(n):
                _swiglu(out, f"{m}experts.{e}.", d, t.moe_intermediate_size)
            if t.n_shared_experts:
                _swiglu(out, m + "shared_experts.", d, t.moe_intermediate_size * t.n_shared_experts)
        else:
            _swiglu(out, m, d, t.intermediate_size)
    out[pre + "norm.weight"] = (d,)
    if not t.tie_word_embeddings:
        out["language_model.lm_head.weight"] = (t.vocab_size, d)
    return out


def _swiglu(out: Shapes, prefix: str, d: int, inter: int) -> None:
    out[prefix + "gate_proj.weight"] = (inter, d)
    out[prefix + "up_proj.weight"] = (inter, d)
    out[prefix + "down_proj.weight"] = (d, inter)


def expected_tensors(cfg: KimiVLConfig) -> Shapes:
    """Every tensor of an HF-layout Kimi-VL checkpoint for `cfg`, name -> shape, in module order."""
    return {**vision_tensors(cfg), **projector_tensors(cfg), **lm_tensors(cfg)}


# ---- parameter counts -----------------------------------------------------------------------------------------

_LM_RULES: tuple[tuple[str, re.Pattern], ...] = (
    # First match wins, so the more specific families come first.
    ("embeddings", re.compile(r"\.embed_tokens\.")),
    ("lm_head", re.compile(r"^language_model\.lm_head\.")),
    ("norms", re.compile(r"(layernorm|\.norm)\.weight$")),  # every RMSNorm, incl. kv_a/q_a_layernorm
    ("routed_experts", re.compile(r"\.mlp\.experts\.")),
    ("shared_experts", re.compile(r"\.mlp\.shared_experts\.")),
    ("router", re.compile(r"\.mlp\.gate\.")),
    ("attention", re.compile(r"\.self_attn\.")),
    ("dense_mlp", re.compile(r"\.mlp\.(gate|up|down)_proj\.")),
)


def lm_category(name: str) -> str:
    """The LM parameter family of a checkpoint tensor name (see `LM_CATEGORIES`)."""
    for cat, pat in _LM_RULES:
        if pat.search(name):
            return cat
    raise ValueError(f"unclassified language-model tensor {name!r}")


@dataclass(frozen=True)
class Count:
    total: int
    active: int


@dataclass
class ParamStats:
    """Parameter counts of one config. `active` = per token; see the module docstring for the conventions."""

    vision: int
    projector: int
    lm: dict[str, Count] = field(default_factory=dict)  # per LM category, in LM_CATEGORIES order

    @property
    def lm_total(self) -> int:
        return sum(c.total for c in self.lm.values())

    @property
    def lm_active(self) -> int:
        """Active LM parameters counting the embedding table and lm_head in full (the headline convention)."""
        return sum(c.active for c in self.lm.values())

    @property
    def lm_active_without_embedding_table(self) -> int:
        """Active LM parameters without the input embedding table (a lookup reads one row per token)."""
        return self.lm_active - self.lm["embeddings"].active

    @property
    def lm_active_non_embedding(self) -> int:
        """Active LM parameters without embedding table and lm_head (Moonlight's "non-embedding" convention)."""
        return self.lm_active_without_embedding_table - self.lm.get("lm_head", Count(0, 0)).active

    @property
    def total(self) -> int:
        return self.vision + self.projector + self.lm_total

    @property
    def active(self) -> int:
        """Per text token: the LM's active parameters; per image token add vision + projector (all dense)."""
        return self.vision + self.projector + self.lm_active

    def as_dict(self) -> dict:
        return {
            "vision": {"total": self.vision, "active": self.vision},
            "projector": {"total": self.projector, "active": self.projector},
            "lm": {k: asdict(v) for k, v in self.lm.items()},
            "lm_total": self.lm_total,
            "lm_active": self.lm_active,
            "lm_active_without_embedding_table": self.lm_active_without_embedding_table,
            "lm_active_non_embedding": self.lm_active_non_embedding,
            "total": self.total,
            "active": self.active,
        }


def param_stats(cfg: KimiVLConfig) -> ParamStats:
    """Exact parameter counts per part and LM family, total and active per token."""
    vision = sum(math.prod(s) for s in vision_tensors(cfg).values())
    projector = sum(math.prod(s) for s in projector_tensors(cfg).values())
    totals = dict.fromkeys(LM_CATEGORIES, 0)
    for name, shape in lm_tensors(cfg).items():
        totals[lm_category(name)] += math.prod(shape)
    t = cfg.text
    lm = {}
    for cat, n in totals.items():
        if cat == "lm_head" and t.tie_word_embeddings:
            continue  # shares the embedding table: no parameters of its own
        active = n
        if cat == "routed_experts" and n:
            # All routed experts have the same size, so the active share is exact integer arithmetic.
            active = n // t.n_routed_experts * t.num_experts_per_tok
        lm[cat] = Count(n, active)
    return ParamStats(vision=vision, projector=projector, lm=lm)


# ---- KV cache -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KVCacheStats:
    """Per-token cache size. MLA caches the compressed latent + the shared rope key; a naive cache stores the
    decompressed per-head K (qk_nope + qk_rope) and V (v_head_dim), as the HF reference code does."""

    dtype: str
    latent_values_per_token: int
    naive_values_per_token: int
    bytes_per_value: int

    @property
    def latent_bytes_per_token(self) -> int:
        return self.latent_values_per_token * self.bytes_per_value

    @property
    def naive_bytes_per_token(self) -> int:
        return self.naive_values_per_token * self.bytes_per_value

    def as_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "latent_values_per_token": self.latent_values_per_token,
            "latent_bytes_per_token": self.latent_bytes_per_token,
            "naive_values_per_token": self.naive_values_per_token,
            "naive_bytes_per_token": self.naive_bytes_per_token,
        }


def kv_cache_stats(cfg: KimiVLConfig, dtype: str | None = None) -> KVCacheStats:
    """KV-cache size per token for all layers, at `dtype` (default: the config's `torch_dtype`)."""
    t = cfg.text
    dtype = str(dtype or cfg.torch_dtype).removeprefix("torch.")
    latent = (t.kv_lora_rank + t.qk_rope_head_dim) * t.num_hidden_layers
    naive = t.num_hidden_layers * t.num_key_value_heads * (t.qk_head_dim + t.v_head_dim)
    return KVCacheStats(dtype=dtype, latent_values_per_token=latent, naive_values_per_token=naive,
                        bytes_per_value=dtype_bytes(dtype))
