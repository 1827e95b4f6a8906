"""Written datasets: determinism, train/held-out separation, and loading by the real trainer code."""

import json
import random

import pytest
from PIL import Image

from kvl_core.synth import dataset as D
from kvl_core.synth.documents import DocPlan


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", D.TRAIN_KINDS)
def test_same_arguments_give_byte_identical_files(tmp_path, kind):
    a = D.write_train(kind, tmp_path / "a", 6, seed=3)
    b = D.write_train(kind, tmp_path / "b", 6, seed=3)
    assert a.name == b.name == f"{kind}.jsonl"
    fa, fb = _files(tmp_path / "a"), _files(tmp_path / "b")
    # one PNG per line, except "screen": SCREEN_TARGETS lines share one screenshot
    images = 0 if kind == "text" else -(-6 // D.SCREEN_TARGETS) if kind == "screen" else 6
    assert fa == fb and len(fa) == 1 + images
    c = D.write_train(kind, tmp_path / "c", 6, seed=4)
    assert c.read_bytes() != a.read_bytes()


def test_workers_do_not_change_the_output(tmp_path):
    a = D.write_train("ocr", tmp_path / "a", 4, seed=1)
    b = D.write_train("ocr", tmp_path / "b", 4, seed=1, workers=2)
    assert _files(a.parent) == _files(b.parent)


def test_heldout_is_disjoint_from_training(tmp_path):
    cfg = D.SynthConfig()
    train_docs = {D._plan_doc("train", k, s, i, cfg.doc)[2] for k in ("ocr", "text") for s in (0, 1) for i in range(60)}
    train_screens = {D._plan_screen("train", "ground", s, i, cfg.screen)[2] for s in (0, 1) for i in range(40)}
    assert not any(D.is_reserved(k) for k in train_docs | train_screens)
    path = D.heldout("ocr", 12, tmp_path)
    held = [json.loads(x) for x in path.read_text().splitlines()]
    keys = {"doc\0" + r["markdown"] for r in held}
    assert len(keys) == 12 and all(D.is_reserved(k) for k in keys) and not keys & train_docs
    gpath = D.heldout("ground", 6, tmp_path)
    assert len(gpath.read_text().splitlines()) == 6


def test_reserved_content_can_never_be_drawn_for_training(monkeypatch):
    # Force the generator to produce one fixed document: training must refuse it when its key is in the
    # held-out namespace, and the held-out split must refuse it otherwise.
    mds = [f"# Notes {i}\n\nWe sent the box." for i in range(200)]
    reserved = next(m for m in mds if D.is_reserved("doc\0" + m))
    free = next(m for m in mds if not D.is_reserved("doc\0" + m))
    monkeypatch.setattr(D, "_MAX_ATTEMPTS", 5)
    for md, ok_split, bad_split in ((reserved, "heldout", "train"), (free, "train", "heldout")):
        plan = DocPlan("paragraph", md, (224, 56), "sans", 14, [])
        monkeypatch.setattr(D, "plan_document", lambda rng, spec, plan=plan: plan)
        assert D._plan_doc(ok_split, "ocr", 0, 0, D.DocSpec())[1] is plan
        with pytest.raises(RuntimeError):
            D._plan_doc(bad_split, "ocr", 0, 0, D.DocSpec())


def test_heldout_formats(tmp_path):
    o = [json.loads(x) for x in D.heldout("ocr", 3, tmp_path, seed=5).read_text().splitlines()]
    assert set(o[0]) == {"id", "image", "markdown", "layout"}
    g = [json.loads(x) for x in D.heldout("ground", 4, tmp_path, seed=5).read_text().splitlines()]
    for r in g:
        x1, y1, x2, y2 = r["bbox"]
        assert 0 <= x1 < x2 <= r["width"] and 0 <= y1 < y2 <= r["height"]
        with Image.open(tmp_path / r["image"]) as im:
            assert im.size == (r["width"], r["height"])
        assert r["instruction"] and r["label"] in r["instruction"]
    assert len({r["id"] for r in o + g}) == 7


def test_lines_load_and_encode_with_the_trainer(tmp_path, tiny_dir):
    from kvl_core.processor import Processor
    from kvl_core.training.data import encode_caption_pair, encode_sample, read_samples

    proc = Processor.from_pretrained(tiny_dir)
    for kind, n in (("ocr", 3), ("ground", 2), ("caption", 4), ("text", 2)):
        path = D.write_train(kind, tmp_path, n, seed=2)
        samples = read_samples(path)
        assert len(samples) == n
        for s in samples:
            if kind == "caption":
                ids, pv, grid, _ = encode_caption_pair(s, proc)
                assert len(ids) > 3 and pv.shape[0] > 0
                continue
            enc = encode_sample(s, proc, "assistant" if kind != "text" else "all")
            target = proc.decode([i for i, m in zip(enc.input_ids, enc.labels_mask) if m]).strip()
            assert target == (s.text if kind == "text" else s.messages[-1]["content"])
        if kind in ("ocr", "ground", "caption"):
            for s in samples:
                img = s.image if kind == "caption" else s.messages[-2]["content"][0]["image"]
                with Image.open(img) as im:
                    w, h = im.size
                doc_like = kind == "ocr" or kind == "caption" and "window" not in s.caption
                assert (224 <= w <= 448 and 28 <= h <= 280) if doc_like else (w, h) == (448, 336)


def test_ground_targets_per_screen_share_images(tmp_path):
    path = D.write_train("ground", tmp_path, 5, seed=0, config=D.SynthConfig(targets_per_screen=2))
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(recs) == 5 and len({r["id"] for r in recs}) == 5
    imgs = [r["messages"][1]["content"][0]["image"] for r in recs]
    assert imgs[0] == imgs[1] and len(set(imgs)) == 3
    assert recs[0]["messages"][2]["content"] != recs[1]["messages"][2]["content"]


def test_bad_kind():
    with pytest.raises(ValueError):
        D.write_train("video", "/nonexistent", 1)
    with pytest.raises(ValueError):
        D.heldout("caption", 1, "/nonexistent")


def test_shape_captions_match_the_drawing():
    from kvl_core.synth.captions import render_shapes

    for seed in range(40):
        img, cap = render_shapes(random.Random(seed))
        assert img.size == (224, 224) and cap.startswith(("a ", "an "))
        border = [img.getpixel((x, y)) for x in range(224) for y in (0, 223)] + \
                 [img.getpixel((x, y)) for y in range(224) for x in (0, 223)]
        assert len(set(border)) == 1, (seed, cap)  # shapes stay inside the picture


def test_ocr_lines_carry_every_drawn_glyph(tmp_path):
    """The reading stages' targets: one [char, x, y, bold] per drawn character, spaces included, inside the
    image; the non-space characters spell the markdown's words."""
    import json
    import re

    path = D.write_train("ocr", tmp_path, 6, seed=4)
    for line in path.read_text().splitlines():
        row = json.loads(line)
        with Image.open(tmp_path / row["messages"][0]["content"][0]["image"]) as im:
            w, h = im.size
        g = row["glyphs"]
        assert g and all(len(x) == 4 and 0 <= x[1] < w and 0 <= x[2] < h and x[3] in (0, 1) for x in g)
        drawn = "".join(x[0] for x in g).replace("\u2022", "")
        md = re.sub(r"(\*\*|^#+ |^- |\| --- |\|)", "", row["messages"][1]["content"], flags=re.M)
        assert sorted(drawn.replace(" ", "")) == sorted(md.replace(" ", "").replace("\n", "")), row["layout"]
