"""The agent loop against a fake screen (no display needed): prompts, history, error feedback, stopping rules,
confirmation, --allow, and what the trajectory records."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_answer
from kvl_tasks.agent.loop import EXIT_CODES, AgentConfig, run_agent, screen_changed
from kvl_tasks.agent.screen import FailSafe
from kvl_tasks.agent.trajectory import Trajectory

from .helpers import FakeScreen, RecordingExecutor, ScriptedEngine, click, user_images, user_text


def frames(n: int) -> list:
    """n visibly different screens (a box moves)."""
    out = []
    for i in range(n):
        img = Image.new("RGB", (640, 400), "white")
        ImageDraw.Draw(img).rectangle((20 + 40 * i, 20, 50 + 40 * i, 50), fill="black")
        out.append(img)
    return out


def run(tmp_path, script, screens=None, executor=None, **cfg):
    engine = ScriptedEngine(script)
    traj = Trajectory(tmp_path / "traj", log_typed_text=cfg.pop("log_typed_text", False))
    config = AgentConfig("Enable Do Not Track", settle=0.0, **cfg)
    ui = cfg.pop("ui", None)
    executor = executor if executor is not None else RecordingExecutor()
    result = run_agent(engine, FakeScreen(screens or frames(20)), executor, traj, config, ui, sleep=lambda s: None)
    traj.finish({"status": result.status})
    lines = [json.loads(x) for x in (tmp_path / "traj" / "traj.jsonl").read_text().splitlines()]
    return result, engine, executor, lines


def test_prompt_history_and_done(tmp_path):
    script = [click(0.5, 0.25, "Click Settings."), gui_answer("Type the address.", "pyautogui.write('abc')"),
              gui_answer("Finished.", "DONE")]
    result, engine, ex, lines = run(tmp_path, script, history=2)
    assert (result.status, result.exit_code, result.steps) == ("done", 0, 3)
    first, last = engine.calls[0][0], engine.calls[2][0]
    assert first[0] == {"role": "system", "content": GUI_SYSTEM_PROMPT}
    assert user_text(first) == "## Task Instruction:\nEnable Do Not Track"
    assert len(user_images(first)) == 1 and len(user_images(last)) == 2  # --history 2: current one last
    assert user_images(last)[-1] is not user_images(last)[0]
    assert "Step 1: Click Settings. [pyautogui.click(x=0.5000, y=0.2500)]" in user_text(last)
    assert "Step 2: Type the address. [pyautogui.write('abc')]" in user_text(last)
    assert [(a.kind, p) for a, p in ex.done] == [("click", (320, 100)), ("type", None)]
    assert [x["status"] for x in lines] == ["executed", "executed", "done"]
    assert lines[0]["pixels"] == [[320, 100]] and lines[0]["screenshot"] == "step_001.png"
    assert (tmp_path / "traj" / "step_001.png").exists() and (tmp_path / "traj" / "report.html").exists()


def test_typed_text_is_not_logged_unless_asked(tmp_path):
    secret = "hunter2-secret"
    script = [gui_answer("Type the password.", f"pyautogui.write('{secret}')"), "DONE"]
    run(tmp_path / "a", script)
    for name in ("traj.jsonl", "report.html"):
        assert secret not in (tmp_path / "a" / "traj" / name).read_text()
    assert "14 characters" in (tmp_path / "a" / "traj" / "traj.jsonl").read_text()
    run(tmp_path / "b", script, log_typed_text=True)
    assert secret in (tmp_path / "b" / "traj" / "traj.jsonl").read_text()


def test_rejected_answers_are_fed_back_and_nonsense_stops(tmp_path):
    script = ["I think I should click somewhere", gui_answer("x", "import os\nos.system('ls')"), "blah"]
    result, engine, ex, lines = run(tmp_path, script, max_invalid=3)
    assert (result.status, result.exit_code, result.steps) == ("unusable", 6, 3)
    assert ex.done == []
    assert "(invalid answer: the answer has no code" in user_text(engine.calls[1][0])
    assert "only pyautogui calls are allowed, not `import os`" in user_text(engine.calls[2][0])
    assert all(x["status"] == "rejected" and x["error"] for x in lines)


def test_a_corrected_answer_resets_the_invalid_count(tmp_path):
    script = ["??", "??", click(0.1, 0.1), "??", "??", "DONE"]
    result, *_ = run(tmp_path, script, max_invalid=3)
    assert result.status == "done" and result.steps == 6


def test_stuck_when_the_same_action_does_not_change_the_screen(tmp_path):
    still = frames(1)  # the screen never changes
    result, engine, ex, lines = run(tmp_path, [click(0.3, 0.3)], screens=still, stuck_after=3)
    assert (result.status, result.exit_code) == ("stuck", 5)
    assert len(ex.done) == 2 and lines[-1]["status"] == "stuck"
    # on a screen that does change, the same click is not "stuck"
    result, *_ = run(tmp_path / "moving", [click(0.3, 0.3)] * 5 + ["DONE"], stuck_after=3)
    assert result.status == "done"


def test_max_steps_and_fail(tmp_path):
    result, *_ = run(tmp_path / "a", [click(0.3, 0.3)], max_steps=4)
    assert (result.status, result.exit_code, result.steps) == ("max-steps", 4, 4)
    result, *_ = run(tmp_path / "b", [gui_answer("Cannot find it.", "FAIL")])
    assert (result.status, result.exit_code) == ("fail", 3)


def test_wait_does_not_act(tmp_path):
    result, engine, ex, lines = run(tmp_path, ["WAIT", "DONE"])
    assert result.status == "done" and ex.done == [] and lines[0]["status"] == "wait"


def test_allow_restricts_kinds_and_tells_the_model(tmp_path):
    script = [gui_answer("Type.", "pyautogui.write('x')"), click(0.2, 0.2), "DONE"]
    result, engine, ex, lines = run(tmp_path, script, allow=frozenset({"click"}))
    assert [a.kind for a, _ in ex.done] == ["click"]
    assert lines[0]["status"] == "not-allowed"
    assert "type is not allowed in this run" in user_text(engine.calls[1][0])


def test_dry_run_executes_nothing(tmp_path):
    class Boom:
        def execute(self, *a):
            raise AssertionError("executed in a dry run")

    result, engine, ex, lines = run(tmp_path, [click(0.2, 0.2), "DONE"], executor=Boom(), dry_run=True)
    assert result.status == "done" and lines[0]["status"] == "dry-run" and lines[0]["pixels"] == [[128, 80]]


class AnswerUI:
    def __init__(self, answers):
        self.answers, self.asked, self.typed = list(answers), [], []

    def step(self, rec, config): pass
    def thinking(self, step, config): pass

    def confirm(self, action, pixels):
        self.asked.append((action.kind, pixels))
        return self.answers.pop(0)

    def typing(self, text):
        self.typed.append(text)


def test_confirm_yes_no_quit(tmp_path):
    ui = AnswerUI(["n", "y", "y", "q"])
    script = [click(0.2, 0.2), click(0.25, 0.25), gui_answer("Type.", "pyautogui.write('hello')"), click(0.5, 0.5)]
    engine = ScriptedEngine(script)
    ex = RecordingExecutor()
    traj = Trajectory(tmp_path)
    result = run_agent(engine, FakeScreen(frames(9)), ex, traj, AgentConfig("t", confirm=True, settle=0), ui,
                       sleep=lambda s: None)
    assert (result.status, result.exit_code) == ("stopped", 130)
    assert [a.kind for a, _ in ex.done] == ["click", "type"]
    assert ui.typed == ["hello"]  # shown before it is typed
    assert "the user declined this action" in user_text(engine.calls[1][0])
    assert [r.status for r in traj.records] == ["declined", "executed", "executed", "stopped"]


@pytest.mark.parametrize("exc, status", [(KeyboardInterrupt, "interrupted"), (FailSafe, "fail-safe")])
def test_ctrl_c_and_fail_safe_stop_and_record(tmp_path, exc, status):
    class Raiser(RecordingExecutor):
        def execute(self, action, pixels):
            raise exc()

    result, engine, ex, lines = run(tmp_path, [click(0.2, 0.2)], executor=Raiser())
    assert (result.status, result.exit_code) == (status, EXIT_CODES[status]) and EXIT_CODES[status] == 130
    assert len(lines) == 1 and lines[0]["status"] == status


def test_a_thinking_answer_cut_off_is_rejected(tmp_path):
    result, engine, ex, lines = run(tmp_path, ["◁think▷ hmm, let me see"], max_invalid=2)
    assert result.status == "unusable" and "cut off while still thinking" in lines[0]["error"]
    assert lines[0]["reasoning"] == "hmm, let me see"


def test_screen_changed_ignores_a_caret_blink():
    a = Image.new("RGB", (200, 100), "white")
    b = a.copy()
    ImageDraw.Draw(b).line((50, 10, 50, 25), fill="black")  # a caret: 16 pixels
    c = a.copy()
    ImageDraw.Draw(c).rectangle((10, 10, 22, 22), fill="black")  # a check mark's worth
    assert not screen_changed(a, b) and screen_changed(a, c)


def test_prompts_encode_with_the_real_processor(tmp_path, tiny_dir):
    from kvl_core.processor.chat import Processor

    engine = ScriptedEngine([click(0.5, 0.5), "DONE"], processor=Processor.from_pretrained(tiny_dir))
    result = run_agent(engine, FakeScreen(frames(3)), RecordingExecutor(), Trajectory(tmp_path),
                       AgentConfig("t", settle=0), sleep=lambda s: None)
    assert result.status == "done"
