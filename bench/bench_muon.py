"""Muon vs AdamW training throughput, and 2-rank (ZeRO-1 DistMuon, gloo) vs 1-rank step time.

Model: our DeepseekV3ForCausalLM (MLA, 1 dense + 3 MoE layers of 8 experts top-2 + 1 shared;
vocab 4096, hidden 256), ~5.7M parameters. One optimizer step = forward + backward over 4
micro-batches of 4 x 512 tokens (8,192 tokens, grad accumulation) + the optimizer step; the loss
is the token-sum divided by the global token count, as the trainer does.

  1. Same run, same batches, interleaved steps: kvl Muon (ns_dtype "auto": bf16 where the CPU
     multiplies bf16 natively, else fp32) vs torch.optim.AdamW (foreach) on every parameter;
     plus the optimizer step alone with bf16 NS forced (the report's setting).
     Target: Muon <= 10% slower than AdamW at >= 8K tokens/step (training.md §6).
  2. The same global batch on 1 rank (the Muon run of 1.) vs 2 gloo ranks on 127.0.0.1 (2
     micro-batches each, SUM all-reduce of grads, DistMuon), same threads per process.

Threads: 1 per process by default (see --threads).
Writes bench/results/muon.json. Usage: python bench/bench_muon.py [--quick]   (< 3 min on 2 cores)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kvl_core.config import TextConfig
from kvl_core.model.language import DeepseekV3ForCausalLM
from kvl_core.training import distributed as D
from kvl_core.training.muon import Muon, param_groups_for, resolve_ns_dtype

RESULTS = Path(__file__).resolve().parent / "results"
MICRO, SEQ, ACCUM = 4, 512, 4  # 4 x 512 x 4 = 8192 tokens per optimizer step
LR = 1e-3


def text_config() -> TextConfig:
    return TextConfig(vocab_size=4096, hidden_size=256, intermediate_size=688, moe_intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=64,
                      qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8,
                      num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
                      max_position_embeddings=SEQ, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def build(seed: int = 0) -> DeepseekV3ForCausalLM:
    torch.manual_seed(seed)
    return DeepseekV3ForCausalLM(text_config())


def batches(step: int, n: int = ACCUM) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 + step)
    return [torch.randint(0, 4096, (MICRO, SEQ + 1), generator=g) for _ in range(n)]


def make_opt(model, kind: str, dist_: bool = False):
    if kind == "adamw":  # the baseline everyone uses: torch's AdamW (foreach), same lr/wd/betas
        return torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    else:
        groups = param_groups_for(model, LR, ns_dtype="auto" if kind == "muon" else "bfloat16")
    return (D.DistMuon if dist_ else Muon)(groups, lr=LR)


def train_step(model, opt, micro: list[torch.Tensor], n_global: int) -> dict:
    """One optimizer step; returns wall seconds in fwd+bwd, grad all-reduce, optimizer, and the
    process CPU seconds of the whole step (unlike wall time, not inflated by other processes)."""
    c0 = time.process_time()
    t0 = time.perf_counter()
    for b in micro:
        logits = model(input_ids=b[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), b[:, 1:].flatten(), reduction="sum") / n_global
        loss.backward()
    t1 = time.perf_counter()
    D.all_reduce_grads(model.parameters(), op="sum")
    t2 = time.perf_counter()
    opt.step()
    opt.zero_grad(set_to_none=True)
    t3 = time.perf_counter()
    return {"fwd_bwd": t1 - t0, "allreduce": t2 - t1, "opt": t3 - t2, "step": t3 - t0,
            "cpu": time.process_time() - c0}


def digest(model) -> float:
    return torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().item()


def bench_optimizers(steps: int, with_bf16: bool) -> tuple[dict, float]:
    """Muon ("auto" NS dtype) and AdamW, same batches, steps interleaved so load from other
    processes hits both alike. Returns the results and the Muon model's final weight digest."""
    base = build()
    runs = {k: (m := copy.deepcopy(base), make_opt(m, k)) for k in ("muon", "adamw")}
    times: dict[str, list[dict]] = {k: [] for k in runs}
    tokens = MICRO * SEQ * ACCUM
    for s in range(steps + 1):  # step 0 warms up (allocator, lazy imports)
        micro = batches(s)
        for k in runs:
            t = train_step(*runs[k], micro, tokens)
            if s > 0:
                times[k].append(t)
    out = {"tokens_per_step": tokens, "timed_steps": steps, "ns_dtype_auto_resolves_to":
           str(resolve_ns_dtype("auto", torch.device("cpu"))).removeprefix("torch."),
           "params": sum(p.numel() for p in base.parameters()),
           "muon_params": sum(len(g["params"]) for g in runs["muon"][1].param_groups if g["algo"] == "muon"),
           "ns_calls_per_step": runs["muon"][1].ns_calls // (steps + 1),
           "ns_matrices_per_step": runs["muon"][1].ns_matrices // (steps + 1)}
    for k, ts in times.items():
        step = statistics.median(t["step"] for t in ts)
        out[k] = {"tok_s": tokens / step, "step_s": step, "step_s_all": [t["step"] for t in ts],
                  "opt_step_s": statistics.median(t["opt"] for t in ts),
                  "cpu_s": statistics.median(t["cpu"] for t in ts),
                  "fwd_bwd_s": statistics.median(t["fwd_bwd"] for t in ts)}
    out["muon_over_adamw_step_time"] = out["muon"]["step_s"] / out["adamw"]["step_s"]
    out["muon_overhead_pct"] = 100 * (out["muon_over_adamw_step_time"] - 1)
    out["muon_overhead_pct_cpu_time"] = 100 * (out["muon"]["cpu_s"] / out["adamw"]["cpu_s"] - 1)
    # the optimizers' own cost relative to AdamW's step: the same quantity without the fwd/bwd
    # noise a shared machine adds (both runs do identical fwd/bwd work)
    extra = out["muon"]["opt_step_s"] - out["adamw"]["opt_step_s"]
    out["opt_only_overhead_pct"] = 100 * extra / out["adamw"]["step_s"]
    if with_bf16:
        # bf16 NS (the report's choice): timed on the optimizer step alone, once — on CPUs without
        # native bf16 matmul it takes seconds, and fwd/bwd is the same as above
        m = copy.deepcopy(base)
        opt = make_opt(m, "muon_bf16ns")
        g = torch.Generator().manual_seed(0)
        for p in m.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        t0 = time.perf_counter()
        opt.step()
        bf = time.perf_counter() - t0
        est = out["muon"]["fwd_bwd_s"] + bf
        out["muon_bf16ns"] = {"opt_step_s": bf, "est_step_s": est, "est_tok_s": tokens / est,
                              "est_over_adamw_step_time": est / out["adamw"]["step_s"]}
    return out, digest(runs["muon"][0])


def dp_worker(rank: int, world: int, port: int, out: str, steps: int, threads: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(threads)
    D.init_distributed(timeout_s=600)
    model = build()
    opt = make_opt(model, "muon", dist_=True)
    tokens = MICRO * SEQ * ACCUM
    per = ACCUM // world
    ts = []
    for s in range(steps + 1):
        micro = batches(s)[rank * per : (rank + 1) * per]
        D.barrier()
        t = train_step(model, opt, micro, tokens)
        if s > 0:
            ts.append(t)
    # identical weights on all ranks after the last step (the all-gather of ZeRO-1 worked)
    Path(out, f"dp_rank{rank}.json").write_text(json.dumps({"steps": ts, "digest": digest(model),
                                                            "ns_matrices": opt.ns_matrices,
                                                            "state_entries": len(opt.state)}))
    D.destroy_distributed()


def bench_dp(steps: int, out_dir: Path, one_rank: dict, digest1: float, threads: int) -> dict:
    """2 gloo ranks, half the global batch each, vs the 1-rank Muon run of bench_optimizers (same
    batches, same steps, same threads per process)."""
    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen([sys.executable, __file__, "--dp-worker", str(r), "2", str(port), str(out_dir),
                               str(steps), str(threads)], env=env) for r in range(2)]
    if any(p.wait(timeout=600) for p in procs):
        raise SystemExit("2-rank benchmark worker failed")
    ranks = [json.loads((out_dir / f"dp_rank{r}.json").read_text()) for r in range(2)]
    med = lambda ts, k: statistics.median(t[k] for t in ts)
    two = {k: max(med(r["steps"], k) for r in ranks) for k in ("step", "fwd_bwd", "allreduce", "opt", "cpu")}
    tokens = MICRO * SEQ * ACCUM
    return {
        "global_tokens_per_step": tokens,
        "threads_per_process": threads,
        "one_rank": {"step_s": one_rank["step_s"], "cpu_s": one_rank["cpu_s"], "opt_s": one_rank["opt_step_s"],
                     "fwd_bwd_s": one_rank["fwd_bwd_s"], "tok_s": one_rank["tok_s"]},
        "two_ranks": {"step_s": two["step"], "cpu_s_max_rank": two["cpu"], "fwd_bwd_s": two["fwd_bwd"],
                      "grad_allreduce_s": two["allreduce"],
                      "opt_incl_param_allgather_s": two["opt"], "tok_s": tokens / two["step"],
                      "ns_matrices_per_rank": [r["ns_matrices"] for r in ranks],
                      "optimizer_state_entries_per_rank": [r["state_entries"] for r in ranks]},
        "two_over_one_step_time": two["step"] / one_rank["step_s"],
        # what the step time ratio would be on otherwise idle cores (each rank's own CPU work)
        "two_over_one_cpu_time": two["cpu"] / one_rank["cpu_s"],
        "ranks_bitwise_agree": ranks[0]["digest"] == ranks[1]["digest"],
        "weights_digest_rel_diff_vs_one_rank": abs(ranks[0]["digest"] - digest1) / abs(digest1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="2 timed steps, no bf16-NS timing")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per process (default 1: on a shared 2-core box, 2 OpenMP threads "
                         "stall whenever another process holds a core — measured 3-5x slower steps)")
    ap.add_argument("--dp-worker", nargs=6, metavar=("RANK", "WORLD", "PORT", "OUT", "STEPS", "THREADS"))
    args = ap.parse_args()
    if args.dp_worker:
        r, w, port, out, steps, th = args.dp_worker
        dp_worker(int(r), int(w), int(port), out, int(steps), int(th))
        return
    torch.set_num_threads(args.threads)
    steps = 2 if args.quick else 3
    t0 = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]  # other processes on the box skew every figure; recorded alongside
    opt_res, digest1 = bench_optimizers(steps, with_bf16=not args.quick)
    res = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "loadavg_1min_at_start": load0, "optimizers": opt_res}
    print(json.dumps(opt_res, indent=1))
    tmp = RESULTS / ".dp_tmp"
    tmp.mkdir(exist_ok=True)
    try:
        res["data_parallel"] = bench_dp(steps, tmp, opt_res["muon"], digest1, args.threads)
    finally:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    res["loadavg_1min_at_end"] = os.getloadavg()[0]
    res["wall_s"] = time.perf_counter() - t0
    print(json.dumps(res["data_parallel"], indent=1))
    (RESULTS / "muon.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {RESULTS / 'muon.json'} in {res['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
