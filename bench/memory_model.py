"""Per-rank memory model of FSDP2 training for the real Kimi-VL-A3B config (docs/training.md).

Counted exactly (meta device, no memory): parameters per part and per optimizer branch (Muon matrices,
AdamW rest), and the largest FSDP unit. Measured: saved-for-backward activation bytes per token of one
MoE decoder layer in bf16 (saved_tensors_hooks; parameters excluded) on width-scaled copies of the real
text config (hidden, MLP, latent and head dims x 1/16 and x 1/8; 16 heads, 64 experts top-6 kept) over a
2K-token row of 512-token documents, extrapolated linearly in width to x 1. With per-layer activation
checkpointing a layer keeps only its bf16 input, plus one layer's full activations while it recomputes.

Writes bench/results/memory_model.json and prints the table. Usage: python bench/memory_model.py (~1 min).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from kvl_core.config import preset
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.model.language import LOSS_CHUNK_TOKENS, DecoderLayer, DocumentLayout, rope_cos_sin
from kvl_core.training.muon import classify_params

RESULTS = Path(__file__).resolve().parent / "results"
GB = 1e9


def counts() -> dict:
    cfg = preset("kimi-vl-a3b")
    with torch.device("meta"):
        model = KimiVLForConditionalGeneration(cfg)
    roles = classify_params(model)
    total = {"llm": 0, "vision": 0, "muon_llm": 0, "adamw_llm": 0, "muon_vision": 0, "adamw_vision": 0}
    for name, p in model.named_parameters():
        part = "llm" if name.startswith("language_model") else "vision"
        total[part] += p.numel()
        role = roles.get(name)
        if role in ("muon", "adamw"):
            total[f"{role}_{part}"] += p.numel()
    layers = model.language_model.model.layers
    total["largest_layer"] = max(sum(p.numel() for p in layer.parameters()) for layer in layers)
    # the largest Muon unit: one projection of all experts of a layer, orthogonalised as one stack
    from kvl_core.training.muon import param_groups_for

    total["largest_muon_unit"] = max(sum(p.numel() for p in g["params"]) if g.get("stack") else
                                     max(p.numel() for p in g["params"])
                                     for g in param_groups_for(model, lr=1e-4) if g["algo"] == "muon")
    total["layers"] = len(layers)
    total["hidden"] = cfg.text.hidden_size
    total["vocab"] = cfg.text.vocab_size
    return total


def activation_bytes_per_token(scale: float, T: int = 2048) -> float:
    t = preset("kimi-vl-a3b").text
    s = lambda n: max(8, int(n * scale))  # noqa: E731
    cfg = replace(t, hidden_size=s(t.hidden_size), intermediate_size=s(t.intermediate_size),
                  moe_intermediate_size=s(t.moe_intermediate_size), kv_lora_rank=s(t.kv_lora_rank),
                  qk_nope_head_dim=s(t.qk_nope_head_dim), qk_rope_head_dim=s(t.qk_rope_head_dim),
                  v_head_dim=s(t.v_head_dim), q_lora_rank=s(t.q_lora_rank) if t.q_lora_rank else None)
    torch.manual_seed(0)
    layer = DecoderLayer(cfg, layer_idx=max(1, cfg.first_k_dense_replace)).to(torch.bfloat16)
    params = {p.data_ptr() for p in layer.parameters()}
    doc_ids = (torch.arange(T) // 512)[None]
    pos = (torch.arange(T) % 512)[None]
    cos, sin = rope_cos_sin(pos, cfg.qk_rope_head_dim, cfg.rope_theta)
    x = torch.randn(1, T, cfg.hidden_size, dtype=torch.bfloat16, requires_grad=True)
    total = 0

    def pack(t):
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x, cos, sin, DocumentLayout.from_doc_ids(doc_ids), None)
    return total / T


def main() -> None:
    c = counts()
    a16, a8 = activation_bytes_per_token(1 / 16), activation_bytes_per_token(1 / 8)
    slope = (a8 - a16) / (1 / 8 - 1 / 16)
    per_token_layer = a16 + slope * (1 - 1 / 16)  # linear in width, extrapolated to the real config
    rows = {}
    for world, hbm in ((8, 80), (8, 141)):
        params = c["llm"] + c["vision"]
        sharded = params * (4 + 4) / world  # fp32 master + fp32 grad shards (LLM and ViT alike)
        # Muon momentum on owners (1/world of the matrices each), AdamW moments sharded
        states = ((c["muon_llm"] + c["muon_vision"]) * 4 + (c["adamw_llm"] + c["adamw_vision"]) * 8) / world
        gathered = c["largest_layer"] * 2 * 2  # bf16 unit being computed + the next one prefetched
        # an owner's transient: the unit's whole fp32 gradient, its fp32 update and bf16 NS iterates (~3x)
        owner = c["largest_muon_unit"] * (4 + 4 + 3 * 2)
        fixed = sharded + states + gathered + owner
        for tokens in (8192, 32768):
            acts_plain = per_token_layer * tokens * c["layers"]
            acts_ckpt = tokens * c["hidden"] * 2 * c["layers"] + per_token_layer * tokens
            logits_whole = tokens * c["vocab"] * 4 * 2  # fp32 logits + their gradient, whole row at once
            # chunked loss: one chunk's bf16 logits, fp32 copy, log-softmax and gradient at a time
            logits = min(tokens, LOSS_CHUNK_TOKENS) * c["vocab"] * (2 + 4 + 4 + 4)
            rows[f"{world}x{hbm}GB {tokens // 1024}K"] = {
                "weights+grads (sharded)": sharded / GB, "optimizer states": states / GB,
                "gathered bf16 units": gathered / GB, "Muon owner workspace": owner / GB,
                "activations, no checkpointing": acts_plain / GB, "activations, checkpointed": acts_ckpt / GB,
                "logits, whole row (unchunked)": logits_whole / GB,
                f"logits, chunked ({LOSS_CHUNK_TOKENS} tokens)": logits / GB,
                "total, checkpointed": (fixed + acts_ckpt + logits) / GB,
                "total, no checkpointing": (fixed + acts_plain + logits) / GB,
                "total, checkpointed, unchunked logits": (fixed + acts_ckpt + logits_whole) / GB, "HBM": hbm}
    out = {"counts": c, "activation_bytes_per_token_per_layer": {"x1/16": a16, "x1/8": a8, "x1 (extrapolated)": per_token_layer},
           "per_rank_GB": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_model.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    # the docs/training.md table: GB per rank, 8 ranks (the HBM size changes only the verdict)
    cols = [k for k in rows if k.startswith("8x80GB")]
    print("\n| GB per rank (8 ranks) | " + " | ".join(k.split()[-1] + " row" for k in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for key in rows[cols[0]]:
        if key != "HBM":
            print(f"| {key} | " + " | ".join(f"{rows[k][key]:.1f}" for k in cols) + " |")


if __name__ == "__main__":
    main()
