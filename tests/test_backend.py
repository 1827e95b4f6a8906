"""Backend selection and the OpenAI-compatible client engine against a scripted HTTP server (httpx.MockTransport):
request shape, retries with backoff, error messages, concurrency bound, streaming, token planning."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

from kvl_core.backend import context_length, load_engine, resolve_backend
from kvl_core.errors import KvlError
from kvl_core.openai_engine import OpenAIEngine, image_url, normalize_base_url

MODEL = "moonshotai/Kimi-VL-A3B-Instruct"


def completion(content: str, finish: str = "stop", prompt: int = 11, completion_tokens: int = 3, **message) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + 3}}


class Scripted:
    """A fake server: /v1/models plus a handler for chat completions; records every request body."""

    def __init__(self, chat=None, models=(MODEL,), max_model_len=131072):
        self.chat = chat or (lambda body, n: httpx.Response(200, json=completion("ok")))
        self.models, self.max_model_len = list(models), max_model_len
        self.bodies: list[dict] = []
        self.headers: list[httpx.Headers] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.headers.append(request.headers)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [
                {"id": m, "object": "model", "max_model_len": self.max_model_len} for m in self.models]})
        assert request.url.path == "/v1/chat/completions"
        body = json.loads(request.content)
        with self.lock:
            self.bodies.append(body)
            n = len(self.bodies)
        return self.chat(body, n)

    def engine(self, **kw) -> OpenAIEngine:
        kw.setdefault("model", MODEL)
        return OpenAIEngine("http://srv:8000", transport=httpx.MockTransport(self), **kw)


def test_backend_selection_reads_arguments_then_environment(monkeypatch):
    for k in ("KVL_BACKEND", "KVL_BASE_URL", "OPENAI_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_backend() == "local"
    assert resolve_backend(base_url="http://x:1/v1") == "openai"  # a server named means the server is used
    assert resolve_backend("local", "http://x:1/v1") == "local"
    monkeypatch.setenv("KVL_BASE_URL", "http://x:1")
    assert resolve_backend() == "openai"
    monkeypatch.setenv("KVL_BACKEND", "LOCAL")
    assert resolve_backend() == "local"
    with pytest.raises(KvlError, match="expected one of local, openai"):
        resolve_backend("vllm")
    monkeypatch.setenv("KVL_BACKEND", "openai")
    monkeypatch.setenv("KVL_TIMEOUT", "soon")
    with pytest.raises(KvlError, match=r"\$KVL_TIMEOUT='soon'"):
        load_engine()


def test_load_engine_local_gives_the_engine_with_a_context_length(tiny_dir, monkeypatch):
    monkeypatch.delenv("KVL_BACKEND", raising=False)
    monkeypatch.delenv("KVL_BASE_URL", raising=False)
    engine = load_engine(str(tiny_dir))
    assert type(engine).__name__ == "Engine"
    assert engine.context_length == context_length(engine) == 512


def test_base_urls_are_normalised():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(KvlError, match="must look like"):
        normalize_base_url("h:8000")


def test_requests_carry_images_as_data_urls_and_only_the_options_given(tmp_path):
    server = Scripted()
    engine = server.engine(api_key="sk-test")
    png = tmp_path / "a.png"
    Image.new("RGB", (30, 20), (1, 2, 3)).save(png)
    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "image", "image": str(png)}, {"type": "text", "text": "what?"}]}]
    res = engine.chat(msgs)
    assert res.answer == "ok" and res.prompt_tokens == 11 and res.completion_tokens == 3
    body = server.bodies[-1]
    assert body == {"model": MODEL, "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()}},
            {"type": "text", "text": "what?"}]}]}  # no sampling options: the server's checkpoint defaults apply
    assert server.headers[-1]["authorization"] == "Bearer sk-test"
    engine.chat(msgs, max_new_tokens=9, temperature=0, top_k=5, seed=3, stop_strings=["\n\n"], thinking_budget=64)
    b = server.bodies[-1]
    assert (b["max_tokens"], b["temperature"], b["top_k"], b["seed"], b["stop"], b["thinking_budget"]) == \
           (9, 0.0, 5, 3, ["\n\n"], 64)
    with pytest.raises(KvlError, match="top_p"):
        engine.chat(msgs, top_p=2.0)  # refused here, as the local engine would, before any request
    with pytest.raises(TypeError):
        engine.chat(msgs, beam_width=4)


def test_images_the_server_might_decode_differently_are_normalised(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    rotated = tmp_path / "phone.jpg"
    img.save(rotated, "JPEG", exif=exif)
    url = image_url(str(rotated), "x")
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (20, 40)  # upright, as the local engine sees it
    plain = tmp_path / "plain.jpg"
    img.save(plain, "JPEG")
    assert image_url(f"file://{plain}", "x").startswith("data:image/jpeg;base64,")  # sent as is
    assert image_url("https://example.com/a.png", "x") == "https://example.com/a.png"  # the server fetches it
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(KvlError, match="bad.png"):
        image_url(str(bad), "x")
    with pytest.raises(KvlError, match="missing.png"):
        image_url(str(tmp_path / "missing.png"), "x")


def test_retries_on_429_and_5xx_then_succeeds():
    def chat(body, n):
        if n == 1:
            return httpx.Response(429, headers={"retry-after": "0"}, json={"error": {"message": "slow down"}})
        if n == 2:
            return httpx.Response(503, headers={"retry-after": "0"}, text="overloaded")
        return httpx.Response(200, json=completion("finally"))

    server = Scripted(chat)
    assert server.engine().chat([{"role": "user", "content": "hi"}]).answer == "finally"
    assert len(server.bodies) == 3


@pytest.mark.parametrize("status,body,words", [
    (401, {"error": {"message": "Invalid API key"}}, "refused the API key"),
    (400, {"object": "error", "message": "This model's maximum context length is 512 tokens", "code": 400},
     "maximum context length is 512"),
    (404, {"detail": "Not Found"}, "check --base-url"),
    (413, "too big", "too large"),
    (500, {"error": {"message": "CUDA out of memory"}}, "server error 500 after 1 retries (CUDA out of memory)"),
])
def test_server_errors_become_one_clear_message(status, body, words):
    def chat(b, n):
        return httpx.Response(status, **({"json": body} if isinstance(body, dict) else {"text": body}))

    engine = Scripted(chat).engine(max_retries=1)
    with pytest.raises(KvlError) as e:
        engine.chat([{"role": "user", "content": "hi"}])
    assert words in str(e.value) and "http://srv:8000/v1" in str(e.value)
    assert "\n" not in str(e.value)


def test_model_names_are_checked_and_defaulted():
    assert Scripted().engine(model=None).name == MODEL
    with pytest.raises(KvlError, match="offers 2 models"):
        Scripted(models=("a", "b")).engine(model=None)
    with pytest.raises(KvlError, match=r"model 'b' is not served here \(it serves: a\)"):
        Scripted(models=("a",)).engine(model="b")


def test_chat_batch_keeps_order_and_bounds_requests_in_flight():
    live, peak = [0], [0]
    lock = threading.Lock()

    def chat(body, n):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.05)
        with lock:
            live[0] -= 1
        return httpx.Response(200, json=completion(body["messages"][0]["content"].upper()))

    engine = Scripted(chat).engine(max_concurrency=3)
    convs = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    results = engine.chat_batch(convs, max_new_tokens=4)
    assert [r.answer for r in results] == [f"Q{i}" for i in range(10)]
    assert 2 <= peak[0] <= 3


def _sse(*events) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def _delta(content=None, finish=None, **extra):
    d = {k: v for k, v in {"content": content, **extra}.items() if v is not None}
    return {"choices": [{"index": 0, "delta": d, "finish_reason": finish}]}


def test_streaming_and_thinking_replies():
    events = _sse(_delta("", role="assistant"), _delta("◁think▷hmm"), _delta("◁/think▷The "), _delta("answer"),
                  _delta(finish="length"),
                  {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 4,
                                            "completion_tokens_details": {"reasoning_tokens": 2}}})
    server = Scripted(lambda b, n: httpx.Response(200, content=events, headers={"content-type": "text/event-stream"}))
    engine = server.engine()
    deltas = list(engine.stream([{"role": "user", "content": "hi"}], max_new_tokens=4))
    assert "".join(deltas) == "◁think▷hmm◁/think▷The answer"
    r = engine.last_result
    assert (r.reasoning, r.answer, r.finish_reason, r.completion_tokens, r.thinking_tokens) == \
           ("hmm", "The answer", "length", 4, 2)
    assert server.bodies[-1]["stream"] is True and server.bodies[-1]["stream_options"] == {"include_usage": True}
    seen = []
    assert engine.chat([{"role": "user", "content": "hi"}], on_text=seen.append).answer == "The answer"
    assert "".join(seen) == r.text
    # a server with a reasoning parser (vLLM --reasoning-parser) returns the thought separately
    split = Scripted(lambda b, n: httpx.Response(200, json=completion("42", reasoning_content="let me think")))
    r = split.engine().chat([{"role": "user", "content": "hi"}])
    assert (r.reasoning, r.answer, r.truncated) == ("let me think", "42", False)


def test_mid_stream_error_events_are_reported():
    events = _sse(_delta("par"), {"error": {"message": "engine died", "code": 500}})
    engine = Scripted(lambda b, n: httpx.Response(200, content=events)).engine()
    with pytest.raises(KvlError, match="failed mid-answer: engine died"):
        list(engine.stream([{"role": "user", "content": "hi"}]))


def test_processor_and_context_for_token_planning(tiny_dir, monkeypatch):
    monkeypatch.delenv("KVL_MODEL", raising=False)
    # the served name is a local checkpoint: its own tokenizer and image settings
    local = Scripted(models=(str(tiny_dir),), max_model_len=512).engine(model=str(tiny_dir))
    assert local.context_length == context_length(local) == 512
    assert local.processor.image_processor.in_token_limit == 256  # the tiny preprocessor_config.json
    assert local.processor.tokenizer.encode("hello") == \
        __import__("kvl_core.processor.tokenizer", fromlist=["x"]).KimiTokenizer.from_pretrained(tiny_dir).encode("hello")
    # an explicit processor folder wins; an unknown remote model falls back to Kimi-VL constants + byte counts
    assert Scripted().engine(processor=str(tiny_dir)).processor.image_processor.in_token_limit == 256
    remote = Scripted(models=("kimi",), max_model_len=0).engine(model="kimi")
    assert remote.context_length == 131072
    proc = remote.processor
    assert proc.image_processor.in_token_limit == 4096 and proc.image_processor.plan(896, 896).tokens == 1024
    assert len(proc.tokenizer.encode("héllo")) == 6  # one per UTF-8 byte: an over-estimate, never an under-one
    assert proc.tokenizer.decode(proc.tokenizer.encode("héllo")) == "héllo"
    assert len(proc.encode([{"role": "user", "content": "hi"}]).input_ids) > 2
