"""Long-video multiple choice: Video-MME (w/o subtitles), LongVideoBench (val), MLVU dev (report Table 3:
67.8, 64.5, 74.2; tasks.md §1.2, §3.2).

Video goes to the model as frames (vLLM's Kimi-VL path takes images only): `--set frames=N` frames sampled
uniformly with the end points excluded (VLMEvalKit: t_i = i·duration/(N+1), i = 1..N), each shrunk to
`--set max_side=…` pixels. Frames are decoded with kvl's own video reader (exact timestamps, decord with a
PyAV fallback). Videos are found in --images (or `videos/`, `video/`, `data/` next to the annotation file) as
`<id>.mp4` or by the row's own relative path.

Answer extraction, as lmms-eval's tasks do it (cross-checked by bench/eval_fidelity.py): Video-MME and MLVU use
lmms-eval's priority extractor over the letters A-D; LongVideoBench strips its answer prefixes and takes the first
of A-E anywhere (long answers without a letter are unanswered), then falls back to a random option like its
reference, here seeded by (seed, sample id). MLVU's M-Avg is the mean of the per-task accuracies.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

from kvl_core.errors import KvlError
from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, breakdowns, \
    check_rows, mean_score, text_message, text_part
from kvl_tasks.eval.readers import data_file, literal, read_rows
from kvl_tasks.eval.scoring import extract_mcq_answer, first_letter_after_prefixes, strip_thinking

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def uniform_times(duration: float, n: int) -> list[float]:
    return [duration * i / (n + 1) for i in range(1, n + 1)]


def find_video(ref: str, bases: list[Path]) -> Path | None:
    for b in bases:
        p = b / ref
        if p.is_file():
            return p
        for suf in VIDEO_SUFFIXES:
            if (b / (ref + suf)).is_file():
                return b / (ref + suf)
    return None


def _options_list(r: dict) -> list[str]:
    raw = literal(r.get("options", r.get("candidates")))
    if not isinstance(raw, (list, tuple)):
        return []
    out = []
    for i, o in enumerate(raw):
        o = str(o).strip()
        prefix = f"{string.ascii_uppercase[i]}. "
        out.append(o[len(prefix):] if o.startswith(prefix) else o)
    return out


class _VideoMCQ(Benchmark):
    max_new_tokens = 32
    options = {"frames": 32, "max_side": 448, "seed": 0}
    video_keys: tuple[str, ...] = ("videoID", "video_id", "video", "video_path")
    letters = "ABCD"
    prompt_head = ""
    prompt_tail = "Answer with the option's letter from the given choices directly."

    def _bases(self, path: Path, images: Path | None) -> list[Path]:
        if images:
            return [images]
        return [path.parent, *(path.parent / d for d in ("videos", "video", "data")),
                *(path.parent.parent / d for d in ("videos", "video"))]

    def _answer_letter(self, r: dict, opts: list[str]) -> str | None:
        a = r.get("answer", r.get("correct_choice"))
        if isinstance(a, int) or (isinstance(a, str) and a.strip().isdigit() and len(a.strip()) < 3):
            i = int(a)
            return string.ascii_uppercase[i] if 0 <= i < len(opts) else None
        a = str(a).strip()
        if len(a) == 1 and a.upper() in string.ascii_uppercase[: len(opts)]:
            return a.upper()
        if a in opts:  # MLVU stores the option text
            return string.ascii_uppercase[opts.index(a)]
        return None

    def load(self, data: Path, images: Path | None) -> Loaded:
        files = sorted(data.glob("*.json")) if data.is_dir() else [data_file(data)]
        if not files:
            raise KvlError(f"{data}: no *.json annotation files in this folder")
        out = Loaded([])
        for f in files:
            bases = self._bases(f, images)
            rows = read_rows(f)

            def make(i: int, r: dict, f=f, bases=bases) -> Sample | Skipped:
                sid = str(r.get("question_id") or r.get("id") or f"{f.stem}/{i}")
                opts = _options_list(r)
                if len(opts) < 2:
                    return Skipped(sid, "fewer than 2 options")
                gt = self._answer_letter(r, opts)
                if gt is None:
                    return Skipped(sid, f"answer {r.get('answer', r.get('correct_choice'))!r} matches no option")
                ref = next((str(r[k]) for k in self.video_keys if r.get(k)), None)
                if ref is None:
                    return Skipped(sid, "no video field")
                video = find_video(ref, bases)
                if video is None:
                    return Skipped(sid, f"video {ref} not found under {bases[0]}")
                return Sample(sid, {"video": str(video), "question": str(r["question"])},
                              {"options": opts, "answer": gt}, self.meta(r, f))

            part = check_rows(str(f), rows, ("question",), make)
            out.samples += part.samples
            out.skipped += part.skipped
        return out

    def meta(self, r: dict, f: Path) -> dict:
        return {}

    def frames(self, video: str) -> list:
        from kvl_tasks.video.decode import grab, probe

        info = probe(video)
        n = int(self.options["frames"])
        return [g.image for g in grab(info, uniform_times(info.end_time, n), max_side=int(self.options["max_side"]))]

    def messages(self, sample: Sample) -> list[dict]:
        frames = self.frames(sample.inputs["video"])
        opts = "".join(f"{string.ascii_uppercase[i]}. {o}\n" for i, o in enumerate(sample.target["options"]))
        text = f"{self.prompt_head}{sample.inputs['question']}\n{opts}{self.prompt_tail}"
        return text_message([*({"type": "image", "image": f} for f in frames), text_part(text)])

    def extract(self, answer: str, n_options: int) -> str:
        # lmms-eval's Video-MME and MLVU tasks both call its shared extractor with the letters A-D.
        return extract_mcq_answer(answer, "ABCD")

    def score(self, prediction: str, sample: Sample) -> dict:
        t = sample.target
        got = self.extract(strip_thinking(prediction), len(t["options"]))
        return {"score": float(got == t["answer"]), "extracted": got or None, "parsed": bool(got)}


class VideoMME(_VideoMCQ):
    name = "video-mme"
    title = "Video-MME (w/o subtitles)"
    paper = PaperScore(67.8)
    data_help = "Video-MME annotations (JSON/JSONL/TSV rows) + --images videos folder"
    category_keys = ("duration", "domain", "task_type")
    prompt_head = ("Select the best answer to the following multiple-choice question based on the video. "
                   "Respond with only the letter (A, B, C, or D) of the correct option.\n")
    prompt_tail = "The best answer is:"

    def meta(self, r: dict, f: Path) -> dict:
        return {"duration": r.get("duration", ""), "domain": r.get("domain", ""), "task_type": r.get("task_type", "")}


class LongVideoBench(_VideoMCQ):
    name = "longvideobench"
    title = "LongVideoBench (val)"
    paper = PaperScore(64.5)
    data_help = "lvb_val.json + --images videos folder"
    options = {"frames": 16, "max_side": 448, "seed": 0, "fallback": "random"}
    category_keys = ("duration_group", "question_category")
    letters = "ABCDE"

    def meta(self, r: dict, f: Path) -> dict:
        return {"duration_group": r.get("duration_group", ""), "question_category": r.get("question_category", "")}

    def score(self, prediction: str, sample: Sample) -> dict:
        t = sample.target
        letters = string.ascii_uppercase[: len(t["options"])]
        got = first_letter_after_prefixes(strip_thinking(prediction), "ABCDE")  # the reference's letters, always
        fallback = None
        if not got:
            fallback = self.options["fallback"]
            if fallback == "random":
                got = random.Random(f"{self.options['seed']}:{sample.id}").choice(letters)
        return {"score": float(got == t["answer"]), "extracted": got or None, "parsed": fallback is None,
                "fallback": fallback}

    def aggregate(self, records: list[dict]) -> Aggregate:
        guessed = sum(1 for r in records if r.get("fallback"))
        notes = [f"{guessed} answer(s) had no option letter: a seeded random option, as the reference does"] \
            if guessed and self.options["fallback"] == "random" else []
        return Aggregate({"accuracy": mean_score(records)}, breakdowns(records, self.category_keys), notes,
                         {"guessed": guessed})


class MLVU(_VideoMCQ):
    name = "mlvu"
    title = "MLVU dev (M-Avg)"
    metric = "m_avg"
    paper = PaperScore(74.2, where="report Table 3 (MLVU MCQ)")
    data_help = "MLVU dev json/ folder (one file per task) + --images video folder"
    category_keys = ("task_type",)

    def meta(self, r: dict, f: Path) -> dict:
        return {"task_type": r.get("question_type") or r.get("task_type") or f.stem}


    def aggregate(self, records: list[dict]) -> Aggregate:
        b = breakdowns(records, self.category_keys)
        per = b.get("task_type", {})
        m_avg = sum(v["score"] for v in per.values()) / len(per) if per else 0.0
        return Aggregate({"m_avg": m_avg, "accuracy": mean_score(records)}, b,
                         ["M-Avg is the mean of the per-task accuracies"])
