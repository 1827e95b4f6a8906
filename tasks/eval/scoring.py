"""Answer extraction and string metrics shared by the built-in benchmarks (tasks.md §3.2).

Each function is our own implementation of a rule a reference harness applies; the docstrings name the
harness and the rule, tasks.md §3.2 has the pseudo-code. All pure: text in, value out.
"""

from __future__ import annotations

import re
import string
from typing import Mapping, Sequence

THINK_OPEN, THINK_CLOSE = "◁think▷", "◁/think▷"


def strip_thinking(text: str | None) -> str:
    """What a harness scores of a thinking model's output (VLMEvalKit kimi_vl `extract_summary`): the text after
    the last `◁/think▷`; an opened block that never closed (a truncated output) is an empty answer."""
    text = text or ""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1].strip()
    if THINK_OPEN in text:
        return ""
    return text.strip()


# ---- edit distances ------------------------------------------------------------------------------------
# rapidfuzz is what the official scorers call (olmOCR-bench, lmms-eval's ANLS through `Levenshtein`-compatible
# distances): using it is the exact rule, and its C++ kernels score whole pages in microseconds.

def levenshtein(a: Sequence, b: Sequence) -> int:
    """Unit-cost insert/delete/substitute distance of two strings or two sequences of hashable items."""
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.distance(a, b)


def indel_ratio(a: str, b: str) -> float:
    """rapidfuzz's `fuzz.ratio` / 100: 1 - indel distance / (len a + len b); two empty strings are 1.0 here
    (rapidfuzz says 100 too)."""
    from rapidfuzz import fuzz

    return fuzz.ratio(a, b) / 100.0


# ---- ANLS -------------------------------------------------------------------------------------------

def anls(prediction: str, answers: Sequence[str], threshold: float = 0.5) -> float:
    """DocVQA/InfoVQA ANLS of one prediction (VLMEvalKit `anls_compute`, lmms-eval `anls`): normalise both
    sides (strip, lower, collapse spaces), but divide the distance by the length of the *raw* strings; a
    similarity below the threshold counts 0."""
    def norm(s: str) -> str:
        return " ".join(str(s).strip().lower().split())

    best = 0.0
    for gt in answers:
        gt = str(gt)
        length = max(len(gt.upper()), len(prediction.upper()))
        nl = levenshtein(norm(gt), norm(prediction)) / length if length else 0.0
        best = max(best, 1.0 - nl)
    return best if best >= threshold else 0.0


# ---- multiple choice -------------------------------------------------------------------------------

REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
            "I'm sorry, but without the image provided", "Cannot determine the answer")


def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer_option`: blank out `.()[],:;!*#{}`, split on whitespace; exactly one choice letter
    among the tokens, and among the last ones, is the answer; no letter but a lone `Z` is Z; a refusal is Z;
    else the bold `answer is **X**` phrase."""
    if any(r in answer for r in REFUSALS):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    splits = mod.split()
    hits = [c for c in choices if c in splits]
    if len(hits) == 1:
        if splits.index(hits[0]) > len(splits) - 5:
            return hits[0]
    elif not hits and "Z" in splits:
        return "Z"
    m = re.search(r"(?:correct )?answer is:?\s*\*\*\(?([A-Z])\)?\*\*", answer, re.IGNORECASE)
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return None


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the one option whose text is a substring of a not-too-long answer."""
    low = answer.lower()
    if len(low) > 2 * sum(len(str(v)) for v in choices.values()):
        return None
    hits = [k for k, v in choices.items() if str(v).lower() and str(v).lower() in low]
    return hits[0] if len(hits) == 1 else None


def can_infer(answer: str, choices: Mapping[str, str]) -> str | None:
    """VLMEvalKit `can_infer` (exact-matching mode): the letter, "Z" for a refusal, None when unparsable."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


# lmms-eval's shared multiple-choice extractor (`_task_utils/mcq_extract`, used by its MMStar, Video-MME and MLVU
# tasks): every way a letter can appear is a candidate with a rank; the best rank wins, then the later position.
_RANKS = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
          "space": 2, "fallback": 0}
_SHAPES = (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"), ("space", "{} "))
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
            "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
            "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
            "i pick", "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは")


def extract_mcq_answer(text: str | None, letters: Sequence[str] = "ABCDEFGH") -> str:
    """The letter a free-form answer picks (lmms-eval `extract_mcq_answer`), "" when none.

    Candidates: `(X)`, `X.`, `X:`, `X)`, `X ` at their last occurrence; after the first occurrence of each answer
    phrase ("the answer is", "i choose", ...), the next X anywhere; a standalone X at the start (rank 10) or the
    end (9). Only when nothing matched: the last bare X. Outer `,.!?;:'"` are stripped first, and the text is
    padded with one space each side."""
    if not text or not text.strip():
        return ""
    s = text.strip()
    for ch in ",.!?;:'\"":
        s = s.strip(ch)
    s = f" {s} "
    found: list[tuple[str, int, str]] = []
    for shape, pattern in _SHAPES:
        for ch in letters:
            pos = s.rfind(pattern.format(ch))
            if pos != -1:
                found.append((ch, pos, shape))
    low = s.lower()
    for phrase in _PHRASES:
        at = low.find(phrase)
        if at != -1:
            for ch in letters:
                pos = s.find(ch, at + len(phrase))
                if pos != -1:
                    found.append((ch, pos, "phrase"))
    core = s.strip()
    for ch in letters:
        if core.startswith(ch) and (len(core) == 1 or not core[1].isalpha()):
            found.append((ch, 0, "start"))
    for ch in letters:
        if core.endswith(ch) and (len(core) == 1 or not core[-2].isalpha()):
            found.append((ch, len(s) - 1, "end"))
    if not found:
        found = [(ch, s.rfind(ch), "fallback") for ch in letters if ch in s]
    if not found:
        return ""
    best = found[0]
    for cand in found[1:]:  # ties keep the earlier candidate
        if (_RANKS[cand[2]], cand[1]) > (_RANKS[best[2]], best[1]):
            best = cand
    return best[0]


# The answer prefixes lmms-eval's LongVideoBench task strips before taking the first option letter.
LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                "The correct option is", "Best answer:", "Best option:")


def first_letter_after_prefixes(text: str, letters: str = "ABCDE", prefixes: Sequence[str] = LVB_PREFIXES) -> str:
    """LongVideoBench's `parse_multi_choice_response` (and the original Video-MME `extract_characters_regex`):
    strip the answer prefixes, then: more than 10 words and no option letter -> ""; otherwise the first option
    letter anywhere in the text."""
    s = text.strip()
    for p in prefixes:
        s = s.replace(p, "")
    if len(s.split()) > 10 and not re.search(f"[{letters}]", s):
        return ""
    m = re.search(f"[{letters}]", s)
    return m.group(0) if m else ""


# ---- boxed answers -------------------------------------------------------------------------------------

def last_boxed(text: str) -> str | None:
    r"""The content of the last `\boxed{...}` with nested braces matched (VLMEvalKit kimi_vl boxed mode);
    the same extractor the RL rewards use."""
    from kvl_core.training.rewards import last_boxed as extract

    found = extract(text)
    return found.strip() if found is not None else None


def letters_of(n: int) -> str:
    return string.ascii_uppercase[:n]
