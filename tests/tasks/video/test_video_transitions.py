"""Beyond PySceneDetect (issue #19), end to end on generated videos: dissolves at their middle, flashes that are not
boundaries, cuts between two pictures of the same colour, and the kind of every boundary in every output format."""

import csv
import io
import json

import numpy as np
import pytest

from kvl_tasks.video.scenes import find_scenes

from .synth import dissolve, fade_through_black, flash, textured_shots, vfr_times_ms, white_page, write_video


@pytest.fixture(scope="module")
def gradual(tmp_path_factory) -> dict:
    """name -> (path, facts). Each video is built from textured pans (motion everywhere, not frozen frames)."""
    d = tmp_path_factory.mktemp("gradual")
    a, b, c = textured_shots(3, 60)
    out = {}
    frames, mid = dissolve(a, b, 16)
    out["dissolve"] = (write_video(d / "dissolve.mp4", frames, fps=25), {"mid": mid, "first": len(a) - 16})
    fl = [f.copy() for f in a]
    flash(fl, 30)
    frames = fl + c
    out["flash"] = (write_video(d / "flash.mp4", frames, fps=25), {"cut": len(a), "flash": 30})
    w1, w2 = white_page(1), white_page(2)
    rng = np.random.default_rng(0)
    pages = [(w1 + rng.normal(0, 2, w1.shape)).clip(0, 255).astype(np.uint8) for _ in range(40)]
    pages += [(w2 + rng.normal(0, 2, w2.shape)).clip(0, 255).astype(np.uint8) for _ in range(40)]
    out["white"] = (write_video(d / "white.mp4", pages, fps=25), {"cut": 40})
    # a dissolve that the end of the file cuts off: 12 of its 20 mixed frames were recorded
    frames, _ = dissolve(a, b, 20)
    cut_short = frames[:len(a) - 20 + 12]
    out["dissolve_cut_off"] = (write_video(d / "cut_off.mp4", cut_short, fps=25), {"first": len(a) - 20})
    # variable frame rate, with a dissolve and a fade through black
    frames, dmid = dissolve(a, b, 16)
    frames, fmid = fade_through_black(frames, c, 6, 2)
    ms = vfr_times_ms(len(frames))
    out["vfr"] = (write_video(d / "vfr.mp4", frames, pts_ms=ms), {"dissolve": dmid, "fade": fmid, "ms": ms})
    out["one_frame"] = (write_video(d / "one.mp4", a[:1], fps=25), {})
    # a fade that dims to a seventh and brings up the next picture without a black frame (never dark)
    frames, mid = fade_through_black(a, c, 6, 0)
    out["dip"] = (write_video(d / "dip.mp4", frames, fps=25), {"mid": mid, "first": len(a) - 6, "last": len(a) + 5})
    # the light dimmed and raised over one picture: no new scene
    gain = np.r_[np.ones(24), np.linspace(1, 1 / 7, 7), np.linspace(1 / 7, 1, 7)[1:], np.ones(len(a) - 37)]
    frames = [(f * g).round().astype(np.uint8) for f, g in zip(a, gain)]
    out["dim_same"] = (write_video(d / "dim_same.mp4", frames, fps=25), {})
    # a white page dissolving into a dark (but textured) picture: the last mixed frames jump in hue
    dark = [(f * 0.2).round().astype(np.uint8) for f in c]
    page = [(w1 + rng.normal(0, 2, w1.shape)).clip(0, 255).astype(np.uint8) for _ in range(70)]
    frames, mid = dissolve(page, dark, 16)
    out["into_dark"] = (write_video(d / "into_dark.mp4", frames, fps=25), {"mid": mid})
    return out


def test_dissolve_is_one_boundary_at_its_middle(gradual):
    path, facts = gradual["dissolve"]
    r = find_scenes(path)
    assert r.cuts == [facts["mid"]]
    assert r.scenes[1].kind == "dissolve" and r.scenes[0].kind is None
    first, last = r.spans[facts["mid"]]
    assert abs(first - facts["first"]) <= 2 and abs(last - (facts["first"] + 15)) <= 2
    # PySceneDetect's detectors alone see no single frame standing out in a cross-fade
    assert find_scenes(path, compat=True).cuts == []


def test_dissolve_into_a_dark_picture_is_not_a_cut_at_its_end(gradual):
    path, facts = gradual["into_dark"]
    r = find_scenes(path)
    assert r.cuts == [facts["mid"]] and r.scenes[1].kind == "dissolve"


def test_fade_that_never_reaches_black(gradual):
    path, facts = gradual["dip"]
    r = find_scenes(path)
    assert r.cuts == [facts["mid"]]
    assert r.scenes[1].kind == "fade"
    first, last = r.spans[facts["mid"]]
    assert abs(first - facts["first"]) <= 1 and abs(last - facts["last"]) <= 1
    # PySceneDetect's threshold detector needs a dark frame: it sees no boundary here
    assert find_scenes(path, "threshold").cuts == []


def test_light_dimmed_over_one_picture_is_not_a_boundary(gradual):
    path, _ = gradual["dim_same"]
    assert find_scenes(path).cuts == []


def test_a_flash_is_not_a_boundary(gradual):
    path, facts = gradual["flash"]
    assert find_scenes(path).cuts == [facts["cut"]]
    assert find_scenes(path, "content").cuts == [facts["cut"]]
    # without the flash filter, the flash's first frame is a cut: the test can tell the two apart
    assert facts["flash"] in find_scenes(path, compat=True).cuts


def test_cut_between_two_white_pictures(gradual):
    path, facts = gradual["white"]
    r = find_scenes(path)
    assert r.cuts == [facts["cut"]] and r.scenes[1].kind == "cut"
    assert find_scenes(path, compat=True).cuts == []  # the HSV score alone cannot see it


def test_dissolve_cut_off_by_the_end_of_the_file(gradual, video_cli):
    """The new picture never arrives in full: no boundary inside the unfinished mix, no false cut, exit 0."""
    path, facts = gradual["dissolve_cut_off"]
    r = find_scenes(path)
    assert all(c < facts["first"] - 10 for c in r.cuts)
    code, out, err = video_cli(path, "--no-describe", "-q", "-f", "json")
    assert code == 0 and err == ""
    assert json.loads(out)["boundaries"] == []


def test_vfr_dissolve_and_fade_have_exact_timestamps(gradual):
    path, facts = gradual["vfr"]
    r = find_scenes(path)
    assert r.cuts == [facts["dissolve"], facts["fade"]]
    assert [s.kind for s in r.scenes[1:]] == ["dissolve", "fade"]
    ms = facts["ms"]
    assert [s.start_time for s in r.scenes[1:]] == pytest.approx([ms[facts["dissolve"]] / 1000,
                                                                  ms[facts["fade"]] / 1000], abs=1e-9)


def test_one_frame_video(gradual, video_cli):
    path, _ = gradual["one_frame"]
    for fmt in ("json", "csv", "markdown", "edl", "table"):
        code, out, err = video_cli(path, "--no-describe", "-q", "-f", fmt)
        assert code == 0 and err == "", (fmt, err)
    code, out, _ = video_cli(path, "--no-describe", "-q", "-f", "json")
    data = json.loads(out)
    assert data["cuts"] == [] and data["boundaries"] == []
    assert [(s["start_frame"], s["end_frame"]) for s in data["scenes"]] == [(0, 1)]
    assert data["scenes"][0]["end_time"] == pytest.approx(1 / 25)


def test_kind_in_every_output_format(gradual, video_cli):
    path, facts = gradual["vfr"]
    want = ["dissolve", "fade"]
    code, out, _ = video_cli(path, "--no-describe", "-q", "-f", "json")
    data = json.loads(out)
    assert code == 0 and [b["kind"] for b in data["boundaries"]] == want
    assert [b["frame"] for b in data["boundaries"]] == [facts["dissolve"], facts["fade"]] == data["cuts"]
    assert [s["kind"] for s in data["scenes"]] == [None] + want
    b = data["boundaries"][0]
    assert b["first_frame"] < b["frame"] < b["last_frame"]

    _, out, _ = video_cli(path, "--no-describe", "-q", "-f", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[1] == ["Scene Number", "Start Frame", "Start Timecode", "Start Time (seconds)", "End Frame",
                       "End Timecode", "End Time (seconds)", "Length (frames)", "Length (timecode)",
                       "Length (seconds)", "Start Kind"]
    assert [r[-1] for r in rows[2:]] == [""] + want
    assert [int(r[1]) - 1 for r in rows[3:]] == [facts["dissolve"], facts["fade"]]  # 1-based there

    _, out, _ = video_cli(path, "--no-describe", "-q", "-f", "markdown")
    body = [line.split("|") for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [cells[6].strip() for cells in body] == [""] + want

    _, out, _ = video_cli(path, "--no-describe", "-q", "-f", "edl")
    assert [line for line in out.splitlines() if line.startswith("* TRANSITION IN")] == [
        "* TRANSITION IN: DISSOLVE", "* TRANSITION IN: FADE"]

    _, out, _ = video_cli(path, "--no-describe", "-q")
    lines = [line for line in out.splitlines() if line.startswith("│")]
    assert [line.split("│")[6].strip() for line in lines] == [""] + want
