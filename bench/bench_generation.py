"""Generation speed and cache size: kvl vs transformers' DeepseekV3ForCausalLM, same weights, same run.

Measures, on a mid-size random config (hidden 512, 8 layers, 16 experts top-4, 2 shared,
kv_lora_rank 128) at batch 1 on this CPU:
  * decode tokens/s after a 2,048-token prompt  (target: kvl >= 2x transformers' generate)
  * prefill tokens/s on the same prompt          (target: >= 1x)
  * KV-cache bytes per token                     (target: the latent size)
  * MoonViT on mixed-resolution images: packed (varlen) vs a zero-padded batch (target: >= 1.5x)

Writes bench/results/generation.json. Usage: python bench/bench_generation.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kvl_core.config import TextConfig, VisionConfig
from kvl_core.generation import SamplingParams, generate
from kvl_core.model.language import DeepseekV3ForCausalLM
from kvl_core.model.vision import MoonViT, apply_rope_pairs, rope2d_cos_sin

RESULTS = Path(__file__).resolve().parent / "results"


def mid_config() -> TextConfig:
    return TextConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536, moe_intermediate_size=256,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, kv_lora_rank=128,
                      qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=16,
                      num_experts_per_tok=4, n_shared_experts=2, first_k_dense_replace=1,
                      max_position_embeddings=8192, pad_token_id=None)


def hf_copy(cfg: TextConfig, ours: DeepseekV3ForCausalLM):
    from kvl_core.model.hf_compat import to_transformers

    return to_transformers(ours, attn_implementation="sdpa")


def timed(fn, repeat=1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


@torch.no_grad()
def bench_lm(prompt_len: int, new_tokens: int) -> dict:
    cfg = mid_config()
    torch.manual_seed(0)
    ours = DeepseekV3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() > 1:
                p.normal_(0, p.shape[-1] ** -0.5)
    hf = hf_copy(cfg, ours)
    ids = torch.randint(0, cfg.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))

    # prefill: one forward over the prompt, last position's logits only, cache filled
    t_ours, _ = timed(lambda: ours(ids, use_cache=True, logits_to_keep=1), repeat=2)
    t_hf, hf_out = timed(lambda: hf(ids, use_cache=True, logits_to_keep=1), repeat=2)

    # decode: whole generate() minus its prefill, per new token
    # (best of two runs each: this is a shared 2-core machine and one run can catch a neighbour's burst)
    params = SamplingParams(max_new_tokens=new_tokens)
    runs = [generate(ours, ids, params=params, eos_token_id=None) for _ in range(2)]
    ours_gen = min(runs, key=lambda r: r.decode_seconds)
    ours_decode = ours_gen.decode_seconds / (new_tokens - 1)
    t_hf_gen, hf_seq = timed(lambda: hf.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                                  do_sample=False, eos_token_id=None, pad_token_id=0), repeat=2)
    hf_decode = (t_hf_gen - t_hf) / (new_tokens - 1)
    same_ids = hf_seq[0, prompt_len:].tolist() == ours_gen.new_tokens[0]

    # cache bytes per token
    cache = ours(ids, use_cache=True, logits_to_keep=1).past_key_values
    ours_bpt = cache.nbytes() / prompt_len
    hf_cache = hf_out.past_key_values
    hf_bytes = 0
    for layer in getattr(hf_cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                hf_bytes += t.numel() * t.element_size()
    hf_bpt = hf_bytes / prompt_len
    latent = cfg.num_hidden_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 4
    return {
        "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tok_s": {"kvl": prompt_len / t_ours, "transformers": prompt_len / t_hf,
                          "ratio": t_hf / t_ours},
        "decode_tok_s": {"kvl": 1 / ours_decode, "transformers": 1 / hf_decode, "ratio": hf_decode / ours_decode},
        "greedy_ids_identical": same_ids,
        "kv_bytes_per_token": {"kvl": ours_bpt, "transformers": hf_bpt, "latent_fp32": latent,
                               "ratio": hf_bpt / ours_bpt if ours_bpt else None},
    }


def padded_vision_forward(tower: MoonViT, pixel_values, grids) -> torch.Tensor:
    """The same tower run as a zero-padded batch [N, Lmax, D] with a key-padding mask (the baseline)."""
    sizes = (grids[:, 0] * grids[:, 1]).tolist()
    Lmax, N = max(sizes), len(sizes)
    x = tower.patch_embed(pixel_values, grids)
    cos, sin = rope2d_cos_sin(grids, tower.config, x.device)
    D = x.shape[-1]
    xb = x.new_zeros(N, Lmax, D)
    cb, sb = cos.new_zeros(N, Lmax, cos.shape[-1]), sin.new_zeros(N, Lmax, sin.shape[-1])
    mask = torch.zeros(N, Lmax, dtype=torch.bool)
    start = 0
    for i, n in enumerate(sizes):
        xb[i, :n], cb[i, :n], sb[i, :n] = x[start:start + n], cos[start:start + n], sin[start:start + n]
        mask[i, :n] = True
        start += n
    attn_mask = mask[:, None, None, :]
    for blk in tower.encoder.blocks:
        h = blk.norm0(xb)
        q, k, v = blk.wqkv(h).view(N, Lmax, 3, blk.num_heads, -1).unbind(2)
        q = apply_rope_pairs(q.flatten(0, 1), cb.flatten(0, 1), sb.flatten(0, 1)).view_as(q)
        k = apply_rope_pairs(k.flatten(0, 1), cb.flatten(0, 1), sb.flatten(0, 1)).view_as(k)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
        xb = xb + blk.wo(o.transpose(1, 2).reshape(N, Lmax, D))
        xb = xb + blk.mlp(blk.norm1(xb))
    xb = tower.encoder.final_layernorm(xb)
    return torch.cat([xb[i, :n] for i, n in enumerate(sizes)])


@torch.no_grad()
def bench_vision(quick: bool) -> dict:
    cfg = VisionConfig(hidden_size=384, num_attention_heads=6, num_hidden_layers=4 if quick else 6,
                       intermediate_size=1536)
    torch.manual_seed(0)
    tower = MoonViT(cfg).eval()
    # a realistic mixed batch: one large page-like image and several small crops / icons
    grids = torch.tensor([[64, 46], [12, 16], [8, 8], [20, 14], [6, 10], [16, 24]])
    n = int((grids[:, 0] * grids[:, 1]).sum())
    pv = torch.randn(n, 3, 14, 14)
    t_packed, packed = timed(lambda: tower(pv, grids), repeat=2)
    t_padded, padded = timed(lambda: padded_vision_forward(tower, pv, grids), repeat=2)
    return {"patches": n, "images": len(grids), "packed_s": t_packed, "padded_s": t_padded,
            "speedup": t_padded / t_packed, "max_abs_diff": float((packed - padded).abs().max())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="shorter prompt, fewer tokens")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prompt, new = (512, 16) if args.quick else (2048, 32)
    res = {"threads": torch.get_num_threads(), "lm": bench_lm(prompt, new), "vision": bench_vision(args.quick)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "generation.json").write_text(json.dumps(res, indent=2))
    lm, vis = res["lm"], res["vision"]
    print(f"{'metric':32} {'kvl':>12} {'transformers':>14} {'ratio':>8}")
    for key, label in [("prefill_tok_s", "prefill tok/s"), ("decode_tok_s", "decode tok/s")]:
        r = lm[key]
        print(f"{label + f' ({prompt}-tok prompt)':32} {r['kvl']:12.1f} {r['transformers']:14.1f} {r['ratio']:7.2f}x")
    kv = lm["kv_bytes_per_token"]
    print(f"{'KV cache bytes/token':32} {kv['kvl']:12.0f} {kv['transformers']:14.0f} {kv['ratio'] or 0:7.2f}x")
    print(f"{'greedy ids identical':32} {str(lm['greedy_ids_identical']):>12}")
    print(f"{'MoonViT packed vs padded (s)':32} {vis['packed_s']:12.3f} {vis['padded_s']:14.3f} {vis['speedup']:7.2f}x")


if __name__ == "__main__":
    main()
