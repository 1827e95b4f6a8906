"""`kvl eval` end to end with the tiny checkpoint: every built-in benchmark on a few rows (real annotation rows
from realdata where it has them, generated images/videos/PDFs otherwise), output files, --resume after a crash,
and bad input. The tiny model's answers are noise; these tests pin down plumbing, not accuracy."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from cli.helpers import run_kvl  # tests/ is on sys.path (rootdir conftest)

NAMES = ["ocrbench", "screenspot-v2", "screenspot-pro", "osworld-g", "docvqa", "infovqa", "mmbench", "mmstar", "ai2d",
         "mmmu", "mathvista", "video-mme", "longvideobench", "mlvu", "mmlongbench-doc", "olmocr-bench", "nano-ocr",
         "nano-ground"]
GUI = {"screenspot-v2", "screenspot-pro", "osworld-g", "nano-ground"}


def png(path: Path | None = None, size=(64, 48), text: str = "", color="white") -> bytes:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", size, color)
    if text:
        ImageDraw.Draw(im).text((4, 4), text, fill="black")
    buf = io.BytesIO()
    im.save(buf, "PNG")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()


def b64(size=(64, 48)) -> str:
    return base64.b64encode(png(size=size)).decode()


def tsv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def ocrbench_rows(realdata: Path, folder: Path, n: int = 3) -> Path:
    """The first n rows and one handwritten-math row of the real OCRBench.json, with generated images."""
    rows = json.loads((realdata / "benchmarks" / "OCRBench.json").read_text())
    pick = rows[:n] + [r for r in rows if r["dataset_name"] == "HME100k"][:1]
    for r in pick:
        png(folder / "images" / r["image_path"], text=str(r["answers"])[:12])
    (folder / "OCRBench.json").write_text(json.dumps(pick))
    return folder / "OCRBench.json"


def video(path: Path, frames: int = 12) -> Path:
    import av
    import numpy as np

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=6)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def pdf(path: Path, texts: list[str]) -> Path:
    import pymupdf

    doc = pymupdf.open()
    for t in texts:
        doc.new_page(width=200, height=150).insert_text((20, 40), t)
    doc.save(str(path))
    return path


def make_data(name: str, d: Path, realdata: Path) -> tuple[list[str], int]:
    """(extra CLI args, expected scored samples) for a small data set of `name` under `d`."""
    mc_header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    if name == "ocrbench":
        return ["--data", str(ocrbench_rows(realdata, d)), "--images", str(d / "images")], 4
    if name == "screenspot-v2":
        return ["--data", str(realdata / "benchmarks" / "screenspot_web_v2.json"), "--images",
                str(realdata / "gui" / "screenspot_v2"), "--limit", "2"], 2
    if name == "screenspot-pro":
        png(d / "images" / "a.png", (320, 180))
        rows = [{"img_filename": "a.png", "bbox": [10, 10, 50, 40], "img_size": [320, 180], "instruction": "open menu",
                 "application": "vscode", "platform": "linux", "group": "Dev", "ui_type": "icon", "id": "p1"},
                {"img_filename": "a.png", "bbox": [0, 0, 0, 0], "img_size": [320, 180], "instruction": "open the moon",
                 "group": "Dev", "ui_type": "text", "id": "p2", "gt_type": "negative"}]
        (d / "vscode_linux.json").write_text(json.dumps(rows))
        return ["--data", str(d / "vscode_linux.json"), "--images", str(d / "images")], 2
    if name == "osworld-g":
        png(d / "images" / "s.png", (320, 180))
        rows = [{"id": "g1", "image_path": "s.png", "image_size": [320, 180], "instruction": "click ok",
                 "box_type": "bbox", "box_coordinates": [10, 10, 30, 20]},
                {"id": "g2", "image_path": "s.png", "image_size": [320, 180], "instruction": "click the unicorn",
                 "box_type": "refusal", "box_coordinates": [-1, -1, -1, -1]}]
        (d / "OSWorld-G.json").write_text(json.dumps(rows))
        return ["--data", str(d / "OSWorld-G.json"), "--images", str(d / "images")], 2
    if name in ("docvqa", "infovqa"):
        rows = [[i, f"What is the date {i}?", "['1984', '1 Jan 1984']", b64()] for i in range(2)]
        return ["--data", str(tsv(d / "VQA_VAL.tsv", ["index", "question", "answer", "image"], rows))], 2
    if name in ("mmbench", "mmstar", "ai2d"):
        img = b64()
        rows = [[1, "What colour?", "nan", "red", "white", "blue", "green", "B", "color", "perception", img],
                [1000001, "What colour?", "nan", "white", "blue", "green", "red", "A", "color", "perception", "1"],
                [2, "How many?", "a hint", "one", "two", "three", "four", "C", "count", "reasoning", img]]
        return ["--data", str(tsv(d / "MCQ.tsv", mc_header, rows))], 3
    if name == "mmmu":
        rows = [[f"validation_Art_{i}", "<image 1> Which?", "x", "y", "z", "w", "A", "Art", f"['{b64()}']",
                 "multiple-choice", "validation"] for i in range(2)]
        rows.append(["validation_Math_1", "<image 1> How much?", "nan", "nan", "nan", "nan", "3.14", "Math",
                     f"['{b64()}']", "open", "validation"])
        header = ["index", "question", "A", "B", "C", "D", "answer", "category", "image", "question_type", "split"]
        return ["--data", str(tsv(d / "MMMU_DEV_VAL.tsv", header, rows))], 3
    if name == "mathvista":
        header = ["index", "question", "answer", "question_type", "answer_type", "choices", "precision", "task", "image"]
        rows = [[1, "How many apples?", "5", "free_form", "integer", "nan", "nan", "math word problem", b64()],
                [2, "Which fraction?", "8/11", "multi_choice", "text", "['3/11', '8/11']", "nan", "figure qa", b64()]]
        return ["--data", str(tsv(d / "MathVista_MINI.tsv", header, rows))], 2
    if name in ("video-mme", "longvideobench", "mlvu"):
        (d / "videos").mkdir()
        video(d / "videos" / "v1.mp4")
        if name == "video-mme":
            rows = [{"question_id": "q1", "videoID": "v1", "duration": "short", "domain": "x", "task_type": "count",
                     "question": "What happens?", "options": ["A. a", "B. b", "C. c", "D. d"], "answer": "B"}]
        elif name == "longvideobench":
            rows = [{"id": "q1", "video_path": "v1.mp4", "question": "What?", "candidates": ["a", "b", "c", "d", "e"],
                     "correct_choice": 4, "duration_group": 15, "question_category": "S2E"}]
        else:
            rows = [{"video": "v1.mp4", "question": "How many?", "candidates": ["1", "2", "3", "4"], "answer": "3",
                     "question_type": "count"}]
        (d / "ann.json").write_text(json.dumps(rows))
        return ["--data", str(d / "ann.json"), "--images", str(d / "videos"), "--set", "frames=2",
                "--set", "max_side=64"], 1
    if name == "mmlongbench-doc":
        (d / "documents").mkdir()
        pdf(d / "documents" / "doc.pdf", ["Revenue was 42 million.", "Page two."])
        rows = [{"doc_id": "doc.pdf", "question": "What was revenue?", "answer": "42", "answer_format": "Int",
                 "evidence_pages": "[1]", "evidence_sources": "['Pure-text (Plain-text)']"},
                {"doc_id": "doc.pdf", "question": "Who is the CEO?", "answer": "Not answerable", "answer_format": "None",
                 "evidence_pages": "[]", "evidence_sources": "[]"}]
        (d / "samples.json").write_text(json.dumps(rows))
        return ["--data", str(d / "samples.json"), "--set", "dpi=20"], 2
    if name == "olmocr-bench":
        return ["--data", str(realdata / "documents" / "olmocr_bench"), "--limit", "1",
                "--set", "longest_side=200"], 1
    if name == "nano-ocr":
        png(d / "img" / "p.png", text="# Title")
        (d / "data.jsonl").write_text(json.dumps({"id": "n1", "image": "img/p.png", "markdown": "# Title\n\nHi"}) + "\n")
        return ["--data", str(d)], 1
    if name == "nano-ground":
        png(d / "img" / "s.png", (160, 90))
        row = {"id": "n1", "image": "img/s.png", "instruction": "click OK", "bbox": [10, 10, 40, 30],
               "width": 160, "height": 90}
        (d / "data.jsonl").write_text(json.dumps(row) + "\n")
        return ["--data", str(d / "data.jsonl")], 1
    raise AssertionError(name)


@pytest.fixture
def long_context(tiny_engine, monkeypatch):
    """The tiny checkpoint's 512-token context cannot hold the 531-token GUI system prompt: lift it (RoPE is
    computed on the fly, so the model itself takes longer inputs)."""
    monkeypatch.setattr(tiny_engine.model.config.text, "max_position_embeddings", 2048)


@pytest.mark.parametrize("name", NAMES)
def test_every_benchmark_runs_end_to_end(name, kvl, tiny_dir, realdata, tmp_path, request):
    if name in GUI:
        request.getfixturevalue("long_context")
    if name in ("video-mme", "longvideobench", "mlvu"):
        pytest.importorskip("av")
    d = tmp_path / "data"
    d.mkdir()
    args, n = make_data(name, d, realdata)
    out = tmp_path / "run"
    code, stdout, stderr = kvl("eval", name, *args, "--out", out, "--model", tiny_dir, "--max-new-tokens", "4",
                               "--batch-size", "2")
    assert code == 0, stderr
    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n and all("score" in p and "prediction" in p for p in preds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == name and summary["counts"]["scored"] == n
    assert summary["value"] is not None
    # realdata holds 4 of ScreenSpot-V2 web's 437 screenshots: the other rows are skipped, and counted
    assert summary["counts"]["skipped"] == (433 if name == "screenspot-v2" else 0)
    assert summary["metric"] in stdout  # the table names the headline metric


def test_ocrbench_table_files_and_paper_number(kvl, tiny_dir, realdata, tmp_path):
    data = ocrbench_rows(realdata, tmp_path)
    code, out, err = kvl("eval", "ocrbench", "--data", data, "--images", tmp_path / "images", "--out", tmp_path / "r",
                         "--model", tiny_dir, "--max-new-tokens", "4")
    assert code == 0, err
    assert "867" in out and "final_score" in out and "Text Recognition" in out
    assert "4 scored (4 new, 0 resumed)" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["paper"]["value"] == 867 and summary["unit"] == "points"
    assert summary["generation"] == {"max_new_tokens": 4, "temperature": 0.0, "batch_size": 1}
    code, out, _ = kvl("eval", "ocrbench", "--data", data, "--images", tmp_path / "images", "--out", tmp_path / "j",
                       "--model", tiny_dir, "--max-new-tokens", "4", "--json")
    assert code == 0 and json.loads(out)["counts"]["scored"] == 4


def test_resume_after_a_crash_recomputes_nothing_scored(kvl, tiny_dir, tiny_engine, realdata, tmp_path, monkeypatch):
    data = ocrbench_rows(realdata, tmp_path, n=4)
    base = ["eval", "ocrbench", "--data", data, "--images", tmp_path / "images", "--out", tmp_path / "r",
            "--model", tiny_dir, "--max-new-tokens", "4"]
    real = tiny_engine.chat_batch
    calls = []

    def crash_on_third(convs, **kw):
        calls.append(len(convs))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(convs, **kw)

    monkeypatch.setattr(tiny_engine, "chat_batch", crash_on_third)
    code, _, _ = kvl(*base)
    assert code == 130  # Ctrl-C
    preds = tmp_path / "r" / "predictions.jsonl"
    assert len(preds.read_text().splitlines()) == 2  # flushed as they were scored

    code, _, err = kvl(*base)  # without --resume an existing run is not overwritten
    assert code == 1 and "--resume" in err and len(err.strip().splitlines()) == 1

    with preds.open("a") as fh:  # a torn line, as a kill mid-write leaves
        fh.write('{"id": "torn", "sco')
    monkeypatch.setattr(tiny_engine, "chat_batch", real)
    code, _, err = kvl(*base, "--resume")
    assert code == 0, err
    assert "5 scored (3 new, 2 resumed)" in err
    ids = [json.loads(x)["id"] for x in preds.read_text().splitlines() if x.startswith('{"id": "') and x.endswith("}")]
    assert len(ids) == len(set(ids)) == 5

    # everything scored: --resume rescoring needs no model at all (this --model would fail to load)
    code, _, err = kvl("eval", "ocrbench", "--data", data, "--images", tmp_path / "images", "--out", tmp_path / "r",
                       "--model", tmp_path / "no-model", "--resume")
    assert code == 0 and "0 new, 5 resumed" in err


def test_missing_images_and_malformed_lines_are_counted_not_dropped(kvl, tiny_dir, tmp_path):
    rows = [[1, "q1", "['a']", b64(), "Regular Text Recognition"],
            [2, "q2 broken line"],
            [3, "q3", "['b']", "not-a-row-index", "Regular Text Recognition"]]
    data = tsv(tmp_path / "OCRBench.tsv", ["index", "question", "answer", "image", "category"], rows)
    code, _, err = kvl("eval", "ocrbench", "--data", data, "--out", tmp_path / "r", "--model", tiny_dir,
                       "--max-new-tokens", "2")
    assert code == 0, err
    assert "2 sample(s) skipped" in err and "cells where the header has" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["counts"]["scored"] == 1 and summary["counts"]["skipped"] == 2
    assert {s["id"] for s in summary["skipped"]} == {"line 3", "3"}


def test_a_prompt_the_model_cannot_take_is_skipped_and_nothing_scored_fails(kvl, tiny_dir, realdata, tmp_path):
    # The GUI system prompt alone is longer than the tiny model's 512-token context.
    code, _, err = kvl("eval", "screenspot-v2", "--data", realdata / "benchmarks" / "screenspot_web_v2.json",
                       "--images", realdata / "gui" / "screenspot_v2", "--limit", "2", "--out", tmp_path / "r",
                       "--model", tiny_dir, "--batch-size", "2")
    assert code == 1
    assert "nothing could be scored; " in err and "takes at most 512" in err
    assert len([x for x in err.splitlines() if x.startswith("error:")]) == 1


@pytest.mark.parametrize("args,msg", [
    (["ocrbench", "--data", "missing.json"], "missing.json: no such file"),
    (["no-such-bench", "--data", "x"], "unknown benchmark 'no-such-bench'"),
    (["ocrbench", "--data", "{screenspot}"], "not this benchmark's format"),
    (["ocrbench", "--data", "{ocrbench}"], "no usable ocrbench samples"),  # none of the images exist
    (["mmbench", "--data", "{ocrbench}", "--set", "nope=1"], "unknown option(s) nope"),
    (["mmbench", "--data", "{ocrbench}", "--set", "novalue"], "expected KEY=VALUE"),
    (["ocrbench"], "--data is needed"),
])
def test_bad_input_is_one_line(args, msg, kvl, tiny_dir, realdata, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sub = {"{screenspot}": str(realdata / "benchmarks" / "screenspot_web_v2.json"),
           "{ocrbench}": str(realdata / "benchmarks" / "OCRBench.json")}
    code, _, err = kvl("eval", *[sub.get(a, a) for a in args], "--model", tiny_dir)
    assert code == 1
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err


def test_nano_without_data_uses_the_heldout_generator_or_asks_for_data(kvl, tiny_dir, tmp_path, monkeypatch,
                                                                      long_context):
    import sys
    import types

    synth = types.ModuleType("kvl_core.synth")  # an install without the generator
    monkeypatch.setitem(sys.modules, "kvl_core.synth", synth)
    code, _, err = kvl("eval", "nano-ground", "--out", tmp_path / "a", "--model", tiny_dir)
    assert code == 1 and "--data is needed" in err

    made = []

    def heldout(kind, n, out_dir):
        made.append((kind, n))
        out_dir = Path(out_dir)
        png(out_dir / "s.png", (160, 90))
        rows = [{"id": f"h{i}", "image": "s.png", "instruction": "click OK", "bbox": [0, 0, 80, 45], "width": 160,
                 "height": 90} for i in range(n)]
        (out_dir / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out_dir / "data.jsonl"

    synth.heldout = heldout
    code, out, err = kvl("eval", "nano-ground", "--out", tmp_path / "b", "--model", tiny_dir, "--limit", "2",
                         "--max-new-tokens", "4")
    assert code == 0, err
    assert made == [("ground", 2)] and "random_baseline" in out
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["metrics"]["random_baseline"] == pytest.approx(25.0)


def test_list_through_the_installed_console_script():
    proc = run_kvl("eval", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["name"] for r in rows} >= set(NAMES)
    assert next(r for r in rows if r["name"] == "ocrbench")["paper"]["value"] == 867
    proc = run_kvl("eval", "list")
    assert proc.returncode == 0 and "screenspot-pro" in proc.stdout
