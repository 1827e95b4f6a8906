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


def test_threaded_scan_equals_the_scan_in_the_caller(vids, monkeypatch):
    """The decode -> pixels -> caller pipeline hands over exactly what one thread computes, in order."""
    path, _ = vids["cuts"]
    info = probe(path)
    piped = list(scan(info, batch=7))
    monkeypatch.setenv("KVL_DECODE_THREAD", "0")
    alone = list(scan(info, batch=7))
    assert [len(b.index) for b in piped] == [len(b.index) for b in alone]
    for a, b in zip(piped, alone):
        assert np.array_equal(a.index, b.index) and np.array_equal(a.time, b.time) and np.array_equal(a.rgb, b.rgb)


def test_leaving_a_scan_early_stops_its_threads(vids):
    import threading
    import time

    path, _ = vids["cuts"]
    batches = scan(probe(path), batch=4)
    next(batches)
    batches.close()  # what Ctrl-C or an early break does
    deadline = time.monotonic() + 5
    while any(t.name.startswith("kvl-video") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("kvl-video")]


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


def _rotated_video(path, degrees: int):
    """320x180 frames, a red square in the top-left corner of the coded picture, and a display matrix that
    turns them `degrees` counter-clockwise (what phones write for portrait video)."""
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 320, 180, "yuv420p", {"preset": "ultrafast"}
        s.set_display_rotation(degrees)
        for _ in range(6):
            a = np.full((180, 320, 3), 60, np.uint8)
            a[:40, :40] = (255, 0, 0)
            out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(s.encode(None))
    return path


def _red_corner(img) -> str:
    a = np.asarray(img).astype(int)
    corners = {"top-left": a[:30, :30], "top-right": a[:30, -30:], "bottom-left": a[-30:, :30],
               "bottom-right": a[-30:, -30:]}
    return max(corners, key=lambda k: corners[k][..., 0].mean() - corners[k][..., 1].mean())


# a counter-clockwise turn carries the coded top-left corner to ...
@pytest.mark.parametrize("degrees,size,corner", [(90, (180, 320), "bottom-left"), (180, (320, 180), "bottom-right"),
                                                 (270, (180, 320), "top-right"), (0, (320, 180), "top-left")])
def test_rotation_metadata_turns_grabbed_frames_upright(tmp_path, degrees, size, corner):
    info = probe(_rotated_video(tmp_path / f"rot{degrees}.mp4", degrees))
    assert info.rotation == degrees
    assert detect_size(info) == (256, 144)  # PySceneDetect scales the longer side, so turning changes nothing
    for backend in ("auto", "pyav"):
        img = grab(info, [0.05], backend=backend)[0].image
        assert img.size == size and _red_corner(img) == corner


def test_rotation_agrees_with_ffmpeg(tmp_path):
    """ffmpeg turns frames by the display matrix on its own: ours must come out the same way."""
    import shutil
    import subprocess

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    path = _rotated_video(tmp_path / "rot.mp4", 90)
    raw = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt",
                          "rgb24", "-"], capture_output=True, check=True).stdout
    theirs = np.frombuffer(raw, np.uint8).reshape(320, 180, 3).astype(int)
    ours = np.asarray(grab(probe(path), [0.0])[0].image).astype(int)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).mean() < 3
