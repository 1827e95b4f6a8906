"""`kvl serve` as users meet it: one real server process on a loopback port (the tiny checkpoint), driven by
the official `openai` client, raw HTTP, `kvl chat --backend openai` and `kvl ocr` over the server.

Answers are compared with the local engine in this process: greedy decoding is deterministic, and a
batched row equals the same conversation alone (tests/test_engine.py), so the server must agree exactly.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import threading
import time
import zlib

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

from kvl_core.engine import Engine

from .conftest import KVL, free_port, kvl_env, running_server

BATCH_WAIT_MS = "100"  # generous, so that the concurrent requests below reliably land in one batch


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    with running_server(tiny_dir, tmp_path_factory.mktemp("serve"), "--allow-local-files", "--max-body-mb", "0.25",
                        "--max-images", "2", "--max-image-pixels", "1000000", "--batch-wait-ms", BATCH_WAIT_MS) as s:
        yield s


@pytest.fixture(scope="module")
def local(tiny_dir):
    return Engine.load(str(tiny_dir))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


def png(size=(90, 60), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(text: str, *urls: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": [*parts, {"type": "text", "text": text}]}]


def test_models_lists_the_served_model_with_its_context(client, server):
    models = client.models.list().data
    assert [m.id for m in models] == [server.model]
    assert models[0].model_extra["max_model_len"] == 512  # the tiny config's max_position_embeddings


def test_text_and_image_answers_equal_the_local_engine(client, server, local, tmp_path):
    img = png()
    (tmp_path / "red.png").write_bytes(img)
    for messages, local_messages in [
        (user("hello there"), user("hello there")),
        (user("what is this?", data_url(img)),
         [{"role": "user", "content": [{"type": "image", "image": str(tmp_path / "red.png")},
                                       {"type": "text", "text": "what is this?"}]}]),
    ]:
        reply = client.chat.completions.create(model=server.model, messages=messages, max_tokens=8, temperature=0)
        want = local.chat(local_messages, max_new_tokens=8, temperature=0)
        assert reply.choices[0].message.content == want.text
        assert reply.usage.prompt_tokens == want.prompt_tokens
        assert reply.usage.completion_tokens == want.completion_tokens
        assert reply.choices[0].finish_reason == want.finish_reason


def test_streaming_deltas_add_up_to_the_answer(client, server, local):
    stream = client.chat.completions.create(model=server.model, messages=user("stream please"), max_tokens=12,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    want = local.chat(user("stream please"), max_new_tokens=12, temperature=0)
    assert text == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.completion_tokens


def test_stop_strings_and_seeds(client, server, local):
    full = local.chat(user("go on"), max_new_tokens=16, temperature=0).text
    stop = next(full[i:i + 2] for i in range(2, len(full) - 2) if full[i:i + 2].strip())
    want = full[:full.index(stop)]
    reply = client.chat.completions.create(model=server.model, messages=user("go on"), max_tokens=16, temperature=0,
                                           stop=[stop])
    assert reply.choices[0].message.content == want and reply.choices[0].finish_reason == "stop"
    streamed = client.chat.completions.create(model=server.model, messages=user("go on"), max_tokens=16,
                                              temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == want  # nothing of the stop leaks
    seeded = [client.chat.completions.create(model=server.model, messages=user("go on"), max_tokens=10,
                                             temperature=1.0, top_p=0.9, seed=7).choices[0].message.content
              for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_concurrent_requests_are_batched_and_match_single_answers(client, server, local):
    prompts = [f"question number {i} " + "x" * (3 * i) for i in range(6)]
    budgets = [3, 8, 5, 8, 4, 6]  # rows of one batch stop at their own max_tokens
    before = server.health()
    replies: dict[int, object] = {}
    barrier = threading.Barrier(len(prompts))

    def ask(i: int) -> None:
        barrier.wait()
        replies[i] = client.chat.completions.create(model=server.model, messages=user(prompts[i]),
                                                    max_tokens=budgets[i], temperature=0)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = server.health()
    for i, p in enumerate(prompts):
        want = local.chat(user(p), max_new_tokens=budgets[i], temperature=0)
        assert replies[i].choices[0].message.content == want.text, i
        assert replies[i].usage.completion_tokens == want.completion_tokens, i
    assert after["requests"] - before["requests"] == len(prompts)
    assert after["batches"] - before["batches"] < len(prompts)  # batched, not one by one
    assert after["largest_batch"] >= 2


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_malformed_requests_get_http_errors_and_the_server_stays_up(client, server, tmp_path):
    url = f"{server.base_url}/chat/completions"
    ok = {"model": server.model, "messages": user("hi"), "max_tokens": 2, "temperature": 0}
    noise = Image.effect_noise((400, 400), 100).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    big = data_url(buf.getvalue())  # > 0.25 MiB once base64-encoded
    assert len(big) > 0.25 * 2**20
    local_png = tmp_path / "ok.png"
    local_png.write_bytes(png())
    cases = [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        ({"model": server.model}, 400, "messages"),
        ({**ok, "model": "gpt-4o"}, 404, "does not exist"),
        ({**ok, "temperature": 7}, 400, "temperature"),
        ({**ok, "max_tokens": 100_000}, 400, "context is 512 tokens"),
        ({**ok, "messages": user("word " * 2000)}, 400, "context is 512 tokens"),
        ({**ok, "messages": user("hi", *[data_url(png())] * 3)}, 400, "too many images"),
        ({**ok, "messages": user("hi", big)}, 413, "over"),
        ({**ok, "messages": user("hi", data_url(bomb_png()))}, 400, "pixels"),
        ({**ok, "messages": user("hi", data_url(b"not an image at all"))}, 400, "not an image"),
        ({**ok, "messages": user("hi", "https://example.com/cat.png")}, 400, "fetches nothing"),
        ({**ok, "messages": user("hi", f"file://{tmp_path}/missing.png")}, 400, "missing.png"),
        ({**ok, "messages": [{"role": "tool", "content": "x"}]}, 400, "role"),
        ({**ok, "n": 2}, 400, "n=1"),
    ]
    for body, status, words in cases:
        r = httpx.post(url, content=body, timeout=30) if isinstance(body, bytes) else httpx.post(url, json=body, timeout=30)
        assert r.status_code == status, (body if isinstance(body, bytes) else json.dumps(body)[:200], r.text)
        assert words in r.json()["error"]["message"], r.text
        assert server.alive()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user("hi"))
    # and it still answers, local files included (the server runs with --allow-local-files)
    r = httpx.post(url, json={**ok, "messages": user("hi", f"file://{local_png}")}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def _wait_for(server, pred, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        h = server.health()
        if pred(h) or time.monotonic() > deadline:
            return h
        time.sleep(0.1)


def test_client_disconnect_cancels_its_generation(server):
    # Greedy, this prompt runs the tiny model to the full 400 tokens (~2 s even on an idle CPU).
    body = {"model": server.model, "messages": user("tell me a story"), "max_tokens": 400, "temperature": 0}
    before = _wait_for(server, lambda h: h["queued"] == 0)
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json={**body, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content": "' in line and '"content": ""' not in line:
                break  # got a token: leave
    h = _wait_for(server, lambda h: h["cancelled"] > before["cancelled"])
    assert h["cancelled"] == before["cancelled"] + 1
    assert h["completion_tokens"] - before["completion_tokens"] < 400  # stopped early, not run to the end
    # a non-streaming client that gives up is cancelled too
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/chat/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
    h2 = _wait_for(server, lambda x: x["cancelled"] > h["cancelled"])
    assert h2["cancelled"] == h["cancelled"] + 1
    assert server.alive()


def run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KVL), *args], env=kvl_env(**env), capture_output=True, text=True, timeout=120)


def kvl_in_process(capsys, monkeypatch, *args: str, **env: str) -> tuple[int, str, str]:
    """The real CLI in this process (saves a torch import per call; the subprocess runs above keep the
    console script itself covered)."""
    from kvl_cli.main import app, run as run_cli

    for k, v in kvl_env(**env).items():
        monkeypatch.setenv(k, v)
    for k in ("KVL_BACKEND", "KVL_BASE_URL", "KVL_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        if k not in env:
            monkeypatch.delenv(k, raising=False)
    capsys.readouterr()
    code = run_cli(app, list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_kvl_chat_with_the_openai_backend(server, local, capsys, monkeypatch):
    want = local.chat([{"role": "user", "content": "hello"}], max_new_tokens=8, temperature=0)
    proc = run("chat", "hello", "--backend", "openai", "--base-url", server.base_url, "--model", server.model,
               "--temperature", "0", "--max-new-tokens", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["answer"] == want.answer and got["completion_tokens"] == want.completion_tokens
    assert got["model"] == server.model
    # the environment alone selects the backend; the model defaults to the server's only one; streamed output
    code, out, err = kvl_in_process(capsys, monkeypatch, "chat", "hello", "--temperature", "0",
                                    "--max-new-tokens", "8", KVL_BASE_URL=server.root)
    assert code == 0, err
    assert out.rstrip("\n") == want.answer


def test_backend_errors_are_one_line(server, capsys, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    for args, words in [
        (("--base-url", dead), "cannot reach the server"),
        (("--base-url", server.base_url, "--model", "other"), "is not served here"),
        (("--base-url", server.base_url, "--backend", "remote"), "expected one of local, openai"),
        (("--base-url", "localhost:8000"), "must look like http://HOST:PORT/v1"),
        (("--base-url", server.base_url, "--api-key", "k", "--top-p", "3"), "top_p must be in (0, 1]"),
    ]:
        code, out, err = kvl_in_process(capsys, monkeypatch, "chat", "hi", *args, KVL_MAX_RETRIES="0")
        assert code == 1, err
        assert words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_ocr_over_the_server_matches_a_local_run(server, tiny_dir, tmp_path, capsys, monkeypatch):
    img = Image.new("RGB", (220, 90), "white")
    ImageDraw.Draw(img).text((10, 30), "Invoice 42: total 17.50", fill="black")
    path = tmp_path / "page.png"
    img.save(path)
    remote = run("ocr", str(path), "--backend", "openai", "--base-url", server.base_url, "--model", server.model,
                 "--max-new-tokens", "12")
    assert remote.returncode == 0, remote.stderr
    code, out, err = kvl_in_process(capsys, monkeypatch, "ocr", str(path), "--model", str(tiny_dir),
                                    "--max-new-tokens", "12")
    assert code == 0, err
    assert remote.stdout == out
