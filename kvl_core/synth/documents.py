"""Synthetic rendered documents with their exact Markdown, for kvl-nano's OCR data (Kimi-VL report §2.3
"OCR data" and §2.4 SFT; tasks.md §1.1 document -> Markdown).

A sample is planned first (`plan_document`: every random choice, font metrics, line wrapping and the
Markdown), then drawn (`draw_document`). The plan alone is enough to know the Markdown, which is what
`dataset.py` hashes to keep held-out documents out of the training namespace without drawing them.

Markdown conventions (what a perfect reader outputs for the picture)
--------------------------------------------------------------------
- headings: `# ` for the large bold title (about 1.5x the body size), `## ` for the smaller one (1.2x);
- paragraphs: the words of all wrapped lines joined with single spaces (one Markdown line);
- bulleted list: `- item` per line, whatever bullet glyph is drawn ("•" or "-");
- numbered list: `1. item`, numbered as drawn;
- key/value block: the key is drawn bold with its colon, so a line is `**Key:** value`;
- table: a pipe table `| a | b |` with the header separator `| --- | --- |` (drawn header row is bold,
  with either full cell borders or only a rule under the header);
- receipt/invoice: a title heading, then one line per row: `**Date:** ...` (optional), items as
  `name price` (the price is drawn right-aligned, so the gap is not reproduced), and `**Total:** $x.yy`
  (the total is the exact sum of the item prices);
- blocks are separated by one blank line, the lines of a list/key-value/receipt/table block by "\n".

Sizes: width 224-448 px in steps of 28 (shrunk to the text plus margin, except for receipts), height
rounded up to a multiple of 28 and at most `max_height` (280), so no padding is wasted. A typical page is 336 x 168 px = 72 LLM image tokens
(w*h/784; range about 16-160); see `image_tokens`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image, ImageDraw

from kvl_core.synth import common as C

LAYOUTS = ("paragraph", "bullets", "numbered", "keyvalue", "table", "receipt")

_TABLE_SCHEMAS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("Name", "name"), ("Role", "role"), ("City", "city")),
    (("Item", "item"), ("Qty", "qty"), ("Price", "price")),
    (("Month", "month"), ("Sales", "count"), ("Change", "pct")),
    (("Task", "task"), ("Owner", "first"), ("Due", "date")),
    (("Code", "code"), ("Status", "status")),
    (("Day", "day"), ("Temp", "temp"), ("Rain", "pct")),
    (("City", "city"), ("Flight", "code"), ("Time", "time")),
    (("Product", "item"), ("Stock", "count")),
    (("Name", "first"), ("Score", "count"), ("Team", "adjnoun")),
)


def _cell(rng: random.Random, kind: str) -> str:
    return {
        "name": lambda: C.person(rng), "first": lambda: rng.choice(C.FIRST_NAMES), "role": lambda: rng.choice(C.ROLES),
        "city": lambda: rng.choice(C.CITIES), "item": lambda: rng.choice(C.ITEMS), "qty": lambda: str(rng.randint(1, 24)),
        "price": lambda: C.fmt_price(C.price(rng)), "month": lambda: rng.choice(C.MONTHS)[:3],
        "count": lambda: str(rng.randint(0, 9999)), "pct": lambda: f"{rng.randint(-40, 90)}%",
        "task": lambda: f"{rng.choice(C.VERBS_BASE).capitalize()} {rng.choice(C.NOUNS)}", "date": lambda: C.date(rng),
        "code": lambda: C.code(rng), "status": lambda: rng.choice(C.STATUSES), "day": lambda: rng.choice(C.DAYS)[:3],
        "temp": lambda: f"{rng.randint(-5, 35)} C", "time": lambda: C.clock(rng),
        "adjnoun": lambda: f"{rng.choice(C.ADJECTIVES).capitalize()} {rng.choice(C.NOUNS)}",
    }[kind]()


@dataclass(frozen=True)
class DocSpec:
    """What varies between documents. `DocSpec.at(difficulty)` interpolates from a clean fixed style (0)
    to the full variation below (1)."""

    max_lines: int = 6
    width: tuple[int, int] = (224, 448)  # px, drawn in steps of 28
    max_height: int = 280
    font_size: tuple[int, int] = (13, 18)  # body size in px; headings are 1.2x / 1.5x
    fonts: tuple[str, ...] = C.FAMILIES
    layouts: tuple[str, ...] = LAYOUTS
    layout_weights: tuple[float, ...] | None = None
    line_spacing: tuple[float, float] = (1.3, 1.6)
    margin: tuple[int, int] = (8, 18)
    color_jitter: float = 1.0  # 0: black on white
    rotation: float = 1.0  # max degrees
    blur: float = 0.25  # probability of a slight blur
    blur_radius: tuple[float, float] = (0.3, 0.6)
    noise: float = 5.0  # max Gaussian sigma in grey levels
    random_words: float = 0.0  # share of documents whose words are random strings (C.random_vocabulary)

    def __post_init__(self) -> None:
        if self.max_lines < 1:
            raise ValueError("DocSpec.max_lines must be >= 1")
        bad = [x for x in self.layouts if x not in LAYOUTS]
        if bad or not self.layouts:
            raise ValueError(f"unknown layouts {bad} (choose from {', '.join(LAYOUTS)})")
        if self.layout_weights is not None and len(self.layout_weights) != len(self.layouts):
            raise ValueError("layout_weights must have one weight per layout")
        if not (28 <= self.width[0] <= self.width[1]):
            raise ValueError("DocSpec.width must be an increasing (min, max) pair >= 28")

    @classmethod
    def at(cls, difficulty: float, **overrides: Any) -> "DocSpec":
        d = min(1.0, max(0.0, float(difficulty)))
        full = cls()
        spec = cls(
            max_lines=max(2, round(2 + d * (full.max_lines - 2))),
            font_size=(round(16 - d * 3), round(16 + d * 2)),
            fonts=full.fonts if d >= 0.5 else ("sans",),
            line_spacing=(round(1.45 - d * 0.15, 4), round(1.45 + d * 0.15, 4)),
            color_jitter=d, rotation=d * full.rotation, blur=d * full.blur, noise=d * full.noise,
        )
        return replace(spec, **overrides)


@dataclass
class Run:
    x: float
    text: str
    bold: bool = False
    right: bool = False  # x is the right edge


@dataclass
class Line:
    y: int  # top of the line box
    height: int
    size: int  # font size
    runs: list[Run]


@dataclass
class DocPlan:
    layout: str
    markdown: str
    size: tuple[int, int]
    family: str
    body_size: int
    lines: list[Line]
    rules: list[tuple[int, int, int, int]] = field(default_factory=list)
    background: tuple[int, int, int] = (255, 255, 255)
    ink: tuple[int, int, int] = (0, 0, 0)
    info: dict[str, Any] = field(default_factory=dict)  # what was drawn: counts, heading, store...

    @property
    def n_lines(self) -> int:
        return len(self.lines)


class _Builder:
    def __init__(self, rng: random.Random, spec: DocSpec):
        self.rng, self.spec = rng, spec
        self.family = rng.choice(spec.fonts)
        self.size = rng.randint(*spec.font_size)
        self.width = 28 * rng.randint(-(-spec.width[0] // 28), spec.width[1] // 28)
        self.margin = rng.randint(*spec.margin)
        self.spacing = rng.uniform(*spec.line_spacing)
        self.lh = round(self.size * self.spacing)
        self.gap = round(self.size * 0.6)
        self.cw = self.width - 2 * self.margin
        self.y = self.margin
        self.lines: list[Line] = []
        self.rules: list[tuple[int, int, int, int]] = []
        self.blocks: list[str] = []

    def font(self, size: int | None = None, bold: bool = False):
        return C.get_font(self.family, size or self.size, bold)

    @property
    def lines_left(self) -> int:
        return self.spec.max_lines - len(self.lines)

    def fits(self, heights: list[int]) -> bool:
        gap = self.gap if self.lines else 0
        return (len(heights) <= self.lines_left
                and self.y + gap + sum(heights) + self.margin <= self.spec.max_height)

    def start_block(self) -> None:
        if self.lines:
            self.y += self.gap

    def add_line(self, runs: list[Run], size: int | None = None, height: int | None = None) -> Line:
        line = Line(self.y, height or self.lh, size or self.size, runs)
        self.lines.append(line)
        self.y += line.height
        return line

    # -- blocks --

    def heading(self, text: str | None = None, level: int | None = None) -> bool:
        level = level or self.rng.choice((1, 2))
        size = round(self.size * (1.5 if level == 1 else 1.2))
        text = text or C.heading(self.rng)
        if self.font(size, True).getlength(text) > self.cw:
            return False
        h = round(size * 1.35)
        if not self.fits([h]):
            return False
        self.start_block()
        self.add_line([Run(self.margin, text, bold=True)], size, h)
        self.blocks.append("#" * level + " " + text)
        return True

    def paragraph(self, max_sentences: int = 4) -> int:
        """Sentences are added while the wrapped paragraph still fits; returns the line count (0 = none)."""
        font = self.font()
        best: list[str] = []
        sentences: list[str] = []
        for _ in range(max_sentences):
            trial = [*sentences, C.sentence(self.rng)]
            lines = C.wrap_words(" ".join(trial).split(), font, self.cw)
            if not self.fits([self.lh] * len(lines)):
                break
            sentences, best = trial, lines
        if not best:
            return 0
        self.start_block()
        for text in best:
            self.add_line([Run(self.margin, text)])
        self.blocks.append(" ".join(sentences))
        return len(best)

    def one_line_items(self, make, n: int, indent: float, min_items: int = 1) -> list[str]:
        """Up to n single-line items that fit the width after `indent` and the remaining budget."""
        font = self.font()
        items: list[str] = []
        tries = 0
        while len(items) < n and tries < 4 * n:
            tries += 1
            text = make()
            if text in items or font.getlength(text) > self.cw - indent:
                continue
            items.append(text)
        while items and not self.fits([self.lh] * len(items)):
            items.pop()
        return items if len(items) >= min_items else []


# ---- layouts --------------------------------------------------------------------------------------

def _maybe_heading(b: _Builder, p: float) -> bool:
    return b.lines_left >= 3 and b.rng.random() < p and b.heading()


def _layout_paragraph(b: _Builder) -> dict:
    has_h = b.lines_left >= 2 and b.heading()
    n = b.paragraph()
    n2 = b.paragraph(2) if n and b.lines_left >= 2 and b.rng.random() < 0.35 else 0
    return {"heading": has_h, "paragraphs": int(n > 0) + int(n2 > 0), "paragraph_lines": n + n2}


def _layout_list(b: _Builder, numbered: bool) -> dict:
    has_h = _maybe_heading(b, 0.7)
    marker = b.rng.choice(("•", "-", "•")) if not numbered else b.rng.choice((".", "."))
    marker_w = b.font().getlength("10. " if numbered else marker + " ")
    indent = round(b.size * b.rng.uniform(0.3, 1.2))
    items = b.one_line_items(lambda: C.list_item(b.rng), b.rng.randint(2, 5), indent + marker_w,
                             min_items=min(2, b.lines_left))
    if not items:
        return {"heading": has_h, "items": 0}
    b.start_block()
    md = []
    for i, text in enumerate(items, 1):
        m = f"{i}." if numbered else marker
        b.add_line([Run(b.margin + indent, m), Run(b.margin + indent + marker_w, text)])
        md.append(f"{i}. {text}" if numbered else f"- {text}")
    b.blocks.append("\n".join(md))
    return {"heading": has_h, "items": len(items)}


def _layout_keyvalue(b: _Builder) -> dict:
    has_h = _maybe_heading(b, 0.6)
    keys = b.rng.sample(C.KEYS, b.rng.randint(2, 5))
    bold, regular = b.font(bold=True), b.font()
    pairs = []
    for key in keys:
        v = C.value_for_key(b.rng, key)
        k = C.KEY_LABELS.get(key, key)
        kw = bold.getlength(k + ":") + regular.getlength(" ")
        if kw + regular.getlength(v) <= b.cw:
            pairs.append((k, v, kw))
    while pairs and not b.fits([b.lh] * len(pairs)):
        pairs.pop()
    if len(pairs) < min(2, b.lines_left):
        pairs = []
    if pairs:
        b.start_block()
        for k, v, kw in pairs:
            b.add_line([Run(b.margin, k + ":", bold=True), Run(b.margin + kw, v)])
        b.blocks.append("\n".join(f"**{k}:** {v}" for k, v, _ in pairs))
    return {"heading": has_h, "pairs": len(pairs), "keys": [k for k, _, _ in pairs]}  # as drawn


def _layout_table(b: _Builder) -> dict:
    has_h = _maybe_heading(b, 0.5)
    rng = b.rng
    bold, regular = b.font(bold=True), b.font()
    pad = round(b.size * 0.5)
    for _attempt in range(6):
        schema = rng.choice(_TABLE_SCHEMAS)
        n_rows = max(1, min(rng.randint(2, 4), b.lines_left - 1))
        header = [h for h, _ in schema]
        rows = [[_cell(rng, kind) for _, kind in schema] for _ in range(n_rows)]
        widths = [max(bold.getlength(header[c]), *(regular.getlength(r[c]) for r in rows)) + 2 * pad
                  for c in range(len(schema))]
        if sum(widths) <= b.cw and b.fits([b.lh] * (n_rows + 1)):
            break
    else:
        return {"heading": has_h, "rows": 0, "cols": 0}
    b.start_block()
    xs = [b.margin]
    for w in widths:
        xs.append(round(xs[-1] + w))
    top = b.y
    b.add_line([Run(x + pad, t, bold=True) for x, t in zip(xs, header)])
    for r in rows:
        b.add_line([Run(x + pad, t) for x, t in zip(xs, r)])
    grid = rng.random() < 0.5
    right = xs[-1]
    if grid:
        for i in range(n_rows + 2):
            y = top + i * b.lh
            b.rules.append((b.margin, y, right, y))
        for x in xs:
            b.rules.append((x, top, x, top + (n_rows + 1) * b.lh))
    else:
        b.rules.append((b.margin, top + b.lh, right, top + b.lh))
    md = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    b.blocks.append("\n".join(md))
    return {"heading": has_h, "rows": n_rows, "cols": len(header), "grid": grid}


def _layout_receipt(b: _Builder) -> dict:
    rng = b.rng
    invoice = rng.random() < 0.35
    title = f"Invoice {C.code(rng)}" if invoice else rng.choice(C.STORES)
    if not b.heading(title, rng.choice((1, 2))):
        b.heading(rng.choice(C.STORES)[:14], 2)
    bold, regular = b.font(bold=True), b.font()
    right = b.width - b.margin
    with_date = b.lines_left >= 4 and rng.random() < 0.5
    n_items = max(1, min(rng.randint(2, 4), b.lines_left - 1 - int(with_date)))
    items: list[tuple[str, int]] = []
    names = rng.sample(C.ITEMS, n_items)
    for name in names:
        qty = rng.randint(2, 4) if rng.random() < 0.25 else 1
        cents = C.price(rng, 0.5, 25.0) * qty
        label = f"{qty} x {name}" if qty > 1 else name
        if regular.getlength(label + "  " + C.fmt_price(cents)) + 8 <= b.cw:
            items.append((label, cents))
    total = sum(c for _, c in items)
    rows = int(with_date) + len(items) + 1
    while items and not b.fits([b.lh] * rows):
        items.pop()
        total = sum(c for _, c in items)
        rows -= 1
    if not items:
        return {"heading": True, "items": 0, "title": title, "invoice": invoice}
    b.start_block()
    md = []
    if with_date:
        d = C.date(rng)
        kw = bold.getlength("Date:") + regular.getlength(" ")
        b.add_line([Run(b.margin, "Date:", bold=True), Run(b.margin + kw, d)])
        md.append(f"**Date:** {d}")
    for label, cents in items:
        b.add_line([Run(b.margin, label), Run(right, C.fmt_price(cents), right=True)])
        md.append(f"{label} {C.fmt_price(cents)}")
    line = b.add_line([Run(b.margin, "Total:", bold=True), Run(right, C.fmt_price(total), bold=True, right=True)])
    b.rules.append((b.margin, line.y, right, line.y))
    md.append(f"**Total:** {C.fmt_price(total)}")
    b.blocks.append("\n".join(md))
    return {"heading": True, "items": len(items), "title": title, "invoice": invoice, "total": total}


def plan_document(rng: random.Random, spec: DocSpec = DocSpec()) -> DocPlan:
    """Every random choice of a document and its Markdown, without drawing it."""
    if spec.random_words > 0 and rng.random() < spec.random_words:
        with C.random_vocabulary(rng):
            return _plan_document(rng, spec)
    return _plan_document(rng, spec)


def _plan_document(rng: random.Random, spec: DocSpec) -> DocPlan:
    for _attempt in range(20):
        b = _Builder(rng, spec)
        layout = rng.choices(spec.layouts, weights=spec.layout_weights)[0]
        if layout == "paragraph":
            info = _layout_paragraph(b)
        elif layout in ("bullets", "numbered"):
            info = _layout_list(b, layout == "numbered")
        elif layout == "keyvalue":
            info = _layout_keyvalue(b)
        elif layout == "table":
            info = _layout_table(b)
        else:
            info = _layout_receipt(b)
        if any(not blk.startswith("#") for blk in b.blocks):
            break
    else:  # pragma: no cover - only with absurd specs (e.g. max_height below one line)
        raise ValueError("DocSpec leaves no room for any content (raise max_height / max_lines / width)")
    height = min(spec.max_height, C.round_up(b.y + b.margin))
    width = b.width
    if layout != "receipt":  # receipts pin prices to the right edge; elsewhere unused width costs tokens
        extent = max(r.x + b.font(line.size, r.bold).getlength(r.text) for line in b.lines for r in line.runs)
        extent = max([extent, *(max(x1, x2) for x1, _, x2, _ in b.rules)])
        width = min(width, max(28 * -(-spec.width[0] // 28), C.round_up(extent + b.margin)))
    return DocPlan(layout, "\n\n".join(b.blocks), (width, max(28, height)), b.family, b.size, b.lines, b.rules,
                   C.paper_color(rng), C.ink_color(rng, spec.color_jitter), info)


@dataclass(frozen=True)
class Glyph:
    """One drawn character: its centre (x: the middle of its advance; y: the middle of the font's
    x-height band, the same for every character of a run), font size in px, bold."""

    char: str
    x: float
    y: float
    size: int
    bold: bool


def glyphs(plan: DocPlan, angle: float = 0.0) -> list[Glyph]:
    """Every character `draw_document` draws (spaces included), in drawing order, after the rotation
    `angle` that `degrade` recorded: the per-character targets of the dense reading loss."""
    out: list[Glyph] = []
    for line in plan.lines:
        for run in line.runs:
            font = C.get_font(plan.family, line.size, run.bold)
            x = run.x - font.getlength(run.text) if run.right else run.x
            ty = line.y + (line.height - line.size * 1.2) / 2
            _, y0, _, y1 = font.getbbox("x")
            cy = ty + (y0 + y1) / 2
            pts = [(cx, cy) for cx in C.char_centres(font, run.text, x)]
            pts = C.rotate_points(pts, angle, plan.size)
            out += [Glyph(ch, px, py, line.size, run.bold) for ch, (px, py) in zip(run.text, pts)]
    return out


LINE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + ".,:;#/-%()$&@'!?+*="


def plan_line(rng: random.Random, spec: DocSpec = DocSpec()) -> DocPlan:
    """One line of text on a tight page: words of the corpus, random strings of letters, digits and
    punctuation, numbers, prices; regular weight, so its markdown is the text itself. The reading stages'
    curriculum starts here: a few dozen image tokens, one row, every character a target."""
    family = rng.choice(spec.fonts)
    size = rng.randint(min(12, spec.font_size[0]), max(20, spec.font_size[1]))
    font = C.get_font(family, size)
    margin = rng.randint(3, 14)
    words: list[str] = []
    for _ in range(rng.randint(1, 7)):
        kind = rng.random()
        if kind < 0.35:
            w = rng.choice(C.NOUNS + C.ADJECTIVES + C.ITEMS + C.CITIES + C.FIRST_NAMES)
            w = w.capitalize() if rng.random() < 0.3 else w
        elif kind < 0.75:
            w = "".join(rng.choice(LINE_CHARS) for _ in range(rng.randint(1, 9)))
        elif kind < 0.9:
            w = C.number(rng)
        else:
            w = C.fmt_price(C.price(rng))
        if font.getlength(" ".join([*words, w])) > 448 - 2 * margin:
            break
        words.append(w)
    text = " ".join(words) or rng.choice(LINE_CHARS)
    lh = round(size * rng.uniform(1.2, 1.5))
    w = max(28, round(font.getlength(text)) + 2 * margin)
    h = lh + 2 * margin
    line = Line(margin, lh, size, [Run(margin, text)])
    return DocPlan("line", text, (w, h), family, size, [line], [], C.paper_color(rng),
                   C.ink_color(rng, spec.color_jitter), {"chars": len(text)})


def draw_document(plan: DocPlan, rng: random.Random, spec: DocSpec = DocSpec(),
                  record: dict | None = None) -> Image.Image:
    img = Image.new("RGB", plan.size, plan.background)
    d = ImageDraw.Draw(img)
    for line in plan.lines:
        for run in line.runs:
            font = C.get_font(plan.family, line.size, run.bold)
            x = run.x - font.getlength(run.text) if run.right else run.x
            # centre the glyph box vertically in the line box
            ty = line.y + (line.height - line.size * 1.2) / 2
            C.draw_text(d, (x, ty), run.text, font, plan.ink, run.bold)
    rule = tuple(min(255, c + 90) for c in plan.ink)
    for r in plan.rules:
        d.line(r, fill=rule, width=1)
    return C.degrade(img, rng, rotation=spec.rotation, blur_p=spec.blur, blur_radius=spec.blur_radius,
                     noise=spec.noise, fill=plan.background, record=record)


def render_document(rng: random.Random, spec: DocSpec = DocSpec()) -> tuple[Image.Image, str]:
    """(RGB image, exact Markdown) of one synthetic document."""
    plan = plan_document(rng, spec)
    return draw_document(plan, rng, spec), plan.markdown


__all__ = ["DocPlan", "DocSpec", "Glyph", "LAYOUTS", "draw_document", "glyphs", "plan_line", "plan_document", "render_document"]
