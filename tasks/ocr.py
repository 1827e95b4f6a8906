"""`kvl ocr`: images and PDFs to markdown, text, JSON or HTML (tasks.md §1.1; issue "kvl ocr").

Each page is rendered at the DPI that just fills the model's image budget (documents.fit_dpi), sent to the
model with an olmOCR/marker-style prompt (our own wording), and cleaned by ocr_text.clean_page. Pages
stream: one page (or one --batch-size group) is in memory at a time, and outputs are written as pages
complete into `<out>.partial`, renamed to `<out>` only when the whole document succeeded, so an interrupted
or failed run keeps its finished pages and a re-run redoes exactly the incomplete files.

`--text-layer`: `never` sends only pixels; `auto` (default) decides per page: a page with a usable text layer
is converted from the layer (text_layer.page_markdown, no model), any other page goes to the model, with
its layer text (an OCR layer) as a hint if it has one; `only` converts every page from its layer and never
loads a model. Each PageResult says which path it took and why (`reason`).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Annotated, Any, Callable, Iterator, Optional

import typer

from kvl_cli.options import ApiKeyOpt, BackendOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelOpt
from kvl_core.errors import KvlError
from kvl_core.prompts import ocr_prompt
from kvl_tasks import documents as D
from kvl_tasks.ocr_text import Writer, clean_page

HINT = "The page's embedded text layer, possibly out of order (trust the image for layout):\n{text}\n\n"
FORMATS = {"markdown": ".md", "text": ".txt", "json": ".json", "html": ".html"}
HINT_MARGIN = 8  # tokens of slack for BPE merges across the hint/instruction boundary


@dataclass
class OcrOptions:
    to: str = "markdown"
    pages: str | None = None
    dpi: float | None = None
    text_layer: str = "auto"  # auto | only | never
    keep_furniture: bool = False
    password: str | None = None
    max_new_tokens: int = 4096
    temperature: float = 0.0  # transcription wants the most likely text, not variety
    batch_size: int = 1


@dataclass
class PageResult:
    page: int
    size: list[int]  # [w, h] of the rendered page (the model's input before its own resize)
    dpi: float | None
    text: str
    tokens: int  # generated tokens (0 for text-layer pages)
    image_tokens: int
    seconds: float
    source: str  # "model" | "text-layer"
    hint_tokens: int = 0
    finish_reason: str = "stop"
    warnings: list[str] = field(default_factory=list)
    reason: str = ""  # why this page took its path (text layer or model)


def build_prompt(keep_furniture: bool) -> str:
    # In core: kvl-nano is trained on exactly this wording (kvl_core/synth).
    return ocr_prompt(keep_furniture)


def page_messages(engine: Any, page: D.Page, opts: OcrOptions, hint: str) -> tuple[list[dict], int]:
    """The user turn for one page; the text-layer hint is clipped so that prompt + hint leave at least as
    many tokens for the answer as the hint takes (the answer restates the text, with markup)."""
    prompt = build_prompt(opts.keep_furniture)
    msgs = [{"role": "user", "content": [{"type": "image", "image": page.image}, {"type": "text", "text": prompt}]}]
    if not hint:
        return msgs, 0
    proc = engine.processor
    framed = [{"role": "user", "content": [msgs[0]["content"][0], {"type": "text", "text": HINT.format(text="")},
                                           msgs[0]["content"][1]]}]
    room = (D.context_length(engine) - D.prompt_tokens(proc, framed) - HINT_MARGIN) // 2
    hint = D.clip_tokens(proc.tokenizer, hint.strip(), room)
    if not hint:
        return msgs, 0
    msgs[0]["content"].insert(1, {"type": "text", "text": HINT.format(text=hint)})
    return msgs, len(proc.tokenizer.encode(hint))


def layer_page(doc: D.Document, n: int, opts: OcrOptions, reason: str, warn: list[str]) -> PageResult:
    """One page converted from its own text layer (text_layer.page_markdown), no model."""
    t0 = time.perf_counter()
    w, h = doc.size_pt(n)
    clean, _ = clean_page(doc.markdown(n, opts.keep_furniture), opts.keep_furniture)
    return PageResult(n, [round(w), round(h)], 72.0, clean, 0, 0, time.perf_counter() - t0, "text-layer",
                      warnings=warn, reason=reason)


def ocr_pages(engine: Any, doc: D.Document, numbers: list[int], opts: OcrOptions) -> Iterator[PageResult]:
    """OCR the given pages of an open document, one result per page, in order."""
    if opts.text_layer == "only":
        if doc.kind != "pdf":
            raise KvlError(f"{doc.label}: --text-layer only needs a PDF; an image has no text layer")
        for n in numbers:
            ok, why = doc.layer_verdict(n)
            warn = [] if ok else [f"page {n} has no usable text layer: {why}"]
            yield layer_page(doc, n, opts, "--text-layer only", warn)
        return
    limit, patch = engine.processor.image_processor.in_token_limit, engine.processor.image_processor.patch_size
    group: list[tuple[D.Page, list[dict], int, float, str]] = []

    def generate() -> Iterator[PageResult]:
        t1 = time.perf_counter()
        try:
            replies = engine.chat_batch([m for _, m, _, _, _ in group], max_new_tokens=opts.max_new_tokens,
                                        temperature=opts.temperature)
        except KvlError as e:
            raise KvlError(f"{doc.label}: page {group[0][0].number}: {e}") from None
        share = (time.perf_counter() - t1) / len(group)
        for (pg, _, hint_tokens, render_s, why), reply in zip(group, replies):
            text, truncated = clean_page(reply.text, opts.keep_furniture)
            warn = []
            if truncated:
                warn.append(f"page {pg.number}: the model's reasoning never closed; no page text")
            elif reply.finish_reason == "length":
                warn.append(f"page {pg.number}: stopped at the token limit; the page may be cut off")
            yield PageResult(pg.number, list(pg.size), pg.dpi, text, reply.completion_tokens,
                             engine.processor.image_processor.plan(*pg.size).tokens, render_s + share, "model",
                             hint_tokens, reply.finish_reason, warn, why)
        group.clear()

    for i, n in enumerate(numbers):
        why = "--text-layer never" if opts.text_layer == "never" else ""
        if opts.text_layer == "auto":
            # A page whose layer is its text is converted from the layer, with no model; only image pages
            # (scans, invisible OCR layers, garbled glyph codes) reach the model.
            ok, why = doc.layer_verdict(n)
            if ok:
                if group:
                    yield from generate()  # earlier model pages first: output stays in page order
                yield layer_page(doc, n, opts, why, [])
                continue
        t0 = time.perf_counter()
        page = doc.render(n, D.page_dpi(doc, n, limit, patch, opts.dpi), with_text=opts.text_layer == "auto")
        hint = page.text if opts.text_layer == "auto" and D.usable_text(page.text) else ""
        msgs, hint_tokens = page_messages(engine, page, opts, hint)
        group.append((page, msgs, hint_tokens, time.perf_counter() - t0, why))
        if len(group) >= max(1, opts.batch_size):
            yield from generate()
    if group:
        yield from generate()


def output_path(out: Path, rel: Path, fmt: str, taken: set[Path]) -> Path:
    """`out/rel` with the format's suffix; `a.pdf` and `a.png` in one folder become a.md and a.png.md."""
    path = out / rel.with_suffix(FORMATS[fmt])
    if path in taken:
        path = out / rel.parent / (rel.name + FORMATS[fmt])
    taken.add(path)
    return path


def run_document(engine: Any, source: D.Source, opts: OcrOptions, fh: IO[str],
                 on_page: Callable[[PageResult], None] | None = None, model_name: str = "") -> list[PageResult]:
    """OCR one source into `fh`; raises KvlError on the first failing page (pages before it are written)."""
    with D.open_document(source, opts.password) as doc:
        numbers = D.parse_pages(opts.pages, doc.count, doc.label)
        meta = {"source": source.label, "model": model_name, "text_layer": opts.text_layer, "page_count": doc.count}
        writer = Writer(fh, opts.to, len(numbers) > 1 or doc.count > 1, source.label, meta)
        try:
            for r in ocr_pages(engine, doc, numbers, opts):
                writer.page(r)
                if on_page:
                    on_page(r)
        finally:
            writer.close()
    return writer.records


def count_pages(source: D.Source, opts: OcrOptions) -> int:
    """Pages a source will contribute (for the progress total); 0 if it cannot be opened (reported later)."""
    try:
        with D.open_document(source, opts.password) as doc:
            return len(D.parse_pages(opts.pages, doc.count, doc.label))
    except KvlError:
        return 0


@dataclass
class Summary:
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    pages: int = 0
    seconds: float = 0.0


def run_batch(engine: Any, sources: list[D.Source], opts: OcrOptions, out: Path | None, force: bool = False,
              report: Callable[[str, str], None] | None = None, progress: Any = None, stdout: IO[str] | None = None,
              model_name: str = "") -> Summary:
    """OCR every source; one output per source under `out` (or `stdout` for a single source). A failing
    source is reported through `report` and skipped; the caller turns `Summary.failed` into the exit code."""
    report = report or (lambda level, msg: print(f"{level}: {msg}", file=sys.stderr))
    summary, taken, t0 = Summary(), set(), time.perf_counter()
    plan = []
    for s in sources:
        dest = output_path(out, s.rel, opts.to, taken) if out is not None else None
        if dest is not None and dest.exists() and not force:
            summary.skipped.append(str(dest))
        else:
            plan.append((s, dest))
    total = sum(count_pages(s, opts) for s, _ in plan)
    task = progress.add_task("ocr", total=total) if progress is not None and total else None

    for source, dest in plan:
        done = 0

        def on_page(r: PageResult) -> None:
            nonlocal done
            done += 1
            for w in r.warnings:
                report("warning", f"{source.label}: {w}")
            if task is not None:
                progress.advance(task)

        partial = dest.with_name(dest.name + ".partial") if dest is not None else None
        try:
            if partial is None:
                run_document(engine, source, opts, stdout or sys.stdout, on_page, model_name)
            else:
                try:
                    partial.parent.mkdir(parents=True, exist_ok=True)
                    fh = partial.open("w", encoding="utf-8")
                except OSError as e:
                    raise KvlError(f"{dest}: cannot write output ({e.strerror or e})") from None
                with fh:
                    run_document(engine, source, opts, fh, on_page, model_name)
                os.replace(partial, dest)
                summary.written.append(str(dest))
        except Exception as e:  # noqa: BLE001 -- one failing file must not end the batch
            summary.failed.append(source.label)
            msg = str(e) if isinstance(e, KvlError) else D._msg(e)
            msg = msg if msg.startswith(source.label) else f"{source.label}: {msg}"
            if partial is not None and partial.exists() and not done:
                partial.unlink()  # nothing finished: no file at all
            elif partial is not None and partial.exists():
                msg += f" (finished pages kept in {partial})"
            report("error", msg)
        summary.pages += done
    summary.seconds = time.perf_counter() - t0
    return summary


# ---- CLI -----------------------------------------------------------------------------------------

Format = Enum("Format", {k: k for k in FORMATS}, type=str)
TextLayer = Enum("TextLayer", {k: k for k in ("auto", "only", "never")}, type=str)


def prepare_out(out: Path) -> None:
    """Fail before any model work when --out cannot hold results."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise KvlError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise KvlError(f"{out}: the output folder is not writable")


def ocr(
    inputs: Annotated[list[str], typer.Argument(help="Files or folders (recursive); - reads stdin.", show_default=False)],
    to: Annotated[Format, typer.Option("--to", help="Output format.")] = Format.markdown,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write one file per input here (same relative tree).")] = None,
    pages: Annotated[Optional[str], typer.Option(help="Pages to read, e.g. 1-3,7,10- (default: all).")] = None,
    dpi: Annotated[Optional[float], typer.Option(help="Render PDFs at this DPI (default: what fills the model's image budget).")] = None,
    text_layer: Annotated[TextLayer, typer.Option(
        "--text-layer", help="PDF text layer: auto = per page, the layer where usable, else the model; only = the layer (no model); never.")] = TextLayer.auto,
    keep_furniture: Annotated[bool, typer.Option("--keep-furniture", help="Keep running headers, footers, page numbers.")] = False,
    password: Annotated[Optional[str], typer.Option(help="Password of encrypted PDFs.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite outputs that already exist.")] = False,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    max_new_tokens: Annotated[int, typer.Option(help="Answer budget per page in tokens.")] = 4096,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Pages generated together (helps on a GPU).")] = 1,
) -> None:
    """Images and PDFs to markdown (or text, JSON, HTML)."""
    from kvl_cli.output import err_console, print_error, print_warning, progress

    to, text_layer = Format(to).value, TextLayer(text_layer).value
    opts = OcrOptions(to, pages, dpi, text_layer, keep_furniture, password, max_new_tokens, temperature, batch_size)
    sources, unsupported = D.discover(inputs)
    if unsupported:
        print_warning(f"skipped {unsupported} file(s) of unsupported types (kvl ocr reads {D.KINDS_HELP})")
    if not sources:
        raise KvlError(f"{', '.join(inputs)}: no {D.KINDS_HELP} files found")
    if out is None and len(sources) > 1:
        raise KvlError(f"{len(sources)} inputs: pass --out DIR to write one file per input")
    if out is not None:
        prepare_out(out)
    engine, name = None, ""
    if text_layer != "only":
        from kvl_core.backend import load_engine

        engine = load_engine(model, backend, base_url, api_key, device=device, dtype=dtype)
        name = engine.name
    report = {"error": print_error, "warning": print_warning}
    stdout = sys.stdout  # captured before the progress display can redirect it
    # on a terminal the live bar is gone when done (stdout and the summary are what stays); in a log its final
    # state is kept
    with progress("page", transient=err_console.is_terminal) as bar:
        # both streams on one terminal: write pages through the live display (it keeps the bar below them)
        sink = sys.stdout if stdout.isatty() and err_console.is_terminal else stdout
        summary = run_batch(engine, sources, opts, out, force, lambda lvl, m: report[lvl](m), bar, sink, name)
    if out is not None:
        rate = summary.pages / summary.seconds if summary.seconds else 0.0
        err_console.print(f"{len(summary.written)} written, {len(summary.skipped)} skipped (output exists; --force "
                          f"redoes them), {len(summary.failed)} failed; {summary.pages} pages in "
                          f"{summary.seconds:.1f} s ({rate:.2f} pages/s)", markup=False, highlight=False)
    if summary.failed:
        raise typer.Exit(1)
