"""The benchmark plugin interface of `kvl eval` (issue #8; tasks.md §3).

A benchmark is any class registered under the `kvl.benchmarks` entry-point group that subclasses
`Benchmark` (or quacks like it). The runner (runner.py) owns everything generic: reading --limit, the model,
batching, `predictions.jsonl`, `--resume`, the progress bar, the table and `summary.json`. A benchmark owns
only what is specific to it, and every piece is a plain function of its inputs:

    load(data, images) -> Loaded          rows of the user's file -> Samples (+ rows it had to skip, with why)
    messages(sample)   -> chat messages   the prompt (the one published for Kimi-VL where there is one)
    score(prediction, sample) -> dict     pure: raw model text -> {"score": float, ...}; no model, no I/O
    aggregate(records) -> Aggregate       the official overall number and per-category breakdowns

`score` sees the model's raw text, thinking block included, so that the harness rule for thinking models
(keep what follows `◁/think▷`; an unclosed block is an empty answer) is part of what the unit tests pin down.
Nothing here imports torch, PIL or numpy: `kvl eval list` must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kvl_core.errors import KvlError


@dataclass
class Sample:
    """One model call. `inputs` feeds `messages` (image paths, base64 payloads, pages ...) and never reaches
    predictions.jsonl; `target` feeds `score`; `meta` (categories, groups) is copied into every prediction
    record, so `aggregate` works from records alone, including ones written by an earlier (resumed) run."""

    id: str
    inputs: dict[str, Any] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Skipped:
    id: str  # the sample id, or "line N" when the row did not get far enough to have one
    reason: str


@dataclass
class Loaded:
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)


@dataclass
class PaperScore:
    """A number the Kimi-VL report (or model card) gives for this benchmark, on the scale of `metric`."""

    value: float
    model: str = "Kimi-VL-A3B-Instruct"
    where: str = "report Table 3"


@dataclass
class Aggregate:
    """`metrics`: name -> value (the headline one is Benchmark.metric); `breakdowns`: dimension -> category ->
    {"n": count, "score": value}; `notes`: how this differs from the official tool, said once, in words;
    `counts`: integers worth reporting (tests run, answers guessed), kept apart from the scores."""

    metrics: dict[str, float]
    breakdowns: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


class Benchmark:
    """Base class for `kvl.benchmarks` plugins; subclasses set the class attributes and the four methods."""

    name: str = ""  # the entry-point name (`kvl eval NAME`)
    title: str = ""  # a human title for tables
    metric: str = "accuracy"  # the key in Aggregate.metrics that is the benchmark's headline number
    unit: str = "%"  # how the headline is shown: "%" (0-100), "points" (OCRBench's /1000), "" (raw)
    paper: PaperScore | None = None
    max_new_tokens: int = 128
    data_help: str = ""  # what --data should be, for `kvl eval list` and error messages
    # Options a user can set with `--set KEY=VALUE`; the defaults are the harness defaults.
    options: dict[str, Any] = {}

    def __init__(self, **options: Any):
        unknown = set(options) - set(type(self).options)
        if unknown:
            known = ", ".join(sorted(type(self).options)) or "none"
            raise KvlError(f"{self.name}: unknown option(s) {', '.join(sorted(unknown))} (known: {known})")
        self.options = {**type(self).options, **options}

    def load(self, data: Path, images: Path | None) -> Loaded:
        raise NotImplementedError

    def default_data(self, out: Path, limit: int | None) -> Path | None:
        """The data to use when --data is omitted (None: --data is required)."""
        return None

    def messages(self, sample: Sample) -> list[dict]:
        raise NotImplementedError

    def score(self, prediction: str, sample: Sample) -> dict[str, Any]:
        raise NotImplementedError

    def aggregate(self, records: list[dict]) -> Aggregate:
        return Aggregate({self.metric: mean_score(records)}, breakdowns(records, self.category_keys))

    # The meta keys `aggregate` breaks results down by (the default aggregate's per-category tables).
    category_keys: tuple[str, ...] = ("category",)


# ---- helpers shared by the built-ins ----------------------------------------------------------------

def mean_score(records: Iterable[dict], key: str = "score", scale: float = 100.0) -> float:
    vals = [float(r[key]) for r in records]
    return scale * sum(vals) / len(vals) if vals else 0.0


def breakdowns(records: list[dict], keys: Iterable[str], key: str = "score",
               scale: float = 100.0) -> dict[str, dict[str, dict[str, float]]]:
    """Mean `key` per value of each meta key in `keys` (records without the key are left out)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for k in keys:
        groups: dict[str, list[float]] = {}
        for r in records:
            if r.get(k) not in (None, ""):
                groups.setdefault(str(r[k]), []).append(float(r[key]))
        if groups:
            out[k] = {c: {"n": len(v), "score": scale * sum(v) / len(v)} for c, v in sorted(groups.items())}
    return out


def text_message(parts: list[dict], system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": parts}]


def image_part(ref: Any) -> dict:
    return {"type": "image", "image": ref}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def resolve_image(rel: str, bases: list[Path]) -> Path | None:
    """The first existing `base/rel`; None when the image is in none of the folders."""
    for b in bases:
        p = b / rel
        if p.is_file():
            return p
    return None


def check_rows(label: str, rows: list, required: Iterable[str],
               make: Callable[[int, dict], Sample | Skipped | None]) -> Loaded:
    """Rows -> Loaded. A file none of whose rows has the benchmark's keys is the wrong file (one-line error);
    a row missing keys, or one `make` rejects, is skipped and counted, never dropped silently."""
    required = list(required)
    if not rows:
        raise KvlError(f"{label}: no rows")
    dict_rows = [r for r in rows if isinstance(r, dict)]
    if not any(all(k in r for k in required) for r in dict_rows):
        first = sorted(dict_rows[0]) if dict_rows else type(rows[0]).__name__
        raise KvlError(f"{label}: not this benchmark's format (rows need {', '.join(required)}; "
                       f"the first row has {first})")
    out = Loaded([])
    for i, r in enumerate(rows):
        if hasattr(r, "line") and hasattr(r, "reason"):  # readers.BadLine: a line that did not parse
            out.skipped.append(Skipped(f"line {r.line}", r.reason))
            continue
        if not isinstance(r, dict):
            out.skipped.append(Skipped(f"row {i + 1}", f"expected an object, got {type(r).__name__}"))
            continue
        missing = [k for k in required if k not in r]
        if missing:
            out.skipped.append(Skipped(f"row {i + 1}", f"missing {', '.join(missing)}"))
            continue
        try:
            s = make(i, r)
        except (ValueError, TypeError, KeyError, SyntaxError) as e:
            s = Skipped(f"row {i + 1}", f"unusable row ({type(e).__name__}: {e})")
        if isinstance(s, Skipped):
            out.skipped.append(s)
        elif s is not None:
            out.samples.append(s)
    return out
