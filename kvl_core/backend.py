"""Where generation runs: on this machine (`Engine`) or on an OpenAI-compatible server (`OpenAIEngine`).

Every task gets its engine from `load_engine`, so each one runs unchanged against our own PyTorch
engine, a `kvl serve` process, or a vLLM-class server holding the 16B Kimi-VL behind tensor/expert
parallelism (the deployment the paper's MoE design targets, §2.1). Both engines have the same surface:
`chat`, `chat_batch`, `stream`, `sampling()`, `processor`, `name`, `defaults` and `context_length`.

Settings, first found wins: the explicit argument, then the environment:
    KVL_BACKEND   local | openai (default: openai when a base URL is set, else local)
    KVL_BASE_URL  (or OPENAI_BASE_URL) the server, e.g. http://127.0.0.1:8000/v1
    KVL_API_KEY   (or OPENAI_API_KEY) sent as a bearer token
    KVL_PROCESSOR a local folder with the served checkpoint's tiktoken.model / tokenizer_config.json /
                  preprocessor_config.json, for exact token planning against a remote model
    KVL_MAX_CONCURRENCY, KVL_TIMEOUT, KVL_MAX_RETRIES  requests in flight per process, seconds per
                  request, retries (with backoff) of a refused connection, 429 or 5xx

Nothing heavy is imported at module level: task modules import this at `kvl --help` time.
"""

from __future__ import annotations

import os
from typing import Any

from kvl_core.errors import KvlError

BACKENDS = ("local", "openai")
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # `kvl serve` and `vllm serve` both default to port 8000


def _env(*names: str) -> str | None:
    for n in names:
        v = os.environ.get(n, "").strip()
        if v:
            return v
    return None


def resolve_backend(backend: str | None = None, base_url: str | None = None) -> str:
    """The backend name the arguments and environment select."""
    name = (backend or _env("KVL_BACKEND") or "").strip().lower()
    if not name:
        name = "openai" if (base_url or _env("KVL_BASE_URL", "OPENAI_BASE_URL")) else "local"
    if name not in BACKENDS:
        raise KvlError(f"backend {name!r}: expected one of {', '.join(BACKENDS)} (--backend or $KVL_BACKEND)")
    return name


def load_engine(model: str | None = None, backend: str | None = None, base_url: str | None = None,
                api_key: str | None = None, device: str = "cpu", dtype: Any = None, *,
                processor: str | None = None, max_concurrency: int | None = None,
                timeout: float | None = None, skill: str | None = None, verb: str | None = None):
    """The engine a task talks to.

    `skill` (with `verb`, the command's name for the message) says what the task asks of the model: when
    the built-in demo model would stand in and was not trained for it, this refuses in one line
    (`hub.require_skill`) instead of answering with fluent noise.

    `model` is a checkpoint spec for the local backend (path, cached HF repo id, $KVL_MODEL) and the
    *served model name* for the openai backend (default: the server's only model). `device`/`dtype`
    matter only locally; `processor`, `max_concurrency` and `timeout` only remotely.
    """
    kind = resolve_backend(backend, base_url)
    if kind == "local":
        from kvl_core.engine import Engine

        if skill is not None:
            from kvl_core.hub import require_skill

            require_skill(model, skill, verb or "this command")

        return Engine.load(model, device=device, dtype=dtype)
    from kvl_core.openai_engine import OpenAIEngine

    url = base_url or _env("KVL_BASE_URL", "OPENAI_BASE_URL") or DEFAULT_BASE_URL
    key = api_key or _env("KVL_API_KEY", "OPENAI_API_KEY")
    conc = max_concurrency if max_concurrency is not None else _int_env("KVL_MAX_CONCURRENCY", 8)
    secs = timeout if timeout is not None else _float_env("KVL_TIMEOUT", 600.0)
    retries = _int_env("KVL_MAX_RETRIES", 4, minimum=0)
    return OpenAIEngine(url, model=model, api_key=key, processor=processor or _env("KVL_PROCESSOR"),
                        max_concurrency=conc, timeout=secs, max_retries=retries)


def context_length(engine: Any) -> int | None:
    """Prompt + answer tokens the engine's model takes; None when it cannot say (a scripted test engine)."""
    n = getattr(engine, "context_length", None)
    if n is None:  # engines written before the accessor existed expose the model config instead
        try:
            n = engine.model.config.text.max_position_embeddings
        except AttributeError:
            return None
    return int(n)


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    v = _env(name)
    try:
        n = int(v) if v is not None else default
    except ValueError:
        raise KvlError(f"${name}={v!r}: expected a whole number") from None
    if n < minimum:
        raise KvlError(f"${name}={v!r}: must be at least {minimum}")
    return n


def _float_env(name: str, default: float) -> float:
    v = _env(name)
    try:
        x = float(v) if v is not None else default
    except ValueError:
        raise KvlError(f"${name}={v!r}: expected a number of seconds") from None
    if x <= 0:
        raise KvlError(f"${name}={v!r}: must be positive")
    return x
