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


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Sorted positions as [start, stop) runs of consecutive values."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.r_[positions[0], positions[breaks]]
    stops = np.r_[positions[breaks - 1] + 1, positions[-1] + 1] if len(breaks) else np.r_[positions[-1] + 1]
    return list(zip(starts.tolist(), stops.tolist()))


def _luts() -> tuple[np.ndarray, np.ndarray]:
    """Saturation by (max << 8 | max-min); hue by (sector << 16 | max-min << 8 | mid-min).

    OpenCV's 8-bit hue is 30 * (the other two channels' difference) / (max - min) plus 0, 60 or 120 for
    a red, green or blue maximum, wrapped into [0, 180). The difference's magnitude is always mid - min, so
    the sector (which channel is largest, and the difference's sign) and two uint8 values index the answer.
    Both tables round half up, as OpenCV's fixed-point code does.
    """
    v = np.arange(256, dtype=np.float64)[:, None]
    d = np.arange(256, dtype=np.float64)[None, :]
    sat = np.where(v > 0, np.floor(255 * d / np.maximum(v, 1) + 0.5), 0).clip(0, 255).astype(np.uint8)
    diff = np.arange(256, dtype=np.float64)[:, None]
    q = np.where(diff > 0, 30 * np.minimum(d, diff) / np.maximum(diff, 1), 0)
    hue = np.zeros((6, 256, 256), np.uint8)
    for k, base in enumerate((0, 60, 120)):
        hue[2 * k] = np.floor(base + q + 0.5) % 180
        hue[2 * k + 1] = np.floor(base - q + 0.5) % 180
    hue[:, 0, :] = 0  # grey pixels have hue 0
    return sat.ravel(), hue.ravel()


_SAT, _HUE = _luts()


def hsv(rgb: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [n, 3, h, w] planar RGB -> uint8 [n, 3, h, w] H (0-179), S, V, as OpenCV's COLOR_RGB2HSV (±1).

    Only uint8/bool operations and two table lookups: numpy's `where` and int32 arithmetic cost 10x more
    per pixel than uint8 min/max, and this runs on every frame.
    """
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    hi, lo = np.maximum(r, g), np.minimum(r, g)
    v = np.maximum(hi, b)
    mn = np.minimum(lo, b)
    mid = np.maximum(lo, np.minimum(hi, b))
    diff = v - mn  # uint8, cannot wrap
    out = np.empty_like(rgb) if out is None else out
    key16 = v.astype(np.uint16)
    key16 <<= 8
    key16 |= diff
    np.take(_SAT, key16, out=out[:, 1])
    # sector: 0/1 red max (hue g-b up/down), 2/3 green max (b-r), 4/5 blue max (r-g); ties go to red, then green
    not_r, not_g = v != r, v != g
    down = (~not_r & (g < b)) | (not_r & ~not_g & (b < r)) | (not_r & not_g & (r < g))
    sector = not_r.view(np.uint8) + (not_r & not_g).view(np.uint8)
    sector <<= 1
    sector |= down.view(np.uint8)
    key = sector.astype(np.int32)
    key <<= 16
    key |= diff.astype(np.int32) << 8
    key |= mid - mn
    np.take(_HUE, key, out=out[:, 0])
    out[:, 2] = v
    return out


@dataclass
class Scores:
    """Per scanned frame: frame number, time, content score (0 for the first frame) and mean intensity."""

    index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    times: np.ndarray = field(default_factory=lambda: np.empty(0))
    content: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    intensity: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))


class Scorer:
    """Streaming frame scores: feed batches in display order, read `.scores` at any time (Ctrl-C safe).

    Two ways to the same numbers (the tests check they agree), chosen per frame, with no Python work per frame:
    * sparse: under a quarter of the pixels changed since the previous frame (static shots: skipped blocks decode
      to identical pixels). The changed pixels of every sparse frame in the batch, and the same pixels of each
      one's previous frame, are gathered together and converted in one call; unchanged pixels add nothing.
    * dense: the frame and its previous one convert whole, a few frames at a time so the temporaries stay in
      cache (8 frames of 256x144 at once ran 4x slower than 4, measured).
    """

    SPARSE = 0.25

    def __init__(self, weights: tuple[float, float, float] = (1.0, 1.0, 1.0), content: bool = True,
                 intensity: bool = True):
        self.weights = np.asarray(weights, np.float64) / max(sum(abs(w) for w in weights), 1e-12)
        self.need_content, self.need_intensity = content, intensity
        self.prev_rgb: np.ndarray | None = None  # [3, h, w] last frame seen
        self.prev_hsv: np.ndarray | None = None  # its HSV, when it was converted whole
        self._parts: list[tuple[np.ndarray, ...]] = []

    def add(self, index: np.ndarray, times: np.ndarray, rgb: np.ndarray) -> None:
        n, pixels = len(index), rgb.shape[2] * rgb.shape[3]
        if self.need_intensity:
            intensity = rgb.reshape(n, -1).sum(1, dtype=np.uint32) / (3 * pixels)  # < 2^32 for any detection size
        else:
            intensity = np.full(n, 255.0)
        content = np.zeros(n, np.float32)
        if self.need_content and n:
            self._content(rgb, content, pixels)
        self._parts.append((index, times, content, intensity.astype(np.float32)))

    def _content(self, rgb: np.ndarray, content: np.ndarray, pixels: int) -> None:
        # ext[j] is frame j - 1 of the batch; ext[0] the previous batch's last frame (the very first frame of the
        # video keeps score 0: nothing to differ from)
        if self.prev_rgb is not None:
            first, ext = 0, np.concatenate([self.prev_rgb[None], rgb])
        else:
            first, ext = 1, rgb
        cur, old = ext[1:], ext[:-1]
        m = len(cur)  # pairs: cur[i] is frame i + first of the batch
        chunk = max(1, 150_000 // pixels)  # frames per numpy call: temporaries stay in cache
        last_hsv = None  # HSV of the batch's last frame, when it was converted whole
        if m:
            changed = np.empty((m,) + cur.shape[2:], bool)
            for k in range(0, m, chunk):
                c = changed[k:k + chunk]
                np.not_equal(cur[k:k + chunk, 0], old[k:k + chunk, 0], out=c)
                c |= cur[k:k + chunk, 1] != old[k:k + chunk, 1]
                c |= cur[k:k + chunk, 2] != old[k:k + chunk, 2]
            counts = changed.reshape(m, -1).sum(1)
            sparse = counts < self.SPARSE * pixels
            if sparse.any():
                self._sparse(cur, old, changed, np.flatnonzero(sparse), content[first:], pixels)
            dense = np.flatnonzero(~sparse)
            # a run of dense pairs [a, b) needs frames a..b whole: convert them a few at a time and score each
            # pair as soon as both its frames are done, while they are in cache
            for a, b in _runs(dense):
                if a == 0 and first == 0 and self.prev_hsv is not None:
                    last = self.prev_hsv[None]
                else:
                    last = hsv(ext[a:a + 1])
                for k in range(a + 1, b + 1, chunk):
                    x = hsv(ext[k:min(b + 1, k + chunk)])
                    content[first + k - 1] = self._delta(x[:1], last)[0]
                    if len(x) > 1:
                        content[first + k:first + k + len(x) - 1] = self._delta(x[1:], x[:-1])
                    last = x[-1:]
                if b == m:
                    last_hsv = last[0].copy()
        self.prev_rgb = rgb[-1].copy()
        self.prev_hsv = last_hsv

    def _sparse(self, cur: np.ndarray, old: np.ndarray, changed: np.ndarray, which: np.ndarray, out: np.ndarray,
                pixels: int) -> None:
        """Scores of the pairs `which`, from only their changed pixels, all in one conversion."""
        mask = changed.reshape(len(changed), -1)
        flat = np.flatnonzero(mask if len(which) == len(mask) else mask[which])
        if not len(flat):
            return
        rows, pix = np.divmod(flat, pixels)
        at = which[rows] * (3 * pixels) + pix  # flat index of each changed pixel's R in cur / old
        px = np.empty((2, 3, len(at), 1), np.uint8)
        for c in range(3):
            np.take(cur.reshape(-1), at + c * pixels, out=px[0, c, :, 0])
            np.take(old.reshape(-1), at + c * pixels, out=px[1, c, :, 0])
        both = hsv(px)[..., 0]  # [2, 3, N]
        d = np.maximum(both[0], both[1]) - np.minimum(both[0], both[1])
        per_channel = np.stack([np.bincount(rows, d[c], minlength=len(which)) for c in range(3)], 1)
        out[which] = (per_channel * self.weights).sum(1) / pixels

    def _delta(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Weighted mean |a - b| over H, S, V per frame pair (uint8 max - min cannot wrap)."""
        per_channel = (np.maximum(a, b) - np.minimum(a, b)).reshape(len(a), 3, -1).sum(-1, dtype=np.uint32)
        # elementwise, not `@`: a BLAS call can wake spinning threads that compete with the decoder
        return (per_channel * self.weights).sum(1) / (a.shape[2] * a.shape[3])

    @property
    def scores(self) -> Scores:
        if not self._parts:
            return Scores()
        return Scores(*(np.concatenate(p) for p in zip(*self._parts)))


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
