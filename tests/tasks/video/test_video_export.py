"""Scene-list files (CSV as PySceneDetect writes it, EDL, markdown, JSON), keyframe images and --split."""

import csv
import io
import json

import numpy as np
import pytest

from kvl_core.errors import KvlError
from kvl_tasks.video import export
from kvl_tasks.video.decode import probe
from kvl_tasks.video.scenes import find_scenes
from kvl_tasks.video.split import split_video

PYSCENEDETECT_HEADER = ["Scene Number", "Start Frame", "Start Timecode", "Start Time (seconds)", "End Frame",
                        "End Timecode", "End Time (seconds)", "Length (frames)", "Length (timecode)",
                        "Length (seconds)"]


@pytest.fixture(scope="module")
def result(vids):
    r = find_scenes(vids["cuts"][0])
    r.scenes[1].description = 'green, with "quotes" | and a pipe'
    return r


def test_csv_has_pyscenedetects_list_scenes_layout(result):
    rows = list(csv.reader(io.StringIO(export.to_csv(result))))
    assert rows[0] == ["Timecode List:", "00:00:01.000", "00:00:02.333"]
    # PySceneDetect's columns in its order (scripts index them), then kvl's one column: the boundary's kind
    assert rows[1] == PYSCENEDETECT_HEADER + ["Start Kind"]
    # 1-based frames, inclusive end frame, exclusive end time: as PySceneDetect prints testvideo.mp4
    assert rows[2] == ["1", "1", "00:00:00.000", "0.000", "30", "00:00:01.000", "1.000", "30", "00:00:01.000", "1.000",
                       ""]
    assert [r[-1] for r in rows[3:]] == ["cut", "cut"]
    assert rows[3][:2] == ["2", "31"] and rows[3][4] == "70" and rows[3][7] == "40"
    assert rows[4][4] == "95" and rows[4][6] == "3.167"


def test_edl_is_cmx3600(result):
    lines = export.to_edl(result).splitlines()
    assert lines[:2] == [f"TITLE: {result.video.path.stem}", "FCM: NON-DROP FRAME"]
    events = [x for x in lines if x[:3].isdigit()]
    assert events[0].split() == ["001", "AX", "V", "C", "00:00:00:00", "00:00:01:00", "00:00:00:00", "00:00:01:00"]
    assert events[1].split()[4:6] == ["00:00:01:00", "00:00:02:10"]  # frame 70 at 30 fps
    assert '* COMMENT: green, with "quotes" | and a pipe' in lines


def test_markdown_and_json(result):
    md = export.to_markdown(result)
    assert "| 2 | 00:00:01.000 | 00:00:02.333 | 1.333 s | 30–69 | cut | green, with \"quotes\" \\| and a pipe |" in md
    data = json.loads(export.to_json(result))
    assert data["cuts"] == [30, 70] and data["video"]["frames"] == 95
    assert data["boundaries"] == [{"frame": 30, "time": 1.0, "timecode": "00:00:01.000", "kind": "cut"},
                                  {"frame": 70, "time": round(70 / 30, 6), "timecode": "00:00:02.333", "kind": "cut"}]
    s = data["scenes"][1]
    assert (s["start_frame"], s["end_frame"], s["start_timecode"], s["frames"]) == (30, 70, "00:00:01.000", 40)
    assert s["duration"] == pytest.approx(4 / 3, abs=1e-6) and len(s["keyframes"]) == 3


def test_format_from_extension(tmp_path):
    from kvl_core.errors import KvlError

    assert export.format_for(tmp_path / "a.CSV", None) == "csv"
    assert export.format_for(None, None) == "table"
    assert export.format_for(tmp_path / "a.csv", "json") == "json"
    with pytest.raises(KvlError, match="extension"):
        export.format_for(tmp_path / "a.xyz", None)


def test_images_are_the_scenes_keyframes(result, tmp_path):
    paths = export.save_images(result, tmp_path, per_scene=2)
    stem = result.video.path.stem
    assert [p.name for p in paths][:2] == [f"{stem}-Scene-001-01.jpg", f"{stem}-Scene-001-02.jpg"]
    assert len(paths) == 6 and not list(tmp_path.glob(".*partial*"))


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24").astype(int) for f in c.decode(video=0)]


@pytest.mark.parametrize("mode", ["auto", "encode"])
def test_split_gives_exactly_each_scenes_frames(vids, tmp_path, mode):
    path, cuts = vids["cuts"]  # long GOP: the cuts are not on keyframes, so `auto` re-encodes
    r = find_scenes(path)
    files = split_video(r, tmp_path, mode)
    source = _frames(path)
    assert [f.name for f in files] == [f"cuts-Scene-00{i}.mp4" for i in (1, 2, 3)]
    for scene, f in zip(r.scenes, files):
        got = _frames(f)
        assert len(got) == scene.frames
        # first and last frame of each piece are the scene's (lossy re-encode: close, not equal)
        assert np.abs(got[0] - source[scene.start_frame]).mean() < 6
        assert np.abs(got[-1] - source[scene.end_frame - 1]).mean() < 6
        assert probe(f).times[0] == 0.0


def test_split_copies_streams_when_cuts_are_on_keyframes(vids, tmp_path):
    path, cuts = vids["keyed"]  # GOP 12, cut at 24 (a keyframe), with an audio track
    r = find_scenes(path)
    assert r.cuts == cuts == [24]
    files = split_video(r, tmp_path, "auto")
    source = _frames(path)
    for scene, f in zip(r.scenes, files):
        got = _frames(f)
        assert len(got) == scene.frames
        assert all(np.array_equal(a, b) for a, b in zip(got, source[scene.start_frame:scene.end_frame]))  # lossless
        info = probe(f)
        assert info.has_audio and info.times[0] == 0.0


def test_images_are_saved_upright(tmp_path):
    from PIL import Image

    from .test_video_decode import _red_corner, _rotated_video

    r = find_scenes(_rotated_video(tmp_path / "portrait.mp4", 90), "content")
    paths = export.save_images(r, tmp_path / "stills", per_scene=1)
    with Image.open(paths[0]) as img:
        assert img.size == (180, 320) and _red_corner(img) == "bottom-left"


def _no_pyav_copy(monkeypatch):
    import kvl_tasks.video.split as split

    def refuse(*a):
        raise AssertionError("the PyAV remuxer was used")

    monkeypatch.setattr(split, "_copy", refuse)


def test_split_copies_with_ffmpeg_when_present(vids, tmp_path, monkeypatch):
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    monkeypatch.delenv("KVL_FFMPEG", raising=False)
    _no_pyav_copy(monkeypatch)  # ffmpeg must do every copy itself
    path, cuts = vids["keyed"]
    r = find_scenes(path)
    files = split_video(r, tmp_path, "auto")
    source = _frames(path)
    for scene, f in zip(r.scenes, files):
        got = _frames(f)
        assert len(got) == scene.frames
        assert all(np.array_equal(a, b) for a, b in zip(got, source[scene.start_frame:scene.end_frame]))
        info = probe(f)
        assert info.has_audio and info.times[0] == 0.0
    assert not list(tmp_path.glob(".*partial*"))


def test_split_without_ffmpeg_remuxes_with_pyav(vids, tmp_path, monkeypatch):
    monkeypatch.setenv("KVL_FFMPEG", "0")
    path, _ = vids["keyed"]
    r = find_scenes(path)
    files = split_video(r, tmp_path, "auto")
    assert [probe(f).frame_count for f in files] == [s.frames for s in r.scenes]
    with pytest.raises(KvlError, match="ffmpeg: not found"):
        split_video(r, tmp_path, "auto", tool="ffmpeg")


def test_split_checks_ffmpegs_piece_and_falls_back(vids, tmp_path, monkeypatch):
    """An ffmpeg that writes a wrong piece (here: one that copies the whole file) is caught by probing the
    piece, which is then remuxed with PyAV."""
    fake = tmp_path / "ffmpeg"
    fake.write_text('#!/bin/sh\nfor last; do :; done\ncp "$KVL_TEST_SOURCE" "$last"\n')
    fake.chmod(0o755)
    path, _ = vids["keyed"]
    monkeypatch.setenv("KVL_FFMPEG", str(fake))
    monkeypatch.setenv("KVL_TEST_SOURCE", str(path))
    r = find_scenes(path)
    files = split_video(r, tmp_path / "out", "auto")
    assert [probe(f).frame_count for f in files] == [s.frames for s in r.scenes] == [24, 24]


@pytest.mark.parametrize("mode", ["copy", "encode"])
def test_split_keeps_the_rotation(tmp_path, monkeypatch, mode):
    from .test_video_decode import _rotated_video

    monkeypatch.setenv("KVL_FFMPEG", "0")
    r = find_scenes(_rotated_video(tmp_path / "portrait.mp4", 90), "content")
    files = split_video(r, tmp_path / "out", mode)
    assert [(probe(f).rotation, probe(f).frame_count) for f in files] == [(90, 6)]
