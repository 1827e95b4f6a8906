"""`kvl video scenes` as a user runs it: outputs, bad input (one line, non-zero exit), Ctrl-C, the verb's registration."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from .synth import shot_frame, write_video


@pytest.fixture(scope="module")
def bad(tmp_path_factory, vids) -> dict[str, Path]:
    import av

    d = tmp_path_factory.mktemp("bad")
    files = {"not a video": d / "notes.mp4", "zero-length": d / "empty.mp4"}
    files["not a video"].write_text("hello, I am not a video\n")
    files["zero-length"].write_bytes(b"")
    files["audio-only"] = d / "speech.m4a"
    with av.open(str(files["audio-only"]), "w") as out:
        s = out.add_stream("aac", rate=16000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.float32), format="fltp", layout="mono")
        f.sample_rate = 16000
        out.mux(s.encode(f))
        out.mux(s.encode(None))
    whole = vids["cuts"][0].read_bytes()
    files["truncated"] = d / "half.mp4"  # the index (moov) is at the end: gone
    files["truncated"].write_bytes(whole[: len(whole) // 2])
    faststart = d / "faststart.mp4"
    frames = [shot_frame(0, t) for t in range(30)]
    with av.open(str(faststart), "w", options={"movflags": "faststart"}) as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = 320, 180, "yuv420p", {"preset": "ultrafast"}
        for a in frames:
            out.mux(s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
        out.mux(s.encode(None))
    files["truncated after its index"] = d / "partial-download.mp4"
    data = faststart.read_bytes()
    files["truncated after its index"].write_bytes(data[: int(len(data) * 0.6)])
    mkv = write_video(d / "ok.mkv", frames[:10])
    files["unknown codec"] = d / "unknown.mkv"  # the Matroska codec id rewritten to one FFmpeg has never heard of
    files["unknown codec"].write_bytes(mkv.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_KVL/NOSUCHCDC"))
    files["absurd resolution"] = d / "huge.mkv"
    with av.open(str(files["absurd resolution"]), "w") as out:
        s = out.add_stream("mjpeg", rate=1)
        s.width, s.height, s.pix_fmt = 16400, 16, "yuvj420p"
        f = av.VideoFrame.from_ndarray(np.zeros((16, 16400, 3), np.uint8), format="rgb24").reformat(format="yuvj420p")
        out.mux(s.encode(f))
        out.mux(s.encode(None))
    files["missing"] = d / "nope.mp4"
    return files


@pytest.mark.parametrize("case,message", [
    ("not a video", "cannot be read as a video"),
    ("zero-length", "empty file"),
    ("audio-only", "no video stream (audio only)"),
    ("truncated", "damaged or truncated"),
    ("truncated after its index", "truncated or damaged: frames stop at"),
    ("unknown codec", "unknown video codec"),
    ("absurd resolution", "absurd resolution 16400x16"),
    ("missing", "no such file"),
])
def test_bad_input_is_one_line_and_fails(bad, video_cli, case, message):
    code, out, err = video_cli(bad[case], "--no-describe", "-q")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert str(bad[case]) in lines[0]


def test_start_after_the_end(vids, video_cli):
    code, _, err = video_cli(vids["cuts"][0], "--no-describe", "--start", "00:01:00")
    assert code == 1 and "after the end of the video (00:00:03.167)" in err
    code, _, err = video_cli(vids["cuts"][0], "--no-describe", "--start", "soon")
    assert code == 1 and "--start" in err


def test_formats_on_stdout_and_in_files(vids, video_cli, tmp_path):
    path = vids["cuts"][0]
    code, out, err = video_cli(path, "--no-describe", "-f", "csv", "-q")
    assert code == 0 and err == ""
    assert list(csv.reader(io.StringIO(out)))[0] == ["Timecode List:", "00:00:01.000", "00:00:02.333"]
    code, out, err = video_cli(path, "--no-describe")
    assert code == 0 and "3 scenes in 95 frames" in err and "00:00:02.333" in out  # table + summary line
    target = tmp_path / "s.json"
    code, out, _ = video_cli(path, "--no-describe", "-o", target, "-q", "--detector", "content")
    assert code == 0 and out == ""
    data = json.loads(target.read_text())
    assert data["cuts"] == [30, 70] and data["detector"] == "content" and not data["partial"]


def test_images_and_split_from_the_cli(vids, video_cli, tmp_path):
    code, _, err = video_cli(vids["keyed"][0], "--no-describe", "-q", "-f", "json", "--images", tmp_path / "img",
                             "-n", "1", "--split", tmp_path / "clips")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["keyed-Scene-001-01.jpg", "keyed-Scene-002-01.jpg"]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["keyed-Scene-001.mp4", "keyed-Scene-002.mp4"]


def test_ctrl_c_writes_a_consistent_partial_list(vids, video_cli, tmp_path, monkeypatch):
    from kvl_tasks.video import scan as scan_module

    real_scan = scan_module.scan

    def interrupted(*args, **kwargs):
        done = 0
        for batch in real_scan(*args, batch=16, **kwargs):
            if done == 64:  # Ctrl-C after 64 frames
                raise KeyboardInterrupt
            done += len(batch.index)
            yield batch

    monkeypatch.setattr("kvl_tasks.video.scenes.scan", interrupted)
    target = tmp_path / "partial.json"
    code, _, err = video_cli(vids["cuts"][0], "--no-describe", "-q", "-o", target)
    assert code == 130 and "interrupted" in err
    data = json.loads(target.read_text())
    assert data["partial"] and data["frames_scanned"] == 64 and data["cuts"] == [30]
    assert data["scenes"][-1]["end_frame"] == 64


def test_describe_needs_a_model(vids, video_cli, monkeypatch, tmp_path):
    from kvl_core import hub

    monkeypatch.setattr(hub, "ASSETS", tmp_path)  # an install without the built-in kvl-nano weights
    code, _, err = video_cli(vids["cuts"][0], "--describe", "-q")
    assert code == 1 and "no model configured" in err
    code, _, err = video_cli(vids["cuts"][0], "--mode", "model", "--no-describe", "-q")
    assert code == 1 and "--mode model" in err


def test_installed_console_script(vids):
    """The real `kvl` executable: the verb is registered, and a failure is one line on stderr."""
    from cli.helpers import run_kvl  # tests/ is on sys.path (rootdir conftest)

    proc = run_kvl("video", "scenes", str(vids["cuts"][0].with_name("nothing-here.mp4")), "--no-describe")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {vids['cuts'][0].with_name('nothing-here.mp4')}: no such file"]


def test_a_scan_imports_only_what_it_uses(vids, tmp_path):
    """A real `kvl video scenes FILE --no-describe -q` (a fresh process, through main()) imports no other task,
    no static verb, no torch and no Pillow: start-up is part of the whole command's time (#19)."""
    import subprocess
    import sys

    from cli.helpers import kvl_env

    out = tmp_path / "s.csv"
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: sys.__stderr__.write('MODULES' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            f"sys.argv = ['kvl', 'video', 'scenes', {str(vids['cuts'][0])!r}, '--no-describe', '-q', '-o', "
            f"{str(out)!r}]\n"
            "from kvl_cli.main import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kvl_env(KVL_DISABLE_PLUGINS="1",
                          KVL_CONFIG="/nonexistent/kvl-config.toml"), capture_output=True, text=True, timeout=240)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES"))
    mods = set(json.loads(line[len("MODULES"):]))
    assert out.exists() and "kvl_tasks.video.scan" in mods  # it did scan
    others = {m for m in mods if m.startswith(("kvl_tasks.", "kvl_cli.commands"))} - {
        m for m in mods if m.startswith("kvl_tasks.video")}
    assert others == set()
    assert not mods & {"torch", "PIL", "PIL.Image", "transformers", "kvl_core.model"}
