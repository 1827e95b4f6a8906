"""The detectors on score arrays and pixels: scores against the HSV definition, adaptive/content/fade decisions."""

import numpy as np
import pytest

from kvl_tasks.video.detect import (MinLength, Scorer, Scores, adaptive_cuts, content_cuts, detect, fade_cuts,
                                    merge_cuts)


def hsv_reference(rgb: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit RGB->HSV written from its definition, in float64, one formula per case ([n, h, w, 3])."""
    x = np.moveaxis(rgb.astype(np.float64), -1, 1)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    v = x.max(1)
    d = v - x.min(1)
    s = np.where(v > 0, 255 * d / np.where(v > 0, v, 1), 0)
    dd = np.where(d > 0, d, 1)
    h = np.where(v == r, 60 * (g - b) / dd, np.where(v == g, 120 + 60 * (b - r) / dd, 240 + 60 * (r - g) / dd))
    h = np.where(d > 0, h, 0)
    h = np.where(h < 0, h + 360, h) / 2
    return np.stack([np.floor(h + 0.5) % 180, np.floor(s + 0.5), v], 1)


def _scores(content, times=None, intensity=None) -> Scores:
    n = len(content)
    t = np.arange(n) / 30 if times is None else np.asarray(times, float)
    inten = np.full(n, 100.0) if intensity is None else np.asarray(intensity, float)
    return Scores(np.arange(n), t, np.asarray(content, np.float32), inten.astype(np.float32))


def test_adaptive_fires_on_a_spike_not_on_a_pan():
    c = np.full(120, 2.0)
    c[0] = 0
    c[40] = 60  # a cut
    c[80:100] = 40  # a fast pan: every frame differs a lot, none stands out
    assert adaptive_cuts(_scores(c)) == [40]


def test_adaptive_needs_min_content_and_ratio():
    c = np.full(60, 1.0)
    c[20] = 12  # 12x its neighbours but below min_content 15
    c[40] = 16
    assert adaptive_cuts(_scores(c)) == [40]
    assert adaptive_cuts(_scores(c), ratio=20) == []


def test_min_scene_length_in_seconds_and_frames():
    c = np.full(100, 1.0)
    c[[10, 25, 50]] = 50
    s = _scores(c)
    assert adaptive_cuts(s, min_len=MinLength(0.6)) == [25, 50]  # 10 is 0.33 s from the start; 25-10 irrelevant
    assert adaptive_cuts(s, min_len=MinLength(0.0, frames=10)) == [10, 25, 50]
    assert adaptive_cuts(s, min_len=MinLength(0.0, frames=16)) == [25, 50]


def test_min_scene_length_uses_real_times_on_vfr():
    c = np.full(40, 1.0)
    c[[10, 20]] = 50
    times = np.concatenate([np.arange(15) * 0.1, 1.5 + np.arange(25) * 0.01])  # 10 fps, then 100 fps
    s = _scores(c, times)
    # frame 10 is at 1.0 s, frame 20 at 1.55 s: 0.55 s apart, too close at 0.6 s even though 10 frames apart
    assert adaptive_cuts(s, min_len=MinLength(0.6)) == [10]
    assert adaptive_cuts(s, min_len=MinLength(0.5)) == [10, 20]


def test_content_merges_a_flash_burst():
    c = np.full(200, 1.0)
    c[30] = 50  # a cut
    c[100:104] = 50  # flashes closer than the minimum length: one cut, at the burst's first frame
    c[140:165] = 50  # a strobe lasting longer than the minimum length: a cut at each end
    assert content_cuts(_scores(c)) == [30, 100, 140, 164]
    c2 = np.full(200, 1.0)
    c2[5] = 50  # too early (before any cut): dropped, not merged
    c2[60] = 50
    assert content_cuts(_scores(c2)) == [60]


def test_fade_cut_midway_through_the_dark_run():
    inten = np.full(100, 90.0)
    inten[40:47] = 3  # dark from 40 to 46, bright again at 47
    assert [f.cut for f in fade_cuts(_scores(np.zeros(100), intensity=inten))] == [40 + round(7 / 2)]
    assert [f.cut for f in fade_cuts(_scores(np.zeros(100), intensity=inten), bias=-1.0)] == [40]
    # a video that starts dark: the run counts from frame 0; one that ends dark: no scene follows, no cut
    inten2 = np.full(100, 90.0)
    inten2[:30] = 0
    inten2[80:] = 0
    assert [f.cut for f in fade_cuts(_scores(np.zeros(100), intensity=inten2))] == [15]


def test_merge_prefers_the_exact_cut_of_a_transition():
    inten = np.full(120, 90.0)
    inten[50:60] = 2
    s = _scores(np.zeros(120), intensity=inten)
    fades = fade_cuts(s)
    assert [f.cut for f in fades] == [55]
    ml = MinLength(0.6)
    assert merge_cuts([50], fades, s, ml) == [50]  # hard cut into the black run replaces its middle
    assert merge_cuts([20], fades, s, ml) == [20, 55]
    assert merge_cuts([100], fades, s, ml) == [55, 100]


def test_scorer_streams_batches_like_one_pass_and_matches_the_hsv_definition():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (21, 12, 16, 3), dtype=np.uint8)
    rgb[3, :, :5] = 77  # greys: hue and saturation 0
    rgb[4, ..., 0], rgb[4, ..., 1] = rgb[4, ..., 2], rgb[4, ..., 2]  # three-way ties
    rgb[9] = rgb[8]  # no change at all
    one = Scorer()
    one.add(np.arange(21), np.arange(21) / 30, rgb)
    parts = Scorer()
    for a, b in ((0, 5), (5, 6), (6, 21)):
        parts.add(np.arange(a, b), np.arange(a, b) / 30, rgb[a:b])
    for key in ("content", "intensity", "structure", "thumbs"):
        assert np.array_equal(getattr(one.scores, key), getattr(parts.scores, key)), key
    assert one.scores.content[0] == 0 and one.scores.content[9] == 0 and one.scores.structure[9] < 1e-3
    h = hsv_reference(rgb).astype(np.int64)  # [n, 3, h, w]
    d = np.abs(np.diff(h, axis=0))
    expected = d.mean(axis=(2, 3)).mean(1)
    # OpenCV rounds a few hues the other way (±1 of 180): the mean over a frame moves by far less than a level
    assert np.allclose(one.scores.content[1:], expected, atol=0.05)
    assert np.allclose(one.scores.intensity, rgb.reshape(21, -1).mean(1), atol=1e-3)


def test_structure_score_ignores_gain_and_offset_but_not_layout():
    """The luma structure channel: a flash or fade (gain/offset) keeps it near 0; another picture of the same
    colour (two mostly white screens) raises it, where the HSV score stays small."""
    import cv2

    white = np.full((144, 256, 3), 235, np.uint8)
    a, b = white.copy(), white.copy()
    for k in range(6):  # dark text lines at different places
        cv2.rectangle(a, (20, 15 + 20 * k), (200 - 15 * k, 18 + 20 * k), (30, 30, 30), -1)
        cv2.rectangle(b, (60 + 10 * k, 30 + 17 * k), (240, 33 + 17 * k), (40, 40, 40), -1)
    brighter = (a.astype(np.float32) * 0.8 + 40).astype(np.uint8)
    s = Scorer()
    s.add(np.arange(4), np.arange(4) / 30, np.stack([a, brighter, a, b]))
    sc = s.scores
    assert sc.structure[1] < 1 and sc.structure[2] < 1
    assert sc.structure[3] > 50 and sc.content[3] < 15  # HSV alone misses it (adaptive needs 15)


def test_detect_rejects_unknown_detector():
    with pytest.raises(ValueError):
        detect(_scores(np.zeros(10)), "histogram")
