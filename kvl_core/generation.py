"""Token generation with the latent KV cache: prefill once (images included), then one token per step.

Supports greedy and sampled decoding (temperature, top-k, top-p, repetition penalty, seeds), stop
ids and stop strings, batches of prompts with different lengths (left padding), a streaming
callback, and a *thinking budget*: once a thinking model has spent `thinking_budget` tokens inside
its `◁think▷` block, the closing marker is forced so the model must answer (the paper's test-time
scaling knob, Figure 13).

On CUDA (batch 1-64) the decode steps run as one captured CUDA graph over a preallocated latent
cache (`StaticDecoder`): the same math as the model's own decode branch, at fixed shapes, with the
sync-free grouped MoE, so a step costs one graph launch instead of thousands of kernel launches
from Python. Elsewhere decoding goes through the model's forward exactly as before.

Shape legend: B batch, T prompt length (padded), N new tokens, C static cache capacity, V vocab.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import torch

from kvl_core.model.cache import StaticLatentCache
from kvl_core.model.language import apply_rope_interleaved, rope_cos_sin
from kvl_core.processor.chat import THINK_CLOSE, THINK_OPEN


class TextCodec(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: Sequence[int] = ()
    stop_strings: Sequence[str] = ()
    thinking_budget: int | None = None  # max tokens inside ◁think▷…◁/think▷; None = unlimited

    def validate(self) -> None:
        from kvl_core.errors import KvlError

        if self.max_new_tokens < 0:
            raise KvlError("max_new_tokens must be >= 0")
        if self.do_sample and self.temperature <= 0:
            raise KvlError("temperature must be > 0 when sampling (use greedy decoding for temperature 0)")
        if not 0 < self.top_p <= 1:
            raise KvlError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.repetition_penalty <= 0:
            raise KvlError("top_k must be >= 0 and repetition_penalty > 0")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise KvlError("thinking_budget must be >= 0")


@dataclass
class GenerationOutput:
    sequences: torch.Tensor  # [B, T + N]: prompt (as given, padded) then new ids, pad after a stop
    new_tokens: list[list[int]]  # per row, the generated ids up to and including the stop id
    finish_reasons: list[str]  # "stop" | "length"
    prompt_tokens: list[int]
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    thinking_tokens: list[int] = field(default_factory=list)


def process_logits(logits: torch.Tensor, p: SamplingParams, seen: torch.Tensor | None,
                   generator: torch.Generator | None) -> torch.Tensor:
    """logits [B, V] fp32 -> next ids [B]."""
    if p.repetition_penalty != 1.0 and seen is not None:
        # CTRL-style penalty over every id already in the sequence (prompt included), as HF does.
        picked = logits.gather(1, seen)
        picked = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if not p.do_sample:
        return logits.argmax(-1)
    logits = logits / p.temperature
    if p.top_k and p.top_k < logits.shape[-1]:
        kth = logits.topk(p.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= p.top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


class StaticDecoder:
    """One decode step of a DeepseekV3ForCausalLM at fixed shapes: ids [B] at rope positions [B],
    written into cache column `slot`, -> next-token logits [B, V] fp32.

    On CUDA `capture()` records the step in a CUDA graph once; each `step()` then copies three small
    inputs and replays it. Without capture (the CPU, tests) the same code runs eagerly.
    """

    def __init__(self, lm, batch: int, capacity: int):
        cfg = lm.config
        w = lm.lm_head.weight
        self.lm, self.batch, self.capacity = lm, batch, capacity
        self.cache = StaticLatentCache(cfg.num_hidden_layers, batch, capacity, cfg.kv_lora_rank + cfg.qk_rope_head_dim,
                                       w.dtype, w.device)
        self.ids = torch.zeros(batch, dtype=torch.long, device=w.device)
        self.pos = torch.zeros(batch, dtype=torch.long, device=w.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=w.device)
        self.graph = None
        self.logits: torch.Tensor | None = None

    def __deepcopy__(self, memo):
        # Kept on the model between generate() calls; a deep copy of the model (e.g. a frozen
        # reference policy) starts without one rather than copying a CUDA graph.
        return None

    @torch.no_grad()
    def capture(self) -> None:
        """Warm up (builds absorbed and stacked weights, picks the MoE kernel) on a side stream,
        then record one step. Leaves the cache empty."""
        stream = torch.cuda.Stream(self.ids.device)
        stream.wait_stream(torch.cuda.current_stream(self.ids.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._run()
        torch.cuda.current_stream(self.ids.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: a server's other threads may keep using CUDA while this one captures.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.logits = self._run()
        self.cache.buf.zero_()
        self.cache.valid.zero_()

    @torch.no_grad()
    def step(self, ids: torch.Tensor, pos: torch.Tensor, slot: int) -> torch.Tensor:
        """Logits [B, V] for `ids` [B] at positions `pos` [B], cached in column `slot`. With a graph
        the returned tensor is overwritten by the next step."""
        if slot >= self.capacity:
            raise ValueError(f"static decode cache is full ({self.capacity} positions)")
        self.ids.copy_(ids)
        self.pos.copy_(pos)
        self.slot.fill_(slot)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.logits

    def _run(self) -> torch.Tensor:
        lm, cache = self.lm, self.cache
        cfg = lm.config
        cache.valid.index_fill_(1, self.slot, True)
        visible = cache.valid[:, None, None, :]  # [B, 1, 1, C]
        x = lm.model.embed_tokens(self.ids[:, None])  # [B, 1, Hd]
        cos, sin = rope_cos_sin(self.pos[:, None], cfg.qk_rope_head_dim, cfg.rope_theta)
        for i, layer in enumerate(lm.model.layers):
            x = x + _mla_decode(layer.self_attn, layer.input_layernorm(x), cos, sin, cache.buf[i], self.slot, visible)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return lm.lm_head(lm.model.norm(x)[:, -1]).float()


def _mla_decode(a, x, cos, sin, buf, slot, visible):
    """The decode branch of MLAttention (model/language.py) over a full static cache buf [B, C, R + dr]:
    write this token's latent into column `slot`, attend in latent space to the visible columns."""
    B = x.shape[0]
    q = a.q_proj(x) if hasattr(a, "q_proj") else a.q_b_proj(a.q_a_layernorm(a.q_a_proj(x)))
    q_nope, q_pe = q.view(B, 1, a.nh, -1).transpose(1, 2).split([a.dn, a.dr], dim=-1)
    c, k_pe = a.kv_a_proj_with_mqa(x).split([a.rank, a.dr], dim=-1)
    c = a.kv_a_layernorm(c)
    q_pe = apply_rope_interleaved(q_pe, cos, sin)  # [B, nH, 1, dr]
    k_pe = apply_rope_interleaved(k_pe[:, None], cos, sin)[:, 0]  # [B, 1, dr]
    buf.index_copy_(1, slot, torch.cat([c, k_pe], dim=-1).to(buf.dtype))
    w_uk, w_uv_t = a._absorbed_weights()
    qf = torch.cat([torch.matmul(q_nope, w_uk), q_pe], dim=-1).reshape(B, a.nh, -1)
    scores = torch.bmm(qf, buf.transpose(1, 2)).view(B, a.nh, 1, -1) * a.scale
    probs = scores.masked_fill(~visible, float("-inf")).float().softmax(-1).to(buf.dtype)
    o_lat = torch.bmm(probs.view(B, a.nh, -1), buf[..., : a.rank]).view(B, a.nh, 1, a.rank)
    o = torch.matmul(o_lat, w_uv_t)  # [B, nH, 1, dv]
    return a.o_proj(o.transpose(1, 2).reshape(B, 1, a.nh * a.dv))


MAX_GRAPH_BATCH = 64


def _static_capacity(n: int) -> int:
    return -(-n // 256) * 256  # whole 256-column blocks, so nearby lengths share one captured graph


def static_decoder(lm, batch: int, capacity: int, capture: bool) -> StaticDecoder:
    """The model's StaticDecoder for (batch, >= capacity), kept on the model between calls; only the
    latest is kept (its cache is batch x capacity x 576 values per layer)."""
    capacity = _static_capacity(capacity)
    dec = getattr(lm, "_kvl_static_decoder", None)
    if dec is not None and dec.batch == batch and dec.capacity >= capacity and (dec.graph is not None) == capture:
        return dec
    lm._kvl_static_decoder = None
    del dec
    dec = StaticDecoder(lm, batch, capacity)
    if capture:
        dec.capture()
    lm._kvl_static_decoder = dec
    return dec


def _want_static(device: torch.device, batch: int, static_decode: bool | None) -> bool:
    if static_decode is not None:
        return static_decode
    return device.type == "cuda" and batch <= MAX_GRAPH_BATCH and os.environ.get("KVL_CUDA_GRAPHS", "1") != "0"


class _RowState:
    """Per-row bookkeeping for stop strings and the thinking budget (needs a text codec)."""

    def __init__(self, codec: TextCodec | None, p: SamplingParams, close_ids: list[int]):
        self.codec, self.p, self.close_ids = codec, p, close_ids
        self.ids: list[int] = []
        self.forced: list[int] = []  # ids queued to be emitted instead of sampling
        self.thinking_tokens = 0
        self.in_think = None  # unknown until the output shows whether it opens a think block
        self.done = False
        self.reason = "length"

    def tail_text(self, n: int = 24) -> str:
        return self.codec.decode(self.ids[-n:], skip_special_tokens=False) if self.codec else ""

    def after_token(self) -> None:
        if self.codec is None:
            return
        p = self.p
        if p.stop_strings:
            text = self.tail_text(max(8, max(len(s) for s in p.stop_strings) + 4))
            if any(s in text for s in p.stop_strings):
                self.done, self.reason = True, "stop"
                return
        if p.thinking_budget is None:
            return
        if self.in_think is None:
            head = self.codec.decode(self.ids, skip_special_tokens=False).lstrip()
            if head.startswith(THINK_OPEN):
                self.in_think = True
                return  # the budget counts the tokens after the opening marker
            elif len(head) >= len(THINK_OPEN) or not THINK_OPEN.startswith(head):
                self.in_think = False  # not a thinking answer: the budget does not apply
        if self.in_think:
            self.thinking_tokens += 1
            if THINK_CLOSE in self.tail_text(12):
                self.in_think = False
            elif self.thinking_tokens >= p.thinking_budget and not self.forced:
                self.forced = list(self.close_ids)
                self.in_think = False


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    image_grid_hws: torch.Tensor | None = None,
    params: SamplingParams | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    codec: TextCodec | None = None,
    on_token: Callable[[int, int], None] | None = None,
    should_stop: Callable[[int, int], str | None] | None = None,
    static_decode: bool | None = None,
) -> GenerationOutput:
    """Generate for a (left-padded) batch. `model` is KimiVLForConditionalGeneration or a bare
    DeepseekV3ForCausalLM (text only). `codec` (the tokenizer) is needed only for stop strings and
    the thinking budget. `on_token(row, id)` is called for every emitted token, in order.
    `should_stop(row, n_generated)` may end one row early by returning its finish reason (a server
    cancels a disconnected client's row, or caps a row below the batch's budget); the other rows go on.
    `static_decode`: decode through a StaticDecoder (None = on CUDA for batch <= 64, captured as a
    CUDA graph there; True on the CPU runs it eagerly, for tests).
    """
    p = params or SamplingParams()
    p.validate()
    if (p.stop_strings or p.thinking_budget is not None) and codec is None:
        raise ValueError("stop_strings and thinking_budget need a codec (tokenizer)")
    device = next(model.parameters()).device
    input_ids = input_ids.to(device)
    B, T = input_ids.shape
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
        if bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("batched prompts must be left-padded (the last column must be real tokens)")
        if bool(attention_mask.all()):
            attention_mask = None  # equal lengths: the fast causal path
    stop_ids = set(p.stop_token_ids)
    if eos_token_id is not None:
        stop_ids |= {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (min(stop_ids) if stop_ids else 0)
    generator = None
    if p.do_sample and p.seed is not None:
        generator = torch.Generator(device=device).manual_seed(p.seed)
    close_ids = codec.encode(THINK_CLOSE) if (codec is not None and p.thinking_budget is not None) else []
    rows = [_RowState(codec, p, close_ids) for _ in range(B)]
    lm = getattr(model, "language_model", model)
    cache = lm.new_cache(capacity=T + p.max_new_tokens)

    t0 = time.perf_counter()
    kwargs = dict(attention_mask=attention_mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    if pixel_values is not None:
        kwargs.update(pixel_values=pixel_values, image_grid_hws=image_grid_hws)
    logits = model(input_ids, **kwargs).logits[:, -1]
    dec = None
    if p.max_new_tokens > 1 and _want_static(device, B, static_decode) and \
            (static_decode or not getattr(lm, "_kvl_graphs_failed", False)):
        try:
            dec = static_decoder(lm, B, T + p.max_new_tokens, capture=device.type == "cuda")
            dec.cache.load(cache, attention_mask)
        except (RuntimeError, torch.OutOfMemoryError) as e:
            if static_decode:
                raise
            warnings.warn(f"CUDA-graph decoding unavailable ({str(e).splitlines()[0]}); decoding eagerly", stacklevel=2)
            lm._kvl_static_decoder = dec = None
            if not isinstance(e, torch.OutOfMemoryError):
                lm._kvl_graphs_failed = True  # not retried for this model (a smaller batch may fit after an OOM)
        # Next rope position of each row: its real tokens so far (left padding counts none).
        pos = attention_mask.sum(-1) if attention_mask is not None else torch.full((B,), T, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: the prefill ends here, not at launch
    t1 = time.perf_counter()
    seen = input_ids if p.repetition_penalty != 1.0 else None
    out_cols: list[torch.Tensor] = []
    for step in range(p.max_new_tokens):
        nxt = process_logits(logits, p, seen, generator)
        nxt_list = nxt.tolist()
        for b, r in enumerate(rows):
            if r.done:
                nxt_list[b] = pad
            elif r.forced:
                nxt_list[b] = r.forced.pop(0)
        for b, r in enumerate(rows):
            if r.done:
                continue
            tok = nxt_list[b]
            r.ids.append(tok)
            if on_token is not None:
                on_token(b, tok)
            if tok in stop_ids:
                r.done, r.reason = True, "stop"
            elif not r.forced:
                r.after_token()
            if not r.done and should_stop is not None and (reason := should_stop(b, len(r.ids))):
                r.done, r.reason = True, reason
        nxt = torch.tensor(nxt_list, device=device)
        out_cols.append(nxt)
        if all(r.done for r in rows) or step == p.max_new_tokens - 1:
            break
        if seen is not None:
            seen = torch.cat([seen, nxt[:, None]], 1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], 1)
        # Decode steps carry no images, so they go straight to the language model.
        if dec is not None:
            logits = dec.step(nxt, pos + step, T + step)
            continue
        logits = lm(nxt[:, None], attention_mask=attention_mask, past_key_values=cache, use_cache=True).logits[:, -1]
    t2 = time.perf_counter()
    new = torch.stack(out_cols, 1) if out_cols else input_ids.new_zeros(B, 0)
    prompt_tokens = attention_mask[:, :T].sum(-1).tolist() if attention_mask is not None else [T] * B
    return GenerationOutput(
        sequences=torch.cat([input_ids, new], 1),
        new_tokens=[r.ids for r in rows],
        finish_reasons=[r.reason for r in rows],
        prompt_tokens=[int(n) for n in prompt_tokens],
        prefill_seconds=t1 - t0,
        decode_seconds=t2 - t1,
        thinking_tokens=[r.thinking_tokens for r in rows],
    )
