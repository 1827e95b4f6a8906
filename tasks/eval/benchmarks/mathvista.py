"""MathVista testmini (report Table 3: 68.7; Table 4 for the thinking models; tasks.md §3.2).

The official scorer has GPT-4 extract the answer from the response; kvl runs offline and extracts it by rule,
in this order: the last `\\boxed{}`, an `Answer:` line, the quick regex `The answer is "…"`, then for choice
questions VLMEvalKit's `can_infer` (letter or option text) and for numbers the last number in the text. The
extracted answer is then normalised exactly like MathVista's `normalize_extracted_answer` (letters map to option
text, else the most similar option by edit distance; integers `str(int(float))`; floats rounded to the item's
precision) and compared as strings. Results are labelled "rule-extracted": not strictly comparable to a
GPT-judged number.

Data: VLMEvalKit `MathVista_MINI.tsv` (index, image, question, answer, question_type, answer_type, choices,
precision, task, skills) or the official `testmini.json` (pid -> {query, image, choices, answer, ...}) with the
image folder.
"""

from __future__ import annotations

import re
from pathlib import Path

from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, breakdowns, \
    check_rows, image_part, mean_score, resolve_image, text_message, text_part
from kvl_tasks.eval.readers import blank, data_file, index_tsv, literal, read_rows, tsv_images
from kvl_tasks.eval.scoring import can_infer, last_boxed, levenshtein, strip_thinking

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def extract_answer(response: str, choices: list[str] | None, answer_type: str,
                   question_type: str = "multi_choice") -> str:
    """MathVista's `extract_answer` up to its GPT call (an answer that is an option, an int or a float as it
    stands, or `The answer is "..."`), then kvl's rules where the official code would ask GPT-4: the last
    `\\boxed{}`, an `Answer:` line, `can_infer`'s letter, the last number."""
    text = strip_thinking(response)
    if not text:
        return ""
    if question_type == "multi_choice" and choices and text in choices:
        return text
    for kind, cast in (("integer", int), ("float", float)):
        if answer_type == kind:
            try:
                return str(cast(text))
            except ValueError:
                pass
    m = re.search(r'The answer is "(.*)"\.', text)
    if m:
        return m.group(1)
    boxed = last_boxed(text)
    if boxed:
        return boxed.strip()
    m = list(re.finditer(r"(?im)^\s*\**(?:final )?answer\**\s*[:：]\s*(.+)$", text))
    if m:
        return m[-1].group(1).strip().strip("*").strip()
    if choices:
        letter = can_infer(text, {chr(65 + i): c for i, c in enumerate(choices)})
        if letter and letter != "Z":
            return letter
        return text
    if answer_type in ("integer", "float"):
        nums = _NUMBER.findall(text)
        if nums:
            return nums[-1].replace(",", "")
    return text


def normalize(extraction: str, choices: list[str] | None, question_type: str, answer_type: str,
              precision: int | None) -> str | None:
    """MathVista's `normalize_extracted_answer`: a letter (the first `(x)` if any) names its option, anything
    else becomes the most similar option (Levenshtein, first of the closest; an empty answer too); numbers are
    cast and rounded to the precision; other answers stay as they are."""
    if question_type == "multi_choice" and choices:
        e = extraction.strip()
        inner = re.findall(r"\(([a-zA-Z])\)", e)
        if inner:
            e = inner[0].upper()
        letters = [chr(65 + i) for i in range(len(choices))]
        if e in letters:
            return choices[letters.index(e)]
        dist = [levenshtein(e, c) for c in choices]
        return choices[dist.index(min(dist))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision or 0)))
    except (ValueError, OverflowError):
        return None
    return extraction


class MathVista(Benchmark):
    name = "mathvista"
    title = "MathVista (testmini)"
    paper = PaperScore(68.7)
    max_new_tokens = 1024
    data_help = "MathVista_MINI.tsv (VLMEvalKit) or testmini.json + --images folder"
    category_keys = ("task", "question_type")

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data, ("testmini.json", "MathVista_MINI.tsv"))
        rows = read_rows(path) if path.suffix.lower() != ".json" else _pid_rows(path)
        by_index = index_tsv(rows)
        bases = [images] if images else [path.parent, path.parent / "images"]

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("pid") or r.get("index") or i)
            if blank(r.get("answer")):
                return Skipped(sid, "no answer (the test split is scored by the official server)")
            choices = literal(r.get("choices"))
            choices = [str(c) for c in choices] if isinstance(choices, (list, tuple)) else None
            meta = r.get("metadata") if isinstance(r.get("metadata"), dict) else {}
            if path.suffix.lower() == ".tsv":
                try:
                    imgs: list = tsv_images(r, by_index)
                except ValueError as e:
                    return Skipped(sid, str(e))
            else:
                found = resolve_image(str(r.get("image", "")), bases)
                if found is None:
                    return Skipped(sid, f"image {r.get('image')} not found under {bases[0]}")
                imgs = [str(found)]
            qtype = str(r.get("question_type") or ("multi_choice" if choices else "free_form"))
            precision = r.get("precision")
            try:
                precision = int(float(precision)) if not blank(precision) else None
            except ValueError:
                precision = None
            return Sample(sid, {"images": imgs, "question": str(r.get("query") or r["question"])},
                          {"answer": str(r["answer"]), "choices": choices, "question_type": qtype,
                           "answer_type": str(r.get("answer_type") or "text"), "precision": precision},
                          {"task": r.get("task") or meta.get("task", ""), "question_type": qtype})

        return check_rows(str(path), rows, ("question", "answer"), make)

    def messages(self, sample: Sample) -> list[dict]:
        return text_message([*map(image_part, sample.inputs["images"]), text_part(sample.inputs["question"])])

    def score(self, prediction: str, sample: Sample) -> dict:
        t = sample.target
        ext = extract_answer(prediction, t["choices"], t["answer_type"], t["question_type"])
        norm = normalize(ext, t["choices"], t["question_type"], t["answer_type"], t["precision"])
        return {"score": float(norm is not None and norm == t["answer"]), "extracted": ext, "normalized": norm,
                "parsed": bool(ext)}

    def aggregate(self, records: list[dict]) -> Aggregate:
        return Aggregate({"accuracy": mean_score(records)}, breakdowns(records, self.category_keys),
                         ["rule-extracted answers (the official scorer uses a GPT-4 extractor): "
                          "not strictly comparable to the paper's number"])


def _pid_rows(path: Path) -> list:
    """The official testmini.json is an object keyed by pid; VLMEvalKit-style lists pass through."""
    import json

    from kvl_core.errors import KvlError, read_user_file

    try:
        d = json.loads(read_user_file(path).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KvlError(f"{path}: not valid JSON ({e})") from None
    if isinstance(d, dict) and all(isinstance(v, dict) for v in d.values()):
        return [{"pid": k, **v} for k, v in d.items()]
    if isinstance(d, list):
        return d
    raise KvlError(f"{path}: expected MathVista's {{pid: item}} object or a list of items")
