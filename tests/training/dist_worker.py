"""Worker for tests/training/test_distributed.py: one process of a 2-rank gloo group on 127.0.0.1.

Runs every scenario in one process group (starting processes is the expensive part on 2 cores)
and writes results_rank{r}.json; each test then asserts on its own scenario's record. The
single-process reference of each scenario runs inside the same worker process, so "bitwise"
compares identical code on identical threads.

Not a test module (no test_ prefix); shared helpers are imported by the tests too.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

K1, K2 = 2, 2  # steps before / after the checkpoint in T3
LR = 2e-2


def build_model(seed: int = 0) -> nn.Module:
    """Tiny Kimi-VL language model (MLA, dense + MoE layers, 8 experts) plus one 3-D stacked param."""
    from kvl_core.config import tiny
    from kvl_core.model.language import DeepseekV3ForCausalLM

    torch.manual_seed(seed)
    m = nn.Module()
    m.lm = DeepseekV3ForCausalLM(tiny().text)
    m.stacked = nn.Parameter(torch.randn(4, 12, 20) * 0.02)  # [E, out, in] -> batched NS
    return m


def make_opt(model: nn.Module, dist_: bool, ns_dtype="float32", lr: float = LR):
    from kvl_core.training.distributed import DistMuon
    from kvl_core.training.muon import Muon, param_groups_for

    groups = param_groups_for(model, lr, weight_decay=0.1, ns_dtype=ns_dtype)
    return (DistMuon if dist_ else Muon)(groups)


def inject_grads(model: nn.Module, step: int) -> None:
    """Deterministic full-rank grads; at odd steps one expert gets none (the skip path)."""
    g = torch.Generator().manual_seed(1000 + step)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        p.grad = torch.randn(p.shape, generator=g)
        if step % 2 == 1 and ".experts.3." in name:
            p.grad = None


def train_injected(model, opt, steps: range) -> None:
    for s in steps:
        inject_grads(model, s)
        opt.step()
        opt.zero_grad(set_to_none=True)


def params_equal(a: nn.Module, b: nn.Module) -> tuple[bool, float]:
    same, worst = True, 0.0
    for (n, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
        if not torch.equal(x, y):
            same = False
            worst = max(worst, (x - y).abs().max().item())
    return same, worst


def states_equal(sa: dict, sb: dict) -> bool:
    if sorted(int(k) for k in sa["state"]) != sorted(int(k) for k in sb["state"]):
        return False
    for k, va in sa["state"].items():
        vb = sb["state"][int(k)] if int(k) in sb["state"] else sb["state"][str(k)]
        if va.keys() != vb.keys():
            return False
        for key in va:
            x, y = va[key], vb[key]
            if isinstance(x, torch.Tensor):
                if not torch.equal(x, y):
                    return False
            elif x != y:
                return False
    return True


# ---- scenarios --------------------------------------------------------------------------------


def t1_t4_injected(out: Path, rank: int, world: int) -> dict:
    """T1: identical injected grads, K steps, bitwise vs single-process Muon (bf16 and fp32 NS).
    T4: NS ran once per Muon matrix per step, across ranks; state only on owners."""
    import torch.distributed as dist

    from kvl_core.training.muon import count_muon_matrices

    res: dict = {}
    for ns_dtype, steps in (("float32", 3), ("bfloat16", 2)):
        model = build_model()
        ref = copy.deepcopy(model)
        opt, ref_opt = make_opt(model, True, ns_dtype), make_opt(ref, False, ns_dtype)
        n_muon = count_muon_matrices(opt.param_groups)
        per_step, ns_params = [], []
        for s in range(steps):
            inject_grads(model, s)
            inject_grads(ref, s)
            before = opt.ns_matrices
            opt.step()
            ref_opt.step()
            t = torch.tensor([opt.ns_matrices - before], dtype=torch.int64)
            dist.all_reduce(t)
            per_step.append(int(t))
            lst: list = [None] * world
            dist.all_gather_object(lst, sorted(opt.last_ns_params))
            ns_params.append(lst)
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
        same, worst = params_equal(model, ref)
        cons = opt.consolidated_state_dict(dst=None)
        muon_idx = sorted(i for i, _ in _muon_param_indices(opt))
        # expected per step: every Muon matrix, minus the one expert (3 matrices) without grads at odd steps
        skipped = sum(1 for n, p in model.named_parameters() if ".experts.3." in n and p.requires_grad)
        res[ns_dtype] = {
            "params_bitwise": same,
            "max_abs_diff": worst,
            "state_bitwise": states_equal(cons, ref_opt.state_dict()),
            "groups_equal": cons["param_groups"] == ref_opt.state_dict()["param_groups"],
            "ns_per_step": per_step,
            "ref_ns_per_step_total": ref_opt.ns_matrices,
            "expected_per_step": [n_muon - (skipped if s % 2 == 1 else 0) for s in range(steps)],
            "ns_params_step0": ns_params[0],
            "muon_param_indices": muon_idx,
            "local_state_entries": len(opt.state),
            "ref_state_entries": len(ref_opt.state),
            "update_rms": opt.last_update_rms,
            "ref_update_rms": ref_opt.last_update_rms,
        }
    return res


def _muon_param_indices(opt):
    i = 0
    for g in opt.param_groups:
        for p in g["params"]:
            if g["algo"] == "muon":
                yield i, p
            i += 1


def t2_end_to_end(out: Path, rank: int, world: int) -> dict:
    """T2: each rank trains on half the global batch (loss = token-sum / global token count, grads
    SUM-all-reduced), fp32 NS; rank 0 also trains a copy on the full batch in one process."""
    from kvl_core.training.distributed import all_reduce_grads, all_reduce_scalar, fill_missing_grads

    model = build_model(1).lm
    ref = copy.deepcopy(model)
    opt, ref_opt = make_opt(model, True, lr=2e-3), make_opt(ref, False, lr=2e-3)
    g = torch.Generator().manual_seed(7)
    B, T, steps = 4, 24, 4
    batches = [torch.randint(0, 256, (B, T + 1), generator=g) for _ in range(steps)]
    # ragged supervision: some positions ignored, unevenly across ranks
    masks = [torch.rand(B, T, generator=g) > 0.3 for _ in range(steps)]
    per = B // world
    for s in range(steps):
        x, y = batches[s][:, :-1], batches[s][:, 1:].masked_fill(~masks[s], -100)
        xs, ys = x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]
        n_global = all_reduce_scalar(float((ys != -100).sum()))
        logits = model(input_ids=xs).logits
        loss = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), ignore_index=-100, reduction="sum") / n_global
        loss.backward()
        all_reduce_grads(model.parameters(), op="sum", bucket_mb=0.05)  # many buckets
        opt.step()
        opt.zero_grad(set_to_none=True)
    # the collectives themselves
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.full((3,), float(rank + 1))
    all_reduce_grads([p], op="avg")
    q = nn.Parameter(torch.zeros(2))
    if rank == 0:
        q.grad = torch.ones(2)  # rank 1 has none: filled with zeros, then summed
    all_reduce_grads([q])
    coll = {"avg_grad": p.grad.tolist(), "filled_sum": q.grad.tolist(),
            "scalar": [all_reduce_scalar(rank + 1, op) for op in ("sum", "mean", "max", "min")]}
    if rank != 0:
        return {"collectives": coll}
    for s in range(steps):
        x, y = batches[s][:, :-1], batches[s][:, 1:].masked_fill(~masks[s], -100)
        logits = ref(input_ids=x).logits
        n = (y != -100).sum()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100, reduction="sum") / n
        loss.backward()
        fill_missing_grads(ref.parameters())
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    diffs = [(a - b).abs().max().item() for a, b in zip(model.parameters(), ref.parameters())]
    moved = max((a - b).abs().max().item() for a, b in zip(model.parameters(), build_model(1).lm.parameters()))
    return {"max_abs_diff": max(diffs), "max_weight_change": moved, "collectives": coll}


def t3_resume(out: Path, rank: int, world: int) -> dict:
    """T3: (a) world 2 trains K1 steps and writes a consolidated checkpoint (+ per-rank shards) for
    the test process to resume on world 1; (b) a world-1 (single-process Muon) checkpoint after K1
    steps is resumed here on world 2. Both must continue exactly like an uninterrupted run."""
    import torch.distributed as dist

    from kvl_core.training.muon import Muon

    res: dict = {}
    # uninterrupted single-process reference, K1 + K2 steps; snapshot at K1 is the world-1 checkpoint
    ref = build_model()
    ref_opt = make_opt(ref, False)
    assert isinstance(ref_opt, Muon)
    train_injected(ref, ref_opt, range(K1))
    if rank == 0:
        torch.save({"model": ref.state_dict(), "optim": ref_opt.state_dict()}, out / "ckpt_w1.pt")
    train_injected(ref, ref_opt, range(K1, K1 + K2))
    if rank == 0:
        torch.save({"model": ref.state_dict(), "optim": ref_opt.state_dict()}, out / "ref_final.pt")

    # (a) world 2 -> checkpoint
    model = build_model()
    opt = make_opt(model, True)
    train_injected(model, opt, range(K1))
    cons = opt.consolidated_state_dict(dst=0)
    torch.save(opt.sharded_state_dict(), out / f"optim_rank{rank}.pt")
    if rank == 0:
        torch.save({"model": model.state_dict(), "optim": cons}, out / "ckpt_w2.pt")
    dist.barrier()

    # (b) world 1 checkpoint -> resume on world 2
    ck = torch.load(out / "ckpt_w1.pt", weights_only=True)
    model = build_model(99)  # different init: everything must come from the checkpoint
    model.load_state_dict(ck["model"])
    opt = make_opt(model, True)
    opt.load_state_dict(ck["optim"])
    res["owned_after_load"] = len(opt.state)
    res["total_state_entries"] = len(ck["optim"]["state"])
    train_injected(model, opt, range(K1, K1 + K2))
    same, worst = params_equal(model, ref)
    cons = opt.consolidated_state_dict(dst=None)
    res["resume_1_to_2"] = {"params_bitwise": same, "max_abs_diff": worst,
                            "state_bitwise": states_equal(cons, ref_opt.state_dict())}
    return res


def t5_sharded_muon(out: Path, rank: int, world: int) -> dict:
    """T5: FSDP2-sharded parameters (fully_shard over a gloo DeviceMesh) with ShardedMuon, the same
    injected whole gradients as a single-process Muon (each rank is handed its Shard(0) rows): bitwise
    equal after K steps. Every byte the optimizer moves is counted at the torch.distributed calls."""
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    from kvl_core.training.distributed import ShardedMuon, device_mesh, fully_shard_model
    from kvl_core.training.muon import Muon, param_groups_for

    model, ref = build_model(3), build_model(3)
    for m in (model, ref):  # 7 rows over 2 ranks: an uneven Shard(0) (4 + 3 rows)
        m.odd = nn.Parameter(torch.linspace(-1, 1, 70).reshape(7, 10) * 0.02)
    mesh = device_mesh(torch.device("cpu"))
    fully_shard_model(model, mesh)
    opt = ShardedMuon(param_groups_for(model, LR, weight_decay=0.1, ns_dtype="float32"))
    ref_opt = Muon(param_groups_for(ref, LR, weight_decay=0.1, ns_dtype="float32"))
    moved = {"received": 0, "sent": 0, "calls": 0}
    nbytes = lambda t: t.numel() * t.element_size()  # noqa: E731
    real = {name: getattr(dist, name) for name in ("gather", "scatter", "broadcast", "all_gather_into_tensor")}

    def gather(t, gather_list=None, dst=0, group=None):
        moved["calls"] += 1
        if rank == dst:
            moved["received"] += sum(nbytes(x) for x in gather_list) - nbytes(t)
        else:
            moved["sent"] += nbytes(t)
        return real["gather"](t, gather_list, dst=dst, group=group)

    def scatter(t, scatter_list=None, src=0, group=None):
        moved["calls"] += 1
        if rank == src:
            moved["sent"] += sum(nbytes(x) for x in scatter_list) - nbytes(t)
        else:
            moved["received"] += nbytes(t)
        return real["scatter"](t, scatter_list, src=src, group=group)

    def other(name):
        def f(*a, **k):
            moved["calls"] += 1
            moved[f"unexpected_{name}"] = moved.get(f"unexpected_{name}", 0) + 1
            return real[name](*a, **k)
        return f

    # per Muon matrix and step at W = 2: its owner receives the other rank's rows, padded to ceil(rows / 2)
    # (gather), and sends them back (scatter)
    padded = sum(-(-p.shape[0] // world) * p[0].numel() * 4 for g in ref_opt.param_groups if g["algo"] == "muon"
                 for p in g["params"])
    muon_bytes = sum(p.numel() * 4 for g in ref_opt.param_groups if g["algo"] == "muon" for p in g["params"])
    dist.gather, dist.scatter = gather, scatter
    dist.broadcast, dist.all_gather_into_tensor = other("broadcast"), other("all_gather_into_tensor")
    try:
        for s in range(3):
            g = torch.Generator().manual_seed(500 + s)
            for (name, p), q in zip(model.named_parameters(), ref.parameters()):
                if not q.requires_grad or "e_score_correction_bias" in name:
                    continue
                full = torch.randn(q.shape, generator=g)
                q.grad = full.clone()
                p.grad = distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None) if isinstance(p, DTensor) else full.clone()
            opt.step()
            ref_opt.step()
            opt.zero_grad(set_to_none=True)
            ref_opt.zero_grad(set_to_none=True)
    finally:
        for name, fn in real.items():
            setattr(dist, name, fn)
    same, worst = True, 0.0
    for p, q in zip(model.parameters(), ref.parameters()):
        full = p.full_tensor() if isinstance(p, DTensor) else p
        if not torch.equal(full, q):
            same, worst = False, max(worst, (full - q).abs().max().item())
    return {"params_bitwise": same, "max_abs_diff": worst, "moved": moved, "muon_bytes_per_step": muon_bytes, "padded_rows_bytes_per_step": padded,
            "steps": 3, "sharded": sum(isinstance(p, DTensor) for p in model.parameters()),
            "update_rms": opt.last_update_rms, "ref_update_rms": ref_opt.last_update_rms}


SCENARIOS = {"t1_t4": t1_t4_injected, "t2": t2_end_to_end, "t3": t3_resume, "t5": t5_sharded_muon}


def main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    from kvl_core.training.distributed import destroy_distributed, init_distributed

    info = init_distributed(timeout_s=120)
    out_dir = Path(out)
    results: dict = {"info": {"rank": info.rank, "world": info.world, "device": str(info.device)}}
    for name, fn in SCENARIOS.items():
        t0 = time.perf_counter()
        try:
            results[name] = fn(out_dir, rank, world)
            results[name]["seconds"] = time.perf_counter() - t0
        except Exception:  # recorded so the matching test fails with the traceback
            results[name] = {"error": traceback.format_exc()}
    (out_dir / f"results_rank{rank}.json").write_text(json.dumps(results))
    destroy_distributed()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
