"""A PDF page's own text layer as structured markdown, no model (issue #17; tasks.md §1.1).

`kvl ocr --text-layer only` and the layer pages of `--text-layer auto` come from here. From PyMuPDF's span
dictionary (positions, sizes, fonts) the page is rebuilt in olmOCR's conventions:

- tables: PyMuPDF's table finder (ruled tables), written as pipe tables, or HTML where cells span;
- headings: blocks set clearly larger than the body size (`#`, `##`, `###` by size rank), or short bold lines;
- lists: bullet glyphs become `- `, numbered items keep their numbers;
- reading order: blocks sorted top to bottom, and where the page has two columns, each column band in turn
  (full-width blocks such as titles and figures cut the page into bands);
- a word hyphenated at a line end is joined; math is left as the layer has it;
- running headers, footers, page numbers and rotated margin text ("Downloaded from ...") are dropped unless
  keep_furniture: blocks in the top/bottom band of the page that are short and not larger than the body text.

`judge` says whether a page's layer should be used at all (auto mode): not when it is missing, mostly
invisible (a scan's OCR layer), garbled glyph codes, or covers little of a page that is mostly image.
Shapes: page coordinates are PDF points, origin top-left; bbox = (x0, y0, x1, y1).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

BULLETS = "•●○◦▪■□➢►▸‣⁃∙·*-–"
_BULLET = re.compile(rf"^\s*[{re.escape(BULLETS)}]\s+")
_NUMBERED = re.compile(r"^\s*(?:\(?\d{1,3}[.)]|\(?[a-zA-Z][.)]|\([ivx]{1,4}\))\s+")
_PAGE_NO = re.compile(r"^\s*(?:page\s+)?[-–]?\s*(?:\d{1,4}|[ivxlc]{1,6})\s*[-–]?(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.I)
BAND = 0.075  # top and bottom share of the page height where running headers and footers live
MIN_CHARS = 20
_LEADER = re.compile(r"^[\s.·…_\-–—]{6,}$")
_ENDS = (".", "!", "?", ":", ";", '"', "”", ")", "]")


@dataclass
class Unit:
    """One piece of the page in reading order: a text block (paragraph, heading, list) or a table."""

    bbox: tuple[float, float, float, float]
    md: str
    chars: int
    furniture: bool = False
    kind: str = "p"  # p (paragraph) | h (heading) | li (list item) | table
    text: str = ""  # the plain text of a p/h unit, for joining across column and page breaks


def _visible_spans(line: dict) -> list[dict]:
    return [s for s in line["spans"] if s.get("alpha", 255) != 0 and s["text"].strip()]


def _join(lines: list[str]) -> str:
    """Lines of one paragraph as one line; a word broken by a hyphen at a line end is joined."""
    out = ""
    for ln in lines:
        # Two single quotes set as a double one (TeX's ``...''): the reader sees a double quote.
        ln = ln.strip().replace("‘‘", "“").replace("’’", "”").replace("``", "“").replace("''", "”")
        if not ln:
            continue
        if out.endswith("-") and len(out) > 1 and out[-2].isalpha() and ln[:1].islower():
            out = out[:-1] + ln
        else:
            out = f"{out} {ln}" if out else ln
    return out


def _cell(c) -> str:
    return re.sub(r"\s+", " ", c or "").replace("|", "\\|").strip()


def _table_md(rows: list[list]) -> str:
    width = max(len(r) for r in rows)
    rows = [list(r) + [None] * (width - len(r)) for r in rows]
    if any(c is None for r in rows for c in r):
        return _table_html(rows)
    head, *body = rows
    lines = ["| " + " | ".join(_cell(c) for c in head) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _table_html(rows: list[list]) -> str:
    """PyMuPDF marks a cell covered by a spanning neighbour as None: fold those into colspan/rowspan."""
    import html

    n_rows, n_cols = len(rows), len(rows[0])
    covered = [[False] * n_cols for _ in rows]
    out = ["<table>"]
    for i, r in enumerate(rows):
        cells = []
        for j, c in enumerate(r):
            if covered[i][j] or (c is None and not (j == 0 and i == 0)):
                if not covered[i][j]:
                    cells.append("<td></td>")  # a None with no spanning owner: an empty cell
                continue
            cs = 1
            while j + cs < n_cols and rows[i][j + cs] is None and not covered[i][j + cs]:
                cs += 1
            for b in range(j, j + cs):
                covered[i][b] = True
            # No rowspan: PyMuPDF also gives None for cells of a section row that has fewer dividers, and
            # spanning those down would copy values into rows where they do not stand.
            attrs = f' colspan="{cs}"' if cs > 1 else ""
            tag = "th" if i == 0 else "td"
            body = html.escape(re.sub(r"\s+", " ", c or "").strip())
            cells.append(f"<{tag}{attrs}>{body}</{tag}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _inside(b, r, slack: float = 2.0) -> bool:
    cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
    return r[0] - slack <= cx <= r[2] + slack and r[1] - slack <= cy <= r[3] + slack


def _cell_text(spans: list[tuple], bbox) -> str:
    """The spans whose centre lies in a cell, in line order. PyMuPDF's own extract() re-reads characters
    and loses some (a decimal point drawn apart: 3.71T came out "371T ."); the span text keeps them."""
    if bbox is None:
        return None
    inside = [s for s in spans if _inside(s[0], bbox, 0.5)]
    inside.sort(key=lambda s: (round(s[0][3] / 3), s[0][0]))
    return _join([s[1] for s in inside]) if inside else ""


_NUM = re.compile(r"^[-+$€£(]*\s*[\d.,]+\s*[%)MBKTx]*$")


def _header_above(spans: list[tuple], cols: list[tuple[float, float]], top: float, lh: float) -> list[list]:
    """Header rows set above a table's first ruling (booktabs): the lines just above whose spans fall in the
    table's columns. A span over several columns ("Year Ended" over three years) spans them (None = covered
    by the cell to its left, as PyMuPDF marks it). Returned top row first."""
    rows: list[list] = []
    y = top
    for _ in range(3):
        band = [s for s in spans if y - 1.6 * lh <= s[0][3] <= y + 1 and s[0][1] < y - 1]
        if not band:
            break
        starts: dict[int, list] = {}
        ends: dict[int, int] = {}
        for s in sorted(band, key=lambda s: s[0][0]):
            over = [k for k, (a, b) in enumerate(cols) if s[0][0] < b - 1 and s[0][2] > a + 1]
            if not over:
                return rows[::-1]  # text outside the columns: a caption or prose, not a header
            starts.setdefault(over[0], []).append(s[1])
            ends[over[0]] = max(ends.get(over[0], over[0]), over[-1])
        if len(starts) < 2 and not rows:
            break  # one lone line above a table is its caption more often than its header
        row: list = [""] * len(cols)
        for k, texts in starts.items():
            row[k] = _join(texts)
            for j in range(k + 1, ends[k] + 1):
                if j not in starts and row[j] == "":
                    row[j] = None
        rows.append(row)
        y = min(s[0][1] for s in band)
    return rows[::-1]


def _tables(page, spans: list[tuple]) -> list[tuple[tuple, str]]:
    out = []
    for strategy, clip in (("lines", _ruled_area(page)), ("text", _numeric_area(spans, page.rect.width))):
        if clip is None:
            continue  # the table finder is the slow part of a page (seconds): run it only where one can be
        try:
            # use_layout=False: PyMuPDF would otherwise gate tables with its ONNX layout model, and this
            # path promises no model (it was also no faster and no better on olmOCR-Bench).
            found = page.find_tables(clip=clip, strategy=strategy, use_layout=False)
        except Exception:  # noqa: BLE001 -- a table finder failure must not lose the page's text
            continue
        for t in found.tables:
            try:
                near = [sp for sp in spans if _overlap(sp[0], t.bbox) or _overlap(sp[0], (t.bbox[0], t.bbox[1] - 60, t.bbox[2], t.bbox[1]))]
                rows = [[_cell_text(near, c) for c in r.cells] for r in t.rows]
                bbox = tuple(t.bbox)
                cells = [c for r in t.rows for c in r.cells if c is not None]
            except Exception:  # noqa: BLE001
                continue
            width = max(len(r) for r in rows) if rows else 0
            # Column extents from the rows that have every divider (a spanning row would widen a column).
            full = [r.cells for r in t.rows if len(r.cells) == width and all(c is not None for c in r.cells)]
            cols = [(min(c[k][0] for c in full), max(c[k][2] for c in full)) for k in range(width)] if full else []
            lh = min((c[3] - c[1] for c in cells), default=10.0)
            head = _header_above(spans, cols, bbox[1], max(6.0, min(lh, 14.0))) if cols else []
            if head:
                rows = head + rows
                hy = min(s[0][1] for s in spans if s[0][3] <= bbox[1] + 1 and s[0][3] >= bbox[1] - 1.6 * lh * len(head) - 1)
                bbox = (bbox[0], min(bbox[1], hy), bbox[2], bbox[3])
            rows = [r for r in rows if any((c or "").strip() for c in r)]
            keep = [k for k in range(width) if any(k < len(r) and (r[k] or "").strip() for r in rows)]
            rows = [[r[k] if k < len(r) else "" for k in keep] for r in rows]
            if len(rows) < 2 or len(keep) < 2:
                continue  # a ruled box around text, not a table
            if strategy == "text":
                # Whitespace-aligned tables are found among prose too: keep only number-filled grids.
                vals = [c for r in rows for c in r if (c or "").strip()]
                if len(rows) < 3 or len(keep) < 3 or sum(bool(_NUM.match(c)) for c in vals) < 0.3 * len(vals):
                    continue
                if any(_overlap(bbox, b) for b, _ in out):
                    continue
            out.append((bbox, _table_md(rows)))
        if out:
            break
    return out


def _ruled_area(page):
    """The box around the page's horizontal and vertical rules, or None with fewer than two (no ruled table)."""
    import pymupdf

    try:
        paths = page.get_drawings()
    except Exception:  # noqa: BLE001
        return None
    rules = []
    for p in paths:
        for it in p.get("items", ()):
            if it[0] == "l":
                a, b = it[1], it[2]
                if (abs(a.y - b.y) < 1 or abs(a.x - b.x) < 1) and max(abs(a.x - b.x), abs(a.y - b.y)) >= 15:
                    rules.append(pymupdf.Rect(min(a.x, b.x), min(a.y, b.y), max(a.x, b.x), max(a.y, b.y)))
            elif it[0] == "re":
                r = it[1]
                # a cell, or a rule drawn as a thin box; not a page frame or a coloured panel
                if (r.width >= 15 or r.height >= 15) and r.width * r.height < 0.1 * page.rect.width * page.rect.height:
                    rules.append(pymupdf.Rect(r))
    if len(rules) < 2:
        return None
    # min/max by hand: a rule is a zero-height rect, and Rect union ignores empty rects
    return pymupdf.Rect(min(r.x0 for r in rules) - 5, min(r.y0 for r in rules) - 5,
                        max(r.x1 for r in rules) + 5, max(r.y1 for r in rules) + 5)


def _numeric_area(spans: list[tuple], width: float):
    """The band of the page holding three or more rows with three or more numbers each (a table laid out by
    whitespace alone), or None."""
    rows: dict[int, list] = {}
    for bb, t in spans:
        if _NUM.match(t.strip()):
            rows.setdefault(round((bb[1] + bb[3]) / 6), []).append(bb)
    hits = [v for v in rows.values() if len({round(b[0] / 20) for b in v}) >= 3]
    if len(hits) < 3:
        return None
    y0 = min(b[1] for v in hits for b in v)
    y1 = max(b[3] for v in hits for b in v)
    return (0, max(0.0, y0 - 60), width, y1 + 5)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _order(units: list[Unit], width: float) -> list[Unit]:
    """Reading order: top to bottom, column by column inside each band between full-width units."""
    mid, gap = width / 2, width * 0.03
    side = {}
    for u in units:
        x0, _, x1, _ = u.bbox
        side[id(u)] = "L" if x1 <= mid + gap else "R" if x0 >= mid - gap else "F"
    left = sum(u.chars for u in units if side[id(u)] == "L")
    right = sum(u.chars for u in units if side[id(u)] == "R")
    total = sum(u.chars for u in units) or 1
    by_y = sorted(units, key=lambda u: (round(u.bbox[1]), u.bbox[0]))
    if left < 0.15 * total or right < 0.15 * total:
        return by_y
    out, band = [], []

    def flush():
        band.sort(key=lambda u: (side[id(u)] != "L", u.bbox[1], u.bbox[0]))
        out.extend(band)
        band.clear()

    for u in by_y:
        if side[id(u)] == "F":
            flush()
            out.append(u)
        else:
            band.append(u)
    flush()
    return out


def _block_units(block: dict, body: float, heading_sizes: list[float], page_h: float) -> list[Unit]:
    """A text block -> paragraph / heading / list units (a block may mix a heading and its text)."""
    lines = []
    for ln in block["lines"]:
        d = ln.get("dir", (1, 0))
        spans = _visible_spans(ln)
        if not spans:
            continue
        text = "".join(s["text"] for s in ln["spans"] if s.get("alpha", 255) != 0)
        size = max(s["size"] for s in spans)
        bold = all(s["flags"] & 16 or "bold" in s["font"].lower() for s in spans)
        lines.append({"text": text, "size": round(size, 1), "bold": bold, "bbox": ln["bbox"],
                      "rotated": abs(d[1]) > 0.1})
    if not lines:
        return []
    # Split where the size changes (heading over its paragraph) or a list item starts.
    groups: list[list[dict]] = []
    for ln in lines:
        g = groups[-1] if groups else None
        if g is None or abs(ln["size"] - g[-1]["size"]) > 0.6 or ln["bold"] != g[-1]["bold"] and \
                (ln["bold"] or g[-1]["bold"]) and len(g[-1]["text"]) < 80 or \
                _BULLET.match(ln["text"]) or (_NUMBERED.match(ln["text"]) and len(g) > 0 and g[0]["text"][:1].isdigit()
                                              and _NUMBERED.match(g[0]["text"])):
            groups.append([ln])
        else:
            g.append(ln)
    units = []
    for g in groups:
        text = _join([ln["text"] for ln in g])
        if not text:
            continue
        bbox = (min(ln["bbox"][0] for ln in g), min(ln["bbox"][1] for ln in g),
                max(ln["bbox"][2] for ln in g), max(ln["bbox"][3] for ln in g))
        size, bold = g[0]["size"], all(ln["bold"] for ln in g)
        if _LEADER.match(text):
            continue  # a dotted rule or leader: decoration, not text
        md, kind = text, "p"
        if m := _BULLET.match(text):
            md, kind = "- " + text[m.end():], "li"
        elif _NUMBERED.match(text):
            kind = "li"
        elif size >= body * 1.18 and len(text) < 200 and body > 0:
            level = 1 + min(2, sum(1 for s in heading_sizes if s > size + 0.3))
            md, kind = "#" * level + " " + text, "h"
        elif bold and len(text) < 100 and len(g) <= 2 and not text.endswith((".", ",", ":", ";")) \
                and not text.replace(" ", "").isdigit():
            md, kind = "#" * min(3, 2 + min(1, len([s for s in heading_sizes if s > size]))) + " " + text, "h"
        rotated = any(ln["rotated"] for ln in g)
        top, bottom = bbox[3] <= page_h * BAND, bbox[1] >= page_h * (1 - BAND)
        # Titles sit near the top and are large: there only text no larger than the body counts; at the
        # bottom a short line in the last eighth ("NETS 2015", a journal name) is a footer too.
        furniture = rotated or (top and len(text) < 150 and size <= body * 1.1) or (bottom and len(text) < 150) \
            or (bbox[1] >= page_h * 0.88 and len(text) < 40 and size <= body * 1.1) \
            or (bool(_PAGE_NO.match(text)) and (bbox[3] <= page_h * 0.12 or bbox[1] >= page_h * 0.88))
        units.append(Unit(bbox, md, len(text), furniture, kind, text))
    return units


def page_dict(page) -> dict:
    """The page's text layer as pymupdf's span dictionary (what `judge` and `page_markdown` read)."""
    return page.get_text("dict", flags=_flags())


def page_markdown(page, keep_furniture: bool = False, d: dict | None = None) -> str:
    """One pymupdf page's text layer as markdown (see the module docstring); `d`: its `page_dict`."""
    d = d if d is not None else page_dict(page)
    w, h = page.rect.width, page.rect.height
    blocks = [b for b in d["blocks"] if b.get("type", 0) == 0]
    sizes: Counter = Counter()
    for b in blocks:
        for ln in b["lines"]:
            for s in _visible_spans(ln):
                sizes[round(s["size"], 1)] += len(s["text"].strip())
    body = sizes.most_common(1)[0][0] if sizes else 0.0
    heading_sizes = sorted({s for s, n in sizes.items() if s >= body * 1.18 and n >= 3}, reverse=True)
    spans = [(s["bbox"], s["text"]) for b in blocks for ln in b["lines"] for s in _visible_spans(ln)]
    tables = _tables(page, spans) if blocks else []
    units: list[Unit] = [Unit(bb, md, len(md), kind="table") for bb, md in tables]
    for b in blocks:
        for u in _block_units(b, body, heading_sizes, h):
            if any(_inside(u.bbox, bb) for bb, _ in tables):
                continue  # text that the table already holds
            if u.furniture and not keep_furniture:
                continue
            units.append(u)
    return "\n\n".join(u.md for u in _stitch(_order(units, w))).strip()


def _stitch(units: list[Unit]) -> list[Unit]:
    """Join what the layout split: a drop capital with the rest of its word, and a paragraph that runs on
    from the foot of one column to the head of the next (it ends mid-sentence, the next starts lowercase)."""
    out: list[Unit] = []
    for u in units:
        prev = out[-1] if out else None
        if prev is not None and u.kind == "p" and u.text[:1].islower():
            if prev.kind == "h" and len(prev.text) == 1 and prev.text.isupper():
                out[-1] = Unit(prev.bbox, prev.text + u.text, u.chars + 1, False, "p", prev.text + u.text)
                continue
            if prev.kind == "p" and not prev.text.endswith(_ENDS):
                text = _join([prev.text, u.text])
                out[-1] = Unit(prev.bbox, text, len(text), False, "p", text)
                continue
        out.append(u)
    return out


def _flags() -> int:
    import pymupdf

    # Ligatures as letters, no images; MEDIABOX_CLIP drops text placed off the page.
    return pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP


def judge(page, d: dict | None = None) -> tuple[bool, str]:
    """(use the text layer?, why) for `--text-layer auto`; `d`: the page's `page_dict`."""
    d = d if d is not None else page_dict(page)
    visible = invisible = junk = 0
    for b in d["blocks"]:
        if b.get("type", 0) != 0:
            continue
        for ln in b["lines"]:
            for s in ln["spans"]:
                chars = [c for c in s["text"] if not c.isspace()]
                if s.get("alpha", 255) == 0:
                    invisible += len(chars)
                else:
                    visible += len(chars)
                    junk += sum(1 for c in chars if c == "\ufffd" or ord(c) < 32 or 0xE000 <= ord(c) <= 0xF8FF)
    area = max(page.rect.width * page.rect.height, 1.0)
    try:
        img_area = sum(max(0.0, (i["bbox"][2] - i["bbox"][0]) * (i["bbox"][3] - i["bbox"][1]))
                       for i in page.get_image_info())
    except Exception:  # noqa: BLE001
        img_area = 0.0
    img_share = min(1.0, img_area / area)
    if visible + invisible < MIN_CHARS:
        return False, "no text layer" + (" (an image page)" if img_share > 0.3 else "")
    if invisible > visible:
        return False, f"invisible text over an image ({invisible} of {visible + invisible} characters): a scan's OCR layer"
    if junk / max(visible, 1) >= 0.1:
        return False, f"garbled glyph codes ({junk} of {visible} characters unreadable)"
    if img_share > 0.5 and visible < 300:
        return False, f"images cover {img_share:.0%} of the page and the layer has only {visible} characters"
    return True, f"usable text layer ({visible} characters)"
