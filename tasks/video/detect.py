"""Shot-boundary detection on downscaled frames: hard cuts and fades through black (tasks.md §2.1).

This is the frame-accurate half of `kvl video scenes` (the model's half, Kimi-VL Figure 11, is describe.py).
The ideas are PySceneDetect's, re-implemented so they run as whole-array numpy operations:

* Frame score (`Scorer`): the mean absolute difference between consecutive frames in hue, saturation and value,
  averaged (OpenCV's 8-bit HSV scale, so PySceneDetect's thresholds keep their meaning). HSV comes from uint8
  min/max and two lookup tables, with no per-pixel division.
* `content_cuts`: score >= 27. Loud frames closer than the minimum scene length form one burst: a flash gives
  one cut, a long strobe gives one at each end (the idea of PySceneDetect's flash filter, stated as bursts).
* `adaptive_cuts` (default): score divided by the mean score of the `window` frames on each side >= 3, and the
  score itself >= 15. A camera pan raises every neighbour's score too, so the ratio stays low; a cut does not.
* `fade_cuts`: a frame is "out" when its mean RGB intensity < 12. Each dark run that ends inside the video
  gives one cut, midway through the run (shifted by `fade_bias` in [-1, 1]).
* `merge_cuts`: hard cuts and fades together, one cut per transition: a hard cut into or out of a dark run
  replaces that run's midpoint (it is the exact boundary).
Positions are indices into the scanned arrays; `index`/`times` map them to frame numbers and seconds, and the
minimum length is measured in seconds (right on VFR files) unless it was given in frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULTS = {"adaptive": 3.0, "content": 27.0, "threshold": 12.0}
MIN_CONTENT = 15.0  # adaptive: a cut also needs this absolute score (cross-fades between similar shots)
WINDOW = 2  # adaptive: frames on each side averaged


THUMB = (32, 18)  # per-frame colour thumbnail kept for the whole scan (dissolves, flashes): 1.7 KB a frame
STRUCT = (64, 36)  # luma structure is compared at this size: 4x4 averaging takes sensor noise down 4x


@dataclass
class Scores:
    """Per scanned frame: frame number, time, HSV content score (0 for the first frame), mean intensity,
    structure score (0 for the first frame) and a small RGB thumbnail."""

    index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    content: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    intensity: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    structure: np.ndarray | None = None
    thumbs: np.ndarray | None = None  # uint8 [n, 18, 32, 3]


class Scorer:
    """Streaming frame scores: feed batches in display order, read `.scores` at any time (Ctrl-C safe).

    Per frame, with OpenCV's C code (no per-pixel Python or numpy work): RGB -> HSV (COLOR_RGB2HSV, PySceneDetect's
    own conversion, so its thresholds keep their meaning), the mean absolute HSV difference to the previous frame,
    the mean intensity, and for the gradual-transition and structure checks a 32x18 thumbnail and the luma
    structure score: 100 * (1 - normalised cross-correlation) of the 64x36 luma against the previous frame's.
    Correlation ignores gain and offset, so fades and flashes barely move it, while a cut between two pictures
    of the same colour (two mostly white screens) drops it to near 0 where the HSV difference stays small.
    """

    def __init__(self, weights: tuple[float, float, float] = (1.0, 1.0, 1.0), content: bool = True,
                 intensity: bool = True, structure: bool = True):
        self.weights = np.asarray(weights, np.float64) / max(sum(abs(w) for w in weights), 1e-12)
        self.need_content, self.need_intensity, self.need_structure = content, intensity, structure
        self.prev_hsv: np.ndarray | None = None
        self.prev_luma: np.ndarray | None = None  # zero-mean, unit-norm 64x36 luma (None: flat frame)
        self.started = False
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, index: np.ndarray, times: np.ndarray, rgb: np.ndarray) -> None:
        """rgb: uint8 [n, h, w, 3] packed RGB."""
        import cv2

        n, pixels = len(index), rgb.shape[1] * rgb.shape[2]
        content = np.zeros(n, np.float32)
        intensity = np.full(n, 255.0, np.float32)
        structure = np.zeros(n, np.float32)
        thumbs = np.empty((n, THUMB[1], THUMB[0], 3), np.uint8)
        w = self.weights
        for k in range(n):
            f = rgb[k]
            if self.need_intensity:
                s = cv2.sumElems(f)
                intensity[k] = (s[0] + s[1] + s[2]) / (3 * pixels)
            if self.need_content:
                h = cv2.cvtColor(f, cv2.COLOR_RGB2HSV)
                if self.prev_hsv is not None:
                    d = cv2.sumElems(cv2.absdiff(h, self.prev_hsv))
                    content[k] = (d[0] * w[0] + d[1] * w[1] + d[2] * w[2]) / pixels
                self.prev_hsv = h
            if self.need_structure:
                small = cv2.resize(f, STRUCT, interpolation=cv2.INTER_AREA)
                cv2.resize(small, THUMB, dst=thumbs[k], interpolation=cv2.INTER_AREA)
                luma = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
                luma -= luma.mean()
                norm = float(np.sqrt((luma * luma).sum()))
                # flat frames (black, a blank wall) have no structure to compare: 3 levels of spread at least
                luma = luma / norm if norm > 3.0 * np.sqrt(luma.size) else None
                if self.started and luma is not None and self.prev_luma is not None:
                    structure[k] = 100.0 * (1.0 - float((luma * self.prev_luma).sum()))
                self.prev_luma = luma
            self.started = True
        self._parts.append((index, times, content, intensity, structure, thumbs))

    @property
    def scores(self) -> Scores:
        if not self._parts:
            return Scores()
        index, times, content, intensity, structure, thumbs = (np.concatenate(p) for p in zip(*self._parts))
        if not self.need_structure:
            structure = thumbs = None
        return Scores(index, times, content, intensity, structure, thumbs)


@dataclass(frozen=True)
class MinLength:
    """Minimum scene length, in seconds or (when given as a frame count) in frames."""

    seconds: float = 0.6
    frames: int | None = None

    def ok(self, s: Scores, a: int, b: int) -> bool:
        """Is position b far enough after position a?"""
        if self.frames is not None:
            return int(s.index[b] - s.index[a]) >= self.frames
        return float(s.times[b] - s.times[a]) >= self.seconds - 1e-6

    def first_after(self, s: Scores, a: int) -> int:
        """The first position that is far enough after position a (len when none)."""
        if self.frames is not None:
            return int(np.searchsorted(s.index, s.index[a] + self.frames, side="left"))
        return int(np.searchsorted(s.times, s.times[a] + self.seconds - 1e-6, side="left"))


def adaptive_cuts(s: Scores, ratio: float = DEFAULTS["adaptive"], min_len: MinLength = MinLength(),
                  window: int = WINDOW, min_content: float = MIN_CONTENT) -> list[int]:
    c = s.content.astype(np.float64)
    n = len(c)
    if n < 2 * window + 1:
        return []
    csum = np.concatenate([[0.0], np.cumsum(c)])
    i = np.arange(window, n - window)
    avg = (csum[i + window + 1] - csum[i - window] - c[i]) / (2 * window)
    zero = np.abs(avg) < 1e-5
    r = np.where(zero, np.where(c[i] >= min_content, 255.0, 0.0), np.minimum(c[i] / np.where(zero, 1, avg), 255.0))
    cuts, last = [], 0
    for p in i[(r >= ratio) & (c[i] >= min_content)]:
        if min_len.ok(s, last, p):
            cuts.append(int(p))
            last = p
    return cuts


def content_cuts(s: Scores, threshold: float = DEFAULTS["content"], min_len: MinLength = MinLength()) -> list[int]:
    """Frames whose score >= threshold, grouped into bursts (each frame within the minimum length of the last
    one): a burst cuts at its first frame, and a burst lasting the minimum length or more (strobe lights, a
    fast montage) also cuts at its last frame, so it becomes a scene of its own."""
    above = np.flatnonzero(s.content >= threshold)
    cuts: list[int] = []
    last_cut, i = 0, 0
    while i < len(above):
        first = last = int(above[i])
        i += 1
        while i < len(above) and not min_len.ok(s, last, int(above[i])):
            last = int(above[i])
            i += 1
        if min_len.ok(s, last_cut, first):
            cuts.append(first)
            last_cut = first
        if last != first and min_len.ok(s, first, last) and min_len.ok(s, last_cut, last):
            cuts.append(last)
            last_cut = last
    return cuts


@dataclass(frozen=True)
class Fade:
    out: int  # first dark position
    back: int  # first bright position after it
    cut: int  # where the scene changes


def fade_cuts(s: Scores, threshold: float = DEFAULTS["threshold"], min_len: MinLength = MinLength(),
              bias: float = 0.0) -> list[Fade]:
    dark = s.intensity < threshold
    if len(dark) < 2:
        return []
    edges = np.flatnonzero(dark[1:] != dark[:-1]) + 1  # positions where the state flips
    starts = ([0] if dark[0] else []) + [int(e) for e in edges if dark[e]]
    ends = [int(e) for e in edges if not dark[e]]
    fades, last = [], 0
    for a in starts:
        b = next((e for e in ends if e > a), None)
        if b is None:  # still dark at the end: no scene follows
            break
        if min_len.ok(s, last, b):
            # midway in frame numbers, rounded half to even as PySceneDetect does
            target = int(s.index[a]) + round((int(s.index[b]) - int(s.index[a])) * (1.0 + bias) / 2.0)
            cut = min(int(np.searchsorted(s.index, target)), len(dark) - 1)
            fades.append(Fade(a, b, cut))
            last = b  # length is counted from the fade-in, not the cut
    return fades


def merge_cuts(hard: list[int], fades: list[Fade], s: Scores, min_len: MinLength) -> list[int]:
    """Hard cuts plus fade cuts, one per transition, then no two cuts closer than the minimum length."""
    tagged = [(p, True) for p in hard]
    for f in fades:
        lo, hi = f.out, f.back
        if not any(lo - 1 <= h <= hi + 1 for h in hard):  # a hard cut at the run's edge is the real boundary
            tagged.append((f.cut, False))
    kept: list[tuple[int, bool]] = []
    for p, is_hard in sorted(tagged):
        if kept and not min_len.ok(s, kept[-1][0], p):
            if is_hard and not kept[-1][1] and (len(kept) < 2 or min_len.ok(s, kept[-2][0], p)):
                kept[-1] = (p, True)  # a fade midpoint yields to a nearby exact cut
            continue
        kept.append((p, is_hard))
    return [p for p, _ in kept]


def detect(s: Scores, detector: str = "adaptive", threshold: float | None = None,
           min_len: MinLength = MinLength(), fades: bool = True, fade_threshold: float = DEFAULTS["threshold"],
           fade_bias: float = 0.0) -> list[int]:
    """Cut positions (each the first frame of a new scene) for the chosen detector."""
    if detector not in DEFAULTS:
        raise ValueError(f"unknown detector {detector!r}")
    t = DEFAULTS[detector] if threshold is None else threshold
    if detector == "threshold":
        return [f.cut for f in fade_cuts(s, t, min_len, fade_bias)]
    hard = adaptive_cuts(s, t, min_len) if detector == "adaptive" else content_cuts(s, t, min_len)
    if not fades:
        return hard
    return merge_cuts(hard, fade_cuts(s, fade_threshold, min_len, fade_bias), s, min_len)
