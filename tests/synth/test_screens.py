"""Synthetic screens: target boxes, distinct labels, instructions and the ground-truth answer."""

import random
import re

import pytest

from kvl_core.synth.screens import KINDS, ScreenSpec, draw_screen, ground_truth_answer, plan_screen, render_screen

PLANS = [plan_screen(random.Random(s)) for s in range(80)]


def _inside(inner, outer) -> bool:
    return outer[0] <= inner[0] < inner[2] <= outer[2] and outer[1] <= inner[1] < inner[3] <= outer[3]


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def test_targets_lie_in_their_window_and_the_image():
    for p in PLANS:
        W, H = p.size
        assert 4 <= len(p.targets) <= 10
        for t in p.targets:
            assert _inside(t.bbox, (0, 0, W, H)) and _inside(t.bbox, t.window), (t, p.size)
            assert t.kind in KINDS
        wins = [w.box for w in p.windows]
        assert not any(_overlap(a, b) for i, a in enumerate(wins) for b in wins[i + 1:])
        boxes = [t.bbox for t in p.targets]
        assert not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_labels_distinct_and_named_by_instruction():
    kinds = set()
    for p in PLANS:
        labels = [t.label.lower() for t in p.targets if t.kind != "close"]
        titles = [w.title.lower() for w in p.windows]
        assert len(set(labels + titles)) == len(labels) + len(titles)
        for t in p.targets:
            kinds.add(t.kind)
            assert t.label in t.instruction and t.action.endswith(".")
            if t.kind in ("checkbox", "toggle"):
                on = any(w in t.instruction for w in ("Disable", "Uncheck", "Clear", "off"))
                assert on == bool(t.state), t.instruction
    assert kinds == set(KINDS)


def test_answer_round_trips_to_box_centre():
    for p in PLANS[:20]:
        W, H = p.size
        for t in p.targets:
            ans = ground_truth_answer(t, p.size)
            assert ans.startswith("## Action:\n" + t.action)
            m = re.search(r"pyautogui\.click\(x=([0-9.]+), y=([0-9.]+)\)", ans)
            x, y = float(m.group(1)) * W, float(m.group(2)) * H
            cx, cy = t.center()
            assert abs(x - cx) <= 0.0005 * W + 1e-9 and abs(y - cy) <= 0.0005 * H + 1e-9
            assert t.bbox[0] <= x <= t.bbox[2] and t.bbox[1] <= y <= t.bbox[3]


def test_something_is_drawn_in_each_target_box():
    p = PLANS[0]
    img = draw_screen(p)
    for t in p.targets:
        lo, hi = img.crop(t.bbox).convert("L").getextrema()
        assert hi - lo > 40, t


def test_render_size_and_determinism():
    spec = ScreenSpec(size=(336, 252))
    img, ts = render_screen(random.Random(5), spec)
    img2, ts2 = render_screen(random.Random(5), spec)
    assert img.size == (336, 252) and img.mode == "RGB"
    assert ts == ts2 and img.tobytes() == img2.tobytes()
    for t in ts:
        assert _inside(t.bbox, (0, 0, 336, 252))


def test_bad_spec_is_rejected():
    with pytest.raises(ValueError):
        ScreenSpec(windows=(1, 3))


def _contrast_near(img, x: float, y: float, r: int) -> int:
    """Largest luminance step within r px of (x, y): text and marks have ink of either polarity."""
    g = img.convert("L")
    vals = [g.getpixel((i, j)) for i in range(max(0, round(x) - r), min(g.width, round(x) + r + 1))
            for j in range(max(0, round(y) - r), min(g.height, round(y) + r + 1))]
    return max(vals) - min(vals)


def test_glyphs_follow_the_drawn_text_and_mark_the_controls():
    """The reading stages' targets on screens: every label is spelled out in drawing order at its ink
    (light or dark), and each text-less control has exactly one mark inside its box."""
    from kvl_core.synth.screens import MARKS, glyphs

    for seed, p in enumerate(PLANS[:30]):
        img = draw_screen(p, random.Random(seed))
        gl = glyphs(p)
        text = "".join(g.char for g in gl)
        for win in p.windows:
            assert win.title in text
            for w in win.widgets:
                if w.kind not in ("close",):
                    assert w.label in text, (seed, w.label)
        for g in gl:
            if g.char in MARKS.values():
                kind = next(k for k, v in MARKS.items() if v == g.char)
                boxes = [t.bbox for t in p.targets if t.kind == kind]
                assert any(b[0] <= g.x < b[2] and b[1] <= g.y < b[3] for b in boxes), (seed, kind)
            elif g.char.strip() and g.char not in ".,:'-":
                assert _contrast_near(img, g.x, g.y, max(2, g.size // 3)) > 60, (seed, g)
        marks = [g.char for g in gl if g.char in MARKS.values()]
        assert marks.count(MARKS["close"]) == len(p.windows)
        assert marks.count(MARKS["toggle"]) == sum(t.kind == "toggle" for t in p.targets)
