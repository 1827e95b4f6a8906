"""Reading the files users download for `kvl eval` (tasks.md §3.1): official JSON / JSONL, VLMEvalKit TSVs
(base64 images inside), and parquet shards when pyarrow is installed.

Cells holding Python literals (VLMEvalKit stores lists as `"['a', 'b']"`) are parsed with `ast.literal_eval`:
both reference harnesses call `eval()` on them, which would run code from a downloaded file.
"""

from __future__ import annotations

import ast
import base64
import binascii
import csv
import json
import sys
from pathlib import Path
from typing import Any

from kvl_core.errors import KvlError, read_user_file

MAX_CELL = sys.maxsize if sys.maxsize < 2**31 else 2**31 - 1  # base64 PDFs and images are huge cells


def data_file(path: Path, names: tuple[str, ...] = ()) -> Path:
    """`path` itself, or the first of `names` inside it when it is a folder; one-line errors otherwise."""
    if path.is_dir():
        for n in names:
            if (path / n).is_file():
                return path / n
        wanted = ", ".join(names) if names else "a data file"
        raise KvlError(f"{path}: is a folder without {wanted}")
    if not path.exists():
        raise KvlError(f"{path}: no such file")
    return path


def read_rows(path: Path) -> list[Any]:
    """Rows of a .json (a list, or an object with a list under "data"/"annotations"), .jsonl, .tsv or .parquet."""
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        return read_tsv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raw = read_user_file(path, what="a data file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise KvlError(f"{path}: not UTF-8 text (expected {suffix or 'JSON'} rows)") from None
    if suffix == ".jsonl" or (suffix != ".json" and not text.lstrip().startswith(("[", "{\n", "{\r"))):
        return read_jsonl_text(text, path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if suffix != ".json":
            return read_jsonl_text(text, path)
        raise KvlError(f"{path}: not valid JSON ({e})") from None
    if isinstance(data, dict):
        for key in ("data", "annotations", "items", "samples"):
            if isinstance(data.get(key), list):
                return data[key]
        raise KvlError(f"{path}: expected a JSON list of rows (or an object with a 'data' list)")
    if not isinstance(data, list):
        raise KvlError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
    return data


class BadLine:
    """A JSONL/TSV line that could not be parsed: kept in place so that the loader counts it as skipped."""

    def __init__(self, line: int, reason: str):
        self.line, self.reason = line, reason


def read_jsonl_text(text: str, path: Path) -> list[Any]:
    rows: list[Any] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(BadLine(n, f"not valid JSON ({e.msg})"))
    if rows and all(isinstance(r, BadLine) for r in rows):
        raise KvlError(f"{path}: no line is valid JSON (line {rows[0].line}: {rows[0].reason})")
    return rows


def read_tsv(path: Path) -> list[Any]:
    """A VLMEvalKit TSV as dicts (all values strings). A line with the wrong number of cells is a BadLine."""
    csv.field_size_limit(MAX_CELL)
    try:
        fh = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise KvlError(f"{path}: cannot read file ({e.strerror or e})") from None
    rows: list[Any] = []
    with fh:
        try:
            reader = csv.reader(fh, delimiter="\t")
            header = next(reader, None)
            if not header or len(header) < 2:
                raise KvlError(f"{path}: not a TSV with a header row")
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    rows.append(BadLine(reader.line_num, f"{len(cells)} cells where the header has {len(header)}"))
                    continue
                rows.append(dict(zip(header, cells)))
        except (csv.Error, UnicodeDecodeError) as e:
            raise KvlError(f"{path}: not a readable TSV ({e})") from None
    return rows


def read_parquet(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise KvlError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or pass the JSON/TSV release")
    try:
        return pq.read_table(path).to_pylist()
    except Exception as e:  # noqa: BLE001 -- pyarrow's error types vary by version
        raise KvlError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None


def blank(v: Any) -> bool:
    """An empty cell: None, NaN, "" or pandas' "nan" written out as text."""
    return v is None or (isinstance(v, float) and v != v) or str(v).strip() in ("", "nan", "NaN", "None")


def literal(value: Any) -> Any:
    """A cell that may hold a Python literal (`"['a', 'b']"`, `"[1, 2]"`): parsed safely, else returned as is."""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in "[({" and s[-1:] in "])}":
            try:
                return ast.literal_eval(s)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                return value
    return value


def literal_list(value: Any) -> list:
    """A list-valued cell as a list of strings; a plain string is a one-element list."""
    v = literal(value)
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    if v is None or (isinstance(v, float) and v != v):
        return []
    return [str(v)]


def b64decode(cell: str, what: str) -> bytes:
    try:
        return base64.b64decode(cell, validate=False)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what} is not valid base64 ({e})") from None


def tsv_images(row: dict, by_index: dict[str, dict]) -> list[bytes]:
    """The image bytes of a VLMEvalKit row: base64, a list of base64 (multi-image), or (≤64 chars) the `index`
    of another row whose image is reused. Raises ValueError when unusable."""
    cell = str(row.get("image", "") or "")
    if not cell:
        raise ValueError("no image")
    if len(cell) <= 64:
        other = by_index.get(cell)
        if other is None or len(str(other.get("image", ""))) <= 64:
            raise ValueError(f"image refers to row index {cell}, which has no image")
        cell = str(other["image"])
    if cell.startswith("["):
        items = literal(cell)
        if not isinstance(items, list):
            raise ValueError("image list is not a valid list literal")
        return [b64decode(str(x), "image") for x in items]
    return [b64decode(cell, "image")]


def index_tsv(rows: list) -> dict[str, dict]:
    return {str(r.get("index")): r for r in rows if isinstance(r, dict)}
