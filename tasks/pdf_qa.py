"""`kvl pdf ask`: questions about long PDFs, answered from page images (tasks.md §1.5, §3.2 MMLongBench-Doc).

The MMLongBench-Doc convention: pages rendered at 144 dpi, at most 120, in document order, each preceded
by a text label `[p. N]` (kvl_core.processor.chat.image_parts) so the model can cite what it used. The
prompt asks for a concise answer with `[p. N]` citations and for exactly "Not answerable" when the pages
do not hold the answer, which is what the benchmark scores as correct for unanswerable questions.

When the pages do not fit the context budget (max context minus the answer budget) the session selects
pages (page_select: BM25 over the text layer, or over a quick OCR pass for pages without one) and says so.
Rendered pages are cached as PNG bytes, so follow-up questions (`--interactive`) re-render nothing and
120 cached pages take tens of MB rather than ~700 MB of raw pixels.
"""

from __future__ import annotations

import io
import math
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any, Callable, Optional

import typer

from kvl_cli.options import ApiKeyOpt, BackendOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelOpt
from kvl_core.errors import KvlError
from kvl_tasks import documents as D

MMLB_DPI = 144.0
MMLB_MAX_PAGES = 120
LABEL = "[p. {n}]"
PROMPT = ("Pages of a PDF document{partial}, each after its label [p. N]. Answer the question from these pages "
          "only, concisely, citing pages like [p. 3]. If they do not contain the answer, reply exactly: "
          "Not answerable\nQuestion: {question}")
PARTIAL = " ({shown} of its {total} pages, picked for the question)"
QUICK_OCR = "Transcribe the text on this page."
_CITE = re.compile(r"[\[(]\s*(?:pp?|pages?)\.?\s*(\d[\d\s,–-]*)[\])]", re.I)


@dataclass
class Answer:
    answer: str
    cited_pages: list[int]
    context_pages: list[int]
    selection: str  # "all" | "bm25"
    page_count: int
    not_answerable: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    reasoning: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def parse_citations(text: str, page_count: int) -> list[int]:
    """Pages cited as [p. 3], [pp. 3-5], (p. 2, 7), [page 4]: sorted, unique, inside the document."""
    pages: set[int] = set()
    for m in _CITE.finditer(text):
        for part in re.split(r"\s*,\s*", m.group(1).strip()):
            bounds = [int(x) for x in re.split(r"\s*[–-]\s*", part) if x.strip().isdigit()]
            if not bounds:
                continue
            lo, hi = bounds[0], bounds[-1]
            if hi - lo <= MMLB_MAX_PAGES:
                pages.update(p for p in range(lo, hi + 1) if 1 <= p <= page_count)
    return sorted(pages)


def is_not_answerable(answer: str) -> bool:
    return answer.strip().strip("*_\"'. ").lower().startswith("not answerable")


def page_ranges(pages: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7"."""
    out, i = [], 0
    while i < len(pages):
        j = i
        while j + 1 < len(pages) and pages[j + 1] == pages[j] + 1:
            j += 1
        out.append(str(pages[i]) if i == j else f"{pages[i]}-{pages[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class PdfSession:
    """One open document and a conversation about it; pages render once and stay cached."""

    engine: Any
    source: D.Source
    password: Optional[str] = None
    pages: Optional[str] = None  # --pages: restrict the document
    dpi: float = MMLB_DPI
    max_pages: int = MMLB_MAX_PAGES
    max_new_tokens: Optional[int] = None
    temperature: Optional[float] = None
    ocr_tokens: int = 256  # enough words per scanned page to rank it; a full transcription is not needed
    on_ocr: Optional[Callable[[int, int], None]] = None  # (done, total) during the quick OCR pass
    history: list[tuple[str, str]] = field(default_factory=list)
    rendered: dict[int, bytes] = field(default_factory=dict)
    texts: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.doc = D.open_document(self.source, self.password)
        self.numbers = D.parse_pages(self.pages, self.doc.count, self.doc.label)
        self.answer_tokens = self.max_new_tokens or D.default_answer_tokens(self.engine)

    def close(self) -> None:
        self.doc.close()

    # ---- pages ---------------------------------------------------------------------------------

    def image(self, n: int) -> bytes:
        if n not in self.rendered:
            img = self.doc.render(n, self.dpi if self.doc.kind == "pdf" else None).image
            buf = io.BytesIO()
            img.save(buf, "PNG", compress_level=1)  # fast and lossless: the model sees the exact render
            self.rendered[n] = buf.getvalue()
        return self.rendered[n]

    def cost(self, n: int) -> int:
        """Tokens page n adds: its image as the processor will size it, plus its label and media markers."""
        if n in self.rendered:
            w, h = D.image_size(self.rendered[n])
        elif self.doc.kind == "pdf":
            w, h = (math.ceil(x * self.dpi / 72.0) for x in self.doc.size_pt(n))
        else:
            w, h = self.doc.size_pt(n)
        tok = self.engine.processor.tokenizer
        return self.engine.processor.image_processor.plan(w, h).tokens + len(tok.encode(LABEL.format(n=n))) + 8

    def text(self, n: int) -> str:
        """The page's text layer, or a short OCR by the model itself when it has none (cached)."""
        if n not in self.texts:
            text = self.doc.text(n)
            if not D.usable_text(text):
                ip = self.engine.processor.image_processor
                page = self.doc.render(n, D.page_dpi(self.doc, n, ip.in_token_limit, ip.patch_size))
                msgs = [{"role": "user", "content": [{"type": "image", "image": page.image},
                                                     {"type": "text", "text": QUICK_OCR}]}]
                text = self.engine.chat(msgs, max_new_tokens=self.ocr_tokens, temperature=0.0).answer
            self.texts[n] = text
        return self.texts[n]

    # ---- asking --------------------------------------------------------------------------------

    def messages(self, question: str, pages: list[int], partial: bool | None = None) -> list[dict]:
        """The conversation with `pages` (in document order) in the first user turn; `partial` forces the
        "(k of n pages)" note on or off (default: on when pages are missing)."""
        partial = len(pages) < len(self.numbers) if partial is None else partial
        # with no pages (budgeting), the widest count stands in for the one not known yet
        shown = len(pages) if pages else len(self.numbers)
        partial = PARTIAL.format(shown=shown, total=len(self.numbers)) if partial else ""
        first_q = self.history[0][0] if self.history else question
        images = [self.image(n) for n in pages]
        from kvl_core.processor.chat import image_parts  # imports torch: not at module level (kvl --help)

        content = image_parts(images, [LABEL.format(n=n) for n in pages])
        content.append({"type": "text", "text": PROMPT.format(partial=partial, question=first_q)})
        msgs = [{"role": "user", "content": content}]
        for i, (q, a) in enumerate(self.history):
            if i:
                msgs.append({"role": "user", "content": q})
            msgs.append({"role": "assistant", "content": a})
        if self.history:
            msgs.append({"role": "user", "content": question})
        return msgs

    def choose(self, question: str, budget: int) -> tuple[list[int], str]:
        """Pages for this question, most wanted first, and how they were chosen ("all" | "bm25")."""
        costs = [self.cost(n) for n in self.numbers]
        if sum(costs) <= budget and len(self.numbers) <= self.max_pages:
            return list(self.numbers), "all"
        from kvl_tasks.page_select import rank_pages, select_pages

        texts = []
        for i, n in enumerate(self.numbers):
            texts.append(self.text(n))
            if self.on_ocr:
                self.on_ocr(i + 1, len(self.numbers))
        # Follow-ups lean on earlier questions ("and in 2019?"); the newest counts twice.
        query = " ".join([question, question, *(q for q, _ in self.history)])
        keep = select_pages(rank_pages(texts, query), costs, budget, self.max_pages)
        return [self.numbers[i] for i in keep], "bm25"

    def ask(self, question: str) -> Answer:
        question = question.strip()
        if not question:
            raise KvlError("the question is empty")
        context = D.context_length(self.engine)
        proc = self.engine.processor
        while True:  # forget the oldest exchanges if even the text alone does not fit
            # the text without pages, with the longest form of the partial-document note
            budget = context - self.answer_tokens - D.prompt_tokens(proc, self.messages(question, [], True))
            if budget > 0 or not self.history:
                break
            self.history.pop(0)
        wanted, how = self.choose(question, budget)
        pages = sorted(wanted)
        msgs = self.messages(question, pages)
        while pages and D.prompt_tokens(proc, msgs) + self.answer_tokens > context:
            # the estimate was off by a few tokens (BPE merges at part boundaries): drop the least wanted page
            wanted = wanted[:-1]
            pages = sorted(wanted)
            msgs = self.messages(question, pages)
        if not pages:
            raise KvlError(f"{self.doc.label}: not one page fits the model's context of {context} tokens with an "
                           f"answer budget of {self.answer_tokens}; lower --max-new-tokens")
        reply = self.engine.chat(msgs, max_new_tokens=self.answer_tokens, temperature=self.temperature)
        answer = reply.answer.strip()
        self.history.append((question, answer))
        return Answer(answer, parse_citations(answer, self.doc.count), pages, how, self.doc.count,
                      is_not_answerable(answer), reply.prompt_tokens, reply.completion_tokens,
                      reply.finish_reason, reply.reasoning)


# ---- CLI -----------------------------------------------------------------------------------------

app = typer.Typer(help="Long-PDF question answering.", no_args_is_help=True)


@app.callback()
def _pdf() -> None:
    """Questions about long PDFs, answered from page images with page citations."""


@app.command("ask")
def ask(
    file: Annotated[str, typer.Argument(help="The PDF (or image); - reads stdin.", show_default=False)],
    question: Annotated[Optional[str], typer.Argument(help="The question (optional with --interactive).")] = None,
    pages: Annotated[Optional[str], typer.Option(help="Only these pages, e.g. 1-30,45.")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Keep asking follow-ups (pages stay cached).")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Answer, cited pages and pages in context as JSON.")] = False,
    password: Annotated[Optional[str], typer.Option(help="Password of an encrypted PDF.")] = None,
    dpi: Annotated[float, typer.Option(help="Render DPI (MMLongBench-Doc: 144).")] = MMLB_DPI,
    max_pages: Annotated[int, typer.Option(min=1, help="At most this many pages in context (MMLongBench-Doc: 120).")] = MMLB_MAX_PAGES,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Answer budget (default: the checkpoint's).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy (default: the checkpoint's).")] = None,
) -> None:
    """Ask a question about a (long) PDF; the answer cites pages as \\[p. N]."""
    from kvl_cli.output import console, print_error, print_json, progress
    from kvl_core.backend import load_engine

    if question is None and not interactive:
        raise KvlError("no question: pass one, or --interactive")
    sources, _ = D.discover([file])
    engine = load_engine(model, backend, base_url, api_key, device=device, dtype=dtype, skill="pdf-qa",
                         verb="kvl pdf ask")
    session = PdfSession(engine, sources[0], password, pages, dpi, max_pages, max_new_tokens, temperature)

    def answer(q: str) -> None:
        with progress("page", transient=True) as bar:
            task = bar.add_task("reading pages for ranking", total=None)
            session.on_ocr = lambda done, total: bar.update(task, completed=done, total=total)
            result = session.ask(q)
        if json_out:
            print_json(result.to_dict())
            return
        sys.stdout.write(result.answer + "\n")
        how = "all pages" if result.selection == "all" else (
            f"{len(result.context_pages)} of {len(session.numbers)} pages, chosen by relevance to the question")
        console.print(f"[pages in context: {page_ranges(result.context_pages)} ({how})]", style="dim",
                      markup=False, highlight=False)

    try:
        if question is not None:
            answer(question)
        while interactive:
            try:
                line = input("> " if sys.stdin.isatty() else "").strip()
            except EOFError:
                break
            if line in ("/exit", "/quit"):
                break
            if line:
                try:
                    answer(line)
                except KvlError as e:  # one bad turn does not end the session
                    print_error(str(e))
    finally:
        session.close()
