"""Document input for the document tasks (`kvl ocr`, `kvl pdf ask`; tasks.md §1.1, §1.5).

Turns command-line arguments into sources (files, recursive folders, `-` for stdin), opens each source as
a sequence of pages (PDF via pymupdf, single images and multi-frame TIFFs via the guarded
`kvl_core.processor.image.load_image`), and renders pages one at a time, so that a 2,000-page PDF never
sits in memory at once. Every failure becomes a one-line `KvlError` naming the file (and the page).

Render resolution: a page is an image to the model, and the image processor downscales anything above
`in_token_limit` patches (model.md §1.4). `fit_dpi` picks the DPI at which the page just fills that budget:
rendering finer wastes render time (the processor throws the pixels away), coarser wastes the model's
resolution. pymupdf is imported inside functions: `kvl --help` must not pay for it.
"""

from __future__ import annotations

import io
import math
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from kvl_core.errors import KvlError

if TYPE_CHECKING:  # Pillow is imported where pixels are touched: `kvl --help` loads this module
    from PIL import Image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}
SUFFIXES = IMAGE_SUFFIXES | {".pdf"}
KINDS_HELP = "PDF, PNG, JPEG, WebP, TIFF"
MAX_DPI = 300.0  # finer renders only blow up memory: no page needs more to be legible
MAX_RENDER_PIXELS = 2**26  # a quarter of the image loader's bomb limit: a poster page at a user's --dpi
MIN_TEXT_CHARS = 20  # below this a "text layer" is page furniture or an OCR'd stub, not the page's text


# ---- sources -------------------------------------------------------------------------------------

@dataclass
class Source:
    """One input document: a file (or stdin's bytes), its label for messages, its path relative to the
    argument it came from (to mirror folder trees under --out), and its kind."""

    label: str
    rel: Path
    kind: str  # "pdf" | "image"
    path: Path | None = None
    data: bytes | None = None


def discover(args: Sequence[str], stdin: Any = None) -> tuple[list[Source], int]:
    """Expand arguments into sources: files as given, folders recursively (sorted, supported suffixes only),
    `-` for stdin. Returns (sources, number of unsupported files skipped inside folders)."""
    sources: list[Source] = []
    skipped = 0
    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            data = stream.read()
            kind = detect_kind("<stdin>", data[:1024], None)
            sources.append(Source("<stdin>", Path("stdin"), kind, data=data))
            continue
        path = Path(arg)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            for f in files:
                if f.suffix.lower() in SUFFIXES:
                    sources.append(Source(str(f), f.relative_to(path), _kind_of_suffix(f), path=f))
                else:
                    skipped += 1
        elif path.exists():
            try:
                with path.open("rb") as fh:
                    head = fh.read(1024)
            except OSError as e:
                raise KvlError(f"{path}: cannot read file ({e.strerror or e})") from None
            sources.append(Source(str(path), Path(path.name), detect_kind(str(path), head, path.suffix), path=path))
        else:
            raise KvlError(f"{path}: no such file or folder")
    return sources, skipped


def _kind_of_suffix(path: Path) -> str:
    return "pdf" if path.suffix.lower() == ".pdf" else "image"


def detect_kind(label: str, head: bytes, suffix: str | None) -> str:
    """'pdf' or 'image', from the content first (a PDF named .png is still a PDF), else the suffix."""
    if b"%PDF-" in head:
        return "pdf"
    if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:4] in (b"II*\x00", b"MM\x00*") \
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if suffix is not None and suffix.lower() in SUFFIXES:
        # A known suffix with unknown content: let the decoder produce the precise "corrupt" message.
        return _kind_of_suffix(Path("x" + suffix))
    shown = f"'{suffix}'" if suffix else "without a known signature"
    raise KvlError(f"{label}: unsupported file type {shown} (kvl reads {KINDS_HELP})")


# ---- page ranges ---------------------------------------------------------------------------------

def parse_pages(spec: str | None, count: int, label: str) -> list[int]:
    """`1-3,7,10-` -> 1-based page numbers in order, without repeats; None means every page."""
    if not spec:
        return list(range(1, count + 1))
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)?\s*(-)?\s*(\d+)?", part)
        if not part or not m or (m.group(2) is None and m.group(3) is not None) or not (m.group(1) or m.group(3)):
            raise KvlError(f"--pages {spec!r}: expected numbers and ranges like 1-3,7,10-")
        lo = int(m.group(1)) if m.group(1) else 1
        hi = (int(m.group(3)) if m.group(3) else count) if m.group(2) else lo
        if lo < 1 or hi < lo:
            raise KvlError(f"--pages {spec!r}: {part!r} is not a valid range (pages count from 1)")
        if lo > count or hi > count:
            raise KvlError(f"{label}: page {max(lo, hi) if lo <= count else lo} is outside the document "
                           f"(it has {count} page{'s' if count != 1 else ''})")
        out.extend(p for p in range(lo, hi + 1) if p not in out)
    return out


# ---- resolution ----------------------------------------------------------------------------------

def fit_dpi(width_pt: float, height_pt: float, limit_patches: int, patch: int = 14, max_dpi: float = MAX_DPI) -> float:
    """The highest DPI (≤ max_dpi) at which a page of this size in points stays within `limit_patches`
    patches of `patch` px, i.e. the processor will not downscale it (rendered sizes are rounded up)."""
    if width_pt <= 0 or height_pt <= 0:
        return max_dpi
    dpi = min(max_dpi, 72.0 * math.sqrt(limit_patches * patch * patch / (width_pt * height_pt)))
    while dpi > 1.0:
        w, h = math.ceil(width_pt * dpi / 72.0), math.ceil(height_pt * dpi / 72.0)
        if (w // patch) * (h // patch) <= limit_patches:
            return dpi
        dpi *= 0.99  # rounding up pushed it just over the budget: step down by 1%
    return 1.0


# ---- documents -----------------------------------------------------------------------------------

@dataclass
class Page:
    number: int  # 1-based
    image: Image.Image
    dpi: float | None  # None for image inputs (their pixels are used as they are)
    text: str = ""  # the PDF's text layer ("" for images)
    size: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.size = self.image.size


class Document:
    """Pages of one source. Use as a context manager; `render(n)` returns one page at a time."""

    kind = "?"

    def __init__(self, source: Source):
        self.source = source
        self.label = source.label
        self.count = 0

    def __enter__(self) -> "Document":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pass

    def size_pt(self, number: int) -> tuple[float, float]:
        raise NotImplementedError

    def text(self, number: int) -> str:
        return ""

    def markdown(self, number: int, keep_furniture: bool = False) -> str:
        return ""

    def layer_verdict(self, number: int) -> tuple[bool, str]:
        return False, "an image: no text layer"

    def render(self, number: int, dpi: float | None = None, with_text: bool = False) -> Page:
        raise NotImplementedError


class PdfDocument(Document):
    kind = "pdf"

    def __init__(self, source: Source, password: str | None = None):
        super().__init__(source)
        import pymupdf

        self._last_layer: tuple | None = None  # (number, page, span dict) of the last page `_layer` read
        pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF would print its own lines next to ours
        try:
            if source.data is not None:
                self.doc = pymupdf.open(stream=source.data, filetype="pdf")
            else:
                self.doc = pymupdf.open(source.path, filetype="pdf")
        except Exception as e:  # FileDataError, RuntimeError, ...: unreadable whatever the cause
            raise KvlError(f"{self.label}: not a readable PDF, corrupt or truncated ({_msg(e)})") from None
        if self.doc.needs_pass:
            if password is None:
                self.close()
                raise KvlError(f"{self.label}: the PDF is encrypted; pass its password with --password")
            if not self.doc.authenticate(password):
                self.close()
                raise KvlError(f"{self.label}: wrong password for the encrypted PDF")
        self.count = self.doc.page_count
        if self.count == 0:
            self.close()
            raise KvlError(f"{self.label}: the PDF has no pages")

    def close(self) -> None:
        doc = getattr(self, "doc", None)
        if doc is not None:
            doc.close()
            self.doc = None

    def _page(self, number: int):
        try:
            return self.doc.load_page(number - 1)
        except Exception as e:
            raise KvlError(f"{self.label}: page {number} cannot be read ({_msg(e)})") from None

    def _layer(self, number: int):
        """(page, its span dictionary), kept for the last page asked: `--text-layer auto` judges a page and
        then converts it, and extracting the layer is most of the cost of either."""
        from kvl_tasks.text_layer import page_dict

        cached = self._last_layer
        if cached is None or cached[0] != number:
            page = self._page(number)
            cached = self._last_layer = (number, page, page_dict(page))
        return cached[1], cached[2]

    def size_pt(self, number: int) -> tuple[float, float]:
        r = self._page(number).rect
        return float(r.width), float(r.height)

    def text(self, number: int) -> str:
        try:
            # Text blocks in content-stream order. pymupdf's sort=True (top-left to bottom-right) was 40x
            # slower (85 vs 2 ms on a dense page) and passed fewer olmOCR-Bench present/order tests on the
            # sample PDFs (16 vs 22 of 43): it interleaves the blocks of side-by-side columns.
            blocks = self._page(number).get_text("blocks")
            return "\n\n".join(b[4].strip() for b in blocks if b[6] == 0 and b[4].strip())
        except Exception as e:
            raise KvlError(f"{self.label}: page {number}: text layer cannot be read ({_msg(e)})") from None

    def markdown(self, number: int, keep_furniture: bool = False) -> str:
        """The page's text layer as structured markdown (tables, headings, lists, columns; text_layer.py)."""
        from kvl_tasks.text_layer import page_markdown

        try:
            page, d = self._layer(number)
            return page_markdown(page, keep_furniture, d)
        except KvlError:
            raise
        except Exception as e:
            raise KvlError(f"{self.label}: page {number}: text layer cannot be read ({_msg(e)})") from None

    def layer_verdict(self, number: int) -> tuple[bool, str]:
        """(take this page from its text layer?, why) for `--text-layer auto`."""
        from kvl_tasks.text_layer import judge

        try:
            return judge(*self._layer(number))
        except KvlError:
            raise
        except Exception as e:
            return False, f"text layer cannot be read ({_msg(e)})"

    def render(self, number: int, dpi: float | None = None, with_text: bool = False) -> Page:
        import pymupdf

        page = self._page(number)
        r = page.rect
        dpi = float(dpi or 72.0)
        # Never allocate a giant pixmap (a poster-sized page at a user's --dpi): lower the DPI instead.
        area = max(r.width * r.height, 1.0) * (dpi / 72.0) ** 2
        if area > MAX_RENDER_PIXELS:
            dpi *= math.sqrt(MAX_RENDER_PIXELS / area)
        try:
            pix = page.get_pixmap(matrix=pymupdf.Matrix(dpi / 72.0, dpi / 72.0), alpha=False,
                                  colorspace=pymupdf.csRGB)
            from PIL import Image

            img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
        except Exception as e:
            raise KvlError(f"{self.label}: page {number} cannot be rendered ({_msg(e)})") from None
        del pix
        return Page(number, img, round(dpi, 1), self.text(number) if with_text else "")


class ImageDocument(Document):
    """A single image, or a multi-frame TIFF whose frames are pages."""

    kind = "image"

    def __init__(self, source: Source):
        super().__init__(source)
        if source.path is not None and source.path.suffix.lower() in (".tif", ".tiff") or \
                (source.data or b"")[:4] in (b"II*\x00", b"MM\x00*"):
            self._open_tiff()
        else:
            self.frames = None
            self.first = load_image(source.data if source.data is not None else source.path, name=self.label)
            self.count = 1

    def _open_tiff(self) -> None:
        from PIL import Image

        raw = self.source.data if self.source.data is not None else _read(self.source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                self.frames = Image.open(io.BytesIO(raw))
                self.count = getattr(self.frames, "n_frames", 1)
            except Image.DecompressionBombError:
                # Defer to load_image for the one wording of this error.
                load_image(raw, name=self.label)
                raise  # pragma: no cover -- load_image raises first
            except Exception as e:
                raise KvlError(f"{self.label}: corrupt or truncated image ({_msg(e)})") from None

    def size_pt(self, number: int) -> tuple[float, float]:
        img = self.first if self.frames is None else self._frame(number)
        return float(img.width), float(img.height)

    def _frame(self, number: int) -> Image.Image:
        try:
            self.frames.seek(number - 1)
        except Exception as e:
            raise KvlError(f"{self.label}: frame {number} cannot be read ({_msg(e)})") from None
        return load_image(self.frames, name=f"{self.label} frame {number}")

    def render(self, number: int, dpi: float | None = None, with_text: bool = False) -> Page:
        return Page(number, self.first if self.frames is None else self._frame(number), None)


def open_document(source: Source, password: str | None = None) -> Document:
    from kvl_core.processor.image import steady_memory  # lazy: this module is imported by `kvl --help`

    steady_memory()
    return PdfDocument(source, password) if source.kind == "pdf" else ImageDocument(source)




def page_dpi(doc: Document, number: int, limit_patches: int, patch: int = 14, dpi: float | None = None) -> float | None:
    """The DPI a page is rendered at: `dpi` if given, else the one that just fits the image budget."""
    if doc.kind != "pdf":
        return None
    return float(dpi) if dpi else fit_dpi(*doc.size_pt(number), limit_patches, patch)


def usable_text(text: str) -> bool:
    """Whether a text layer is the page's text, not an empty or garbled one (scans, broken font maps)."""
    chars = [c for c in text if not c.isspace()]
    if len(chars) < MIN_TEXT_CHARS:
        return False
    junk = sum(1 for c in chars if c == "\ufffd" or (ord(c) < 32) or 0xE000 <= ord(c) <= 0xF8FF)
    return junk / len(chars) < 0.1


def load_image(src: Any, name: str) -> Image.Image:
    # kvl_core.processor.image imports torch: only when an image is actually opened, not at `kvl --help`.
    from kvl_core.processor.image import load_image as load

    return load(src, name=name)


def _read(source: Source) -> bytes:
    try:
        return source.path.read_bytes()
    except OSError as e:
        raise KvlError(f"{source.label}: cannot read file ({e.strerror or e})") from None


def _msg(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# ---- token budget --------------------------------------------------------------------------------

def context_length(engine: Any) -> int:
    from kvl_core.backend import context_length as engine_context

    n = engine_context(engine)
    if n is None:
        raise KvlError(f"{getattr(engine, 'name', 'the engine')}: cannot tell its context length")
    return n


def default_answer_tokens(engine: Any, fallback: int = 512) -> int:
    """The checkpoint's own answer budget (generation_config.json), as the engine would apply it."""
    return int(getattr(engine, "defaults", {}).get("max_new_tokens", fallback))


def image_size(image: Any) -> tuple[int, int]:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.size
    with Image.open(io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image) as im:
        return im.size  # header only: nothing is decoded


def prompt_tokens(processor: Any, messages: list[dict]) -> int:
    """Exact prompt length of `messages` without patchifying any page: each image is swapped for a one-token
    stand-in, and its planned token count (what the processor will give it) is added back."""
    from PIL import Image

    stand_in = Image.new("RGB", (28, 28))
    extra = 0
    swapped = []
    for msg in messages:
        content = msg["content"]
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") == "image":
                    w, h = image_size(part["image"])
                    extra += processor.image_processor.plan(w, h).tokens - 1
                    part = {"type": "image", "image": stand_in}
                parts.append(part)
            content = parts
        swapped.append({**msg, "content": content})
    return len(processor.encode(swapped).input_ids) + extra


def clip_tokens(tokenizer: Any, text: str, limit: int) -> str:
    """`text` cut to at most `limit` tokens (on a token boundary, dropping a split trailing character)."""
    if limit <= 0:
        return ""
    ids = tokenizer.encode(text)
    if len(ids) <= limit:
        return text
    return tokenizer.decode(ids[:limit]).rstrip("\ufffd")
