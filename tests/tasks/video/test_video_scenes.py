"""Scene detection end to end on generated videos (exact cut frames) and on PySceneDetect's real test videos."""

import json

import numpy as np
import pytest

from kvl_core.errors import KvlError
from kvl_tasks.video.decode import probe
from kvl_tasks.video.scan import scan
from kvl_tasks.video.detect import Scorer, detect
from kvl_tasks.video.scenes import find_scenes


@pytest.mark.parametrize("detector", ["adaptive", "content"])
def test_hard_cuts_are_found_on_the_exact_frame(vids, detector):
    path, cuts = vids["cuts"]
    r = find_scenes(path, detector)
    assert r.cuts == cuts == [30, 70]
    s = r.scenes
    assert [(x.start_frame, x.end_frame) for x in s] == [(0, 30), (30, 70), (70, 95)]
    assert [x.start_time for x in s] == pytest.approx([0, 1.0, 70 / 30])
    assert s[-1].end_time == pytest.approx(95 / 30)
    assert all(a.end_time == b.start_time for a, b in zip(s, s[1:]))  # scenes tile the video


def _pyscenedetect_pixels(path, size, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """What PySceneDetect scores: the full frame in RGB (swscale, as OpenCV's FFmpeg reader converts), then
    OpenCV's INTER_LINEAR resize to `size`. Packed [n, h, w, 3]."""
    import av
    import cv2

    with av.open(str(path)) as c:
        frames = []
        for i, f in enumerate(c.decode(video=0)):
            if hi is not None and i >= hi:
                break
            if i >= lo:
                frames.append(cv2.resize(f.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_LINEAR))
    return np.stack(frames)


def test_adaptive_cuts_where_a_fade_out_turns_black_as_pyscenedetect(vids):
    """testvideo.mp4's cut 691: a shot fades out and the video ends dark. The fade detector cannot cut (no
    scene follows the black), but the adaptive one does, where the last dark colour gives way to black: a jump
    in hue and saturation among near-black pixels that its neighbours do not have. Those hues turn on the last
    bit of rounding, so the scan must see PySceneDetect's exact pixels to make its decision."""
    path, first_black = vids["fade_end"]
    assert find_scenes(path, "adaptive", fades=False).cuts == [first_black]
    assert find_scenes(path, "threshold").cuts == []  # ends dark: nothing for the fade detector to cut
    info = probe(path)
    ours = np.concatenate([b.rgb for b in scan(info)])
    theirs = _pyscenedetect_pixels(path, (256, 144))
    assert ours.shape == theirs.shape == (info.frame_count, 144, 256, 3)
    assert np.array_equal(ours, theirs)
    scorer = Scorer()
    scorer.add(np.arange(len(theirs)), info.times, theirs)
    assert detect(scorer.scores, "adaptive", fades=False) == [first_black]


def test_fade_through_black(vids):
    path, first_black, back = vids["fade"]
    # the fade detector cuts midway through the black frames
    assert find_scenes(path, "threshold").cuts == [first_black + round((back - first_black) / 2)]
    # content detectors alone see no single hard cut in a gradual fade ...
    r = find_scenes(path, "adaptive", fades=False)
    # ... and together with the fade detector there is exactly one cut per transition, inside it
    both = find_scenes(path, "adaptive").cuts
    assert len(both) == 1 and first_black - 4 <= both[0] <= back + 4
    assert len(r.cuts) <= 1


def test_variable_frame_rate_cut_time(vids):
    path, cut, ms = vids["vfr"]
    r = find_scenes(path)
    assert r.cuts == [cut]
    assert r.scenes[1].start_time == pytest.approx(ms[cut] / 1000)


def test_start_end_window(vids):
    path, _ = vids["cuts"]
    r = find_scenes(path, start=0.3, end=2.0)
    assert r.cuts == [30]
    assert r.scenes[0].start_frame == 9 and r.scenes[-1].end_frame == 60
    # the minimum length counts from --start: a cut 0.5 s after it is too soon
    assert find_scenes(path, start=0.5, end=2.0).cuts == []
    assert r.scenes[-1].end_time == pytest.approx(2.0)
    with pytest.raises(KvlError, match="after the end"):
        find_scenes(path, start=10.0)
    with pytest.raises(KvlError, match="not after"):
        find_scenes(path, start=1.0, end=0.5)


def test_min_scene_len_frames_or_seconds(vids):
    path, _ = vids["cuts"]
    assert find_scenes(path, min_scene_len="41f").cuts == [70]  # 30 is closer than 41 frames to frame 0
    assert find_scenes(path, min_scene_len="1.5s").cuts == [70]
    with pytest.raises(KvlError, match="min-scene-len"):
        find_scenes(path, min_scene_len="soon")


def test_interrupted_scan_keeps_the_scanned_part(vids, monkeypatch):
    path, _ = vids["cuts"]
    seen = []

    def on_frames(n):
        seen.append(n)
        if sum(seen) >= 64:
            raise KeyboardInterrupt

    r = find_scenes(path, on_frames=on_frames)
    assert r.partial and r.cuts == [30]
    assert r.scenes[-1].end_frame == r.frames_scanned == 64


def _golden(realvideo, name, det):
    return json.loads((realvideo / "goldens" / f"{name}.{det}.default.json").read_text())["cuts"]


@pytest.fixture(scope="module")
def real_scores(realvideo):
    """One scan per real file, shared by every detector (the scan is the expensive part)."""
    cache = {}

    def get(name):
        if name not in cache:
            info = probe(realvideo / name)
            scorer = Scorer()
            for b in scan(info):
                scorer.add(b.index, b.time, b.rgb)
            cache[name] = (info, scorer.scores)
        return cache[name]

    return get


def _timeline_cuts(real_scores, name, detector) -> list[int]:
    """Cut frames on the nominal-rate timeline PySceneDetect numbers frames on (equal to indices on CFR)."""
    info, s = real_scores(name)
    return [round(float(s.times[p]) * info.fps) for p in detect(s, detector, fades=False)]


@pytest.mark.parametrize("name", ["testvideo.mp4", "fades.mp4", "goldeneye-vfr-drop3.mp4"])
@pytest.mark.parametrize("detector,golden", [("content", "ContentDetector"), ("threshold", "ThresholdDetector"),
                                             ("adaptive", "AdaptiveDetector")])
def test_pyscenedetect_goldens(real_scores, realvideo, name, detector, golden):
    # every list exactly, including testvideo's adaptive cut 691 inside a fade-out, which PySceneDetect's own
    # ratio passes by 3.13 against 3.0 on the hue of near-black pixels: found because the scan sees its pixels
    got, want = _timeline_cuts(real_scores, name, detector), _golden(realvideo, name, golden)
    assert got == want


def test_scan_sees_pyscenedetects_pixels_on_testvideo(real_scores):
    """At 1280x720 -> 256x144 (factor 5) the scan's pixels are the full RGB frame's pixels (2 + 5k, 2 + 5j),
    which is what OpenCV's INTER_LINEAR resize reads. Checked on the frames around the fade-out's cut."""
    info, _ = real_scores("testvideo.mp4")
    got = np.concatenate([b.rgb for b in scan(info, start=float(info.times[684]), end=float(info.times[696]))])
    assert np.array_equal(got, _pyscenedetect_pixels(info.path, (256, 144), 684, 696))


def test_goldeneye_cut_times(realvideo):
    r = find_scenes(realvideo / "goldeneye-vfr-drop3.mp4")
    assert r.cuts == [60, 140]  # decoded frames
    assert np.allclose(r.cut_times, [3.754, 8.759], atol=5e-4)  # PySceneDetect's test_vfr.py scene boundaries


def test_scan_mixes_sampled_and_whole_frames_in_one_batch(vids, monkeypatch):
    """A frame the sampler cannot take (another pixel format, say) is converted whole and resized as
    PySceneDetect does; the frames around it in the same batch must still land in their own slots."""
    from kvl_tasks.video import scan as scan_module

    path, _ = vids["fade_end"]
    info = probe(path)
    exact = np.concatenate([b.rgb for b in scan(info)])
    seen = []
    accepts = scan_module._Sampler.accepts

    def every_third_refused(self, frame):
        seen.append(frame.pts)
        return len(seen) % 3 != 0 and accepts(self, frame)

    monkeypatch.setattr(scan_module._Sampler, "accepts", every_third_refused)
    mixed = np.concatenate([b.rgb for b in scan(info, batch=7)])
    refused = np.arange(len(mixed)) % 3 == 2
    assert np.array_equal(mixed[~refused], exact[~refused])
    assert np.array_equal(mixed[refused], exact[refused])  # an odd factor (3): both ways are exact


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080), (800, 340)])
def test_scan_pixels_match_opencvs_bilinear_downscale(tmp_path, size):
    """At factors that are not odd whole numbers (2.5, 7.5, 3.125) the scan blends 2x2 source pixels as
    OpenCV's INTER_LINEAR does: within a level or two of PySceneDetect's pixels, never a point sample."""
    from .synth import texture, write_video

    w, h = size
    img = texture(3, (w + 40, h))
    path = write_video(tmp_path / "t.mp4", [np.ascontiguousarray(img[:, 4 * t:4 * t + w]) for t in range(6)])
    info = probe(path)
    ours = np.concatenate([b.rgb for b in scan(info)]).astype(int)
    theirs = _pyscenedetect_pixels(path, (256, round(h * 256 / w)))
    assert ours.shape == theirs.shape
    d = np.abs(ours - theirs)
    assert d.max() <= 2 and d.mean() < 0.15  # remap rounds ~10% of values the other way (1/32 px at 3.125)


def test_late_cut_after_a_long_pan_as_pyscenedetect(tmp_path):
    """Issue #19: a cut after a long pan, whose adaptive ratio is just above 3 in PySceneDetect (it cuts). With
    point-sampled detection pixels the pan scored ~10% higher and the cut was lost."""
    from .synth import pan_then_cut

    path, cut = pan_then_cut(tmp_path / "pan.mp4")
    assert find_scenes(path, "adaptive", fades=False).cuts == [cut]
    info = probe(path)
    scorer = Scorer(structure=False)
    scorer.add(np.arange(info.frame_count), info.times, _pyscenedetect_pixels(path, (256, 144)))
    ref = scorer.scores.content.astype(float)
    ours = Scorer(structure=False)
    for b in scan(info):
        ours.add(b.index, b.time, b.rgb)
    c = ours.scores.content.astype(float)
    assert np.abs(c - ref).max() < 0.1  # the scores PySceneDetect computes
    ratio = c[cut] / np.r_[c[cut - 2:cut], c[cut + 1:cut + 3]].mean()
    assert 3.0 < ratio < 3.3  # the cut is borderline: the test can tell the two samplings apart
