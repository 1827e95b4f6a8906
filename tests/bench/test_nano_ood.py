"""bench/nano_ood.py: the out-of-distribution sets are drawn where their layout says, by each renderer."""

import json

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def ood(load_bench):
    return load_bench("nano_ood")


def _ink_box(img: Image.Image) -> tuple[int, int, int, int]:
    a = np.asarray(img.convert("L")) < 128
    ys, xs = np.nonzero(a)
    return xs.min(), ys.min(), xs.max(), ys.max()


@pytest.mark.parametrize("face", ["helv", "tiro", "cour"])
def test_pdf_text_lands_in_its_line_box(ood, face):
    pytest.importorskip("pymupdf")
    font = ood.PdfFont("pdf", face, 16)
    text = "Harbor 42 Lantern"
    img = font.draw(300, 60, 255, 0, [(20, 10, text, font, False)])
    x0, y0, x1, y1 = _ink_box(img)
    assert abs(x0 - 20) <= 2 and abs(x1 - (20 + font.length(text))) <= 3  # measured width is drawn width
    assert 10 <= y0 <= 10 + font.size * 0.5 and y1 <= 10 + font.size * 1.3  # top-left placement, like Pillow's


def test_sets_are_deterministic_and_unseen(ood, tmp_path):
    pytest.importorskip("pymupdf")
    a = ood.write_set("pdf", tmp_path / "a", 4, 0)
    b = ood.write_set("pdf", tmp_path / "b", 4, 0)
    rows = [json.loads(line) for line in (a / "data.jsonl").read_text().splitlines()]
    assert rows == [json.loads(line) for line in (b / "data.jsonl").read_text().splitlines()]
    assert {r["font"] for r in rows} <= {"Helvetica", "Times-Roman", "Courier"}
    for r in rows:
        assert (a / r["image"]).read_bytes() == (b / r["image"]).read_bytes()
        x0, y0, x1, y1 = _ink_box(Image.open(a / r["image"]))
        w, h = Image.open(a / r["image"]).size
        assert 5 <= x0 and x1 < w - 5 and 5 <= y0 and y1 < h - 2  # nothing drawn off the page
    corpus_free = set(ood._vocab())
    words = {w.strip("*:$.,").lower() for r in rows for w in r["markdown"].replace("\n", " ").split()}
    assert {w for w in words if w.isalpha() and w not in {"total"}} - {x.lower() for x in ood.KEYS} <= corpus_free | {
        n.lower() for n in ood.NAMES}


def test_pdf_bullets_are_bullets(ood):
    pytest.importorskip("pymupdf")
    font = ood.PdfFont("pdf", "helv", 18)
    x0, y0, x1, y1 = _ink_box(font.draw(60, 40, 255, 0, [(10, 5, "\u2022", font, False)]))
    # a round bullet (4x4 px of ink here), not the 2x2 middle dot that insert_text's simple encoding draws
    assert x1 - x0 >= 3 and y1 - y0 >= 3
