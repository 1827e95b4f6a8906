"""olmOCR-Bench (allenai/olmocr bench; tasks.md §1.1): PDF pages to Markdown, judged by the benchmark's unit
tests. Not in the Kimi-VL report; it measures `kvl ocr`'s prompt on human-checked ground truth.

One sample is one PDF page (rendered so that its longest side is `--set longest_side=…` px, 1288 as olmOCR's
runners use, with only pixels given to the model), prompted with kvl's OCR prompt; its score is the share of
that page's tests passed. Overall = tests passed / tests run, with per-type and per-file breakdowns.

The tests follow the benchmark's rules (`olmocr/bench/tests.py`), reimplemented and cross-checked against that
code on the real sample tests (bench/eval_fidelity.py: every non-math verdict agrees):
- text is normalised as the benchmark does, in its order (`<br>` as space, collapsed whitespace, then no
  bold/italic markers, NFC, typographic quotes and dashes to ASCII);
- present/absent: rapidfuzz's `partial_ratio` >= 1 - max_diffs/len, with `first_n`/`last_n` (as there, a page
  shorter than the expected text that is a piece of it "contains" it);
- order: fuzzysearch near matches (Levenshtein <= max_diffs); some `before` match starts before some `after`;
- table: Markdown tables (runs of lines holding `|`; first row and column are headings) and HTML tables (parsed
  with BeautifulSoup: `<th>`/`<thead>` headings, rowspans repeated below, colspans inherited as headings); a cell
  with `fuzz.ratio` >= max(0.5, 1 - max_diffs/len) whose existing up/down/left/right neighbours and headings
  match (a neighbour outside the table is not checked, as there);
- math: a `$…$`, `$$…$$`, `\\(…\\)` or `\\[…\\]` span equal to the expected LaTeX, ignoring whitespace that cannot
  change the rendering. The reference also accepts any equation whose KaTeX rendering matches, which kvl cannot
  do without a browser: an equivalent but differently written equation (`\\dfrac` for `\\frac`) fails here;
- baseline: non-blank (or at most `max_length` alphanumerics for blank pages), no 1-5 character unit repeated
  more than `max_repeats` times at the end, no CJK/emoji.

Data: a folder holding `*.jsonl` test files and `pdfs/`, or one JSONL file (PDFs in --images or `pdfs/`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from kvl_core.errors import KvlError
from kvl_core.prompts import ocr_prompt
from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, Sample, Skipped, image_part, text_message, text_part
from kvl_tasks.eval.readers import read_rows
from kvl_tasks.eval.scoring import indel_ratio, strip_thinking

TYPES = ("present", "absent", "order", "table", "math", "baseline")
_REPLACE = {"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "＿": "_", "–": "-", "—": "-", "‑": "-",
            "‒": "-", "−": "-", "\u00b5": "\u03bc"}


def normalize_text(s: str) -> str:
    """The benchmark's normalisation, step for step in its order (whitespace is collapsed *before* the bold and
    italic markers go, so `** a **` keeps its spaces)."""
    s = re.sub(r"<br/?>", " ", s)
    s = re.sub(r"\s+", " ", s)
    s = re.sub(r"\*\*(.*?)\*\*", r"\1", s)
    s = re.sub(r"__(.*?)__", r"\1", s)
    s = re.sub(r"</?b>", "", s)
    s = re.sub(r"</?i>", "", s)
    s = re.sub(r"\*(.*?)\*", r"\1", s)
    s = re.sub(r"_(.*?)_", r"\1", s)
    s = unicodedata.normalize("NFC", s)
    for a, b in _REPLACE.items():
        s = s.replace(a, b)
    return s


def _threshold(expected: str, max_diffs: int, floor: float = 0.0) -> float:
    return max(floor, 1.0 - max_diffs / (len(expected) or 1))


# ---- tables ------------------------------------------------------------------------------------------

@dataclass
class Table:
    """A parsed table the way the benchmark sees it: a padded grid, which rows/columns are headings, and the
    heading texts that each column (from above) and each row (from the left) inherits."""
    grid: list[list[str]]
    header_rows: set[int] = field(default_factory=set)
    header_cols: set[int] = field(default_factory=set)
    col_headers: dict[int, list[str]] = field(default_factory=dict)
    row_headers: dict[int, list[str]] = field(default_factory=dict)


def _padded(rows: list[list[str]]) -> list[list[str]]:
    width = max((len(r) for r in rows), default=0)
    return [r + [""] * (width - len(r)) for r in rows]


def _markdown_rows(lines: list[str]) -> list[list[str]]:
    """Cells of a run of `|` lines: the first dash-only line is the header rule, other all-rule lines are
    dropped, and the empty cells a leading or trailing pipe makes are cut."""
    rule = next((i for i, ln in enumerate(lines)
                 if ln.replace("|", "").strip() and all(c in "- :" for c in ln.replace("|", "").strip())), None)
    rows = []
    for i, ln in enumerate(lines):
        if i == rule or (ln.strip() and all(c in "- :|" for c in ln)):
            continue
        cells = [c.strip() for c in ln.split("|")]
        if cells and cells[0] == "":
            cells = cells[1:]
        if cells and cells[-1] == "":
            cells = cells[:-1]
        if cells:
            rows.append(cells)
    return rows


def markdown_tables(text: str) -> list[Table]:
    """Every run of two or more consecutive lines holding a `|`; the first row is the heading row and the first
    column the heading column."""
    runs, cur = [], []
    for line in text.strip().split("\n") + [""]:
        if "|" in line:
            cur.append(line)
            continue
        if len(cur) >= 2:
            runs.append(cur)
        cur = []
    tables = []
    for run in runs:
        rows = _markdown_rows(run)
        if not rows:
            continue
        grid = _padded(rows)
        tables.append(Table(grid, {0}, {0} if grid[0] else set(),
                            {c: [grid[0][c]] for c in range(len(grid[0]))},
                            {r: [grid[r][0]] for r in range(1, len(grid))} if grid[0] else {}))
    return tables


def _add(headers: dict[int, list[str]], key: int, text: str) -> None:
    got = headers.setdefault(key, [])
    if text not in got:
        got.append(text)


def html_tables(text: str) -> list[Table]:
    """`<table>`s as the benchmark reads them with BeautifulSoup: `<th>` rows and `<thead>` rows are headings,
    a rowspan repeats its text in the rows below, a colspan takes no grid position of its own, and headings
    spanning columns are inherited by the data rows to their right."""
    from bs4 import BeautifulSoup

    out = []
    for table in BeautifulSoup(text, "html.parser").find_all("table"):
        rows = table.find_all(["tr"])
        thead = table.find("thead")
        header_rows = {rows.index(tr) for tr in thead.find_all("tr")} if thead else set()
        header_cols: set[int] = set()
        col_headers: dict[int, list[str]] = {}
        row_headers: dict[int, list[str]] = {}
        col_spans: dict[str, set[int]] = {}
        row_spans: dict[str, set[int]] = {}
        carried: dict[tuple[int, int], str] = {}
        data: list[list[str]] = []
        for r, tr in enumerate(rows):
            if tr.find("th"):
                header_rows.add(r)
            row, c = [], 0
            for cell in tr.find_all(["th", "td"]):
                while (r, c) in carried:
                    row.append(carried[(r, c)])
                    c += 1
                for br in cell.find_all("br"):
                    br.replace_with("\n")
                txt = cell.get_text().strip()
                rs, cs = _span(cell.get("rowspan", 1)), _span(cell.get("colspan", 1))
                row.append(txt)
                for i in range(rs):
                    for j in range(cs):
                        if i or j:
                            carried[(r + i, c + j)] = txt if j == 0 else ""
                if cell.name == "th":
                    header_cols.update(range(c, c + cs))
                    header_rows.update(r + i for i in range(1, rs) if r + i < len(rows))
                    for j in range(c, c + cs):
                        col_headers.setdefault(j, []).append(txt)
                        if txt and cs > 1:
                            col_spans.setdefault(txt, set()).add(j)
                    if txt and rs > 1:
                        row_spans.setdefault(txt, set()).update(range(r, r + rs))
                if cell.name == "td" and rs > 1 and c in header_cols:
                    for i in range(1, rs):
                        if r + i < len(rows):
                            row_headers.setdefault(r + i, []).append(txt)
                c += cs
            data.append(row)
        for txt, cols in col_spans.items():
            for col in cols:
                for r, row in enumerate(data):
                    if r not in header_rows:
                        for j in range(col, len(row)):
                            _add(col_headers, j, txt)
        for txt, spanned in row_spans.items():
            for r in spanned:
                if r < len(data):
                    _add(row_headers, r, txt)
        for col in header_cols:
            for r, row in enumerate(data):
                if col < len(row) and row[col].strip():
                    _add(row_headers, r, row[col])
        if data:
            out.append(Table(_padded(data), header_rows, header_cols, col_headers, row_headers))
    return out


def _span(v) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):  # the benchmark raises on this cell; a broken span is one cell here
        return 1


def _heading_ok(want: str, thr: float, inherited: list[str], from_headers: list[str], any_before: list[str]) -> bool:
    """The benchmark's heading search: the inherited headings and the heading rows/columns before the cell; only
    when none of those is similar at all, any non-empty cell before it."""
    best = max((indel_ratio(want, normalize_text(h)) for h in inherited + from_headers), default=0.0)
    if best == 0.0:
        best = max((indel_ratio(want, normalize_text(h)) for h in any_before), default=0.0)
    return best >= thr


def table_test(content: str, t: dict) -> tuple[bool, str]:
    md = max(0, int(t.get("max_diffs") or 0))
    want = {k: normalize_text(str(t.get(k) or "")) for k in ("cell", "up", "down", "left", "right",
                                                          "top_heading", "left_heading")}
    thr = {k: _threshold(v, md, 0.5) for k, v in want.items()}
    tables = ([] if t.get("ignore_markdown_tables") else markdown_tables(content)) + html_tables(content)
    if not tables:
        return False, "no tables found"
    for tb in tables:
        g = tb.grid
        nr, nc = len(g), len(g[0]) if g else 0
        for r in range(nr):
            for c in range(nc):
                if indel_ratio(want["cell"], normalize_text(g[r][c])) < thr["cell"]:
                    continue
                # A neighbour the grid does not have is not checked (the benchmark's rule).
                near = {"up": (r - 1, c), "down": (r + 1, c), "left": (r, c - 1), "right": (r, c + 1)}
                ok = all(not want[k] or not (0 <= i < nr and 0 <= j < nc)
                         or indel_ratio(want[k], normalize_text(g[i][j])) >= thr[k] for k, (i, j) in near.items())
                if ok and want["top_heading"]:
                    ok = _heading_ok(want["top_heading"], thr["top_heading"], tb.col_headers.get(c, []),
                                     [g[i][c] for i in sorted(tb.header_rows) if i < r and g[i][c].strip()],
                                     [g[i][c] for i in range(r) if g[i][c].strip()])
                if ok and want["left_heading"]:
                    ok = _heading_ok(want["left_heading"], thr["left_heading"], tb.row_headers.get(r, []),
                                     [g[r][j] for j in sorted(tb.header_cols) if j < c and g[r][j].strip()],
                                     [g[r][j] for j in range(c) if g[r][j].strip()])
                if ok:
                    return True, ""
    return False, f"no table cell {want['cell'][:40]!r} with the expected neighbours"


# ---- the other tests ---------------------------------------------------------------------------------

def presence_test(content: str, t: dict) -> tuple[bool, str]:
    """rapidfuzz's `partial_ratio` of the expected text against the page, thresholded at 1 - max_diffs/len."""
    from rapidfuzz import fuzz

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
    found = fuzz.partial_ratio(query, text) / 100.0 >= _threshold(query, md)
    if t["type"] == "present":
        return found, "" if found else f"{query[:40]!r} not found"
    return not found, "" if not found else f"{query[:40]!r} should be absent"


def order_test(content: str, t: dict) -> tuple[bool, str]:
    """fuzzysearch's near matches (Levenshtein distance <= max_diffs) of both texts; some `before` match must
    start before some `after` match."""
    from fuzzysearch import find_near_matches

    text = normalize_text(content)
    md = max(0, int(t.get("max_diffs") or 0))
    before = find_near_matches(normalize_text(str(t["before"])), text, max_l_dist=md)
    after = find_near_matches(normalize_text(str(t["after"])), text, max_l_dist=md)
    if not before or not after:
        return False, "'before' not found" if not before else "'after' not found"
    ok = any(b.start < a.start for b in before for a in after)
    return ok, "" if ok else "wrong order"


_MATH = (r"\\\((.+?)\\\)", r"\\\[(.+?)\\\]", r"\$\$(.+?)\$\$", r"\$(.+?)\$")


def latex_key(s: str) -> str:
    """LaTeX with the whitespace that cannot change its rendering removed: all of it except the one space that
    ends a control word before a letter (`\\alpha b` is not `\\alphab`)."""
    s = re.sub(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])", lambda m: m.group(1) + "\0", s.strip())
    return re.sub(r"\s+", "", s).replace("\x00", " ")


def math_test(content: str, t: dict) -> tuple[bool, str]:
    want = str(t["math"])
    pats = _MATH[:2] if t.get("ignore_dollar_delimited") else _MATH
    rest, found = content, []
    for pat in pats:
        found += [m.strip() for m in re.findall(pat, rest, re.DOTALL)]
        rest = re.sub(pat, "", rest, flags=re.DOTALL)
    key = latex_key(want)
    ok = any(f == want or latex_key(f) == key for f in found)
    return ok, "" if ok else f"no equation equal to {want[:40]!r}"


_DISALLOWED = re.compile("[\u4e00-\u9fff\u3040-\u309f\u30a0-\u30ff\U0001F600-\U0001F64F\U0001F300-\U0001F5FF"
                         "\U0001F680-\U0001F6FF\U0001F1E0-\U0001F1FF]")


def trailing_repeats(text: str, max_n: int = 5) -> list[int]:
    """For n = 1..max_n: how many times the last n characters repeat back to back at the end of the text, with
    whitespace runs read as one space (the benchmark's RepeatDetector)."""
    text = re.sub(r"\s+", " ", text)
    counts = []
    for n in range(1, max_n + 1):
        if len(text) < n:
            counts.append(0)
            continue
        unit, k, pos = text[-n:], 0, len(text) - n
        while pos >= 0 and text[pos:pos + n] == unit:
            k += 1
            pos -= n
        counts.append(k)
    return counts


def baseline_test(content: str, t: dict) -> tuple[bool, str]:
    def alnum(s: str) -> int:
        return sum(c.isalnum() for c in s)

    if t.get("max_length") is not None:
        body = re.sub(r"!\[.*?\]\(.*?\)", "", content) if t.get("max_length_skips_image_alt_tags") else content
        ok = alnum(body) <= int(t["max_length"])
        return ok, "" if ok else f"{alnum(body)} characters on a page expected to be blank"
    if alnum(content) == 0:
        return False, "no alphanumeric characters"
    if max(trailing_repeats(content)) > int(t.get("max_repeats", 30)):
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
