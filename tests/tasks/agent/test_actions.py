"""The answer parser: Kimi-style answers become whitelisted actions; anything else is a ParseError and is
never executed (no eval/exec anywhere on the path)."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvl_core.prompts import gui_answer
from kvl_tasks.agent.actions import (CONTROL_KINDS, KINDS, MAX_TEXT, Action, ParseError, parse_answer, parse_code,
                                     parse_point, split_answer)

FIGURE_10 = "◁think▷The toggle is in the Advanced section.◁/think▷" + gui_answer(
    "Click the toggle switch next to \"Send a 'Do Not Track' request\".", "pyautogui.click(x=0.808, y=0.871)")


def test_kimi_answer_with_thinking_is_parsed():
    from kvl_core.processor.chat import split_thinking

    _, answer, _ = split_thinking(FIGURE_10)
    p = parse_answer(answer)
    assert p.thought.startswith("Click the toggle switch")
    assert p.actions == [Action("click", 0.808, 0.871)]


@pytest.mark.parametrize("code, expected", [
    ("pyautogui.click(0.5, 0.25)", Action("click", 0.5, 0.25)),
    ("click(x=0.884, y=0.144)", Action("click", 0.884, 0.144)),  # the paper's Figure 10 tool call
    ("pyautogui.doubleClick(x=0.1, y=0.2)", Action("doubleclick", 0.1, 0.2)),
    ("pyautogui.rightClick(x=0.1, y=0.2)", Action("rightclick", 0.1, 0.2, button="right")),
    ("pyautogui.click(x=0.1, y=0.2, button='right')", Action("rightclick", 0.1, 0.2, button="right")),
    ("pyautogui.moveTo(x=1, y=0)", Action("move", 1.0, 0.0)),
    ("pyautogui.dragTo(0.3, 0.4, duration=0.5)", Action("drag", 0.3, 0.4, seconds=0.5)),
    ("scroll(-5)", Action("scroll", amount=-5)),
    ("pyautogui.scroll(3, x=0.5, y=0.5)", Action("scroll", 0.5, 0.5, amount=3)),
    ("pyautogui.write('chrome://settings/cookies')", Action("type", text="chrome://settings/cookies")),
    ("pyautogui.typewrite('a b', interval=0.1)", Action("type", text="a b", seconds=0.1)),
    ("pyautogui.typewrite(['a', 'enter'])", Action("press", keys=("a", "enter"))),
    ("pyautogui.press('Enter')", Action("press", keys=("enter",))),
    ("pyautogui.press(['tab', 'tab'], presses=2)", Action("press", keys=("tab", "tab"), amount=2)),
    ("pyautogui.hotkey('ctrl', 'a')", Action("hotkey", keys=("ctrl", "a"))),
    ("import time\ntime.sleep(2)", Action("wait", seconds=2.0)),
    ("WAIT", Action("wait", seconds=1.0)),
    ("DONE", Action("done")),
    ("fail", Action("fail")),
])
def test_whitelisted_calls(code, expected):
    assert parse_answer(gui_answer("x", code)).actions == [expected]


def test_several_calls_and_import_line():
    p = parse_answer(gui_answer("Go to the page.", "import pyautogui\npyautogui.click(x=0.35, y=0.078)\n"
                                "pyautogui.hotkey('ctrl', 'a')\npyautogui.write('chrome://settings')\n"
                                "pyautogui.press('enter')"))
    assert [a.kind for a in p.actions] == ["click", "hotkey", "type", "press"]


@pytest.mark.parametrize("answer", ["DONE", "## Code:\nDONE", "## Action:\nAll set.\n## Code:\n```\nDONE\n```",
                                    "## Code:\n```python\nDONE\n```", "`DONE`"])
def test_special_answers_in_any_layout(answer):
    assert parse_answer(answer).actions == [Action("done")]


def test_code_without_fence_and_reversed_sections():
    assert split_answer("## Code: pyautogui.click(x=0.1, y=0.2)\n## Action: Click OK.") == (
        "Click OK.", "pyautogui.click(x=0.1, y=0.2)")
    p = parse_answer("Sure. ```python\npyautogui.click(x=0.1, y=0.9)\n```")
    assert p.actions == [Action("click", 0.1, 0.9)]


def test_last_fence_under_code_wins():
    ans = "## Action:\nx\n## Code:\n```python\npyautogui.click(x=0.1, y=0.1)\n```\n```python\nDONE\n```"
    assert parse_answer(ans).actions == [Action("done")]


def test_pixels_are_normalised_by_the_screenshot_size():
    assert parse_answer(gui_answer("x", "pyautogui.click(x=640, y=200)"), (1280, 800)).actions == [
        Action("click", 0.5, 0.25)]
    with pytest.raises(ParseError, match="outside the screen"):
        parse_answer(gui_answer("x", "pyautogui.click(x=640, y=200)"))  # no size: only 0-1 accepted
    with pytest.raises(ParseError, match="outside the screen"):
        parse_answer(gui_answer("x", "pyautogui.click(x=1300, y=200)"), (1280, 800))


@pytest.mark.parametrize("code, message", [
    ("import os\nos.system('rm -rf ~')", "only pyautogui calls"),
    ("__import__('os').system('x')", "not an allowed call"),
    ("os.system('x')", "not an allowed call"),
    ("pyautogui.click.__globals__['os'].system('x')", "not an allowed call"),
    ("pyautogui.platformModule._click(1, 2)", "not an allowed call"),
    ("eval('1')", "not an allowed call"),
    ("open('/tmp/kvl-pwned', 'w')", "not an allowed call"),
    ("pyautogui.click(x=__import__('os'), y=0.1)", "plain numbers or strings"),
    ("pyautogui.click(x=0.1+0.2, y=0.1)", "plain numbers or strings"),
    ("pyautogui.click(x=1e308, y=0.5)", "outside the screen"),
    ("pyautogui.click(x=float('nan'), y=0.5)", "plain numbers or strings"),
    ("pyautogui.click(x=-0.1, y=0.5)", "outside the screen"),
    ("pyautogui.click(x=0.5)", "both x and y"),
    ("pyautogui.click(x=True, y=0.5)", "between 0 and 1"),
    ("pyautogui.click(**{'x': 1})", "does not take"),
    ("pyautogui.click(x=0.1, y=0.1, x=0.2)", "twice"),
    ("pyautogui.scroll(10**9)", "plain numbers"),
    ("pyautogui.scroll(99999)", "out of range"),
    ("pyautogui.write(f'{x}')", "plain numbers or strings"),
    ("pyautogui.write('a' * 3)", "plain numbers or strings"),
    ("pyautogui.press('launch-missiles')", "unknown key"),
    ("pyautogui.hotkey('ctrl', 'alt', 'delete')", "not allowed"),
    ("pyautogui.hotkey('ctrl', 'alt', 'backspace')", "not allowed"),
    ("pyautogui.hotkey('winleft', 'l')", "not allowed"),
    ("x = 1", "only pyautogui calls"),
    ("for i in range(9): pyautogui.click(x=0.1, y=0.1)", "only pyautogui calls"),
    ("pyautogui.click(x=0.1, y=0.1)\nDONE", "must be the whole answer"),
    ("lambda: 0", "only pyautogui calls"),
    ("pyautogui.sleep(1)", "not an allowed call"),
    ("time.sleep(3600)", "out of range"),
    ("pyautogui.click(x=0.1, y=0.1, clicks=1000)", "out of range"),
    ("\n".join(["pyautogui.press('a')"] * 11), "more than"),
    ("pyautogui.click(x=0.1, y=", "not valid Python"),
    ("1" * 5000, "not valid Python"),
])
def test_hostile_or_malformed_code_is_rejected(code, message, tmp_path):
    with pytest.raises(ParseError, match=message):
        parse_answer(gui_answer("x", code))


def test_no_code_and_empty_answers():
    for ans in ("", "   ", "I will click the button.", "## Action:\nClick it.\n## Code:\n"):
        with pytest.raises(ParseError):
            parse_answer(ans)


def test_action_code_round_trips():
    for code in ("pyautogui.click(x=0.1, y=0.2)", "pyautogui.scroll(-5)", "pyautogui.write('hi')",
                 "pyautogui.hotkey('ctrl', 'c')", "pyautogui.press('enter')", "pyautogui.dragTo(0.5, 0.5)",
                 "pyautogui.click(x=0.3, y=0.3, button='middle')"):
        (a,) = parse_code(code)
        assert parse_code(a.code()) == [a]
    assert Action("type", text="hunter2").code(redact=True) == "pyautogui.write(<7 characters>)"


def test_parse_point_fallbacks():
    assert parse_point(FIGURE_10.split("◁/think▷")[1]) == (0.808, 0.871)
    assert parse_point("The button is at x=0.25, y=0.75 I think") == (0.25, 0.75)
    assert parse_point("[0.3, 0.6]") == (0.3, 0.6)
    assert parse_point("(640, 400)", (1280, 800)) == (0.5, 0.5)
    assert parse_point("no idea") is None
    assert parse_point("x=7, y=9") is None  # pixels with no size known


# ---- properties -----------------------------------------------------------------------------------

def _check(actions: list[Action]) -> None:
    assert actions
    for a in actions:
        assert a.kind in KINDS + CONTROL_KINDS
        for v in (a.x, a.y):
            assert v is None or (0.0 <= v <= 1.0 and math.isfinite(v))
        assert a.text is None or len(a.text) <= MAX_TEXT
        assert 0 <= a.seconds <= 5


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_parses_or_fails_cleanly(text):
    try:
        p = parse_answer(text, (1280, 800))
    except ParseError as e:
        assert str(e)
    else:
        _check(p.actions)


NAMES = st.sampled_from(["pyautogui", "os", "sys", "subprocess", "__builtins__", "time", "builtins", "self"])
ATTRS = st.sampled_from(["click", "system", "popen", "__class__", "__globals__", "__dict__", "__subclasses__",
                         "write", "hotkey", "press", "sleep", "_click", "platformModule", "run", "__import__"])
ARGS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-10**30, max_value=10**30).map(str),
    st.text(max_size=20).map(repr),
    st.sampled_from(["__import__('os')", "os.environ", "[1]*10**9", "2**2**2**2", "x", "lambda: 1", "(yield)",
                     "{'a': 1}", "b'\\x00'", "...", "f'{1}'", "not 0", "print", "-(-1)", "1j", "None", "True"]),
)


@st.composite
def hostile_code(draw):
    parts = [draw(NAMES)] + draw(st.lists(ATTRS, min_size=0, max_size=4))
    func = ".".join(parts) if draw(st.booleans()) else draw(ATTRS)
    args = draw(st.lists(ARGS, max_size=3))
    kwargs = draw(st.lists(st.tuples(st.sampled_from(["x", "y", "clicks", "button", "interval", "message", "__x"]),
                                     ARGS), max_size=3, unique_by=lambda t: t[0]))
    call = f"{func}({', '.join(args + [f'{k}={v}' for k, v in kwargs])})"
    prefix = draw(st.sampled_from(["", "import os\n", "from os import system\n", "import pyautogui\n",
                                   "global x\n", "del x\n", "with open('f') as f: pass\n"]))
    return prefix + call


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_code(), st.booleans())
def test_hostile_code_never_yields_anything_outside_the_whitelist(code, fenced):
    answer = gui_answer("Do it.", code) if fenced else code
    try:
        p = parse_answer(answer, (1280, 800))
    except ParseError:
        return
    _check(p.actions)
    # only a plain whitelisted call can get through: its function is pyautogui.<name> or a bare <name>
    head = code.splitlines()[-1].split("(")[0]
    assert head in {"pyautogui.click", "click", "pyautogui.write", "write", "pyautogui.hotkey", "hotkey",
                    "pyautogui.press", "press", "time.sleep"}, code


@settings(max_examples=200, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1), st.sampled_from(["click", "doubleClick", "rightClick", "moveTo", "dragTo"]))
def test_normalised_points_survive_exactly(x, y, fn):
    (a,) = parse_answer(gui_answer("x", f"pyautogui.{fn}(x={x!r}, y={y!r})")).actions
    assert (a.x, a.y) == (x, y)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_typed_text_survives_exactly(text):
    (a,) = parse_answer(gui_answer("Type.", f"pyautogui.write({text!r})")).actions
    assert a.kind == "type" and a.text == text
