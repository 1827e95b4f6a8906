"""Fixtures for `kvl video scenes`: generated videos (made once per session) and the CLI run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from .synth import cuts_video, fade_to_black_end, fade_video, shot_frame, vfr_times_ms, write_video

pytest.importorskip("av")


@pytest.fixture(scope="session")
def vids(tmp_path_factory) -> dict:
    """name -> (path, facts). Cuts are the first frames of new shots."""
    d = tmp_path_factory.mktemp("videos")
    out = {}
    out["cuts"] = cuts_video(d / "cuts.mp4", [30, 40, 25], gop=250)  # cuts at 30 and 70, long GOP: P-frame cuts
    out["fade"] = fade_video(d / "fade.mp4")
    ms = vfr_times_ms(60)
    frames = [shot_frame(0 if i < 33 else 1, i) for i in range(60)]
    out["vfr"] = (write_video(d / "vfr.mp4", frames, pts_ms=ms), 33, ms)
    out["keyed"] = cuts_video(d / "keyed.mp4", [24, 24], gop=12, audio=True)  # cut on a keyframe, with audio
    out["fade_end"] = fade_to_black_end(d / "fade_end.mp4")
    return out


@pytest.fixture
def video_cli(monkeypatch, capsys):
    """`video_cli(*argv) -> (code, stdout, stderr)`: `kvl video scenes ...` through the real app, in-process."""
    from kvl_cli.main import app, run

    monkeypatch.delenv("KVL_MODEL", raising=False)
    monkeypatch.setenv("KVL_CONFIG", "/nonexistent/kvl-config.toml")  # no user config: no model configured
    monkeypatch.setenv("COLUMNS", "160")

    def call(*argv):
        capsys.readouterr()
        code = run(app, ["video", "scenes", *[str(a) for a in argv]])
        out, err = capsys.readouterr()
        return code, out, err

    return call


@pytest.fixture(scope="session")
def realvideo(realdata) -> Path:
    d = realdata / "video"
    if not (d / "testvideo.mp4").exists():
        pytest.skip("shared/realdata/video is not present")
    return d
