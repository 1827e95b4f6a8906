"""RL stage of Kimi-VL-Thinking: online policy mirror descent with a length penalty and curriculum /
prioritised sampling (paper §2.4 "Reinforcement Learning", eq. 1; Kimi k1.5 §2.3.2–2.3.4;
design: shared/design/training.md §3).

Iteration i, with π_i the current weights (the reference):
  1. draw a batch of problems: curriculum (easy → hard by `difficulty`) and/or prioritised sampling
     with P(x) ∝ 1 − s_x + ε, s_x an EMA of the problem's success rate;
  2. sample k responses per problem from π_i with `kvl_core.generation.generate` (one left-padded
     batch, temperature / top-p / thinking budget), and record log π_i(y|x) of each response
     (a teacher-forced no-grad pass before any update, i.e. the sampling policy's own log-probs);
  3. reward: a verifiable 0/1 checker on the answer (`rewards.py`), plus, after a warm-up, k1.5's
     length reward times `length_weight`; the baseline r̄ is the mean reward of the k samples;
  4. reset the optimizer (k1.5: a fresh optimizer every iteration), then for `minibatches` Muon steps
     minimise, per response j,
         ℓ_j = −(r_j − r̄)·log π_θ(y_j|x) + (τ/2)·(log π_θ(y_j|x) − log π_i(y_j|x))²
     whose gradient is minus k1.5 eq. 3. log π is the *sequence* log-prob of the response (reasoning
     and answer; prompt and image tokens masked: "online RL on answer only"). Groups whose k rewards
     are all equal have no advantage and are skipped;
  5. log reward mean, accuracy, mean response length, KL(π_i ‖ π_{i+1}) (sequence level, measured on
     the iteration's rollouts after the update) to metrics.jsonl; plot it at the end.

Problem file (JSONL, one problem per line; the trainer's chat format, user turns only):
    {"messages": [{"role": "user", "content": [{"type": "image", "image": "fig.png"},
                                               {"type": "text", "text": "What is x? Answer in \\boxed{}."}]}],
     "answer": "42", "checker": "boxed", "difficulty": 2}
`answer` is required (a string, a number, or a list of accepted strings); `checker` defaults to the
reward config's `default_checker`; `difficulty` (an integer ≥ 1, larger = harder) drives the curriculum.

Single process only (no torchrun): rollouts dominate and the tiny/CPU use needs none.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kvl_core.errors import KvlError, read_user_file
from kvl_core.training.rewards import CHECKERS, RewardConfig, length_rewards, load_reward_config


@dataclass
class RLConfig:
    out: str = "runs/rl"
    data: list[str] = field(default_factory=list)  # problem JSONL files
    model: str | None = None  # start from this checkpoint (the long-CoT SFT output) ...
    preset: str | None = None  # ... or a fresh model of this preset (tests, toy tasks)
    iterations: int = 100
    problems: int = 8  # problems per iteration
    k: int = 8  # samples per problem
    tau: float = 0.1  # weight of the squared log-ratio regulariser (k1.5 does not publish theirs)
    lr: float = 1e-6
    weight_decay: float = 0.0
    temperature: float = 1.0  # the policy is softmax(logits / temperature), for sampling and for the loss
    top_p: float = 1.0
    max_new_tokens: int = 512
    thinking_budget: int | None = None
    length_penalty: bool = True
    length_warmup: int = 0  # iterations trained before the length reward is switched on
    length_weight: float | None = None  # None: the reward config's (default 1.0)
    curriculum: bool = True
    curriculum_frac: float = 0.5  # share of the run over which harder levels are unlocked
    prioritized: bool = True
    success_momentum: float = 0.9  # s_x ← m·s_x + (1 − m)·accuracy
    minibatches: int = 2  # optimizer steps per iteration (off-policy after the first)
    rollout_rows: int = 64  # rows per generate call (memory knob)
    train_rows: int = 32  # rows per forward/backward (memory knob; the maths does not change)
    grad_clip: float = 1.0
    reward_config: str | None = None
    optimizer: str = "muon"  # muon | adamw
    ns_dtype: str = "auto"
    seed: int = 0
    resume: bool = False
    save_every: int = 0  # iterations; 0: only at the end
    keep: int = 2
    device: str = "auto"
    plot: bool = True


# ---- problems ---------------------------------------------------------------------------------------

@dataclass
class Problem:
    index: int
    where: str  # file:line
    messages: list[dict]
    answer: Any
    checker: str | None = None
    difficulty: int | None = None


def _answer_ok(a: Any) -> bool:
    if isinstance(a, bool):
        return False
    if isinstance(a, (int, float)):
        return math.isfinite(a)
    if isinstance(a, str):
        return bool(a.strip())
    if isinstance(a, list):
        return bool(a) and all(_answer_ok(x) and not isinstance(x, list) for x in a)
    return False


def read_problems(paths: list[str]) -> list[Problem]:
    """Validate every line of the problem files; a bad line is `KvlError("file:line: ...")`."""
    from kvl_core.training.data import _BadLine, _parse_messages

    if not paths:
        raise KvlError("no problems: pass --data problems.jsonl (lines with 'messages' and a verifiable 'answer')")
    problems: list[Problem] = []
    for path in paths:
        raw = read_user_file(path, str(path), "a JSONL file")
        base = Path(path).parent
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise KvlError(f"{where}: not valid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(obj, dict) or "messages" not in obj:
                raise KvlError(f"{where}: expected an object with 'messages' (the prompt) and 'answer'")
            if "answer" not in obj:
                raise KvlError(f"{where}: no 'answer' field: RL needs a verifiable answer for every problem")
            if not _answer_ok(obj["answer"]):
                raise KvlError(f"{where}: 'answer' must be a non-empty string, a number or a list of strings")
            msgs = obj["messages"]
            if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
                raise KvlError(f"{where}: the last message is the assistant's; an RL prompt ends with the user "
                               "turn (the model writes the reply)")
            try:
                # the trainer's validator wants an assistant turn to learn from: lend it an empty one
                parsed = _parse_messages(msgs + [{"role": "assistant", "content": ""}] if isinstance(msgs, list)
                                         else msgs, base)[:-1]
            except _BadLine as e:
                raise KvlError(f"{where}: {e}") from None
            checker = obj.get("checker")
            if checker is not None and checker not in CHECKERS:
                raise KvlError(f"{where}: unknown checker {checker!r}; choose from {', '.join(sorted(CHECKERS))}")
            diff = obj.get("difficulty")
            if diff is not None and (isinstance(diff, bool) or not isinstance(diff, int) or diff < 1):
                raise KvlError(f"{where}: 'difficulty' must be an integer >= 1 (larger = harder)")
            problems.append(Problem(len(problems), where, parsed, obj["answer"], checker, diff))
        if not problems:
            raise KvlError(f"{path}: no problems in the file")
    return problems


# ---- sampling ------------------------------------------------------------------------------------------

def curriculum_pool(problems: list[Problem], iteration: int, iterations: int, frac: float) -> list[Problem]:
    """Easy → hard: the difficulty levels present unlock one after another, evenly over the first
    `frac` of the run (afterwards all). Problems without a label count as the easiest level."""
    levels = sorted({p.difficulty or 1 for p in problems})
    if len(levels) <= 1 or frac <= 0:
        return problems
    span = max(1.0, frac * iterations)
    unlocked = min(len(levels), 1 + int(iteration * len(levels) / span))
    top = levels[unlocked - 1]
    return [p for p in problems if (p.difficulty or 1) <= top]


def sample_batch(pool: list[Problem], n: int, success: dict[int, float], prioritized: bool,
                 generator: torch.Generator, eps: float = 0.05) -> list[Problem]:
    """n problems without replacement (with it when the pool is smaller): uniform, or P ∝ 1 − s + ε."""
    if prioritized:
        w = torch.tensor([1.0 - success.get(p.index, 0.5) + eps for p in pool], dtype=torch.float64)
    else:
        w = torch.ones(len(pool), dtype=torch.float64)
    idx = torch.multinomial(w, n, replacement=n > len(pool), generator=generator).tolist()
    return [pool[i] for i in idx]


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") & (2**63 - 1)


# ---- the objective ---------------------------------------------------------------------------------------

def opmd_loss(logp: torch.Tensor, logp_old: torch.Tensor, rewards: torch.Tensor, baseline: torch.Tensor,
              tau: float) -> torch.Tensor:
    """Per-sample k1.5 surrogate −(r − r̄)·log π + (τ/2)·(log π − log π_old)²; its gradient is minus
    k1.5 eq. 3. All arguments are [N] (sequence log-probs); returns [N]."""
    logratio = logp - logp_old
    return -(rewards - baseline) * logp + 0.5 * tau * logratio.pow(2)


def sequence_logprobs(model, batch: dict[str, torch.Tensor | None], temperature: float = 1.0) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over the response tokens of each row ([B]); prompt and pads masked."""
    dev = next(model.parameters()).device
    ids = batch["input_ids"].to(dev)
    resp = batch["response_mask"].to(dev)
    lm = getattr(model, "language_model", model)
    embeds = lm.model.embed_tokens(ids)
    if batch.get("pixel_values") is not None:
        # Images fill the prompt's placeholders only. A sampled response may contain the placeholder
        # id itself; generation fed it to the LM as a plain token embedding, and so must scoring.
        feats = model.get_image_features(batch["pixel_values"].to(dev), batch["image_grid_hws"].to(dev))
        slots = (ids == model.config.media_placeholder_token_id) & ~resp
        if int(slots.sum()) != feats.shape[0]:
            raise KvlError(f"{int(slots.sum())} image placeholders in the prompts but {feats.shape[0]} image tokens")
        embeds = embeds.to(feats.dtype).clone()
        embeds[slots] = feats
    logits = lm(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(dev)).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    tok_logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return (tok_logp * resp[:, 1:]).sum(-1)


# ---- rollouts ---------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    problem: Problem
    prompt: list[int]
    response: list[int]
    pixel_values: torch.Tensor | None
    image_grid_hws: torch.Tensor | None
    text: str = ""
    correct: float = 0.0
    reward: float = 0.0
    baseline: float = 0.0
    logp_old: float = 0.0


def pad_rows(rows: list[tuple[list[int], list[int]]], pad_id: int, images: list[tuple[Any, Any]]) -> dict:
    """[pad..pad | prompt | response | pad..pad]: prompts left-aligned to one column so that a batch of
    prompts alone is a valid left-padded generation batch; `response_mask` marks the response tokens."""
    P = max(len(p) for p, _ in rows)
    R = max(len(r) for _, r in rows)
    B = len(rows)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + R), dtype=torch.long)
    resp = torch.zeros((B, P + R), dtype=torch.bool)
    for b, (p, r) in enumerate(rows):
        ids[b, P - len(p):P] = torch.tensor(p)
        att[b, P - len(p):P + len(r)] = 1
        if r:
            ids[b, P:P + len(r)] = torch.tensor(r)
            resp[b, P:P + len(r)] = True
    pv = [x for x, _ in images if x is not None]
    gh = [g for _, g in images if g is not None]
    return {"input_ids": ids, "attention_mask": att, "response_mask": resp,
            "pixel_values": torch.cat(pv) if pv else None, "image_grid_hws": torch.cat(gh) if gh else None}


# ---- the loop ----------------------------------------------------------------------------------------------

class RLTrainer:
    def __init__(self, cfg: RLConfig, on_event: Callable[[str, dict], None] | None = None):
        from kvl_core.processor.chat import Processor
        from kvl_core.training.trainer import _device, checkpoints, load_model, set_trainable

        self.cfg = cfg
        self.emit = on_event or (lambda kind, info: None)
        self._check_config()
        self.out = Path(cfg.out)
        self.device = _device(cfg.device)
        self.rewards: RewardConfig = load_reward_config(cfg.reward_config)
        if cfg.length_weight is not None:
            self.rewards.length_weight = cfg.length_weight
        self.problems = read_problems(cfg.data)
        existing = checkpoints(self.out) if self.out.exists() else []
        if existing and not cfg.resume:
            raise KvlError(f"{self.out}: holds checkpoints of an earlier run; pass --resume to continue it "
                           "or choose another --out")
        resume_from = existing[-1] if (cfg.resume and existing) else None
        source = resume_from or (Path(cfg.model) if cfg.model else None)
        self.model, self.side_dir = load_model(source, cfg.preset, self.out, cfg.seed, self.device)
        set_trainable(self.model, ["*"])
        self.processor = Processor.from_pretrained(self.side_dir)
        tok = self.processor.tokenizer
        self.pad_id = tok.pad_id if tok.pad_id is not None else tok.im_end_id
        self.stop_ids = sorted(tok.stop_ids)
        self.iteration = 0
        self.success: dict[int, float] = {}
        self._encoded: dict[int, Any] = {}
        if resume_from is not None:
            state = json.loads((resume_from / "trainer_state.json").read_text())
            if state.get("stage") != "rl":
                raise KvlError(f"{resume_from}: is a checkpoint of stage {state.get('stage')!r}, not 'rl'")
            self.iteration = int(state["step"])
            self.success = {int(k): float(v) for k, v in state.get("success", {}).items()}
            self.emit("note", {"text": f"resumed from {resume_from} at iteration {self.iteration}"})

    def _check_config(self) -> None:
        c = self.cfg
        for name in ("iterations", "problems", "k", "minibatches", "rollout_rows", "train_rows", "max_new_tokens"):
            if getattr(c, name) <= 0:
                raise KvlError(f"--{name.replace('_', '-')} must be positive")
        if c.k < 2:
            raise KvlError("--k must be at least 2: the baseline is the mean reward of the k samples")
        if c.tau < 0 or c.lr < 0 or c.length_warmup < 0:
            raise KvlError("--tau, --lr and --length-warmup must be >= 0")
        if c.temperature <= 0:
            raise KvlError("--temperature must be > 0: RL samples from the policy")
        if c.optimizer not in ("muon", "adamw"):
            raise KvlError(f"unknown optimizer {c.optimizer!r}; use muon or adamw")

    # ---- pieces -------------------------------------------------------------------------------

    def _encode(self, p: Problem):
        if p.index not in self._encoded:
            try:
                self._encoded[p.index] = self.processor.encode(p.messages, add_generation_prompt=True)
            except KvlError as e:
                raise KvlError(f"{p.where}: {e}") from None
        return self._encoded[p.index]

    def _optimizer(self):
        from kvl_core.training.muon import Muon, param_groups_for

        groups = param_groups_for(self.model, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                  ns_dtype=self.cfg.ns_dtype, adamw_only=self.cfg.optimizer == "adamw")
        return Muon([g for g in groups if g["params"]], track_rms=False)

    @torch.no_grad()
    def rollout(self, batch: list[Problem]) -> list[Rollout]:
        from kvl_core.generation import SamplingParams, generate
        from kvl_core.processor.chat import split_thinking

        c = self.cfg
        tok = self.processor.tokenizer
        self.model.eval()
        rows = [(p, self._encode(p)) for p in batch for _ in range(c.k)]
        limit = self.model.config.text.max_position_embeddings
        out: list[Rollout] = []
        for start in range(0, len(rows), c.rollout_rows):
            chunk = rows[start:start + c.rollout_rows]
            longest = max(len(e.input_ids) for _, e in chunk)
            if longest >= limit:
                raise KvlError(f"{chunk[0][0].where}: the prompt is {longest} tokens; the model takes at most {limit}")
            enc = pad_rows([(e.input_ids, []) for _, e in chunk], self.pad_id,
                           [(e.pixel_values, e.image_grid_hws) for _, e in chunk])
            T = enc["input_ids"].shape[1]
            params = SamplingParams(max_new_tokens=min(c.max_new_tokens, limit - T), do_sample=True,
                                    temperature=c.temperature, top_p=c.top_p, thinking_budget=c.thinking_budget,
                                    seed=_seed(c.seed, "rollout", self.iteration, start),
                                    stop_token_ids=tuple(self.stop_ids))
            gen = generate(self.model, enc["input_ids"], attention_mask=enc["attention_mask"],
                           pixel_values=enc["pixel_values"], image_grid_hws=enc["image_grid_hws"], params=params,
                           pad_token_id=self.pad_id, codec=tok)
            for (p, e), ids in zip(chunk, gen.new_tokens):
                text = self.processor.decode(ids, skip_special_tokens=True)
                _, answer, truncated = split_thinking(text)
                correct = 0.0 if truncated else self.rewards.check(p.checker, answer, p.answer)
                out.append(Rollout(p, e.input_ids, list(ids), e.pixel_values, e.image_grid_hws, text, correct))
        # the sampling policy's own log-probs, before any update: π_i of this iteration
        for start in range(0, len(out), c.train_rows):
            part = out[start:start + c.train_rows]
            lp = sequence_logprobs(self.model, self._batch(part), c.temperature)
            for r, v in zip(part, lp.tolist()):
                r.logp_old = v
        return out

    def _batch(self, rollouts: list[Rollout]) -> dict:
        return pad_rows([(r.prompt, r.response) for r in rollouts], self.pad_id,
                        [(r.pixel_values, r.image_grid_hws) for r in rollouts])

    def assign_rewards(self, rollouts: list[Rollout], length_on: bool) -> None:
        """Success EMA from the 0/1 rewards, then the length reward, then the per-problem baseline."""
        c = self.cfg
        groups: dict[int, list[Rollout]] = {}
        for r in rollouts:
            # a problem drawn twice in one batch (small pools) forms one group of 2k samples
            groups.setdefault(r.problem.index, []).append(r)
        for idx, g in groups.items():
            acc = sum(r.correct for r in g) / len(g)
            m = c.success_momentum
            self.success[idx] = m * self.success.get(idx, 0.5) + (1 - m) * acc
            lens = [len(r.response) for r in g]
            bonus = length_rewards(lens, [r.correct for r in g]) if length_on else [0.0] * len(g)
            for r, b in zip(g, bonus):
                r.reward = r.correct + self.rewards.length_weight * b
            mean = sum(r.reward for r in g) / len(g)
            for r in g:
                r.baseline = mean

    def update(self, rollouts: list[Rollout]) -> dict[str, float]:
        """A fresh optimizer, then `minibatches` steps on the rollouts that carry an advantage."""
        c = self.cfg
        train = [r for r in rollouts if abs(r.reward - r.baseline) > 1e-12]
        if not train:
            return {"trained": 0, "loss": 0.0, "grad_norm": 0.0}
        g = torch.Generator().manual_seed(_seed(c.seed, "shuffle", self.iteration))
        train = [train[i] for i in torch.randperm(len(train), generator=g).tolist()]
        n_mb = min(c.minibatches, len(train))
        bounds = [round(i * len(train) / n_mb) for i in range(n_mb + 1)]
        opt = self._optimizer()  # k1.5: the optimizer state is reset every iteration
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.train()
        loss_sum, norms = 0.0, []
        for a, b in zip(bounds, bounds[1:]):
            mb = train[a:b]
            for s in range(0, len(mb), c.train_rows):
                part = mb[s:s + c.train_rows]
                logp = sequence_logprobs(self.model, self._batch(part), c.temperature)
                dev = logp.device
                loss = opmd_loss(logp, torch.tensor([r.logp_old for r in part], device=dev),
                                 torch.tensor([r.reward for r in part], device=dev),
                                 torch.tensor([r.baseline for r in part], device=dev), c.tau)
                (loss.sum() / len(mb)).backward()
                loss_sum += float(loss.detach().sum())
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, c.grad_clip)) if c.grad_clip else 0.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        return {"trained": len(train), "loss": loss_sum / len(train), "grad_norm": max(norms)}

    @torch.no_grad()
    def kl_estimate(self, rollouts: list[Rollout]) -> float:
        """KL(π_i ‖ π_{i+1}) ≈ mean over the iteration's responses of log π_i − log π_{i+1} (sequence level)."""
        self.model.eval()
        total = 0.0
        for s in range(0, len(rollouts), self.cfg.train_rows):
            part = rollouts[s:s + self.cfg.train_rows]
            lp = sequence_logprobs(self.model, self._batch(part), self.cfg.temperature)
            total += sum(r.logp_old - v for r, v in zip(part, lp.tolist()))
        return total / max(1, len(rollouts))

    def step(self) -> dict[str, Any]:
        c = self.cfg
        t0 = time.perf_counter()
        pool = curriculum_pool(self.problems, self.iteration, c.iterations, c.curriculum_frac) if c.curriculum \
            else self.problems
        g = torch.Generator().manual_seed(_seed(c.seed, "problems", self.iteration))
        batch = sample_batch(pool, c.problems, self.success, c.prioritized, g)
        rollouts = self.rollout(batch)
        t1 = time.perf_counter()
        length_on = c.length_penalty and self.iteration >= c.length_warmup
        self.assign_rewards(rollouts, length_on)
        upd = self.update(rollouts)
        kl = self.kl_estimate([r for r in rollouts if abs(r.reward - r.baseline) > 1e-12]) if upd["trained"] else 0.0
        self.iteration += 1
        n = len(rollouts)
        diffs = [p.difficulty or 1 for p in pool]
        return {
            "step": self.iteration,
            "reward": sum(r.reward for r in rollouts) / n,
            "accuracy": sum(r.correct for r in rollouts) / n,
            "length": sum(len(r.response) for r in rollouts) / n,
            "length_correct": (sum(len(r.response) for r in rollouts if r.correct)
                               / max(1, sum(1 for r in rollouts if r.correct))) if any(r.correct for r in rollouts) else None,
            "kl": kl,
            "loss": upd["loss"],
            "grad_norm": upd["grad_norm"],
            "trained": upd["trained"],
            "length_penalty": length_on,
            "max_difficulty": max(diffs),
            "lr": c.lr,
            "rollout_s": t1 - t0,
            "step_s": time.perf_counter() - t0,
        }

    # ---- checkpoints and the run ---------------------------------------------------------------

    def save(self) -> Path:
        from kvl_core.training.trainer import write_checkpoint

        state = {"step": self.iteration, "stage": "rl", "config": asdict(self.cfg),
                 "success": {str(k): v for k, v in sorted(self.success.items())}}
        path = write_checkpoint(self.out, self.iteration, self.model, self.side_dir, state, keep=self.cfg.keep)
        self.emit("save", {"path": str(path)})
        return path

    def run(self) -> dict[str, Any]:
        from kvl_core.training.trainer import _truncate_metrics, plot_metrics, publish_final

        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = self.out / "metrics.jsonl"
        _truncate_metrics(metrics, self.iteration)
        self.emit("start", {"steps": c.iterations, "step": self.iteration, "stage": "rl", "frozen": [], "world": 1})
        rows: list[dict] = []
        while self.iteration < c.iterations:
            row = self.step()
            rows.append(row)
            with metrics.open("a") as f:
                f.write(json.dumps(row) + "\n")
            self.emit("step", row)
            if c.save_every and self.iteration % c.save_every == 0 and self.iteration < c.iterations:
                self.save()
        final = publish_final(self.out, self.save())
        if c.plot:
            plot_metrics(metrics, self.out / "rl.png", title="kvl train --stage rl",
                         panels=[("reward / accuracy", ["reward", "accuracy"]), ("response tokens", ["length"]),
                                 ("KL(π_i ‖ π_i+1)", ["kl"])])
        summary = {"final": str(final), "iterations": self.iteration, "problems": len(self.problems),
                   **({k: rows[-1][k] for k in ("reward", "accuracy", "length", "kl")} if rows else {})}
        self.emit("end", summary)
        return summary


def train_rl(cfg: RLConfig, on_event: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    return RLTrainer(cfg, on_event).run()


__all__ = ["RLConfig", "RLTrainer", "Problem", "Rollout", "read_problems", "curriculum_pool", "sample_batch",
           "opmd_loss", "sequence_logprobs", "pad_rows", "train_rl"]
