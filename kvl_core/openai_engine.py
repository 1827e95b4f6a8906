"""An engine whose model runs on an OpenAI-compatible server (`kvl serve`, vLLM, SGLang, ...).

Same surface as `kvl_core.engine.Engine`, so tasks cannot tell the two apart: `chat`, `chat_batch`
(concurrent requests, bounded), `stream`, `sampling()`, `processor`, `name`, `defaults` and
`context_length`. Images travel as base64 `data:` URLs in `image_url` parts, the form vLLM's Kimi-VL
examples use; http(s) URLs are passed through for the server to fetch.

Token planning (how many pages or frames fit) happens client side, so `processor` must size images and
count text the way the served model does. Kimi-VL's image processor is known constants (model.md §3:
14-px patches, 2x2 merge, a 4096-patch budget; 16384 for Thinking-2506); the tokenizer is exact only
when the checkpoint's tokenizer files are on this machine (`processor=DIR`, $KVL_PROCESSOR, or the served
name resolving to a local checkpoint). Otherwise a byte-level stand-in counts one token per UTF-8 byte:
it over-counts (Kimi's BPE averages several bytes a token), so budgets stay safe, only less full.

The server's context window comes from `max_model_len` in `/v1/models` (vLLM and `kvl serve` report it).
"""

from __future__ import annotations

import base64
import io
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import httpx

from kvl_core.engine import ChatResult, family_temperature
from kvl_core.errors import KvlError, read_user_file
from kvl_core.generation import SamplingParams
from kvl_core.processor.chat import THINK_CLOSE, THINK_OPEN, Message, split_thinking

log = logging.getLogger("kvl.openai")

RETRY_STATUS = {408, 429, 500, 502, 503, 504}
KIMI_VL_CONTEXT = 131072  # the 128K window of Kimi-VL-A3B (paper §2.3), when a server does not say
_MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg", b"GIF8": "image/gif"}
_OPTIONS = {"max_new_tokens", "temperature", "do_sample", "top_p", "top_k", "repetition_penalty", "seed",
            "stop_strings", "stop_token_ids", "thinking_budget"}


def normalize_base_url(url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1/` both mean `http://host:8000/v1`."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise KvlError(f"{url or '(empty)'}: the base URL must look like http://HOST:PORT/v1")
    return url if parts.path else url + "/v1"


class OpenAIEngine:
    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 processor: str | None = None, max_concurrency: int = 8, timeout: float = 600.0,
                 max_retries: int = 4, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = normalize_base_url(base_url)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max(1, int(max_concurrency))
        self._client = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.max_concurrency + 2),
        )
        # Bounds requests in flight across every chat_batch of this process, not just within one call.
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._lock = threading.Lock()
        self._processor = None
        self._processor_spec = processor
        self.defaults: dict[str, Any] = {}  # the server applies the checkpoint's own defaults
        self.last_result: ChatResult | None = None
        cards = self._models()
        served = [c.get("id") for c in cards]
        if model is None:
            if len(served) != 1:
                raise KvlError(f"{self.base_url}: the server offers {len(served)} models ({', '.join(map(str, served))}); "
                               "pick one with --model")
            model = served[0]
        elif model not in served:
            raise KvlError(f"{self.base_url}: model {model!r} is not served here (it serves: "
                           f"{', '.join(map(str, served)) or 'nothing'}); --model is the served model name")
        self.name = str(model)
        self._card = next(c for c in cards if c.get("id") == model)

    def close(self) -> None:
        self._client.close()

    # ---- what tasks read -----------------------------------------------------------------------

    @property
    def context_length(self) -> int:
        n = self._card.get("max_model_len")
        return int(n) if isinstance(n, int) and n > 0 else KIMI_VL_CONTEXT

    @property
    def processor(self):
        if self._processor is None:
            with self._lock:
                if self._processor is None:
                    self._processor = self._load_processor()
        return self._processor

    def _load_processor(self):
        from kvl_core.hub import resolve_model
        from kvl_core.processor.chat import Processor
        from kvl_core.processor.image import ImageProcessor
        from kvl_core.processor.tokenizer import KimiTokenizer

        if self._processor_spec:
            return Processor.from_pretrained(resolve_model(self._processor_spec))
        try:
            local = resolve_model(self.name)
        except KvlError:
            local = None
        if local is not None and (local / "tiktoken.model").is_file():
            return Processor.from_pretrained(local)
        log.warning("%s: no local tokenizer for %r; token counts are byte-level over-estimates "
                    "(pass --processor DIR or set KVL_PROCESSOR for exact budgets)", self.base_url, self.name)
        limit = 16384 if "2506" in self.name else 4096
        return Processor(KimiTokenizer({bytes([i]): i for i in range(256)}, source="byte-level estimate"),
                         ImageProcessor(in_token_limit=limit))

    def sampling(self, **overrides) -> SamplingParams:
        """The options a request carries, as SamplingParams (unset ones are the server's to choose)."""
        temperature = family_temperature(self.name)
        p = SamplingParams(max_new_tokens=512, temperature=temperature, do_sample=temperature > 0)
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in _OPTIONS:
                raise TypeError(f"unknown generation option {key!r}")
            setattr(p, key, value)
        if overrides.get("temperature") is not None and overrides.get("do_sample") is None:
            p.do_sample = overrides["temperature"] > 0
        return p

    # ---- calls ---------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Message], on_text: Callable[[str], None] | None = None, **options) -> ChatResult:
        body = self._body(messages, options)
        with self._slots:
            if on_text is None:
                return self._complete(body)
            result = None
            for item in self._stream(body):
                if isinstance(item, ChatResult):
                    result = item
                else:
                    on_text(item)
            return result

    def chat_batch(self, conversations: Sequence[Sequence[Message]], on_text: Callable[[str], None] | None = None,
                   **options) -> list[ChatResult]:
        """One request per conversation, at most `max_concurrency` in flight; results in input order.
        The server does the batching (vLLM's continuous batching, or `kvl serve`'s queue)."""
        bodies = [self._body(c, options) for c in conversations]  # bad input fails before any request
        if len(bodies) == 1:
            return [self.chat(conversations[0], on_text=on_text, **options)]

        def one(i: int) -> ChatResult:
            if i == 0 and on_text is not None:
                return self.chat(conversations[0], on_text=on_text, **options)
            with self._slots:
                return self._complete(bodies[i])

        with ThreadPoolExecutor(max_workers=min(len(bodies), self.max_concurrency),
                                thread_name_prefix="kvl-openai") as pool:
            futures = [pool.submit(one, i) for i in range(len(bodies))]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    def stream(self, messages: Sequence[Message], **options) -> Iterator[str]:
        """Yield text deltas while the server generates; the final `ChatResult` is then in `self.last_result`."""
        body = self._body(messages, options)
        with self._slots:
            for item in self._stream(body):
                if isinstance(item, ChatResult):
                    self.last_result = item
                else:
                    yield item

    # ---- requests ------------------------------------------------------------------------------

    def _body(self, messages: Sequence[Message], options: dict) -> dict:
        p = self.sampling(**options)
        p.validate()  # the same one-line errors as the local engine, before anything is sent
        body: dict[str, Any] = {"model": self.name, "messages": [_message(m, i) for i, m in enumerate(_listed(messages))]}
        given = {k for k, v in options.items() if v is not None}
        if "max_new_tokens" in given:
            body["max_tokens"] = p.max_new_tokens
        if given & {"temperature", "do_sample"}:
            body["temperature"] = p.temperature if p.do_sample else 0.0
        if "top_p" in given:
            body["top_p"] = p.top_p
        # vLLM's extensions of the OpenAI schema; sent only when asked for, so plain OpenAI servers work
        if p.top_k:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop_strings:
            body["stop"] = list(p.stop_strings)
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if p.thinking_budget is not None:
            body["thinking_budget"] = p.thinking_budget  # honoured by `kvl serve`; other servers ignore it
        return body

    def _send(self, body: dict, stream: bool):
        """POST /chat/completions with retries on 429/5xx and connection failures; returns an open response."""
        for attempt in range(self.max_retries + 1):
            try:
                req = self._client.build_request("POST", "/chat/completions", json=body)
                r = self._client.send(req, stream=stream)
            except httpx.TimeoutException:
                raise KvlError(f"{self.base_url}: no reply within {self.timeout:g} s "
                               "(raise $KVL_TIMEOUT for long generations)") from None
            except httpx.TransportError as e:
                if attempt < self.max_retries:
                    time.sleep(_backoff(attempt, None))
                    continue
                raise KvlError(f"{self.base_url}: cannot reach the server ({type(e).__name__}: {e}); "
                               "is it running?") from None
            if r.status_code < 400:
                return r
            if stream:
                r.read()
            r.close()
            if r.status_code in RETRY_STATUS and attempt < self.max_retries:
                time.sleep(_backoff(attempt, r.headers.get("retry-after")))
                continue
            raise self._error(r)
        raise AssertionError("unreachable")

    def _complete(self, body: dict) -> ChatResult:
        t0 = time.perf_counter()
        r = self._send(body, stream=False)
        try:
            data = r.json()
            choice = data["choices"][0]
            msg = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError):
            raise KvlError(f"{self.base_url}: the server's reply is not a chat completion: {r.text[:200]!r}") from None
        return _result(msg.get("content") or "", msg.get("reasoning_content") or msg.get("reasoning"),
                       choice.get("finish_reason"), data.get("usage") or {}, 0.0, time.perf_counter() - t0)

    def _stream(self, body: dict) -> Iterator[str | ChatResult]:
        """Text deltas, then the ChatResult."""
        import json

        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        t0 = time.perf_counter()
        r = self._send(body, stream=True)
        content, reasoning, finish, usage, first = [], [], None, {}, None
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    raise KvlError(f"{self.base_url}: malformed stream event {payload[:120]!r}") from None
                if "error" in chunk:  # vLLM reports failures mid-stream as an event
                    err = chunk["error"]
                    raise KvlError(f"{self.base_url}: the server failed mid-answer: "
                                   f"{err.get('message', err) if isinstance(err, dict) else err}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if first is None:
                        first = time.perf_counter()
                    think = delta.get("reasoning_content") or delta.get("reasoning")
                    if think:
                        reasoning.append(think)
                    if delta.get("content"):
                        content.append(delta["content"])
                        yield delta["content"]
                    finish = choice.get("finish_reason") or finish
        except httpx.TimeoutException:
            raise KvlError(f"{self.base_url}: the stream stalled for {self.timeout:g} s") from None
        except httpx.TransportError as e:
            raise KvlError(f"{self.base_url}: the connection broke mid-answer ({type(e).__name__})") from None
        finally:
            r.close()
        t1 = time.perf_counter()
        first = first or t1
        yield _result("".join(content), "".join(reasoning) or None, finish, usage, first - t0, t1 - first)

    def _models(self) -> list[dict]:
        for attempt in range(self.max_retries + 1):
            try:
                r = self._client.get("/models")
            except httpx.TimeoutException:
                raise KvlError(f"{self.base_url}: no reply to /models within {self.timeout:g} s") from None
            except httpx.TransportError as e:
                if attempt < self.max_retries:
                    time.sleep(_backoff(attempt, None))
                    continue
                raise KvlError(f"{self.base_url}: cannot reach the server ({type(e).__name__}: {e}); "
                               "is it running?") from None
            if r.status_code in RETRY_STATUS and attempt < self.max_retries:
                time.sleep(_backoff(attempt, r.headers.get("retry-after")))
                continue
            if r.status_code >= 400:
                raise self._error(r)
            try:
                cards = r.json()["data"]
                assert isinstance(cards, list) and all(isinstance(c, dict) for c in cards)
                return cards
            except (ValueError, KeyError, TypeError, AssertionError):
                raise KvlError(f"{self.base_url}/models: not an OpenAI-compatible model list") from None
        raise AssertionError("unreachable")

    def _error(self, r: httpx.Response) -> KvlError:
        detail = _error_detail(r)
        s = r.status_code
        where = self.base_url
        if s in (401, 403):
            return KvlError(f"{where}: the server refused the API key ({s}: {detail}); "
                            "pass --api-key or set KVL_API_KEY / OPENAI_API_KEY")
        if s == 404:
            return KvlError(f"{where}: not found ({detail}); check --base-url (…/v1) and --model")
        if s == 413:
            return KvlError(f"{where}: the request is too large for the server ({detail}); send fewer or smaller images")
        if s in (400, 422):
            return KvlError(f"{where}: the server rejected the request: {detail}")
        if s == 429:
            return KvlError(f"{where}: rate-limited after {self.max_retries} retries ({detail})")
        return KvlError(f"{where}: server error {s} after {self.max_retries} retries ({detail})")


# ---- helpers -------------------------------------------------------------------------------------

def _backoff(attempt: int, retry_after: str | None) -> float:
    if retry_after:
        try:
            return min(30.0, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)


def _error_detail(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return " ".join(r.text.split())[:300] or r.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return " ".join(str(msg).split())[:300]
        elif isinstance(err, str):
            return err[:300]
        if "detail" in data:
            return str(data["detail"])[:300]
    return str(data)[:300]


def _result(content: str, reasoning: str | None, finish: str | None, usage: dict, prefill: float,
            decode: float) -> ChatResult:
    # A server with a reasoning parser splits the think block off; rejoin it so both paths read alike.
    text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{content}" if reasoning else content
    reasoning_text, answer, truncated = split_thinking(text)
    details = usage.get("completion_tokens_details") or {}
    return ChatResult(
        text=text, answer=answer, reasoning=reasoning_text, truncated=truncated,
        finish_reason=finish or "stop", prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        thinking_tokens=int(details.get("reasoning_tokens") or 0),
        prefill_seconds=prefill, decode_seconds=decode,
    )


def _listed(messages: Sequence[Message]) -> Sequence[Message]:
    if isinstance(messages, (dict, str)) or not isinstance(messages, Sequence) or not messages:
        raise KvlError("messages: expected a non-empty list of {'role': ..., 'content': ...} objects")
    return messages


def _message(msg: Message, i: int) -> dict:
    if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
        raise KvlError(f"message {i + 1}: expected an object with role system, user or assistant")
    content = msg.get("content")
    if isinstance(content, str):
        return {"role": msg["role"], "content": content}
    if not isinstance(content, (list, tuple)):
        raise KvlError(f"message {i + 1}: content must be a string or a list of parts")
    parts, n_img = [], 0
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise KvlError(f"message {i + 1}: content part {j + 1} must be an object")
        if part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part:
            n_img += 1
            ref = next((part[k] for k in ("image", "image_url", "url", "path") if k in part), None)
            if isinstance(ref, dict):
                ref = ref.get("url")
            parts.append({"type": "image_url", "image_url": {"url": image_url(ref, f"message {i + 1} image {n_img}")}})
        elif part.get("type", "text") == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        else:
            raise KvlError(f"message {i + 1}: part {j + 1} is neither text nor an image")
    return {"role": msg["role"], "content": parts}


def image_url(ref: Any, label: str) -> str:
    """An image (path, file:// URL, bytes, PIL image, data/http URL) as a URL the server accepts.

    Files in a format every server decodes go as their own bytes; anything else (BMP, TIFF, 16-bit,
    EXIF-rotated photos) goes through our loader, so the server sees what the local engine would see."""
    import os

    from PIL import Image

    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if isinstance(ref, str):
        if ref.startswith(("data:", "http://", "https://")):
            return ref
        path = ref[len("file://"):] if ref.startswith("file://") else ref
        label, data = path, read_user_file(path, path, "an image")
    elif isinstance(ref, (bytes, bytearray, memoryview)):
        data = bytes(ref)
    elif isinstance(ref, Image.Image):
        data = None
    else:
        raise KvlError(f"{label}: unsupported image source of type {type(ref).__name__}")
    if data is not None:
        mime = next((m for magic, m in _MIME.items() if data.startswith(magic)), None)
        if mime is None and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            mime = "image/webp"
        if mime is not None and mime != "image/gif" and _upright(data):
            return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    from kvl_core.processor.image import load_image

    img = load_image(ref if data is None else data, name=label)
    buf = io.BytesIO()
    img.save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _upright(data: bytes) -> bool:
    """True when any server decodes the file as our loader would: 8-bit RGB or grey, no EXIF rotation
    (reads the header only)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.mode in ("RGB", "L") and im.getexif().get(0x0112, 1) == 1
    except Exception:  # noqa: BLE001 -- unreadable: let load_image produce the precise error
        return False
