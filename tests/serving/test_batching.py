"""The pieces under `kvl serve`, in process: the per-row stop hook of generation, per-row streaming of the engine,
the batcher's grouping/cancellation/isolation, stop-string hold-back, and the key and body-size guard."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from kvl_core.engine import ChatResult, Engine
from kvl_core.generation import SamplingParams
from kvl_core.serving.app import ServeConfig, _StopHold, create_app
from kvl_core.serving.batcher import Batcher, Job


@pytest.fixture(scope="module")
def engine(tiny_dir):
    return Engine.load(str(tiny_dir))


def test_should_stop_ends_one_row_and_leaves_the_others_exact(engine):
    convs = [[{"role": "user", "content": "first"}], [{"role": "user", "content": "the second one, longer"}]]
    deltas: dict[int, str] = {0: "", 1: ""}

    def on_delta(row, text):
        deltas[row] += text

    res = engine.chat_batch(convs, on_delta=on_delta, should_stop=lambda row, n: "cancelled" if row == 0 and n >= 2 else None,
                            max_new_tokens=10, temperature=0)
    assert res[0].finish_reason == "cancelled" and res[0].completion_tokens == 2
    alone = engine.chat(convs[1], max_new_tokens=10, temperature=0)
    assert res[1].text == alone.text and res[1].completion_tokens == alone.completion_tokens
    assert deltas[0] == res[0].text and deltas[1] == res[1].text  # every row streams, not just the first
    # the old single-stream callback still sees row 0 only
    seen = []
    engine.chat_batch(convs, on_text=seen.append, max_new_tokens=4, temperature=0)
    assert "".join(seen) == engine.chat(convs[0], max_new_tokens=4, temperature=0).text


def _result(text: str, n: int = 1, finish: str = "stop") -> ChatResult:
    return ChatResult(text, text, None, False, finish, 1, n, 0, 0.0, 0.0)


class FakeEngine:
    """Records chat_batch calls; the first call blocks until released, so that later jobs queue up."""

    name = "fake"
    context_length = 64

    def __init__(self):
        self.calls: list[tuple[list, dict]] = []
        self.release = threading.Event()

    def sampling(self, **kw):
        return SamplingParams(max_new_tokens=8)

    def chat_batch(self, convs, on_delta=None, should_stop=None, **options):
        self.calls.append(([c[0]["content"] for c in convs], options))
        if len(self.calls) == 1:
            self.release.wait(10)
        if any(c[0]["content"] == "poison" for c in convs):
            raise RuntimeError("bad row")
        out = []
        for row, c in enumerate(convs):
            n, reason = 0, "length"
            while n < options["max_new_tokens"]:
                n += 1
                if on_delta:
                    on_delta(row, "x")
                if should_stop and (r := should_stop(row, n)):
                    reason = r
                    break
            out.append(_result(c[0]["content"] + ":" + "x" * n, n, reason))
        return out


def _job(text: str, results: dict, max_new: int = 4, **options) -> Job:
    return Job([{"role": "user", "content": text}], options, max_new, finish=lambda r: results.__setitem__(text, r))


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_batcher_groups_compatible_requests_and_isolates_failures():
    eng = FakeEngine()
    b = Batcher(eng, max_batch_size=3, batch_wait=0)
    got: dict = {}
    b.submit(_job("first", got))
    _wait(lambda: eng.calls)
    jobs = [_job("a", got, 2, temperature=0), _job("b", got, 5, temperature=0), _job("s1", got, temperature=1.0, seed=1),
            _job("c", got, 3, temperature=0), _job("d", got, temperature=0), _job("gone", got, temperature=0),
            _job("t", got, temperature=0.7)]
    jobs[5].cancelled.set()  # its client left while it waited
    for j in jobs:
        b.submit(j)
    eng.release.set()
    _wait(lambda: len(got) == 7)
    b.close()
    batches = [c[0] for c in eng.calls[1:]]
    assert batches == [["a", "b", "c"], ["s1"], ["d"], ["t"]]  # oldest first; seeded sampling alone; max 3
    assert eng.calls[1][1]["max_new_tokens"] == 5  # the batch runs to its largest budget ...
    assert got["a"].completion_tokens == 2 and got["a"].finish_reason == "length"  # ... each row stops at its own
    assert got["b"].completion_tokens == 5 and "gone" not in got
    assert b.stats["cancelled"] == 1 and b.stats["largest_batch"] == 3

    eng2 = FakeEngine()
    eng2.release.set()
    b2 = Batcher(eng2, max_batch_size=4, batch_wait=0.2)
    got2: dict = {}
    for t in ("ok1", "poison", "ok2"):
        b2.submit(_job(t, got2, temperature=0))
    _wait(lambda: len(got2) == 3)
    b2.close()
    assert isinstance(got2["poison"], RuntimeError)
    assert got2["ok1"].text == "ok1:xxxx" and got2["ok2"].text == "ok2:xxxx"  # neighbours retried alone


def test_no_batching_runs_one_request_at_a_time():
    eng = FakeEngine()
    eng.release.set()
    b = Batcher(eng, max_batch_size=1)
    got: dict = {}
    for t in "abc":
        b.submit(_job(t, got, temperature=0))
    _wait(lambda: len(got) == 3)
    b.close()
    assert [c[0] for c in eng.calls] == [["a"], ["b"], ["c"]]


def test_stop_hold_never_streams_part_of_a_stop_string():
    h = _StopHold(["END"])
    out = [h.push(d) for d in ("abc E", "N", "D and more")]
    assert "".join(out) == "abc " and h.text[:h.sent] == "abc "
    h = _StopHold(["xyz"])
    assert h.push("ab x") == "ab " and h.push("a") == "xa"  # a false alarm is released
    assert _StopHold([]).push("anything") == "anything"


def test_api_key_and_body_limit_guard():
    from fastapi.testclient import TestClient

    eng = SimpleNamespace(name="fake", context_length=64, sampling=lambda **kw: SamplingParams(max_new_tokens=8))
    batcher = SimpleNamespace(queued=lambda: 0, stats={})
    app = create_app(eng, ServeConfig(api_key="s3cret", max_body_bytes=1000), batcher)
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200  # health checks need no key
        assert c.get("/v1/models").status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).json()["data"][0]["max_model_len"] == 64
        r = c.post("/v1/chat/completions", headers=ok, content=b"x" * 2000)
        assert r.status_code == 413 and "over 1000 bytes" in r.json()["error"]["message"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(5):
                yield b"y" * 400

        r = c.post("/v1/chat/completions", headers=ok, content=chunks())
        assert r.status_code == 413
