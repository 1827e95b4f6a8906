"""The agent loop: screenshot, think, act, until DONE (paper §4.1.5, Figure 10; tasks.md §1.3, §2.3).

Each step shows the model the last few screenshots (the current one last) and the task with the earlier
steps as text (kvl_core/prompts.py, the format the built-in model is trained on), parses the answer into
whitelisted actions (actions.py), maps 0-1 coordinates to the monitor's pixels and acts. A rejected answer
is not fatal: the reason becomes the next step's history, so the model can correct itself. The loop ends on
DONE, FAIL, the step limit, Ctrl-C or the fail-safe, the same action repeated on a screen it does not change
(stuck), or answers that cannot be used several times in a row; the exit code says which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_user_text

from .actions import KINDS, Action, ParseError, parse_answer
from .screen import FailSafe, Shot
from .trajectory import StepRecord, Trajectory

# status -> process exit code (1 and 2 are kvl's error / usage codes)
EXIT_CODES = {"done": 0, "fail": 3, "max-steps": 4, "stuck": 5, "unusable": 6, "stopped": 130, "interrupted": 130,
              "fail-safe": 130}
MESSAGES = {
    "done": "the model says the task is done",
    "fail": "the model gave up (FAIL)",
    "max-steps": "step limit reached before the model said DONE",
    "stuck": "stuck: the same action repeated without changing the screen",
    "unusable": "the model's answers could not be used",
    "stopped": "stopped at the confirmation prompt",
    "interrupted": "interrupted (Ctrl-C)",
    "fail-safe": "pyautogui fail-safe: the mouse was moved into a screen corner",
}


@dataclass
class AgentConfig:
    instruction: str
    max_steps: int = 15
    history: int = 3  # screenshots shown to the model per step, the current one included
    dry_run: bool = False
    confirm: bool = False
    allow: frozenset[str] = frozenset(KINDS)
    stuck_after: int = 3  # identical actions in a row, none of which changed the screen
    max_invalid: int = 3  # unusable answers in a row
    settle: float = 0.5  # seconds for the screen to react before the next capture
    sampling: dict = field(default_factory=dict)  # max_new_tokens, temperature, seed


@dataclass
class AgentResult:
    status: str
    steps: int
    message: str

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


class UI(Protocol):
    def step(self, rec: StepRecord, config: AgentConfig) -> None: ...
    def thinking(self, step: int, config: AgentConfig) -> None: ...
    def confirm(self, action: Action, pixels) -> str: ...  # "y" | "n" | "q"
    def typing(self, text: str) -> None: ...


class QuietUI:
    def step(self, rec, config): pass
    def thinking(self, step, config): pass
    def confirm(self, action, pixels): return "y"
    def typing(self, text): pass


def build_messages(instruction: str, history: list[str], images: list) -> list[dict]:
    content = [{"type": "image", "image": img} for img in images]
    content.append({"type": "text", "text": gui_user_text(instruction, history)})
    return [{"role": "system", "content": GUI_SYSTEM_PROMPT}, {"role": "user", "content": content}]


def fit_messages(engine, instruction: str, history: list[str], images: list, reserve: int) -> list[dict]:
    """The step's messages, shrunk to leave `reserve` answer tokens in the model's context: older screenshots
    go first, then the oldest history lines. A context that cannot hold the system prompt, the task and one
    screenshot is a KvlError naming the numbers, not a silent truncation."""
    messages = build_messages(instruction, history, images)
    processor = getattr(engine, "processor", None)
    from kvl_core.backend import context_length

    limit = context_length(engine)
    if limit is None:
        return messages  # an engine that does not say: it enforces its own limit
    if processor is None:
        return messages
    from kvl_core.errors import KvlError
    from kvl_tasks.documents import prompt_tokens

    images, history = list(images), list(history)
    dropped = 0
    while (n := prompt_tokens(processor, messages)) + reserve > limit:
        if len(images) > 1:
            images.pop(0)
        elif history:
            history.pop(0)
            dropped += 1
        else:
            raise KvlError(f"{getattr(engine, 'name', 'the model')}: its context of {limit} tokens cannot hold the "
                           f"agent prompt ({n} tokens with one screenshot) plus {reserve} tokens of answer")
        shown = ([f"({dropped} earlier steps left out)"] if dropped else []) + history
        messages = build_messages(instruction, shown, images)
    return messages


def screen_changed(a, b, level: int = 16, min_pixels: int = 64) -> bool:
    """Whether two captures differ by more than a blinking caret: at least `min_pixels` pixels move by more
    than `level` in some channel."""
    from PIL import ImageChops

    if a.size != b.size:
        return True
    diff = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v > level else 0)
    return diff.histogram()[255] >= min_pixels


def _signature(actions: list[Action], pixels: list) -> tuple:
    return tuple((a.kind, tuple(p) if p else None, a.text, a.keys, a.amount, a.button)
                 for a, p in zip(actions, pixels))


def run_agent(engine, screen, executor, traj: Trajectory, config: AgentConfig, ui: UI | None = None,
              sleep: Callable[[float], None] = time.sleep) -> AgentResult:
    """Run the loop to its end. `executor` may be None with `dry_run` (nothing is executed)."""
    ui = ui or QuietUI()
    history: list[str] = []
    recent: list = []  # last screenshots (PIL images) for the prompt
    prev_shot: Shot | None = None
    prev_sig: tuple | None = None
    repeats = invalid = 0
    step = 0
    status = "max-steps"
    rec: StepRecord | None = None
    shot: Shot | None = None
    try:
        while step < config.max_steps:
            step += 1
            rec, shot = StepRecord(step=step, status="rejected"), None
            shot = screen.capture()
            rec.timings["capture"] = shot.seconds
            changed = screen_changed(prev_shot.image, shot.image) if prev_shot is not None else None
            rec.screen_changed = changed
            recent = (recent + [shot.image])[-max(config.history, 1):]
            ui.thinking(step, config)
            t = time.perf_counter()
            reserve = min(int(config.sampling.get("max_new_tokens") or 256), 256)
            messages = fit_messages(engine, config.instruction, history, recent, reserve)
            result = engine.chat(messages, **config.sampling)
            rec.timings["generate"] = time.perf_counter() - t
            rec.raw, rec.reasoning = result.text, result.reasoning
            rec.tokens = {"prompt": result.prompt_tokens, "completion": result.completion_tokens}
            try:
                if result.truncated:
                    raise ParseError("the answer was cut off while still thinking; answer sooner")
                parsed = parse_answer(result.answer, shot.image.size)
            except ParseError as e:
                rec.error = str(e)
                rec.thought = ""
                history.append(f"(invalid answer: {e})")
                invalid += 1
                prev_shot, prev_sig, repeats = shot, None, 0
                _record(traj, rec, shot, ui, config)
                rec = None
                if invalid >= config.max_invalid:
                    status = "unusable"
                    break
                continue
            invalid = 0
            rec.thought, rec.code, rec.actions = parsed.thought, parsed.code, parsed.actions
            rec.pixels = [list(screen.to_pixels(a.x, a.y)) if a.has_point else None for a in parsed.actions]
            kind = parsed.actions[0].kind
            summary = "; ".join(a.code() for a in parsed.actions)
            step_text = f"{parsed.thought} [{summary}]" if parsed.thought else summary

            if kind in ("done", "fail"):
                rec.status = kind
                history.append(step_text)
                status = kind
                _record(traj, rec, shot, ui, config)
                rec = None
                break
            if kind == "wait":
                rec.status = "wait"
                history.append(step_text)
                if not config.dry_run:
                    sleep(parsed.actions[0].seconds)
                prev_shot, prev_sig, repeats = shot, None, 0
                _record(traj, rec, shot, ui, config)
                rec = None
                continue
            banned = sorted({a.kind for a in parsed.actions} - set(config.allow))
            if banned:
                rec.status = "not-allowed"
                rec.error = (f"{', '.join(banned)} is not allowed in this run (allowed: "
                             f"{', '.join(sorted(config.allow)) or 'nothing'}); choose another action")
                history.append(f"{step_text} -> refused: {rec.error}")
                prev_shot, prev_sig, repeats = shot, None, 0
                _record(traj, rec, shot, ui, config)
                rec = None
                continue

            sig = _signature(parsed.actions, rec.pixels)
            repeats = repeats + 1 if (sig == prev_sig and changed is False) else 1
            prev_sig, prev_shot = sig, shot
            if repeats >= config.stuck_after:
                rec.status = "stuck"
                rec.error = f"the same action {repeats} times in a row and the screen did not change"
                status = "stuck"
                _record(traj, rec, shot, ui, config)
                rec = None
                break

            t = time.perf_counter()
            rec.status = "dry-run" if config.dry_run else "executed"
            declined = False
            for action, pixels in zip(parsed.actions, rec.pixels):
                if config.confirm:
                    answer = ui.confirm(action, pixels)
                    if answer == "q":
                        rec.status = status = "stopped"
                        _record(traj, rec, shot, ui, config)
                        rec = None
                        return _end(traj, status, step)
                    if answer != "y":
                        declined = True
                        break
                if action.kind == "type":
                    ui.typing(action.text or "")
                if not config.dry_run:
                    executor.execute(action, tuple(pixels) if pixels else None)
            rec.timings["execute"] = time.perf_counter() - t
            if declined:
                rec.status = "declined"
                history.append(f"{step_text} -> the user declined this action; try something else")
            else:
                history.append(step_text)
            _record(traj, rec, shot, ui, config)
            rec = None
            if not config.dry_run and step < config.max_steps:
                sleep(config.settle)
    except KeyboardInterrupt:
        status = "interrupted"
    except FailSafe:
        status = "fail-safe"
    except Exception as e:
        if rec is not None:  # the trajectory still shows the step that failed
            rec.status, rec.error = "error", str(e)
            _record(traj, rec, shot, ui, config)
        raise
    if rec is not None:  # the step that was cut short is recorded too
        rec.status, rec.error = status, MESSAGES[status]
        _record(traj, rec, shot, ui, config)
    return _end(traj, status, step)


def _record(traj: Trajectory, rec: StepRecord, shot: Shot | None, ui: UI, config: AgentConfig) -> None:
    if shot is not None:
        m = shot.monitor
        traj.add(rec, shot.image, origin=(m.left, m.top))
    else:
        traj.add(rec)
    ui.step(rec, config)


def _end(traj: Trajectory, status: str, step: int) -> AgentResult:
    return AgentResult(status, len(traj.records), MESSAGES[status])

