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


_FORMATS = (  # (rank, pattern): lmms-eval's priority extractor as tasks.md §3.2 describes it
    (7, r"answer\s*(?:is|:)\s*:?\s*\(?\**([{L}])\b"),
    (6, r"\(([{L}])\)"),
    (5, r"(?<![A-Za-z])([{L}])\."),
    (4, r"(?<![A-Za-z])([{L}]):"),
    (3, r"(?<![A-Za-z(])([{L}])\)"),
    (2, r"(?<![A-Za-z])([{L}])(?= )"),
)


def extract_mcq_answer(text: str, letters: Sequence[str] = "ABCD") -> str:
    """The letter a free-form answer picks: a bare letter at the start (rank 10) beats one at the end (9), then
    "answer is X" (7), "(X)" (6), "X." (5), "X:" (4), "X)" (3), "X " (2); within the best rank the last
    occurrence wins. "" when no letter is found."""
    text = (text or "").strip()
    if not text:
        return ""
    L = "".join(letters)
    best: tuple[int, int, str] | None = None

    def offer(rank: int, pos: int, letter: str) -> None:
        nonlocal best
        if best is None or (rank, pos) > (best[0], best[1]):
            best = (rank, pos, letter)

    m = re.match(rf"[\s*(\[]*([{L}])(?![A-Za-z0-9])", text)
    if m:
        offer(10, m.start(1), m.group(1))
    m = re.search(rf"(?<![A-Za-z0-9])([{L}])[\s*).\]]*$", text)
    if m:
        offer(9, m.start(1), m.group(1))
    for rank, pat in _FORMATS:
        for m in re.finditer(pat.replace("{L}", L), text, re.IGNORECASE if rank == 7 else 0):
            if m.group(1).upper() in L:
                offer(rank, m.start(1), m.group(1).upper())
    return best[2] if best else ""


VIDEO_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                  "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:")


def first_letter_after_prefixes(text: str, letters: str = "ABCD") -> str:
    """Video-MME/LongVideoBench `extract_characters_regex`: strip the answer prefixes (including the two
    accidentally concatenated ones of the reference), then: more than 10 words and no option letter -> "";
    otherwise the first option letter in the text."""
    s = text.strip()
    for p in VIDEO_PREFIXES:
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
