"""Verifiable 0/1 rewards for RL (paper §2.4 "r(x, y, y*) ∈ {0, 1}"; Kimi k1.5 §2.3.1, §2.3.3, §2.3.5;
design: shared/design/training.md §3).

A checker turns (the model's answer text, the problem's ground truth) into a reward in {0, 1}. The answer
text is what follows a thinking model's `◁/think▷` (the reasoning is never graded; a thought that never
closed has no answer and scores 0). Rule-based checkers ship here:

  exact    normalised string match (case, surrounding whitespace/quotes/`$`, trailing punctuation, inner
           whitespace runs); the ground truth may list several accepted strings
  numeric  the last number in the answer (1,234 / -3.5 / 3/4 / 1e-3 / 45%) equals the ground truth
           within a relative/absolute tolerance; parsed with `fractions.Fraction`, never `eval`
  choice   the multiple-choice letter the answer commits to ("B", "(B)", "B.", "Answer: B", "the answer
           is (b)") equals the ground-truth letter
  boxed    the content of the last `\\boxed{...}` (braces balanced) compared numerically when both sides
           are numbers, else as normalised LaTeX-free strings

More can be plugged in with `register_checker(name)(fn)` where `fn(answer, truth, options) -> bool`.
`length_rewards` is k1.5's length reward over the k samples of one problem.

Reward config (`--reward-config FILE`, JSON): `{"default_checker": "numeric", "numeric": {"rel_tol": 1e-6},
"choice": {"letters": "ABCD"}, "length_weight": 0.5}`; unknown keys or bad values are a one-line error
naming `file:line`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Sequence

from kvl_core.errors import KvlError, read_user_file

CheckerFn = Callable[[str, Any, dict], bool]
CHECKERS: dict[str, CheckerFn] = {}
# Options each built-in checker understands, with defaults; a config naming others is refused.
CHECKER_OPTIONS: dict[str, dict[str, Any]] = {
    "exact": {"case_sensitive": False},
    "numeric": {"rel_tol": 1e-6, "abs_tol": 1e-9},
    "choice": {"letters": "ABCDEFGHIJ"},
    "boxed": {"rel_tol": 1e-6, "abs_tol": 1e-9, "case_sensitive": False},
}


def register_checker(name: str, options: dict[str, Any] | None = None) -> Callable[[CheckerFn], CheckerFn]:
    """Add a checker usable as `"checker": name` in problem files and reward configs."""
    def deco(fn: CheckerFn) -> CheckerFn:
        CHECKERS[name] = fn
        CHECKER_OPTIONS.setdefault(name, dict(options or {}))
        return fn
    return deco


# ---- normalisation and extraction ------------------------------------------------------------------

_TRAILING = ".。!,;:"


def normalize_text(s: str, case_sensitive: bool = False) -> str:
    s = s.strip()
    # repeatedly peel wrappers that carry no meaning for the comparison
    prev = None
    while prev != s:
        prev = s
        s = s.strip().rstrip(_TRAILING).strip()
        for a, b in (('"', '"'), ("'", "'"), ("`", "`"), ("$", "$"), ("**", "**")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a): len(s) - len(b)]
    s = re.sub(r"\s+", " ", s)
    return s if case_sensitive else s.casefold()


# integers with thousands separators, decimals, scientific notation, simple fractions, percentages
_NUMBER = re.compile(r"(?<![\w.])([-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?)(\s*%)?")


def parse_number(s: str) -> Fraction | None:
    """A number written as a whole string ("1,234", "-3.5", "3/4", "2e3", "45%"), or None."""
    s = s.strip().rstrip(_TRAILING).strip().strip("$").strip()
    m = _NUMBER.fullmatch(s)
    return _to_fraction(m.group(1), bool(m.group(2))) if m else None


def _to_fraction(num: str, percent: bool) -> Fraction | None:
    num = num.replace(",", "").replace("−", "-").replace(" ", "")
    try:
        if "/" in num:
            a, b = num.split("/")
            if Fraction(b) == 0:
                return None
            value = Fraction(a) / Fraction(b)
        else:
            value = Fraction(num)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def last_number(text: str) -> Fraction | None:
    """The last number written in `text` (the answer a response ends on), or None."""
    found = None
    for m in _NUMBER.finditer(text):
        value = _to_fraction(m.group(1), bool(m.group(2)))
        if value is not None:
            found = value
    return found


def numbers_equal(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    if a == b:
        return True
    return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced; None when absent."""
    starts = [m.end() for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text)]
    if not starts:
        return None
    i = starts[-1]
    depth, j = 1, i
    while j < len(text):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
        j += 1
    return None  # unbalanced: the box was never closed


def _strip_latex(s: str) -> str:
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|quad)", "", s)
    s = re.sub(r"\\d?frac\{([^{}]*)\}\{([^{}]*)\}", r"\1/\2", s)
    return s.replace("{", "").replace("}", "").replace(" ", "")


_CHOICE_PATTERNS = (
    # an explicit commitment wins; the last one counts (models restate after reconsidering)
    re.compile(r"(?:answer|option|choice)\s*(?:is|:|=)?\s*(?:option\s*)?[\(\[]?\s*([A-Za-z])\s*[\)\]]?(?![A-Za-z])", re.I),
)


def extract_choice(text: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The option letter an answer commits to, upper-case, or None when it is ambiguous or absent."""
    letters = letters.upper()
    hits = [m.group(1).upper() for pat in _CHOICE_PATTERNS for m in pat.finditer(text)]
    hits = [h for h in hits if h in letters]
    if hits:
        return hits[-1]
    t = text.strip()
    # a reply that starts with the letter: "B", "(b)", "C. because ..." (but not "A cat ...")
    m = re.fullmatch(r"[\(\[]?\s*([A-Za-z])\s*(?:[\)\]:.]\s*(?:\s.*)?)?", t, re.S) or \
        re.fullmatch(r"[\(\[]\s*([A-Za-z])\s*[\)\]].*", t, re.S)
    if m and m.group(1).upper() in letters and not t[m.end(1):m.end(1) + 1].isalpha():
        return m.group(1).upper()
    # a single stand-alone capital option letter anywhere ("I pick C because ...")
    lone = set(re.findall(rf"(?<![A-Za-z])([{re.escape(letters)}])(?![A-Za-z])", text))
    lone.discard("A")  # the article "A" is not a choice
    lone.discard("I")  # nor the pronoun
    return lone.pop() if len(lone) == 1 else None


# ---- the built-in checkers -------------------------------------------------------------------------

def _truths(truth: Any) -> list[str]:
    return [str(t) for t in truth] if isinstance(truth, (list, tuple)) else [str(truth)]


@register_checker("exact")
def check_exact(answer: str, truth: Any, options: dict) -> bool:
    cs = bool(options.get("case_sensitive", False))
    a = normalize_text(answer, cs)
    return any(a == normalize_text(t, cs) for t in _truths(truth))


@register_checker("numeric")
def check_numeric(answer: str, truth: Any, options: dict) -> bool:
    got = last_number(answer)
    if got is None:
        return False
    for t in _truths(truth):
        want = parse_number(t)
        if want is not None and numbers_equal(got, want, options.get("rel_tol", 1e-6), options.get("abs_tol", 1e-9)):
            return True
    return False


@register_checker("choice")
def check_choice(answer: str, truth: Any, options: dict) -> bool:
    got = extract_choice(answer, options.get("letters", "ABCDEFGHIJ"))
    return got is not None and got in {normalize_text(t).upper().strip("()") for t in _truths(truth)}


@register_checker("boxed")
def check_boxed(answer: str, truth: Any, options: dict) -> bool:
    got = last_boxed(answer)
    if got is None:
        return False
    cs = bool(options.get("case_sensitive", False))
    got_s = _strip_latex(got)
    got_n = parse_number(got_s)
    for t in _truths(truth):
        t_s = _strip_latex(last_boxed(t) or t)
        t_n = parse_number(t_s)
        if got_n is not None and t_n is not None:
            if numbers_equal(got_n, t_n, options.get("rel_tol", 1e-6), options.get("abs_tol", 1e-9)):
                return True
        elif normalize_text(got_s, cs) == normalize_text(t_s, cs):
            return True
    return False


# ---- config ------------------------------------------------------------------------------------------

@dataclass
class RewardConfig:
    default_checker: str = "exact"
    options: dict[str, dict[str, Any]] = field(default_factory=lambda: {k: dict(v) for k, v in CHECKER_OPTIONS.items()})
    length_weight: float = 1.0  # w_len of r += w_len * len_reward (k1.5 §2.3.3)

    def check(self, checker: str | None, answer: str, truth: Any) -> float:
        name = checker or self.default_checker
        fn = CHECKERS.get(name)
        if fn is None:
            raise KvlError(f"unknown checker {name!r}; choose from {', '.join(sorted(CHECKERS))}")
        return 1.0 if fn(answer, truth, self.options.get(name, {})) else 0.0


def _line_of(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if f'"{key}"' in line:
            return i
    return 1


def load_reward_config(path: str | Path | None) -> RewardConfig:
    """The reward config file, or the defaults when `path` is None. Errors name `file:line`."""
    cfg = RewardConfig()
    if path is None:
        return cfg
    label = str(path)
    raw = read_user_file(path, label, "a JSON reward config")
    try:
        text = raw.decode("utf-8")
        obj = json.loads(text)
    except UnicodeDecodeError:
        raise KvlError(f"{label}:1: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise KvlError(f"{label}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise KvlError(f"{label}:1: expected a JSON object")
    for key, value in obj.items():
        where = f"{label}:{_line_of(text, key)}"
        if key == "default_checker":
            if value not in CHECKERS:
                raise KvlError(f"{where}: unknown checker {value!r}; choose from {', '.join(sorted(CHECKERS))}")
            cfg.default_checker = value
        elif key == "length_weight":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise KvlError(f"{where}: 'length_weight' must be a number >= 0")
            cfg.length_weight = float(value)
        elif key in CHECKERS:
            if not isinstance(value, dict):
                raise KvlError(f"{where}: '{key}' must be an object of checker options")
            known = CHECKER_OPTIONS.get(key, {})
            for opt, v in value.items():
                if opt not in known:
                    raise KvlError(f"{label}:{_line_of(text, opt)}: checker {key!r} has no option {opt!r} "
                                   f"(known: {', '.join(known) or 'none'})")
                if known[opt] is not None and type(v) is not type(known[opt]) and not (
                        isinstance(known[opt], float) and isinstance(v, int) and not isinstance(v, bool)):
                    raise KvlError(f"{label}:{_line_of(text, opt)}: option {key}.{opt} must be a "
                                   f"{type(known[opt]).__name__}, got {json.dumps(v)}")
                cfg.options[key][opt] = v
        else:
            raise KvlError(f"{where}: unknown key {key!r} (default_checker, length_weight, or a checker name: "
                           f"{', '.join(sorted(CHECKERS))})")
    return cfg


# ---- the length reward --------------------------------------------------------------------------------

def length_rewards(lengths: Sequence[int], correct: Sequence[float]) -> list[float]:
    """k1.5 §2.3.3 over the k samples of one problem: λ = 0.5 − (len − min)/(max − min); a correct
    sample gets λ (short ones a bonus, long ones a penalty), a wrong one min(0, λ) (only length is
    punished, shortness of a wrong answer is not rewarded). All equal lengths: zeros."""
    lo, hi = min(lengths), max(lengths)
    if hi == lo:
        return [0.0] * len(lengths)
    out = []
    for n, r in zip(lengths, correct):
        lam = 0.5 - (n - lo) / (hi - lo)
        out.append(lam if r >= 1.0 else min(0.0, lam))
    return out


__all__ = ["CHECKERS", "RewardConfig", "register_checker", "load_reward_config", "length_rewards", "normalize_text",
           "parse_number", "last_number", "last_boxed", "extract_choice"]
