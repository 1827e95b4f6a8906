"""Post-processing of `kvl ocr` pages and the output formats (tasks.md §1.1; issue "kvl ocr").

The model is asked for GitHub-flavoured markdown in olmOCR/marker conventions (pipe tables, HTML tables
when cells span, `$…$` / `$$…$$` math, no page furniture). Models drift from any prompt, so each page is
cleaned here: thinking blocks and a code fence wrapped around the whole page are removed, `\\(…\\)` /
`\\[…\\]` math is rewritten to dollars, pipe tables get a delimiter row, equal column counts and blank lines
around them, and a lone page number at the top or bottom goes. Pages are then joined with a separator that
users can split on: `<!-- page N -->` lines in markdown, form feeds in text, `<section data-page>` in HTML.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from html.parser import HTMLParser
from typing import IO, Iterable

PAGE_MARK = "<!-- page {n} -->"
PAGE_SPLIT = re.compile(r"^<!-- page (\d+) -->$", re.M)  # what docs/documents.md tells users to split on

_THINK = [("◁think▷", "◁/think▷"), ("<think>", "</think>")]
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})([\w+-]*)[^\n]*\n")
_DELIM_CELL = re.compile(r"^\s*:?-{1,}:?\s*$")
_PIPE = re.compile(r"(?<!\\)\|")
_FURNITURE = re.compile(r"^\s*(?:page\s+)?[-–]?\s*(?:\d{1,4}|[ivx]{1,5})\s*[-–]?(?:\s*(?:of|/)\s*\d{1,4})?\s*$", re.I)
_MATH = re.compile(r"\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$\w])\$(?!\s)[^$\n]+?(?<![\s\\])\$(?!\d)", re.S)


def strip_thinking(text: str) -> tuple[str, bool]:
    """Remove reasoning blocks; (text, truncated). An opened block that never closes leaves no page text."""
    for open_tag, close_tag in _THINK:
        while (i := text.find(open_tag)) >= 0:
            j = text.find(close_tag, i)
            if j < 0:
                return text[:i].strip(), True
            text = text[:i] + text[j + len(close_tag):]
        # a close tag without its opener (the prompt prefilled the opener): the reasoning precedes it
        if close_tag in text:
            text = text.split(close_tag, 1)[1]
    return text.strip(), False


def unwrap_fence(text: str) -> str:
    """Drop a code fence wrapped around the whole page (```markdown … ```), also an unclosed one."""
    m = _FENCE.match(text)
    if not m or m.group(2).lower() not in ("", "markdown", "md", "gfm", "html", "text", "txt"):
        return text
    body = text[m.end():]
    fence = m.group(1)
    lines = body.rstrip().split("\n")
    inner_fences = sum(1 for ln in lines[:-1] if ln.strip().startswith(fence[0] * 3))
    if not m.group(2) and inner_fences:
        return text  # a bare fence around text that itself holds code blocks: likely a real code listing
    if lines and lines[-1].strip() == fence:
        lines = lines[:-1]
    return "\n".join(lines).strip()


def normalize_math(text: str) -> str:
    text = re.sub(r"\\\[(.+?)\\\]", lambda m: f"$${m.group(1)}$$", text, flags=re.S)
    return re.sub(r"\\\((.+?)\\\)", lambda m: f"${m.group(1).strip()}$", text)


def _cells(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    return [c.strip() for c in _PIPE.split(s)]


def _is_delim(line: str) -> bool:
    cells = _cells(line)
    return bool(cells) and all(_DELIM_CELL.match(c) for c in cells) and "-" in line


def _table_block(rows: list[str]) -> list[str]:
    """Rewrite one pipe table: header, delimiter (alignment kept), body, all with the same column count."""
    header = _cells(rows[0])
    if len(rows) > 1 and _is_delim(rows[1]):
        aligns, body = _cells(rows[1]), rows[2:]
    else:
        aligns, body = [], rows[1:]  # the model left out the delimiter row
    body_cells = [_cells(r) for r in body if not _is_delim(r)]
    width = max([len(header), *(len(c) for c in body_cells)])

    def fmt(cells: list[str]) -> str:
        cells = cells + [""] * (width - len(cells))
        return "| " + " | ".join(cells) + " |"

    def delim(a: str) -> str:
        a = a.strip()
        return (":" if a.startswith(":") else "") + "---" + (":" if a.endswith(":") and len(a) > 1 else "")

    aligns = aligns + ["---"] * (width - len(aligns))
    return [fmt(header), "| " + " | ".join(delim(a) for a in aligns[:width]) + " |", *map(fmt, body_cells)]


def normalize_tables(text: str) -> str:
    """Find runs of pipe rows outside code blocks and normalise each; other lines pass unchanged."""
    lines, out, i, in_code = text.split("\n"), [], 0, False
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
        if in_code or not _PIPE.search(line):
            out.append(line)
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip() and _PIPE.search(lines[j]) and not lines[j].lstrip().startswith("```"):
            j += 1
        run = lines[i:j]
        is_table = (len(run) >= 2 and _is_delim(run[1])) or (
            len(run) >= 2 and all(r.strip().startswith("|") and r.strip().endswith("|") for r in run))
        if is_table:
            if out and out[-1].strip():
                out.append("")
            out.extend(_table_block(run))
            if j < len(lines) and lines[j].strip():
                out.append("")
        else:
            out.extend(run)
        i = j
    return "\n".join(out)


def strip_furniture(text: str) -> str:
    """Drop a bare page number ("12", "- 12 -", "Page 3 of 10", "iv") on the first or last line."""
    lines = text.split("\n")
    for idx in (0, -1):
        nonblank = [k for k, ln in enumerate(lines) if ln.strip()]
        if len(nonblank) > 1 and _FURNITURE.match(lines[nonblank[idx]]):
            del lines[nonblank[idx]]
    return "\n".join(lines)


def clean_page(raw: str, keep_furniture: bool = False) -> tuple[str, bool]:
    """Model output of one page -> (markdown, truncated)."""
    text, truncated = strip_thinking(raw.replace("\r\n", "\n").replace("\r", "\n"))
    text = unwrap_fence(text)
    text = normalize_math(text)
    text = normalize_tables(text)
    if not keep_furniture:
        text = strip_furniture(text)
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip(), truncated


# ---- output formats ------------------------------------------------------------------------------

def page_chunk(fmt: str, number: int, text: str, first: bool, multi: bool) -> str:
    """The piece of a markdown or text document that page `number` adds; END[fmt] closes the document."""
    if fmt == "text":
        # A form feed between pages is pdftotext's convention; `str.split("\f")` undoes it.
        return ("" if first else "\n\f") + markdown_to_text(text)
    head = f"{PAGE_MARK.format(n=number)}\n\n" if multi else ""
    return ("" if first else "\n\n") + (head + text.strip()).rstrip()


END = {"markdown": "\n", "text": "\n"}


def join_pages(fmt: str, pages: Iterable[tuple[int, str]]) -> str:
    pages = list(pages)
    chunks = [page_chunk(fmt, n, t, i == 0, len(pages) > 1) for i, (n, t) in enumerate(pages)]
    return "".join(chunks) + (END[fmt] if pages else "")


def _protect_math(md: str) -> tuple[str, list[str]]:
    # Markdown would read `_` and `*` inside formulas as emphasis: park formulas behind inert tokens.
    found: list[str] = []

    def park(m: re.Match) -> str:
        found.append(m.group(0))
        return f"KVLMATH{len(found) - 1}X"

    return _MATH.sub(park, md), found


def markdown_to_html(md: str) -> str:
    import markdown

    parked, formulas = _protect_math(md)
    out = markdown.markdown(parked, extensions=["tables", "fenced_code", "sane_lists"])
    return re.sub(r"KVLMATH(\d+)X", lambda m: f'<span class="math">{html.escape(formulas[int(m.group(1))])}</span>', out)


def html_document(pages: Iterable[tuple[int, str]], title: str) -> str:
    body = "\n".join(f'<section class="page" data-page="{n}">\n{markdown_to_html(t)}\n</section>' for n, t in pages)
    return (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"</head>\n<body>\n{body}\n</body>\n</html>\n")


class _TextOnly(HTMLParser):
    PARAGRAPHS = {"p", "div", "section", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "blockquote",
                  "ul", "ol", "hr"}
    LINES = {"li", "tr", "br"}  # start a new line, no blank line

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.first_cell = True
        self.pre = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.pre += tag == "pre"
        if tag in self.PARAGRAPHS:
            self.parts.append("\n\n")
        elif tag in self.LINES:
            self.parts.append("\n")
        if tag == "tr":
            self.first_cell = True
        if tag in ("td", "th"):
            if not self.first_cell:
                self.parts.append("\t")  # cells stay apart without any markup
            self.first_cell = False

    def handle_endtag(self, tag: str) -> None:
        self.pre -= tag == "pre" and self.pre > 0
        if tag in self.PARAGRAPHS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self.pre:
            self.parts.append(data)
        elif data.strip() or "\n" not in data:  # newline-only nodes are the HTML's own layout, not text
            data = re.sub(r"\s+", " ", data)  # outside <pre>, any whitespace run is one space
            self.parts.append(data.lstrip() if not self.parts or self.parts[-1].endswith("\n") else data)


def markdown_to_text(md: str) -> str:
    parser = _TextOnly()
    parser.feed(markdown_to_html(md))
    text = "".join(parser.parts)
    text = re.sub(r"\$\$(.+?)\$\$|\$(.+?)\$", lambda m: m.group(1) or m.group(2), text, flags=re.S)
    text = "\n".join(ln.rstrip() for ln in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


class Writer:
    """Writes one document's pages (ocr.PageResult) in the chosen format as they arrive; json/html at close."""

    def __init__(self, fh: IO[str], fmt: str, multi: bool, title: str, meta: dict):
        self.fh, self.fmt, self.multi, self.title, self.meta = fh, fmt, multi, title, meta
        self.records: list = []  # ocr.PageResult dataclasses

    def page(self, r) -> None:
        first = not self.records
        self.records.append(r)
        if self.fmt in ("markdown", "text"):
            self.fh.write(page_chunk(self.fmt, r.page, r.text, first, self.multi))
            self.fh.flush()

    def close(self) -> None:
        if self.fmt in ("markdown", "text"):
            self.fh.write(END[self.fmt] if self.records else "")
        elif self.fmt == "json":
            self.fh.write(json.dumps({**self.meta, "pages": [asdict(r) for r in self.records]},
                                     indent=2, ensure_ascii=False) + "\n")
        else:
            self.fh.write(html_document([(r.page, r.text) for r in self.records], self.title))
        self.fh.flush()
