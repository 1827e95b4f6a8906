"""One prepared GPU check: correctness, the real model's speed, training and kvl-nano, in <= 8 minutes.

Built for a GPU that is at hand only now and then, for minutes (one H200, nothing to download):
everything is measured in one call and reported at once, as a table and `gpu_check.json` in --out.

Parts (each runs in its own process under its own time limit, so one slow part cannot eat the rest;
what a part measured before its limit is kept):
  fixture  the reference fixture (../shared/fixtures/kimi_vl_tiny, copied into the run) on the device:
           fp32 at the CPU tests' bar (atol = rtol = 1e-4, routing and greedy ids exact), bf16 (error
           reported), one generate with images (CUDA-graph decode and eager decode)
  real     the `kimi-vl-a3b` preset (16.4B) with random bf16 weights made on the GPU: prefill tok/s at
           1K and 8K, batch-1 decode at 1K (graph and eager) and 32K context, batch-32 decode, latent
           KV bytes per token, MoonViT on one 896x896 image; decode beside its memory-bandwidth limit
  hf       transformers' DeepseekV3ForCausalLM with the same language-model weights, batch-1 decode
           beside ours in the same process (vLLM is not installable on the GPU machine)
  train    one Muon SFT step (bf16 autocast over fp32 weights, as the trainer runs) on the real width
           with 4 language and 4 vision layers: tokens/s and MFU; then one packed 32K row with
           document attention
  nano     `kvl train --recipe nano --scale K` (default K=1): stage times, images/s, held-out CER,
           beside the CPU figures of docs/nano.md

Limits: bandwidth 4.8 TB/s and dense bf16 989 TFLOP/s (H200 SXM). A decode step must read every
weight a token touches once: the limit is (weights read per step + latent cache read) / 4.8 TB/s.

`--smoke` runs every part on the CPU with the tiny preset (fp32, small sizes) in about a minute; the
default test suite runs it (tests/test_gpu_check.py) so this script cannot rot between GPU visits.

Usage: python bench/gpu_check.py [--smoke] [--out DIR] [--parts fixture,real,...] [--nano-scale K]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The fixture beside the checkout (../shared), inside it (shared/), or carried to a GPU machine with the
# wheels (make gpu-wheels copies it into bench/gpu_carry/).
FIXTURES = [ROOT.parent / "shared" / "fixtures" / "kimi_vl_tiny", ROOT / "shared" / "fixtures" / "kimi_vl_tiny",
            ROOT / "bench" / "gpu_carry" / "kimi_vl_tiny"]
FIXTURE = next((f for f in FIXTURES if (f / "golden.safetensors").exists()), FIXTURES[0])
BANDWIDTH = 4.8e12  # H200 HBM3e, bytes/s
PEAK_BF16 = 989e12  # H200 SXM dense bf16 FLOP/s
TOTAL_S = 480
# Each part's own cap; the last part of a run gets whatever the 480 s leave (nano: about 3 minutes or
# more, so that it reaches its held-out evaluation).
LIMITS = {"fixture": 30, "real": 130, "hf": 60, "train": 60, "nano": 200}
# The smoke run only has to exercise the code: ~4 CPU-seconds a part, but a shared CPU can stretch
# that twentyfold, so its limits only catch a hang.
SMOKE_LIMITS = {"fixture": 240, "real": 240, "hf": 240, "train": 240, "nano": 300}
SMOKE_TOTAL_S = 1200
PARTS = list(LIMITS)
# docs/nano.md, kvl-nano as shipped (2-core CPU, alone): images (or oracle samples) per second of each stage
# (samples / stage wall time; read-joint: its uncontended step times, see the footnote there), held-out CER of
# the final model, minutes in all
NANO_CPU = {"images_per_s": {"read-vit": 48000 / 2369.9, "read-lm-lines": 19200 / 548.9, "read-lm": 4800 / 395.8,
                             "read-joint-lines": 4800 / 306.1, "read-joint": 12000 / 2392},
            "cer": 7.8, "total_min": 102}


# ---- bookkeeping ----------------------------------------------------------------------------------

class Recorder:
    """A part's results, rewritten to disk after every row so a part stopped at its limit keeps them."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict = {"rows": [], "info": {}}

    def row(self, name: str, value, unit: str = "", limit=None, note: str = "", **extra) -> None:
        pct = round(100.0 * value / limit, 1) if isinstance(value, (int, float)) and limit else None
        self.data["rows"].append({"name": name, "value": value, "unit": unit, "limit": limit, "pct_of_limit": pct,
                                  "note": note, **extra})
        self.flush()

    def info(self, **kw) -> None:
        self.data["info"].update(kw)
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        tmp.replace(self.path)


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeat: int = 1):
    """Best wall time of `repeat` calls (device synchronised), and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        _sync(dev)
        t = time.perf_counter()
        out = fn()
        _sync(dev)
        best = min(best, time.perf_counter() - t)
    return best, out


def device_and_dtype(args):
    import torch

    if args.smoke:
        return torch.device("cpu"), torch.float32
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (run with --smoke for the CPU rehearsal)")
    return torch.device("cuda"), torch.bfloat16


def build_model(cfg, dev, dtype, seed: int = 0):
    """Random weights made directly on the device (no CPU copy, no download); same seed, same weights."""
    import torch

    from kvl_core.model import KimiVLForConditionalGeneration

    torch.manual_seed(seed)
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            model = KimiVLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval().requires_grad_(False)


# ---- model arithmetic -----------------------------------------------------------------------------

def lm_param_bytes(t, dtype_bytes: int) -> dict:
    """Weights (bytes) of the language model by what a decode step must read."""
    attn_q = t.hidden_size * t.num_attention_heads * t.qk_head_dim if t.q_lora_rank is None else \
        t.hidden_size * t.q_lora_rank + t.q_lora_rank * t.num_attention_heads * t.qk_head_dim
    attn = (attn_q + t.hidden_size * (t.kv_lora_rank + t.qk_rope_head_dim)
            + t.kv_lora_rank * t.num_attention_heads * (t.qk_nope_head_dim + t.v_head_dim)
            + t.num_attention_heads * t.v_head_dim * t.hidden_size)
    expert = 3 * t.hidden_size * t.moe_intermediate_size
    n_moe = sum(t.is_moe_layer(i) for i in range(t.num_hidden_layers))
    dense = (t.num_hidden_layers - n_moe) * 3 * t.hidden_size * t.intermediate_size
    always = (t.num_hidden_layers * attn + dense + n_moe * ((t.n_shared_experts or 0) * expert
              + (t.n_routed_experts or 0) * t.hidden_size) + t.vocab_size * t.hidden_size)  # + lm_head
    return {"always": always * dtype_bytes, "expert": expert * dtype_bytes, "n_moe": n_moe,
            "active_params": always + n_moe * (t.num_experts_per_tok or 0) * expert}


def decode_limit(t, batch: int, context: int, dtype_bytes: int) -> float:
    """tok/s if a step did nothing but read its weights and cache once at BANDWIDTH. Experts read per MoE
    layer: the expected number of distinct experts the batch picks (uniform routing, as random weights do)."""
    pb = lm_param_bytes(t, dtype_bytes)
    E, k = t.n_routed_experts or 0, t.num_experts_per_tok or 0
    distinct = E * (1 - (1 - k / E) ** batch) if E else 0
    kv = batch * context * t.num_hidden_layers * (t.kv_lora_rank + t.qk_rope_head_dim) * dtype_bytes
    step_bytes = pb["always"] + pb["n_moe"] * distinct * pb["expert"] + kv
    return batch * BANDWIDTH / step_bytes


def attention_flops(t, tokens: int, context: float) -> float:
    """Forward FLOPs of the score and value products for `tokens` queries over `context` keys each."""
    return 2 * tokens * context * t.num_hidden_layers * t.num_attention_heads * (t.qk_head_dim + t.v_head_dim)


# ---- part: fixture ------------------------------------------------------------------------------

def part_fixture(args, rec: Recorder) -> None:
    import torch
    from safetensors.torch import load_file

    from kvl_core.generation import SamplingParams, generate
    from kvl_core.model import KimiVLForConditionalGeneration

    dev, _ = device_and_dtype(args)
    # fp32 means fp32: cuDNN would run the patch-embedding conv in TF32 by default (~1e-3 error).
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    run_dir = Path(args.out) / "fixture"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(FIXTURE, run_dir)
    golden = load_file(str(run_dir / "golden.safetensors"))
    g = {k: v.to(dev) for k, v in golden.items()}

    for dtype in ("float32", "bfloat16"):
        model = KimiVLForConditionalGeneration.from_pretrained(run_dir, dtype=dtype, device=dev)
        errs, ok = {}, True
        with torch.no_grad():
            vt = model.vision_tower
            enc = vt(g["vision.pixel_values"], g["vision.grid_hws"])
            if dtype == "bfloat16" and dev.type == "cuda":
                from kvl_core.model import vision as vision_mod

                # The same three packed images through the batched-SDPA path: the varlen kernel must agree.
                ok_before, vision_mod._VARLEN_OK[0] = vision_mod._VARLEN_OK[0], False
                sdpa = vt(g["vision.pixel_values"], g["vision.grid_hws"])
                vision_mod._VARLEN_OK[0] = ok_before
                rec.row("MoonViT bf16, 3 packed images: varlen kernel vs batched SDPA, max |diff|",
                        float((enc.float() - sdpa.float()).abs().max()), "abs",
                        note=f"varlen used: {ok_before and vision_mod._varlen_attn() is not None}")
            outs = {"vision.encoder_out": enc,
                    "vision.projector_out": model.multi_modal_projector(vt.patch_merger(enc, g["vision.grid_hws"]))}
            lm = model.language_model(g["lm.input_ids"], output_hidden_states=True)
            outs["lm.logits"] = lm.logits
            outs["lm.hidden_states"] = torch.stack(lm.hidden_states)
            outs["full.logits"] = model(g["full.input_ids"], pixel_values=g["full.pixel_values"],
                                        image_grid_hws=g["full.grid_hws"]).logits
            agree = float((outs["full.logits"].argmax(-1) == g["full.logits"].argmax(-1)).float().mean())
            per_pos = (outs["full.logits"].float() - g["full.logits"]).abs().amax(-1).flatten()
            for name, ours in outs.items():
                ref = g[name]
                errs[name] = float((ours.float() - ref).abs().max())
                try:
                    torch.testing.assert_close(ours.float(), ref, atol=1e-4, rtol=1e-4)
                except AssertionError:
                    ok = False
            routing_exact = True
            for layer in (1, 2):
                got = {}
                gate = model.language_model.model.layers[layer].mlp.gate
                h = gate.register_forward_hook(lambda mod, inp, out, got=got: got.update(idx=out[0]))  # returns None
                model.language_model(g["lm.input_ids"])
                h.remove()
                routing_exact &= bool(torch.equal(got["idx"].sort(-1).values, g[f"lm.layer{layer}.topk_idx"]))
        ids = {}
        for mode, static in (("graph", None if dev.type == "cuda" else True), ("eager", False)):
            out = generate(model, g["full.input_ids"], pixel_values=g["full.pixel_values"],
                           image_grid_hws=g["full.grid_hws"], params=SamplingParams(max_new_tokens=8), static_decode=static)
            ids[mode] = out.new_tokens[0]
        ref_ids = golden["decode.generated_ids"][0].tolist()
        worst = max(errs.values())
        rel = max(errs[k] / float(g[k].abs().max()) for k in errs)
        label = "fp32" if dtype == "float32" else "bf16"
        if dtype == "float32":
            passed = ok and routing_exact and ids["graph"] == ref_ids and ids["eager"] == ref_ids
            rec.row("fixture fp32: max |err| (bar 1e-4)", worst, "abs", note="PASS" if passed else "FAIL", passed=passed,
                    errors=errs, routing_exact=routing_exact, ids=ids, ref_ids=ref_ids)
        else:
            same = sum(a == b for a, b in zip(ids["graph"], ref_ids))
            rec.row(f"fixture {label}: max |err| / max |ref| vs the fp32 reference", rel, "rel",
                    note=f"abs {worst:.3g} ({max(errs, key=errs.get)}); full logits per position: median "
                         f"{float(per_pos.median()):.3g}, argmax equal {100 * agree:.0f}%; greedy ids {same}/8 equal, "
                         f"routing {'exact' if routing_exact else 'differs'}",
                    errors=errs, routing_exact=routing_exact, ids=ids, ref_ids=ref_ids)
        rec.row(f"fixture {label}: generate with 2 images, graph vs eager decode ids", int(ids["graph"] == ids["eager"]),
                "equal", note=" ".join(map(str, ids["graph"])))
        del model


# ---- part: real ---------------------------------------------------------------------------------

def real_sizes(args) -> dict:
    if args.smoke:
        return dict(preset="tiny", prefill=(64, 128), ctx_short=32, ctx_long=256, new=8, batch=8, image=56)
    return dict(preset="kimi-vl-a3b", prefill=(1024, 8192), ctx_short=1024, ctx_long=32768, new=64, batch=32, image=896)


def _random_ids(vocab: int, shape, dev, seed: int = 1):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 150000), shape, generator=g).to(dev)


def _decode_tok_s(model, ids, new: int, static):
    """Decode tokens/s of generate() after one warm-up call of the same shape (captures the graph)."""
    from kvl_core.generation import SamplingParams, generate

    p = SamplingParams(max_new_tokens=new)
    generate(model, ids, params=p, static_decode=static)
    out = generate(model, ids, params=p, static_decode=static)
    steps = sum(len(t) for t in out.new_tokens) - ids.shape[0]  # the first token comes from prefill
    return steps / out.decode_seconds, out


def part_real(args, rec: Recorder) -> None:
    import torch

    from kvl_core.config import preset
    from kvl_core.model.vision import merged_token_count

    dev, dtype = device_and_dtype(args)
    sz = real_sizes(args)
    cfg = preset(sz["preset"])
    t = cfg.text
    nbytes = torch.finfo(dtype).bits // 8
    t0 = time.perf_counter()
    model = build_model(cfg, dev, dtype)
    _sync(dev)
    n_params = sum(p.numel() for p in model.parameters())
    pb = lm_param_bytes(t, nbytes)
    rec.info(preset=sz["preset"], params=n_params, active_params_per_token=pb["active_params"], dtype=str(dtype),
             build_seconds=round(time.perf_counter() - t0, 1),
             memory_gb=round(torch.cuda.memory_allocated(dev) / 2**30, 1) if dev.type == "cuda" else None)
    rec.row(f"{sz['preset']}: parameters (random, made on the device)", n_params, "params",
            note=f"{pb['active_params']:,} active per token")
    kv = t.num_hidden_layers * (t.kv_lora_rank + t.qk_rope_head_dim) * nbytes
    expanded = t.num_hidden_layers * t.num_attention_heads * (t.qk_head_dim + t.v_head_dim) * nbytes
    rec.row("latent KV cache per token", kv, "bytes", limit=expanded, note="% of an expanded per-head K/V cache")
    lm = model.language_model
    with torch.no_grad():
        for T in sz["prefill"]:
            ids = _random_ids(t.vocab_size, (1, T), dev)
            lm(ids, logits_to_keep=1)  # warm-up
            sec, _ = timed(functools.partial(lm, ids, logits_to_keep=1), dev, repeat=2)
            flops = 2 * pb["active_params"] * T + attention_flops(t, T, T / 2)
            rec.row(f"prefill {T} tokens", T / sec, "tok/s", limit=T / (flops / PEAK_BF16),
                    note="limit: FLOPs at bf16 peak (compute-bound)", seconds=sec)
        short, long_ = sz["ctx_short"], sz["ctx_long"]
        graph = "CUDA graph" if dev.type == "cuda" else "static step"
        cases = [(f"decode batch 1, {short} context, {graph}", 1, short, None if dev.type == "cuda" else True),
                 (f"decode batch 1, {short} context, eager", 1, short, False),
                 (f"decode batch 1, {long_} context, {graph}", 1, long_, None if dev.type == "cuda" else True),
                 (f"decode batch {sz['batch']}, {short} context, {graph}", sz["batch"], short,
                  None if dev.type == "cuda" else True)]
        for name, B, ctx, static in cases:
            ids = _random_ids(t.vocab_size, (B, ctx), dev, seed=B + ctx)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                rate, _ = _decode_tok_s(model, ids, sz["new"], static)
            dec = getattr(lm, "_kvl_static_decoder", None)
            rec.row(name, rate, "tok/s", limit=decode_limit(t, B, ctx, nbytes),
                    note="limit: weights + latent cache read once per step at 4.8 TB/s",
                    graph_captured=dec is not None and dec.graph is not None, warnings=[str(w.message) for w in caught])
            lm._kvl_static_decoder = None  # free this shape's cache before the next
        side = sz["image"]
        grid = torch.tensor([[side // 14, side // 14]], device=dev)
        pixels = torch.randn(int(grid.prod()), 3, 14, 14, device=dev, dtype=dtype)
        model.get_image_features(pixels, grid)
        sec, _ = timed(lambda: model.get_image_features(pixels, grid), dev, repeat=2)
        rec.row(f"MoonViT + projector, one {side}x{side} image", grid.prod().item() / sec, "patches/s",
                note=f"{merged_token_count(grid)} LLM tokens in {sec * 1e3:.1f} ms")
    from kvl_core.model import moe as moe_mod
    from kvl_core.model import vision as vision_mod

    # Which fast paths actually ran (each falls back silently to a slower exact one).
    rec.info(grouped_mm=dev.type == "cuda" and hasattr(torch, "_grouped_mm") and not moe_mod._GROUPED_MM_BROKEN,
             varlen_attn_available=vision_mod._varlen_attn() is not None and vision_mod._VARLEN_OK[0])


# ---- part: hf -----------------------------------------------------------------------------------

def part_hf(args, rec: Recorder) -> None:
    import torch

    from kvl_core.config import preset
    from kvl_core.model.hf_compat import to_transformers

    dev, dtype = device_and_dtype(args)
    sz = real_sizes(args)
    cfg = preset(sz["preset"])
    model = build_model(cfg, dev, dtype)  # same seed as part real: the same weights
    model.vision_tower = model.multi_modal_projector = None
    lm = model.language_model
    rec.row("vLLM decode", None, note="not measured: vLLM is not installable on the GPU machine (no package index)")
    ctx, new = sz["ctx_short"], sz["new"]
    ids = _random_ids(cfg.text.vocab_size, (1, ctx), dev, seed=7)

    limit = decode_limit(cfg.text, 1, ctx, torch.finfo(dtype).bits // 8)
    ours = {}
    for name, static in (("CUDA graph" if dev.type == "cuda" else "static step", None if dev.type == "cuda" else True),
                         ("eager", False)):
        rate, out = _decode_tok_s(lm, ids, new, static)
        ours[name] = (rate, out)
        rec.row(f"kvl decode batch 1, {ctx} context ({name})", rate, "tok/s", limit=limit,
                note="same weights as transformers below")
    lm._kvl_static_decoder = None
    # transformers last (it may be slow): our rows are already recorded; fewer tokens.
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(dev):
            hf = to_transformers(lm, attn_implementation="sdpa").to(dev, dtype)
    finally:
        torch.set_default_dtype(old)
    hf.requires_grad_(False)
    import transformers

    rec.info(transformers=transformers.__version__, vllm="not installable on the GPU machine (no index access); not measured")
    new_hf = min(new, 32)

    def hf_gen(n):
        return hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    with torch.no_grad():
        hf_gen(new_hf)
        t1, _ = timed(lambda: hf_gen(1), dev)
        tn, hf_out = timed(lambda: hf_gen(new_hf), dev)
    hf_rate = (new_hf - 1) / max(tn - t1, 1e-9)
    best = max(ours.values(), key=lambda v: v[0])[0]
    rec.row(f"transformers DeepseekV3ForCausalLM decode batch 1, {ctx} context", hf_rate, "tok/s", limit=limit,
            note=f"transformers {transformers.__version__}, sdpa, generate(); kvl is {best / hf_rate:.2f}x this",
            kvl_over_transformers=round(best / hf_rate, 3))
    hf_ids = hf_out[0, ctx:].tolist()
    first = next(iter(ours.values()))[1].new_tokens[0]
    same = next((i for i, (a, b) in enumerate(zip(hf_ids, first)) if a != b), len(hf_ids))
    rec.info(greedy_ids_agree_first=same, note="random bf16 weights: near-ties may diverge after a few tokens")


# ---- part: train --------------------------------------------------------------------------------

def train_sizes(args) -> dict:
    if args.smoke:
        return dict(layers=None, rows=1, seq=128, doc=64, images=2, side=56, long=256, long_doc=128)
    return dict(layers=4, rows=4, seq=8192, doc=1024, images=8, side=448, long=32768, long_doc=4096)


def _packed_batch(cfg, rows: int, seq: int, doc: int, n_images: int, side: int, dev):
    """Random packed SFT rows: documents of `doc` tokens, positions restarting per document, images
    (side x side) in the first documents, every non-image position supervised."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(cfg.text.vocab_size, 150000), (rows, seq), generator=g)
    ids[ids == cfg.media_placeholder_token_id] = 0
    pos = torch.arange(seq) % doc
    docs = torch.arange(seq) // doc
    grid = torch.tensor([[side // 14, side // 14]] * n_images)
    per = (side // 28) ** 2  # merged tokens per image
    for i in range(n_images):  # image i at the start of document i of row 0
        start = (i * doc) % seq + 1
        ids[0, start:start + per] = cfg.media_placeholder_token_id
    labels = ids.roll(-1, 1).masked_fill(pos.roll(-1) == 0, -100).masked_fill(ids.roll(-1, 1) == cfg.media_placeholder_token_id, -100)
    pixels = torch.randn(n_images * (side // 14) ** 2, 3, 14, 14) if n_images else None
    return dict(input_ids=ids.to(dev), position_ids=pos.expand(rows, seq).to(dev), doc_ids=docs.expand(rows, seq).to(dev),
                pixel_values=pixels.to(dev) if pixels is not None else None,
                image_grid_hws=grid.to(dev) if n_images else None), labels.to(dev), n_images * (side // 14) ** 2


def part_train(args, rec: Recorder) -> None:
    import contextlib

    import torch
    import torch.nn.functional as F

    from kvl_core.config import preset
    from kvl_core.training.muon import Muon, param_groups_for

    dev, _ = device_and_dtype(args)
    sz = train_sizes(args)
    cfg = preset("tiny" if args.smoke else "kimi-vl-a3b")
    if sz["layers"]:
        cfg.text.num_hidden_layers = cfg.vision.num_hidden_layers = sz["layers"]
    model = build_model(cfg, dev, torch.float32).train().requires_grad_(True)
    for layer in model.language_model.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.e_score_correction_bias.requires_grad_(False)
    opt = Muon(param_groups_for(model, lr=1e-3, ns_dtype="auto"), track_rms=False)  # as kvl train: bf16 NS on CUDA
    n_params = sum(p.numel() for p in model.parameters())
    pb = lm_param_bytes(cfg.text, 1)
    vision_params = sum(p.numel() for p in model.vision_tower.parameters()) + \
        sum(p.numel() for p in model.multi_modal_projector.parameters())
    rec.info(config=f"full width, {cfg.text.num_hidden_layers} LM + {cfg.vision.num_hidden_layers} ViT layers",
             params=n_params, weights="fp32 master weights, bf16 autocast (as kvl train on CUDA)")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()

    def step(batch, labels, keep):
        with autocast:
            logits = model(**batch, logits_to_keep=keep).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels[:, -keep:].flatten(), ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    # The long row supervises only its last document (an SFT answer), so its logits stay 4K x vocab
    # while attention and every layer still run, and backpropagate, over all 32K positions.
    for name, rows, seq, doc, n_img, keep in (
            ("SFT step", sz["rows"], sz["seq"], sz["doc"], sz["images"], sz["seq"]),
            ("SFT step, one packed row, document attention", 1, sz["long"], sz["long_doc"], 0, sz["long_doc"])):
        batch, labels, patches = _packed_batch(cfg, rows, seq, doc, n_img, sz["side"], dev)
        step(batch, labels, keep)  # warm-up (optimizer state, kernels)
        sec, loss = timed(functools.partial(step, batch, labels, keep), dev)
        tokens = rows * seq
        head = cfg.text.vocab_size * cfg.text.hidden_size
        flops = 3 * (2 * (pb["active_params"] - head) * tokens + 2 * head * rows * keep
                     + attention_flops(cfg.text, tokens, doc / 2)) + 3 * 2 * vision_params * patches
        tok_s = tokens / sec
        rec.row(f"{name}: {rows} x {seq} tokens, docs of {doc}" + (f", {n_img} images" if n_img else "")
                + (f", last {keep} supervised" if keep < seq else ""), tok_s, "tok/s",
                limit=tokens / (flops / PEAK_BF16), note=f"MFU = % of limit; loss {float(loss.detach()):.2f}; {sec:.2f} s/step",
                mfu=round(flops / sec / PEAK_BF16, 4) if dev.type == "cuda" else None,
                peak_memory_gb=round(torch.cuda.max_memory_allocated(dev) / 2**30, 1) if dev.type == "cuda" else None)
        del batch, labels
        if dev.type == "cuda":
            torch.cuda.empty_cache()


# ---- part: nano (a kvl command, not Python in this process) -------------------------------------

def nano_command(args, run_dir: Path) -> list[str]:
    kvl = Path(sys.executable).with_name("kvl")
    base = [str(kvl)] if kvl.exists() else [sys.executable, "-m", "kvl_cli.main"]
    recipe = ["--recipe", "smoke", "--scale", "0.5", "--device", "cpu"] if args.smoke else \
        ["--recipe", "nano", "--scale", str(args.nano_scale), "--device", "cuda"]
    return base + ["train", *recipe, "--out", str(run_dir), "--json"]


def nano_results(run_dir: Path, rec: Recorder, scale) -> None:
    """Read what the recipe run wrote (also after a timeout): stage times, images/s, held-out metrics."""
    summary_path = run_dir / "recipe.json"
    if not summary_path.exists():
        rec.row("kvl-nano recipe", None, note="no stage finished")
        return
    summary = json.loads(summary_path.read_text())
    rec.info(data_seconds=summary.get("data_seconds"), scale=scale)
    kinds = {st.get("name") or st["stage"]: {d.split(":")[0] for d in st["data"]}
             for st in summary.get("recipe", {}).get("stages", [])}
    for stage, st in summary.get("stages", {}).items():
        state = run_dir / stage / "final" / "trainer_state.json"
        metrics = run_dir / stage / "metrics.jsonl"
        samples = json.loads(state.read_text())["data"]["counters"]["samples"] if state.exists() else None
        train_s = sum(json.loads(line)["step_s"] for line in metrics.read_text().splitlines() if line.strip()) \
            if metrics.exists() else None
        rate = samples / train_s if samples and train_s else None
        ref = NANO_CPU["images_per_s"].get(stage)
        unit = "samples/s" if "text" in kinds.get(stage, {"text"}) else "images/s"  # text samples carry no image
        rec.row(f"nano {stage}: {st['steps']} steps, {samples} samples", rate, unit, limit=ref,
                note=f"{st['seconds']:.0f} s wall, loss {st['loss']:.3f}" + ("; limit = the CPU run of docs/nano.md" if ref else ""))
    ev = summary.get("eval") or {}
    ocr = (ev.get("ocr") or {}).get("metrics") or {}
    ground = (ev.get("ground") or {}).get("metrics") or {}
    if ocr:
        rec.row("nano held-out OCR CER", ocr.get("cer"), "%", limit=NANO_CPU["cer"],
                note="limit = the shipped CPU model's CER (docs/nano.md); lower is better")
    if ground:  # the shipped model was not taught grounding (docs/nano.md): the click score has no reference
        rec.row("nano held-out click-in-box", ground.get("accuracy"), "%",
                note="random ~0.9%; the shipped CPU model was not taught grounding (docs/nano.md)")


# ---- runner -------------------------------------------------------------------------------------

FUNCS = {"fixture": part_fixture, "real": part_real, "hf": part_hf, "train": part_train}


def run_part_here(args) -> None:
    """Child process: run one part, recording as it goes."""
    out = Path(args.out)
    rec = Recorder(out / "parts" / f"{args.part}.json")
    rec.flush()
    FUNCS[args.part](args, rec)
    rec.data["status"] = "ok"
    rec.flush()


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_all(args) -> dict:
    import torch

    out = Path(args.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    limits = SMOKE_LIMITS if args.smoke else LIMITS
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"gpu_check: unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "smoke": args.smoke, "torch": torch.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "grouped_mm": hasattr(torch, "_grouped_mm"), "python": sys.version.split()[0],
            "limits": {"bandwidth_bytes_s": BANDWIDTH, "bf16_flops": PEAK_BF16}}
    report = {"meta": meta, "parts": {}}
    total_s = args.total_s if args.total_s is not None else (SMOKE_TOTAL_S if args.smoke else TOTAL_S)
    deadline = time.monotonic() + total_s
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if args.smoke:
        # Tiny tensors gain nothing from threads, and on a shared CPU each parallel region waits for
        # a descheduled worker (the MoE loop's index_add_ went from <1 ms to ~40 ms per call).
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for i, part in enumerate(parts):
        left = deadline - time.monotonic()
        # Keep a little for every part still to come, so a late part still starts.
        limit = left if i == len(parts) - 1 else min(limits[part], left - 5 * (len(parts) - i - 1))
        if limit < 10:
            report["parts"][part] = {"status": "skipped", "rows": [], "note": "total time limit reached"}
            continue
        if part == "nano" and importlib.util.find_spec("kvl_tasks") is None:
            report["parts"][part] = {"status": "skipped", "rows": [], "note": "kvl is not installed, so `kvl train` "
                                     "cannot find its eval benchmarks: pip install --no-deps --no-build-isolation -e ."}
            continue
        log = open(out / "parts" / f"{part}.log", "w")
        if part == "nano":
            run_dir = out / "nano-run"
            shutil.rmtree(run_dir, ignore_errors=True)
            cmd = nano_command(args, run_dir)
        else:
            cmd = [sys.executable, __file__, "--part", part, "--out", str(out)] + (["--smoke"] if args.smoke else [])
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=str(ROOT))
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else f"error (exit {rc})"
        except subprocess.TimeoutExpired:
            _kill(proc)
            status = f"timeout ({limit:.0f} s)"
        log.close()
        seconds = round(time.monotonic() - t0, 1)
        if part == "nano":
            rec = Recorder(out / "parts" / "nano.json")
            rec.info(command=" ".join(cmd))
            nano_results(out / "nano-run", rec, None if args.smoke else args.nano_scale)
            data = rec.data
        else:
            path = out / "parts" / f"{part}.json"
            data = json.loads(path.read_text()) if path.exists() else {"rows": [], "info": {}}
        data["status"], data["seconds"] = status, seconds
        if not status.startswith("ok"):
            data["log_tail"] = (out / "parts" / f"{part}.log").read_text()[-3000:]
        report["parts"][part] = data
        (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    report["meta"]["seconds"] = round(total_s - (deadline - time.monotonic()), 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    return report


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def table(report: dict) -> str:
    """The report as one markdown table (printed, and pasted into docs/gpu.md)."""
    m = report["meta"]
    lines = [f"{m['date']} · {m['device']} · torch {m['torch']} (CUDA {m['cuda']}) · {m.get('seconds', '?')} s"
             + (" · SMOKE (CPU, tiny preset)" if m["smoke"] else ""), "",
             "| part | measure | value | unit | limit / reference | % | note |", "|---|---|---|---|---|---|---|"]
    for part, data in report["parts"].items():
        status = data.get("status", "?")
        if not data.get("rows"):
            lines.append(f"| {part} | ({status}) | | | | | {data.get('note', '')} |")
        for r in data.get("rows", []):
            lines.append(f"| {part} | {r['name']} | {_fmt(r['value'])} | {r['unit']} | {_fmt(r['limit'])} | "
                         f"{_fmt(r['pct_of_limit'])} | {r['note']} |")
        if status != "ok" and data.get("rows"):
            lines.append(f"| {part} | ({status}) | | | | | rows above were measured before it stopped |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="every part on the CPU with the tiny preset (about a minute)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder for gpu_check.json (default bench/results)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--nano-scale", type=float, default=1.0, help="K of `kvl train --recipe nano --scale K`")
    ap.add_argument("--total-s", type=float, default=None, help=f"time limit of the whole check, seconds (default {TOTAL_S})")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    args = ap.parse_args(argv)
    if args.part:
        run_part_here(args)
        return 0
    report = run_all(args)
    text = table(report)
    (Path(args.out) / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 0 if all(d.get("status") == "ok" for d in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
