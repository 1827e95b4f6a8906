"""The detection scan: every frame of [start, end), downscaled, with its frame number and real time (tasks.md §4).

Decoding is most of shot detection's work, so the scan is a pipeline of threads: one decodes, one turns decoded
frames into downscaled batches, and the caller scores them meanwhile. PyAV releases the GIL inside FFmpeg's
decode and swscale calls and numpy inside its loops, so the stages overlap: on two cores the wall time is about
the decoding time alone (KVL_DECODE_THREAD=0 runs everything in the caller).

PyAV (default): sequential decoding in full (deblocking included), then the pixels PySceneDetect would see.
It converts each whole frame to RGB and shrinks it with OpenCV's INTER_LINEAR; at odd whole factors (1280x720
-> 256x144 is 5) that is a plain subsample, and `_Subsampler` produces exactly those pixels from the YUV planes
at a fraction of the cost. Exactness matters because the hue of near-black pixels turns on the last bit of
rounding, and such hues decide cuts inside fades. Other factors use swscale's POINT sampling in one step with
the RGB conversion (close, not identical). `fast` skips the H.264/HEVC deblocking filter (~20% less decoding);
its blocking is invisible at 256 px, but it moves borderline scores. decord is the alternative backend.
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
    rgb: np.ndarray  # uint8 [n, 3, h, w] planar RGB


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


def pysd_grid(src: int, dst: int) -> np.ndarray | None:
    """The source pixel PySceneDetect's downscale reads for each output pixel along one axis, or None.

    OpenCV's INTER_LINEAR maps output pixel d to source coordinate (d + 0.5) * src / dst - 0.5: when src/dst is
    an odd integer (or 1) that is a whole pixel, so the downscaled frame is a plain subsample of the full-size
    RGB frame. Otherwise it blends two pixels per axis and we approximate it (swscale's POINT sampling).
    """
    if dst <= 0 or src % dst:
        return None
    step = src // dst
    return np.arange(dst) * step + (step - 1) // 2 if step % 2 else None


# 8-bit planar YUV that swscale's unscaled YUV->RGB path converts pixel by pixel (each pixel from its own Y and
# its chroma sample, no interpolation): assembled into 4:2:2, a subsample converts to the same RGB values as
# the full frame does (checked against every Y, U, V combination). -> (4:2:2 format, rows per chroma row)
_EXACT = {"yuv420p": ("yuv422p", 2), "yuvj420p": ("yuvj422p", 2), "yuv422p": ("yuv422p", 1),
          "yuvj422p": ("yuvj422p", 1)}


def _step(grid: np.ndarray) -> int:
    return int(grid[1] - grid[0]) if len(grid) > 1 else 1


def _half(grid: np.ndarray, parity: int, sub: int) -> slice:
    """The chroma rows (or columns) under grid[parity::2], with chroma subsampled by `sub`, as a slice."""
    part = grid[parity::2] // sub
    return slice(int(part[0]), None, int(part[1] - part[0]) if len(part) > 1 else 1)


class _Subsampler:
    """Frames in PySceneDetect's exact detection pixels, cheaply.

    PySceneDetect converts each full frame to RGB, then downscales. The colour of near-black pixels swings
    with the last bit of RGB rounding, and the hue of such pixels decides some cuts inside fades, so the same
    decisions need the same pixels. Converting whole frames costs as much as decoding them; instead the Y, U
    and V samples under each output pixel are gathered into one small 4:2:2 frame per batch (Y on even columns,
    each pixel its own chroma) and swscale converts that: same code, same rounding, 2 pixels converted per
    output pixel instead of factor² (at 1280x720 -> 256x144, 1/12 of the work).
    """

    def __init__(self, w: int, h: int, batch: int):
        self.w, self.h, self.batch = w, h, batch
        self.key = None  # (format, colorspace, width, height) of the frames being assembled
        self.big = None
        self.slots: list[int] = []

    def accepts(self, frame) -> bool:
        fmt = frame.format.name
        if fmt not in _EXACT:
            return False
        key = (fmt, frame.colorspace, frame.width, frame.height)
        if key == self.key:
            return True
        ys, xs = pysd_grid(frame.height, self.h), pysd_grid(frame.width, self.w)
        return ys is not None and xs is not None

    def put(self, slot: int, frame, out: np.ndarray) -> None:
        import av

        key = (frame.format.name, frame.colorspace, frame.width, frame.height)
        if key != self.key:
            self.flush(out)
            fmt, rows = _EXACT[key[0]]
            self.key = key
            ys, xs = pysd_grid(frame.height, self.h), pysd_grid(frame.width, self.w)
            # every gather is a strided slice: the grid is start + step * k, and its chroma positions (halved)
            # alternate between two such progressions, one for even k and one for odd k
            self.luma = (slice(int(ys[0]), None, _step(ys)), slice(int(xs[0]), None, _step(xs)))
            self.chroma = [(dy, dx, _half(ys, dy, rows), _half(xs, dx, 2))
                           for dy in range(min(2, self.h)) for dx in range(min(2, self.w))]
            self.big = av.VideoFrame(2 * self.w, self.h * self.batch, fmt)
            self.big.colorspace = frame.colorspace
            lines = [np.frombuffer(p, np.uint8).reshape(self.h * self.batch, -1) for p in self.big.planes]
            self.Y, self.U, self.V = lines[0][:, 0:2 * self.w:2], lines[1][:, :self.w], lines[2][:, :self.w]
        h, w = self.h, self.w
        planes = frame.planes
        y = np.frombuffer(planes[0], np.uint8).reshape(frame.height, -1)
        self.Y[slot * h:(slot + 1) * h] = y[self.luma][:h, :w]
        for plane, dst in ((planes[1], self.U), (planes[2], self.V)):
            c = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
            d = dst[slot * h:(slot + 1) * h]
            for dy, dx, sy, sx in self.chroma:
                part = d[dy::2, dx::2]
                part[...] = c[sy, sx][:part.shape[0], :part.shape[1]]
        self.slots.append(slot)

    def flush(self, out: np.ndarray) -> None:
        """Convert the assembled slots into out[slot] (planar RGB)."""
        if not self.slots:
            return
        h, w = self.h, self.w
        lo, hi = self.slots[0], self.slots[-1] + 1  # slots are filled in order, so they are consecutive
        rgb = self.big.reformat(format="gbrp")
        for dst, plane in ((1, 0), (2, 1), (0, 2)):  # gbrp planes are G, B, R
            p = rgb.planes[plane]
            a = np.frombuffer(p, np.uint8).reshape(-1, p.line_size)[lo * h:hi * h, 0:2 * w:2]
            out[lo:hi, dst] = a.reshape(hi - lo, h, w)
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
    """Decoded frames -> batches of detection pixels (see `_Subsampler`)."""
    from av.video.reformatter import Interpolation, VideoReformatter

    w, h = size
    reformatter = VideoReformatter()
    sampler = _Subsampler(w, h, batch)
    buf = np.empty((batch, 3, h, w), np.uint8)
    idx, tms, n = np.empty(batch, np.int64), np.empty(batch), 0
    try:
        for group in groups:
            for i, frame in group:
                if sampler.accepts(frame):
                    sampler.put(n, frame, buf)
                else:
                    sampler.flush(buf)  # its slots must stay consecutive
                    small = reformatter.reformat(frame, w, h, "gbrp", interpolation=Interpolation.POINT)
                    for dst, plane in ((1, 0), (2, 1), (0, 2)):  # gbrp planes are G, B, R
                        p = small.planes[plane]
                        buf[n, dst] = np.frombuffer(p, np.uint8).reshape(h, p.line_size)[:, :w]
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
        yield FrameBatch(ids, info.times[ids], np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
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
