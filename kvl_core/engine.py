"""The engine every task runner talks to: chat messages in, text (or a stream of text) out.

One `Engine` holds a loaded model and its processor and serves many calls. It applies the
checkpoint's own sampling defaults (`generation_config.json`; otherwise the model card's
recommendation for the model family: Instruct 0.2, Thinking 0.6, Thinking-2506 0.8), stops on
`<|im_end|>`, and splits a thinking model's `◁think▷…◁/think▷` reasoning from its answer.

Messages use the chat layout of kvl_core/processor/chat.py:
    [{"role": "user", "content": [{"type": "image", "image": "page.png"}, {"type": "text", "text": "..."}]}]
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from kvl_core.errors import KvlError, read_json_object
from kvl_core.generation import SamplingParams, generate
from kvl_core.processor.chat import Message, Processor, split_thinking


@dataclass
class ChatResult:
    text: str  # everything generated (reasoning included), special tokens removed
    answer: str
    reasoning: str | None
    truncated: bool  # a think block never closed: there is no answer
    finish_reason: str  # "stop" | "length" (| "cancelled" when a should_stop hook ended it)
    prompt_tokens: int
    completion_tokens: int
    thinking_tokens: int
    prefill_seconds: float
    decode_seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def family_temperature(name: str) -> float:
    name = name.lower()
    if "thinking-2506" in name:
        return 0.8
    if "thinking" in name:
        return 0.6
    return 0.2


class Engine:
    def __init__(self, model, processor: Processor, defaults: dict[str, Any] | None = None, name: str = "model"):
        self.model = model
        self.processor = processor
        self.name = name
        self.defaults = defaults or {}
        tok = processor.tokenizer
        stop = {tok.im_end_id}
        eos = self.defaults.get("eos_token_id")
        stop |= set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
        self.stop_ids = sorted(stop)

    @classmethod
    def load(cls, spec: str | Path | None = None, device: str = "cpu", dtype=None) -> "Engine":
        """Resolve a model spec (path, cached HF repo id, $KVL_MODEL, user config) and load it."""
        from kvl_core.hub import configured_model_spec, default_notice, resolve_model
        from kvl_core.model import KimiVLForConditionalGeneration

        from kvl_core.processor.image import steady_memory

        steady_memory()  # long runs preprocess thousands of images: keep RSS flat (see its docstring)
        path = resolve_model(str(spec) if spec is not None else None)
        if configured_model_spec(str(spec) if spec is not None else None) is None:
            # the built-in demo model stood in: say so once (the CLI shows kvl.notice as a dim line)
            logging.getLogger("kvl.notice").info(default_notice())
        model = KimiVLForConditionalGeneration.from_pretrained(path, dtype=dtype, device=device)
        processor = Processor.from_pretrained(path)
        defaults = {}
        gen_cfg = Path(model.name_or_path) / "generation_config.json"
        if gen_cfg.exists():
            defaults = read_json_object(gen_cfg)
        name = str(spec) if spec is not None else path.name
        return cls(model, processor, defaults, name=name)

    # ---- options ------------------------------------------------------------------------------

    def sampling(self, **overrides) -> SamplingParams:
        """The checkpoint's defaults, overridden by the non-None keyword arguments."""
        temperature = self.defaults.get("temperature", family_temperature(self.name))
        p = SamplingParams(
            max_new_tokens=int(self.defaults.get("max_new_tokens", 512)),
            temperature=temperature,
            do_sample=temperature > 0,
            top_p=float(self.defaults.get("top_p", 1.0)),
            top_k=int(self.defaults.get("top_k", 0)),
            repetition_penalty=float(self.defaults.get("repetition_penalty", 1.0)),
        )
        for key, value in overrides.items():
            if value is None:
                continue
            if not hasattr(p, key):
                raise TypeError(f"unknown generation option {key!r}")
            setattr(p, key, value)
        if "temperature" in overrides and overrides["temperature"] is not None and "do_sample" not in overrides:
            p.do_sample = overrides["temperature"] > 0
        p.stop_token_ids = tuple(self.stop_ids) + tuple(p.stop_token_ids)
        return p

    # ---- calls --------------------------------------------------------------------------------

    def chat(self, messages: Sequence[Message], on_text: Callable[[str], None] | None = None, **options) -> ChatResult:
        """One conversation -> the assistant's reply. `on_text` receives text deltas as they are generated."""
        return self.chat_batch([messages], on_text=on_text, **options)[0]

    def chat_batch(self, conversations: Sequence[Sequence[Message]], on_text: Callable[[str], None] | None = None,
                   *, on_delta: Callable[[int, str], None] | None = None,
                   should_stop: Callable[[int, int], str | None] | None = None, **options) -> list[ChatResult]:
        """Several conversations generated together as one left-padded batch.

        `on_text` streams the first conversation; `on_delta(row, text)` streams every row (a server's
        clients); `should_stop` is generation.generate's per-row early stop."""
        params = self.sampling(**options)
        batch = self.processor.batch(conversations) if len(conversations) > 1 else self.processor(conversations[0])
        params.max_new_tokens = self._fit_context(batch["input_ids"].shape[1], params.max_new_tokens)
        if on_text is not None:
            on_delta = _first_row(on_text, on_delta)
        decoders = [_Incremental(self.processor) for _ in conversations] if on_delta is not None else []

        def on_token(row: int, tok: int) -> None:
            delta = decoders[row].push(tok)
            if delta:
                on_delta(row, delta)

        out = generate(
            self.model, batch["input_ids"], attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"], image_grid_hws=batch["image_grid_hws"], params=params,
            pad_token_id=self.processor.tokenizer.pad_id, codec=self.processor.tokenizer,
            on_token=on_token if on_delta is not None else None, should_stop=should_stop,
        )
        for row, decoder in enumerate(decoders):  # a trailing incomplete character was held back: release it
            rest = decoder.flush()
            if rest:
                on_delta(row, rest)
        results = []
        for i, ids in enumerate(out.new_tokens):
            text = self.processor.decode(ids, skip_special_tokens=True)
            for s in params.stop_strings:
                if s in text:
                    text = text[: text.index(s)]
            reasoning, answer, truncated = split_thinking(text)
            results.append(ChatResult(
                text=text, answer=answer, reasoning=reasoning, truncated=truncated,
                finish_reason=out.finish_reasons[i], prompt_tokens=out.prompt_tokens[i],
                completion_tokens=len(ids), thinking_tokens=out.thinking_tokens[i],
                prefill_seconds=out.prefill_seconds, decode_seconds=out.decode_seconds,
            ))
        return results

    def stream(self, messages: Sequence[Message], **options) -> Iterator[str]:
        """Yield text deltas while generating; the final `ChatResult` is then in `self.last_result`."""
        q: queue.Queue = queue.Queue()
        done = object()

        def work():
            try:
                self.last_result = self.chat(messages, on_text=q.put, **options)
            except BaseException as e:  # surfaced in the consumer's thread
                q.put(e)
            q.put(done)

        t = threading.Thread(target=work, daemon=True)
        t.start()
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        t.join()

    @property
    def context_length(self) -> int:
        """Prompt + answer tokens the model takes (the OpenAI backend answers the same question remotely)."""
        return int(self.model.config.text.max_position_embeddings)

    def _fit_context(self, prompt_len: int, max_new: int) -> int:
        """The answer budget that fits the model's context after the prompt."""
        limit = self.context_length
        if prompt_len >= limit:
            raise KvlError(f"the prompt is {prompt_len} tokens but {self.name} takes at most {limit}")
        return min(max_new, limit - prompt_len)


def _first_row(on_text: Callable[[str], None], also: Callable[[int, str], None] | None) -> Callable[[int, str], None]:
    def deliver(row: int, delta: str) -> None:
        if row == 0:
            on_text(delta)
        if also is not None:
            also(row, delta)
    return deliver


class _Incremental:
    """Turns a token stream into text deltas without splitting multi-byte characters."""

    def __init__(self, processor: Processor):
        self.processor = processor
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, tok: int) -> str:
        self.ids.append(tok)
        text = self.processor.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else text
        self.emitted = text
        return delta

    def flush(self) -> str:
        text = self.processor.decode(self.ids, skip_special_tokens=True)
        delta = text[len(self.emitted):] if text.startswith(self.emitted) else ""
        self.emitted = text
        return delta
