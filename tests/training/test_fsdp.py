"""FSDP2 training (`--dist fsdp`): 2 gloo ranks equal one process, sharded checkpoints resume on the same
and on another number of ranks, and damaged or mismatched checkpoints fail in one line (issue 18)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

BIN = Path(sys.executable).parent
ARGS = ["train", "--stage", "sft", "--preset", "tiny", "--steps", "8", "--seq-len", "64", "--batch-tokens", "1024",
        "--lr", "3e-3", "--ns-dtype", "float32", "--device", "cpu", "--save-every", "4"]


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("fsdp") / "chat.jsonl"
    with path.open("w") as f:
        for _ in range(64):
            w = rng.choice(["red", "blue", "cat", "sun"])
            f.write(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                             {"role": "assistant", "content": f"{w} {w} {w}"}]}) + "\n")
    return path


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    e["OMP_NUM_THREADS"] = "1"
    return e


def run(out: Path, chats: Path, ranks: int = 1, extra: tuple = ()) -> subprocess.CompletedProcess:
    args = [*ARGS, "--data", str(chats), "--out", str(out), *extra]
    if ranks == 1:
        cmd = [str(BIN / "kvl"), *args]
    else:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = str(sock.getsockname()[1])
        cmd = [str(BIN / "torchrun"), "--nproc-per-node", str(ranks), "--master-addr", "127.0.0.1", "--master-port",
               port, "--no-python", str(BIN / "kvl"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)


def weights(out: Path, name: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(out / name / "model.safetensors"))


def max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def resume_copy(src: Path, dst: Path, step: str = "step_000004") -> Path:
    dst.mkdir()
    shutil.copytree(src / step, dst / step)
    shutil.copy(src / "metrics.jsonl", dst / "metrics.jsonl")
    return dst


def test_fsdp_two_ranks_equal_one_process_and_resume_on_one(tmp_path, chats):
    one = run(tmp_path / "one", chats)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(tmp_path / "two", chats, ranks=2, extra=("--dist", "fsdp"))
    assert two.returncode == 0, two.stderr[-3000:]
    state = json.loads((tmp_path / "two" / "step_000008" / "trainer_state.json").read_text())
    assert state["dist"] == "fsdp" and state["world"] == 2
    shards = sorted(p.name for p in (tmp_path / "two" / "step_000008" / "optim").glob("*.distcp"))
    assert len(shards) == 2  # each rank wrote its own optimizer shard
    ref = weights(tmp_path / "one")
    assert max_diff(ref, weights(tmp_path / "two")) <= 1e-5
    # the 2-rank checkpoint of step 4, continued by one process, ends where both runs end
    re1 = resume_copy(tmp_path / "two", tmp_path / "re1")
    r = run(re1, chats, extra=("--resume",))
    assert r.returncode == 0, r.stderr[-2000:]
    assert max_diff(weights(tmp_path / "two"), weights(re1)) <= 1e-5


@pytest.mark.slow
def test_fsdp_four_ranks_and_resume_on_two_is_bitwise(tmp_path, chats):
    one = run(tmp_path / "one", chats)
    four = run(tmp_path / "four", chats, ranks=4)  # --dist defaults to fsdp under torchrun
    assert one.returncode == 0 and four.returncode == 0, four.stderr[-3000:]
    assert json.loads((tmp_path / "four" / "final" / "trainer_state.json").read_text())["dist"] == "fsdp"
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "four")) <= 1e-5
    two = run(tmp_path / "two", chats, ranks=2)
    re2 = resume_copy(tmp_path / "two", tmp_path / "re2")
    r = run(re2, chats, ranks=2, extra=("--resume",))
    assert two.returncode == 0 and r.returncode == 0, r.stderr[-3000:]
    assert max_diff(weights(tmp_path / "two"), weights(re2)) == 0.0  # same world size: bitwise
    re42 = resume_copy(tmp_path / "four", tmp_path / "re42")
    r = run(re42, chats, ranks=2, extra=("--resume",))
    assert r.returncode == 0, r.stderr[-3000:]
    assert max_diff(weights(tmp_path / "four"), weights(re42)) <= 1e-5


def test_damaged_or_mismatched_fsdp_checkpoints_fail_in_one_line(tmp_path, chats):
    """One process with --dist fsdp writes the same sharded checkpoint format (one shard)."""
    out = tmp_path / "run"
    r = run(out, chats, extra=("--dist", "fsdp", "--steps", "4", "--save-every", "2"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = out / "step_000004"
    before = {p: p.read_bytes() for p in ckpt.rglob("*") if p.is_file()}

    wrong = run(out, chats, extra=("--steps", "6", "--resume", "--optimizer", "adamw"))
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    assert "optimizer state does not fit this model" in wrong.stderr and str(ckpt / "optim") in wrong.stderr

    zero1 = run(out, chats, extra=("--steps", "6", "--resume", "--dist", "zero1"))
    assert zero1.returncode != 0 and "resume it with --dist fsdp" in zero1.stderr and "Traceback" not in zero1.stderr

    (ckpt / "optim" / "__0_0.distcp").unlink()
    missing = run(out, chats, extra=("--steps", "6", "--resume"))
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "shard file __0_0.distcp is missing" in missing.stderr
    # nothing was overwritten: the checkpoints are as they were (less the deleted shard), no newer one
    assert sorted(p.name for p in out.glob("step_*")) == ["step_000002", "step_000004"]
    assert all(p.read_bytes() == b for p, b in before.items() if p.exists())
