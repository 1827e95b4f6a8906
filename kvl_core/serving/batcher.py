"""The request queue in front of the engine: one engine thread, requests grouped into `chat_batch` calls.

The engine decodes a static, left-padded batch (kvl_core/generation.py), so a request that arrives while
a batch runs waits for the next one; every request waiting then, whose sampling options match the
oldest one's, goes in together (up to `max_batch_size`). Rows may differ in `max_tokens`: the batch runs
to the largest and `should_stop` ends each row at its own limit, or at once when its client has gone.

Seeded sampling runs alone: rows of a batch share one random generator, so a seed would not reproduce.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kvl_core.engine import ChatResult

_ids = itertools.count()


@dataclass
class Job:
    messages: list[dict]
    options: dict[str, Any]  # sampling options except max_new_tokens
    max_new_tokens: int
    finish: Callable[[ChatResult | BaseException], None]  # called once, from the engine thread
    on_delta: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    streamed: bool = False
    serial: int = field(default_factory=lambda: next(_ids))

    def key(self) -> tuple:
        if self.options.get("seed") is not None and self.options.get("temperature", 1) != 0:
            return ("alone", self.serial)
        return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in self.options.items()))


class Batcher:
    def __init__(self, engine: Any, max_batch_size: int = 16, batch_wait: float = 0.005):
        self.engine = engine
        self.max_batch_size = max(1, max_batch_size)
        self.batch_wait = batch_wait
        self._pending: collections.deque[Job] = collections.deque()
        self._cv = threading.Condition()
        self._closed = False
        # cancelled: requests dropped from the queue or stopped mid-generation because their client left
        self.stats = {"batches": 0, "requests": 0, "largest_batch": 0, "cancelled": 0, "completion_tokens": 0,
                      "engine_seconds": 0.0}
        self._thread = threading.Thread(target=self._loop, name="kvl-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self._pending.append(job)
            self._cv.notify()

    def queued(self) -> int:
        return len(self._pending)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout=5)

    # ---- the engine thread ---------------------------------------------------------------------

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if self._closed:
                return None
            if self.max_batch_size > 1 and len(self._pending) < self.max_batch_size and self.batch_wait > 0:
                # Clients that fire together arrive a few ms apart: give them a moment to join this batch.
                self._cv.wait(self.batch_wait)
            live = [j for j in self._pending if not j.cancelled.is_set()]
            self.stats["cancelled"] += len(self._pending) - len(live)
            if not live:
                self._pending.clear()
                return []
            key = live[0].key()
            group = [j for j in live if j.key() == key][: self.max_batch_size]
            taken = {id(j) for j in group}
            self._pending = collections.deque(j for j in live if id(j) not in taken)
            return group

    def _loop(self) -> None:
        while (group := self._take()) is not None:
            if group:
                self._run(group)

    def _run(self, group: list[Job]) -> None:
        self.stats["batches"] += 1
        self.stats["requests"] += len(group)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(group))

        def on_delta(row: int, text: str) -> None:
            job = group[row]
            if job.on_delta is not None and not job.cancelled.is_set():
                job.streamed = True
                job.on_delta(text)

        def should_stop(row: int, n: int) -> str | None:
            job = group[row]
            if job.cancelled.is_set():
                return "cancelled"
            return "length" if n >= job.max_new_tokens else None

        t0 = time.perf_counter()
        try:
            results = self.engine.chat_batch([j.messages for j in group], on_delta=on_delta, should_stop=should_stop,
                                             max_new_tokens=max(j.max_new_tokens for j in group), **group[0].options)
        except Exception as e:  # noqa: BLE001 -- reported to the request(s), never kills the engine thread
            if len(group) == 1:
                group[0].finish(e)
                return
            # One conversation the checks missed must not fail its neighbours: retry each on its own
            # (a row that already streamed text cannot be replayed without repeating itself).
            for job in group:
                if job.streamed:
                    job.finish(e)
                else:
                    self._run([job])
            return
        self.stats["engine_seconds"] += time.perf_counter() - t0
        for job, res in zip(group, results):
            self.stats["completion_tokens"] += res.completion_tokens
            self.stats["cancelled"] += res.finish_reason == "cancelled"
            job.finish(res)
