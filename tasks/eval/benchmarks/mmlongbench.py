"""MMLongBench-Doc (report Table 3: 35.1; tasks.md §1.5, §3.2): questions over long PDFs, every page given as an
image (PyMuPDF at 144 dpi, at most 120 pages, as VLMEvalKit and lmms-eval render them).

Scoring is the benchmark's format-aware `eval_score` (Int, Float with 1% tolerance and percent scaling, Str with
exact-match types or ANLS (≤ 0.5 → 0), List element-wise) plus accuracy and the benchmark's F1 over
answerable/"Not answerable". The official pipeline first has GPT-4o rewrite the free answer into a short one;
kvl instead asks the model for a short answer (or exactly "Not answerable") and scores that, which is labelled.

Data: the official `samples.json` (`doc_id, question, answer, answer_format, evidence_pages, evidence_sources`)
with the PDFs in --images (or `documents/` next to it); or VLMEvalKit's `MMLongBench_DOC.tsv` with the PDF as
base64 in `image`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, check_rows, \
    mean_score, text_message, text_part
from kvl_tasks.eval.readers import b64decode, data_file, index_tsv, literal, read_rows
from kvl_tasks.eval.scoring import levenshtein, strip_thinking

NA = "Not answerable"
INSTRUCTION = ("Answer the question about the document above concisely: a number, a short phrase or a list. "
               f"If the document does not contain the answer, reply exactly '{NA}'.")


def _anls(gt: str, pred: str, threshold: float = 0.5) -> float:
    length = max(len(gt.upper()), len(pred.upper()))
    value = 1.0 - (levenshtein(gt, pred) / length if length else 0.0)
    return 0.0 if value <= threshold else value


def _precision(x: float) -> int:
    s = str(x)
    return len(s.split(".")[-1]) if "." in s else 3


def is_float_equal(ref: float, pred: float, include_percentage: bool = True) -> bool:
    for item in ([ref / 100, ref, ref * 100] if include_percentage else [ref]):
        if math.isclose(item, pred, rel_tol=0.01):
            return True
        p = max(min(_precision(pred), _precision(item)), 2)
        if round(pred, p) == round(item, p):
            return True
    return False


def clean(s) -> str:
    s = str(s).lower().strip()
    s = re.sub(r"\s*\([^)]*\)", "", s).strip()  # parenthesised remarks
    s = re.sub(r"^['\"]|['\"]$", "", s).strip()
    return s.lstrip("$").strip().rstrip("%").strip()


def is_exact_match(s: str) -> bool:
    """Answers compared by equality rather than ANLS: URLs, code files, pages, phone numbers, times, dates, email."""
    return ("https://" in s or s.endswith((".py", "ipynb")) or s.startswith("page")
            or bool(re.fullmatch(r"\b\d+(-\d+|\s\d+)?\b", s)) or "a.m." in s or "p.m." in s
            or bool(re.fullmatch(r"\b\d{4}[-\s]\d{2}[-\s]\d{2}\b", s)) or bool(re.fullmatch(r"\b\d{4}[-\s]\d{2}\b", s))
            or bool(re.fullmatch(r"[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}", s)))


def _isfloat(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def eval_score(gt, pred, answer_format: str) -> float:
    if answer_format == "Int":
        try:
            return float(int(gt) == int(float(pred)))
        except (ValueError, TypeError):
            return 0.0
    if answer_format == "Float":
        try:
            g, p = float(clean(gt)), float(clean(pred))
        except ValueError:
            return 0.0
        return float(is_float_equal(g, p))
    if answer_format in ("Str", "None"):
        g, p = clean(gt), clean(pred)
        return float(g == p) if is_exact_match(g) else _anls(g, p)
    gl = literal(gt) if isinstance(gt, str) and gt.strip().startswith("[") else gt
    pl = literal(pred) if isinstance(pred, str) and pred.strip().startswith("[") else pred
    gl = list(gl) if isinstance(gl, (list, tuple)) else [gl]
    pl = list(pl) if isinstance(pl, (list, tuple)) else [pl]
    if len(gl) != len(pl):
        return 0.0
    gs, ps = sorted(clean(a) for a in gl), sorted(clean(a) for a in pl)
    if _isfloat(gs[0]) or is_exact_match(gs[0]):
        return float("-".join(gs) == "-".join(ps))
    return min(_anls(g, p) for g, p in zip(gs, ps))


def short_answer(text: str) -> str:
    """The model's answer line: after an `Answer:` label when there is one, without a closing full stop."""
    text = strip_thinking(text)
    m = list(re.finditer(r"(?im)^\s*(?:final )?answer\s*[:：]\s*(.+)$", text))
    ans = m[-1].group(1) if m else text
    ans = ans.strip().strip("*").strip()
    if re.fullmatch(r"(?i)not answerable\.?", ans):
        return NA
    return ans[:-1] if ans.endswith(".") and not _isfloat(ans) else ans


def acc_f1(records: list[dict]) -> tuple[float, float]:
    """The benchmark's accuracy and F1 (recall over answerable questions, precision over answered ones)."""
    if not records:
        return 0.0, 0.0
    acc = sum(r["score"] for r in records) / len(records)
    answerable = [r for r in records if r.get("gt") != NA]
    answered = [r for r in records if r.get("pred") != NA]
    if not answerable or not answered:
        return acc, 0.0
    hit = sum(r["score"] for r in answerable)
    recall, precision = hit / len(answerable), hit / len(answered)
    return acc, (2 * recall * precision / (recall + precision) if recall + precision else 0.0)


class MMLongBenchDoc(Benchmark):
    name = "mmlongbench-doc"
    title = "MMLongBench-Doc"
    paper = PaperScore(35.1)
    max_new_tokens = 128
    data_help = "samples.json + --images folder of the PDFs, or MMLongBench_DOC.tsv (VLMEvalKit)"
    options = {"dpi": 144, "max_pages": 120}

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data, ("samples.json", "MMLongBench_DOC.tsv"))
        rows = read_rows(path)
        by_index = index_tsv(rows)
        bases = [images] if images else [path.parent, path.parent / "documents"]
        tsv = path.suffix.lower() == ".tsv"

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("index", i))
            fmt = str(r.get("answer_format", "Str"))
            if tsv:
                cell = str(r.get("image", ""))
                if len(cell) <= 64 and cell in by_index:
                    cell = str(by_index[cell].get("image", ""))
                if len(cell) <= 64:
                    return Skipped(sid, "no PDF in the image cell")
                pdf: dict = {"tsv_index": str(r.get("index")), "cell": cell}
            else:
                found = next((b / str(r["doc_id"]) for b in bases if (b / str(r["doc_id"])).is_file()), None)
                if found is None:
                    return Skipped(sid, f"document {r['doc_id']} not found under {bases[0]}")
                pdf = {"path": str(found)}
            pages = literal(r.get("evidence_pages", "[]"))
            sources = literal(r.get("evidence_sources", "[]"))
            pages = pages if isinstance(pages, list) else []
            sources = sources if isinstance(sources, list) else []
            gt = str(r["answer"])
            kind = "unanswerable" if gt == NA else ("single-page" if len(pages) == 1 else "multi-page")
            return Sample(sid, {"pdf": pdf, "question": str(r["question"])}, {"answer": gt, "format": fmt},
                          {"doc_id": str(r.get("doc_id", "")), "evidence": kind,
                           "sources": [str(s) for s in sources]})

        return check_rows(str(path), rows, ("question", "answer"), make)

    def messages(self, sample: Sample) -> list[dict]:
        import pymupdf

        from kvl_core.errors import KvlError

        src = sample.inputs["pdf"]
        try:
            if "path" in src:
                doc = pymupdf.open(src["path"])
            else:
                doc = pymupdf.open(stream=b64decode(src["cell"], "PDF"), filetype="pdf")
        except Exception as e:  # noqa: BLE001 -- pymupdf raises several types for a bad file
            raise KvlError(f"{src.get('path', 'PDF')}: cannot open ({type(e).__name__}: {e})") from None
        from PIL import Image

        parts = []
        with doc:
            for n in range(min(doc.page_count, int(self.options["max_pages"]))):
                pix = doc[n].get_pixmap(dpi=int(self.options["dpi"]))
                parts.append({"type": "image", "image": Image.frombytes("RGB", (pix.width, pix.height), pix.samples)})
        return text_message([*parts, text_part(f"{sample.inputs['question']}\n{INSTRUCTION}")])

    def score(self, prediction: str, sample: Sample) -> dict:
        pred = short_answer(prediction)
        t = sample.target
        return {"score": eval_score(t["answer"], pred, t["format"]), "pred": pred, "gt": t["answer"],
                "parsed": bool(pred)}

    def aggregate(self, records: list[dict]) -> Aggregate:
        acc, f1 = acc_f1(records)
        by_source: dict[str, list[float]] = {}
        for r in records:
            for s in r.get("sources") or []:
                by_source.setdefault(s, []).append(r["score"])
        b = {"evidence": {}, "source": {k: {"n": len(v), "score": 100 * sum(v) / len(v)}
                                        for k, v in sorted(by_source.items())}}
        for kind in ("single-page", "multi-page", "unanswerable"):
            sub = [r for r in records if r.get("evidence") == kind]
            if sub:
                b["evidence"][kind] = {"n": len(sub), "score": mean_score(sub)}
        return Aggregate({"accuracy": 100 * acc, "f1": 100 * f1}, b,
                         ["the model's own short answer is scored (the official pipeline extracts it with GPT-4o)"])
