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


def run(out: Path, chats: Path, ranks: int = 1, extra: tuple = (), base: list = ARGS) -> subprocess.CompletedProcess:
    args = [*base, "--data", str(chats), "--out", str(out), *extra]
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


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Image chats among twice as many text chats: many rows (one micro-batch each) hold no image."""
    import random

    from PIL import Image

    d = tmp_path_factory.mktemp("fsdp_mm")
    colours = {"red": (220, 30, 30), "blue": (30, 40, 220)}
    for c, rgb in colours.items():
        Image.new("RGB", (56, 56), rgb).save(d / f"{c}.png")
    rng = random.Random(1)
    with (d / "mixed.jsonl").open("w") as f:
        for i in range(48):
            c = rng.choice(list(colours))
            if i % 3 == 0:
                user = [{"type": "image", "image": f"{c}.png"}, {"type": "text", "text": "colour?"}]
            else:
                user = f"say {c}"
            f.write(json.dumps({"messages": [{"role": "user", "content": user},
                                             {"role": "assistant", "content": c}]}) + "\n")
    return d / "mixed.jsonl"


ALIGN = ["train", "--stage", "align", "--preset", "tiny", "--steps", "4", "--seq-len", "64", "--batch-tokens",
         "1024", "--lr", "3e-3", "--ns-dtype", "float32", "--device", "cpu", "--save-every", "2"]


def test_fsdp_shards_the_vision_tower_and_trains_it_like_one_process(tmp_path, mixed):
    """align trains only the vision tower and projector (the language model frozen, sharded too): each ViT
    block is an FSDP unit, and ranks whose row has no image still take part in its collectives."""
    one = run(tmp_path / "one", mixed, base=ALIGN)
    assert one.returncode == 0, one.stderr[-2000:]
    two = run(tmp_path / "two", mixed, ranks=2, base=ALIGN)  # --dist defaults to fsdp under torchrun
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "final" / "trainer_state.json").read_text())["dist"] == "fsdp"
    ref, got = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_diff(ref, got) <= 1e-5
    start = weights(tmp_path / "two", "step_000002")
    vision = [k for k in got if k.startswith(("vision_tower.", "multi_modal_projector."))]
    assert any("encoder.blocks" in k for k in vision)
    assert max(float((got[k] - start[k]).abs().max()) for k in vision) > 1e-4  # the vision side trained
    assert all(torch.equal(got[k], start[k]) for k in got if k.startswith("language_model."))  # frozen


def test_fsdp_checkpoint_with_a_wrong_config_fails_in_one_line(tmp_path, chats):
    """A sharded checkpoint whose config.json no longer matches its weights (or the optimizer shards) is
    refused in one line naming the file, before anything is written."""
    out = tmp_path / "run"
    r = run(out, chats, extra=("--dist", "fsdp", "--steps", "2", "--save-every", "0"))
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = out / "step_000002"
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] *= 2
    (ckpt / "config.json").write_text(json.dumps(cfg))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = run(out, chats, extra=("--dist", "fsdp", "--steps", "4", "--resume"))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    lines = [ln for ln in bad.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and str(ckpt) in lines[0] and "does not match the model" in lines[0], lines
    assert "wrong shape" in lines[0] and "mlp.down_proj.weight" in lines[0]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_export_writes_the_hf_layout_from_a_sharded_run(tmp_path, chats):
    out, dest = tmp_path / "run", tmp_path / "shipped"
    r = run(out, chats, ranks=2, extra=("--steps", "2", "--save-every", "0", "--export", str(dest)))
    assert r.returncode == 0, r.stderr[-3000:]
    from kvl_core.model import KimiVLForConditionalGeneration

    model = KimiVLForConditionalGeneration.from_pretrained(dest)
    shipped = load_file(str(dest / "model.safetensors"))
    trained = weights(out)
    assert shipped.keys() == trained.keys()
    assert all(shipped[k].dtype == torch.bfloat16 for k in shipped)
    assert max(float((shipped[k].float() - trained[k]).abs().max()) for k in shipped) <= 1e-2
    assert model.config.text.hidden_size > 0
    # an existing, non-empty --export folder is refused before any training
    again = run(tmp_path / "run2", chats, extra=("--steps", "2", "--export", str(dest)))
    assert again.returncode != 0 and "not empty" in again.stderr and not (tmp_path / "run2").exists()
    assert load_file(str(dest / "model.safetensors")).keys() == shipped.keys()


@pytest.mark.slow
def test_three_ranks_with_eight_experts_train_like_one_process(tmp_path, chats):
    """No world size is refused for the experts: every expert matrix is its own Shard(0) DTensor (uneven
    rows where needed) and its Muon owner holds it whole, so 3 ranks with 8 experts per layer work."""
    extra = ("--batch-tokens", str(64 * 12), "--steps", "4", "--save-every", "0")
    one = run(tmp_path / "one", chats, extra=extra)
    three = run(tmp_path / "three", chats, ranks=3, extra=extra)
    assert one.returncode == 0 and three.returncode == 0, three.stderr[-3000:]
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "three")) <= 1e-5


@pytest.mark.slow
def test_fsdp_vit_stage_equals_one_process(tmp_path):
    """vit (CoCa: the vision tower called on its own, the CoCa heads replicated) on 2 ranks. SigLIP's
    negatives are the micro-batch's other images, so one process runs the same micro-batches (--micro-rows)."""
    import random

    from PIL import Image

    rng = random.Random(0)
    cols = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40)}
    for c, rgb in cols.items():
        Image.new("RGB", (56, 56), rgb).save(tmp_path / f"{c}.png")
    data = tmp_path / "cap.jsonl"
    data.write_text("".join(json.dumps({"image": f"{c}.png", "caption": f"a {c} square"}) + "\n"
                            for c in (rng.choice(list(cols)) for _ in range(32))))
    base = ["train", "--stage", "vit", "--preset", "tiny", "--steps", "3", "--seq-len", "64", "--batch-tokens", "256",
            "--micro-rows", "2", "--lr", "3e-3", "--ns-dtype", "float32", "--device", "cpu"]
    one = run(tmp_path / "one", data, base=base)
    two = run(tmp_path / "two", data, ranks=2, base=base)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "final" / "trainer_state.json").read_text())["dist"] == "fsdp"
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max_diff(a, b) <= 1e-5
    start = load_file(str(tmp_path / "one" / "step_000003" / "model.safetensors"))
    assert max_diff(a, start) == 0.0  # final/ is the last step's copy
