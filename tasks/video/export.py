"""Scene lists as files: JSON, PySceneDetect-compatible CSV, markdown, CMX 3600 EDL, keyframe images (tasks.md §2.1).

* JSON: the video, the settings, the cut frames and, per scene, start/end frame and time, duration, description
  and keyframe times (PySceneDetect has no JSON output).
* CSV: the columns of PySceneDetect's `list-scenes` in its order (first row `Timecode List:` and the cuts), so
  scripts written for it keep working, plus one last column, `Start Kind` (cut, dissolve, fade; empty for the
  first scene). Frame numbers there are 1-based and the end frame is inclusive.
* EDL: CMX 3600, one cut event per scene on reel AX, non-drop-frame timecodes at the nominal rate.
* Images: `<video>-Scene-<NNN>-<KK>.jpg` (PySceneDetect's naming), JPEG quality 95.
Every file is written to a temporary name and renamed, so Ctrl-C never leaves half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from kvl_core.errors import KvlError

from .decode import iter_grab
from .scenes import SceneList, keyframe_times
from .timecode import smpte, timecode

FORMATS = ("table", "json", "csv", "markdown", "edl")
EXTENSIONS = {".json": "json", ".csv": "csv", ".md": "markdown", ".markdown": "markdown", ".edl": "edl",
              ".txt": "table"}


def write_atomic(path: Path, data: str | bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise KvlError(f"{path}: cannot write ({e.strerror or e})") from None


def to_json(result: SceneList) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n"


def to_csv(result: SceneList) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Timecode List:", *(timecode(s.start_time) for s in result.scenes[1:])])
    # PySceneDetect's columns first and unchanged (scripts index them by position), kvl's one column last
    w.writerow(["Scene Number", "Start Frame", "Start Timecode", "Start Time (seconds)", "End Frame",
                "End Timecode", "End Time (seconds)", "Length (frames)", "Length (timecode)", "Length (seconds)",
                "Start Kind"])
    for s in result.scenes:
        w.writerow([s.number, s.start_frame + 1, timecode(s.start_time), f"{s.start_time:.3f}", s.end_frame,
                    timecode(s.end_time), f"{s.end_time:.3f}", s.frames, timecode(s.duration), f"{s.duration:.3f}",
                    s.kind or ""])
    return buf.getvalue()


def _md_cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def to_markdown(result: SceneList) -> str:
    v = result.video
    lines = [f"# Scenes of {v.path.name}", "",
             f"{len(result.scenes)} scene{'s' * (len(result.scenes) != 1)}, {timecode(v.end_time)}, "
             f"{v.width}x{v.height}, {v.fps:.3f} fps"
             f"{' (variable frame rate)' if v.vfr else ''}; detector `{result.detector}`"
             f"{', boundaries from the model' if result.mode == 'model' else ''}"
             f"{' — **partial: interrupted**' if result.partial else ''}.", "",
             "| # | Start | End | Duration | Frames | Starts with | Description |", "|---:|---|---|---:|---|---|---|"]
    for s in result.scenes:
        lines.append(f"| {s.number} | {timecode(s.start_time)} | {timecode(s.end_time)} | {s.duration:.3f} s | "
                     f"{s.start_frame}–{s.end_frame - 1} | {s.kind or ''} | {_md_cell(s.description)} |")
    return "\n".join(lines) + "\n"


def to_edl(result: SceneList) -> str:
    v = result.video
    rate = v.fps

    def frame_of(scene_frame: int, t: float) -> int:
        # CFR: frame numbers are the timecode count; VFR: place the time on the nominal-rate timeline
        return round(t * rate) if v.vfr else scene_frame

    lines = [f"TITLE: {v.path.stem}", "FCM: NON-DROP FRAME", ""]
    for s in result.scenes:
        a, b = frame_of(s.start_frame, s.start_time), frame_of(s.end_frame, s.end_time)
        tc = f"{smpte(a, rate)} {smpte(b, rate)}"
        lines.append(f"{s.number:03d}  AX       V     C        {tc} {tc}")
        lines.append(f"* FROM CLIP NAME: {v.path.name}")
        if s.kind:  # events stay plain cuts of the source (each scene is one record); the transition is noted
            lines.append(f"* TRANSITION IN: {s.kind.upper()}")
        if s.description:
            lines.append(f"* COMMENT: {' '.join(s.description.split())[:200]}")
        lines.append("")
    return "\n".join(lines)


def render(result: SceneList, fmt: str) -> str:
    if fmt == "json":
        return to_json(result)
    if fmt == "csv":
        return to_csv(result)
    if fmt == "markdown":
        return to_markdown(result)
    if fmt == "edl":
        return to_edl(result)
    if fmt == "table":
        return table_text(result)
    raise KvlError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")


def format_for(out: Path | None, fmt: str | None) -> str:
    """The format to write: --format if given, else from --out's extension, else the terminal table."""
    if fmt:
        if fmt not in FORMATS:
            raise KvlError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    if out is None:
        return "table"
    found = EXTENSIONS.get(out.suffix.lower())
    if found is None:
        raise KvlError(f"{out}: cannot tell the format from the extension; pass --format "
                       f"({', '.join(FORMATS)})")
    return found


def table(result: SceneList):
    from rich.table import Table

    v = result.video
    n = len(result.scenes)
    title = (f"{v.path.name}: {n} scene{'s' * (n != 1)}, {timecode(v.end_time)}"
             f"{' (partial)' if result.partial else ''}")
    t = Table(title=title, title_justify="left", expand=False)
    described = any(s.description for s in result.scenes)
    for name, kw in (("#", {"justify": "right"}), ("Start", {}), ("End", {}), ("Duration", {"justify": "right"}),
                     ("Frames", {"justify": "right"}), ("In", {}),
                     ("Description", {"overflow": "fold"}))[:7 if described else 6]:
        t.add_column(name, **kw)
    for s in result.scenes:
        row = [str(s.number), timecode(s.start_time), timecode(s.end_time), f"{s.duration:.3f}s",
               f"{s.start_frame}–{s.end_frame - 1}", s.kind or ""]
        t.add_row(*row, *([s.description or ""] if described else []))
    return t


def table_text(result: SceneList, width: int = 120) -> str:
    from rich.console import Console

    console = Console(file=io.StringIO(), width=width, no_color=True, highlight=False)
    console.print(table(result))
    return console.file.getvalue()


def save_images(result: SceneList, folder: Path, per_scene: int = 3, max_side: int | None = None,
                on_scene=None) -> list[Path]:
    """Keyframes of every scene as JPEGs; returns the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info, written = result.video, []
    # every scene's keyframes in one decoding pass, in time order, written as they come
    owner = {}  # frame index -> (scene, image number)
    for s in result.scenes:
        for k, t in enumerate(keyframe_times(info, s.start_time, s.end_time, per_scene), start=1):
            owner[info.index_at(t)] = (s, k)
    last_scene = None
    for g in iter_grab(info, [float(info.times[i]) for i in owner], max_side=max_side):
        s, k = owner[g.index]
        if last_scene is not None and s is not last_scene and on_scene is not None:
            on_scene(last_scene)
        last_scene = s
        path = folder / f"{info.path.stem}-Scene-{s.number:03d}-{k:02d}.jpg"
        buf = io.BytesIO()
        g.image.save(buf, "JPEG", quality=95)
        write_atomic(path, buf.getvalue())
        written.append(path)
    if last_scene is not None and on_scene is not None:
        on_scene(last_scene)
    return written
