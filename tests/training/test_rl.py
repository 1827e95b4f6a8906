"""RL stage (online policy mirror descent): the objective by hand, log-probs, problem files, sampling,
one update's direction, the CLI, and evidence on the tiny preset that RL alone raises accuracy and that
the length reward shortens responses."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from kvl_core.errors import KvlError
from kvl_core.training.rl import (
    Problem, RLConfig, RLTrainer, curriculum_pool, opmd_loss, pad_rows, read_problems, sample_batch,
    sequence_logprobs, train_rl,
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def digit_task(path: Path, kind: str, n: int = 64, seed: int = 0) -> Path:
    """Generated verifiable tasks. `seven`: whatever digit is shown, answer 7 (a bandit: learnable from
    scratch in seconds). `parity`: answer the shown digit's parity, 0 or 1."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x = rng.randrange(10)
        answer = "7" if kind == "seven" else str(x % 2)
        rows.append({"messages": [{"role": "user", "content": f"{x}"}], "answer": answer, "checker": "numeric"})
    return write_jsonl(path, rows)


def rl_cfg(tmp_path: Path, data: Path, name: str, **kw) -> RLConfig:
    base = dict(out=str(tmp_path / name), data=[str(data)], preset="tiny", device="cpu", plot=False,
                ns_dtype="float32", lr=3e-3, k=8, problems=8, max_new_tokens=8, seed=0)
    base.update(kw)
    return RLConfig(**base)


def run(cfg: RLConfig) -> list[dict]:
    train_rl(cfg)
    return [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]


def mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# ---- the objective --------------------------------------------------------------------------------

def test_loss_and_gradient_match_a_hand_computed_example():
    # two samples of one problem: rewards 1 and 0, baseline r̄ = 0.5, τ = 0.1
    logp = torch.tensor([-2.0, -3.0], requires_grad=True)
    old = torch.tensor([-2.5, -3.0])
    loss = opmd_loss(logp, old, torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), tau=0.1)
    # ℓ_1 = −0.5·(−2) + 0.05·0.5² = 1.0125 ;  ℓ_2 = +0.5·(−3) + 0 = −1.5
    assert loss.tolist() == pytest.approx([1.0125, -1.5])
    loss.sum().backward()
    # ∂ℓ/∂logπ = −(r − r̄) + τ·(logπ − logπ_old): −0.5 + 0.1·0.5 = −0.45 ; +0.5
    assert logp.grad.tolist() == pytest.approx([-0.45, 0.5])


def test_loss_gradient_is_minus_k15_eq3_on_a_tiny_policy():
    # a softmax "policy" over 3 answers; eq. 3: (1/k)Σ ∇logπ(y_j)(r_j − r̄) − (τ/2)∇(logπ(y_j)/π_old(y_j))²
    torch.manual_seed(0)
    theta = torch.randn(3, requires_grad=True)
    old = torch.log_softmax(theta.detach() + 0.3 * torch.randn(3), 0)
    ys, r, tau = torch.tensor([0, 2, 2, 1]), torch.tensor([1.0, 0.0, 0.0, 1.0]), 0.2
    logp = torch.log_softmax(theta, 0)[ys]
    opmd_loss(logp, old[ys], r, r.mean().expand(4), tau).mean().backward()
    jac = torch.autograd.functional.jacobian(lambda t: torch.log_softmax(t, 0)[ys], theta.detach())
    lr_ = logp.detach() - old[ys]
    eq3 = ((r - r.mean())[:, None] * jac - tau * lr_[:, None] * jac).mean(0)
    assert torch.allclose(theta.grad, -eq3, atol=1e-6)


def test_sequence_logprobs_sum_response_tokens_and_ignore_padding(tiny_model):
    torch.manual_seed(0)
    rows = [([5, 6, 7, 8, 9], [10, 11, 12]), ([20, 21], [22]), ([30, 31, 32], [33, 34, 35, 36])]
    batch = pad_rows(rows, pad_id=299, images=[(None, None)] * 3)
    got = sequence_logprobs(tiny_model, batch)
    for (prompt, resp), g in zip(rows, got.tolist()):
        ids = torch.tensor([prompt + resp])
        logits = tiny_model(ids).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        want = sum(float(lp[len(prompt) - 1 + t, tok].detach()) for t, tok in enumerate(resp))
        assert g == pytest.approx(want, abs=1e-4)
    # temperature: the policy is softmax(logits / T)
    hot = sequence_logprobs(tiny_model, batch, temperature=2.0)
    assert not torch.allclose(hot, got)


# ---- problem files ----------------------------------------------------------------------------------

GOOD = {"messages": [{"role": "user", "content": "1+1?"}], "answer": "2", "checker": "numeric", "difficulty": 1}


@pytest.mark.parametrize("bad,match", [
    ({"messages": [{"role": "user", "content": "1+1?"}]}, "p.jsonl:2: no 'answer' field"),
    ({**GOOD, "answer": ""}, "p.jsonl:2: 'answer' must be"),
    ({**GOOD, "answer": True}, "p.jsonl:2: 'answer' must be"),
    ({**GOOD, "checker": "fuzzy"}, "p.jsonl:2: unknown checker 'fuzzy'"),
    ({**GOOD, "difficulty": 0}, "p.jsonl:2: 'difficulty' must be an integer >= 1"),
    ({**GOOD, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "p.jsonl:2: the last message is the assistant's"),
    ({**GOOD, "messages": [{"role": "robot", "content": "q"}]}, "p.jsonl:2: message 1: unknown role 'robot'"),
    ({**GOOD, "messages": [{"role": "user", "content": [{"type": "image", "image": "nope.png"}]}]},
     "p.jsonl:2: .*image not found"),
    ({"answer": "2"}, "p.jsonl:2: expected an object with 'messages'"),
])
def test_bad_problem_lines_name_file_and_line(tmp_path, bad, match):
    p = write_jsonl(tmp_path / "p.jsonl", [GOOD, bad])
    with pytest.raises(KvlError, match=match) as e:
        read_problems([str(p)])
    assert "\n" not in str(e.value)


def test_problem_file_with_an_image(tmp_path):
    Image.new("RGB", (28, 28), (200, 0, 0)).save(tmp_path / "red.png")
    p = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": [
        {"type": "image", "image": "red.png"}, {"type": "text", "text": "colour? (A) red (B) blue"}]}],
        "answer": "A", "checker": "choice"}])
    (prob,) = read_problems([str(p)])
    assert prob.messages[0]["content"][0]["image"] == str(tmp_path / "red.png")
    assert prob.where.endswith("p.jsonl:1") and prob.checker == "choice" and prob.difficulty is None
    (tmp_path / "bad.jsonl").write_text('{"messages": [}\n')
    with pytest.raises(KvlError, match="bad.jsonl:1: not valid JSON"):
        read_problems([str(tmp_path / "bad.jsonl")])


# ---- sampling -----------------------------------------------------------------------------------------

def _problems(diffs):
    return [Problem(i, f"f:{i}", [{"role": "user", "content": "q"}], "1", None, d) for i, d in enumerate(diffs)]


def test_curriculum_unlocks_harder_levels_over_time():
    probs = _problems([1, 1, 2, 2, 3, 3])
    levels = [max(p.difficulty for p in curriculum_pool(probs, i, 10, 0.6)) for i in range(10)]
    assert levels == [1, 1, 2, 2, 3, 3, 3, 3, 3, 3]
    assert curriculum_pool(_problems([None, None]), 0, 10, 0.5) == _problems([None, None])


def test_prioritized_sampling_prefers_unsolved_problems():
    probs = _problems([None] * 4)
    success = {0: 1.0, 1: 1.0, 2: 0.0, 3: 0.0}
    g = torch.Generator().manual_seed(0)
    counts = [0] * 4
    for _ in range(300):
        for p in sample_batch(probs, 1, success, True, g):
            counts[p.index] += 1
    assert counts[2] + counts[3] > 10 * (counts[0] + counts[1])
    uniform = [0] * 4
    for _ in range(400):
        for p in sample_batch(probs, 1, success, False, g):
            uniform[p.index] += 1
    assert min(uniform) > 60


# ---- one iteration on the tiny model -------------------------------------------------------------------

def test_an_update_moves_probability_towards_rewarded_responses(tmp_path):
    Image.new("RGB", (28, 28), (0, 0, 200)).save(tmp_path / "blue.png")
    data = write_jsonl(tmp_path / "p.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "blue.png"},
                                                   {"type": "text", "text": "colour?"}]}], "answer": "blue"},
        {"messages": [{"role": "user", "content": "say hi"}], "answer": "hi"},
    ])
    t = RLTrainer(rl_cfg(tmp_path, data, "one", k=4, problems=2, minibatches=1, lr=1e-3, max_new_tokens=6))
    rollouts = t.rollout(t.problems)
    assert len(rollouts) == 8 and all(0 < len(r.response) <= 6 for r in rollouts)
    # the recorded log-probs are the sampling policy's: re-scoring with the same weights agrees
    again = sequence_logprobs(t.model, t._batch(rollouts)).tolist()
    assert again == pytest.approx([r.logp_old for r in rollouts], abs=1e-4)
    for i, r in enumerate(rollouts):  # pretend the first sample of each problem was right
        r.correct = 1.0 if i % 4 == 0 else 0.0
    t.assign_rewards(rollouts, length_on=False)
    assert [r.baseline for r in rollouts] == [0.25] * 8
    stats = t.update(rollouts)
    assert stats["trained"] == 8
    after = sequence_logprobs(t.model, t._batch(rollouts)).detach()
    delta = after - torch.tensor([r.logp_old for r in rollouts])
    good = [float(d) for i, d in enumerate(delta) if i % 4 == 0]
    bad = [float(d) for i, d in enumerate(delta) if i % 4]
    assert min(good) > 0 and mean(good) > mean(bad)
    assert t.kl_estimate(rollouts) != 0.0


def test_groups_without_an_advantage_are_skipped(tmp_path):
    data = digit_task(tmp_path / "p.jsonl", "seven", n=4)
    t = RLTrainer(rl_cfg(tmp_path, data, "skip", k=2, problems=2, max_new_tokens=3))
    rollouts = t.rollout(t.problems[:2])
    for r in rollouts:
        r.correct = 0.0
    t.assign_rewards(rollouts, length_on=False)
    before = [p.detach().clone() for p in t.model.parameters()]
    assert t.update(rollouts)["trained"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.parameters()))


def test_bad_configs_are_refused(tmp_path):
    data = digit_task(tmp_path / "p.jsonl", "seven", n=4)
    with pytest.raises(KvlError, match="--k must be at least 2"):
        RLTrainer(rl_cfg(tmp_path, data, "x", k=1))
    with pytest.raises(KvlError, match="--temperature must be > 0"):
        RLTrainer(rl_cfg(tmp_path, data, "x", temperature=0))
    (tmp_path / "r.json").write_text('{"default_checker": "numeric",}')
    with pytest.raises(KvlError, match=r"r\.json:1: not valid JSON"):
        RLTrainer(rl_cfg(tmp_path, data, "x", reward_config=str(tmp_path / "r.json")))


def test_resume_continues_the_iteration_count_and_success_table(tmp_path):
    data = digit_task(tmp_path / "p.jsonl", "seven", n=8)
    cfg = rl_cfg(tmp_path, data, "res", iterations=2, k=2, problems=2, max_new_tokens=3)
    train_rl(cfg)
    with pytest.raises(KvlError, match="pass --resume"):
        RLTrainer(cfg)
    cfg.iterations, cfg.resume = 3, True
    t = RLTrainer(cfg)
    assert t.iteration == 2 and t.success
    t.run()
    rows = (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [1, 2, 3]
    assert json.loads((Path(cfg.out) / "final" / "trainer_state.json").read_text())["step"] == 3


# ---- the CLI ------------------------------------------------------------------------------------------

def kvl(*args: str, timeout: int = 300):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    env.update(OMP_NUM_THREADS="1", NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(Path(sys.executable).parent / "kvl"), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_kvl_train_stage_rl_cli(tmp_path):
    data = digit_task(tmp_path / "p.jsonl", "seven", n=8)
    out = tmp_path / "run"
    proc = kvl("train", "--stage", "rl", "--data", str(data), "--preset", "tiny", "--out", str(out),
               "--iterations", "2", "--k", "2", "--problems", "2", "--max-new-tokens", "4", "--lr", "1e-3",
               "--tau", "0.05", "--no-curriculum", "--no-prioritized", "--no-length-penalty", "--device", "cpu",
               "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["iterations"] == 2 and summary["final"] == str(out / "final")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {"reward", "accuracy", "length", "kl"} <= set(rows[0])
    assert (out / "rl.png").stat().st_size > 1000 and (out / "final" / "model.safetensors").exists()

    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    proc = kvl("train", "--stage", "rl", "--data", str(bad), "--preset", "tiny", "--out", str(tmp_path / "b"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "bad.jsonl:1: no 'answer' field" in lines[0], proc.stderr


# ---- evidence: RL alone raises accuracy; the length reward shortens responses ------------------------

def test_rl_alone_raises_accuracy_fast(tmp_path):
    """Default-run evidence (~20 s on one CPU thread): from a random init, reward for answering 7."""
    data = digit_task(tmp_path / "p.jsonl", "seven")
    rows = run(rl_cfg(tmp_path, data, "seven", iterations=18, length_penalty=False))
    acc = [r["accuracy"] for r in rows]
    print("accuracy", [round(a, 3) for a in acc])
    assert mean(acc[:3]) < 0.05
    assert mean(acc[-3:]) > mean(acc[:3]) + 0.2, acc


def test_length_penalty_shortens_responses_fast(tmp_path):
    data = digit_task(tmp_path / "p.jsonl", "seven")
    on = run(rl_cfg(tmp_path, data, "on", iterations=14))
    off = run(rl_cfg(tmp_path, data, "off", iterations=14, length_penalty=False))
    print("length on ", [round(r["length"], 2) for r in on])
    print("length off", [round(r["length"], 2) for r in off])
    assert on[0]["length"] == off[0]["length"]  # same seed: the first rollouts are identical
    assert mean(r["length"] for r in on[-3:]) < mean(r["length"] for r in off[-3:]) - 1.0


@pytest.mark.slow
def test_rl_evidence_parity_and_length(tmp_path):
    """The longer evidence run: parity of a shown digit (answer 0 or 1), and the length reward over a
    longer run with a warm-up, both from a random init on the tiny preset."""
    data = digit_task(tmp_path / "parity.jsonl", "parity")
    rows = run(rl_cfg(tmp_path, data, "parity", iterations=50, problems=16, max_new_tokens=4,
                      length_penalty=False, plot=True))
    acc = [r["accuracy"] for r in rows]
    print("parity accuracy", [round(a, 3) for a in acc])
    assert mean(acc[:3]) < 0.1 and mean(acc[-25:]) > 0.3, acc
    assert (tmp_path / "parity" / "rl.png").exists()

    seven = digit_task(tmp_path / "seven.jsonl", "seven")
    on = run(rl_cfg(tmp_path, seven, "on", iterations=30, length_warmup=5))
    off = run(rl_cfg(tmp_path, seven, "off", iterations=30, length_penalty=False))
    print("length on ", [round(r["length"], 2) for r in on])
    print("length off", [round(r["length"], 2) for r in off])
    print("accuracy on ", [round(r["accuracy"], 2) for r in on])
    print("accuracy off", [round(r["accuracy"], 2) for r in off])
    assert [r["length"] for r in on[:5]] == [r["length"] for r in off[:5]]  # the warm-up is penalty-free
    assert not any(r["length_penalty"] for r in on[:5]) and all(r["length_penalty"] for r in on[5:])
    assert mean(r["length"] for r in on[-5:]) < mean(r["length"] for r in off[-5:]) - 1.5
    assert mean(r["accuracy"] for r in on[-5:]) > 0.5  # shorter, and still right
