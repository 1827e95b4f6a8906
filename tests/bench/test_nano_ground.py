"""bench/nano_ground.py: the pointing task's boxes cover the word drawn, and its answers click inside them."""

import json

import numpy as np
import pytest

from kvl_core.synth import dataset as D


@pytest.fixture(scope="module")
def ng(load_bench):
    return load_bench("nano_ground")


def test_words_split_at_spaces_and_line_breaks(ng):
    rows = [["a", 10, 20, 0], ["b", 18, 20, 0], [" ", 26, 20, 0], ["c", 34, 20, 0], ["d", 10, 50, 0], ["e", 18, 50, 0],
            ["f", 80, 50, 0], ["g", 88, 50, 0]]  # "fg": the next table cell, drawn apart with no space
    words = ng.words_of(rows)
    assert [w for w, _ in words] == ["ab", "c", "de", "fg"]
    x1, y1, x2, y2 = words[0][1]
    assert x1 < 10 < 18 < x2 and y1 < 20 < y2 and y2 < 50


def test_point_chats_click_inside_the_drawn_word(ng, tmp_path):
    from kvl_tasks.eval.benchmarks.screenspot import in_box, parse_point
    from PIL import Image

    src = D.write_train("ocr", tmp_path / "src", 6, seed=3)
    out = ng.point_chats(src, tmp_path / "point.jsonl")
    rows = [json.loads(l) for l in open(out)]
    assert rows
    for r in rows:
        word = r["instruction"].split()[-1].strip('"')
        md = json.loads(open(src).readlines()[int(r["id"].rsplit("-", 1)[1])])["messages"][1]["content"]
        assert md.count(word) >= 1 and len(word) >= 3
        pt = parse_point(r["messages"][2]["content"], 1, 1)
        assert pt is not None and in_box(pt, r["box"])
        img = Image.open(r["messages"][1]["content"][0]["image"])
        W, H = img.size
        x1, y1, x2, y2 = (int(r["box"][0] * W), int(r["box"][1] * H), int(r["box"][2] * W) + 1, int(r["box"][3] * H) + 1)
        ink = np.asarray(img.convert("L"))[y1:y2, x1:x2]
        assert (ink < 160).mean() > 0.03  # the box holds the word's ink, not empty page
    assert len({r["instruction"] for r in rows}) == len(rows)


def test_rows_count_text_lines(ng):
    rows = [["a", 10, 20.0, 0], ["b", 18, 21.5, 0], ["c", 10, 50, 0], ["d", 10, 80, 0], ["e", 30, 79, 0]]
    assert ng.rows_of(rows) == 3 and ng.rows_of(rows[:2]) == 1 and ng.rows_of([]) == 0
