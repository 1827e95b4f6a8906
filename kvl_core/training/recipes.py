"""Multi-stage recipes: the paper's pipeline (§2.3–2.4, Figure 4) run end to end on generated data.

A recipe names a preset, how much synthetic data of each kind to generate (kvl_core/synth), and the
stages to run in order, each starting from the previous stage's `final/` checkpoint:

    vit (CoCa: ViT + caption decoder) -> align (LLM frozen) -> pretrain (joint) -> sft (answers only)

or, for a model learning to read from scratch, the reading stages of training/reading.py first
(read-vit: dense glyph labels; read-lm: the LM on oracle visual tokens; read-joint), which is all that
nano runs.
`nano` is the recipe of the built-in kvl-nano model. Everything is seeded: the same seed regenerates
byte-identical data and, on the same hardware and torch build, the same weights. A run folder holds

    data/<kind>/<kind>.jsonl + images    generated once, reused on resume
    heldout/<kind>/heldout_<kind>.jsonl  evaluation sets from the reserved held-out slice
    tokenizer/                           the BPE tokenizer learned on the corpus (presets with merges)
    <stage>/                             the trainer's run folder of each stage (final/ = its output)
    recipe.json                          the recipe, per-stage wall time, final losses, held-out metrics
    eval/<kind>/, recipe.png             `kvl train --recipe` only: held-out predictions and the figure

Re-running with `resume=True` skips finished stages and resumes an interrupted one from its last
checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from kvl_core.config import NANO_MERGES
from kvl_core.errors import KvlError


@dataclass
class StageRun:
    stage: str  # a name of kvl_core.training.stages, or a reading stage (training/reading.py READ_MODES)
    steps: int
    data: list[str]  # synthetic kinds as KIND[:WEIGHT] ("ocr:2")
    lr: float
    seq_len: int = 0  # trainer stages
    batch_tokens: int = 0  # trainer stages
    micro_rows: int = 4
    name: str = ""  # run folder and log key (default: the stage name; set it when a stage repeats)
    batch: int = 0  # reading stages: images per step
    lr_vision: float = 0.0  # reading stages: peak LR of the vision tower, projector and dense head
    positions: bool = False  # reading stages: oracle tokens carry their position (grounding)

    @property
    def key(self) -> str:
        return self.name or self.stage


@dataclass
class Recipe:
    name: str
    preset: str
    samples: dict[str, int]  # training samples generated per kind
    heldout: dict[str, int]  # evaluation samples per kind
    stages: list[StageRun]
    merges: int = 0  # BPE merges learned on the corpus (0: byte-level tokenizer)
    doc_fonts: tuple[str, ...] = ()  # font families of generated documents (empty: the synth default)
    random_words: float = 0.0  # share of generated documents whose words are random strings
    notes: str = ""
    scale: float = 1.0  # what `scaled` multiplied the steps and training data by (recorded in recipe.json)
    # the verbs the exported model may run when it stands in for an unconfigured model (kvl_model.json
    # "skills", kvl_core.hub): only what the recipe taught, so nothing else prints fluent noise
    skills: tuple[str, ...] = ("ocr", "ground")


MAX_SCALE = 1000.0


def scaled(rec: Recipe, factor: float) -> Recipe:
    """`rec` with every stage's steps and every kind's training samples multiplied by `factor` (fresh
    data, not repeats: the generator draws new samples). Batches, learning rates, the held-out sets and
    the tokenizer size stay as they are, so a larger factor is simply more training: the knob for a
    machine with more compute than the recipe was sized for (a GPU, many cores)."""
    if not (0 < factor <= MAX_SCALE):
        raise KvlError(f"--scale must be in (0, {MAX_SCALE:g}], got {factor:g}")
    if factor == 1:
        return rec
    grow = lambda n: max(1, round(n * factor))  # noqa: E731
    return replace(rec, samples={k: grow(n) for k, n in rec.samples.items()},
                   stages=[replace(st, steps=grow(st.steps)) for st in rec.stages], scale=rec.scale * factor)


def nano() -> Recipe:
    """kvl-nano on a 2-core CPU (measured times in docs/nano.md).

    Reading first, split in two so that neither half waits for the other (training/reading.py): the
    vision tower learns glyphs from per-patch labels on crops of documents (read-vit, the paper's ViT
    stage with a dense reading target instead of CoCa captions), the language model learns to read
    out perfect visual tokens into markdown without encoding any image (read-lm), then both are
    trained together on lines and then whole pages (read-joint), which is where reading improves most
    per CPU-minute (docs/nano.md), so it gets most of the budget. Grounding is not taught: a joint
    stage on screens and pages (`screen` samples; the smoke recipe keeps it) cost reading 5-7 points
    of CER for 1-5% clicks in the box, so the exported model's only skill is `ocr`.
    ("ground" samples are generated only for the BPE corpus and the held-out click score.)"""
    from kvl_core.synth.common import DOC_FAMILIES

    return Recipe(
        name="nano", preset="nano", merges=NANO_MERGES, doc_fonts=DOC_FAMILIES, random_words=0.5,
        samples={"ocr": 12000, "ground": 1000, "line": 24000},
        heldout={"ocr": 100, "ground": 100},
        stages=[
            StageRun("read-vit", steps=3000, data=["ocr"], lr=2e-3, lr_vision=2e-3, batch=16),
            # the read-out is learned on single lines first (a few dozen image tokens, one row), then pages
            # small batches: the read-out is learned per update (a 64-line batch learns ~4x slower per line)
            StageRun("read-lm", steps=1200, data=["line"], lr=3e-3, batch=16, name="read-lm-lines"),
            StageRun("read-lm", steps=600, data=["ocr"], lr=2e-3, batch=8),
            StageRun("read-joint", steps=300, data=["line"], lr=1e-3, lr_vision=5e-4, batch=16, name="read-joint-lines"),
            StageRun("read-joint", steps=3000, data=["ocr"], lr=1e-3, lr_vision=5e-4, batch=4),
        ],
        skills=("ocr",),
        notes="read-vit -> read-lm -> read-joint on generated documents",
    )


def smoke() -> Recipe:
    """The nano pipeline shrunk to seconds on the tiny preset (tests, `--recipe smoke`)."""
    return Recipe(
        name="smoke", preset="tiny", random_words=0.5,
        samples={"caption": 16, "text": 16, "ocr": 16, "ground": 16, "screen": 6},
        heldout={"ocr": 4, "ground": 4},
        stages=[
            StageRun("read-vit", steps=2, data=["ocr"], lr=1e-3, lr_vision=1e-3, batch=2),
            StageRun("read-lm", steps=2, data=["ocr"], lr=1e-3, batch=2),
            StageRun("read-joint", steps=1, data=["ocr"], lr=1e-3, lr_vision=1e-3, batch=2),
            StageRun("read-joint", steps=1, data=["screen", "ocr"], lr=1e-3, lr_vision=1e-3, batch=2, positions=True,
                     name="read-joint-screens"),
            StageRun("vit", steps=2, data=["caption"], lr=1e-3, seq_len=64, batch_tokens=4 * 64, micro_rows=4),
            StageRun("align", steps=2, data=["ocr", "ground"], lr=1e-3, seq_len=512, batch_tokens=2 * 512,
                     micro_rows=2),
            StageRun("pretrain", steps=2, data=["text", "ocr"], lr=1e-3, seq_len=512, batch_tokens=2 * 512,
                     micro_rows=2),
            StageRun("sft", steps=2, data=["ocr", "ground"], lr=1e-3, seq_len=512, batch_tokens=2 * 512,
                     micro_rows=2),
        ],
    )


RECIPES: dict[str, Callable[[], Recipe]] = {"nano": nano, "smoke": smoke}


def recipe(name: str, scale: float = 1.0) -> Recipe:
    try:
        rec = RECIPES[name]()
    except KeyError:
        raise KvlError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}") from None
    return scaled(rec, scale)


# ---- running ------------------------------------------------------------------------------------

def _kinds(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        kind, _, weight = spec.partition(":")
        out.append((kind, weight))
    return out


def synth_config(rec: Recipe):
    """The generator settings of a recipe (the synth defaults where it sets nothing)."""
    from kvl_core.synth.dataset import SynthConfig
    from kvl_core.synth.documents import DocSpec

    doc = DocSpec(random_words=rec.random_words, **({"fonts": tuple(rec.doc_fonts)} if rec.doc_fonts else {}))
    return SynthConfig(doc=doc)


def prepare_data(rec: Recipe, out: Path, seed: int, emit: Callable[[str, dict], None],
                 workers: int | None = None) -> tuple[dict[str, Path], dict[str, Path]]:
    """Generate (or reuse) the training and held-out sets; returns ({kind: train JSONL}, {kind: held-out JSONL}).
    The files do not depend on `workers` (default: every core, at most 16). Held-out documents use the
    recipe's fonts but never random words: they measure reading in the synthetic world itself."""
    import os
    from dataclasses import replace as dc_replace

    from kvl_core import synth

    workers = workers or min(16, os.cpu_count() or 1)
    config = synth_config(rec)
    held_config = dc_replace(config, doc=dc_replace(config.doc, random_words=0.0))
    tag = f" {rec.random_words} {','.join(rec.doc_fonts)}" if (rec.random_words or rec.doc_fonts) else ""

    paths: dict[str, Path] = {}
    for kind, n in rec.samples.items():
        paths[kind] = _generate(out / "data" / kind, f"{n} {seed}{tag}", emit, f"{n} {kind} training samples",
                                lambda folder, kind=kind, n=n: synth.write_train(kind, folder, n, seed, config=config,
                                                                                 workers=workers))
    held: dict[str, Path] = {}
    for kind, n in rec.heldout.items():
        held[kind] = _generate(out / "heldout" / kind, f"{n}{tag}", emit, f"{n} held-out {kind} samples",
                               lambda folder, kind=kind, n=n: synth.heldout(kind, n, folder, config=held_config))
    return paths, held


def _generate(folder: Path, key: str, emit, what: str, write: Callable[[Path], Path]) -> Path:
    """Run `write(folder)` unless a previous run finished it with the same parameters (`key`); a
    `.complete` marker written last makes an interrupted generation start over."""
    done = folder / ".complete"
    if done.exists():
        recorded_key, _, name = done.read_text().partition("\n")
        if recorded_key == key and (folder / name.strip()).exists():
            return folder / name.strip()
    t0 = time.perf_counter()
    emit("note", {"text": f"generating {what}"})
    path = write(folder)
    done.write_text(f"{key}\n{path.relative_to(folder)}\n")
    emit("note", {"text": f"{what}: {time.perf_counter() - t0:.0f} s"})
    return path


def _corpus(paths: dict[str, Path], per_kind: int) -> list[tuple[str, int]]:
    """The texts BPE learns from: the prompts of the first `per_kind` lines of each training set (they
    repeat in every sample, so BPE learns them whole), but no answers (page markdown, click
    coordinates) and no `line` texts: merges of page words and numbers make answer tokens span several
    glyphs in vocabulary-dependent chunks ("Notebook" -> N|ot|eb|ook, "18277" -> 18|2|77), which the
    read-out then has to learn on top of reading; without them a page is written nearly byte by byte."""
    texts: list[tuple[str, int]] = []
    for kind, path in paths.items():
        if kind in ("line", "screen"):  # reading-stage kinds: their prompts repeat the other kinds'
            continue
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= per_kind:
                    break
                row = json.loads(line)
                if "messages" in row:
                    row = [m for m in row["messages"] if m.get("role") != "assistant"]
                texts += [(t, 1) for t in _texts(row)]
    return texts


def _texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        if node.get("type") in ("image", "video"):
            return []
        return [t for k, v in node.items() if k not in ("image", "frames", "role", "type") for t in _texts(v)]
    if isinstance(node, list):
        return [t for v in node for t in _texts(v)]
    return [node] if isinstance(node, str) else []


def prepare_tokenizer(rec: Recipe, out: Path, paths: dict[str, Path]) -> Path | None:
    """Learn the preset's BPE merges on the generated corpus (once); None for byte-level presets."""
    from kvl_core.config import preset
    from kvl_core.processor.tokenizer import KimiTokenizer, save_bpe_tokenizer, train_bpe

    if rec.merges == 0:
        return None
    folder = out / "tokenizer"
    if not (folder / "tokenizer_config.json").exists():
        merges = train_bpe(_corpus(paths, per_kind=2000), rec.merges)
        save_bpe_tokenizer(folder, preset(rec.preset).text.vocab_size, merges)
    tok = KimiTokenizer.from_pretrained(folder)
    cfg = preset(rec.preset)
    if (tok.bos_id, tok.eos_id, tok.media_pad_id) != (cfg.text.bos_token_id, cfg.text.eos_token_id,
                                                      cfg.media_placeholder_token_id):
        raise KvlError(f"{folder}: tokenizer ids do not match preset {rec.preset!r} (merges changed?)")
    return folder


def run(rec: Recipe, out: str | Path, seed: int = 0, resume: bool = False, device: str = "auto",
        on_event: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    """Run every stage of `rec` in order; returns the summary written to recipe.json."""
    from kvl_core.training.reading import READ_MODES, ReadConfig, train_reading
    from kvl_core.training.trainer import TrainConfig, train

    emit = on_event or (lambda kind, info: None)
    out = Path(out)
    log_path = out / "recipe.json"
    if out.exists() and any(out.iterdir()) and not resume:
        raise KvlError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"recipe": json.loads(json.dumps(asdict(rec))), "seed": seed, "stages": {}}
    if log_path.exists():
        previous_run = json.loads(log_path.read_text())
        recorded = {"scale": 1.0, **previous_run.get("recipe", summary["recipe"])}  # runs from before `scale`
        if recorded != summary["recipe"] or previous_run.get("seed", seed) != seed:
            raise KvlError(f"{out}: holds a run of another recipe, scale or seed (see its recipe.json); "
                           "resume it with the same settings or choose another --out")
        summary["stages"] = previous_run.get("stages", {})

    t0 = time.perf_counter()
    data, heldout = prepare_data(rec, out, seed, emit)
    tokenizer = prepare_tokenizer(rec, out, data)
    summary["data_seconds"] = round(time.perf_counter() - t0, 1)

    previous: Path | None = None
    for st in rec.stages:
        stage_dir = out / st.key
        final = stage_dir / "final"
        if final.exists():
            previous = final
            continue
        specs = [f"{data[k]}:{w}" if w else str(data[k]) for k, w in _kinds(st.data)]
        t1 = time.perf_counter()
        if st.stage in READ_MODES:
            result = train_reading(ReadConfig(
                st.stage, str(stage_dir), specs, steps=st.steps, batch=st.batch, positions=st.positions,
                lr=st.lr, lr_vision=st.lr_vision, model=str(previous) if previous else None,
                preset=None if previous else rec.preset,
                tokenizer=str(tokenizer) if tokenizer and not previous else None, seed=seed, device=device), emit)
            summary["stages"][st.key] = {"seconds": round(time.perf_counter() - t1, 1), "steps": st.steps,
                                         "loss": result.get("loss"), "final": str(final)}
            log_path.write_text(json.dumps(summary, indent=1) + "\n")
            previous = final
            continue
        cfg = TrainConfig(stage=st.stage, out=str(stage_dir), data=specs, steps=st.steps, lr=st.lr,
                          seq_len=st.seq_len, batch_tokens=st.batch_tokens, micro_rows=st.micro_rows,
                          seed=seed, device=device, resume=stage_dir.exists(),
                          model=str(previous) if previous else None,
                          preset=None if previous else rec.preset,
                          tokenizer=str(tokenizer) if tokenizer and not previous else None,
                          save_every=max(50, st.steps // 4), keep=1)
        result = train(cfg, on_event=emit)
        summary["stages"][st.key] = {"seconds": round(time.perf_counter() - t1, 1), "steps": st.steps,
                                     "loss": result.get("loss"), "final": str(final)}
        log_path.write_text(json.dumps(summary, indent=1) + "\n")
        previous = final
    summary["final"] = str(previous)
    summary["heldout"] = {k: str(p) for k, p in heldout.items()}
    log_path.write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def plot_recipe(out: Path) -> Path | None:
    """`out/recipe.png`: each stage's training loss side by side, and the held-out metrics (with the
    random-click baseline) when recipe.json has them. Skipped quietly without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    summary = json.loads((out / "recipe.json").read_text())
    stages = list(summary.get("stages", {}))
    evals = {k: v.get("metrics") for k, v in summary.get("eval", {}).items() if v.get("metrics")}
    n = len(stages) + (1 if evals else 0)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, name in zip(axes[0], stages):
        rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
        ax.set_title(f"{name} ({summary['stages'][name]['seconds'] / 60:.0f} min)")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.grid(alpha=0.3)
    if evals:
        ax = axes[0][-1]
        bars = {}
        if "ocr" in evals:
            bars["OCR CER %"] = evals["ocr"].get("cer")
            bars["OCR structure %"] = evals["ocr"].get("structure")
        if "ground" in evals:
            bars["click in box %"] = evals["ground"].get("accuracy")
            bars["random click %"] = evals["ground"].get("random_baseline")
        bars = {k: v for k, v in bars.items() if isinstance(v, (int, float))}
        ax.barh(list(bars), list(bars.values()), color=["#c44", "#48c", "#4a4", "#aaa"][: len(bars)])
        for i, v in enumerate(bars.values()):
            ax.text(v, i, f" {v:.1f}", va="center")
        ax.set_xlim(0, 110), ax.set_title("held-out")
    fig.suptitle(f"kvl train --recipe {summary['recipe']['name']} (seed {summary.get('seed', 0)})")
    fig.tight_layout()
    png = out / "recipe.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


SHIPPED_FILES = ("config.json", "tiktoken.model", "tokenizer_config.json", "preprocessor_config.json")


def export(final: str | Path, dest: str | Path, dtype: str = "bfloat16",
           generation: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a trained checkpoint as a shippable model folder: weights cast to `dtype` (one
    safetensors file), config, tokenizer and processor files, `generation_config.json`, and
    `kvl_model.json` (`extra`: recipe, seed, metrics) — no optimizer or trainer state. The folder
    loads through the same `from_pretrained` path as any real checkpoint. Replaces `dest` atomically."""
    import shutil

    import torch

    from kvl_core.model import KimiVLForConditionalGeneration

    final, dest = Path(final), Path(dest)
    model = KimiVLForConditionalGeneration.from_pretrained(final, dtype=getattr(torch, dtype))
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in SHIPPED_FILES[1:]:
        shutil.copyfile(final / name, tmp / name)
    (tmp / "generation_config.json").write_text(json.dumps(generation or {"temperature": 0.0, "max_new_tokens": 512},
                                                           indent=1) + "\n")
    if extra is not None:
        (tmp / "kvl_model.json").write_text(json.dumps(extra, indent=1) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


__all__ = ["Recipe", "StageRun", "RECIPES", "recipe", "scaled", "run", "prepare_data", "nano", "smoke", "export", "plot_recipe"]
