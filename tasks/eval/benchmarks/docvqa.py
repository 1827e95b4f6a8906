"""DocVQA and InfoVQA validation (report Table 3: InfoVQA 83.2), scored by ANLS (tasks.md §3.2).

Data: VLMEvalKit `DocVQA_VAL.tsv` / `InfoVQA_VAL.tsv` (base64 images, `answer` a list literal), or the official
JSON (`{"data": [{"questionId", "question", "image" | "image_local_name", "answers"}]}`) with the image folder.
Test splits have no answers (the official server scores them): such rows are skipped and counted.
Prompt: the question + "Answer the question using a single word or phrase." (VLMEvalKit image_vqa).
"""

from __future__ import annotations

from pathlib import Path

from kvl_tasks.eval.base import Benchmark, Loaded, PaperScore, Sample, Skipped, check_rows, image_part, \
    resolve_image, text_message, text_part
from kvl_tasks.eval.readers import data_file, index_tsv, literal_list, read_rows, tsv_images
from kvl_tasks.eval.scoring import anls, strip_thinking

SUFFIX = "\nAnswer the question using a single word or phrase."


class DocVQA(Benchmark):
    name = "docvqa"
    title = "DocVQA (val)"
    metric = "anls"
    max_new_tokens = 32
    data_help = "DocVQA_VAL.tsv, or val_v1.0.json + --images folder"
    category_keys = ("question_types",)
    image_dirs = ("documents", "images")

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data)
        rows = read_rows(path)
        if path.suffix.lower() == ".tsv":
            by_index = index_tsv(rows)

            def make_tsv(i: int, r: dict) -> Sample | Skipped:
                sid = str(r["index"])
                answers = literal_list(r.get("answer", ""))
                if not answers:
                    return Skipped(sid, "no answers (a test split is scored by the official server)")
                try:
                    imgs = tsv_images(r, by_index)
                except ValueError as e:
                    return Skipped(sid, str(e))
                return Sample(sid, {"images": imgs, "question": r["question"]}, {"answers": answers},
                              {"question_types": r.get("category", "")})

            return check_rows(str(path), rows, ("index", "image", "question"), make_tsv)

        bases = [images] if images else [path.parent, *(path.parent / d for d in self.image_dirs)]

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("questionId", i))
            rel = r.get("image") or r.get("image_local_name")
            if not rel:
                return Skipped(sid, "no image field")
            answers = literal_list(r.get("answers"))
            if not answers:
                return Skipped(sid, "no answers (a test split is scored by the official server)")
            img = resolve_image(str(rel), bases)
            if img is None:
                return Skipped(sid, f"image {rel} not found under {bases[0]}")
            qt = r.get("question_types") or r.get("question_type") or ""
            return Sample(sid, {"images": [str(img)], "question": r["question"]}, {"answers": answers},
                          {"question_types": ",".join(qt) if isinstance(qt, list) else qt})

        return check_rows(str(path), rows, ("question",), make)

    def messages(self, sample: Sample) -> list[dict]:
        return text_message([*map(image_part, sample.inputs["images"]), text_part(sample.inputs["question"] + SUFFIX)])

    def score(self, prediction: str, sample: Sample) -> dict:
        return {"score": anls(strip_thinking(prediction), sample.target["answers"])}


class InfoVQA(DocVQA):
    name = "infovqa"
    title = "InfoVQA (val)"
    paper = PaperScore(83.2)
    data_help = "InfoVQA_VAL.tsv, or infographicsVQA_val_v1.0_withQT.json + --images folder"
    image_dirs = ("infographicsvqa_images", "images")
