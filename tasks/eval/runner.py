"""The generic part of `kvl eval` (issue #8): samples -> batched generation -> scores -> summary, with
`predictions.jsonl` written (and flushed) one line per scored sample so that `--resume` after a crash or
Ctrl-C redoes only what was never scored.

Failure policy: a row the benchmark cannot use (missing image, malformed line) and a sample the model
cannot take (its prompt does not fit, its image does not decode) are *skipped*: counted, listed in
`summary.json` with the reason, and shown; never dropped silently and never scored as wrong. Skipped samples
are not in predictions.jsonl, so a resumed run tries them again. A run that scores nothing fails.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kvl_core.errors import KvlError
from kvl_tasks.eval.base import Aggregate, Benchmark, Sample, Skipped
from kvl_tasks.eval.scoring import strip_thinking

PREDICTIONS = "predictions.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"


def load_engine(model: str | None, device: str = "cpu", dtype: str | None = None, backend: str | None = None,
                base_url: str | None = None, api_key: str | None = None) -> Any:
    """The one place `kvl eval` loads a model: this machine, or an OpenAI-compatible server."""
    from kvl_core.backend import load_engine as load

    return load(model, backend, base_url, api_key, device=device, dtype=dtype)


@dataclass
class EvalOptions:
    limit: int | None = None
    batch_size: int = 1
    max_new_tokens: int | None = None  # None: the benchmark's own default (the harness's)
    temperature: float = 0.0  # the reference harnesses decode greedily
    resume: bool = False


@dataclass
class RunResult:
    benchmark: str
    out: Path
    records: list[dict]
    skipped: list[Skipped]
    aggregate: Aggregate
    samples: int  # selected (after --limit)
    new: int  # scored in this run
    resumed: int  # taken from an earlier run's predictions.jsonl
    seconds: float  # the whole run: loading data and model, generating, scoring
    generation_seconds: float = 0.0  # model calls only (what samples/s is measured over)
    summary: dict = field(default_factory=dict)


def prompt_hash(messages: list[dict]) -> str:
    """A short hash of a prompt's text and image references: tells apart predictions made with other prompts."""
    h = hashlib.sha1()
    for m in messages:
        h.update(m["role"].encode())
        parts = m["content"] if isinstance(m["content"], list) else [{"type": "text", "text": m["content"]}]
        for p in parts:
            if p.get("type") == "text":
                h.update(p["text"].encode())
            else:
                ref = p.get("image")
                h.update(str(ref).encode() if isinstance(ref, (str, os.PathLike)) else b"<image>")
    return h.hexdigest()[:12]


def prepare_out(out: Path, bench: Benchmark, data: Path | None, resume: bool) -> dict[str, dict]:
    """Create --out and return the records already scored there (only with --resume)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KvlError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise KvlError(f"{out}: the output folder is not writable")
    preds, run = out / PREDICTIONS, out / RUN
    has_preds = preds.exists() and preds.stat().st_size > 0
    if has_preds and not resume:
        raise KvlError(f"{preds}: exists from an earlier run; pass --resume to continue it, or another --out")
    if resume and run.exists():
        try:
            before = json.loads(run.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = {}
        if before.get("benchmark") not in (None, bench.name):
            raise KvlError(f"{out}: holds a {before['benchmark']} run, not {bench.name}; pick another --out")
    run.write_text(json.dumps({"benchmark": bench.name, "data": str(data) if data else None}, indent=2) + "\n",
                   encoding="utf-8")
    if not (resume and has_preds):
        return {}
    drop_torn_tail(preds)
    return read_predictions(preds)


def drop_torn_tail(path: Path) -> None:
    """Cut a last line that a kill left without its newline, so that appended records start on a line of
    their own (that sample was never scored: the resumed run redoes it)."""
    with path.open("rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def read_predictions(path: Path) -> dict[str, dict]:
    """id -> record of a predictions.jsonl; a torn last line (a crash mid-write) is ignored, as it must be."""
    done: dict[str, dict] = {}
    with path.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and "id" in rec and "score" in rec:
                done[str(rec["id"])] = rec
    return done


def run_eval(bench: Benchmark, data: Path | None, images: Path | None, out: Path, opts: EvalOptions,
             engine_factory: Callable[[], Any], progress: Any = None,
             warn: Callable[[str], None] | None = None) -> RunResult:
    t0 = time.perf_counter()
    warn = warn or (lambda msg: None)
    if data is None:
        data = bench.default_data(out, opts.limit) if hasattr(bench, "default_data") else None
        if data is None:
            raise KvlError(f"{bench.name}: --data is needed ({bench.data_help or 'the benchmark file'})")
    loaded = bench.load(Path(data), Path(images) if images else None)
    skipped = list(loaded.skipped)
    samples = loaded.samples if opts.limit is None else loaded.samples[: opts.limit]
    if not samples:
        why = f"; {len(skipped)} row(s) skipped, first: {skipped[0].id}: {skipped[0].reason}" if skipped else ""
        raise KvlError(f"{data}: no usable {bench.name} samples{why}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise KvlError(f"{data}: sample ids are not unique (the loader must make them so)")
    done = prepare_out(out, bench, Path(data), opts.resume)
    wanted = set(ids)
    records = {i: r for i, r in done.items() if i in wanted}
    resumed = len(records)
    todo = [s for s in samples if s.id not in records]

    new, gen_seconds = 0, 0.0
    if todo:
        engine = engine_factory()
        t_gen = time.perf_counter()
        max_new = opts.max_new_tokens or bench.max_new_tokens
        task = progress.add_task(bench.name, total=len(todo)) if progress is not None else None
        with (out / PREDICTIONS).open("a", encoding="utf-8") as fh:
            for k in range(0, len(todo), max(1, opts.batch_size)):
                group = todo[k: k + max(1, opts.batch_size)]
                for sample, result in _generate(bench, engine, group, max_new, opts.temperature, skipped):
                    if result is not None:
                        rec = make_record(bench, sample, result)
                        fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                        fh.flush()
                        records[sample.id] = rec
                        new += 1
                    if task is not None:
                        progress.advance(task)
        gen_seconds = time.perf_counter() - t_gen
    ordered = [records[i] for i in ids if i in records]
    if not ordered:
        failed = skipped[len(loaded.skipped):]  # the samples tried in this run, before the rows never usable
        first = (failed or skipped)[0] if skipped else None
        why = f" (first: {first.id}: {first.reason})" if first else ""
        raise KvlError(f"{bench.name}: nothing could be scored; {len(failed)} of {len(todo)} sample(s) failed"
                       f"{why}; {len(loaded.skipped)} row(s) skipped while loading")
    agg = bench.aggregate(ordered)
    result = RunResult(bench.name, out, ordered, skipped, agg, len(samples), new, resumed,
                       time.perf_counter() - t0, gen_seconds)
    result.summary = summary_dict(bench, result, data, opts)
    (out / SUMMARY).write_text(json.dumps(result.summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return result


def _generate(bench: Benchmark, engine: Any, group: list[Sample], max_new: int, temperature: float,
              skipped: list[Skipped]):
    """(sample, ChatResult | None) per sample of `group`, in order. One batch call; when it fails, each sample
    alone, so that one sample the model cannot take does not cost its batch-mates their scores."""
    prepared: list[tuple[Sample, list[dict]]] = []
    for s in group:
        try:
            prepared.append((s, bench.messages(s)))
        except (KvlError, ValueError, OSError) as e:
            skipped.append(Skipped(s.id, str(e)))
            yield s, None
    if not prepared:
        return
    try:
        replies = engine.chat_batch([m for _, m in prepared], max_new_tokens=max_new, temperature=temperature)
        for (s, m), r in zip(prepared, replies):
            r.prompt_hash = prompt_hash(m)
            yield s, r
        return
    except KvlError as e:
        if len(prepared) == 1:
            skipped.append(Skipped(prepared[0][0].id, str(e)))
            yield prepared[0][0], None
            return
    for s, m in prepared:
        try:
            r = engine.chat_batch([m], max_new_tokens=max_new, temperature=temperature)[0]
            r.prompt_hash = prompt_hash(m)
            yield s, r
        except KvlError as e:
            skipped.append(Skipped(s.id, str(e)))
            yield s, None


def make_record(bench: Benchmark, sample: Sample, result: Any) -> dict:
    scored = bench.score(result.text, sample)
    if "score" not in scored:
        raise KvlError(f"{bench.name}: its score() returned no 'score' (a bug in the benchmark plugin)")
    rec = {"id": sample.id, **sample.meta, "prediction": result.text}
    answer = strip_thinking(result.text)
    if answer != result.text:
        rec["answer"] = answer
    rec.update(scored)
    rec["finish_reason"] = getattr(result, "finish_reason", None)
    rec["tokens"] = getattr(result, "completion_tokens", None)
    rec["prompt_hash"] = getattr(result, "prompt_hash", None)
    return rec


def summary_dict(bench: Benchmark, r: RunResult, data: Path, opts: EvalOptions) -> dict:
    headline = r.aggregate.metrics.get(bench.metric)
    paper = bench.paper
    return {
        "benchmark": bench.name,
        "title": bench.title,
        "data": str(data),
        "metric": bench.metric,
        "value": headline,
        "unit": bench.unit,
        "paper": None if paper is None else {"value": paper.value, "model": paper.model, "where": paper.where},
        "metrics": r.aggregate.metrics,
        "breakdowns": r.aggregate.breakdowns,
        "notes": r.aggregate.notes,
        "counts": {
            "samples": r.samples, "scored": len(r.records), "skipped": len(r.skipped), "new": r.new,
            "resumed": r.resumed, "unparsable": sum(1 for x in r.records if x.get("parsed") is False),
            **(getattr(r.aggregate, "counts", None) or {}),
        },
        "skipped": [{"id": s.id, "reason": s.reason} for s in r.skipped],
        "generation": {"max_new_tokens": opts.max_new_tokens or bench.max_new_tokens,
                       "temperature": opts.temperature, "batch_size": opts.batch_size},
        "options": dict(getattr(bench, "options", {}) or {}),
        "seconds": round(r.seconds, 3),
        "generation_seconds": round(r.generation_seconds, 3),
        "samples_per_second": round(r.new / r.generation_seconds, 3) if r.generation_seconds and r.new else None,
    }
