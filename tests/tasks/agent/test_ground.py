"""Single-step grounding (ScreenSpot style): a synthetic screenshot with labelled buttons at known boxes,
scripted Kimi-style answers, point-in-box scoring, and `kvl agent ground` in-process."""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_answer
from kvl_tasks.agent.ground import ground, point_in_box

from .helpers import ScriptedEngine, user_images, user_text

SIZE = (800, 500)
BUTTONS = {"OK": (40, 400, 160, 440), "Cancel": (200, 400, 320, 440), "Settings": (600, 20, 760, 60),
           "Search": (300, 150, 500, 190)}


@pytest.fixture
def screenshot(tmp_path):
    img = Image.new("RGB", SIZE, (235, 235, 235))
    d = ImageDraw.Draw(img)
    for label, (x1, y1, x2, y2) in BUTTONS.items():
        d.rectangle((x1, y1, x2, y2), fill="white", outline="black", width=2)
        d.text((x1 + 10, y1 + 12), label, fill="black")
    path = tmp_path / "screen.png"
    img.save(path)
    return path


def centre(label: str, nudge: float = 0.0) -> tuple[float, float]:
    x1, y1, x2, y2 = BUTTONS[label]
    return ((x1 + x2) / 2 / SIZE[0] + nudge, (y1 + y2) / 2 / SIZE[1])


def kimi(messages, k):
    """A grounding model that finds OK, Cancel and Settings (the last one in pixels, after thinking) and
    misses Search."""
    target = user_text(messages).split("\n", 1)[1]
    if "OK" in target:
        x, y = centre("OK")
        return gui_answer("Click OK.", f"pyautogui.click(x={x:.3f}, y={y:.3f})")
    if "Cancel" in target:
        x, y = centre("Cancel")
        return f"The Cancel button is at x={x:.3f}, y={y:.3f}."  # prose: the regex fallback
    if "Settings" in target:
        return "◁think▷top right◁/think▷" + gui_answer("Open settings.", "pyautogui.click(x=680, y=40)")
    x, y = centre("Search", nudge=0.3)
    return gui_answer("Click Search.", f"pyautogui.click(x={x:.3f}, y={y:.3f})")


def test_point_in_box_scoring_on_scripted_answers(screenshot):
    img = Image.open(screenshot).convert("RGB")
    engine = ScriptedEngine(kimi)
    hits = {}
    for label, box in BUTTONS.items():
        g = ground(engine, img, f"the {label} button")
        hits[label] = point_in_box(g.point, box, SIZE)
    assert hits == {"OK": True, "Cancel": True, "Settings": True, "Search": False}
    messages = engine.calls[0][0]
    assert messages[0]["content"] == GUI_SYSTEM_PROMPT
    assert user_images(messages)[0].size == SIZE
    assert user_text(messages) == "## Task Instruction:\nthe OK button"


def test_point_in_box_edges_and_normalised_boxes():
    assert point_in_box((0.5, 0.5), (0.5, 0.5, 0.6, 0.6))
    assert point_in_box((0.1, 0.1), (80, 50, 100, 60), (800, 500))
    assert not point_in_box((0.1, 0.1), (81, 50, 100, 60), (800, 500))
    assert not point_in_box(None, (0, 0, 1, 1))


def test_ground_command_prints_the_point(kvl, screenshot, tmp_path):
    code, out, err = kvl(ScriptedEngine(kimi), "agent", "ground", screenshot, "the OK button")
    assert code == 0, err
    assert out.strip() == "x=0.1250 y=0.8400  (100, 420) px of 800x500"
    code, out, err = kvl(ScriptedEngine(kimi), "agent", "ground", screenshot, "the Search button",
                         "--box", "300,150,500,190", "--json", "--out", tmp_path / "marked.png")
    assert code == 0, err
    d = json.loads(out)
    assert d["hit"] is False and d["box"] == [300, 150, 500, 190] and d["px"] == 640
    assert Image.open(tmp_path / "marked.png").width == SIZE[0]


def test_ground_command_bad_input(kvl, screenshot, tmp_path):
    code, _, err = kvl(ScriptedEngine(["I cannot see it."]), "agent", "ground", screenshot, "the OK button")
    assert code == 1 and "error: " in err and "the model's answer holds no point ('I cannot see it.')" in err
    code, _, err = kvl(ScriptedEngine(kimi), "agent", "ground", tmp_path / "missing.png", "OK")
    assert code == 1 and f"error: {tmp_path / 'missing.png'}: no such file" in err
    code, _, err = kvl(ScriptedEngine(kimi), "agent", "ground", screenshot, "OK", "--box", "5,5,1")
    assert code == 1 and "--box '5,5,1': expected x1,y1,x2,y2" in err
    (tmp_path / "notes.png").write_text("not an image")
    code, _, err = kvl(ScriptedEngine(kimi), "agent", "ground", tmp_path / "notes.png", "OK")
    assert code == 1 and str(tmp_path / "notes.png") in err


def test_ground_with_the_tiny_checkpoint(kvl, tiny_long, screenshot):
    """The real model path in-process; a random model's point (if any) is still a point on the image."""
    code, out, err = kvl(None, "agent", "ground", screenshot, "the OK button", "--model", tiny_long,
                         "--max-new-tokens", "8", "--temperature", "0", "--json")
    d = json.loads(out)
    if code == 0:
        assert 0 <= d["x"] <= 1 and 0 <= d["px"] < SIZE[0]
    else:
        assert code == 1 and "the model's answer holds no point" in err and d["x"] is None
