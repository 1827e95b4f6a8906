"""Videos made in the tests with PyAV, with cuts, fades and frame times known exactly.

Every shot is a coloured texture with a moving square (motion inside a shot, so "no cut" is not the trivial
case of frozen frames); shots differ in hue, saturation and brightness, as real cuts do.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

PALETTE = [(200, 40, 40), (30, 160, 60), (40, 70, 210), (220, 200, 40), (150, 40, 170), (30, 190, 190)]


def shot_frame(shot: int, t: int, size: tuple[int, int] = (320, 180)) -> np.ndarray:
    """Frame `t` of shot `shot`: uint8 [h, w, 3]."""
    w, h = size
    base = np.array(PALETTE[shot % len(PALETTE)], np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    stripes = 0.75 + 0.25 * np.sin((x + 2 * y) / (9 + 3 * (shot % 3)) + 0.15 * t)
    img = base[None, None, :] * stripes[..., None]
    sx, sy = (12 + 3 * t) % (w - 40), (20 + 2 * t) % (h - 40)
    img[sy:sy + 30, sx:sx + 30] = 255 - base / 2  # the moving square
    return img.clip(0, 255).astype(np.uint8)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 30, codec: str = "libx264",
                pts_ms: Sequence[int] | None = None, gop: int | None = None, audio: bool = False) -> Path:
    """Encode RGB frames; `pts_ms` gives each frame's time in milliseconds (variable frame rate)."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            s.options = {"preset": "ultrafast", "crf": "20", **({"g": str(gop)} if gop else {})}
        if pts_ms is not None:
            s.codec_context.time_base = Fraction(1, 1000)
        a = None
        if audio:
            a = out.add_stream("aac", rate=16000)
        for i, arr in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            if pts_ms is not None:
                f.pts, f.time_base = int(pts_ms[i]), Fraction(1, 1000)
            out.mux(s.encode(f))
        out.mux(s.encode(None))
        if a is not None:
            n = int(16000 * len(frames) / fps)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, n), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 16000
            out.mux(a.encode(frame))
            out.mux(a.encode(None))
    return path


def cuts_video(path: Path, lengths: Sequence[int], fps: int = 30, size=(320, 180), **kw) -> tuple[Path, list[int]]:
    """Shots of the given lengths back to back; returns the path and the cut frames (first frame of each shot)."""
    frames, cuts = [], []
    for shot, n in enumerate(lengths):
        if shot:
            cuts.append(len(frames))
        frames += [shot_frame(shot, t, size) for t in range(n)]
    return write_video(path, frames, fps, **kw), cuts


FADE_OUT = (1.0, 0.7, 0.45, 0.25)  # brightness steps into black; 0.25 of a shot is still well above 12


def fade_video(path: Path, fps: int = 30, size=(320, 180), black: int = 6) -> tuple[Path, int, int]:
    """Shot A (40 frames, last 4 fading out), `black` black frames, shot B (40 frames, first 4 fading in).

    Returns the path, the first black frame and the first frame after the black run.
    """
    frames = [shot_frame(0, t, size) for t in range(36)]
    frames += [(shot_frame(0, 36 + k, size) * a).astype(np.uint8) for k, a in enumerate(FADE_OUT)]
    first_black = len(frames)
    frames += [np.zeros((size[1], size[0], 3), np.uint8)] * black
    back = len(frames)
    frames += [(shot_frame(1, k, size) * a).astype(np.uint8) for k, a in enumerate(FADE_OUT[::-1])]
    frames += [shot_frame(1, 4 + t, size) for t in range(36)]
    return write_video(path, frames, fps), first_black, back


def vfr_times_ms(n: int) -> list[int]:
    """Irregular frame times: steps of 33, 67 and 100 ms in a fixed pattern (like a capture dropping frames)."""
    steps = [33, 67, 33, 100, 33, 33, 67]
    out, t = [], 0
    for i in range(n):
        out.append(t)
        t += steps[i % len(steps)]
    return out


def fade_to_black_end(path: Path, size=(768, 432), fps: int = 30) -> tuple[Path, int]:
    """A blue shot (30 frames), 7 frames dimming it to a few levels above black, then black to the end.

    768x432 shrinks to 256x144 by exactly 3, so the detection pixels can be compared with PySceneDetect's.
    Returns the path and the first black frame, where the picture (dark, but still blue) gives way to black.
    """
    frames = [shot_frame(2, t, size) for t in range(30)]
    frames += [(shot_frame(2, 30 + k, size) * a).astype(np.uint8)
               for k, a in enumerate((0.7, 0.5, 0.35, 0.24, 0.16, 0.1, 0.06))]
    first_black = len(frames)
    frames += [np.zeros((size[1], size[0], 3), np.uint8)] * 20
    return write_video(path, frames, fps), first_black
