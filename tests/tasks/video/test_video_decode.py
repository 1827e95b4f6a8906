"""Frames and their times: probing, the detection scan, seeking, keyframe grabs, decord vs PyAV, VFR, counter.mp4."""

import numpy as np
import pytest

from kvl_tasks.video.decode import detect_size, grab, probe
from kvl_tasks.video.scan import scan


def _decode_all(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_probe_cfr(vids):
    path, cuts = vids["cuts"]
    info = probe(path)
    assert info.frame_count == 95 and info.codec == "h264" and not info.vfr
    assert np.allclose(info.times, np.arange(95) / 30)
    assert info.end_time == pytest.approx(95 / 30)
    assert detect_size(info) == (256, 144)  # 320x180 scanned at PySceneDetect's 256 px width


def test_probe_and_scan_vfr_keep_the_real_times(vids):
    path, _, ms = vids["vfr"]
    info = probe(path)
    assert info.vfr
    assert np.allclose(info.times, np.array(ms) / 1000, atol=1e-6)  # never index / fps
    batches = list(scan(info, batch=7))
    idx = np.concatenate([b.index for b in batches])
    t = np.concatenate([b.time for b in batches])
    assert idx.tolist() == list(range(60))
    assert np.allclose(t, np.array(ms) / 1000, atol=1e-6)


def test_scan_from_the_middle_numbers_frames_from_the_file_start(vids):
    path, _ = vids["cuts"]
    info = probe(path)
    full = np.concatenate([b.rgb for b in scan(info, fast=False)])
    part = list(scan(info, start=1.0, end=2.0, fast=False))
    idx = np.concatenate([b.index for b in part])
    assert idx.tolist() == list(range(30, 60))
    assert np.array_equal(np.concatenate([b.rgb for b in part]), full[30:60])


def test_decord_and_pyav_scans_agree(vids):
    pytest.importorskip("decord")
    path, _, ms = vids["vfr"]
    info = probe(path)
    a = np.concatenate([b.index for b in scan(info, backend="pyav")])
    b = list(scan(info, backend="decord"))
    assert np.concatenate([x.index for x in b]).tolist() == a.tolist()
    assert np.allclose(np.concatenate([x.time for x in b]), np.array(ms) / 1000)


@pytest.mark.parametrize("backend", ["auto", "pyav"])
def test_grab_returns_the_frame_on_screen(vids, backend):
    path, _, ms = vids["vfr"]
    info = probe(path)
    frames = _decode_all(path)
    # just after a frame starts, and just before the next one: both are that frame
    wanted = [5, 17, 33, 59]
    times = [ms[i] / 1000 + 0.001 for i in wanted] + [ms[i + 1] / 1000 - 0.001 for i in wanted[:-1]]
    got = grab(info, times, backend=backend)
    assert [g.index for g in got] == wanted
    for g in got:
        assert g.time == pytest.approx(ms[g.index] / 1000)
        assert np.array_equal(np.asarray(g.image), frames[g.index])


def test_counter_video_every_timestamp_is_right(realvideo):
    """counter.mp4: 30 frames at 10 fps, frame N (from 1) shows "Frame = N" and PTS (N-1)/10 s."""
    path = realvideo / "counter.mp4"
    info = probe(path)
    assert info.frame_count == 30
    assert np.allclose(info.times, np.arange(30) / 10)
    assert info.end_time == pytest.approx(3.0)
    frames = _decode_all(path)
    # no frame lost or doubled: the number in the bottom-right corner changes on every frame
    crops = [f[850:, 1300:].astype(int) for f in frames]
    assert all(np.abs(a - b).mean() > 0.5 for a, b in zip(crops, crops[1:]))
    # the frame on screen at any time: mid-frame, right after its start, right before its end
    times = [k / 10 + d for k in range(30) for d in (0.0005, 0.05, 0.0995)]
    for backend in ("auto", "pyav"):
        got = grab(info, times, backend=backend)
        assert [g.index for g in got] == list(range(30))
        assert all(np.array_equal(np.asarray(g.image), frames[g.index]) for g in got)
    # the detection scan sees the same 30 frames at the same times
    batches = list(scan(info))
    assert np.concatenate([b.index for b in batches]).tolist() == list(range(30))
    assert np.allclose(np.concatenate([b.time for b in batches]), np.arange(30) / 10)


def test_goldeneye_vfr_times(realvideo):
    info = probe(realvideo / "goldeneye-vfr-drop3.mp4")
    assert info.vfr and info.frame_count == 160
    # PySceneDetect's test_vfr.py: the scenes change at 3.754 s and 8.759 s (decoded frames 60 and 140)
    assert info.times[60] == pytest.approx(3.754, abs=5e-4)
    assert info.times[140] == pytest.approx(8.759, abs=5e-4)
    assert info.times[60] * 30 != 60  # i.e. index / fps would be wrong here
