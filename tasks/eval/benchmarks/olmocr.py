"""olmOCR-Bench (allenai/olmocr bench; tasks.md §1.1): PDF pages to Markdown, judged by the benchmark's unit
tests. Not in the Kimi-VL report; it measures `kvl ocr`'s prompt on human-checked ground truth.

One sample is one PDF page (rendered so that its longest side is `--set longest_side=…` px, 1288 as olmOCR's
runners use, with only pixels given to the model), prompted with kvl's OCR prompt; its score is the share of
that page's tests passed. Overall = tests passed / tests run, with per-type and per-file breakdowns.

The tests follow the benchmark's rules (`olmocr/bench/tests.py`), reimplemented:
- text is normalised as the benchmark does (no bold/italic markers, `<br>` as space, collapsed whitespace, NFC,
  typographic quotes and dashes to ASCII);
- present/absent: fuzzy containment allowing `max_diffs` edits (the reference thresholds rapidfuzz's
  `partial_ratio`; with max_diffs = 0, 94 of the 99 sample tests, both are exact containment; otherwise kvl
  uses the edit distance of the best-matching substring), with `first_n`/`last_n` and the length guard;
- order: `before` found (within max_diffs) starting before some match of `after`;
- table: a cell of a Markdown or HTML table matching `cell` (similarity ≥ max(0.5, 1 - max_diffs/len)) whose
  up/down/left/right neighbours and top/left headings match;
- math: a `$…$`, `$$…$$`, `\\(…\\)` or `\\[…\\]` span equal to the expected LaTeX, ignoring whitespace. The
  reference compares KaTeX renderings, which kvl does not have: this is stricter (labelled in the results);
- baseline: non-blank (or at most `max_length` characters for blank pages), no long trailing repetition, no
  CJK/emoji.

Data: a folder holding `*.jsonl` test files and `pdfs/`, or one JSONL file (PDFs in --images or `pdfs/`).
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser
from pathlib import Path

from kvl_core.errors import KvlError
from kvl_core.prompts import ocr_prompt
from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, Sample, Skipped, image_part, text_message, text_part
from kvl_tasks.eval.readers import read_rows
from kvl_tasks.eval.scoring import best_substring_distance, indel_ratio, near_match_starts, strip_thinking

TYPES = ("present", "absent", "order", "table", "math", "baseline")
_REPLACE = {"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_", "–": "-", "—": "-", "‑": "-",
            "‒": "-", "−": "-", "\u00b5": "\u03bc"}


def normalize_text(s: str) -> str:
    s = re.sub(r"<br/?>", " ", s)
    s = re.sub(r"\*\*(.*?)\*\*", r"\1", s)
    s = re.sub(r"__(.*?)__", r"\1", s)
    s = re.sub(r"</?[bi]>", "", s)
    s = re.sub(r"(\*|_)(.*?)\1", r"\2", s)
    s = re.sub(r"\s+", " ", s)
    s = unicodedata.normalize("NFC", s)
    for a, b in _REPLACE.items():
        s = s.replace(a, b)
    return s


# ---- tables ------------------------------------------------------------------------------------------

Grid = list[list[str]]


def markdown_tables(text: str) -> list[tuple[Grid, int]]:
    """(rows of cells, number of header rows) for every pipe table."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        s = line.strip()
        if s.startswith("|") or (s.count("|") >= 2 and cur):
            cur.append(s)
            continue
        if len(cur) >= 2:
            rows = [[c.strip() for c in r.strip("|").split("|")] for r in cur]
            header = 0
            body = []
            for k, r in enumerate(rows):
                if all(re.fullmatch(r":?-{2,}:?", c) for c in r if c) and any(r):
                    header = k
                    continue
                body.append(r)
            tables.append((body, header))
        cur = []
    return tables


class _HTMLTables(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[list[list[tuple[str, int, int, bool]]], None]] = []
        self.stack: list[list] = []
        self.cell: list[str] | None = None
        self.span = (1, 1, False)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.stack.append([])
        elif tag == "tr" and self.stack:
            self.stack[-1].append([])
        elif tag in ("td", "th") and self.stack:
            if not self.stack[-1]:
                self.stack[-1].append([])
            self.cell = []
            self.span = (_int(a.get("rowspan")), _int(a.get("colspan")), tag == "th")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.stack:
            self.stack[-1][-1].append(("".join(self.cell).strip(), *self.span))
            self.cell = None
        elif tag == "table" and self.stack:
            self.tables.append((self.stack.pop(), None))

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _int(v) -> int:
    try:
        return max(1, int(v))
    except (TypeError, ValueError):
        return 1


def html_tables(text: str) -> list[tuple[Grid, int]]:
    p = _HTMLTables()
    try:
        p.feed(text)
        p.close()
    except Exception:  # noqa: BLE001 -- model output is arbitrary; a table that does not parse is no table
        return []
    out = []
    for rows, _ in p.tables:
        grid: dict[tuple[int, int], str] = {}
        header_rows = 0
        for r, row in enumerate(rows):
            c = 0
            if row and all(cell[3] for cell in row) and r == header_rows:
                header_rows += 1
            for text_, rs, cs, _th in row:
                while (r, c) in grid:
                    c += 1
                for dr in range(rs):
                    for dc in range(cs):
                        grid[(r + dr, c + dc)] = text_
                c += cs
        if grid:
            nr = max(k[0] for k in grid) + 1
            nc = max(k[1] for k in grid) + 1
            out.append(([[grid.get((r, c), "") for c in range(nc)] for r in range(nr)], max(header_rows, 1)))
    return out


def table_test(content: str, t: dict) -> tuple[bool, str]:
    md = max(0, int(t.get("max_diffs") or 0))
    norm = {k: normalize_text(str(t.get(k) or "")) for k in ("cell", "up", "down", "left", "right",
                                                          "top_heading", "left_heading")}

    def close(expected: str, got: str) -> bool:
        return indel_ratio(expected, normalize_text(got)) >= max(0.5, 1.0 - md / (len(expected) or 1))

    tables = markdown_tables(content) + html_tables(content)
    if not tables:
        return False, "no tables found"
    for grid, header in tables:
        for r, row in enumerate(grid):
            for c, cell in enumerate(row):
                if not close(norm["cell"], cell):
                    continue
                rel = {
                    "up": [grid[r - 1][c]] if r > 0 and c < len(grid[r - 1]) else [],
                    "down": [grid[r + 1][c]] if r + 1 < len(grid) and c < len(grid[r + 1]) else [],
                    "left": [row[c - 1]] if c > 0 else [],
                    "right": [row[c + 1]] if c + 1 < len(row) else [],
                    "top_heading": [grid[h][c] for h in range(min(header, len(grid))) if c < len(grid[h])] or
                                   ([grid[0][c]] if grid and c < len(grid[0]) else []),
                    "left_heading": [row[0]] if row else [],
                }
                if all(not norm[k] or any(close(norm[k], x) for x in rel[k]) for k in rel):
                    return True, ""
    return False, f"no table cell {norm['cell'][:40]!r} with the expected neighbours"


# ---- the other tests ---------------------------------------------------------------------------------

def presence_test(content: str, t: dict) -> tuple[bool, str]:
    query = normalize_text(str(t["text"]))
    md = max(0, int(t.get("max_diffs") or 0))
    text = normalize_text(content)
    if not t.get("case_sensitive", True):
        query, text = query.lower(), text.lower()
    first, last = t.get("first_n"), t.get("last_n")
    if first and last:
        text = text[:first] + text[-last:]
    elif first:
        text = text[:first]
    elif last:
        text = text[-last:]
    present = t["type"] == "present"
    if len(text) < len(query) - md:  # the reference's length guard
        return (False, "output too short") if present else (True, "")
    found = query in text if md == 0 else best_substring_distance(query, text) <= md
    if present:
        return found, "" if found else f"{query[:40]!r} not found"
    return not found, "" if not found else f"{query[:40]!r} should be absent"


def order_test(content: str, t: dict) -> tuple[bool, str]:
    text = normalize_text(content)
    md = max(0, int(t.get("max_diffs") or 0))
    before = near_match_starts(normalize_text(str(t["before"])), text, md)
    after = near_match_starts(normalize_text(str(t["after"])), text, md)
    if not before or not after:
        return False, "'before' not found" if not before else "'after' not found"
    ok = any(b < a for b in before for a in after)
    return ok, "" if ok else "wrong order"


_MATH = (r"\\\((.+?)\\\)", r"\\\[(.+?)\\\]", r"\$\$(.+?)\$\$", r"\$(.+?)\$")


def math_test(content: str, t: dict) -> tuple[bool, str]:
    want = re.sub(r"\s+", "", str(t["math"]))
    rest, found = content, []
    for pat in _MATH:
        found += [m.strip() for m in re.findall(pat, rest, re.DOTALL)]
        rest = re.sub(pat, "", rest, flags=re.DOTALL)
    ok = any(re.sub(r"\s+", "", f) == want for f in found)
    return ok, "" if ok else f"no equation equal to {str(t['math'])[:40]!r}"


_DISALLOWED = re.compile("[\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\U0001F600-\U0001F64F\U0001F300-\U0001F5FF"
                         "\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF]")


def trailing_repeats(text: str, max_n: int = 5) -> int:
    """The most times any 1..max_n-character unit repeats back to back at the end of the text."""
    best = 0
    for n in range(1, max_n + 1):
        if len(text) < n:
            break
        unit, k = text[-n:], 1
        while text[-(k + 1) * n: -k * n or None] == unit and (k + 1) * n <= len(text):
            k += 1
        best = max(best, k)
    return best


def baseline_test(content: str, t: dict) -> tuple[bool, str]:
    alnum = len("".join(c for c in content if c.isalnum()))
    if t.get("max_length") is not None:
        ok = alnum <= int(t["max_length"])
        return ok, "" if ok else f"{alnum} characters on a page expected to be blank"
    if alnum == 0:
        return False, "no alphanumeric characters"
    if trailing_repeats(content.rstrip()) > int(t.get("max_repeats", 30)):
        return False, "ends in a long repetition"
    bad = _DISALLOWED.findall(content)
    if bad and t.get("check_disallowed_characters", True):
        return False, f"disallowed characters {bad[:3]}"
    return True, ""


RUNNERS = {"present": presence_test, "absent": presence_test, "order": order_test, "table": table_test,
           "math": math_test, "baseline": baseline_test}


def run_test(content: str, t: dict) -> tuple[bool, str]:
    return RUNNERS[t["type"]](content, t)


def clean_output(text: str) -> str:
    """The answer, without a code fence wrapped around the whole page."""
    s = strip_thinking(text)
    m = re.fullmatch(r"```(?:markdown|md|html)?\s*\n(.*?)\n?```", s, re.DOTALL)
    return m.group(1) if m else s


class OlmOCRBench(Benchmark):
    name = "olmocr-bench"
    title = "olmOCR-Bench"
    metric = "pass_rate"
    max_new_tokens = 4096
    data_help = "a folder with *.jsonl tests and pdfs/ (e.g. realdata/documents/olmocr_bench)"
    options = {"longest_side": 1288}
    category_keys = ()

    def load(self, data: Path, images: Path | None) -> Loaded:
        if data.is_dir():
            files = sorted(p for p in data.glob("*.jsonl") if p.is_file())
            if not files:
                raise KvlError(f"{data}: no *.jsonl test files in this folder")
            root = data
        elif data.exists():
            files, root = [data], data.parent
        else:
            raise KvlError(f"{data}: no such file")
        bases = [images] if images else [root / "pdfs", root]
        pages: dict[tuple[str, int], list[dict]] = {}
        out = Loaded([])
        for f in files:
            rows = read_rows(f)
            good = 0
            for i, r in enumerate(rows):
                where = f"{f.name} line {i + 1}"
                if hasattr(r, "reason"):
                    out.skipped.append(Skipped(f"{f.name} line {r.line}", r.reason))
                    continue
                if not isinstance(r, dict) or not {"pdf", "id", "type"} <= set(r):
                    out.skipped.append(Skipped(where, "not an olmOCR-Bench test (needs pdf, id, type)"))
                    continue
                if r["type"] not in RUNNERS:
                    out.skipped.append(Skipped(str(r["id"]), f"test type {r['type']!r} is not supported"))
                    continue
                good += 1
                pages.setdefault((str(r["pdf"]), int(r.get("page", 1))), []).append({**r, "_file": f.stem})
            if rows and not good and not out.skipped:
                raise KvlError(f"{f}: not olmOCR-Bench tests")
        if not pages and not out.skipped:
            raise KvlError(f"{data}: no olmOCR-Bench tests")
        for (pdf, page), tests in pages.items():
            sid = f"{pdf}#{page}"
            found = next((b / pdf for b in bases if (b / pdf).is_file()), None)
            if found is None:
                out.skipped += [Skipped(str(t["id"]), f"PDF {pdf} not found under {bases[0]}") for t in tests]
                continue
            out.samples.append(Sample(sid, {"pdf": str(found), "page": page},
                                      {"tests": [{k: v for k, v in t.items() if k != "_file"} for t in tests]},
                                      {"file": tests[0]["_file"], "pdf": pdf}))
        return out

    def render(self, pdf: str, page: int):
        import pymupdf
        from PIL import Image

        try:
            doc = pymupdf.open(pdf)
        except Exception as e:  # noqa: BLE001
            raise KvlError(f"{pdf}: cannot open ({type(e).__name__}: {e})") from None
        with doc:
            if not 1 <= page <= doc.page_count:
                raise KvlError(f"{pdf}: has no page {page}")
            p = doc[page - 1]
            zoom = int(self.options["longest_side"]) / max(p.rect.width, p.rect.height)
            pix = p.get_pixmap(matrix=pymupdf.Matrix(zoom, zoom))
            return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)

    def messages(self, sample: Sample) -> list[dict]:
        img = self.render(sample.inputs["pdf"], sample.inputs["page"])
        return text_message([image_part(img), text_part(ocr_prompt())])

    def score(self, prediction: str, sample: Sample) -> dict:
        content = clean_output(prediction)
        results = []
        for t in sample.target["tests"]:
            ok, why = run_test(content, t)
            results.append({"id": t["id"], "type": t["type"], "passed": ok, **({"why": why} if why else {})})
        passed = sum(r["passed"] for r in results)
        return {"score": passed / len(results), "passed": passed, "total": len(results), "tests": results}

    def aggregate(self, records: list[dict]) -> Aggregate:
        tests = [(r.get("file", ""), t) for r in records for t in r.get("tests", [])]
        by_type: dict[str, list[bool]] = {}
        by_file: dict[str, list[bool]] = {}
        for f, t in tests:
            by_type.setdefault(t["type"], []).append(t["passed"])
            by_file.setdefault(f, []).append(t["passed"])

        def table(d: dict[str, list[bool]]) -> dict:
            return {k: {"n": len(v), "score": 100 * sum(v) / len(v)} for k, v in sorted(d.items())}

        total = len(tests)
        metrics = {"pass_rate": 100 * sum(t["passed"] for _, t in tests) / total if total else 0.0}
        notes = ["math tests compare LaTeX text (whitespace-insensitive), not KaTeX renderings: stricter than the "
                 "reference"] if "math" in by_type else []
        return Aggregate(metrics, {"test_type": table(by_type), "file": table(by_file)}, notes, {"tests": total})
