"""From a video file to a list of scenes with frame numbers and times (tasks.md §1.2, §2.1).

`find_scenes` probes the file, scans every frame in [start, end), scores the frames (detect.py) and turns the
cuts into `Scene`s. Frame numbers count frames in display order from the first frame of the file (0-based here;
the CSV writes them 1-based as PySceneDetect does); times are the frames' presentation times. A scene runs from
its first frame up to, not including, the next scene's first frame. Ctrl-C during the scan does not lose the
work: the scenes of the part already scanned come back marked `partial`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from kvl_core.errors import KvlError

from .decode import DETECT_WIDTH, VideoInfo, detect_size, probe
from .detect import DEFAULTS, MinLength, Scorer, Scores, boundaries
from .scan import scan
from .timecode import parse_length, timecode


@dataclass
class Scene:
    number: int  # 1-based
    start_frame: int  # first frame (0-based, display order)
    end_frame: int  # one past the last frame
    start_time: float  # seconds
    end_time: float
    description: str | None = None
    keyframes: list[float] = field(default_factory=list)  # times of the frames that stand for the scene
    kind: str | None = None  # how the scene begins: cut, dissolve, fade (model: the model's own boundary); None first

    @property
    def duration(self) -> float:
        return self.end_time - self.start_time

    @property
    def frames(self) -> int:
        return self.end_frame - self.start_frame

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("start_time", "end_time"):
            d[key] = round(d[key], 6)
        d.update(start_timecode=timecode(self.start_time), end_timecode=timecode(self.end_time),
                 duration=round(self.duration, 6), frames=self.frames)
        d["keyframes"] = [round(t, 6) for t in self.keyframes]
        return d


@dataclass
class SceneList:
    video: VideoInfo
    scenes: list[Scene]
    detector: str
    settings: dict
    frames_scanned: int = 0
    seconds: float = 0.0  # wall time of the scan and detection
    partial: bool = False  # interrupted: covers only [start, last scanned frame]
    mode: str = "detector"  # or "model" (boundaries from the model's answer, snapped to cuts)
    cut_times: list[float] = field(default_factory=list)  # the detector's cuts, kept for --mode model snapping
    missing: int = 0  # frames the container lists in the range but the decoder never produced
    ended_early: bool = False  # decoding stopped before the range's last frame: a truncated or damaged file
    cut_kinds: list[str] = field(default_factory=list)  # the kind of each of cut_times
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # boundary frame -> gradual transition's frames

    @property
    def cuts(self) -> list[int]:
        return [s.start_frame for s in self.scenes[1:]]

    def to_dict(self) -> dict:
        v = self.video
        return {
            "video": {"path": str(v.path), "width": v.width, "height": v.height, "codec": v.codec,
                      "fps": round(v.fps, 6), "frames": v.frame_count, "duration": round(v.end_time, 6),
                      "variable_frame_rate": v.vfr, "rotation": v.rotation},
            "detector": self.detector, "settings": self.settings, "mode": self.mode, "partial": self.partial,
            "frames_scanned": self.frames_scanned, "frames_missing": self.missing, "seconds": round(self.seconds, 3),
            "cuts": self.cuts, "boundaries": [self._boundary(s) for s in self.scenes[1:]],
            "scenes": [s.to_dict() for s in self.scenes],
        }

    def _boundary(self, s: Scene) -> dict:
        d = {"frame": s.start_frame, "time": round(s.start_time, 6), "timecode": timecode(s.start_time),
             "kind": s.kind}
        span = self.spans.get(s.start_frame)
        if span is not None:  # a dissolve or fade: the frames it runs over (inclusive)
            d["first_frame"], d["last_frame"] = span
        return d


def keyframe_times(info: VideoInfo, start: float, end: float, k: int = 3) -> list[float]:
    """k frames spread over a scene, away from its edges (a transition's half-mixed frames), as real frame times."""
    picks = []
    for i in range(max(k, 1)):
        t = start + (end - start) * (i + 0.5) / max(k, 1)
        picks.append(float(info.times[info.index_at(t)]))
    return sorted(set(picks))


def build_scenes(info: VideoInfo, s: Scores, cuts: list[int], scan_end: float, k: int = 3,
                 kinds: dict[int, str] | None = None) -> list[Scene]:
    if not len(s.index):
        return []
    m = len(s.index)
    bounds = [0] + sorted(set(c for c in cuts if 0 < c < m)) + [m]
    out = []
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        start_t = float(s.times[a])
        end_t = float(s.times[b]) if b < m else scan_end
        end_f = int(s.index[b]) if b < m else int(s.index[-1]) + 1
        kind = None if n == 1 else (kinds or {}).get(a, "cut")
        out.append(Scene(n, int(s.index[a]), end_f, start_t, end_t, keyframes=keyframe_times(info, start_t, end_t, k),
                         kind=kind))
    return out


def resolve_range(info: VideoInfo, start: float | None, end: float | None) -> tuple[float, float | None]:
    start = float(start or 0.0)
    if start < 0:
        raise KvlError(f"{info.path}: --start must not be negative")
    if start >= info.end_time:
        raise KvlError(f"{info.path}: --start {timecode(start)} is at or after the end of the video "
                       f"({timecode(info.end_time)})")
    if end is not None:
        if end <= start:
            raise KvlError(f"{info.path}: --end {timecode(end)} is not after --start {timecode(start)}")
        if end >= info.end_time:
            end = None
    return start, end


def find_scenes(
    path: str | Path,
    detector: str = "adaptive",
    threshold: float | None = None,
    min_scene_len: str = "0.6s",
    fades: bool = True,
    start: float | None = None,
    end: float | None = None,
    width: int = DETECT_WIDTH,
    backend: str = "pyav",
    fast: bool = False,
    keyframes: int = 3,
    on_frames: Callable[[int], None] | None = None,
    info: VideoInfo | None = None,
    compat: bool = False,
) -> SceneList:
    """Detect scenes; `on_frames(n)` is called after each batch of n frames (progress bars).

    By default adaptive and content also get the structure channel, the flash filter and dissolves
    (`detect.boundaries`); `compat` runs PySceneDetect's detectors alone, which reproduces its cut lists."""
    if detector not in DEFAULTS:
        raise KvlError(f"--detector: expected one of {', '.join(DEFAULTS)}, got {detector!r}")
    seconds, frames = parse_length(min_scene_len)
    min_len = MinLength(seconds, frames)
    info = info or probe(path)
    start, end = resolve_range(info, start, end)
    extended = not compat and detector != "threshold"
    scorer = Scorer(content=detector != "threshold", intensity=detector == "threshold" or fades or extended,
                    structure=extended)
    t0, partial, last = time.perf_counter(), False, -1
    try:
        for batch in scan(info, width, start, end, backend=backend, fast=fast):
            scorer.add(batch.index, batch.time, batch.rgb)
            last = int(batch.index[-1])
            if on_frames is not None:
                on_frames(len(batch.index))
    except KeyboardInterrupt:
        partial = True  # keep what was scanned: the caller writes it and exits 130
    s = scorer.scores
    if not len(s.index):
        if partial:
            raise KeyboardInterrupt
        raise KvlError(f"{info.path}: no frame could be decoded in the requested range (damaged or truncated file)")
    found = boundaries(s, detector, threshold, min_len, fades=fades, dissolves=extended, structure=extended)
    scan_end = float(info.times[last + 1]) if last + 1 < info.frame_count else info.end_time
    scenes = build_scenes(info, s, [b.pos for b in found], scan_end, keyframes, {b.pos: b.kind for b in found})
    spans = {int(s.index[b.pos]): (int(s.index[b.span[0]]), int(s.index[b.span[1]])) for b in found if b.span}
    w, h = detect_size(info, width)
    settings = {"threshold": DEFAULTS[detector] if threshold is None else threshold, "min_scene_len": min_scene_len,
                "fades": bool(fades and detector != "threshold"), "start": start, "end": end,
                "detect_size": [w, h], "backend": backend, "pysd_compat": bool(compat),
                "dissolves": extended, "structure": extended}
    first, stop = info.first_at_or_after(start), info.frame_count if end is None else info.first_at_or_after(end)
    missing = 0 if partial else stop - first - len(s.index)
    ended_early = not partial and (last < stop - 1 or (end is None and _cut_short(info)))
    return SceneList(info, scenes, detector, settings, len(s.index), time.perf_counter() - t0, partial,
                     cut_times=[sc.start_time for sc in scenes[1:]], missing=missing, ended_early=ended_early,
                     cut_kinds=[sc.kind for sc in scenes[1:]], spans=spans)


def _cut_short(info: VideoInfo) -> bool:
    """The container announces more video than its packets hold: the file was cut off (a partial download)."""
    step = info.end_time / max(info.frame_count, 1)
    return info.declared_end is not None and info.declared_end > info.end_time + max(0.5, 2 * step)
