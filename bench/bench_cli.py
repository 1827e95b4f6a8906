"""How long `kvl --help` takes, as a ratio to a bare `python -c pass` measured in the same run.

Start-up is the whole cost of the help path (entry-point scan, typer, rich), so a task module that
imports torch at module level shows up here as a jump of a second or more. The target is < 1 s wall.

    .venv/bin/python bench/bench_cli.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

KVL = Path(sys.executable).parent / "kvl"


def wall(cmd: list[str], runs: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "KVL_DEBUG", "KVL_DISABLE_PLUGINS")}
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import typer'": [sys.executable, "-c", "import typer"],
        "kvl --version": [str(KVL), "--version"],
        "kvl --help": [str(KVL), "--help"],
    }
    wall(cases["kvl --help"], 2, env)  # warm the page cache and __pycache__ first
    medians = {name: statistics.median(wall(cmd, args.runs, env)) for name, cmd in cases.items()}
    base = medians["python -c pass"]
    print(f"{'command':28} {'median s':>9} {'x python':>9}   ({args.runs} runs each, no $DISPLAY)")
    for name, t in medians.items():
        print(f"{name:28} {t:9.3f} {t / base:9.1f}")
    verdict = "ok" if medians["kvl --help"] < 1.0 else "TOO SLOW"
    print(f"kvl --help: {medians['kvl --help']:.3f} s wall (target < 1 s: {verdict})")


if __name__ == "__main__":
    main()
