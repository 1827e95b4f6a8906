"""Peak memory of loading a bf16 checkpoint: kvl's meta-device loader vs the naive load_file + load_state_dict.

Writes a synthetic, sharded bf16 checkpoint of a mid-size Kimi-VL config (the real layer structure, ~0.7 GB)
to a temp dir, then loads it in fresh subprocesses, one per method, and reports peak RSS minus the RSS after
imports as a ratio to the checkpoint size. All figures come from the same run on the same files.

    .venv/bin/python bench/bench_load.py            # table on stdout, JSON in bench/results/load.json

Every method ends by reading one value per page of every weight (as a first forward pass would), because
memory-mapped weights only become resident, and count, when touched. Methods:
  kvl              meta-device model + checkpoint.load_into (plain reads into the final tensors)
  kvl-mmap         load_into(..., mmap=True): zero-copy tensors over safetensors' file mapping
  kvl-fp32         load_into(..., dtype=float32): conversion while loading (final model is 2x the checkpoint)
  naive            model materialised uninitialised in bf16, safetensors.torch.load_file of every shard into one
                   dict, then model.load_state_dict(dict) (the usual pre-meta-device pattern)
  from_pretrained  KimiVLForConditionalGeneration.from_pretrained (what users call), if kvl_core.model exists
The meta model is kvl_core.model.KimiVLForConditionalGeneration when importable, else a generic module with
the checkpoint's names and shapes. "load only" subtracts the RSS of the built meta model (its Python module
graph), which the loader does not control.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

METHODS = ("kvl", "kvl-mmap", "kvl-fp32", "naive", "from_pretrained")


def bench_config():
    """Kimi-VL's structure (MoonViT, projector, 1 dense + MoE layers with MLA), scaled to ~370M parameters."""
    from kvl_core.config import KimiVLConfig, TextConfig, VisionConfig

    return KimiVLConfig(
        vision=VisionConfig(init_pos_emb_height=32, init_pos_emb_width=32, num_attention_heads=6,
                            num_hidden_layers=4, hidden_size=384, intermediate_size=1536),
        text=TextConfig(vocab_size=32000, hidden_size=1024, intermediate_size=4096, moe_intermediate_size=512,
                        num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8, kv_lora_rank=256,
                        qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=24,
                        num_experts_per_tok=4, n_shared_experts=2, max_position_embeddings=4096,
                        bos_token_id=1, eos_token_id=2, pad_token_id=0),
        media_placeholder_token_id=3,
        torch_dtype="bfloat16",
    )


def write_checkpoint(d: Path, shard_bytes: int) -> int:
    import torch

    from kvl_core import stats
    from kvl_core.checkpoint import save_state_dict

    cfg = bench_config()
    shapes = stats.expected_tensors(cfg)
    # Slices of one random pool: random bf16 bytes in every tensor without paying randn for ~370M values.
    torch.manual_seed(0)
    pool = torch.randn(max(math.prod(s) for s in shapes.values()) + 4099, dtype=torch.bfloat16)
    state = {}
    for i, (k, s) in enumerate(shapes.items()):
        off = (i * 977) % 4099
        state[k] = pool[off:off + math.prod(s)].view(s)
    save_state_dict(state, d, max_shard_bytes=shard_bytes)
    cfg.save(d / "config.json")
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


# ---- child process: one load, one measurement -----------------------------------------------------------------

def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _meta_model(d: Path, dtype):
    """(model on meta, description). The real model class when importable, else a generic parameter tree."""
    import torch
    from torch import nn

    from kvl_core import checkpoint
    from kvl_core.config import KimiVLConfig

    cfg = KimiVLConfig.from_file(d / "config.json")
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        try:
            from kvl_core.model import KimiVLForConditionalGeneration

            with torch.device("meta"):
                return KimiVLForConditionalGeneration(cfg), "kvl_core.model.KimiVLForConditionalGeneration"
        except ImportError as e:
            note = f"generic meta module ({e})"
        root = nn.Module()
        with torch.device("meta"):
            for name, info in checkpoint.tensor_index(d).items():
                *path, leaf = name.split(".")
                mod = root
                for part in path:
                    if part not in mod._modules:
                        mod.add_module(part, nn.Module())
                    mod = mod._modules[part]
                mod.register_parameter(leaf, nn.Parameter(torch.empty(info.shape)))
        return root, note
    finally:
        torch.set_default_dtype(prev)


def child(method: str, d: Path) -> dict:
    import torch  # noqa: F401  -- part of the baseline, as in any real program

    from kvl_core import checkpoint

    try:
        import kvl_core.model  # noqa: F401
    except ImportError:
        pass
    base = _rss()
    built = None
    t0 = time.perf_counter()
    if method == "from_pretrained":
        try:
            from kvl_core.model import KimiVLForConditionalGeneration
        except ImportError as e:
            return {"method": method, "skipped": f"kvl_core.model not importable ({e})"}
        model = KimiVLForConditionalGeneration.from_pretrained(d)
        used = "KimiVLForConditionalGeneration.from_pretrained"
    elif method in ("kvl", "kvl-mmap", "kvl-fp32"):
        model, used = _meta_model(d, torch.bfloat16)
        built = _rss()
        if method == "kvl":
            checkpoint.load_into(model, d)
        elif method == "kvl-mmap":
            checkpoint.load_into(model, d, mmap=True)
        else:
            checkpoint.load_into(model, d, dtype=torch.float32)
        used = "checkpoint.load_into on " + used
    elif method == "naive":
        from safetensors.torch import load_file

        model, used = _meta_model(d, torch.bfloat16)
        built = _rss()
        model = model.to_empty(device="cpu")
        state = {}
        for f in checkpoint.weight_files(d):
            state.update(load_file(str(f)))
        model.load_state_dict(state)
        used = "load_file + load_state_dict on " + used
    else:
        raise SystemExit(f"unknown method {method}")
    seconds = time.perf_counter() - t0
    peak_load = _peak_rss()
    params = list(model.parameters())
    assert not any(p.is_meta for p in params)
    # Read one value per page of every weight, as a first forward pass would: memory-mapped weights only
    # become resident (and count) when touched.
    t1 = time.perf_counter()
    for p in params:
        flat = p.detach().reshape(-1)
        flat[:: max(1, 4096 // p.element_size())].float().sum()
    touch = time.perf_counter() - t1
    final = sum(p.numel() * p.element_size() for p in params)
    return {"method": method, "model": used, "baseline_rss": base, "rss_after_model_build": built,
            "peak_rss_after_load": peak_load,
            "peak_rss": _peak_rss(), "final_model_bytes": final, "seconds": round(seconds, 3),
            "touch_seconds": round(touch, 3)}


# ---- parent ---------------------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    ap.add_argument("--shard-mb", type=int, default=256, help="max shard size in MiB (default 256)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "load.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]))))
        return

    import torch

    with tempfile.TemporaryDirectory(prefix="kvl-bench-load-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        size = write_checkpoint(d, args.shard_mb * 2**20)
        shards = sorted(f.name for f in d.glob("*.safetensors"))
        print(f"checkpoint: {size / 2**20:.0f} MiB bf16 in {len(shards)} shards, written in "
              f"{time.perf_counter() - t0:.1f} s")
        rows = []
        for method in METHODS:
            proc = subprocess.run([sys.executable, __file__, "--child", method, str(d)], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode:
                raise SystemExit(f"{method} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if "skipped" in r:
                print(f"{method}: skipped, {r['skipped']}")
                continue
            r["delta_rss"] = r["peak_rss"] - r["baseline_rss"]
            r["ratio_after_load"] = round((r["peak_rss_after_load"] - r["baseline_rss"]) / size, 3)
            # What loading itself adds on top of the (meta) module graph, which the loader does not own.
            built = r["rss_after_model_build"]
            r["load_only_ratio"] = None if built is None else round((r["peak_rss"] - built) / size, 3)
            r["ratio_to_checkpoint"] = round(r["delta_rss"] / size, 3)
            r["ratio_to_final_model"] = round(r["delta_rss"] / r["final_model_bytes"], 3)
            rows.append(r)

    print("\npeak RSS minus RSS after imports, after loading and after touching every weight page")
    print("(load only: peak minus RSS after building the meta model, i.e. without the module graph itself)")
    print(f"{'method':<16} {'MiB':>7} {'/checkpoint':>12} {'/final model':>13} {'(after load)':>13} "
          f"{'load only':>10} {'load s':>7}")
    for r in rows:
        lo = "-" if r["load_only_ratio"] is None else f"{r['load_only_ratio']:.2f}"
        print(f"{r['method']:<16} {r['delta_rss'] / 2**20:>7.0f} {r['ratio_to_checkpoint']:>12.2f} "
              f"{r['ratio_to_final_model']:>13.2f} {r['ratio_after_load']:>13.2f} {lo:>10} {r['seconds']:>7.2f}")
    print(f"model: {rows[0]['model']}")
    result = {"checkpoint_bytes": size, "shards": shards, "dtype": "bfloat16", "torch": torch.__version__,
              "config": bench_config().to_hf_dict(), "methods": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
