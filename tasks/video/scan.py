"""The detection scan: every frame of [start, end), downscaled, with its frame number and real time (tasks.md §4).

Decoding is ~80% of shot detection's work, so it runs in a background thread that hands ready downscaled batches
to the caller, which scores them meanwhile: PyAV releases the GIL inside FFmpeg's decode and swscale calls and
numpy inside its loops, so the two overlap on two cores (KVL_DECODE_THREAD=0 runs everything in the caller).

PyAV (default): sequential decoding, swscale downscaling and converting to planar RGB in one step (POINT
sampling, which is what PySceneDetect's linear resize does at its integer factors), and the deblocking filter of
H.264/HEVC skipped (`fast`: ~30% less decoding; the blocking it leaves is far below any cut threshold at 256 px,
and frames for people and the model are decoded in full by decode.grab). decord is the alternative backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

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
         backend: str = "pyav", fast: bool = True, batch: int = 16) -> Iterator[FrameBatch]:
    """Every frame with start <= time < end, downscaled to `width` px wide, in display order, in batches."""
    first = info.first_at_or_after(start)
    stop = info.frame_count if end is None else info.first_at_or_after(end)
    if first >= stop:
        return iter(())
    size = detect_size(info, width)
    gen = _scan_here(info, size, first, stop, fast, batch, backend)
    return gen if os.environ.get("KVL_DECODE_THREAD", "1") == "0" else _in_thread(gen)


def _scan_here(info: VideoInfo, size: tuple[int, int], first: int, stop: int, fast: bool, batch: int,
               backend: str) -> Iterator[FrameBatch]:
    if backend == "decord":
        vr = _decord_reader(info, size)
        if vr is not None:
            yield from _scan_decord(vr, info, first, stop, batch)
            return
    yield from _scan_pyav(info, size, first, stop, fast, batch)


def _scan_pyav(info: VideoInfo, size: tuple[int, int], first: int, stop: int, fast: bool,
               batch: int) -> Iterator[FrameBatch]:
    import av
    from av.video.reformatter import Interpolation, VideoReformatter

    w, h = size
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
        reformatter = VideoReformatter()
        buf = np.empty((batch, 3, h, w), np.uint8)
        idx, tms, n, counter = np.empty(batch, np.int64), np.empty(batch), 0, first
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
                small = reformatter.reformat(frame, w, h, "gbrp", interpolation=Interpolation.POINT)
                for dst, plane in ((1, 0), (2, 1), (0, 2)):  # gbrp planes are G, B, R
                    p = small.planes[plane]
                    buf[n, dst] = np.frombuffer(p, np.uint8).reshape(h, p.line_size)[:, :w]
                idx[n], tms[n] = i, info.times[min(i, info.frame_count - 1)]
                n += 1
                if n == batch:
                    yield FrameBatch(idx.copy(), tms.copy(), buf.copy())
                    n = 0
        except av.error.FFmpegError as e:
            if counter <= first:
                raise KvlError(f"{info.path}: cannot decode the video ({e})") from None
            # a damaged tail: what was decoded stands
        if n:
            yield FrameBatch(idx[:n].copy(), tms[:n].copy(), buf[:n].copy())
    finally:
        container.close()


def _scan_decord(vr, info: VideoInfo, first: int, stop: int, batch: int) -> Iterator[FrameBatch]:
    for a in range(first, stop, batch):
        ids = np.arange(a, min(stop, a + batch))
        rgb = vr.get_batch(ids.tolist()).asnumpy()
        yield FrameBatch(ids, info.times[ids], np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
    vr.seek(0)  # decord keeps decoding ahead after get_batch (dmlc/decord#197)


# ---- the decoding thread -------------------------------------------------------------------------------------

_DONE = object()


def _in_thread(gen: Iterator[FrameBatch], depth: int = 4) -> Iterator[FrameBatch]:
    """Run `gen` in a background thread, handing its batches over through a bounded queue.

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

    worker = threading.Thread(target=produce, name="kvl-video-decode", daemon=True)
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
