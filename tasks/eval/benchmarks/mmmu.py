"""MMMU validation (report Table 3: 57.0; Table 4 for the thinking models), scored with the official MMMU rules
(MMMU-Benchmark eval_utils, as lmms-eval runs them; tasks.md §3.2), not VLMEvalKit's open-as-MCQ variant.

When no option can be parsed from a multiple-choice answer the official code picks `random.choice`; kvl picks
with a RNG seeded by (seed, sample id), so a run is reproducible and resumable, and reports how many answers
were guessed. `--set fallback=zero` scores them wrong instead.

Data: VLMEvalKit `MMMU_DEV_VAL.tsv` (index, question, A.., answer, question_type? , category, split, image (a
base64 list)); or JSON/JSONL rows `{id, question, options (list), answer, question_type, images: [paths],
subject}`. Only rows of the validation split with an answer are scored.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, breakdowns, \
    check_rows, image_part, mean_score, resolve_image, text_message, text_part
from kvl_tasks.eval.benchmarks.mcq import BOXED, options_of
from kvl_tasks.eval.readers import blank, data_file, index_tsv, literal, read_rows, tsv_images
from kvl_tasks.eval.scoring import last_boxed, strip_thinking

MC_SUFFIX = "Answer with the option's letter from the given choices directly."
OPEN_SUFFIX = "Answer the question using a single word or phrase."


def parse_multi_choice(response: str, choices: dict[str, str]) -> tuple[str | None, bool]:
    """Official `parse_multi_choice_response` without the random pick: (letter or None, parsed-from-content)."""
    for ch in ",.!?;:'":
        response = response.strip(ch)
    response = f" {response} "
    letters = list(choices)
    cands = [c for c in letters if f"({c})" in response]
    brackets = bool(cands)
    if not cands:  # "X " anywhere ("答案是D" too); the tie-break below still looks for " X "
        cands = [c for c in letters if f"{c} " in response]
    if not cands:
        cands = [c for c in letters if f"{c}." in response]
    by_text = False
    if not cands and len(response.split()) > 5:
        cands = [c for c, t in choices.items() if t.lower() in response.lower()]
        by_text = bool(cands)
    if not cands:
        return None, False
    if len(cands) == 1:
        return cands[0], by_text
    if by_text:
        pos = [response.lower().rfind(choices[c].lower()) for c in cands]
    elif brackets:
        pos = [response.rfind(f"({c})") for c in cands]
    else:
        pos = [response.rfind(f" {c} ") for c in cands]
    return cands[pos.index(max(pos))], by_text


_NUM_COMMA = r"-?\b\d{1,3}(?:,\d{3})+\b"
_NUM_SCI = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
_NUM_SIMPLE = r"-?(?:\d+\.\d+|\.\d+|\d+)(?![eE][+-]?\d+)(?![,\d])"


def extract_numbers(s: str) -> list[str]:
    return re.findall(_NUM_COMMA, s) + re.findall(_NUM_SCI, s) + re.findall(_NUM_SIMPLE, s)


def _is_number(s: str) -> bool:
    try:
        float(s.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(s: str) -> list:
    s = s.strip()
    if _is_number(s):
        return [round(float(s.replace(",", "")), 2)]
    s = s.lower()
    return [" " + s, s + " "] if len(s) == 1 else [s]


def parse_open(response: str) -> list:
    """Official `parse_open_response`: key sub-responses after indicator words, plus every number in them."""
    def key_subresponses(resp: str) -> list[str]:
        resp = resp.strip().strip(".").lower()
        # The official split pattern looks for an upper-case letter in a lower-cased string: only \n splits.
        subs = re.split(r"\.\s(?=[A-Z])|\n", resp)
        indicators = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
        keys = []
        for i, sub in enumerate(subs):
            if i == len(subs) - 1:
                indicators = indicators + ["="]
            shortest = None
            for ind in indicators:
                if ind in sub:
                    cand = sub.split(ind)[-1].strip()
                    if shortest is None or len(cand) < len(shortest):
                        shortest = cand
            if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
                keys.append(shortest)
        return keys or [resp]

    keys = key_subresponses(response)
    preds: list = list(keys)
    for k in keys:
        preds += extract_numbers(k)
    out: list = []
    for p in preds:
        out += normalize_str(p) if isinstance(p, str) else [p]
    return list(dict.fromkeys(out))


def eval_open(gold: list[str], preds: list) -> bool:
    norm: list = []
    for g in gold:
        norm += normalize_str(g)
    for p in preds:
        if isinstance(p, str):
            if any(isinstance(n, str) and n in p for n in norm):
                return True
        elif p in norm:
            return True
    return False


class MMMU(Benchmark):
    name = "mmmu"
    title = "MMMU (val)"
    paper = PaperScore(57.0)
    max_new_tokens = 512
    data_help = "MMMU_DEV_VAL.tsv (VLMEvalKit) or JSON/JSONL rows"
    options = {"fallback": "random", "seed": 0, "prompt": "official"}
    category_keys = ("subject", "question_type")

    def load(self, data: Path, images: Path | None) -> Loaded:
        path = data_file(data)
        rows = read_rows(path)
        by_index = index_tsv(rows)
        bases = [images] if images else [path.parent, path.parent / "images"]

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("id") or r.get("index") or i)
            split = str(r.get("split", "validation")).lower()
            if split not in ("validation", "val", "dev_val", ""):
                return Skipped(sid, f"split {split} is not scored (only validation)")
            answer = r.get("answer")
            if blank(answer):
                return Skipped(sid, "no answer")
            opts = options_of(r)
            qtype = str(r.get("question_type") or ("multiple-choice" if opts else "open"))
            mc = qtype.startswith("multiple") and bool(opts)
            if "image" in r and (path.suffix.lower() == ".tsv" or len(str(r["image"])) > 1024):
                try:
                    imgs: list = tsv_images(r, by_index)
                except ValueError as e:
                    return Skipped(sid, str(e))
            else:
                rels = r.get("images") or [r[k] for k in sorted(r) if k.startswith("image") and isinstance(r[k], str)]
                imgs = []
                for rel in literal(rels) if isinstance(rels, str) else rels:
                    found = resolve_image(str(rel), bases)
                    if found is None:
                        return Skipped(sid, f"image {rel} not found under {bases[0]}")
                    imgs.append(str(found))
            gold = literal(answer)
            gold = [str(g) for g in gold] if isinstance(gold, (list, tuple)) else [str(gold)]
            subject = r.get("subject") or r.get("category") or (sid.split("_")[1] if sid.count("_") >= 2 else "")
            return Sample(sid, {"images": imgs, "question": str(r["question"])},
                          {"options": opts if mc else {}, "answer": gold, "mc": mc},
                          {"subject": subject, "question_type": "multiple-choice" if mc else "open"})

        return check_rows(str(path), rows, ("question", "answer"), make)

    def messages(self, sample: Sample) -> list[dict]:
        q, opts = sample.inputs["question"], sample.target["options"]
        text = q + ("\n" + "".join(f"{k}. {v}\n" for k, v in opts.items()) if opts else "\n")
        if self.options["prompt"] == "boxed":
            text += BOXED if opts else BOXED.replace("LETTER", "ANSWER").replace(" is one of the options", " is your answer")
        else:
            text += MC_SUFFIX if opts else OPEN_SUFFIX
        return text_message([*map(image_part, sample.inputs["images"]), text_part(text)])

    def score(self, prediction: str, sample: Sample) -> dict:
        answer = strip_thinking(prediction)
        boxed = last_boxed(answer) if self.options["prompt"] == "boxed" else None
        if boxed is not None:  # only the Kimi thinking prompt asks for a box; the official parsers read it all
            answer = boxed
        t = sample.target
        if not t["mc"]:
            preds = parse_open(answer)
            return {"score": float(eval_open(t["answer"], preds)), "extracted": [str(p) for p in preds][:8]}
        letter, _ = parse_multi_choice(answer, t["options"])
        fallback = None
        if letter is None:
            fallback = self.options["fallback"]
            if fallback == "random":
                rng = random.Random(f"{self.options['seed']}:{sample.id}")
                letter = rng.choice(sorted(t["options"]))
        hit = letter is not None and letter in t["answer"]
        return {"score": float(hit), "extracted": letter, "parsed": fallback is None, "fallback": fallback}

    def aggregate(self, records: list[dict]) -> Aggregate:
        guessed = sum(1 for r in records if r.get("fallback"))
        notes = []
        if guessed:
            how = ("a seeded random option, as the official code does" if self.options["fallback"] == "random"
                   else "scored wrong (--set fallback=zero)")
            notes.append(f"{guessed} multiple-choice answer(s) had no parsable option: {how}")
        return Aggregate({"accuracy": mean_score(records)}, breakdowns(records, self.category_keys), notes,
                         {"guessed": guessed})
