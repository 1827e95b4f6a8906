"""`--split DIR`: one file per scene, cut on the exact frames (tasks.md §2.1 `split-video`, done with PyAV).

Per scene, `auto` chooses:
* stream copy (no re-encoding, lossless, fast) when the scene starts on a keyframe and ends where a keyframe or
  the end of the file begins: nothing outside the scene is needed to decode it. Encoders put a keyframe at most
  hard cuts, so this is the common case.
* re-encoding otherwise (libx264 CRF 18, or MPEG-4 Part 2 when the PyAV build lacks libx264): stream copy could
  only start at the previous keyframe, and these files must hold exactly the scene's frames.
`copy` forces stream copy (starting at the keyframe before the scene when it has to, as PySceneDetect's
`split-video -c` does) and `encode` forces re-encoding. Audio packets inside the scene's time range are copied.
Stream copies go through the `ffmpeg` program when it is on PATH (what PySceneDetect uses; it knows every
container's quirks) and through PyAV's remuxer otherwise, or when ffmpeg's piece does not hold exactly the
frames it should (checked by probing it). Files are `<video>-Scene-<NNN><ext>`, each written under a temporary
name and renamed when complete, so Ctrl-C leaves only whole files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np

from kvl_core.errors import KvlError

from .decode import VideoInfo, _open
from .scenes import Scene, SceneList

MODES = ("auto", "copy", "encode")
TOOLS = ("auto", "ffmpeg", "pyav")


def ffmpeg_binary() -> str | None:
    """The ffmpeg program on PATH (KVL_FFMPEG names another one; KVL_FFMPEG=0 turns it off)."""
    named = os.environ.get("KVL_FFMPEG")
    if named == "0":
        return None
    return shutil.which(named or "ffmpeg")


def _is_clean_range(info: VideoInfo, scene: Scene) -> bool:
    ends_clean = scene.end_frame >= info.frame_count or bool(info.keyframe[scene.end_frame])
    return bool(info.keyframe[scene.start_frame]) and ends_clean


def split_video(result: SceneList, folder: Path, mode: str = "auto", on_scene=None, tool: str = "auto") -> list[Path]:
    """One file per scene; `tool` picks the stream-copy route (auto: ffmpeg when on PATH, else PyAV)."""
    if mode not in MODES:
        raise KvlError(f"--split-mode: expected one of {', '.join(MODES)}, got {mode!r}")
    if tool not in TOOLS:
        raise KvlError(f"split tool: expected one of {', '.join(TOOLS)}, got {tool!r}")
    ffmpeg = ffmpeg_binary() if tool != "pyav" else None
    if tool == "ffmpeg" and ffmpeg is None:
        raise KvlError("ffmpeg: not found on PATH (install FFmpeg, or split with PyAV)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = result.video
    # the source's container where it can hold both copied and re-encoded (H.264) streams; Matroska otherwise
    ext = info.path.suffix.lower() if info.path.suffix.lower() in (".mp4", ".mov", ".mkv", ".avi") else ".mkv"
    written = []
    for scene in result.scenes:
        path = folder / f"{info.path.stem}-Scene-{scene.number:03d}{ext}"
        tmp = path.with_name(f".{path.stem}.partial{ext}")
        copy = mode == "copy" or (mode == "auto" and _is_clean_range(info, scene))
        try:
            try:
                if not (copy and ffmpeg and _copy_ffmpeg(ffmpeg, info, scene, tmp)):
                    (_copy if copy else _encode)(info, scene, tmp)
            except (ValueError, OSError) as e:  # PyAV's muxer refuses this codec in this container, say
                if not copy or mode == "copy":
                    raise KvlError(f"{path}: cannot write this scene ({e})") from None
                tmp.unlink(missing_ok=True)
                _encode(info, scene, tmp)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        written.append(path)
        if on_scene is not None:
            on_scene(scene)
    return written


def _copy_start(info: VideoInfo, scene: Scene) -> int:
    """The frame a stream copy starts at: the scene's own keyframe, or the one before it (`copy` forced)."""
    keys = np.flatnonzero(info.keyframe[: scene.start_frame + 1])
    return int(keys[-1]) if len(keys) else 0


def _copy_ffmpeg(ffmpeg: str, info: VideoInfo, scene: Scene, out_path: Path) -> bool:
    """Stream-copy the scene with the ffmpeg program; False (and nothing left behind) when its piece is not
    exactly the frames expected, so the caller falls back to PyAV."""
    first = _copy_start(info, scene)
    t0 = float(info.times[first])
    last = scene.end_frame - 1
    # stop halfway between the scene's last frame and the next one: no rounding can take or drop a frame
    t1 = (float(info.times[last]) + (float(info.times[scene.end_frame]) if scene.end_frame < info.frame_count
                                     else info.end_time)) / 2
    start = t0 + float(info.pts[0] * info.time_base)  # ffmpeg seeks in the file's own timeline
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-ss", f"{start:.6f}", "-i",
           str(info.path), "-t", f"{t1 - t0:.6f}", "-map", "0:v:0", "-map", "0:a:0?", "-c", "copy",
           "-avoid_negative_ts", "make_zero", "-map_metadata", "0", str(out_path)]
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        done = None
    if done is not None and done.returncode == 0 and out_path.exists():
        from .decode import probe

        try:
            if probe(out_path).frame_count == last - first + 1:
                return True
        except KvlError:
            pass
    out_path.unlink(missing_ok=True)
    return False


def _time_range(info: VideoInfo, scene: Scene) -> tuple[int, int]:
    """The scene's [start, end) in the video stream's pts units."""
    end = int(info.pts[scene.end_frame]) if scene.end_frame < info.frame_count else None
    return int(info.pts[scene.start_frame]), end if end is not None else 2**62


def _copy(info: VideoInfo, scene: Scene, out_path: Path) -> None:
    import av

    _, end_pts = _time_range(info, scene)
    begin_pts = int(info.pts[_copy_start(info, scene)])
    with _open(info.path) as inp, av.open(str(out_path), "w") as out:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        vout = out.add_stream_from_template(vin)
        aout = out.add_stream_from_template(ain) if ain is not None else None
        t0, t1 = (begin_pts - info.pts[0]) * vin.time_base, (end_pts - info.pts[0]) * vin.time_base
        inp.seek(begin_pts, stream=vin, backward=True, any_frame=False)
        streams = [s for s in (vin, ain) if s is not None]
        for packet in inp.demux(*streams):
            if packet.dts is None or packet.pts is None:
                continue
            if packet.stream is vin:
                if packet.pts >= end_pts and packet.is_keyframe:
                    break  # the next scene's keyframe: everything of this scene has been read
                if not begin_pts <= packet.pts < end_pts:
                    continue
                shift = begin_pts
                packet.stream = vout
            else:
                t = packet.pts * ain.time_base - (info.pts[0] * vin.time_base)
                if not t0 <= t < t1:
                    continue
                shift = int(round(t0 / ain.time_base + info.pts[0] * vin.time_base / ain.time_base))
                packet.stream = aout
            packet.pts -= shift
            packet.dts -= shift
            out.mux(packet)


def _encoder() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _encode(info: VideoInfo, scene: Scene, out_path: Path) -> None:
    import av

    start_pts, end_pts = _time_range(info, scene)
    with _open(info.path) as inp, av.open(str(out_path), "w") as out:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        ain = inp.streams.audio[0] if inp.streams.audio else None
        codec = _encoder()
        rate = Fraction(info.fps).limit_denominator(1001) if info.fps > 0 else Fraction(25)
        vout = out.add_stream(codec, rate=rate)
        vout.width, vout.height, vout.pix_fmt = info.width - info.width % 2, info.height - info.height % 2, "yuv420p"
        vout.time_base = vin.time_base  # keep the source's timestamps: variable frame rate survives
        if info.rotation:  # pixels stay as coded; players turn them by the same display matrix
            vout.set_display_rotation(info.rotation)
        if codec == "libx264":
            vout.options = {"crf": "18", "preset": "veryfast"}
        else:
            vout.bit_rate = 8_000_000
        aout = out.add_stream_from_template(ain) if ain is not None else None
        t0 = (start_pts - info.pts[0]) * vin.time_base
        t1 = (end_pts - info.pts[0]) * vin.time_base
        inp.seek(start_pts, stream=vin, backward=True, any_frame=False)
        done = False
        for packet in inp.demux(*(s for s in (vin, ain) if s is not None)):
            if packet.stream is vin:
                for frame in packet.decode():
                    if frame.pts is None or frame.pts < start_pts:
                        continue
                    if frame.pts >= end_pts:
                        done = True
                        break
                    frame = frame.reformat(vout.width, vout.height, "yuv420p") if (
                        frame.width, frame.height, frame.format.name) != (vout.width, vout.height, "yuv420p") else frame
                    frame.pts, frame.time_base = frame.pts - start_pts, vin.time_base
                    out.mux(vout.encode(frame))
                if done:
                    break
            elif packet.pts is not None and packet.dts is not None:
                t = packet.pts * ain.time_base - info.pts[0] * vin.time_base
                if t0 <= t < t1:
                    shift = int(round((t0 + info.pts[0] * vin.time_base) / ain.time_base))
                    packet.pts -= shift
                    packet.dts -= shift
                    packet.stream = aout
                    out.mux(packet)
        # (demux ends with an empty packet per stream, whose decode() flushes the decoder's last frames)
        out.mux(vout.encode(None))
