"""`kvl serve` throughput: requests/s and tokens/s under 1, 4 and 16 concurrent clients, batched vs one at a time.

Two real server processes on loopback, the same checkpoint, the same run: one with request batching
(the default) and one with `--no-batching` (the reference). Each client sends chat requests back to back
(different prompts, greedy, a fixed `max_tokens`, half of them with an image) until the level's request
count is done. Target: at 16 clients, batched >= 2x the one-at-a-time requests/s; at 1 client, no worse
than 0.8x (the batch window costs a few ms).

Writes bench/results/serve.json. Usage: python bench/bench_serve.py [--model DIR] [--quick]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
TINY = REPO.parent / "shared" / "fixtures" / "kimi_vl_tiny"
KVL = Path(sys.executable).parent / "kvl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: str, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    proc = subprocess.Popen([str(KVL), "serve", "--model", model, "--port", str(port), *flags], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"kvl serve failed: {proc.stderr.read()}")
        try:
            if httpx.get(f"{root}/health", timeout=2).status_code == 200:
                return proc, root
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("kvl serve did not start")


def image_url() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (112, 84), (30, 120, 200)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def run_level(root: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    img = image_url()
    counter = iter(range(requests))
    lock = threading.Lock()
    tokens, done, errors = [0], [0], []

    def client() -> None:
        with httpx.Client(base_url=root, timeout=600) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                content = [{"type": "text", "text": f"request {i}: describe item {i * 7 % 13} briefly"}]
                if i % 2:
                    content.insert(0, {"type": "image_url", "image_url": {"url": img}})
                r = http.post("/v1/chat/completions", json={
                    "model": model, "messages": [{"role": "user", "content": content}],
                    "max_tokens": max_tokens, "temperature": 0})
                if r.status_code != 200:
                    errors.append(r.text[:200])
                    continue
                with lock:
                    tokens[0] += r.json()["usage"]["completion_tokens"]
                    done[0] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    stats = httpx.get(f"{root}/health").json()
    return {"clients": clients, "requests": done[0], "seconds": secs, "requests_per_s": done[0] / secs,
            "tokens_per_s": tokens[0] / secs, "completion_tokens": tokens[0], "largest_batch": stats["largest_batch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(TINY))
    ap.add_argument("--quick", action="store_true", help="fewer requests per level")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    levels = [1, 4, 16]
    per_level = {1: 8, 4: 16, 16: 32} if not args.quick else {1: 4, 4: 8, 16: 16}
    out: dict = {"model": args.model, "max_tokens": args.max_tokens, "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                 "cpus": os.cpu_count(), "modes": {}}
    for mode, flags in (("batched", ()), ("one_at_a_time", ("--no-batching",))):
        proc, root = start(args.model, *flags)
        try:
            run_level(root, args.model, 2, 4, 4)  # warm-up: first-call allocations, lazy imports
            out["modes"][mode] = []
            for c in levels:
                row = run_level(root, args.model, c, per_level[c], args.max_tokens)
                out["modes"][mode].append(row)
                print(f"{mode:>14}  {c:>2} clients  {row['requests_per_s']:6.2f} req/s  {row['tokens_per_s']:7.1f} tok/s"
                      f"  (largest batch so far {row['largest_batch']})", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    b, s = out["modes"]["batched"], out["modes"]["one_at_a_time"]
    out["speedup_req_s"] = {str(x["clients"]): x["requests_per_s"] / y["requests_per_s"] for x, y in zip(b, s)}
    out["targets"] = {"16_clients_ge_2x": out["speedup_req_s"]["16"] >= 2.0,
                      "1_client_ge_0.8x": out["speedup_req_s"]["1"] >= 0.8}
    print("speed-up batched / one at a time:", {k: round(v, 2) for k, v in out["speedup_req_s"].items()})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'serve.json'}")


if __name__ == "__main__":
    main()
