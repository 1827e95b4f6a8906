"""Multiple-choice image benchmarks: MMBench (circular), MMStar, AI2D (report Table 3: 83.1, 61.3, 84.9;
tasks.md §3.2), scored like VLMEvalKit in exact-matching mode (no LLM judge): `can_infer` finds the letter;
an answer it cannot parse is wrong, and the share of those is reported.

Data: VLMEvalKit TSVs (`index, question, hint, A..Z, answer, category, l2-category, image`; base64 images,
a short `image` cell reuses another row's image), or JSON/JSONL rows with the same keys (`options` may be a
list) and `image` paths relative to the file or --images.
Prompt (VLMEvalKit `build_prompt`): `Hint: …\nQuestion: …\nOptions:\nA. …\nPlease select the correct answer from
the options above. \n`. `--set prompt=boxed` uses the Kimi-VL thinking prompt instead (the answer is then read
from the last `\boxed{}`).
"""

from __future__ import annotations

import re
import string
from pathlib import Path

from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, breakdowns, \
    check_rows, image_part, mean_score, resolve_image, text_message, text_part
from kvl_tasks.eval.readers import blank, data_file, index_tsv, literal, read_rows, tsv_images
from kvl_tasks.eval.scoring import can_infer, extract_mcq_answer, last_boxed, strip_thinking

BOXED = ("Answer the preceding question. The last line of your response should follow this format: "
         "'Answer: $\\boxed{LETTER}$' (without quotes), where LETTER is one of the options. Think step by step "
         "before answering.")


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def options_of(row: dict) -> dict[str, str]:
    """{letter: text} from A..Z columns, or from an `options`/`choices` list."""
    opts = {c: str(row[c]) for c in string.ascii_uppercase if c in row and not blank(row[c])}
    if opts:
        return opts
    lst = literal(row.get("options", row.get("choices")))
    if isinstance(lst, (list, tuple)):
        return {string.ascii_uppercase[i]: str(v) for i, v in enumerate(lst)}
    return {}


def build_prompt(question: str, options: dict[str, str], hint: str | None = None, boxed: bool = False) -> str:
    text = f"Hint: {hint}\n" if hint and not blank(hint) else ""
    text += f"Question: {question}\n"
    if options:
        text += "Options:\n" + "".join(f"{k}. {v}\n" for k, v in options.items())
    if boxed:
        return text + BOXED
    return text + "Please select the correct answer from the options above. \n"


def mcq_letter(prediction: str, options: dict[str, str]) -> str | None:
    """The chosen letter: a `\\boxed{}` answer first (Kimi thinking prompt), else VLMEvalKit `can_infer`."""
    answer = strip_thinking(prediction)
    boxed = last_boxed(answer)
    if boxed:
        got = can_infer(boxed, options)
        if got:
            return got
    return can_infer(answer, options) if answer else None


class _MCQ(Benchmark):
    metric = "accuracy"
    max_new_tokens = 128
    # extractor=lmms-eval: lmms-eval's shared priority extractor over A-D (its MMStar task) instead of `can_infer`
    options = {"prompt": "vlmevalkit", "extractor": "vlmevalkit"}
    category_keys = ("category", "l2-category")

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data)
        rows = read_rows(path)
        tsv = path.suffix.lower() == ".tsv"
        by_index = index_tsv(rows)
        bases = [images] if images else [path.parent, path.parent / "images"]

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("index", r.get("id", i)))
            opts = options_of(r)
            if len(opts) < 2:
                return Skipped(sid, "fewer than 2 options")
            gt = str(r.get("answer", "")).strip()
            if gt not in opts:
                return Skipped(sid, f"answer {gt!r} is not one of the options {''.join(opts)}")
            try:
                if tsv or len(str(r.get("image", ""))) > 1024 or str(r.get("image", "")).startswith("["):
                    imgs: list = tsv_images(r, by_index)
                else:
                    rel = r.get("image_path") or r.get("image")
                    if not rel:
                        return Skipped(sid, "no image field")
                    found = resolve_image(str(rel), bases)
                    if found is None:
                        return Skipped(sid, f"image {rel} not found under {bases[0]}")
                    imgs = [str(found)]
            except ValueError as e:
                return Skipped(sid, str(e))
            meta = {"category": r.get("category", ""), "l2-category": r.get("l2-category", r.get("l2_category", ""))}
            try:
                meta["g_index"] = str(int(float(r["index"])) % 1_000_000)
            except (KeyError, ValueError):
                meta["g_index"] = sid
            return Sample(sid, {"images": imgs, "question": str(r["question"]), "hint": r.get("hint")},
                          {"options": opts, "answer": gt}, meta)

        return check_rows(str(path), rows, ("question", "answer"), make)

    def messages(self, sample: Sample) -> list[dict]:
        prompt = build_prompt(sample.inputs["question"], sample.target["options"], sample.inputs.get("hint"),
                              boxed=self.options["prompt"] == "boxed")
        return text_message([*map(image_part, sample.inputs["images"]), text_part(prompt)])

    def lmms_eval_letter(self, answer: str) -> str | None:
        return extract_mcq_answer(answer, "ABCD") or None

    def score(self, prediction: str, sample: Sample) -> dict:
        if self.options.get("extractor") == "lmms-eval":
            got = self.lmms_eval_letter(strip_thinking(prediction))
        else:
            got = mcq_letter(prediction, sample.target["options"])
        return {"score": float(got == sample.target["answer"]), "extracted": got, "parsed": got is not None,
                "gt": sample.target["answer"]}

    def aggregate(self, records: list[dict]) -> Aggregate:
        metrics = {"accuracy": mean_score(records),
                   "unparsable": mean_score([{"score": r.get("parsed") is False} for r in records])}
        return Aggregate(metrics, breakdowns(records, self.category_keys),
                         ["exact matching (no LLM judge): unparsable answers count as wrong"])


class MMBench(_MCQ):
    name = "mmbench"
    title = "MMBench-EN v1.1 (dev)"
    paper = PaperScore(83.1)
    data_help = "MMBench_DEV_EN_V11.tsv (VLMEvalKit)"

    def aggregate(self, records: list[dict]) -> Aggregate:
        """Circular evaluation: a question (all rows sharing g_index = index % 1e6, one per rotation of its
        options) counts only if every rotation is answered right; a group with an unparsable row fails."""
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(str(r.get("g_index", r["id"])), []).append(r)
        rows = []
        for g, rs in groups.items():
            rows.append({"score": float(all(x["score"] == 1.0 for x in rs)), "category": rs[0].get("category", ""),
                         "l2-category": rs[0].get("l2-category", ""),
                         "unparsed": any(x.get("parsed") is False for x in rs)})
        metrics = {"accuracy": mean_score(rows), "vanilla_accuracy": mean_score(records),
                   "unparsable_groups": mean_score([{"score": r["unparsed"]} for r in rows])}
        return Aggregate(metrics, breakdowns(rows, self.category_keys),
                         [f"circular evaluation over {len(rows)} questions, exact matching (no LLM judge): "
                          "a question with an unparsable rotation fails"])


class MMStar(_MCQ):
    name = "mmstar"
    title = "MMStar"
    paper = PaperScore(61.3)
    data_help = "MMStar.tsv (VLMEvalKit)"

    def aggregate(self, records: list[dict]) -> Aggregate:
        agg = super().aggregate(records)
        l2 = agg.breakdowns.get("l2-category", {})
        if l2:  # lmms-eval reports the mean of the per-L2-category means
            agg.metrics["l2_macro_accuracy"] = sum(v["score"] for v in l2.values()) / len(l2)
        return agg


class AI2D(_MCQ):
    name = "ai2d"
    title = "AI2D (test)"
    paper = PaperScore(84.9)
    data_help = "AI2D_TEST.tsv (VLMEvalKit)"

    def lmms_eval_letter(self, answer: str) -> str | None:
        """lmms-eval's ai2d.yaml: a leading `X.` is the letter; otherwise the whole answer, lower-cased and
        without ASCII punctuation, must be the letter itself (its exact_match)."""
        m = re.match(r"\s*([A-Z])\.", answer)
        if m:
            return m.group(1)
        bare = answer.lower().translate(_NO_PUNCTUATION)
        return bare.upper() if len(bare) == 1 and bare.isascii() and bare.isalpha() else None
