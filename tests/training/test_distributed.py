"""DistMuon (ZeRO-1) ≡ single-process Muon, on 2 real gloo processes on 127.0.0.1 (training.md §1.5
T1–T4). One 2-rank launch runs every scenario (tests/training/dist_worker.py); each test checks its
own record. Budget: ~20 s on 2 busy cores, most of it two torch (+ torch._dynamo) imports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kvl_core.training import distributed as D
from kvl_core.training.muon import Muon

from . import dist_worker as W

WORKER = Path(W.__file__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def run2(tmp_path_factory):
    """Launch the 2-rank worker once; returns (out_dir, [results_rank0, results_rank1])."""
    out = tmp_path_factory.mktemp("dist")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), "2", str(port), str(out)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("2-rank worker timed out")
    for r, (p, log) in enumerate(zip(procs, logs)):
        if p.returncode != 0 or not (out / f"results_rank{r}.json").exists():
            pytest.fail(f"rank {r} exited with {p.returncode}:\n{log[-3000:]}")
    return out, [json.loads((out / f"results_rank{r}.json").read_text()) for r in range(2)]


def _scenario(results, rank: int, name: str) -> dict:
    rec = results[rank][name]
    assert "error" not in rec, rec.get("error")
    return rec


def test_processes_joined_a_two_rank_gloo_group(run2):
    _, res = run2
    assert [r["info"]["rank"] for r in res] == [0, 1]
    assert all(r["info"]["world"] == 2 for r in res)


@pytest.mark.parametrize("ns_dtype", ["float32", "bfloat16"])
def test_t1_identical_grads_bitwise_equal_single_process(run2, ns_dtype):
    """Same injected grads on every rank and in a single-process Muon: after K steps params and the
    consolidated optimizer state are bit-identical (bf16 NS too: each matrix's NS is the same code
    on the same input, run once on its owner, and its bytes are copied to the other rank)."""
    _, res = run2
    for rank in (0, 1):
        rec = _scenario(res, rank, "t1_t4")[ns_dtype]
        assert rec["params_bitwise"], f"rank {rank}: max |dW| = {rec['max_abs_diff']}"
        assert rec["state_bitwise"], f"rank {rank}: consolidated state differs from single-process state"
        assert rec["groups_equal"]
        # per-group update RMS, reduced over owners, equals the single-process value
        assert rec["update_rms"] == pytest.approx(rec["ref_update_rms"], rel=1e-9)


def test_t4_newton_schulz_runs_once_per_matrix_across_ranks(run2):
    _, res = run2
    rec0 = _scenario(res, 0, "t1_t4")["float32"]
    rec1 = _scenario(res, 1, "t1_t4")["float32"]
    # counted matrices per step, summed over ranks == number of Muon matrices that had gradients
    assert rec0["ns_per_step"] == rec0["expected_per_step"]
    assert sum(rec0["ns_per_step"]) == rec0["ref_ns_per_step_total"]
    # which matrices: every Muon param exactly once, split between both ranks
    a, b = (set(x) for x in rec0["ns_params_step0"])
    assert a and b and not (a & b)
    assert sorted(a | b) == rec0["muon_param_indices"]
    # ZeRO-1: each rank keeps state only for what it owns; together, everything
    assert 0 < rec0["local_state_entries"] < rec0["ref_state_entries"]
    assert rec0["local_state_entries"] + rec1["local_state_entries"] == rec0["ref_state_entries"]


def test_t2_half_batches_with_grad_all_reduce_match_full_batch(run2):
    """Each rank: loss = (sum of its token losses) / global token count, grads SUM-all-reduced,
    fp32 NS. vs one process on the full batch. Not bitwise (the gradient sums are ordered
    differently), so the bound is 1e-6 on weights that moved by ~1e-2."""
    _, res = run2
    rec = _scenario(res, 0, "t2")
    assert rec["max_weight_change"] > 1e-3  # the comparison is not vacuous
    assert rec["max_abs_diff"] <= 1e-6


def test_grad_and_scalar_all_reduce(run2):
    _, res = run2
    for rank in (0, 1):
        c = _scenario(res, rank, "t2")["collectives"]
        assert c["avg_grad"] == [1.5, 1.5, 1.5]
        assert c["filled_sum"] == [1.0, 1.0]
        assert c["scalar"] == [3.0, 1.5, 2.0, 1.0]


def test_t3_world1_checkpoint_resumes_on_world2(run2):
    _, res = run2
    for rank in (0, 1):
        rec = _scenario(res, rank, "t3")
        assert rec["resume_1_to_2"]["params_bitwise"], rec["resume_1_to_2"]
        assert rec["resume_1_to_2"]["state_bitwise"]
    # each rank kept only its own share of the loaded state
    owned = [_scenario(res, r, "t3")["owned_after_load"] for r in (0, 1)]
    assert all(0 < n < res[0]["t3"]["total_state_entries"] for n in owned)
    assert sum(owned) == res[0]["t3"]["total_state_entries"]



def test_t5_fsdp_sharded_muon_equals_single_process_and_moves_each_matrix_once(run2):
    """ShardedMuon on FSDP2 DTensor shards: bitwise the single-process Muon. Communication: each Muon
    matrix's gradient rows go to its owner (gather) and the update rows come back (scatter), so over both
    ranks each matrix crosses the wire once per direction for the half its owner does not hold:
    S (W-1)/W bytes each way, S in total at W = 2 -- the former all-gather of the whole gradient to every
    rank plus a broadcast of the update moved 2 S (W-1), twice as much here and W times as much in general."""
    _, res = run2
    recs = [_scenario(res, r, "t5") for r in (0, 1)]
    for rec in recs:
        assert rec["sharded"] > 0
        assert rec["params_bitwise"], rec["max_abs_diff"]
        # the logged RMS sums squares per shard, in another order than one process: equal to rounding
        assert rec["update_rms"] == pytest.approx(rec["ref_update_rms"], rel=1e-6)
        assert not [k for k in rec["moved"] if k.startswith("unexpected")], rec["moved"]
    S, steps = recs[0]["muon_bytes_per_step"], recs[0]["steps"]
    received = sum(r["moved"]["received"] for r in recs)
    assert received == sum(r["moved"]["sent"] for r in recs)
    # one padded half-matrix each way per Muon matrix (a 7-row matrix travels as 4 rows)
    assert received == steps * 2 * recs[0]["padded_rows_bytes_per_step"]
    assert S < received / steps < 1.01 * S  # ~S per step; all-gather + broadcast moved 2 S (W-1) = 2 S


@pytest.fixture
def one_thread():
    # the worker ran on 1 thread; match it so GEMM blocking (and so every bit) is the same
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("cls", ["DistMuon", "Muon"])
def test_t3_world2_checkpoint_resumes_on_world1(run2, one_thread, cls):
    out, _ = run2
    ck = torch.load(out / "ckpt_w2.pt", weights_only=True)
    ref = torch.load(out / "ref_final.pt", weights_only=True)
    model = W.build_model(99)
    model.load_state_dict(ck["model"])
    opt = W.make_opt(model, cls == "DistMuon")
    assert type(opt).__name__ == cls
    opt.load_state_dict(ck["optim"])
    W.train_injected(model, opt, range(W.K1, W.K1 + W.K2))
    for name, p in model.named_parameters():
        assert torch.equal(p, ref["model"][name]), name
    assert W.states_equal(opt.state_dict(), ref["optim"])


def test_t3_sharded_files_consolidate_offline(run2):
    out, _ = run2
    shards = [torch.load(out / f"optim_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(s["kvl_dist"]["world_size"] == 2 for s in shards)
    assert all(0 < len(s["state"]) for s in shards)
    merged = D.consolidate(shards)
    ck = torch.load(out / "ckpt_w2.pt", weights_only=True)
    assert W.states_equal(merged, ck["optim"])
    with pytest.raises(ValueError, match="two shards"):
        D.consolidate([shards[0], {**shards[0], "kvl_dist": None}])
    # a lone shard must not load on another world size (half the momentum would silently be zero)
    opt = W.make_opt(W.build_model(), True)
    with pytest.raises(ValueError, match="consolidate"):
        opt.load_state_dict(shards[1])


# ---- world 1, no process group ----------------------------------------------------------------


def test_init_distributed_without_torchrun_is_world_one(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed()
    assert (info.rank, info.world) == (0, 1)
    assert D.world() == 1 and D.rank() == 0 and D.is_main()
    assert D.all_reduce_scalar(3.5, "mean") == 3.5


def test_world1_distmuon_is_muon_and_fills_missing_grads():
    a, b = W.build_model(), W.build_model()
    oa, ob = W.make_opt(a, True), W.make_opt(b, False)
    assert isinstance(oa, D.DistMuon) and oa.world_size == 1 and isinstance(ob, Muon)
    for s in range(2):
        for m in (a, b):
            W.inject_grads(m, 1)  # expert 3 has no grads
            D.all_reduce_grads(m.parameters())
            assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
        oa.step(), ob.step()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_ownership_is_deterministic_and_balanced():
    sizes = [100, 100, 50, 40, 30, 20, 10, 10, 5]
    o = D.assign_owners(sizes, 2)
    assert o == D.assign_owners(sizes, 2)
    loads = [sum(s for s, r in zip(sizes, o) if r == k) for k in (0, 1)]
    assert abs(loads[0] - loads[1]) <= max(sizes[-3:])
    assert D.assign_owners(sizes, 1) == [0] * len(sizes)
