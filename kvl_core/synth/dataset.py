"""Writing synthetic training and held-out sets as files (PNG + JSONL in the trainer's formats, see
`kvl_core.training.data`; Kimi-VL report §2.3-§2.4 stages: caption -> ViT, text/ocr/ground -> pre-training
and SFT).

Determinism: sample i of (split, kind, seed) is drawn from its own `random.Random` seeded with the string
"kvl-synth/{split}/{kind}/{seed}/{i}/{attempt}" (string seeds are hashed with SHA-512 by `random`, so they
do not depend on PYTHONHASHSEED), and PNGs are written with fixed settings; the same (kind, n, seed) gives
byte-identical files in any process, with any number of workers.

Train / held-out separation: every document or screen has a content key (a document's Markdown; a
screen's titles, labels, states and boxes). A SHA-256 of the key puts 1 in `RESERVE_MOD` keys in the
held-out namespace. Training samples in it are rejected and redrawn (next attempt); held-out samples
outside it are rejected. So no held-out page text or screen can ever appear in any training set written
with any seed (including "text" pre-training lines and caption images), whatever the seeds are.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_user_text, ocr_prompt
from kvl_core.synth import captions as CAP
from kvl_core.synth.documents import DocPlan, DocSpec, draw_document, glyphs, plan_document, plan_line
from kvl_core.synth.screens import ScreenPlan, ScreenSpec, Target, draw_screen, ground_truth_answer, plan_screen
from kvl_core.synth.screens import glyphs as screen_glyphs

TRAIN_KINDS = ("ocr", "ground", "caption", "text", "line", "screen")
SCREEN_TARGETS = 3  # "screen" lines per rendered screen: the reading stages read several targets per image
HELDOUT_KINDS = ("ocr", "ground")
HELDOUT_SEED = 20250410
RESERVE_MOD = 8
_MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class SynthConfig:
    """What `write_train`/`heldout` render (plain dataclass so recipes can hold one)."""

    doc: DocSpec = DocSpec()
    screen: ScreenSpec = ScreenSpec()
    caption_weights: tuple[float, float, float] = (0.45, 0.3, 0.25)  # document, screen, shapes
    targets_per_screen: int = 1  # ground lines per rendered screen (they share the PNG)


# ---- keys and the reserved namespace ------------------------------------------------------------

def doc_key(plan: DocPlan) -> str:
    return "doc\0" + plan.markdown


def screen_key(plan: ScreenPlan) -> str:
    parts = [f"{plan.size[0]}x{plan.size[1]}"]
    for win in plan.windows:
        parts.append(f"W{win.title}{win.box}")
        parts.extend(f"{w.kind}|{w.label}|{w.state}|{w.box}" for w in win.widgets)
    return "screen\0" + "\n".join(parts)


def is_reserved(key: str) -> bool:
    """True when `key` belongs to the held-out namespace."""
    return hashlib.sha256(("kvl-synth-v1\0" + key).encode()).digest()[0] % RESERVE_MOD == 0


def _rng(split: str, kind: str, seed: int, index: int, attempt: int) -> random.Random:
    return random.Random(f"kvl-synth/{split}/{kind}/{seed}/{index}/{attempt}")


def _accept(split: str, key: str) -> bool:
    return is_reserved(key) == (split == "heldout")


def _plan(split: str, kind: str, seed: int, index: int, plan_fn, key_fn, spec, skip: set | None = None):
    """(rng, plan, key) of the first attempt whose content key lies in `split`'s namespace (and not in `skip`)."""
    for attempt in range(_MAX_ATTEMPTS):
        rng = _rng(split, kind, seed, index, attempt)
        plan = plan_fn(rng, spec)
        key = key_fn(plan)
        if _accept(split, key) and (skip is None or key not in skip):
            return rng, plan, key
    raise RuntimeError(f"could not draw a {kind} sample in the {split} namespace")  # pragma: no cover


def _plan_doc(split: str, kind: str, seed: int, index: int, spec: DocSpec, skip: set | None = None):
    return _plan(split, kind, seed, index, plan_document, doc_key, spec, skip)


def _plan_line(split: str, kind: str, seed: int, index: int, spec: DocSpec, skip: set | None = None):
    return _plan(split, kind, seed, index, plan_line, doc_key, spec, skip)


def _plan_screen(split: str, kind: str, seed: int, index: int, spec: ScreenSpec, skip: set | None = None):
    return _plan(split, kind, seed, index, plan_screen, screen_key, spec, skip)


def _png(img) -> bytes:
    from kvl_core.synth.common import is_gray

    if is_gray(img):  # lossless and 3x less to compress; the trainer's loader converts back to RGB
        img = img.convert("L")
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)  # level 1: ~3x faster than the default, files ~30% larger
    return buf.getvalue()


def pick_targets(rng: random.Random, targets: list[Target], k: int) -> list[Target]:
    """k distinct targets, kinds balanced (a kind first, uniformly, then one of its targets)."""
    left = list(targets)
    out: list[Target] = []
    while left and len(out) < k:
        kinds = sorted({t.kind for t in left})
        kind = rng.choice(kinds)
        t = rng.choice([t for t in left if t.kind == kind])
        left.remove(t)
        out.append(t)
    return out


# ---- one sample (a pure function of its arguments; runs in worker processes too) ------------------

def _train_item(kind: str, seed: int, index: int, cfg: SynthConfig) -> tuple[list[dict], bytes | None]:
    """(JSON records with "{image}" standing for the image path, PNG bytes or None)."""
    if kind in ("ocr", "text", "line"):
        planner = _plan_line if kind == "line" else _plan_doc
        rng, plan, _ = planner("train", kind, seed, index, cfg.doc)
        if kind == "text":
            return [{"text": plan.markdown}], None
        drawn: dict = {}
        img = draw_document(plan, rng, cfg.doc, record=drawn)
        rec = {"messages": [
            {"role": "user", "content": [{"type": "image", "image": "{image}"}, {"type": "text", "text": ocr_prompt()}]},
            {"role": "assistant", "content": plan.markdown}], "layout": plan.layout,
            # where every character was drawn: the targets of the dense reading stages (training/reading.py)
            "glyphs": _glyph_rows(glyphs(plan, drawn["angle"]))}
        return [rec], _png(img)
    if kind in ("ground", "screen"):
        rng, plan, _ = _plan_screen("train", kind, seed, index, cfg.screen)
        img = draw_screen(plan, rng, cfg.screen)
        recs = []
        for t in pick_targets(rng, plan.targets, _per_item(kind, cfg)):
            recs.append({"messages": [
                {"role": "system", "content": GUI_SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "image", "image": "{image}"},
                                             {"type": "text", "text": gui_user_text(t.instruction)}]},
                {"role": "assistant", "content": ground_truth_answer(t, plan.size)}], "target": t.kind})
        if kind == "screen":
            recs = [{**r, "glyphs": _glyph_rows(screen_glyphs(plan))} for r in recs]
        return recs, _png(img)
    if kind == "caption":
        rng = _rng("train", kind, seed, index, 0)
        source = rng.choices(CAP.CAPTION_SOURCES, weights=cfg.caption_weights)[0]
        if source == "document":
            rng, plan, _ = _plan_doc("train", "caption-doc", seed, index, cfg.doc)
            img, cap = draw_document(plan, rng, cfg.doc), CAP.caption_document(plan, rng)
        elif source == "screen":
            rng, splan, _ = _plan_screen("train", "caption-screen", seed, index, cfg.screen)
            img, cap = draw_screen(splan, rng, cfg.screen), CAP.caption_screen(splan, rng)
        else:
            img, cap = CAP.render_shapes(rng)
        return [{"image": "{image}", "caption": cap, "source": source}], _png(img)
    raise ValueError(f"unknown synthetic data kind {kind!r} (one of {', '.join(TRAIN_KINDS)})")


def _glyph_rows(gl) -> list[list]:
    """Glyphs as compact JSON rows [char, x, y, bold] (read back by training/reading.py)."""
    return [[g.char, round(g.x, 1), round(g.y, 1), int(g.bold)] for g in gl]


def _per_item(kind: str, cfg: SynthConfig) -> int:
    return {"ground": cfg.targets_per_screen, "screen": SCREEN_TARGETS}.get(kind, 1)


def _train_job(args: tuple) -> tuple[list[dict], bytes | None]:
    return _train_item(*args)


def _fill(rec: Any, path: str) -> Any:
    if isinstance(rec, dict):
        return {k: _fill(v, path) for k, v in rec.items()}
    if isinstance(rec, list):
        return [_fill(v, path) for v in rec]
    return path if rec == "{image}" else rec


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_train(kind: str, out_dir: str | os.PathLike, n: int, seed: int = 0, *, config: SynthConfig | None = None,
                workers: int = 1, on_progress: Callable[[int], None] | None = None) -> Path:
    """Write `n` training lines of `kind` (ocr | ground | caption | text) to `out_dir/{kind}.jsonl`, images to
    `out_dir/{kind}/NNNNNN.png` (paths in the JSONL are relative to its folder). Returns the JSONL path.

    ocr      chat: user [image, ocr_prompt()] -> assistant Markdown, plus "glyphs" (every drawn character's
             [char, x, y, bold]) for the reading stages
    line     the same for one line of text (corpus words, random strings, numbers)
    ground   chat: system GUI_SYSTEM_PROMPT, user [image, gui_user_text(instruction)] -> gui answer
    screen   the same, SCREEN_TARGETS lines per screen, plus "glyphs" (text and control marks) for the
             reading stages
    caption  {"image", "caption"} for the CoCa stage
    text     {"text": Markdown} documents as pre-training text (no images)
    `on_progress(k)` is called with the number of lines just written (for a progress bar).
    """
    if kind not in TRAIN_KINDS:
        raise ValueError(f"unknown synthetic data kind {kind!r} (one of {', '.join(TRAIN_KINDS)})")
    if n < 1:
        raise ValueError("n must be >= 1")
    cfg = config or SynthConfig()
    out = Path(out_dir)
    img_dir = out / kind
    out.mkdir(parents=True, exist_ok=True)
    if kind != "text":
        img_dir.mkdir(exist_ok=True)
    per = _per_item(kind, cfg)
    n_items = -(-n // per)
    records: list[dict] = []
    jobs = ((kind, seed, i, cfg) for i in range(n_items))
    for i, (recs, png) in enumerate(_map(_train_job, jobs, workers)):
        rel = f"{kind}/{i:06d}.png"
        if png is not None:
            (img_dir / f"{i:06d}.png").write_bytes(png)
        recs = [_fill(r, rel) for r in recs][: n - len(records)]
        for j, r in enumerate(recs):
            records.append({"id": f"{kind}-{seed}-{i:06d}" + (f"-{j}" if per > 1 else ""), **r})
        if on_progress:
            on_progress(len(recs))
    path = out / f"{kind}.jsonl"
    _write_jsonl(path, records)
    return path


def _map(fn, jobs, workers: int):
    if workers <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing as mp

    # fork where available: spawn/forkserver re-import the caller's __main__, which fails for `python -`
    # and notebooks (workers then die and get respawned forever). The children only run Pillow/numpy
    # code, never torch, so torch threads in the parent do not matter.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        yield from pool.imap(fn, jobs, chunksize=16)


def heldout(kind: str, n: int, out_dir: str | os.PathLike, seed: int = HELDOUT_SEED, *,
            config: SynthConfig | None = None) -> Path:
    """Write an evaluation set of `n` samples to `out_dir/heldout_{kind}.jsonl` (+ PNGs in
    `out_dir/heldout_{kind}/`), from the reserved namespace (never in any training set) and without
    duplicates. Lines: ocr {"id", "image", "markdown", "layout"}; ground {"id", "image", "instruction",
    "bbox": [x1, y1, x2, y2], "width", "height", "kind", "label"}."""
    if kind not in HELDOUT_KINDS:
        raise ValueError(f"no held-out format for {kind!r} (one of {', '.join(HELDOUT_KINDS)})")
    if n < 1:
        raise ValueError("n must be >= 1")
    cfg = config or SynthConfig()
    out = Path(out_dir)
    name = f"heldout_{kind}"
    img_dir = out / name
    img_dir.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    records = []
    for i in range(n):
        rel = f"{name}/{i:06d}.png"
        if kind == "ocr":
            rng, plan, key = _plan_doc("heldout", kind, seed, i, cfg.doc, seen)
            img = draw_document(plan, rng, cfg.doc)
            records.append({"id": f"{name}-{i:06d}", "image": rel, "markdown": plan.markdown, "layout": plan.layout})
        else:
            rng, splan, key = _plan_screen("heldout", kind, seed, i, cfg.screen, seen)
            img = draw_screen(splan, rng, cfg.screen)
            t = pick_targets(rng, splan.targets, 1)[0]
            records.append({"id": f"{name}-{i:06d}", "image": rel, "instruction": t.instruction, "bbox": list(t.bbox),
                            "width": splan.size[0], "height": splan.size[1], "kind": t.kind, "label": t.label})
        seen.add(key)
        (img_dir / f"{i:06d}.png").write_bytes(_png(img))
    path = out / f"{name}.jsonl"
    _write_jsonl(path, records)
    return path


__all__ = ["HELDOUT_KINDS", "HELDOUT_SEED", "RESERVE_MOD", "SynthConfig", "TRAIN_KINDS", "doc_key", "heldout",
           "is_reserved", "pick_targets", "screen_key", "write_train"]
