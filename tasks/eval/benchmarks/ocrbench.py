"""OCRBench v1 (report Table 3: 867; tasks.md §3.2), scored like VLMEvalKit utils/ocrbench.py.

Data: the official `OCRBench.json` (rows {dataset_name, id, image_path, question, answers, type}) with the
image folder (`--images`, default: next to the JSON and `OCRBench_Images/` there), or VLMEvalKit's
`OCRBench.tsv` (base64 images, `answer` a list literal, `category`). Prompt: the question as is, 128 new
tokens (lmms-eval's budget: substring matching rewards long outputs, so the budget is part of the metric).
"""

from __future__ import annotations

from pathlib import Path

from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, check_rows, \
    image_part, resolve_image, text_message, text_part
from kvl_tasks.eval.readers import data_file, index_tsv, literal_list, read_rows, tsv_images
from kvl_tasks.eval.scoring import strip_thinking

HME = "Handwritten Mathematical Expression Recognition"
RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
               "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")
GROUPS = {**{c: "Text Recognition" for c in RECOGNITION}, "Scene Text-centric VQA": "Scene Text-centric VQA",
          "Doc-oriented VQA": "Doc-oriented VQA", "Key Information Extraction": "Key Information Extraction",
          HME: HME}


_FULLWIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def ocrbench_hit(prediction: str, answers: list[str], hme: bool) -> bool:
    """Substring containment of any answer in the prediction. Handwritten math keeps case and drops every
    space (LaTeX spacing is arbitrary); everything else is case-insensitive with newlines as spaces, and
    fullwidth ASCII and the ideographic space folded to ASCII (lmms-eval's `_fold_fullwidth_ascii`)."""
    if hme:
        p = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(a.strip().replace("\n", " ").replace(" ", "") in p for a in answers)
    p = prediction.translate(_FULLWIDTH).lower().strip().replace("\n", " ")
    return any(a.translate(_FULLWIDTH).lower().strip().replace("\n", " ") in p for a in answers)


class OCRBench(Benchmark):
    name = "ocrbench"
    title = "OCRBench"
    metric = "final_score"
    unit = "points"
    paper = PaperScore(867)
    max_new_tokens = 128
    data_help = "OCRBench.json (+ --images folder) or VLMEvalKit OCRBench.tsv"

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data, ("OCRBench.json", "OCRBench.tsv"))
        rows = read_rows(path)
        if path.suffix.lower() == ".tsv":
            by_index = index_tsv(rows)

            def make_tsv(i: int, r: dict) -> Sample | Skipped:
                sid = str(r["index"])
                try:
                    imgs = tsv_images(r, by_index)
                except ValueError as e:
                    return Skipped(sid, str(e))
                return Sample(sid, {"images": imgs, "question": r["question"]},
                              {"answers": literal_list(r["answer"]), "hme": r.get("category") == HME},
                              {"category": r.get("category", "")})

            return check_rows(str(path), rows, ("index", "image", "question", "answer"), make_tsv)

        bases = [images] if images else [path.parent, path.parent / "OCRBench_Images", path.parent / "images"]
        keys = [f"{r.get('dataset_name')}/{r.get('id')}" for r in rows if isinstance(r, dict)]
        unique = len(set(keys)) == len(keys)

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = f"{r.get('dataset_name')}/{r.get('id')}" if unique else str(i)
            img = resolve_image(str(r["image_path"]), bases)
            if img is None:
                return Skipped(sid, f"image {r['image_path']} not found under {', '.join(map(str, bases))}")
            hme = r["type"] == HME or r.get("dataset_name") == "HME100k"
            return Sample(sid, {"images": [str(img)], "question": r["question"]},
                          {"answers": literal_list(r["answers"]), "hme": hme}, {"category": r["type"]})

        return check_rows(str(path), rows, ("image_path", "question", "answers", "type"), make)

    def messages(self, sample: Sample) -> list[dict]:
        return text_message([*map(image_part, sample.inputs["images"]), text_part(sample.inputs["question"])])

    def score(self, prediction: str, sample: Sample) -> dict:
        hit = ocrbench_hit(strip_thinking(prediction), sample.target["answers"], sample.target["hme"])
        return {"score": float(hit)}

    def aggregate(self, records: list[dict]) -> Aggregate:
        cats: dict[str, list[float]] = {}
        for r in records:
            cats.setdefault(r.get("category", ""), []).append(r["score"])
        groups: dict[str, list[float]] = {}
        for c, v in cats.items():
            groups.setdefault(GROUPS.get(c, c), []).extend(v)
        final = sum(r["score"] for r in records)
        metrics = {"final_score": final, "final_score_norm": final / 10, "accuracy": 100 * final / len(records)}
        notes = []
        if len(records) != 1000:
            notes.append(f"final_score is out of {len(records)} scored samples, not the full 1000")
        return Aggregate(metrics, {
            "group": {g: {"n": len(v), "score": sum(v)} for g, v in sorted(groups.items())},
            "category": {c: {"n": len(v), "score": sum(v)} for c, v in sorted(cats.items())},
        }, notes)
