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
        self.prev_luma: np.ndarray | None = None  # zero-mean, unit-norm 64x36 luma
        self.prev_spread = 0.0  # and its standard deviation before normalising
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
                spread = float(np.sqrt((luma * luma).mean()))  # luma standard deviation, levels
                luma /= max(spread, 1e-6) * np.sqrt(luma.size)
                if self.started:
                    structure[k] = _structure(luma, spread, self.prev_luma, self.prev_spread)
                self.prev_luma, self.prev_spread = luma, spread
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


FLAT, TEXTURED = 1.0, 3.0  # luma spread (levels) of a blank frame, and of one with a picture on it


def _structure(a: np.ndarray, spread_a: float, b: np.ndarray, spread_b: float) -> float:
    """100 * (1 - correlation) of two normalised lumas. A blank frame (black, a white page) has no structure
    to correlate: blank next to blank scores 0, blank next to a picture 100 (a cut from a text page to an
    empty white screen is all structure), anything in between the two spreads 0 (no call either way)."""
    if spread_a >= FLAT and spread_b >= FLAT:
        return 100.0 * (1.0 - float((a * b).sum()))
    if max(spread_a, spread_b) >= TEXTURED:
        return 100.0
    return 0.0


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
                  window: int = WINDOW, min_content: float = MIN_CONTENT, values: np.ndarray | None = None) -> list[int]:
    """Positions whose score is >= `ratio` times the mean of the `window` scores on each side and >= min_content
    (`values`: another per-frame score than the HSV one, the structure score say)."""
    c = (s.content if values is None else values).astype(np.float64)
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


# ---- beyond PySceneDetect: the structure channel, flashes, dissolves --------------------------------------------

STRUCT_RATIO = 3.0  # structure cuts: the same adaptive rule as the HSV score ...
STRUCT_MIN = 30.0  # ... with its own floor: correlation below 0.7 between consecutive frames
STRUCT_HSV_RATIO = 2.0  # and the HSV score at least doubles there (any size)
STEP_RATIO, STEP_MIN = 4.0, 4.0  # a mean-brightness step of 4 levels, 4x its neighbours', with a structure change
FADE_BRIGHT = 3.0  # beside a cut to black the picture is this many times the dark threshold, or it was fading
FLASH_SPAN = 6  # a flash: the picture before it comes back within this many frames
FLASH_SAME = 0.3  # "comes back": thumbnail distance under this share of the jump
DISSOLVE_HALVES = (4, 5, 6, 8, 10, 12, 15)  # half-lengths tried: dissolves of 8 to 30 frames
DISSOLVE_MIN = 20.0  # the two pictures differ by at least this mean level (thumbnails, 0-255)
DISSOLVE_SAME = 0.8  # the end frames' luma correlate less than this (the same picture brighter is a fade)
DISSOLVE_GAIN = 0.12  # and the darker end is not the brighter one dimmed (within this share of the change)
DISSOLVE_ALPHA = 0.15  # each sampled frame's mix weight within this of a straight ramp
# what the mix may leave unexplained, as a share of the change, over a window of half-length k: 0.06 + 0.008 k.
# Dissolves of still shots leave 0.01-0.05, of moving shots up to 0.16 over long windows; zooms and pans leave
# 0.15-0.2 over short windows and more over long ones (the motion adds up).
DISSOLVE_RESIDUAL = (0.06, 0.008)
# a long dissolve between moving shots (half-length MOVING_K or more): what the mix may leave unexplained,
# how far the ramp may miss a straight line, and how far from 0 and 1 the mix must stay beyond its ends
MOVING_K, MOVING_RESIDUAL, MOVING_ALPHA, MOVING_SETTLED = 8, 0.3, 0.08, 0.1
SETTLED = 0.03  # a frame weighing less than this of either picture is outside the dissolve
DIP_RAMP = 3  # a fade that dims without reaching black: at least this many frames dimming, and brightening
DIP_SHARE = 0.35  # its dimmest frame at most this share of the brightness on either side


@dataclass(frozen=True)
class Boundary:
    pos: int  # position of the new scene's first frame
    kind: str  # "cut", "dissolve" or "fade"
    span: tuple[int, int] | None = None  # a dissolve's window or a fade's dark run (positions, inclusive)


def _thumbs(s: Scores) -> np.ndarray:
    return s.thumbs.reshape(len(s.thumbs), -1).astype(np.float32)


def _norm_luma(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each thumbnail's luma with its mean removed and scaled to unit norm (so a dot product is a correlation
    that ignores gain and offset), and its spread (standard deviation, levels)."""
    luma = t.reshape(len(t), -1, 3).mean(-1)
    luma -= luma.mean(1, keepdims=True)
    spread = np.sqrt((luma * luma).mean(1))
    luma /= np.maximum(spread[:, None] * np.sqrt(luma.shape[1]), 1e-6)
    return luma, spread


def _dist(t: np.ndarray, a, b) -> np.ndarray:
    return np.abs(t[a] - t[b]).mean(-1)


def is_flash(s: Scores, p: int, t: np.ndarray | None = None, span: int = FLASH_SPAN) -> bool:
    """Is the change at position p one edge of a flash (or any brief interruption): does the picture of
    just before the change come back within `span` frames, across it?"""
    t = _thumbs(s) if t is None else t
    n = len(t)
    if p < 1:
        return False
    jump = float(_dist(t, p - 1, p))
    for a in range(1, span + 1):
        for b in range(0, span + 2 - a):
            if (a, b) == (1, 0) or p - a < 0 or p + b >= n:
                continue
            if float(_dist(t, p - a, p + b)) < FLASH_SAME * jump:
                return True
    return False


def structure_cuts(s: Scores, min_len: MinLength = MinLength()) -> list[int]:
    """Cuts the HSV score cannot see (two pictures of the same colour): the adaptive rule on the luma
    structure score."""
    if s.structure is None:
        return []
    values = s.structure.copy()
    dark = s.intensity < DEFAULTS["threshold"]  # a picture rising out of black noise is a fade, not a cut
    values[dark] = 0
    values[1:][dark[:-1]] = 0
    # the HSV score must rise too, if not to its own floor: a pan whose last detail leaves the view (a blank
    # page follows) changes the structure but not the colours
    anywhere = MinLength(0.0, 0)
    hsv_rise = set(adaptive_cuts(s, STRUCT_HSV_RATIO, anywhere, min_content=0.0))
    cuts = {p for p in adaptive_cuts(s, STRUCT_RATIO, anywhere, min_content=STRUCT_MIN, values=values)
            if p in hsv_rise}
    # or the brightness steps at that frame alone while the structure changes (a text page panning, then a
    # blank white screen: colours and structure scores of the pan are as high as the cut's)
    step = np.r_[0.0, np.abs(np.diff(s.intensity.astype(np.float64)))]
    cuts |= {p for p in adaptive_cuts(s, STEP_RATIO, anywhere, min_content=STEP_MIN, values=step)
             if values[p] >= STRUCT_MIN}
    return sorted(cuts)


def dissolve_spans(s: Scores, threshold: float = DEFAULTS["threshold"]) -> list[tuple[int, int, int]]:
    """Cross-fades of 8-30 frames, each reported at its middle (the first frame where the new picture weighs
    at least half).

    For a window of 2k frames centred on c, with end frames A and B that differ enough: every sampled frame
    inside must be a mix of A and B (projected onto B - A, what is left over is small) whose weight ramps
    straight from 0 to 1, and stop there: frames k/2 beyond either end weigh ~0 and ~1 (a slow zoom over a
    smooth picture can look like a mix, but its change goes on past the window). A pan or a fast zoom moves the
    picture instead of mixing it, so it leaves a large remainder; a cut or a flash breaks the ramp. Windows
    whose end frames are dark belong to fades. Returns (first frame, middle, last frame) positions.
    """
    if s.thumbs is None or len(s.index) < 2 * DISSOLVE_HALVES[0] + 1:
        return []
    t = _thumbs(s)
    n = len(t)
    luma, spread = _norm_luma(t)
    found = []  # (c, k, badness, moving)
    for k in DISSOLVE_HALVES:
        if n < 2 * k + 1:
            break
        c = np.arange(k, n - k)
        m = max(2, k // 2)
        # Every test below is per window, so each one runs only on the windows the tests before it kept: the
        # per-frame ones first, the thumbnail-sized ones after (a scan's worth of 1.7 KB rows per test and k
        # was most of the time kvl spent after decoding).
        # A mix the video's end (or start) cuts off is not a dissolve: the other picture never shows in full.
        ok = (s.intensity[c - k] >= threshold) & (s.intensity[c + k] >= threshold)
        ok &= (c - k - m >= 0) & (c + k + m <= n - 1)
        ok &= np.maximum(spread[c - k], spread[c + k]) >= TEXTURED
        c = c[ok]
        # two different pictures: a fade or a lighting change mixes a picture with black, so its ends correlate
        # (two blank ends, plain colours, cannot tell: no call; a blank page dissolving into a picture can)
        c = c[(luma[c - k] * luma[c + k]).sum(1) < DISSOLVE_SAME]
        A, B = t[c - k], t[c + k]
        D = B - A
        change = np.abs(D).mean(1)
        ok = change >= DISSOLVE_MIN
        c, A, B, D, change = c[ok], A[ok], B[ok], D[ok], change[ok]
        # a fade towards black: the darker end is the brighter one times a gain, almost exactly (a dissolve
        # into a dark picture leaves 0.2 or more of the change unexplained; fades ~0.05). A dark end with
        # texture of its own (a night shot) is a picture, which the correlation test above already told
        # from the bright end (a dimmed copy correlates): next to a white page, any dark picture is close to
        # the page dimmed.
        first_brighter = s.intensity[c - k] >= s.intensity[c + k]
        bright, dark_end = np.where(first_brighter[:, None], A, B), np.where(first_brighter[:, None], B, A)
        gain = (bright * dark_end).sum(1) / np.maximum((bright * bright).sum(1), 1e-6)
        den = np.maximum((D * D).sum(1), 1e-6)
        ok = np.linalg.norm(dark_end - gain[:, None] * bright, axis=1) >= DISSOLVE_GAIN * np.sqrt((D * D).sum(1))
        ok |= np.where(first_brighter, spread[c + k], spread[c - k]) >= TEXTURED
        c, A, D, change, den = c[ok], A[ok], D[ok], change[ok], den[ok]
        worst = np.zeros(len(c), np.float32)
        off = np.zeros(len(c), np.float32)  # the largest miss of the straight ramp
        residual = DISSOLVE_RESIDUAL[0] + DISSOLVE_RESIDUAL[1] * k
        for q in sorted({-(k // 2), -(k // 4), 0, k // 4, k // 2}):
            X = t[c + q] - A
            alpha = (X * D).sum(1) / den
            resid = np.abs(X - alpha[:, None] * D).mean(1) / np.maximum(change, 1e-6)
            miss = np.abs(alpha - (0.5 + q / (2 * k)))
            ok = (miss <= DISSOLVE_ALPHA) & (resid <= (MOVING_RESIDUAL if k >= MOVING_K else residual))
            worst, off = np.maximum(worst, resid), np.maximum(off, miss)
            c, A, D, change, den, worst, off = c[ok], A[ok], D[ok], change[ok], den[ok], worst[ok], off[ok]
        # beyond the ends the mix stays put
        ok = np.ones(len(c), bool)
        settled = np.ones(len(c), bool)
        for q, want in ((-k - m, 0.0), (k + m, 1.0), (-k - 2 * m, 0.0), (k + 2 * m, 1.0)):
            alpha = ((t[np.clip(c + q, 0, n - 1)] - A) * D).sum(1) / den
            if abs(q) == k + m:
                ok &= np.abs(alpha - want) <= 2 * DISSOLVE_ALPHA
            settled &= np.abs(alpha - want) <= MOVING_SETTLED
        # over a long window both shots' motion adds up, and the ends are no longer the pictures being mixed:
        # such a mix may leave more unexplained if it ramps straighter and stays put twice as far beyond its
        # ends, which a pan or a zoom, whose change goes on, does not
        still = worst <= residual
        ok &= still | ((off <= MOVING_ALPHA) & settled)
        found += [(int(c[i]), k, float(worst[i]), not still[i]) for i in np.flatnonzero(ok)]
    # overlapping windows are one dissolve: keep the longest (ties: the cleanest mix); a window that passed
    # only as a moving mix counts only where no other window did (its looser fit reaches past the dissolve)
    found.sort(key=lambda f: (f[3], -f[1], f[2]))
    kept: list[tuple[int, int]] = []
    for c, k, _, _ in found:
        if all(abs(c - c2) > k + k2 for c2, k2 in kept):
            kept.append((c, k))
    # windows that touch are one long (or uneven) dissolve
    spans: list[list[int]] = []
    for c, k in sorted(kept):
        if spans and c - k <= spans[-1][1] + 2:
            spans[-1][1] = c + k
        else:
            spans.append([c - k, c + k])
    out = []
    for a, b in spans:
        # the window found may sit off-centre in a longer dissolve (its residual test fails first on the
        # longest windows): weigh every frame against the pictures a little beyond it, where the mix has
        # settled, so the middle and the ends are the transition's own
        e = max(4, b - a)  # the window can be half the dissolve: reach past the whole of it
        if a - e < 0 or b + e > n - 1:  # too near the video's start or end to see the mix settle
            continue
        lo, hi = a - e, b + e
        A, D = t[lo], t[hi] - t[lo]
        alpha = ((t[lo:hi + 1] - A) * D).sum(1) / max(float((D * D).sum()), 1e-6)
        # its frames: those around the half-way frame that weigh more than SETTLED of each picture
        first = last = lo + int(np.argmin(np.abs(alpha - 0.5)))
        while first > lo and SETTLED < alpha[first - 1 - lo] < 1 - SETTLED:
            first -= 1
        while last < hi and SETTLED < alpha[last + 1 - lo] < 1 - SETTLED:
            last += 1
        # the middle: where a straight line fitted to the weights over the dissolve reaches 0.5 (one noisy
        # frame near the half would move a plain threshold by a frame)
        x = np.arange(first, last + 1, dtype=np.float64)
        slope, icept = np.polyfit(x, alpha[first - lo:last + 1 - lo].astype(np.float64), 1)
        mid = int(np.ceil((0.5 - icept) / slope - 1e-9)) if slope > 0 else (first + last + 1) // 2
        out.append((first, min(max(mid, first), last), last))
    return out


def dip_fades(s: Scores, threshold: float = DEFAULTS["threshold"]) -> list[tuple[int, int, int]]:
    """Fades that dim one picture and bring up another without reaching black (`fade_cuts` sees only dark
    runs): the brightness falls steadily for DIP_RAMP frames or more to under DIP_SHARE of where it started,
    then rises as steadily, and the pictures on the two sides differ (a light dimmed and raised over one
    picture is no boundary). Returns (first, middle, last) positions; the middle is the first frame that
    looks more like the second picture than the first (normalised luma ignores the gain)."""
    if s.thumbs is None or len(s.intensity) < 2 * DIP_RAMP + 1:
        return []
    inten = s.intensity.astype(np.float64)
    n = len(inten)
    i = np.arange(DIP_RAMP, n - DIP_RAMP)
    # local minima above the dark threshold with room for both ramps; a ramp of DIP_RAMP frames puts the
    # frame DIP_RAMP away at least one FADE_STEP above the bottom (a vectorised necessary condition, so the
    # walk below runs on few frames even over hours of noisy footage)
    minima = i[(inten[i] <= inten[i - 1]) & (inten[i] <= inten[i + 1]) & (inten[i] >= threshold)
               & (inten[i - DIP_RAMP] > inten[i] * FADE_STEP) & (inten[i + DIP_RAMP] > inten[i] * FADE_STEP)]
    out: list[tuple[int, int, int]] = []
    for m in minima:
        if out and m <= out[-1][2]:
            continue
        # the two dimmest frames of such a fade belong to different pictures, each at the same small weight:
        # the first step away from the bottom (to m - 1, m + 1: not darker, m is a minimum) need not be steep
        a = m - 1
        while a > 0 and m - a < FADE_RAMP and inten[a - 1] > inten[a] * FADE_STEP:
            a -= 1
        b = m + 1
        while b < n - 1 and b - m < FADE_RAMP and inten[b + 1] > inten[b] * FADE_STEP:
            b += 1
        if m - a < DIP_RAMP or b - m < DIP_RAMP or inten[m] > DIP_SHARE * min(inten[a], inten[b]):
            continue
        # only these frames' thumbnails are needed: no copy of the whole scan's
        luma, _ = _norm_luma(s.thumbs[a:b + 1].reshape(b - a + 1, -1).astype(np.float32))
        if float(luma[0] @ luma[-1]) >= DISSOLVE_SAME:
            continue
        mid = next((a + j for j in range(1, b - a + 1) if luma[j] @ luma[-1] > luma[j] @ luma[0]), m)
        out.append((int(a) + 1, int(mid), int(b) - 1))  # the frames that are dimmed
    return out


def boundaries(s: Scores, detector: str = "adaptive", threshold: float | None = None,
               min_len: MinLength = MinLength(), fades: bool = True, fade_threshold: float = DEFAULTS["threshold"],
               fade_bias: float = 0.0, dissolves: bool = True, structure: bool = True) -> list[Boundary]:
    """Every scene boundary with its kind. With `structure`, cuts from the luma-structure score join the HSV
    detector's, and the edges of flashes are dropped; with `dissolves`, cross-fades are found too. With
    neither, the cuts are `detect`'s (PySceneDetect's detectors alone), each labelled."""
    if detector not in DEFAULTS:
        raise ValueError(f"unknown detector {detector!r}")
    t = DEFAULTS[detector] if threshold is None else threshold
    if detector == "threshold":
        return [Boundary(f.cut, "fade", (f.out, f.back - 1)) for f in fade_cuts(s, t, min_len, fade_bias)]
    fade_list = fade_cuts(s, fade_threshold, min_len, fade_bias) if fades else []
    use_thumbs = s.thumbs is not None
    hard = adaptive_cuts(s, t, min_len) if detector == "adaptive" else content_cuts(s, t, min_len)
    if not ((structure or dissolves) and use_thumbs):
        return _label(merge_cuts(hard, fade_list, s, min_len) if fades else hard, hard, fade_list)
    if structure:
        thumbs = _thumbs(s)
        hard = sorted(set(hard) | set(structure_cuts(s, min_len)))
        hard = [p for p in hard if not is_flash(s, p, thumbs)]
        hard = _spaced(hard, s, min_len)
    spans = dissolve_spans(s, fade_threshold) if dissolves else []
    dips = dip_fades(s, fade_threshold) if fades else []
    # a dip's pictures change where both are dim: any cut or dissolve found inside it is the dip itself
    spans = [sp for sp in spans if not any(sp[0] <= b + 1 and a - 1 <= sp[2] for a, _, b in dips)]
    hard = [p for p in hard if not any(a - 1 <= p <= b + 1 for a, _, b in dips)]
    # the first frames of a dissolve out of a dark shot, and the first frame after one into it, jump in hue
    # (near-black pixels): such a "cut" inside a dissolve's window or at its edges is the dissolve itself
    hard = [p for p in hard if not any(a - 2 <= p <= b + 2 for a, _, b in spans)]
    # a hard cut at a dark run's edge stands for the transition when it is a cut to (or from) black; when the
    # picture beside it is already dim, the picture was fading and the fade is reported at its middle
    inten = s.intensity
    hard = [p for p in hard if not (p > 0 and any(f.out - 1 <= p <= f.back + 1 for f in fade_list)
                                    and max(inten[p - 1], inten[p]) < FADE_BRIGHT * fade_threshold)]
    # nor is a "cut" on the ramp into or out of the dark run (a bright page dimming changes the structure
    # and colour scores early in the fade): the fade's middle is the boundary
    ramps = [_ramp(inten, f) for f in fade_list]
    hard = [p for p in hard if not any(a < p < f.out - 1 or f.back + 1 < p < b for (a, b), f in zip(ramps, fade_list))]
    out = _label(merge_cuts(hard, fade_list, s, min_len) if fades else hard, hard, fade_list)
    for kind, found in (("fade", dips), ("dissolve", spans)):
        for a, p, b in found:
            if all(min_len.ok(s, q.pos, p) if q.pos < p else min_len.ok(s, p, q.pos) for q in out):
                out.append(Boundary(p, kind, (a, b)))
    return sorted(out, key=lambda x: x.pos)


FADE_RAMP = 30  # frames: the longest fade into or out of black looked for
FADE_STEP = 1.03  # each frame of a fade-out this much darker than the one before (at least)


def _ramp(inten: np.ndarray, f: Fade) -> tuple[int, int]:
    """The frames dimming steadily into the fade's dark run and brightening out of it: (first, last)."""
    a = f.out - 1
    while a > 0 and f.out - a < FADE_RAMP and inten[a - 1] > inten[a] * FADE_STEP:
        a -= 1
    b = f.back
    while b < len(inten) - 1 and b - f.back < FADE_RAMP and inten[b + 1] > inten[b] * FADE_STEP:
        b += 1
    return a, b


def _label(cuts: list[int], hard: list[int], fade_list: list[Fade]) -> list[Boundary]:
    """Fade midpoints are fades; hard cuts are cuts, a cut to or from black included (its frame is exact)."""
    hard_set = set(hard)
    out = []
    for p in cuts:
        f = None if p in hard_set else next((f for f in fade_list if f.out - 1 <= p <= f.back + 1), None)
        out.append(Boundary(p, "fade", (f.out, f.back - 1)) if f else Boundary(p, "cut"))
    return out


def _spaced(cuts: list[int], s: Scores, min_len: MinLength) -> list[int]:
    """Sorted cuts with none closer than the minimum length to the previous kept one (the first wins)."""
    kept, last = [], 0
    for p in cuts:
        if min_len.ok(s, last, p):
            kept.append(p)
            last = p
    return kept


def detect(s: Scores, detector: str = "adaptive", threshold: float | None = None,
           min_len: MinLength = MinLength(), fades: bool = True, fade_threshold: float = DEFAULTS["threshold"],
           fade_bias: float = 0.0) -> list[int]:
    """Cut positions (each the first frame of a new scene) of PySceneDetect's detectors alone (no structure
    channel, no dissolves): `boundaries` is what `kvl video scenes` reports."""
    if detector not in DEFAULTS:
        raise ValueError(f"unknown detector {detector!r}")
    t = DEFAULTS[detector] if threshold is None else threshold
    if detector == "threshold":
        return [f.cut for f in fade_cuts(s, t, min_len, fade_bias)]
    hard = adaptive_cuts(s, t, min_len) if detector == "adaptive" else content_cuts(s, t, min_len)
    if not fades:
        return hard
    return merge_cuts(hard, fade_cuts(s, fade_threshold, min_len, fade_bias), s, min_len)
