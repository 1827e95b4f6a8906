"""The detection scan: every frame of [start, end), downscaled, with its frame number and real time (tasks.md §4).

Decoding is most of shot detection's work, so the scan is a pipeline of threads: one decodes, one turns decoded
frames into downscaled batches, and the caller scores them meanwhile. PyAV releases the GIL inside FFmpeg's
decode and swscale calls and numpy inside its loops, so the stages overlap: on two cores the wall time is about
the decoding time alone (KVL_DECODE_THREAD=0 runs everything in the caller).

PyAV (default): sequential decoding in full (deblocking included), then the pixels PySceneDetect would see:
it converts each whole frame to RGB and shrinks it with OpenCV's INTER_LINEAR, and `_Sampler` produces those
pixels from the YUV planes at a fraction of the cost (exactly at odd whole factors, within one level at
others). Exactness matters because the hue of near-black pixels turns on the last bit of rounding, and such
hues decide cuts inside fades. `fast` skips the H.264/HEVC deblocking filter (~20% less decoding); its blocking
is invisible at 256 px, but it moves borderline scores. decord is the alternative backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Generator, Iterator

import numpy as np

from kvl_core.errors import KvlError

from .decode import DETECT_WIDTH, VideoInfo, _decord_reader, _frame_index, _open, detect_size

# Decoder threads: all cores but the one that scores frames (at most 8). Frame threads cost ~40-70% more CPU
# per frame than one decoding thread (measured on H.264), so they only pay where cores are spare. Override with
# KVL_DECODE_THREADS (0: FFmpeg decides).
DECODE_THREADS = int(os.environ.get("KVL_DECODE_THREADS") or min(8, max(1, (os.cpu_count() or 2) - 1)))


@dataclass
class FrameBatch:
    index: np.ndarray  # int64 [n] frame numbers (0-based, display order)
    time: np.ndarray  # float64 [n] seconds
    rgb: np.ndarray  # uint8 [n, h, w, 3] packed RGB


def scan(info: VideoInfo, width: int = DETECT_WIDTH, start: float = 0.0, end: float | None = None,
         backend: str = "pyav", fast: bool = False, batch: int = 16) -> Iterator[FrameBatch]:
    """Every frame with start <= time < end, downscaled to `width` px wide, in display order, in batches."""
    first = info.first_at_or_after(start)
    stop = info.frame_count if end is None else info.first_at_or_after(end)
    if first >= stop:
        return iter(())
    size = detect_size(info, width)
    threaded = os.environ.get("KVL_DECODE_THREAD", "1") != "0"
    vr = _decord_reader(info, size) if backend == "decord" else None
    if vr is not None:
        gen = _scan_decord(vr, info, first, stop, batch)
    else:
        # two stages: decoding, and turning decoded frames into detection pixels; each gets its own thread
        # so that the next frame decodes while the previous one is subsampled and the one before is scored
        frames = _decode_pyav(info, first, stop, fast)
        if threaded:
            frames = _in_thread(frames, depth=4, name="kvl-video-decode")
        gen = _pyav_batches(frames, info, size, batch)
    return _in_thread(gen, name="kvl-video-pixels") if threaded else gen


def pysd_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PySceneDetect's downscale along one axis: for each output pixel, its two source pixels and the weight of
    the second, in OpenCV INTER_LINEAR's fixed point (out of 2048).

    OpenCV maps output pixel d to source coordinate (d + 0.5) * src / dst - 0.5 (float32), clamped to the image;
    the fraction becomes a short out of 2048. When src/dst is an odd integer (or 1) every weight is 0: the
    downscale is a plain subsample.
    """
    d = np.arange(dst)
    fx = ((d + 0.5) * (src / dst) - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = fx - sx
    fx[sx < 0], sx[sx < 0] = 0, 0
    high = sx >= src - 1
    fx[high], sx[high] = 0, src - 1
    return sx, np.minimum(sx + 1, src - 1), np.round(fx * 2048).astype(np.int32)


# 8-bit planar YUV that swscale's unscaled YUV->RGB path converts pixel by pixel (each pixel from its own Y and
# its chroma sample, no interpolation): assembled into 4:2:2, a subsample converts to the same RGB values as
# the full frame does (checked against every Y, U, V combination). -> (4:2:2 format, rows per chroma row)
_EXACT = {"yuv420p": ("yuv422p", 2), "yuvj420p": ("yuvj422p", 2), "yuv422p": ("yuv422p", 1),
          "yuvj422p": ("yuvj422p", 1)}


class _Sampler:
    """Frames in PySceneDetect's detection pixels, cheaply.

    PySceneDetect converts each full frame to RGB, then shrinks it with OpenCV's INTER_LINEAR, which reads at
    most 2x2 source pixels per output pixel. Converting whole frames costs as much as decoding them; instead the
    Y, U and V samples under just those source pixels are gathered into one small 4:2:2 frame per batch (Y on
    even columns, so each pixel has its own chroma) and swscale converts that: same code, same rounding as the
    full-size conversion. At odd whole factors (1280x720 -> 256x144 is 5) the gathered pixels are the result,
    identical to PySceneDetect's. Otherwise (1920 -> 256 is 7.5, 640 -> 256 is 2.5) the 2x2 pixels are blended
    with their INTER_LINEAR weights by cv2.remap, whose fixed point differs from resize's by at most one level
    on some pixels. Sampling one pixel instead (swscale's POINT) raises every score of a camera move by ~7% at
    2.5x, which was enough to lose cuts PySceneDetect finds after pans.
    """

    def __init__(self, w: int, h: int, batch: int):
        self.w, self.h, self.batch = w, h, batch
        self.key = None  # (format, colorspace, width, height, line sizes) of the frames being assembled
        self.slots: list[int] = []

    def accepts(self, frame) -> bool:
        return frame.format.name in _EXACT

    def _setup(self, frame, key) -> None:
        import av
        import cv2

        fmt, rows_per_chroma = _EXACT[key[0]]
        y0, y1, fy = pysd_taps(frame.height, self.h)
        x0, x1, fx = pysd_taps(frame.width, self.w)
        two_y, two_x = bool(fy.any()), bool(fx.any())
        rows = np.stack([y0, y1], 1).ravel() if two_y else y0
        cols = np.stack([x0, x1], 1).ravel() if two_x else x0
        self.gh, self.gw = len(rows), len(cols)
        ls = [p.line_size for p in frame.planes]
        self.luma = rows[:, None] * ls[0] + cols[None, :]
        self.chroma = [(rows // rows_per_chroma)[:, None] * ls[k] + (cols // 2)[None, :] for k in (1, 2)]
        self.big = av.VideoFrame(2 * self.gw, self.gh * self.batch, fmt)
        self.big.colorspace = frame.colorspace
        lines = [np.frombuffer(p, np.uint8).reshape(self.gh * self.batch, -1) for p in self.big.planes]
        self.Y, self.U, self.V = lines[0][:, 0:2 * self.gw:2], lines[1][:, :self.gw], lines[2][:, :self.gw]
        self.maps = None
        if two_x or two_y:  # output (i, j) reads the gathered frame at (2i + fy, 2j + fx) (pairs side by side)
            mx = (np.arange(self.w) * (2 if two_x else 1) + fx / 2048).astype(np.float32)
            my = (np.arange(self.h) * (2 if two_y else 1) + fy / 2048).astype(np.float32)
            self.maps = cv2.convertMaps(np.broadcast_to(mx[None, :], (self.h, self.w)).copy(),
                                        np.broadcast_to(my[:, None], (self.h, self.w)).copy(), cv2.CV_16SC2)
        self.key = key

    def put(self, slot: int, frame, out: np.ndarray) -> None:
        planes = frame.planes
        key = (frame.format.name, frame.colorspace, frame.width, frame.height, tuple(p.line_size for p in planes))
        if key != self.key:
            self.flush(out)
            self._setup(frame, key)
        rows = slice(slot * self.gh, (slot + 1) * self.gh)
        self.Y[rows] = np.frombuffer(planes[0], np.uint8)[self.luma]
        self.U[rows] = np.frombuffer(planes[1], np.uint8)[self.chroma[0]]
        self.V[rows] = np.frombuffer(planes[2], np.uint8)[self.chroma[1]]
        self.slots.append(slot)

    def flush(self, out: np.ndarray) -> None:
        """Convert the assembled slots into out[slot] (packed RGB)."""
        if not self.slots:
            return
        import cv2

        gh = self.gh
        lo, hi = self.slots[0], self.slots[-1] + 1  # slots are filled in order, so they are consecutive
        p = self.big.reformat(format="rgb24").planes[0]
        rgb = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[lo * gh:hi * gh, :6 * self.gw]
        rgb = rgb.reshape(hi - lo, gh, self.gw, 6)[..., :3]  # the even (real) pixels
        if self.maps is None:
            out[lo:hi] = rgb
        else:
            for k in range(hi - lo):
                cv2.remap(np.ascontiguousarray(rgb[k]), *self.maps, cv2.INTER_LINEAR, dst=out[lo + k])
        self.slots = []


# Decoded frames travel between threads in groups: fewer queue hand-offs, and at most 4 groups (16 frames,
# ~50 MB at 1080p) wait in the queue.
_GROUP = 4


def _decode_pyav(info: VideoInfo, first: int, stop: int, fast: bool) -> Iterator[list]:
    """Decoded frames [first, stop) in display order, as groups of (frame number, av.VideoFrame)."""
    import av

    container = _open(info.path)
    try:
        stream = container.streams.video[0]
        if DECODE_THREADS != 1:
            stream.thread_type = "AUTO"
            stream.thread_count = DECODE_THREADS
        if fast:
            stream.codec_context.options = {"skip_loop_filter": "all"}
        if first > 0:  # seek to the keyframe before the first wanted frame, then decode forward
            container.seek(int(info.pts[first]), stream=stream, backward=True, any_frame=False)
        group: list = []
        counter = first
        try:
            for frame in container.decode(stream):
                i = _frame_index(info, frame.pts)
                if i < 0:  # no usable pts: the next slot in display order
                    i = counter
                counter = i + 1
                if i < first:
                    continue
                if i >= stop:
                    break
                group.append((i, frame))
                if len(group) == _GROUP:
                    yield group
                    group = []
        except av.error.FFmpegError as e:
            if counter <= first:
                raise KvlError(f"{info.path}: cannot decode the video ({e})") from None
            # a damaged tail: what was decoded stands
        if group:
            yield group
    finally:
        container.close()


def _pyav_batches(groups: Generator[list, None, None], info: VideoInfo, size: tuple[int, int],
                  batch: int) -> Iterator[FrameBatch]:
    """Decoded frames -> batches of detection pixels (see `_Sampler`)."""
    import cv2

    cv2.setNumThreads(1)  # tiny images: OpenCV's worker pool would only compete with the decoder for cores
    w, h = size
    sampler = _Sampler(w, h, batch)
    buf = np.empty((batch, h, w, 3), np.uint8)
    idx, tms, n = np.empty(batch, np.int64), np.empty(batch), 0
    try:
        for group in groups:
            for i, frame in group:
                if sampler.accepts(frame):
                    sampler.put(n, frame, buf)
                else:  # other pixel formats (4:4:4, 10-bit ...): PySceneDetect's own way, whole frame then resize
                    sampler.flush(buf)  # its slots must stay consecutive
                    cv2.resize(frame.to_ndarray(format="rgb24"), (w, h), dst=buf[n], interpolation=cv2.INTER_LINEAR)
                idx[n], tms[n] = i, info.times[min(i, info.frame_count - 1)]
                n += 1
                if n == batch:
                    sampler.flush(buf)
                    yield FrameBatch(idx.copy(), tms.copy(), buf.copy())
                    n = 0
        if n:
            sampler.flush(buf)
            yield FrameBatch(idx[:n].copy(), tms[:n].copy(), buf[:n].copy())
    finally:
        groups.close()  # stops the decoding thread and closes the container


def _scan_decord(vr, info: VideoInfo, first: int, stop: int, batch: int) -> Iterator[FrameBatch]:
    for a in range(first, stop, batch):
        ids = np.arange(a, min(stop, a + batch))
        rgb = vr.get_batch(ids.tolist()).asnumpy()
        yield FrameBatch(ids, info.times[ids], np.ascontiguousarray(rgb))
    vr.seek(0)  # decord keeps decoding ahead after get_batch (dmlc/decord#197)


# ---- pipeline threads ----------------------------------------------------------------------------------------

_DONE = object()


def _in_thread(gen: Iterator, depth: int = 4, name: str = "kvl-video-decode") -> Iterator:
    """Run `gen` in a background thread, handing its items over through a bounded queue.

    Ctrl-C lands in the consumer (the main thread); the producer notices `stop` within 0.1 s and closes its
    container. Exceptions in the producer are re-raised in the consumer.
    """
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # noqa: BLE001 -- re-raised in the consumer's thread
            q.put(e)
        finally:
            gen.close()

    worker = threading.Thread(target=produce, name=name, daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
