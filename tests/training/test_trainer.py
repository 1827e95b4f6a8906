"""The trainer on the tiny preset: every stage learns, frozen parts stay frozen, resume is exact,
a killed save never damages the last checkpoint, and `kvl train` works as users run it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from kvl_core.errors import KvlError
from kvl_core.training.trainer import TrainConfig, Trainer, checkpoints, train

COLORS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Small learnable datasets: fixed-format chats, periodic text, solid-colour images with captions."""
    d = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    for name, rgb in COLORS.items():
        Image.new("RGB", (56, 56), rgb).save(d / f"{name}.png")
    words = ["red", "blue", "cat", "sun"]
    with (d / "chat.jsonl").open("w") as f:
        for _ in range(48):
            w = rng.choice(words)
            f.write(json.dumps({"messages": [{"role": "user", "content": f"say {w}"},
                                             {"role": "assistant", "content": f"{w} {w} {w}"}]}) + "\n")
    with (d / "text.jsonl").open("w") as f:
        for _ in range(48):
            f.write(json.dumps({"text": "abcd" * rng.randint(4, 12)}) + "\n")
    with (d / "caption.jsonl").open("w") as f:
        for _ in range(48):
            c = rng.choice(list(COLORS))
            f.write(json.dumps({"image": f"{c}.png", "caption": f"a {c} square"}) + "\n")
    with (d / "mm_chat.jsonl").open("w") as f:
        for _ in range(48):
            c = rng.choice(list(COLORS))
            f.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image", "image": f"{c}.png"}, {"type": "text", "text": "colour?"}]},
                {"role": "assistant", "content": c}]}) + "\n")
    return {p.stem: p for p in d.glob("*.jsonl")}


def cfg(tmp_path, data, stage, sources, steps=10, **kw) -> TrainConfig:
    base = dict(stage=stage, out=str(tmp_path / stage), data=[str(data[s]) for s in sources], preset="tiny",
                steps=steps, seq_len=64, lr=3e-3, batch_tokens=4 * 64, seed=0, device="cpu", plot=False,
                ns_dtype="float32")
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


STAGE_DATA = {
    "vit": ["caption"], "align": ["caption"], "pretrain": ["text", "mm_chat"], "cooldown": ["text", "mm_chat"],
    "longctx": ["text"], "sft": ["chat"], "cot-sft": ["chat"],
}


@pytest.mark.parametrize("stage", list(STAGE_DATA))
def test_every_stage_runs_and_learns(tmp_path, data, stage):
    steps = 12
    summary = train(cfg(tmp_path, data, stage, STAGE_DATA[stage], steps=steps, lr=5e-3 if stage != "align" else 2e-2))
    ls = losses(tmp_path / stage)
    assert len(ls) == steps and all(torch.isfinite(torch.tensor(ls)))
    first, last = sum(ls[:3]) / 3, sum(ls[-3:]) / 3
    assert last < first, (stage, ls)
    final = Path(summary["final"])
    assert (final / "model.safetensors").exists() and (final / "tiktoken.model").exists()
    if stage == "longctx":
        assert json.loads((final / "config.json").read_text())["text_config"]["rope_theta"] == 800000.0


def test_align_keeps_the_language_model_bitwise_frozen(tmp_path, data):
    c = cfg(tmp_path, data, "align", ["caption"], steps=4, lr=2e-2)
    trainer = Trainer(c)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = load_file(str(tmp_path / "align" / "final" / "model.safetensors"))
    lm = [k for k in before if k.startswith("language_model.")]
    assert lm and all(torch.equal(before[k], after[k]) for k in lm)
    moved = [k for k in before if k.startswith(("vision_tower.", "multi_modal_projector.")) and not torch.equal(before[k], after[k])]
    assert len(moved) > 10
    state = torch.load(tmp_path / "align" / "final" / "optimizer.pt", weights_only=True)
    n_state = len(state["optimizer"]["state"])
    n_trainable = sum(1 for k in before if k.startswith(("vision_tower.", "multi_modal_projector.")))
    assert 0 < n_state <= n_trainable  # frozen LLM parameters carry no optimizer state


def test_resume_reproduces_the_uninterrupted_run(tmp_path, data):
    full = cfg(tmp_path, data, "sft", ["chat"], steps=8, out=str(tmp_path / "full"))
    train(full)
    part = cfg(tmp_path, data, "sft", ["chat"], steps=8, out=str(tmp_path / "part"), save_every=3, stop_after=3)
    assert train(part) == {"stopped_at": 3}
    assert [p.name for p in checkpoints(tmp_path / "part")] == ["step_000003"]
    resumed = cfg(tmp_path, data, "sft", ["chat"], steps=8, out=str(tmp_path / "part"), resume=True)
    train(resumed)
    assert losses(tmp_path / "part") == losses(tmp_path / "full")  # bitwise, float32 on CPU
    a = load_file(str(tmp_path / "full" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "final" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


KILLER = """
import os, signal, sys
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.training.trainer import TrainConfig, train
original = KimiVLForConditionalGeneration.save_pretrained
calls = {"n": 0}
def dying_save(self, path, **kw):
    calls["n"] += 1
    if calls["n"] == 2:  # the second checkpoint: write part of it, then die hard
        os.makedirs(path, exist_ok=True)
        open(os.path.join(path, "model.safetensors"), "wb").write(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, path, **kw)
KimiVLForConditionalGeneration.save_pretrained = dying_save
train(TrainConfig(**__import__("json").loads(sys.argv[1])))
"""


def test_a_process_killed_while_saving_keeps_the_previous_checkpoint(tmp_path, data):
    c = cfg(tmp_path, data, "sft", ["chat"], steps=6, out=str(tmp_path / "run"), save_every=2)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(c.__dict__)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    ckpts = checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["step_000002"]
    from kvl_core.model import KimiVLForConditionalGeneration
    KimiVLForConditionalGeneration.from_pretrained(ckpts[-1])  # intact and loadable
    train(cfg(tmp_path, data, "sft", ["chat"], steps=6, out=str(tmp_path / "run"), save_every=2, resume=True))
    assert len(losses(tmp_path / "run")) == 6 and (tmp_path / "run" / "final" / "config.json").exists()


def test_bad_runs_are_refused_clearly(tmp_path, data):
    with pytest.raises(KvlError, match="no training data"):
        Trainer(cfg(tmp_path, data, "sft", []))
    with pytest.raises(KvlError, match="--model CHECKPOINT"):
        Trainer(cfg(tmp_path, data, "sft", ["chat"], preset=None))
    train(cfg(tmp_path, data, "sft", ["chat"], steps=1))
    with pytest.raises(KvlError, match="pass --resume"):
        Trainer(cfg(tmp_path, data, "sft", ["chat"], steps=1))
    (tmp_path / "bad.jsonl").write_text('{"messages": [}\n')
    bad = cfg(tmp_path, data, "sft", ["chat"], out=str(tmp_path / "b"))
    bad.data = [str(tmp_path / "bad.jsonl")]
    with pytest.raises(KvlError, match=r"bad.jsonl:1"):
        Trainer(bad).train_step()


def test_kvl_train_cli_then_chat_on_the_result(tmp_path, data):
    kvl = Path(sys.executable).parent / "kvl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    out = tmp_path / "cli"
    proc = subprocess.run([str(kvl), "train", "--stage", "sft", "--preset", "tiny", "--data", str(data["chat"]),
                           "--out", str(out), "--steps", "3", "--seq-len", "64", "--batch-tokens", "256", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and Path(summary["final"]).is_dir()
    assert (out / "loss.png").stat().st_size > 1000
    chat = subprocess.run([str(kvl), "chat", "--model", summary["final"], "say red", "--max-new-tokens", "4", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert chat.returncode == 0, chat.stderr
    assert json.loads(chat.stdout)["completion_tokens"] >= 1
    bad = subprocess.run([str(kvl), "train", "--stage", "nope", "--preset", "tiny", "--data", str(data["chat"]),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 1 and "unknown stage" in bad.stderr and "Traceback" not in bad.stderr


def test_torchrun_two_ranks_match_one_process(tmp_path, data):
    """`torchrun --nproc-per-node 2 kvl train` (gloo, DistMuon, global-token loss normalisation)
    reaches the single-process weights on the same global batches (fp32 Newton-Schulz)."""
    torchrun = Path(sys.executable).parent / "torchrun"
    kvl = Path(sys.executable).parent / "kvl"
    args = ["train", "--stage", "sft", "--preset", "tiny", "--data", str(data["chat"]), "--steps", "3",
            "--seq-len", "64", "--batch-tokens", "512", "--lr", "3e-3", "--ns-dtype", "float32", "--device", "cpu"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    env["OMP_NUM_THREADS"] = "1"
    one = subprocess.run([str(kvl), *args, "--out", str(tmp_path / "one")], capture_output=True, text=True,
                         env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    import socket
    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    two = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", port,
                          "--no-python", str(kvl), *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=240)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    moved = max(float((a[k] - load_file(str(tmp_path / "one" / "step_000003" / "model.safetensors"))[k]).abs().max())
                for k in list(a)[:1])
    assert moved == 0.0  # final/ is a copy of the last step
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-5, diff
    la, lb = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(la) == len(lb) == 3 and max(abs(x - y) for x, y in zip(la, lb)) < 1e-4


def test_vit_stage_samples_images_at_growing_resolution(tmp_path, data):
    big = tmp_path / "big"
    big.mkdir()
    Image.new("RGB", (448, 448), (10, 120, 200)).save(big / "b.png")  # 1024 patches at native size
    (big / "cap.jsonl").write_text("".join(json.dumps({"image": "b.png", "caption": f"blue {i}"}) + "\n" for i in range(8)))
    c = cfg(tmp_path, data, "vit", ["caption"], steps=4, out=str(tmp_path / "vit"))
    c.data = [str(big / "cap.jsonl")]
    trainer = Trainer(c)
    trainer.stage.progressive_resolution = (64, 4096)  # the tiny processor caps the end at 256 patches
    patches = []
    fetch = trainer.stream.next_batch

    def spy():
        batch = fetch()
        patches.append(int((batch.image_grid_hws[:, 0] * batch.image_grid_hws[:, 1]).max()))
        return batch

    trainer.stream.next_batch = spy
    for _ in range(4):
        trainer.train_step()
    assert patches == sorted(patches) and patches[0] <= 64 < patches[-1] <= 256, patches


def test_out_of_memory_becomes_a_hint(tmp_path, data, monkeypatch):
    trainer = Trainer(cfg(tmp_path, data, "sft", ["chat"], steps=2, out=str(tmp_path / "oom")))

    def explode(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(trainer.model, "forward", explode)
    with pytest.raises(KvlError, match="out of memory at step 1 .*lower --micro-rows"):
        trainer.train_step()


def test_summary_counts_truncated_samples(tmp_path, data):
    summary = train(cfg(tmp_path, data, "pretrain", ["text"], steps=2, seq_len=16, out=str(tmp_path / "trunc")))
    assert summary["data"]["truncated"] > 0  # texts of 17-49 tokens cut to 16


# ---- long context (issue 18) ------------------------------------------------------------------

def test_activation_checkpointing_changes_memory_not_the_math(tmp_path, data):
    from torch.autograd.graph import saved_tensors_hooks

    kw = dict(steps=2, seq_len=256, batch_tokens=512)
    plain = Trainer(cfg(tmp_path, data, "sft", ["mm_chat"], out=str(tmp_path / "plain"), checkpoint_activations=False, **kw))
    ckpt = Trainer(cfg(tmp_path, data, "sft", ["mm_chat"], out=str(tmp_path / "ckpt"), checkpoint_activations=True, **kw))
    assert plain.checkpointed == 0 and ckpt.checkpointed == 3 + 2  # decoder layers + ViT blocks
    for _ in range(2):
        a, b = plain.train_step(), ckpt.train_step()
        assert a["loss"] == b["loss"]
    pa, pb = dict(plain.model.named_parameters()), dict(ckpt.model.named_parameters())
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)

    def saved_bytes(trainer) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        mb = trainer.stream.next_batch().split(1)[0]
        with saved_tensors_hooks(pack, lambda t: t):
            trainer._forward_loss(mb)
        return total

    assert saved_bytes(ckpt) < 0.5 * saved_bytes(plain)


def test_checkpointing_defaults_on_for_long_stages_only(tmp_path, data):
    long = Trainer(cfg(tmp_path, data, "sft", ["chat"], out=str(tmp_path / "long"), seq_len=None, batch_tokens=None))
    short = Trainer(cfg(tmp_path, data, "sft", ["chat"], out=str(tmp_path / "short")))
    assert long.stream.seq_len == 32768 and long.checkpointed > 0
    assert short.stream.seq_len == 64 and short.checkpointed == 0


def test_a_32k_stage_on_a_small_dataset_packs_rows_as_wide_as_the_data(tmp_path, data):
    """The recipe's own 32K rows (no --seq-len): one pass over 48 chats per step, one narrow row."""
    t = Trainer(cfg(tmp_path, data, "sft", ["mm_chat"], steps=2, out=str(tmp_path / "sft32k"), seq_len=None,
                    batch_tokens=None))
    batch = t.stream.next_global()
    assert t.stream.seq_len == 32768 and batch.rows == 8
    assert len({sid for row in batch.sample_ids for sid in row}) == 48 == sum(map(len, batch.sample_ids))
    assert batch.input_ids.shape[1] == -(-batch.n_tokens // 128) * 128 < 4096
    r = t.train_step()
    assert r["tokens"] == batch.n_tokens and torch.isfinite(torch.tensor(r["loss"]))


@pytest.mark.slow  # ~30 s for the step alone on 2 idle cores (bench/bench_train.py), over the 10 s budget
def test_a_full_32k_token_sft_row_trains(tmp_path):
    """One tiny-preset SFT step whose row is filled to the recipe's 32K tokens: document attention,
    checkpointing (on by default at 32K) and the chunked loss together."""
    path = tmp_path / "long.jsonl"
    rng = random.Random(3)
    with path.open("w") as f:
        for _ in range(48):
            text = " ".join(rng.choice(["red", "blue", "cat", "sun"]) for _ in range(rng.randint(300, 500)))
            f.write(json.dumps({"messages": [{"role": "user", "content": "talk"},
                                             {"role": "assistant", "content": text}]}) + "\n")
    # 2 steps: the SFT recipe's first half is its 32K phase (with 1 step, round(0.5) = 0 leaves only 128K)
    t = Trainer(TrainConfig(stage="sft", out=str(tmp_path / "run"), data=[str(path)], preset="tiny", steps=2, seed=0,
                            device="cpu", plot=False, ns_dtype="float32", batch_tokens=32768))
    assert t.checkpointed > 0 and t.stream.seq_len == 32768
    r = t.train_step()  # batch_tokens = one row: more than 30K tokens means a row (nearly) 32K wide
    assert 30000 < r["tokens"] <= 32768 and torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0
