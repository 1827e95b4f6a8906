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
                pts_ms: Sequence[int] | None = None, gop: int | None = None, audio: bool = False,
                crf: int = 20) -> Path:
    """Encode RGB frames; `pts_ms` gives each frame's time in milliseconds (variable frame rate)."""
    import av

    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            # one encoder thread: the same bytes on every machine, whatever its core count
            s.options = {"preset": "ultrafast", "crf": str(crf), "threads": "1", **({"g": str(gop)} if gop else {})}
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


# ---- composed clips: camera moves over real pictures, with every kind of transition ----------------------------

def camera(src: np.ndarray, n: int, box0: Sequence[float], box1: Sequence[float] | None = None,
           size=(640, 360), noise: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """n frames of a virtual camera over picture `src` (uint8 [H, W, 3]): its view (x0, y0, x1, y1 in source
    pixels, sub-pixel) moves linearly from box0 to box1 (a pan when it shifts, a zoom when it grows or
    shrinks); `noise` adds Gaussian sensor noise of that standard deviation (levels), fresh every frame."""
    from PIL import Image

    import cv2

    img = Image.fromarray(src)
    box1 = box0 if box1 is None else box1
    cv2.setRNGSeed(seed)
    out = []
    for k in range(n):
        a = k / max(n - 1, 1)
        x0, y0, x1, y1 = (float(p + (q - p) * a) for p, q in zip(box0, box1))
        box = (max(x0, 0.0), max(y0, 0.0), min(x1, img.width), min(y1, img.height))  # stay inside the picture
        f = np.asarray(img.resize(size, Image.Resampling.BILINEAR, box=box))
        if noise:  # OpenCV's generator: a 1080p frame's noise in milliseconds (numpy's float64 takes ~0.1 s)
            grain = np.empty(f.shape, np.int16)
            cv2.randn(grain, 0, noise)
            f = (f.astype(np.int16) + grain).clip(0, 255).astype(np.uint8)
        out.append(f)
    return out


def dissolve(a: list[np.ndarray], b: list[np.ndarray], k: int) -> tuple[list[np.ndarray], int]:
    """Shot a, then a cross-fade of k frames into shot b (a's last k frames mixed with b's first k).

    Returns the frames and the position of the transition's middle (the first frame where b weighs
    more than a), counted from the start of a."""
    mixed = [((1 - w) * x.astype(np.float32) + w * y.astype(np.float32)).round().astype(np.uint8)
             for x, y, w in zip(a[-k:], b[:k], (np.arange(1, k + 1) / (k + 1)))]
    return a[:-k] + mixed + b[k:], len(a) - k + k // 2


def fade_through_black(a: list[np.ndarray], b: list[np.ndarray], k: int, black: int = 0) -> tuple[list, int]:
    """Shot a fading out over its last k frames, `black` black frames, shot b fading in over its first k.

    Returns the frames and the middle of the transition (the middle of out + black + in)."""
    w = np.arange(k, 0, -1) / (k + 1)
    out = [(x * s).round().astype(np.uint8) for x, s in zip(a[-k:], w)]
    inn = [(y * s).round().astype(np.uint8) for y, s in zip(b[:k], w[::-1])]
    zero = [np.zeros_like(a[0])] * black
    start = len(a) - k
    return a[:-k] + out + zero + inn + b[k:], start + (2 * k + black) // 2


def flash(frames: list[np.ndarray], at: int, n: int = 2, gain: float = 2.5) -> None:
    """A camera flash: frames [at, at + n) overexposed (in place)."""
    for i in range(at, at + n):
        frames[i] = (frames[i].astype(np.float32) * gain + 60).clip(0, 255).astype(np.uint8)


def texture(seed: int, size=(2400, 500)) -> np.ndarray:
    """A sharp-edged colour texture (blobs plus 3-px blocks), like the detail of a photo or a screenshot."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    blobs = cv2.resize(rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    blocks = cv2.resize(rng.integers(0, 256, (h // 3, w // 3, 3), dtype=np.uint8), (w, h),
                        interpolation=cv2.INTER_NEAREST)
    return np.maximum(blobs, blocks // 2)


def pan_then_cut(path: Path, beta: float = 0.53) -> tuple[Path, int]:
    """640x360: a 2 px/frame pan over a texture for 200 frames, then a cut to a view that is `beta` another
    texture, still panning, 60 frames. Returns the path and the cut frame (200).

    At beta 0.53 PySceneDetect's adaptive ratio at the cut is ~3.1 (threshold 3): found. Detection pixels taken
    by point sampling instead of OpenCV's bilinear downscale score the pan ~10% higher, the ratio falls to ~2.9
    and the cut is lost (the missed late cut of issue #19).
    """
    a, b = texture(1), texture(2)
    mix = ((1 - beta) * a.astype(np.float32) + beta * b).astype(np.uint8)
    frames = [np.ascontiguousarray((a if t < 200 else mix)[50:410, 2 * t:2 * t + 640]) for t in range(260)]
    return write_video(path, frames, fps=25), 200


def textured_shots(count: int, n: int, size=(320, 180), noise: float = 2.0) -> list[list[np.ndarray]]:
    """`count` shots of n frames, each a slow pan and zoom over its own texture, magnified 4x so that its
    detail is on the scale of a photo's at detection size (not pixel noise)."""
    import cv2

    w, h = size
    out = []
    for k in range(count):
        src = cv2.resize(texture(10 + k, (w // 2, h // 2)), (2 * w, 2 * h), interpolation=cv2.INTER_CUBIC)
        out.append(camera(src, n, (0, 0, 1.5 * w, 1.5 * h), (0.3 * w, 0.2 * h, 1.6 * w, 1.6 * h), size, noise,
                          seed=k))
    return out


def white_page(seed: int, size=(320, 180)) -> np.ndarray:
    """A mostly white picture: thin grey text lines at places set by `seed` (a slide, a phone screenshot).
    Two of them differ in few pixels and in no colour: an HSV score far below a cut's."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 238, np.uint8)
    for _ in range(9):
        x, y = int(rng.integers(5, w // 2)), int(rng.integers(5, h - 10))
        cv2.rectangle(img, (x, y), (x + int(rng.integers(w // 5, w // 2)), y + 1), (60, 60, 60), -1)
    return img
