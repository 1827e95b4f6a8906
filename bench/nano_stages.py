"""Held-out accuracy after every stage of a `kvl train --recipe` run, against the images seen so far.

The recipe itself scores only its final model (recipe.json "eval"). This script scores each stage's
`final/` on the first N held-out pages (`kvl eval nano-ocr`, CER) and, for stages that have seen
screens, N held-out screens (`kvl eval nano-ground`, click in box), and plots both against the
cumulative number of training images (the learning curve of the whole recipe):

    python bench/nano_stages.py runs/nano --n 20 --png docs/nano/stage-cer.png

Results go to RUN/stage_eval.jsonl (one line per stage; stages already there are skipped).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def images_seen(stage_dir: Path, st: dict) -> int:
    """Training images (or oracle samples) the stage consumed: its trainer_state.json's sample counter, or
    steps x batch for reading stages written before the counter existed."""
    state = json.loads((stage_dir / "final" / "trainer_state.json").read_text())
    return int(state.get("data", {}).get("counters", {}).get("samples", 0)) or st["steps"] * st.get("batch", 0)


def score(kind: str, model: Path, data: Path, n: int, out: Path) -> dict:
    kvl = Path(sys.executable).with_name("kvl")
    cmd = [str(kvl), "eval", "run", f"nano-{kind}", "--data", str(data), "--limit", str(n), "--model", str(model),
           "--out", str(out), "--json", "--batch-size", "16",
           # a held-out page's markdown is at most ~300 tokens; early stages babble up to the cap
           "--max-new-tokens", "384"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout)["metrics"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a recipe run folder (holds recipe.json)")
    ap.add_argument("--n", type=int, default=20, help="held-out samples per set")
    ap.add_argument("--png", type=Path, help="write the figure here")
    args = ap.parse_args()

    if not (args.run / "recipe.json").is_file():
        raise SystemExit(f"{args.run}: not a recipe run (no recipe.json; run `kvl train --recipe nano --out DIR`)")
    summary = json.loads((args.run / "recipe.json").read_text())
    stages = summary["recipe"]["stages"]
    held = {kind: args.run / "heldout" / kind / f"heldout_{kind}.jsonl" for kind in ("ocr", "ground")}
    log = args.run / "stage_eval.jsonl"
    done = {r["stage"]: r for r in map(json.loads, log.read_text().splitlines())} if log.exists() else {}
    seen, screens, rows = 0, False, []
    for st in stages:
        key = st["name"] or st["stage"]
        stage_dir = args.run / key
        if not (stage_dir / "final").exists():
            break
        seen += images_seen(stage_dir, st)
        screens = screens or any(d.split(":")[0] in ("screen", "ground") for d in st["data"])
        if key not in done:
            row = {"stage": key, "images": seen, "n": args.n}
            row["cer"] = score("ocr", stage_dir / "final", held["ocr"], args.n, args.run / "stage_eval" / key / "ocr")["cer"]
            if screens:
                row["click"] = score("ground", stage_dir / "final", held["ground"], args.n,
                                     args.run / "stage_eval" / key / "ground")["accuracy"]
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            done[key] = row
        rows.append({**done[key], "images": seen})
        print(json.dumps(rows[-1]))
    if args.png and rows:
        plot(rows, args.png, args.n)


def plot(rows: list[dict], png: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = [r["images"] / 1000 for r in rows]
    top = 110  # a stage whose LM has not met the vision tower yet babbles: CER far above 100%
    ax.plot(xs, [min(r["cer"], top) for r in rows], "o-", label=f"held-out page CER % ({n} pages; clipped at {top})")
    clicks = [(x, r["click"]) for x, r in zip(xs, rows) if r.get("click") is not None]
    if clicks:
        ax.plot(*zip(*clicks), "s-", label=f"held-out click in box % ({n} screens)")
    for x, r in zip(xs, rows):
        ax.annotate(f"{r['stage']} {r['cer']:.0f}%", (x, min(r["cer"], top)), textcoords="offset points",
                    xytext=(3, 5), fontsize=7, rotation=20)
    ax.set_xlabel("training images seen, all stages (thousands; read-lm stages: oracle samples, no image)")
    ax.set_ylabel("%"), ax.grid(alpha=0.3)
    ax.set_ylim(0, top + 15)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
