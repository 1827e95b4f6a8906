"""The ASGI app of `kvl serve`: OpenAI-compatible `/v1/chat/completions`, `/v1/models`, `/health`.

Request handlers do everything that can fail on bad input (JSON, schema, images, token counts) in the
thread pool, then queue a job for the single engine thread (batcher.py) and wait for it or for the
client to leave; a client that disconnects has its row stopped at the next token.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from kvl_core.errors import KvlError
from kvl_core.serving.batcher import Batcher, Job
from kvl_core.serving.protocol import (ApiError, count_prompt_tokens, parse_request, sampling_options,
                                       to_messages)


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    served_name: str | None = None  # default: the engine's name (the --model spec as given)
    api_key: str | None = None
    allow_local_files: bool = False
    max_body_bytes: int = 32 * 2**20
    max_images: int = 16
    max_image_pixels: int = 40_000_000  # ~ 6300 x 6300; the processor downsizes far below this anyway
    max_batch_size: int = 16  # 1 = one request at a time (the benchmark's baseline)
    batch_wait_ms: float = 5.0


class Guard:
    """ASGI middleware in front of everything: the API key, and bodies over `limit` bytes refused with 413
    (by their declared length, or while they stream in)."""

    def __init__(self, app, limit: int, api_key: str | None):
        self.app, self.limit, self.api_key = app, limit, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.api_key and scope["path"].startswith("/v1/") and \
                headers.get(b"authorization", b"") != f"Bearer {self.api_key}".encode():
            return await _send_error(send, ApiError(401, "missing or wrong API key (Authorization: Bearer ...)",
                                                    "authentication_error"))
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, ApiError(413, f"the request body is over {self.limit} bytes",
                                                    "request_too_large"))
        seen = 0

        async def counted():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:  # a chunked body: the app's ApiError handler turns this into the 413
                    raise ApiError(413, f"the request body is over {self.limit} bytes", "request_too_large")
            return msg

        await self.app(scope, counted, send)


async def _send_error(send, err: ApiError) -> None:
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(engine: Any, cfg: ServeConfig, batcher: Batcher | None = None) -> Any:
    """The ASGI application (FastAPI behind the key check and body-size limit)."""
    name = cfg.served_name or engine.name
    batcher = batcher or Batcher(engine, cfg.max_batch_size, cfg.batch_wait_ms / 1000)
    context = int(engine.context_length)
    default_max = int(engine.sampling().max_new_tokens)
    started = int(time.time())
    app = FastAPI(title="kvl serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.batcher = batcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "queued": batcher.queued(), **batcher.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_card(name, started, context)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != name:
            raise ApiError(404, f"model {model_id!r} does not exist (this server serves {name!r})", "not_found_error")
        return _card(name, started, context)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the body is not valid JSON ({e})") from None
        req = parse_request(data)
        if req.model != name:
            raise ApiError(404, f"model {req.model!r} does not exist (this server serves {name!r})", "not_found_error",
                           "model")
        options = sampling_options(req)
        try:
            engine.sampling(**options).validate()
        except KvlError as e:
            raise ApiError(400, str(e)) from None
        messages, prompt_tokens = await run_in_threadpool(_prepare, engine, req, cfg)
        if prompt_tokens >= context:
            raise ApiError(400, f"the prompt is {prompt_tokens} tokens; this model's context is {context} tokens",
                           param="messages")
        asked = req.max_completion_tokens or req.max_tokens
        if asked is not None and prompt_tokens + asked > context:
            raise ApiError(400, f"this model's context is {context} tokens, but {prompt_tokens} prompt tokens + "
                           f"{asked} max_tokens ask for {prompt_tokens + asked}", param="max_tokens")
        max_new = asked if asked is not None else min(default_max, context - prompt_tokens)

        loop = asyncio.get_running_loop()
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if req.stream:
            events: asyncio.Queue = asyncio.Queue()
            job = Job(messages, options, max_new,
                      finish=lambda r: loop.call_soon_threadsafe(events.put_nowait, ("done", r)),
                      on_delta=lambda t: loop.call_soon_threadsafe(events.put_nowait, ("delta", t)))
            batcher.submit(job)
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stops = list(options.get("stop_strings", ()))
            return StreamingResponse(_sse(job, events, rid, created, name, stops, include_usage),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

        done: asyncio.Future = loop.create_future()
        job = Job(messages, options, max_new,
                  finish=lambda r: loop.call_soon_threadsafe(_settle, done, r))
        batcher.submit(job)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not done.done():
                job.cancelled.set()  # the client left: stop its row at the next token
            gone.cancel()
        if not done.done():
            return JSONResponse({}, status_code=499)  # nobody is listening; for the access log only
        result = done.result()
        if isinstance(result, BaseException):
            raise _engine_error(result)
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage(result),
        }

    return Guard(app, cfg.max_body_bytes, cfg.api_key)


def _card(name: str, created: int, context: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "kvl", "max_model_len": context}


def _prepare(engine: Any, req, cfg: ServeConfig) -> tuple[list[dict], int]:
    messages = to_messages(req, max_images=cfg.max_images, max_pixels=cfg.max_image_pixels,
                           allow_local_files=cfg.allow_local_files)
    return messages, count_prompt_tokens(engine.processor, messages)


def _settle(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message can only be the client going away.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _engine_error(e: BaseException) -> ApiError:
    if isinstance(e, KvlError):
        return ApiError(400, str(e))
    return ApiError(500, f"generation failed: {type(e).__name__}: {e}", "server_error")


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": result.thinking_tokens}}


class _StopHold:
    """Holds back streamed text that might be the start of a stop string, which the final answer drops."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent = stops, "", 0

    def push(self, delta: str) -> str:
        self.text += delta
        if not self.stops:
            out, self.sent = self.text[self.sent:], len(self.text)
            return out
        cut = min((self.text.find(s) for s in self.stops if s in self.text), default=-1)
        safe = cut if cut >= 0 else len(self.text) - self._partial()
        safe = max(safe, self.sent)
        out, self.sent = self.text[self.sent:safe], safe
        return out

    def _partial(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        best = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best


async def _sse(job: Job, events: asyncio.Queue, rid: str, created: int, name: str, stops: list[str],
               include_usage: bool):
    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None, choices: bool = True) -> str:
        body: dict = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                      "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
                      if choices else []}
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    hold = _StopHold(stops)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await events.get()
            if kind == "done":
                break
            out = hold.push(value)
            if out:
                yield chunk({"content": out})
        if isinstance(value, BaseException):
            err = _engine_error(value)
            yield f"data: {json.dumps(err.body())}\n\n"
        else:
            # the engine's final text is authoritative (stop strings cut, held-back characters released)
            sent = hold.text[:hold.sent]
            rest = value.text[len(sent):] if value.text.startswith(sent) else ""
            if rest:
                yield chunk({"content": rest})
            yield chunk({}, value.finish_reason)
            if include_usage:
                yield chunk({}, usage=_usage(value), choices=False)
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()  # after completion a no-op; on a disconnect it stops the row
