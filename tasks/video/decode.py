"""Video frames with their real presentation times (tasks.md §4; Kimi-VL Figure 11 needs exact timestamps).

Frame numbers and times come from the container's packet timestamps, never from `index / fps`: `probe` demuxes
the video stream once (no decoding, a few µs a packet) and keeps every frame's presentation time in display order.
A decoded frame is then located by its own pts, so numbering stays right on variable-frame-rate files and when a
decoder drops a damaged frame.

Here: `probe` (timestamps, keyframe flags, one-line errors for files we cannot use) and `grab` (keyframes for
the model and `--images`, decoded in full): decord's random access by default, checked against the probed
timestamps because decord returns wrong frames on some VFR/webm files (dmlc/decord#54, #91); PyAV (seek per
sample when keyframes are dense, one sequential pass otherwise, tasks.md §4) when decord is missing, disagrees
or fails. The detection scan over every frame is scan.py.
decord and av are imported inside the functions: `kvl --help` must not pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from kvl_core.errors import KvlError

if TYPE_CHECKING:  # PIL is for keyframes only: a scan does not import it
    from PIL import Image

MAX_SIDE = 16384  # beyond 16K a frame is not a video we can be asked to look at (and would need GBs per frame)
DETECT_WIDTH = 256  # PySceneDetect's automatic downscale target width (tasks.md §2.1)


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    codec: str
    fps: float  # nominal rate: EDL timecodes and estimates only, never frame times
    times: np.ndarray  # float64 [N]: presentation time of each frame (display order), seconds from the first
    pts: np.ndarray  # int64 [N]: the same in stream time_base units (to locate decoded frames exactly)
    keyframe: np.ndarray  # bool [N]
    end_time: float  # when the last frame stops being shown
    time_base: Fraction
    vfr: bool
    has_audio: bool
    declared_end: float | None = None  # the container's own idea of the duration (a truncated file ends sooner)
    rotation: int = 0  # counter-clockwise degrees (0/90/180/270) to turn decoded frames upright (display matrix)

    @property
    def frame_count(self) -> int:
        return len(self.times)

    def index_at(self, t: float) -> int:
        """The frame on screen at time `t` (clamped to the video)."""
        i = int(np.searchsorted(self.times, t + 1e-9, side="right")) - 1
        return min(max(i, 0), self.frame_count - 1)

    def first_at_or_after(self, t: float) -> int:
        """The first frame shown at or after `t` (N when none)."""
        return int(np.searchsorted(self.times, t - 1e-6, side="left"))


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except FileNotFoundError:
        raise KvlError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise KvlError(f"{path}: is a directory, not a video file") from None
    except PermissionError:
        raise KvlError(f"{path}: permission denied") from None
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise KvlError(f"{path}: cannot be read as a video: not a video, or damaged or truncated ({reason})") from None


def probe(path: str | Path) -> VideoInfo:
    """Stream facts and per-frame timestamps; KvlError (one line) for anything we cannot scan."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise KvlError(f"{path}: empty file (0 bytes)")
    container = _open(path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams})
            what = "audio only" if "audio" in kinds else ("streams: " + ", ".join(kinds) if kinds else "no streams")
            raise KvlError(f"{path}: no video stream ({what})")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        codec = getattr(getattr(ctx, "codec", None), "name", None) if ctx is not None else None
        if not codec or codec == "none":
            tag = getattr(ctx, "codec_tag", "") if ctx is not None else ""
            raise KvlError(f"{path}: unknown video codec{f' ({tag})' if tag else ''}: FFmpeg has no decoder for it")
        w, h = int(ctx.width or 0), int(ctx.height or 0)
        if w <= 0 or h <= 0:
            raise KvlError(f"{path}: the video stream has no frame size ({w}x{h}); the file is damaged")
        if w > MAX_SIDE or h > MAX_SIDE:
            raise KvlError(f"{path}: absurd resolution {w}x{h} (at most {MAX_SIDE} px a side is supported)")
        tb = stream.time_base or Fraction(1, 90000)
        rate = stream.guessed_rate or stream.average_rate or stream.base_rate
        pts, key, last_dur, first_packet = [], [], 0, None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packets and AVI's empty "skip" frames carry no picture
                    continue
                if first_packet is None:
                    first_packet = packet
                p = packet.pts if packet.pts is not None else packet.dts
                pts.append(p)
                key.append(bool(packet.is_keyframe))
                last_dur = packet.duration or last_dur
        except Exception as e:  # noqa: BLE001 -- a damaged tail: keep what was read, decoding will tell the rest
            if not pts:
                raise KvlError(f"{path}: cannot read video packets ({e}); the file is damaged") from None
        has_audio = bool(container.streams.audio)
        # the container's duration covers every stream: only trusted for the video when there is no audio
        declared = float(stream.duration * tb) if stream.duration else (
            container.duration / 1e6 if container.duration and not has_audio else None)
        rotation = _rotation(stream, first_packet)
    finally:
        container.close()
    if not pts:
        raise KvlError(f"{path}: no video frames (empty or truncated file)")
    fps = float(rate) if rate else 0.0
    if any(p is None for p in pts):  # raw elementary streams carry no timestamps: constant rate is all we have
        if fps <= 0:
            raise KvlError(f"{path}: the video has neither timestamps nor a frame rate")
        step = 1 / (fps * float(tb))
        pts_arr = np.round(np.arange(len(pts)) * step).astype(np.int64)
    else:
        pts_arr = np.asarray(pts, dtype=np.int64)
    order = np.argsort(pts_arr, kind="stable")  # decode order -> display order (B-frames)
    pts_arr, key_arr = pts_arr[order], np.asarray(key, dtype=bool)[order]
    times = (pts_arr - pts_arr[0]) * float(tb)
    steps = np.diff(times)
    if fps <= 0:
        fps = 1 / float(np.median(steps)) if len(steps) and np.median(steps) > 0 else 25.0
    last = last_dur * float(tb) if last_dur else (float(np.median(steps)) if len(steps) else 1 / fps)
    vfr = bool(len(steps) > 1 and (steps.max() - steps.min()) > 0.25 * float(np.median(steps)))
    return VideoInfo(path, w, h, codec, fps, times, pts_arr, key_arr, float(times[-1] + last), tb, vfr, has_audio,
                     declared, rotation)


def _rotation(stream, packet) -> int:
    """How far to turn decoded frames counter-clockwise for display, to the nearest quarter turn.

    Phones store portrait video as landscape pixels plus a display matrix (MP4/MOV `tkhd`; older files a
    `rotate` tag). FFmpeg hands the matrix to the decoder, which attaches it to every frame, so one decoded
    frame tells. Arbitrary angles are rounded to a quarter turn; flips are ignored.
    """
    degrees = None
    if packet is not None:
        try:
            frames = stream.codec_context.decode(packet) + stream.codec_context.decode(None)
            if frames:
                degrees = float(frames[0].rotation or 0)
        except Exception:  # noqa: BLE001 -- a damaged first packet: the scan reports decoding problems
            degrees = None
    if not degrees:
        tag = (stream.metadata or {}).get("rotate")
        try:
            degrees = -float(tag) if tag else 0.0  # the tag is clockwise
        except ValueError:
            degrees = 0.0
    return int(round(degrees / 90)) % 4 * 90


def display_size(info: VideoInfo) -> tuple[int, int]:
    """Width and height as shown (a quarter turn swaps them)."""
    return (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)


def upright(img: Image.Image, rotation: int) -> Image.Image:
    """A decoded frame turned as the display matrix says."""
    from PIL import Image

    turns = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    return img.transpose(turns[rotation]) if rotation in turns else img


def detect_size(info: VideoInfo, width: int = DETECT_WIDTH) -> tuple[int, int]:
    """Detection resolution: the longer side `width` px (never upscaled), aspect kept, as PySceneDetect's
    automatic downscale (its factor is the longer side / 256, so a quarter turn does not change it)."""
    w, h = info.width, info.height
    side = max(w, h)
    if side <= width:
        return w, h
    factor = side / width
    return max(1, round(w / factor)), max(1, round(h / factor))


def _decord_reader(info: VideoInfo, size: tuple[int, int] | None = None):
    """A decord VideoReader whose frames agree with the probed timestamps, or None (then PyAV is used)."""
    try:
        import decord
    except ImportError:
        return None
    if info.codec in ("vp8", "vp9"):  # decord returns wrong frames on webm (dmlc/decord#91)
        return None
    if info.rotation:  # decord turns some rotated files upright itself and not others: PyAV, turned by us
        return None
    try:
        kw = {"width": size[0], "height": size[1]} if size else {}
        vr = decord.VideoReader(str(info.path), num_threads=0, **kw)
        if len(vr) != info.frame_count:
            return None
        ts = vr.get_frame_timestamp(np.arange(len(vr)))[:, 0]
        step = (info.end_time / max(info.frame_count, 1))
        if np.abs(ts - ts[0] - info.times).max() > 0.5 * step:
            return None
        return vr
    except Exception:  # noqa: BLE001 -- decord raises its own untyped errors; PyAV is the fallback
        return None


@dataclass
class Grab:
    index: int
    time: float
    image: Image.Image


def iter_grab(info: VideoInfo, times: Sequence[float], backend: str = "auto",
              max_side: int | None = None) -> Iterator[Grab]:
    """The frames on screen at `times` (one per distinct frame), in time order, as RGB images shrunk to
    `max_side`. A generator decoding in chunks: asking for thousands of keyframes never holds them at full size."""
    wanted = sorted({info.index_at(t) for t in times})
    vr = _decord_reader(info) if backend in ("auto", "decord") and wanted else None
    done = 0
    if vr is not None:
        try:
            for k in range(0, len(wanted), 16):
                chunk = wanted[k:k + 16]
                for i, a in zip(chunk, vr.get_batch(chunk).asnumpy()):
                    yield _grab(info, i, a, max_side)
                    done += 1
            vr.seek(0)  # decord keeps decoding ahead after get_batch (dmlc/decord#197)
            return
        except Exception:  # noqa: BLE001 -- decord's untyped errors: PyAV takes over where it stopped
            pass
    for i, a in _grab_pyav(info, wanted[done:]):
        yield _grab(info, i, a, max_side)


def _grab(info: VideoInfo, i: int, rgb: np.ndarray, max_side: int | None) -> Grab:
    from PIL import Image

    img = upright(Image.fromarray(rgb), info.rotation)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    return Grab(i, float(info.times[i]), img)


def grab(info: VideoInfo, times: Sequence[float], backend: str = "auto", max_side: int | None = None) -> list[Grab]:
    """`iter_grab` as a list; KvlError when none of the frames could be decoded."""
    out = list(iter_grab(info, times, backend, max_side))
    if times and not out:
        raise KvlError(f"{info.path}: could not decode any of the requested frames")
    return out


def _frame_index(info: VideoInfo, pts: int | None) -> int:
    """Display-order number of the frame with this pts (-1 when the pts is not one of the probed ones)."""
    if pts is None:
        return -1
    i = int(np.searchsorted(info.pts, pts))
    return i if i < info.frame_count and info.pts[i] == pts else -1


def _grab_pyav(info: VideoInfo, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, full-size RGB) for each wanted frame, in order."""
    import av

    if not wanted:
        return
    gop = info.frame_count / max(int(info.keyframe.sum()), 1)
    # Seeking per sample only pays when a keyframe is near every sample (tasks.md §4: 0.66 s vs 24 s for
    # 60 samples); with sparse keyframes one sequential pass decodes each frame once.
    per_sample = gop <= info.frame_count / len(wanted)
    container = _open(info.path)
    found = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if per_sample:
            for target in wanted:
                container.seek(int(info.pts[target]), stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    i = _frame_index(info, frame.pts)
                    if i == target:
                        found += 1
                        yield i, frame.to_ndarray(format="rgb24")
                    if i >= target:
                        break
        else:
            remaining = set(wanted)
            if wanted[0] > 0:
                container.seek(int(info.pts[wanted[0]]), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                i = _frame_index(info, frame.pts)
                if i in remaining:
                    remaining.discard(i)
                    found += 1
                    yield i, frame.to_ndarray(format="rgb24")
                if not remaining or i >= wanted[-1]:
                    break
    except av.error.FFmpegError as e:
        if not found:
            raise KvlError(f"{info.path}: cannot decode the video ({e})") from None
    finally:
        container.close()
