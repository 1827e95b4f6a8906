"""The agent on a real X display (Xvfb): a Tk window with a "Do Not Track" checkbox, real screenshots (mss),
real mouse and keyboard (pyautogui), the real `kvl agent` command run in-process with a scripted engine.
The assertions read the application's own state back, not the agent's opinion of it."""

from __future__ import annotations

import json


from kvl_core.prompts import gui_answer

from .conftest import SCREEN
from .helpers import ScriptedEngine, click, user_images


def test_agent_enables_do_not_track_in_a_real_window(tk_app, kvl, tmp_path):
    ex, ey = tk_app.center("entry")
    cx, cy = tk_app.center("checkbox", dx=10)  # the indicator box at the row's left
    steps = [
        click(ex, ey, "Click the Homepage field."),
        gui_answer("Type the homepage address.", "pyautogui.write('example.org')"),
        click(cx, cy, "Click the checkbox next to \"Send a 'Do Not Track' request\"."),
        gui_answer("The checkbox is ticked; the task is complete.", "DONE"),
    ]
    engine = ScriptedEngine(steps)
    out = tmp_path / "run"
    assert tk_app.state() == {"dnt": 0, "homepage": ""}
    code, stdout, stderr = kvl(engine, "agent", "Enable Do Not Track and set the homepage",
                               "--trajectory", out, "--settle", "0.3", "--json")
    assert code == 0, stderr
    assert tk_app.state() == {"dnt": 1, "homepage": "example.org"}  # read back from the app itself
    summary = json.loads(stdout)
    assert summary["status"] == "done" and summary["steps"] == 4
    shots = [user_images(m)[-1] for m, _ in engine.calls]
    assert all(s.size == SCREEN for s in shots)
    lines = [json.loads(x) for x in (out / "traj.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["executed", "executed", "executed", "done"]
    assert lines[3]["screen_changed"] is True  # the tick is visible on the screenshot after the click
    px = lines[2]["pixels"][0]
    x, y, w, h = tk_app.geometry["checkbox"]
    assert x <= px[0] < x + w and y <= px[1] < y + h
    assert "example.org" not in (out / "traj.jsonl").read_text() + (out / "report.html").read_text()
    report = (out / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") == 4 and "Enable Do Not Track" in report
    assert "Typing 11 characters" in stderr or "typing 11 characters" in stderr


def test_dry_run_leaves_the_app_alone(tk_app, kvl, tmp_path):
    cx, cy = tk_app.center("checkbox", dx=10)
    code, _, stderr = kvl(ScriptedEngine([click(cx, cy), "DONE"]), "agent", "Enable Do Not Track", "--dry-run",
                          "--trajectory", tmp_path / "run")
    assert code == 0, stderr
    assert tk_app.state()["dnt"] == 0
    assert "dry run" in stderr


def test_stuck_on_a_click_that_changes_nothing(display, kvl, tmp_path):
    code, _, stderr = kvl(ScriptedEngine([click(0.9, 0.9)]), "agent", "Click the void", "--settle", "0",
                          "--trajectory", tmp_path / "run")
    assert code == 5, stderr
    assert "stuck" in stderr
    assert len((tmp_path / "run" / "traj.jsonl").read_text().splitlines()) == 3


def test_a_monitor_that_does_not_exist(display, kvl, tmp_path):
    code, _, stderr = kvl(ScriptedEngine(["DONE"]), "agent", "x", "--monitor", "7", "--trajectory", tmp_path / "r")
    assert code == 1
    assert "--monitor 7: no such monitor (this display has 1: 1: 1280x800 at 0,0" in stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "error" and "no such monitor" in summary["message"]


def test_monitor_zero_is_the_whole_desktop(display, kvl, tmp_path):
    engine = ScriptedEngine(["DONE"])
    code, _, stderr = kvl(engine, "agent", "x", "--monitor", "0", "--trajectory", tmp_path / "r")
    assert code == 0, stderr
    assert user_images(engine.calls[0][0])[0].size == SCREEN


def test_a_context_too_small_for_the_prompt_is_a_clear_error(display, kvl, tiny_dir, tmp_path):
    """The real tiny checkpoint (512-token context) cannot hold the system prompt and one screenshot."""
    code, _, stderr = kvl(None, "agent", "Enable Do Not Track", "--dry-run", "--model", tiny_dir,
                          "--trajectory", tmp_path / "r")
    assert code == 1
    assert "its context of 512 tokens cannot hold the agent prompt" in stderr
    lines = [json.loads(x) for x in (tmp_path / "r" / "traj.jsonl").read_text().splitlines()]
    assert lines[0]["status"] == "error" and "512 tokens" in lines[0]["error"]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["status"] == "error"


def test_allow_with_an_unknown_kind(display, kvl, tmp_path):
    code, _, err = kvl(ScriptedEngine(["DONE"]), "agent", "x", "--allow", "click,teleport")
    assert code == 1 and "error: --allow: unknown action kind 'teleport'" in err
