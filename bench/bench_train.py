"""Trainer at long context: peak memory and step time of one packed tiny-preset row (issue 18).

  1. One row of 8K, 32K and 128K tokens (documents of 200-3000 tokens, as an SFT pack), one optimizer
     step each = forward + CE + backward + Muon, in a fresh process per case: peak RSS of the process
     and the step time (best of 2 steps). Document attention is the automatic backend (per-document
     SDPA on CPU). Target: memory grows linearly, RSS(128K) / RSS(32K) <= 5.
  2. The same 8K row with the dense T x T masked attention the trainer used before (KVL_DOC_ATTENTION
     =mask), as the reference of the ratio; it is not run at 32K and beyond (1 G mask entries per row).
  3. 32K with and without per-layer activation checkpointing (--checkpoint-activations).
  4. The whole command of the issue, start-up included:
     `kvl train --stage sft --preset tiny --data chats.jsonl --steps 16` on 96 generated image chats
     (no --seq-len), wall time and peak RSS. Target: under a minute (on an idle 2-core machine).

Writes bench/results/train.json. Usage: python bench/bench_train.py [--quick] (quick: 8K and 32K only,
no command run). On a shared machine, read the ratios of one run, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
K = 1024


def child(tokens: int, checkpoint: bool, steps: int) -> dict:
    """One case, run inside its own process (so ru_maxrss is this case's peak)."""
    import torch

    from kvl_core.config import preset
    from kvl_core.model import KimiVLForConditionalGeneration
    from kvl_core.training.muon import param_groups_for
    from kvl_core.training.distributed import DistMuon
    from kvl_core.training.trainer import checkpoint_activations

    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.text.max_position_embeddings = tokens
    model = KimiVLForConditionalGeneration(cfg)
    model.train()
    if checkpoint:
        checkpoint_activations(model)
    opt = DistMuon(param_groups_for(model, lr=1e-4, ns_dtype="float32"))
    rng = random.Random(tokens)
    lens = []
    while sum(lens) < tokens:
        lens.append(min(rng.randint(200, 3000), tokens - sum(lens)))
    doc_ids = torch.cat([torch.full((n,), d) for d, n in enumerate(lens)])[None]
    pos = torch.cat([torch.arange(n) for n in lens])[None]
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (1, tokens), generator=g)
    labels = torch.cat([torch.cat([ids[0, sum(lens[:d]) + 1: sum(lens[:d + 1])], torch.tensor([-100])])
                        for d in range(len(lens))])[None]
    n_supervised = int((labels != -100).sum())
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        # the trainer's path: summed CE from the model, the head applied in chunks of tokens
        loss = model(ids, position_ids=pos, doc_ids=doc_ids, labels=labels).loss / n_supervised
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        del loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"tokens": tokens, "docs": len(lens), "checkpoint": checkpoint, "backend": os.environ.get("KVL_DOC_ATTENTION", "auto"),
            "step_s": min(times), "peak_rss_mb": peak / 1024, "rss_before_step_mb": base_rss / 1024}


def run_case(tokens: int, checkpoint: bool = False, backend: str | None = None, steps: int = 2) -> dict:
    env = dict(os.environ)
    if backend:
        env["KVL_DOC_ATTENTION"] = backend
    cmd = [sys.executable, __file__, "--child", str(tokens), str(int(checkpoint)), str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"  {tokens // K:>4}K tokens  backend {r['backend']:<5} ckpt {int(checkpoint)}  step {r['step_s']:7.2f} s  "
          f"peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    return r


def make_chats(folder: Path, n: int = 96) -> Path:
    from PIL import Image

    rng = random.Random(7)
    cols = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
    for name, c in cols.items():
        for s in (28, 56, 84):
            Image.new("RGB", (s, s), c).save(folder / f"{name}{s}.png")
    path = folder / "chats.jsonl"
    with path.open("w") as f:
        for _ in range(n):
            name, s = rng.choice(list(cols)), rng.choice((28, 56, 84))
            q = rng.choice(["What colour is this square?", "Describe the image.", "Which colour do you see?"])
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image", "image": f"{name}{s}.png"}, {"type": "text", "text": q}]},
                {"role": "assistant", "content": f"The square is {name}."}]}) + "\n")
    return path


def run_command() -> dict:
    kvl = Path(sys.executable).with_name("kvl")
    with tempfile.TemporaryDirectory() as d:
        data = make_chats(Path(d))
        cmd = [str(kvl), "train", "--stage", "sft", "--preset", "tiny", "--data", str(data), "--steps", "16",
               "--out", str(Path(d) / "run"), "--json"]
        # a fresh wrapper process, so that its children's peak RSS is this command's alone
        wrap = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, capture_output=True); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        t0 = time.perf_counter()
        peak = int(subprocess.run([sys.executable, "-c", wrap, *cmd], check=True, capture_output=True,
                                  text=True).stdout.split()[-1])
        wall = time.perf_counter() - t0
        steps = [json.loads(x) for x in (Path(d) / "run" / "metrics.jsonl").read_text().splitlines()]
    r = {"command": " ".join(cmd[1:8]) + " --steps 16", "wall_s": wall, "peak_rss_mb": peak / 1024,
         "tokens_per_step": steps[0]["tokens"]}
    print(f"  kvl train --stage sft --preset tiny (96 chats, 16 steps): {wall:.1f} s wall, peak RSS "
          f"{r['peak_rss_mb']:.0f} MB, {r['tokens_per_step']:.0f} tokens per step", flush=True)
    return r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", nargs=3, type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], bool(a.child[1]), a.child[2])))
        return
    sizes = [8 * K, 32 * K] + ([] if a.quick else [128 * K])
    print("1. one packed row, automatic document attention, no activation checkpointing")
    rows = [run_case(t, steps=2 if t <= 32 * K else 1) for t in sizes]
    print("2. the dense-mask reference at 8K")
    ref = run_case(8 * K, backend="mask")
    print("3. activation checkpointing at 32K")
    ckpt = run_case(32 * K, checkpoint=True)
    by = {r["tokens"]: r for r in rows}
    out = {"rows": rows, "mask_8k": ref, "checkpoint_32k": ckpt,
           "ratios": {"mask/doc peak RSS at 8K": ref["peak_rss_mb"] / by[8 * K]["peak_rss_mb"],
                      "mask/doc step time at 8K": ref["step_s"] / by[8 * K]["step_s"],
                      "RSS 32K / 8K": by[32 * K]["peak_rss_mb"] / by[8 * K]["peak_rss_mb"],
                      "step 32K / 8K": by[32 * K]["step_s"] / by[8 * K]["step_s"],
                      "checkpointed / plain peak RSS at 32K": ckpt["peak_rss_mb"] / by[32 * K]["peak_rss_mb"],
                      "checkpointed / plain step time at 32K": ckpt["step_s"] / by[32 * K]["step_s"]}}
    if 128 * K in by:
        out["ratios"]["RSS 128K / 32K (target <= 5)"] = by[128 * K]["peak_rss_mb"] / by[32 * K]["peak_rss_mb"]
        out["ratios"]["step 128K / 32K"] = by[128 * K]["step_s"] / by[32 * K]["step_s"]
        print("4. the whole command of the issue")
        out["command"] = run_command()
    out["load_average"] = os.getloadavg()
    for k, v in out["ratios"].items():
        print(f"  {k}: {v:.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
