"""Kimi-VL configuration: plain dataclasses, HF `config.json` reading/writing, named presets.

Three parts, as in the checkpoint's `config.json` (model.md §1):
  VisionConfig  <- `vision_config` (model_type "moonvit")
  TextConfig    <- `text_config`   (model_type "deepseek_v3", the Moonlight-16B-A3B language model)
  KimiVLConfig  <- top level       (model_type "kimi_vl")

The defaults trap: the reference code builds `text_config` through DeepSeek-V3's own config class,
whose defaults are DeepSeek-V3-671B values (rms_norm_eps 1e-6, 61 layers, ...). A key missing from a
checkpoint's `text_config` therefore *means* that 671B default, not the Kimi-VL value. `from_hf_dict`
applies those reference defaults; the dataclass defaults are the real Kimi-VL-A3B values and serve
presets only. `to_hf_dict` always writes every key, so our own checkpoints never depend on defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvl_core.errors import KvlError, read_json_object


@dataclass
class VisionConfig:
    """MoonViT (paper §2.1). Defaults: the released Kimi-VL vision tower (SigLIP-so400m init)."""

    patch_size: int = 14
    init_pos_emb_height: int = 64  # learnable abs pos-emb grid, bicubic-resized per image
    init_pos_emb_width: int = 64
    num_attention_heads: int = 16
    num_hidden_layers: int = 27
    hidden_size: int = 1152
    intermediate_size: int = 4304
    merge_kernel_size: tuple[int, int] = (2, 2)
    layer_norm_eps: float = 1e-5
    rope_max_height: int = 512  # 2D-RoPE table size; images must stay below 512 patches per side
    rope_max_width: int = 512
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass
class TextConfig:
    """Moonlight / DeepSeek-V3 language model (MLA + MoE). Defaults: Kimi-VL-A3B values (model.md §1.3)."""

    vocab_size: int = 163840
    hidden_size: int = 2048
    intermediate_size: int = 11264  # dense MLP width (layers < first_k_dense_replace)
    moe_intermediate_size: int = 1408  # per-expert width; shared experts are n_shared_experts x this
    num_hidden_layers: int = 27
    num_attention_heads: int = 16
    num_key_value_heads: int = 16
    q_lora_rank: int | None = None  # None: plain q_proj
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    n_routed_experts: int | None = 64
    num_experts_per_tok: int | None = 6
    n_shared_experts: int | None = 2
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    n_group: int | None = 1
    topk_group: int | None = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.446
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 800000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 131072
    attention_bias: bool = False
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    num_nextn_predict_layers: int = 0
    bos_token_id: int | None = 163584
    eos_token_id: int | list[int] | None = 163586
    pad_token_id: int | None = 163839

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe_layer(self, i: int) -> bool:
        return (
            self.n_routed_experts is not None
            and i >= self.first_k_dense_replace
            and i % self.moe_layer_freq == 0
        )


# What the reference's DeepSeek-V3 config class fills in for keys absent from `text_config`.
REFERENCE_TEXT_DEFAULTS: dict[str, Any] = dict(
    vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
    num_hidden_layers=61, num_nextn_predict_layers=1, num_attention_heads=128,
    num_key_value_heads=None, n_shared_experts=1, n_routed_experts=256, routed_scaling_factor=2.5,
    kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128, qk_nope_head_dim=128,
    topk_method="noaux_tc", n_group=8, topk_group=4, num_experts_per_tok=8, moe_layer_freq=1,
    first_k_dense_replace=3, norm_topk_prob=True, scoring_func="sigmoid", aux_loss_alpha=0.001,
    seq_aux=True, hidden_act="silu", max_position_embeddings=4096, initializer_range=0.02,
    rms_norm_eps=1e-6, pad_token_id=None, bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
    rope_theta=10000.0, rope_scaling=None, attention_bias=False, attention_dropout=0.0,
)


@dataclass
class KimiVLConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    media_placeholder_token_id: int = 163605  # <|media_pad|>
    ignore_index: int = -100
    pad_token_id: int = 0
    torch_dtype: str = "bfloat16"  # dtype of the stored weights

    # ---- HF config.json ---------------------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> "KimiVLConfig":
        model_type = d.get("model_type")
        if model_type != "kimi_vl":
            raise KvlError(f"{source}: unsupported model_type {model_type!r} (expected 'kimi_vl')")
        vis = d.get("vision_config") or {}
        txt = d.get("text_config") or {}
        for part, sub, expect in (("vision_config", vis, "moonvit"), ("text_config", txt, "deepseek_v3")):
            if not isinstance(sub, dict):
                raise KvlError(f"{source}: {part} must be an object")
            if sub.get("model_type", expect) != expect:
                raise KvlError(f"{source}: {part}.model_type is {sub.get('model_type')!r}, expected {expect!r}")
        vision = VisionConfig(**_known(VisionConfig, vis))
        vision.merge_kernel_size = tuple(vision.merge_kernel_size)
        merged = {**REFERENCE_TEXT_DEFAULTS, **_known(TextConfig, txt)}
        if merged["num_key_value_heads"] is None:
            merged["num_key_value_heads"] = merged["num_attention_heads"]
        text = TextConfig(**{k: v for k, v in merged.items() if k in _field_names(TextConfig)})
        cfg = cls(
            vision=vision,
            text=text,
            media_placeholder_token_id=d.get("media_placeholder_token_id", 163605),
            ignore_index=d.get("ignore_index", -100),
            pad_token_id=d.get("pad_token_id", 0),
            torch_dtype=str(d.get("torch_dtype") or txt.get("torch_dtype") or "bfloat16"),
        )
        cfg.validate(source)
        return cfg

    def to_hf_dict(self) -> dict:
        vis = dataclasses.asdict(self.vision)
        vis["merge_kernel_size"] = list(self.vision.merge_kernel_size)
        return {
            "architectures": ["KimiVLForConditionalGeneration"],
            "model_type": "kimi_vl",
            "auto_map": {
                "AutoConfig": "configuration_kimi_vl.KimiVLConfig",
                "AutoModel": "modeling_kimi_vl.KimiVLForConditionalGeneration",
                "AutoModelForCausalLM": "modeling_kimi_vl.KimiVLForConditionalGeneration",
            },
            "ignore_index": self.ignore_index,
            "media_placeholder_token_id": self.media_placeholder_token_id,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": self.torch_dtype,
            "vision_config": {"model_type": "moonvit", **vis, "torch_dtype": self.torch_dtype},
            "text_config": {
                "model_type": "deepseek_v3",
                **dataclasses.asdict(self.text),
                "torch_dtype": self.torch_dtype,
            },
        }

    @classmethod
    def from_file(cls, path: str | Path) -> "KimiVLConfig":
        path = Path(path)
        return cls.from_hf_dict(read_json_object(path), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    def validate(self, source: str = "config") -> None:
        v, t = self.vision, self.text
        problems = []
        if v.hidden_size % v.num_attention_heads:
            problems.append("vision hidden_size is not divisible by num_attention_heads")
        elif v.head_dim % 4:
            problems.append("vision head_dim must be a multiple of 4 (2D RoPE)")
        if t.qk_rope_head_dim % 2:
            problems.append("text qk_rope_head_dim must be even")
        if t.num_key_value_heads != t.num_attention_heads:
            problems.append("MLA needs num_key_value_heads == num_attention_heads")
        if t.n_routed_experts is not None and not (0 < (t.num_experts_per_tok or 0) <= t.n_routed_experts):
            problems.append("num_experts_per_tok must be in 1..n_routed_experts")
        if t.n_routed_experts is not None and t.scoring_func not in ("sigmoid", "softmax"):
            problems.append(f"unsupported scoring_func {t.scoring_func!r}")
        if t.rope_scaling not in (None, {}) and (t.rope_scaling.get("type") or t.rope_scaling.get("rope_type")) not in (None, "default"):
            problems.append(f"rope_scaling {t.rope_scaling!r} is not supported (Kimi-VL uses none)")
        if not 0 <= self.media_placeholder_token_id < t.vocab_size:
            problems.append("media_placeholder_token_id is outside the vocabulary")
        for name, val in [("vision.hidden_size", v.hidden_size), ("text.hidden_size", t.hidden_size),
                          ("text.vocab_size", t.vocab_size), ("text.num_hidden_layers", t.num_hidden_layers)]:
            if not isinstance(val, int) or val <= 0:
                problems.append(f"{name} must be a positive integer")
        if problems:
            raise KvlError(f"{source}: " + "; ".join(problems))


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _known(cls, d: dict) -> dict:
    return {k: v for k, v in d.items() if k in _field_names(cls)}


# ---- presets ------------------------------------------------------------------------------------

def kimi_vl_a3b() -> KimiVLConfig:
    """moonshotai/Kimi-VL-A3B-Instruct / -Thinking / -Thinking-2506 (same shapes)."""
    return KimiVLConfig()


def tiny() -> KimiVLConfig:
    """The shape of shared/fixtures/kimi_vl_tiny: runs on CPU in milliseconds."""
    return KimiVLConfig(
        vision=VisionConfig(init_pos_emb_height=8, init_pos_emb_width=8, num_attention_heads=4,
                            num_hidden_layers=2, hidden_size=64, intermediate_size=128),
        text=TextConfig(vocab_size=300, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
                        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32,
                        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
                        num_experts_per_tok=2, n_shared_experts=2, max_position_embeddings=512,
                        bos_token_id=256, eos_token_id=258, pad_token_id=299),
        media_placeholder_token_id=277,
        torch_dtype="float32",
    )


NANO_MERGES = 724
_NANO_BASE = 256 + NANO_MERGES  # first special id: [BOS]


def nano() -> KimiVLConfig:
    """kvl-nano, the built-in default model: the full architecture (MoonViT, projector, MLA + MoE with
    shared experts and aux-free routing) at ~6.5M parameters, sized so the whole recipe
    (`kvl train --recipe nano`) trains on a 2-core CPU within the hour; 13 MB in bf16.

    Vocabulary: 256 bytes + NANO_MERGES byte-level BPE merges learned by the recipe on its corpus
    (fixed prompts compress ~4.5x, so the CPU is not spent re-reading them byte by byte), then Kimi's
    special tokens at their usual offsets, [UNK]/[PAD] last."""
    return KimiVLConfig(
        vision=VisionConfig(init_pos_emb_height=24, init_pos_emb_width=32, num_attention_heads=3,
                            num_hidden_layers=4, hidden_size=192, intermediate_size=512),
        text=TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=768, moe_intermediate_size=128,
                        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=64,
                        qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
                        num_experts_per_tok=2, n_shared_experts=1, max_position_embeddings=2048,
                        rope_theta=50000.0, bos_token_id=_NANO_BASE, eos_token_id=_NANO_BASE + 1,
                        pad_token_id=1023),
        media_placeholder_token_id=_NANO_BASE + 21,  # <|media_pad|>
        torch_dtype="bfloat16",
    )


PRESETS = {"kimi-vl-a3b": kimi_vl_a3b, "tiny": tiny, "nano": nano}


def preset(name: str) -> KimiVLConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise KvlError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
