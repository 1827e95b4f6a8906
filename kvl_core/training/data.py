"""Training data: JSONL sources, tokenisation with loss masks, packing, mixtures, resumable order.

Design: training.md §2.3 (packing with per-document isolation) and §2.4 (deterministic, resumable
loading); the Kimi-VL report §2.3 (joint pre-training with a progressively increasing multimodal share)
and §2.4 (SFT supervises only answers and their special tokens).

Data format (one JSON object per line; blank lines are ignored; paths are relative to the JSONL's folder)
----------------------------------------------------------------------------------------------------------
chat     {"messages": [{"role": "system"|"user"|"assistant", "content": "text" | [part, ...]}, ...]}
         part = {"type": "text", "text": "..."}
              | {"type": "image", "image": "img/cat.png"}          (absolute paths and data: URLs work too)
              | {"type": "video", "frames": ["f0.png", "f1.png"], "timestamps": [0, 5]}
         A video part is a list of image parts; with `timestamps` (seconds, one per frame) each frame is
         preceded by a text label "[HH:MM:SS]" (e.g. "[00:00:05]"). A chat needs an assistant message.
text     {"text": "..."}                                               pre-training text
caption  {"image": "img/cat.png", "caption": "..."}                     image-caption pair
Other keys (ids, metadata) are ignored. `Source(kind="auto")` detects the kind per line.

Tokenisation and loss masks (`encode_sample`; mask True = the token is a supervised *target*)
--------------------------------------------------------------------------------------------
chat     the processor's chat template (`Processor.encode(messages, add_generation_prompt=False)`).
         supervise="assistant" (SFT): only assistant content and its closing `<|im_end|>`; system/user
         turns, role headers and image blocks are masked. supervise="all" (pre-training): every token
         except image placeholders.
text     tokenizer.encode(text) + [EOS], all supervised.
caption  <|media_start|>image<|media_content|> <|media_pad|>*n <|media_end|> caption [EOS] (the same image
         block as the chat template, no chat turn), supervising only the caption and [EOS]: the
         alignment stage's "describe this image" objective.

Packing (`Packer`): whole documents go greedily (first fit, in arrival order) into the rows of a batch;
a document never spans two rows. A batch is only as wide as its fullest row needs (rounded up to a
multiple of 128, at most seq_len), and each micro-batch of `split` is trimmed again to its own rows, so a
row holding 7K tokens of a 32K stage costs 7K, and an empty row costs nothing. Labels are shifted inside each document (`labels[t]` is the id of
token t+1 when t+1 is in the same document and supervised, else -100), positions restart at 0 per
document and `doc_ids` numbers the documents of a row (tail padding is one more document), so with
`document_mask` the packed row computes exactly what each document alone computes. Images of a batch
are concatenated in the row-major order of their placeholders, which is the order in which the model
substitutes them; the vision tower attends within each image only (cu_seqlens from the grids).

Order (`Stream`): the sample order of source i in epoch e is `randperm(n_i)` seeded by a hash of (seed,
i, e); the source of the k-th draw of step s is chosen by a hash of (seed, s, k), with the share of
sources tagged "multimodal" (any image in the source) given by `ratio(s)`. No hidden generator state
exists, so `state_dict()` (step, per-source epoch and cursor, the carried-over sample, counters) is the
whole data position; it holds only ints/strings/lists (JSON). The global batch is defined independently
of the world size and rank r takes a contiguous block of its rows, so a resume on another world size
replays identical global batches. The stream uses no torch/numpy/python RNG state: the trainer's RNG
checkpoint (dropout etc.) is separate. A state may be loaded into a stream with another seq_len, batch
size or overlong policy (the next phase of a stage: 8K -> 32K -> 128K); the carried document is re-fitted.

`Stream(kind="caption")` serves the CoCa ViT stage instead: `CaptionBatch`es of exactly `batch_rows`
image-caption pairs (`[BOS] caption [EOS]` ids, padded), with the same order, mixture and state rules.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Sequence

import torch

from kvl_core.errors import KvlError, read_user_file

log = logging.getLogger("kvl.data")

KINDS = ("chat", "text", "caption")
ROLES = ("system", "user", "assistant")
POLICIES = ("stop", "skip")
OVERLONG = ("truncate", "drop")
# "sft"/"pretrain" are accepted as aliases so both the stage names and StageConfig.supervise work.
_SUPERVISE = {"assistant": "assistant", "sft": "assistant", "all": "all", "pretrain": "all"}
IGNORE = -100
MAX_REPORTED = 20  # problem messages kept for the report; the counters count all of them
ROW_MULTIPLE = 128  # packed rows are as wide as their longest content, rounded up to this (capped at seq_len)


# ---- sources and samples --------------------------------------------------------------------------

def split_weight(spec: str) -> tuple[str, float]:
    """`PATH[:WEIGHT]` -> (path, weight); a colon not followed by a number stays in the path."""
    head, _, tail = spec.rpartition(":")
    if head and tail.replace(".", "", 1).isdigit():
        return head, float(tail)
    return spec, 1.0


@dataclass
class Source:
    """One JSONL file. `weight` is its share within its mixture group; `tags` name groups (the tag
    "multimodal" is added automatically when the file holds any image)."""

    path: str | os.PathLike
    kind: str = "auto"
    weight: float = 1.0
    name: str | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("auto", *KINDS):
            raise KvlError(f"{self.path}: unknown source kind {self.kind!r} (auto, chat, text or caption)")
        if not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise KvlError(f"{self.path}: source weight must be a positive number, got {self.weight!r}")
        if self.name is None:
            self.name = Path(self.path).stem
        self.tags = tuple(self.tags)


@dataclass
class Sample:
    """One validated line. Image paths are resolved (absolute) and videos expanded to image parts."""

    kind: str  # chat | text | caption
    file: str
    line: int  # 1-based line number in `file`
    messages: list[dict] | None = None
    text: str | None = None
    image: str | None = None
    caption: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def has_image(self) -> bool:
        if self.kind == "caption":
            return True
        if self.kind == "chat":
            return any(isinstance(m["content"], list) and any(p["type"] == "image" for p in m["content"])
                       for m in self.messages or [])
        return False


@dataclass
class DataStats:
    """Counters the trainer reports. Everything but `read_skipped`/`problems` is part of the stream state."""

    batches: int = 0
    samples: int = 0  # documents packed into emitted batches
    tokens: int = 0  # non-padding tokens of emitted batches
    supervised: int = 0  # label positions != -100
    padding: int = 0
    truncated: int = 0  # overlong samples cut to seq_len
    dropped: int = 0  # overlong samples dropped (policy "drop", or nothing supervised left after a cut)
    skipped: int = 0  # samples that failed to encode under policy "skip" (e.g. a corrupt image)
    read_skipped: int = 0  # invalid lines skipped while reading the files (policy "skip")
    problems: list[str] = field(default_factory=list)

    STATE_KEYS = ("batches", "samples", "tokens", "supervised", "padding", "truncated", "dropped", "skipped")

    def report(self, message: str) -> None:
        # Only the first few are logged and kept (a broken file can have millions); all are counted.
        if len(self.problems) < MAX_REPORTED:
            log.warning("%s", message)
            self.problems.append(message)
        elif len(self.problems) == MAX_REPORTED:
            log.warning("further data problems are counted but not shown")
            self.problems.append("... (further problems counted, not shown)")

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in (*self.STATE_KEYS, "read_skipped")}


def read_samples(source: Source | str | os.PathLike, policy: str = "stop",
                 stats: DataStats | None = None) -> list[Sample]:
    """Parse and validate every line of a JSONL source.

    A bad line (invalid JSON, wrong schema, unknown role, missing image file) raises
    `KvlError("file.jsonl:17: ...")` under policy "stop"; under "skip" it is counted in
    `stats.read_skipped` and logged. A file without any valid sample raises KvlError either way.
    """
    if policy not in POLICIES:
        raise KvlError(f"unknown bad-input policy {policy!r} (stop or skip)")
    if not isinstance(source, Source):
        source = Source(source)
    stats = stats if stats is not None else DataStats()
    path = Path(source.path)
    label = str(source.path)
    raw = read_user_file(path, label, "a JSONL file")
    base = path.parent
    out: list[Sample] = []
    bad = 0
    for lineno, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        where = f"{label}:{lineno}"
        try:
            out.append(_parse_line(line, source.kind, base, label, lineno))
        except _BadLine as e:
            if policy == "stop":
                raise KvlError(f"{where}: {e}") from None
            bad += 1
            stats.read_skipped += 1
            stats.report(f"{where}: {e} (skipped)")
    if not out:
        if bad:
            raise KvlError(f"{label}: no usable samples (all {bad} non-empty lines are invalid)")
        raise KvlError(f"{label}: empty dataset (no samples)")
    return out


class _BadLine(Exception):
    """A schema problem of one line; becomes KvlError (stop) or a counted skip."""


def _parse_line(line: bytes, kind: str, base: Path, file: str, lineno: int) -> Sample:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _BadLine("not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _BadLine(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise _BadLine(f"expected a JSON object, got {type(obj).__name__}")
    if kind == "auto":
        if "messages" in obj:
            kind = "chat"
        elif "text" in obj:
            kind = "text"
        elif "image" in obj and "caption" in obj:
            kind = "caption"
        else:
            raise _BadLine("expected a 'messages', 'text' or 'image' + 'caption' field")
    if kind == "chat":
        return Sample("chat", file, lineno, messages=_parse_messages(obj.get("messages"), base))
    if kind == "text":
        text = obj.get("text")
        if not isinstance(text, str) or not text:
            raise _BadLine("'text' must be a non-empty string")
        return Sample("text", file, lineno, text=text)
    caption = obj.get("caption")
    if not isinstance(caption, str) or not caption:
        raise _BadLine("'caption' must be a non-empty string")
    return Sample("caption", file, lineno, image=_image_path(obj.get("image"), base, "'image'"), caption=caption)


def _parse_messages(messages: Any, base: Path) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise _BadLine("'messages' must be a non-empty list")
    out: list[dict] = []
    for i, msg in enumerate(messages, 1):
        if not isinstance(msg, dict):
            raise _BadLine(f"message {i} must be an object with 'role' and 'content'")
        role = msg.get("role")
        if role not in ROLES:
            raise _BadLine(f"message {i}: unknown role {role!r} (system, user or assistant)")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _BadLine(f"message {i}: 'content' must be a string or a list of parts")
        parts: list[dict] = []
        for j, part in enumerate(content, 1):
            if not isinstance(part, dict):
                raise _BadLine(f"message {i} part {j}: expected an object")
            ptype = part.get("type", "text")
            if ptype == "text":
                if not isinstance(part.get("text"), str):
                    raise _BadLine(f"message {i} part {j}: a text part needs a 'text' string")
                parts.append({"type": "text", "text": part["text"]})
            elif ptype in ("image", "image_url"):
                ref = part.get("image", part.get("image_url"))
                if isinstance(ref, dict):
                    ref = ref.get("url")
                parts.append({"type": "image", "image": _image_path(ref, base, f"message {i} part {j}")})
            elif ptype == "video":
                parts.extend(_video_parts(part, base, f"message {i} part {j}"))
            else:
                raise _BadLine(f"message {i} part {j}: unknown part type {ptype!r} (text, image or video)")
        out.append({"role": role, "content": parts})
    if not any(m["role"] == "assistant" for m in out):
        raise _BadLine("no assistant message (nothing to learn from)")
    return out


def _video_parts(part: dict, base: Path, where: str) -> list[dict]:
    frames = part.get("frames")
    if not isinstance(frames, list) or not frames:
        raise _BadLine(f"{where}: a video part needs a non-empty 'frames' list of image paths")
    stamps = part.get("timestamps")
    if stamps is not None:
        if (not isinstance(stamps, list) or len(stamps) != len(frames)
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t >= 0 for t in stamps)):
            raise _BadLine(f"{where}: 'timestamps' must list one non-negative number of seconds per frame")
    out: list[dict] = []
    for k, frame in enumerate(frames):
        if stamps is not None:
            out.append({"type": "text", "text": timestamp_label(stamps[k])})
        out.append({"type": "image", "image": _image_path(frame, base, f"{where} frame {k + 1}")})
    return out


def timestamp_label(seconds: float) -> str:
    """The text put before a video frame: `[HH:MM:SS]` (whole seconds, rounded down)."""
    s = int(seconds)
    return f"[{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}]"


def _image_path(ref: Any, base: Path, where: str) -> str:
    if not isinstance(ref, str) or not ref:
        raise _BadLine(f"{where}: the image must be given as a path string")
    if ref.startswith("data:"):
        return ref
    if ref.startswith(("http://", "https://")):
        raise _BadLine(f"{where}: remote image {ref} is not downloaded; store it next to the JSONL")
    p = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise _BadLine(f"{where}: image not found: {p}")
    return str(p)


# ---- tokenisation ---------------------------------------------------------------------------------

@dataclass
class Encoded:
    """One tokenised document. `labels_mask[t]` True = token t is a supervised target (predicted from t-1)."""

    input_ids: list[int]
    labels_mask: list[bool]
    pixel_values: torch.Tensor | None = None  # [sum(h*w), 3, 14, 14]
    image_grid_hws: torch.Tensor | None = None  # [N, 2]
    image_spans: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each image block

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_images(self) -> int:
        return 0 if self.image_grid_hws is None else int(self.image_grid_hws.shape[0])


def encode_sample(sample: Sample, processor, supervise: str = "assistant") -> Encoded:
    """Tokenise one sample with its loss mask (see the module docstring). Errors name `file:line`."""
    mode = _supervise(supervise)
    tok = processor.tokenizer
    try:
        if sample.kind == "chat":
            enc = processor.encode(sample.messages, add_generation_prompt=False)
            ids = list(enc.input_ids)
            if mode == "assistant":
                mask = [bool(m) for m in enc.assistant_mask]
            else:
                mask = [i != tok.media_pad_id for i in ids]
            pv, grids = enc.pixel_values, enc.image_grid_hws
        elif sample.kind == "text":
            ids = tok.encode(sample.text) + [_eos(tok)]
            mask = [True] * len(ids)
            pv = grids = None
        elif sample.kind == "caption":
            ids, mask, pv, grids = _encode_caption(sample, processor)
        else:
            raise KvlError(f"unknown sample kind {sample.kind!r}")
    except KvlError as e:
        raise KvlError(f"{sample.where}: {e}") from None
    return Encoded(ids, mask, pv, grids, image_spans(ids, tok))


def _supervise(supervise: str) -> str:
    try:
        return _SUPERVISE[supervise]
    except KeyError:
        raise KvlError(f"unknown supervise mode {supervise!r} (assistant/sft or all/pretrain)") from None


def _eos(tok) -> int:
    return tok.eos_id if tok.eos_id is not None else tok.im_end_id


def _encode_caption(sample: Sample, processor):
    from kvl_core.processor import load_image

    tok = processor.tokenizer
    img = load_image(sample.image, name=sample.image, max_pixels=processor.max_pixels,
                     alpha_background=processor.alpha_background)
    n = processor.image_processor.plan(img.width, img.height, sample.image).tokens
    packed = processor.image_processor([img], [sample.image])
    head = ([tok.media_start_id] + tok.encode("image") + [tok.media_content_id]
            + [tok.media_pad_id] * n + [tok.media_end_id])
    tail = tok.encode(sample.caption) + [_eos(tok)]
    return head + tail, [False] * len(head) + [True] * len(tail), packed["pixel_values"], packed["image_grid_hws"]


def image_spans(ids: Sequence[int], tok) -> list[tuple[int, int]]:
    """[start, end) of each `<|media_start|> ... <|media_end|>` block, in order.

    Control ids come only from the template (the tokenizer never produces them from text), so scanning
    for them is safe.
    """
    spans: list[tuple[int, int]] = []
    start = None
    for t, i in enumerate(ids):
        if i == tok.media_start_id:
            start = t
        elif i == tok.media_end_id and start is not None:
            spans.append((start, t + 1))
            start = None
    return spans


# ---- packing --------------------------------------------------------------------------------------

@dataclass
class PackedBatch:
    """B fixed-length rows of packed documents (the model's `input_ids, position_ids, doc_ids`, plus
    already shifted labels: loss = CE(logits[:, t], labels[:, t]) over labels != -100)."""

    input_ids: torch.Tensor  # [B, T] long; padding = pad_id
    labels: torch.Tensor  # [B, T] long; next token if same document and supervised, else -100
    position_ids: torch.Tensor  # [B, T] long; restart at 0 per document (padding too)
    doc_ids: torch.Tensor  # [B, T] long; 0, 1, ... per row; the tail padding is one more id
    pixel_values: torch.Tensor | None  # [L, 3, 14, 14]: all images of the batch, row-major placeholder order
    image_grid_hws: torch.Tensor | None  # [N, 2]
    n_supervised: int  # labels != -100 in this batch
    n_tokens: int  # non-padding tokens in this batch
    sample_ids: list[list[Hashable]]  # per row, the ids of its documents in order
    images_per_row: list[int]
    global_n_supervised: int = -1  # over the whole global batch (the loss denominator under DP)
    global_n_tokens: int = -1

    def __post_init__(self) -> None:
        if self.global_n_supervised < 0:
            self.global_n_supervised = self.n_supervised
        if self.global_n_tokens < 0:
            self.global_n_tokens = self.n_tokens

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    def shard(self, rank: int, world_size: int) -> "PackedBatch":
        """Rows [rank*B/world, (rank+1)*B/world): concatenating the shards in rank order gives this batch."""
        a, b = _shard_bounds(self.rows, rank, world_size)
        return self if (a, b) == (0, self.rows) else self._slice(a, b)

    def split(self, micro_rows: int) -> list["PackedBatch"]:
        """Consecutive blocks of `micro_rows` rows (the last may be smaller), for gradient accumulation, each
        trimmed to its own content. Each keeps the global counts, so sum(CE) / global_n_supervised is the
        step's loss."""
        if micro_rows is None or micro_rows <= 0 or micro_rows >= self.rows:
            return [self.trimmed()]
        return [self._slice(a, min(a + micro_rows, self.rows)).trimmed() for a in range(0, self.rows, micro_rows)]

    def used(self) -> int:
        """Non-padding tokens of the fullest row."""
        return max((int((row < len(ids)).sum()) for row, ids in zip(self.doc_ids, self.sample_ids)), default=0)

    def trimmed(self, multiple: int = ROW_MULTIPLE) -> "PackedBatch":
        """The same rows cut to the width their content needs, rounded up to `multiple` (never wider than
        now). Only tail padding goes: it is its own document, so no real token's output changes."""
        T = int(self.input_ids.shape[1])
        width = _width(self.used(), T, multiple)
        if width == T:
            return self
        return replace(self, input_ids=self.input_ids[:, :width], labels=self.labels[:, :width],
                       position_ids=self.position_ids[:, :width], doc_ids=self.doc_ids[:, :width])

    def _slice(self, a: int, b: int) -> "PackedBatch":
        im0, im1 = sum(self.images_per_row[:a]), sum(self.images_per_row[:b])
        pv = grids = None
        if self.image_grid_hws is not None and im1 > im0:
            patches = self.image_grid_hws.prod(-1).tolist()
            p0, p1 = sum(patches[:im0]), sum(patches[:im1])
            pv, grids = self.pixel_values[p0:p1], self.image_grid_hws[im0:im1]
        labels = self.labels[a:b]
        return PackedBatch(
            self.input_ids[a:b], labels, self.position_ids[a:b], self.doc_ids[a:b], pv, grids,
            int((labels != IGNORE).sum()), _count_tokens(self.doc_ids[a:b], self.sample_ids[a:b]),
            self.sample_ids[a:b], self.images_per_row[a:b],
            self.global_n_supervised, self.global_n_tokens,
        )

    def padding_mask(self) -> torch.Tensor:
        """[B, T] bool, True on the tail padding of each row."""
        n_docs = torch.tensor([len(ids) for ids in self.sample_ids], device=self.doc_ids.device)
        return self.doc_ids >= n_docs[:, None]

    def cu_seqlens(self) -> tuple[torch.Tensor, int]:
        """(int32 [n_segments + 1], max length) of every document and padding segment of the rows
        flattened to one sequence: the metadata of varlen attention kernels (training.md §2.3)."""
        B, T = self.doc_ids.shape
        change = torch.ones(B, T, dtype=torch.bool)
        change[:, 1:] = self.doc_ids[:, 1:] != self.doc_ids[:, :-1]
        starts = change.reshape(-1).nonzero().squeeze(1)
        cu = torch.cat([starts, torch.tensor([B * T])]).to(torch.int32)
        return cu, int((cu[1:] - cu[:-1]).max())

    def to(self, device) -> "PackedBatch":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PackedBatch(mv(self.input_ids), mv(self.labels), mv(self.position_ids), mv(self.doc_ids),
                           mv(self.pixel_values), mv(self.image_grid_hws), self.n_supervised, self.n_tokens,
                           self.sample_ids, self.images_per_row, self.global_n_supervised, self.global_n_tokens)


def _width(used: int, limit: int, multiple: int = ROW_MULTIPLE) -> int:
    """Row width for `used` content tokens: rounded up to `multiple`, at least one multiple, at most `limit`."""
    return min(limit, max(multiple, -(-used // multiple) * multiple))


def _shard_bounds(rows: int, rank: int, world_size: int) -> tuple[int, int]:
    if world_size < 1 or not 0 <= rank < world_size or rows % world_size:
        raise KvlError(f"cannot split a batch of {rows} rows over {world_size} ranks (rank {rank})")
    per = rows // world_size
    return rank * per, (rank + 1) * per


@dataclass
class CaptionBatch:
    """N image-caption pairs for the CoCa ViT stage (training.md §2.2): not packed, one caption per image."""

    caption_ids: torch.Tensor  # [N, S] long: [BOS] caption [EOS], right-padded with pad_id
    pixel_values: torch.Tensor  # [L, 3, 14, 14], images in row order
    image_grid_hws: torch.Tensor  # [N, 2]
    n_tokens: int  # non-padding caption tokens
    sample_ids: list[Hashable]  # one per row
    pad_id: int
    global_n_images: int = -1

    def __post_init__(self) -> None:
        if self.global_n_images < 0:
            self.global_n_images = self.rows

    @property
    def rows(self) -> int:
        return int(self.caption_ids.shape[0])

    def shard(self, rank: int, world_size: int) -> "CaptionBatch":
        a, b = _shard_bounds(self.rows, rank, world_size)
        return self if (a, b) == (0, self.rows) else self._slice(a, b)

    def split(self, micro_rows: int) -> list["CaptionBatch"]:
        if micro_rows is None or micro_rows <= 0 or micro_rows >= self.rows:
            return [self]
        return [self._slice(a, min(a + micro_rows, self.rows)) for a in range(0, self.rows, micro_rows)]

    def _slice(self, a: int, b: int) -> "CaptionBatch":
        patches = self.image_grid_hws.prod(-1).tolist()
        p0, p1 = sum(patches[:a]), sum(patches[:b])
        ids = self.caption_ids[a:b]  # keeps the global width, so shards concatenate to the global batch
        return CaptionBatch(ids, self.pixel_values[p0:p1], self.image_grid_hws[a:b],
                            int((ids != self.pad_id).sum()), self.sample_ids[a:b], self.pad_id, self.global_n_images)

    def to(self, device) -> "CaptionBatch":
        return CaptionBatch(self.caption_ids.to(device), self.pixel_values.to(device), self.image_grid_hws.to(device),
                            self.n_tokens, self.sample_ids, self.pad_id, self.global_n_images)


def encode_caption_pair(sample: Sample, processor, max_tokens: int | None = None) -> tuple[list[int], torch.Tensor,
                                                                                            torch.Tensor, bool]:
    """(caption ids `[BOS] caption [EOS]`, pixel_values, grid [1, 2], truncated?) of one caption sample for
    the CoCa stage. BOS lets the caption decoder predict the first word; the cut keeps BOS."""
    from kvl_core.processor import load_image

    tok = processor.tokenizer
    if sample.kind != "caption":
        raise KvlError(f"{sample.where}: the ViT (CoCa) stage takes image-caption lines, not a {sample.kind} sample")
    try:
        img = load_image(sample.image, name=sample.image, max_pixels=processor.max_pixels,
                         alpha_background=processor.alpha_background)
        packed = processor.image_processor([img], [sample.image])
    except KvlError as e:
        raise KvlError(f"{sample.where}: {e}") from None
    bos = [tok.bos_id] if tok.bos_id is not None else []
    ids = bos + tok.encode(sample.caption) + [_eos(tok)]
    cut = max_tokens is not None and len(ids) > max_tokens
    return (ids[:max_tokens] if cut else ids), packed["pixel_values"], packed["image_grid_hws"], cut


def _count_tokens(doc_ids: torch.Tensor, sample_ids: list[list]) -> int:
    return sum(int((row < len(ids)).sum()) for row, ids in zip(doc_ids, sample_ids))


class Packer:
    """Packs `Encoded` documents into batches of `rows` x `seq_len` (training.md §2.3)."""

    def __init__(self, seq_len: int, pad_id: int, overlong: str = "truncate", stats: DataStats | None = None):
        if not isinstance(seq_len, int) or seq_len < 2:
            raise KvlError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if overlong not in OVERLONG:
            raise KvlError(f"unknown overlong policy {overlong!r} (truncate or drop)")
        self.seq_len = seq_len
        self.pad_id = int(pad_id)
        self.overlong = overlong
        self.stats = stats if stats is not None else DataStats()

    def fit(self, enc: Encoded, where: str = "sample", count: bool = True) -> Encoded | None:
        """`enc` if it fits in one row; else truncated (policy "truncate") or None (policy "drop").

        A cut never goes through an image block: it moves to before the block. A truncated sample with
        no supervised target left is dropped (counted as dropped).
        """
        n, T = len(enc), self.seq_len
        if n <= T:
            return enc
        if self.overlong == "drop":
            return self._drop(f"{where}: {n} tokens exceed seq_len {T} (dropped)", count)
        cut, keep = T, 0
        for s, e in enc.image_spans:
            if e <= cut:
                keep += 1
            else:
                cut = min(cut, s)
                break
        mask = enc.labels_mask[:cut]
        if not any(mask[1:]):  # position 0 is never a target
            return self._drop(f"{where}: {n} tokens exceed seq_len {T} and the first {cut} supervise "
                              "nothing (dropped)", count)
        pv = grids = None
        if keep:
            grids = enc.image_grid_hws[:keep]
            pv = enc.pixel_values[: int(grids.prod(-1).sum())]
        if count:
            self.stats.truncated += 1
        return Encoded(enc.input_ids[:cut], mask, pv, grids, enc.image_spans[:keep])

    def _drop(self, message: str, count: bool) -> None:
        if count:
            self.stats.dropped += 1
            self.stats.report(message)
        return None

    def start(self, rows: int) -> "PackBuilder":
        return PackBuilder(self, rows)

    def pack(self, docs: Iterable[Encoded | tuple[Hashable, Encoded]], rows: int) -> Iterator[PackedBatch]:
        """Greedy first-fit of a finite sequence of documents (or (id, document) pairs) into batches of
        `rows` rows; a batch closes when the next document fits in none of its rows. Overlong documents
        follow the overlong policy. The last batch may hold empty (all-padding) rows."""
        builder = self.start(rows)
        for k, item in enumerate(docs):
            sid, enc = item if isinstance(item, tuple) else (k, item)
            enc = self.fit(enc, f"sample {sid}")
            if enc is None:
                continue
            if not builder.add(enc, sid):
                yield builder.build()
                builder = self.start(rows)
                builder.add(enc, sid)
        if builder.n_docs:
            yield builder.build()


class PackBuilder:
    """One batch being filled: `add` places a document in the first row with room (first fit)."""

    def __init__(self, packer: Packer, rows: int):
        if not isinstance(rows, int) or rows < 1:
            raise KvlError(f"batch rows must be a positive integer, got {rows!r}")
        self.packer = packer
        self.rows: list[list[tuple[Hashable, Encoded]]] = [[] for _ in range(rows)]
        self.used = [0] * rows

    @property
    def n_docs(self) -> int:
        return sum(len(r) for r in self.rows)

    def add(self, enc: Encoded, sample_id: Hashable = None) -> bool:
        if len(enc) > self.packer.seq_len:
            raise ValueError("document longer than seq_len; pass it through Packer.fit first")
        for r, used in enumerate(self.used):
            if used + len(enc) <= self.packer.seq_len:
                self.rows[r].append((sample_id, enc))
                self.used[r] += len(enc)
                return True
        return False

    def build(self) -> PackedBatch:
        B, pad = len(self.rows), self.packer.pad_id
        T = _width(max(self.used, default=0), self.packer.seq_len)
        input_ids = torch.full((B, T), pad, dtype=torch.long)
        labels = torch.full((B, T), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((B, T), dtype=torch.long)
        doc_ids = torch.zeros((B, T), dtype=torch.long)
        pvs: list[torch.Tensor] = []
        grids: list[torch.Tensor] = []
        images_per_row: list[int] = []
        for r, docs in enumerate(self.rows):
            o, n_img = 0, 0
            for d, (_, enc) in enumerate(docs):
                n = len(enc)
                ids = torch.tensor(enc.input_ids, dtype=torch.long)
                sup = torch.tensor(enc.labels_mask, dtype=torch.bool)
                input_ids[r, o:o + n] = ids
                # Shift inside the document: the last token predicts nothing (never the next document).
                labels[r, o:o + n - 1] = torch.where(sup[1:], ids[1:], IGNORE)
                position_ids[r, o:o + n] = torch.arange(n)
                doc_ids[r, o:o + n] = d
                o += n
                if enc.n_images:
                    pvs.append(enc.pixel_values)
                    grids.append(enc.image_grid_hws)
                    n_img += enc.n_images
            # Tail padding is its own document so that its rows of the attention mask are not empty.
            position_ids[r, o:] = torch.arange(T - o)
            doc_ids[r, o:] = len(docs)
            images_per_row.append(n_img)
        n_tokens = sum(self.used)
        stats = self.packer.stats
        n_sup = int((labels != IGNORE).sum())
        stats.batches += 1
        stats.samples += self.n_docs
        stats.tokens += n_tokens
        stats.supervised += n_sup
        stats.padding += B * T - n_tokens
        return PackedBatch(
            input_ids, labels, position_ids, doc_ids,
            torch.cat(pvs) if pvs else None, torch.cat(grids) if grids else None,
            n_sup, n_tokens, [[sid for sid, _ in docs] for docs in self.rows], images_per_row,
        )


# ---- mixtures -------------------------------------------------------------------------------------

def _hash_u64(*parts: Any) -> int:
    """A stable 64-bit hash of the parts (Python's hash() is salted per process)."""
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def uniform(*parts: Any) -> float:
    """Counter-based uniform in [0, 1): a pure function of its arguments."""
    return (_hash_u64(*parts) >> 11) / float(1 << 53)


def source_order(seed: int, source_index: int, epoch: int, n: int) -> list[int]:
    """The sample order of one source in one epoch: a permutation that depends only on its arguments."""
    g = torch.Generator().manual_seed(_hash_u64("perm", seed, source_index, epoch) & ((1 << 63) - 1))
    return torch.randperm(n, generator=g).tolist()


@dataclass(frozen=True)
class Ramp:
    """Linear ramp of a share from `start` to `end` over `steps` steps beginning at `start_step`
    (before it: `start`; after: `end`). E.g. the multimodal share of joint pre-training."""

    start: float
    end: float
    steps: int
    start_step: int = 0

    def __call__(self, step: int) -> float:
        t = (step - self.start_step) / max(1, self.steps)
        return self.start + (self.end - self.start) * min(max(t, 0.0), 1.0)


Ratio = float | Callable[[int], float | None] | None


class Mixture:
    """Which source the `slot`-th draw of `step` comes from, as a pure function of (seed, step, slot).

    Without `ratio`, sources are drawn in proportion to their weights. With `ratio`, the draw first picks
    the group of sources tagged `tag` with probability `ratio(step)` (the others otherwise), then a source
    within the group by weight. If one group is empty, the other takes every draw; a ratio that returns
    None means "weights only" at that step.
    """

    def __init__(self, weights: Sequence[float], tagged: Sequence[bool], seed: int, ratio: Ratio = None):
        self.weights = [float(w) for w in weights]
        self.tagged = list(tagged)
        self.seed = seed
        self.ratio = ratio
        self._all = self._cum(range(len(self.weights)))
        self._in = self._cum([i for i, t in enumerate(self.tagged) if t])
        self._out = self._cum([i for i, t in enumerate(self.tagged) if not t])

    def _cum(self, idx: Iterable[int]) -> tuple[list[int], list[float]]:
        idx = list(idx)
        acc, cum = 0.0, []
        for i in idx:
            acc += self.weights[i]
            cum.append(acc)
        return idx, cum

    def share(self, step: int) -> float | None:
        r = self.ratio(step) if callable(self.ratio) else self.ratio
        if r is None:
            return None
        r = float(r)
        if not 0.0 <= r <= 1.0:
            raise KvlError(f"mixture ratio at step {step} is {r}; it must lie in [0, 1]")
        return r

    def choose(self, step: int, slot: int) -> int:
        r = self.share(step)
        group = self._all
        if r is not None and self._in[0] and self._out[0]:
            group = self._in if uniform("group", self.seed, step, slot) < r else self._out
        idx, cum = group
        u = uniform("source", self.seed, step, slot) * cum[-1]
        return idx[min(bisect.bisect_right(cum, u), len(idx) - 1)]


# ---- the stream -----------------------------------------------------------------------------------

class Stream:
    """Infinite iterator of this rank's `PackedBatch`es over a mixture of sources (training.md §2.4).

    Step s: the carried-over document (if any) goes first, then draws k = 0, 1, ... (source by
    `Mixture.choose(s, k)`, sample = the source's next index in its epoch permutation) are encoded and
    packed first-fit until one fits in no row; that one is carried to step s+1. A step makes at most N
    draws (N = the samples of all sources): a batch never holds more than one pass over the data, so a
    small dataset gives small batches rather than the same samples many times over in one step. `batch_rows` is the
    global number of rows; rank r gets rows [r*B/world, (r+1)*B/world).
    """

    STATE_VERSION = 1

    def __init__(
        self,
        sources: Sequence[Source | str | os.PathLike],
        processor,
        seq_len: int,
        batch_rows: int,
        seed: int = 0,
        *,
        supervise: str = "assistant",
        ratio: Ratio = None,
        ratio_tag: str = "multimodal",
        policy: str = "stop",
        overlong: str = "truncate",
        world_size: int = 1,
        rank: int = 0,
        kind: str | None = None,
    ):
        if kind not in (None, "packed", "caption"):
            raise KvlError(f"unknown stream kind {kind!r} (packed LM rows, or caption for the CoCa stage)")
        self.kind = "caption" if kind == "caption" else "packed"
        if not sources:
            raise KvlError("no data sources given")
        if world_size < 1 or not 0 <= rank < world_size:
            raise KvlError(f"invalid rank {rank} for world size {world_size}")
        if not isinstance(batch_rows, int) or batch_rows < 1 or batch_rows % world_size:
            raise KvlError(f"batch_rows ({batch_rows}) must be a positive multiple of the world size ({world_size})")
        self.supervise = _supervise(supervise)
        self.processor = processor
        self.seq_len, self.batch_rows, self.seed = seq_len, batch_rows, int(seed)
        self.world_size, self.rank, self.policy = world_size, rank, policy
        self.stats = DataStats()
        # Copies: the automatic "multimodal" tag must not leak into the caller's Source objects.
        self.sources = [replace(s) if isinstance(s, Source) else Source(s) for s in sources]
        self.samples = [read_samples(s, policy, self.stats) for s in self.sources]
        if self.kind == "caption":
            self.samples = [self._captions_only(s, x) for s, x in zip(self.sources, self.samples)]
        for s, samples in zip(self.sources, self.samples):
            if "multimodal" not in s.tags and any(x.has_image for x in samples):
                s.tags = (*s.tags, "multimodal")
        tagged = [ratio_tag in s.tags for s in self.sources]
        if ratio is not None and (all(tagged) or not any(tagged)):
            log.warning("data: a %r ratio was given but %s sources are %r-tagged; the ratio has no effect",
                        ratio_tag, "all" if all(tagged) else "no", ratio_tag)
        self.mixture = Mixture([s.weight for s in self.sources], tagged, self.seed, ratio)
        tok = processor.tokenizer
        pad = tok.pad_id if tok.pad_id is not None else _eos(tok)
        self.packer = Packer(seq_len, pad, overlong, self.stats)
        self.step = 0
        self._pos = [[0, 0] for _ in self.sources]  # per source [epoch, cursor]
        self._carry: list[tuple[tuple[int, int], Encoded]] = []
        self._perm_cache: dict[int, tuple[int, list[int]]] = {}

    def _captions_only(self, source: Source, samples: list[Sample]) -> list[Sample]:
        out = []
        for x in samples:
            if x.kind == "caption":
                out.append(x)
                continue
            msg = f"{x.where}: the ViT (CoCa) stage takes image-caption lines, not a {x.kind} sample"
            if self.policy == "stop":
                raise KvlError(msg)
            self.stats.read_skipped += 1
            self.stats.report(msg + " (skipped)")
        if not out:
            raise KvlError(f"{source.path}: no image-caption lines for the ViT (CoCa) stage")
        return out

    # -- iteration --

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> PackedBatch | CaptionBatch:
        return self.next_global().shard(self.rank, self.world_size)

    def next_batch(self) -> PackedBatch | CaptionBatch:
        """This rank's part of the next global batch (same as `next(stream)`)."""
        return next(self)

    def next_global(self) -> PackedBatch | CaptionBatch:
        """The whole global batch of the next step (every rank computes the same one)."""
        if self.kind == "caption":
            return self._next_captions()
        builder = self.packer.start(self.batch_rows)
        carry, self._carry = self._carry, []
        for sid, enc in carry:
            if not builder.add(enc, sid):  # only possible if several were carried; keep them in order
                self._carry.append((sid, enc))
        slot, failures, limit = 0, 0, sum(len(s) for s in self.samples) + 1
        while not self._carry and slot < limit - 1:  # at most one pass over the data per step
            sid = self._draw(self.step, slot)
            slot += 1
            enc = self._encode(sid, count=True)
            if enc is None:
                failures += 1
                if failures >= limit:
                    raise KvlError(f"no usable sample in {limit} consecutive draws: every sample was skipped or "
                                   f"dropped (seq_len {self.seq_len}; see the reported problems)")
                continue
            failures = 0
            if not builder.add(enc, sid):
                self._carry.append((sid, enc))
        if not builder.n_docs:
            raise KvlError(f"no usable sample in {limit - 1} consecutive draws: every sample was skipped or "
                           f"dropped (seq_len {self.seq_len}; see the reported problems)")
        self.step += 1
        return builder.build()

    def _next_captions(self) -> CaptionBatch:
        """Exactly `batch_rows` image-caption pairs per step (nothing to pack, nothing carried)."""
        rows: list[tuple[tuple[int, int], tuple]] = []
        slot, failures, limit = 0, 0, sum(len(s) for s in self.samples) + 1
        while len(rows) < self.batch_rows:
            sid = self._draw(self.step, slot)
            slot += 1
            sample = self.samples[sid[0]][sid[1]]
            try:
                item = encode_caption_pair(sample, self.processor, self.seq_len)
            except KvlError as e:
                if self.policy == "stop":
                    raise
                self.stats.skipped += 1
                self.stats.report(f"{e} (skipped)")
                failures += 1
                if failures >= limit:
                    raise KvlError(f"no usable image-caption pair in {limit} consecutive draws") from None
                continue
            failures = 0
            self.stats.truncated += int(item[3])
            rows.append((sid, item))
        self.step += 1
        pad = self.packer.pad_id
        width = max(len(ids) for _, (ids, *_rest) in rows)
        caption_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        for r, (_, (ids, *_rest)) in enumerate(rows):
            caption_ids[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        n_tokens = sum(len(ids) for _, (ids, *_rest) in rows)
        st = self.stats
        st.batches += 1
        st.samples += len(rows)
        st.tokens += n_tokens
        st.supervised += n_tokens - len(rows)  # every caption token but the first is a decoder target
        st.padding += caption_ids.numel() - n_tokens
        return CaptionBatch(caption_ids, torch.cat([it[1] for _, it in rows]), torch.cat([it[2] for _, it in rows]),
                            n_tokens, [sid for sid, _ in rows], pad)

    def _draw(self, step: int, slot: int) -> tuple[int, int]:
        src = self.mixture.choose(step, slot)
        epoch, cursor = self._pos[src]
        idx = self._order(src, epoch)[cursor]
        cursor += 1
        if cursor == len(self.samples[src]):  # epoch wraps with a fresh permutation
            epoch, cursor = epoch + 1, 0
        self._pos[src] = [epoch, cursor]
        return (src, idx)

    def _order(self, src: int, epoch: int) -> list[int]:
        cached = self._perm_cache.get(src)
        if cached is None or cached[0] != epoch:
            cached = (epoch, source_order(self.seed, src, epoch, len(self.samples[src])))
            self._perm_cache[src] = cached
        return cached[1]

    def _encode(self, sid: tuple[int, int], count: bool) -> Encoded | None:
        sample = self.samples[sid[0]][sid[1]]
        try:
            enc = encode_sample(sample, self.processor, self.supervise)
        except KvlError as e:
            if self.policy == "stop":
                raise
            if count:
                self.stats.skipped += 1
                self.stats.report(f"{e} (skipped)")
            return None
        return self.packer.fit(enc, sample.where, count=count)

    # -- progress --

    def locate(self, sample_id: tuple[int, int]) -> str:
        """`file:line` of a sample id from `PackedBatch.sample_ids`."""
        return self.samples[sample_id[0]][sample_id[1]].where

    def epochs(self) -> dict[str, float]:
        """Fractional epochs consumed per source (name -> epoch + cursor / n)."""
        return {s.name: e + c / len(x) for s, x, (e, c) in zip(self.sources, self.samples, self._pos)}

    # -- state --

    # The data order depends on these; seq_len, batch_rows and overlong may change between phases of a
    # stage (8K -> 32K -> 128K), so they are saved but a different value is accepted on load.
    _STRICT = ("seed", "supervise", "kind", "sources")

    def _fingerprint(self) -> dict:
        return {"seed": self.seed, "supervise": self.supervise, "kind": self.kind,
                "sources": [[s.name, len(x)] for s, x in zip(self.sources, self.samples)],
                "seq_len": self.seq_len, "batch_rows": self.batch_rows, "overlong": self.packer.overlong}

    def state_dict(self) -> dict:
        """What was consumed so far (JSON-serialisable); call it between batches."""
        return {
            "version": self.STATE_VERSION,
            **self._fingerprint(),
            "step": self.step,
            "positions": [list(p) for p in self._pos],
            "carry": [list(sid) for sid, _ in self._carry],
            "counters": {k: getattr(self.stats, k) for k in DataStats.STATE_KEYS},
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("version") != self.STATE_VERSION:
            raise KvlError(f"data state: unsupported or missing version (expected {self.STATE_VERSION})")
        mine = self._fingerprint()
        for key in self._STRICT:
            value = mine[key]
            if state.get(key) != value:
                raise KvlError(f"data state: saved {key} {state.get(key)!r} differs from this run's {value!r}; "
                               "resuming would not replay the same data")
        try:
            positions = [[int(e), int(c)] for e, c in state["positions"]]
            carry = [(int(a), int(b)) for a, b in state["carry"]]
            step = int(state["step"])
            counters = {k: int(state["counters"][k]) for k in DataStats.STATE_KEYS}
        except (KeyError, TypeError, ValueError) as e:
            raise KvlError(f"data state: malformed ({type(e).__name__}: {e})") from None
        if len(positions) != len(self.sources) or any(
                not (0 <= c < len(x)) or e < 0 for (e, c), x in zip(positions, self.samples)):
            raise KvlError("data state: source positions do not fit the sources")
        if any(not (0 <= a < len(self.samples) and 0 <= b < len(self.samples[a])) for a, b in carry):
            raise KvlError("data state: carried sample ids do not fit the sources")
        self.step, self._pos = step, positions
        for k, v in counters.items():
            setattr(self.stats, k, v)
        self._perm_cache.clear()
        # The carried documents were counted (truncation) when first drawn: re-encode without counting,
        # unless a new phase changed seq_len or the overlong policy, so that they are fitted anew.
        refit = state.get("seq_len") != self.seq_len or state.get("overlong") != self.packer.overlong
        self._carry = []
        for sid in carry if self.kind == "packed" else []:
            enc = self._encode(sid, count=refit)
            if enc is None:
                if refit:
                    continue  # dropped under the new phase's policy, and counted
                raise KvlError(f"{self.locate(sid)}: the carried-over sample can no longer be encoded; "
                               "the data changed since the checkpoint")
            self._carry.append((sid, enc))


__all__ = [
    "CaptionBatch", "DataStats", "Encoded", "IGNORE", "Mixture", "PackBuilder", "PackedBatch", "Packer", "Ramp",
    "Ratio", "Sample", "Source", "Stream", "encode_caption_pair", "encode_sample", "image_spans", "read_samples",
    "source_order", "timestamp_label", "uniform",
]
