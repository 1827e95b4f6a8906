"""Model answer -> whitelisted GUI actions, without ever executing model output (paper §4.1.5; tasks.md §1.3).

Kimi-VL answers in the grounding format of kvl_core/prompts.py: `## Action:` (one sentence, kept as the step's
thought) and `## Code:` (a fenced pyautogui snippet with coordinates normalised to the screenshot), or one of
the special answers WAIT / DONE / FAIL (OSWorld's pyautogui action space). The code is read with `ast.parse`
and every statement must be a call from a fixed whitelist with literal arguments of the right type and
range; anything else (imports, attribute chains, names, comprehensions, f-strings, huge numbers, points off
the screen) raises ParseError, whose message goes back to the model on the next step.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import asdict, dataclass, field, replace

# Action kinds, as `--allow` names them. wait/done/fail are always allowed: they do nothing to the desktop.
MOUSE_KINDS = ("click", "doubleclick", "rightclick", "move", "drag", "scroll")
KEYBOARD_KINDS = ("type", "press", "hotkey")
KINDS = MOUSE_KINDS + KEYBOARD_KINDS
CONTROL_KINDS = ("wait", "done", "fail")
POINT_KINDS = ("click", "doubleclick", "rightclick", "move", "drag")

MAX_CALLS = 10  # statements per answer: a real step is one or two calls
MAX_TEXT = 2000  # characters typed by one call
MAX_SCROLL = 50  # wheel clicks per call
MAX_PRESSES = 20
MAX_SECONDS = 5.0  # interval / duration / sleep
MAX_SOURCE = 20_000  # characters of code: ast.parse on megabytes of model output is itself a hazard

# Key names pyautogui accepts on every platform (our own list: the common subset, not pyautogui's table).
_NAMED_KEYS = {
    "enter", "return", "tab", "space", "backspace", "delete", "del", "esc", "escape", "insert",
    "up", "down", "left", "right", "home", "end", "pageup", "pagedown", "pgup", "pgdn",
    "ctrl", "ctrlleft", "ctrlright", "control", "shift", "shiftleft", "shiftright", "alt", "altleft", "altright",
    "win", "winleft", "winright", "command", "cmd", "option", "super", "fn",
    "capslock", "numlock", "scrolllock", "printscreen", "prtsc", "pause", "menu", "apps",
    "volumeup", "volumedown", "volumemute", "playpause", "nexttrack", "prevtrack", "browserback",
    "browserforward", "browserrefresh", "browserhome", "browsersearch",
    "add", "subtract", "multiply", "divide", "decimal", "separator", "clear",
} | {f"f{i}" for i in range(1, 25)} | {f"num{i}" for i in range(10)}
_MODIFIERS = {"ctrl", "ctrlleft", "ctrlright", "control", "alt", "altleft", "altright", "shift", "shiftleft",
              "shiftright", "win", "winleft", "winright", "command", "cmd", "option", "super"}
# Hotkeys that end the session rather than operate an application: never sent, whatever the model says.
_DENIED_HOTKEYS = [
    {"ctrl", "alt", "delete"}, {"ctrl", "alt", "del"}, {"ctrl", "alt", "backspace"}, {"win", "l"},
    {"super", "l"}, {"command", "ctrl", "q"}, {"command", "option", "esc"}, {"command", "shift", "q"},
] + [{"ctrl", "alt", f"f{i}"} for i in range(1, 13)]  # Linux: switch to a text console
_KEY_ALIASES = {"control": "ctrl", "ctrlleft": "ctrl", "ctrlright": "ctrl", "altleft": "alt", "altright": "alt",
                "shiftleft": "shift", "shiftright": "shift", "winleft": "win", "winright": "win", "cmd": "command",
                "del": "delete"}


NO_CODE = "the answer has no code; put one pyautogui call (or WAIT, DONE, FAIL) under '## Code:'"


class ParseError(ValueError):
    """The answer cannot be turned into actions; the message is written for the model (and the user)."""


@dataclass(frozen=True)
class Action:
    kind: str  # one of KINDS or CONTROL_KINDS
    x: float | None = None  # normalised to the screenshot, 0-1, origin top-left
    y: float | None = None
    text: str | None = None  # type: the text
    keys: tuple[str, ...] = ()  # press / hotkey
    amount: int = 1  # scroll: wheel clicks (positive = up); press: repetitions; click: clicks
    button: str = "left"
    seconds: float = 0.0  # wait: how long; move/drag: duration; type/press: interval between keys

    @property
    def has_point(self) -> bool:
        return self.x is not None and self.y is not None

    def code(self, redact: bool = False) -> str:
        """Canonical pyautogui-style code for the action (what the history and the report show)."""
        pt = f"x={self.x:.4f}, y={self.y:.4f}" if self.has_point else ""
        if self.kind in ("click", "doubleclick", "rightclick"):
            name = {"click": "click", "doubleclick": "doubleClick", "rightclick": "rightClick"}[self.kind]
            extra = ""
            if self.kind == "click" and self.button != "left":
                extra += f"{', ' if pt else ''}button={self.button!r}"
            if self.kind == "click" and self.amount != 1:
                extra += f"{', ' if pt or extra else ''}clicks={self.amount}"
            return f"pyautogui.{name}({pt}{extra})"
        if self.kind == "move":
            return f"pyautogui.moveTo({pt})"
        if self.kind == "drag":
            return f"pyautogui.dragTo({pt}, button={self.button!r})"
        if self.kind == "scroll":
            return f"pyautogui.scroll({self.amount}{', ' + pt if pt else ''})"
        if self.kind == "type":
            shown = f"<{len(self.text or '')} characters>" if redact else repr(self.text)
            return f"pyautogui.write({shown})"
        if self.kind == "press":
            keys = repr(self.keys[0]) if len(self.keys) == 1 else repr(list(self.keys))
            return f"pyautogui.press({keys}{f', presses={self.amount}' if self.amount != 1 else ''})"
        if self.kind == "hotkey":
            return f"pyautogui.hotkey({', '.join(repr(k) for k in self.keys)})"
        return self.kind.upper()

    def to_dict(self, redact: bool = False) -> dict:
        d = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        d["keys"] = list(self.keys) if self.keys else None
        if redact and self.text is not None:
            d["text"] = None
            d["text_chars"] = len(self.text)
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class Parsed:
    thought: str  # the `## Action:` sentence ("" when the model gave none)
    code: str  # the code as the model wrote it
    actions: list[Action] = field(default_factory=list)


# ---- answer layout ----------------------------------------------------------------------------------

_SECTION = re.compile(r"^\s*#{1,6}\s*(action|code)\s*:?\s*$|^\s*#{1,6}\s*(action|code)\s*:\s*(.*)$",
                      re.IGNORECASE | re.MULTILINE)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_SPECIAL = re.compile(r"^\s*[`'\"*]*\s*(WAIT|DONE|FAIL)\s*[`'\"*.!]*\s*$", re.IGNORECASE)


def _sections(answer: str) -> dict[str, str]:
    """{"action": text, "code": text} from `## Action:` / `## Code:` headings (either order, either optional)."""
    marks = []
    for m in _SECTION.finditer(answer):
        name = (m.group(1) or m.group(2)).lower()
        inline = m.group(3) or ""
        marks.append((m.start(), m.end(), name, inline))
    out: dict[str, str] = {}
    for i, (start, end, name, inline) in enumerate(marks):
        stop = marks[i + 1][0] if i + 1 < len(marks) else len(answer)
        body = (inline + "\n" + answer[end:stop]) if inline else answer[end:stop]
        out.setdefault(name, body.strip())
    return out


def split_answer(answer: str) -> tuple[str, str]:
    """(thought, code) of an answer; code is the last fenced block under `## Code:` (or anywhere), else the
    bare text under `## Code:`, else the whole answer when it is a bare special answer or a bare call."""
    sec = _sections(answer)
    thought = " ".join(sec.get("action", "").split())
    where = sec.get("code", answer if "code" not in sec else "")
    fences = _FENCE.findall(where) or ([] if "code" in sec else _FENCE.findall(answer))
    if fences:
        code = fences[-1][1]
    elif "code" in sec:
        code = sec["code"]
    else:
        code = answer if not sec else ""
    return thought, code.strip()


def parse_answer(answer: str, size: tuple[int, int] | None = None) -> Parsed:
    """The model's answer (thinking already removed) -> thought and actions, or ParseError.

    `size` is the screenshot's (width, height) in pixels: coordinates above 1 are taken as pixels of it and
    normalised (some checkpoints answer in pixels); without it, only 0-1 coordinates are accepted.
    """
    if not answer.strip():
        raise ParseError("the answer is empty; reply with '## Action:' and '## Code:' sections")
    thought, code = split_answer(answer)
    if not code:
        raise ParseError(NO_CODE)
    m = _SPECIAL.match(code)
    if m:
        return Parsed(thought, code, [Action(m.group(1).lower(), seconds=1.0 if m.group(1).upper() == "WAIT" else 0.0)])
    bare = code == answer.strip() and "```" not in answer
    try:
        return Parsed(thought, code, parse_code(code, size))
    except ParseError as e:
        if bare and str(e).startswith("the code is not valid Python"):  # prose, not code
            raise ParseError(NO_CODE) from None
        raise


# ---- code ---------------------------------------------------------------------------------------------

def parse_code(code: str, size: tuple[int, int] | None = None) -> list[Action]:
    """pyautogui code -> actions, by AST inspection only. `import pyautogui` / `import time` lines are skipped
    (models add them out of habit); every other statement must be one whitelisted call."""
    if len(code) > MAX_SOURCE:
        raise ParseError(f"the code is {len(code)} characters long; send one short pyautogui call")
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as e:
        raise ParseError(f"the code is not valid Python ({_short(str(e.msg), 80)}, line {e.lineno})") from None
    except (ValueError, RecursionError, MemoryError):
        raise ParseError("the code cannot be parsed") from None
    actions: list[Action] = []
    lines = code.splitlines()
    for stmt in tree.body:
        if isinstance(stmt, ast.Import) and all(a.name in ("pyautogui", "time") and a.asname is None
                                                 for a in stmt.names):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Name) and stmt.value.id.lower() in CONTROL_KINDS:
            actions.append(Action(stmt.value.id.lower(), seconds=1.0 if stmt.value.id.upper() == "WAIT" else 0.0))
            continue
        if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
            src = lines[stmt.lineno - 1].strip() if 0 < stmt.lineno <= len(lines) else type(stmt).__name__
            raise ParseError(f"only pyautogui calls are allowed, not `{_short(src)}`")
        actions.append(_call(stmt.value, size))
        if len(actions) > MAX_CALLS:
            raise ParseError(f"more than {MAX_CALLS} calls in one step; do one thing at a time")
    if not actions:
        raise ParseError("the code holds no pyautogui call")
    if any(a.kind in CONTROL_KINDS for a in actions) and len(actions) > 1:
        raise ParseError("WAIT, DONE and FAIL must be the whole answer, not mixed with other calls")
    return actions


def _short(s: str, n: int = 60) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _func_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id  # `click(x=…, y=…)`, as in the paper's Figure 10 tool calls
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("pyautogui", "time"):
        return f"{func.value.id}.{func.attr}"
    try:
        shown = ast.unparse(func)
    except Exception:  # noqa: BLE001 -- unparse of a hostile tree: just say it is not allowed
        shown = type(func).__name__
    raise ParseError(f"`{_short(shown)}` is not an allowed call; use pyautogui.click/write/press/... only")


# function name (without `pyautogui.`) -> (kind, positional parameter names, keyword parameter names)
_SIGNATURES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "click": ("click", ("x", "y"), ("x", "y", "clicks", "interval", "button", "duration")),
    "leftClick": ("click", ("x", "y"), ("x", "y", "interval", "duration")),
    "doubleClick": ("doubleclick", ("x", "y"), ("x", "y", "interval", "button", "duration")),
    "rightClick": ("rightclick", ("x", "y"), ("x", "y", "interval", "duration")),
    "moveTo": ("move", ("x", "y"), ("x", "y", "duration")),
    "dragTo": ("drag", ("x", "y"), ("x", "y", "duration", "button")),
    "scroll": ("scroll", ("clicks", "x", "y"), ("clicks", "x", "y")),
    "write": ("type", ("message", "interval"), ("message", "interval")),
    "typewrite": ("type", ("message", "interval"), ("message", "interval")),
    "press": ("press", ("keys", "presses", "interval"), ("keys", "presses", "interval")),
    "hotkey": ("hotkey", (), ("interval",)),
    "sleep": ("wait", ("seconds",), ("seconds",)),
}


def _call(call: ast.Call, size) -> Action:
    full = _func_name(call.func)
    module, _, name = full.rpartition(".")
    if (module == "time") != (name == "sleep") or name not in _SIGNATURES:
        raise ParseError(f"`{_short(full)}` is not an allowed call; allowed: pyautogui.click, doubleClick, "
                         "rightClick, moveTo, dragTo, scroll, write, press, hotkey, or WAIT / DONE / FAIL")
    kind, positional, keywords = _SIGNATURES[name]
    args: dict[str, object] = {}
    if name == "hotkey":
        if not call.args:
            raise ParseError("pyautogui.hotkey needs the keys, e.g. pyautogui.hotkey('ctrl', 'c')")
        args["keys"] = [_literal(a, name) for a in call.args]
    else:
        if len(call.args) > len(positional):
            raise ParseError(f"pyautogui.{name} takes at most {len(positional)} positional arguments")
        for pname, a in zip(positional, call.args):
            args[pname] = _literal(a, name)
    for kw in call.keywords:
        if kw.arg is None or kw.arg not in keywords:
            shown = "**" if kw.arg is None else kw.arg
            raise ParseError(f"pyautogui.{name} does not take the argument `{shown}`")
        if kw.arg in args:
            raise ParseError(f"pyautogui.{name} got `{kw.arg}` twice")
        args[kw.arg] = _literal(kw.value, name)
    return _build(kind, name, args, size)


def _literal(node: ast.expr, fname: str):
    """A constant (str, int, float, bool, None), a negated number, or a flat list/tuple of strings."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, (ast.List, ast.Tuple)) and len(node.elts) <= 32 and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]
    try:
        shown = ast.unparse(node)
    except Exception:  # noqa: BLE001
        shown = type(node).__name__
    raise ParseError(f"arguments of pyautogui.{fname} must be plain numbers or strings, not `{_short(shown)}`")


def _number(v, what: str, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ParseError(f"{what} must be a number, not {v!r}"[:120])
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ParseError(f"{what} = {_short(repr(v), 30)} is out of range ({lo:g} to {hi:g})")
    return float(v)


def _integer(v, what: str, lo: int, hi: int) -> int:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ParseError(f"{what} must be a whole number, not {_short(repr(v), 30)}")
    if not lo <= v <= hi:
        raise ParseError(f"{what} = {_short(repr(v), 30)} is out of range ({lo} to {hi})")
    return v


def _coord(v, axis: str, size) -> float:
    """A coordinate normalised to 0-1. Above 1 it is a pixel of the screenshot (when its size is known)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ParseError(f"{axis} must be a number between 0 and 1, not {_short(repr(v), 30)}")
    if 0 <= v <= 1:
        return float(v)
    extent = None if size is None else size[0 if axis == "x" else 1]
    if extent and 1 < v < extent:
        return float(v) / extent
    raise ParseError(f"{axis} = {_short(repr(v), 30)} is outside the screen; use normalized coordinates "
                     "between 0 and 1")


def _key(k, fname: str) -> str:
    if not isinstance(k, str) or not k:
        raise ParseError(f"pyautogui.{fname} needs key names as strings, e.g. 'enter'")
    low = k.lower()
    if len(k) == 1 and k.isprintable():
        return low if k.isalpha() else k
    if low in _NAMED_KEYS:
        return low
    raise ParseError(f"unknown key {_short(repr(k), 30)} in pyautogui.{fname}")


def _build(kind: str, name: str, a: dict, size) -> Action:
    seconds = 0.0
    for key in ("interval", "duration"):
        if a.get(key) is not None:
            seconds = _number(a[key], key, 0.0, MAX_SECONDS)
    if kind in POINT_KINDS:
        x, y = a.get("x"), a.get("y")
        if isinstance(x, (list, tuple)):  # pyautogui.click((0.2, 0.3)) -- a point as one argument
            raise ParseError(f"give pyautogui.{name} the point as x=..., y=...")
        if (x is None) != (y is None):
            raise ParseError(f"pyautogui.{name} needs both x and y")
        if x is None and kind in ("move", "drag"):
            raise ParseError(f"pyautogui.{name} needs x and y")
        nx = _coord(x, "x", size) if x is not None else None
        ny = _coord(y, "y", size) if y is not None else None
        button = a.get("button", "left" if kind != "rightclick" else "right")
        if button not in ("left", "right", "middle", "primary", "secondary"):
            raise ParseError(f"button must be 'left', 'right' or 'middle', not {_short(repr(button), 30)}")
        button = {"primary": "left", "secondary": "right"}.get(button, button)
        clicks = _integer(a.get("clicks", 1), "clicks", 1, 3)
        if kind == "click" and button == "right" and clicks == 1:
            kind = "rightclick"
        return Action(kind, nx, ny, amount=clicks, button=button, seconds=seconds)
    if kind == "scroll":
        if "clicks" not in a:
            raise ParseError("pyautogui.scroll needs the number of clicks, e.g. pyautogui.scroll(-5)")
        amount = _integer(a["clicks"], "scroll clicks", -MAX_SCROLL, MAX_SCROLL)
        x, y = a.get("x"), a.get("y")
        if (x is None) != (y is None):
            raise ParseError("pyautogui.scroll needs both x and y, or neither")
        return Action("scroll", _coord(x, "x", size) if x is not None else None,
                      _coord(y, "y", size) if y is not None else None, amount=amount)
    if kind == "type":
        msg = a.get("message")
        if isinstance(msg, list):  # typewrite(['a', 'enter']) is a key sequence
            return Action("press", keys=tuple(_key(k, name) for k in msg), seconds=seconds)
        if not isinstance(msg, str):
            raise ParseError(f"pyautogui.{name} needs the text as a string")
        if len(msg) > MAX_TEXT:
            raise ParseError(f"pyautogui.{name}: {len(msg)} characters is too much for one step (max {MAX_TEXT})")
        return Action("type", text=msg, seconds=seconds)
    if kind == "press":
        keys = a.get("keys")
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys:
            raise ParseError("pyautogui.press needs a key name, e.g. pyautogui.press('enter')")
        presses = _integer(a.get("presses", 1), "presses", 1, MAX_PRESSES)
        return Action("press", keys=tuple(_key(k, name) for k in keys), amount=presses, seconds=seconds)
    if kind == "hotkey":
        flat: list = []
        for k in a["keys"]:
            flat += k if isinstance(k, list) else [k]
        if len(flat) > 4:
            raise ParseError("pyautogui.hotkey takes at most 4 keys")
        keys = tuple(_key(k, name) for k in flat)
        canon = {_KEY_ALIASES.get(k, k) for k in keys}
        if any(denied <= canon for denied in _DENIED_HOTKEYS):
            raise ParseError(f"the hotkey {'+'.join(keys)} is not allowed (it would end or lock the session)")
        return Action("hotkey", keys=keys, seconds=seconds)
    if kind == "wait":
        return Action("wait", seconds=_number(a.get("seconds"), "sleep seconds", 0.0, MAX_SECONDS))
    raise AssertionError(kind)


def is_modifier(key: str) -> bool:
    return key in _MODIFIERS


# ---- grounding ---------------------------------------------------------------------------------------

_XY = re.compile(r"x\s*=\s*(-?\d+(?:\.\d+)?)\s*,\s*y\s*=\s*(-?\d+(?:\.\d+)?)")
_PAIR = re.compile(r"[\[(]\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*[\])]")


def parse_point(answer: str, size: tuple[int, int] | None = None) -> tuple[float, float] | None:
    """The point a grounding answer designates, normalised to 0-1, or None.

    The first action with a point wins (ScreenSpot-Pro's Kimi wrapper takes the first `x=…, y=…`); when the
    code does not parse, the first `x=…, y=…` and then the first `[x, y]` / `(x, y)` in the text are used, as
    the lmms-eval and VLMEvalKit parsers do. Pixels (values above 1) are normalised by `size`.
    """
    try:
        for act in parse_answer(answer, size).actions:
            if act.has_point:
                return act.x, act.y
    except ParseError:
        pass
    for pattern in (_XY, _PAIR):
        for m in pattern.finditer(answer):
            try:
                return _coord(float(m.group(1)), "x", size), _coord(float(m.group(2)), "y", size)
            except ParseError:
                continue
    return None


def with_point(action: Action, x: float, y: float) -> Action:
    return replace(action, x=x, y=y)
