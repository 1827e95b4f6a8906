"""Kimi-VL chat template, token-level prompt building and the combined `Processor` (model.md §2, §3, §9, §13).

Template (no newlines anywhere; the default system turn is inserted when the first message is not `system`):

    <|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>
    <|im_user|>user<|im_middle|>{content}<|im_end|>
    <|im_assistant|>assistant<|im_middle|>{content}<|im_end|>
    ... + <|im_assistant|>assistant<|im_middle|>          (add_generation_prompt)

with each image part rendered as `<|media_start|>image<|media_content|><|media_pad|><|media_end|>`.

`render_text` returns that string (for inspection). `Processor` builds ids directly from the same pieces:
control tokens by id, every text through `KimiTokenizer.encode` (which keeps special-looking strings literal,
so user text cannot inject turns or image slots), and each image's `<|media_pad|>` expanded to its token
count (the reference does that expansion on the text before tokenising, §3). For text free of special-token
strings, the ids equal the reference's `tokenize(render_text(...))` after expansion.

Messages: `{"role": "system"|"user"|"assistant", "content": str | [part, ...]}` where a part is
`{"type": "text", "text": str}` or an image part: `{"type": "image", "image": path | bytes | PIL.Image}`, or
OpenAI/HF style `{"type": "image_url", "image_url": str | {"url": str}}` (paths, `file://` and base64
`data:` URLs; nothing is downloaded). As in the HF template, any part with an `image`/`image_url` key is an
image.

Thinking models (Kimi-VL-A3B-Thinking, -2506) write `◁think▷ reasoning ◁/think▷ answer`: see `split_thinking`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from PIL import Image

from kvl_core.errors import KvlError
from kvl_core.processor.image import DEFAULT_MAX_PIXELS, ImageProcessor, ImageSource, load_image
from kvl_core.processor.tokenizer import KimiTokenizer

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant"
THINK_OPEN = "◁think▷"
THINK_CLOSE = "◁/think▷"

ROLE_TOKENS = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>"}
IM_MIDDLE, IM_END = "<|im_middle|>", "<|im_end|>"
MEDIA_START, MEDIA_CONTENT, MEDIA_PAD, MEDIA_END = (
    "<|media_start|>", "<|media_content|>", "<|media_pad|>", "<|media_end|>",
)
IMAGE_BLOCK = f"{MEDIA_START}image{MEDIA_CONTENT}{MEDIA_PAD}{MEDIA_END}"

Message = dict[str, Any]


# ---- template pieces ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Special:
    name: str
    assistant: bool = False  # belongs to the assistant-token mask


@dataclass(frozen=True)
class _Text:
    text: str
    assistant: bool = False


@dataclass(frozen=True)
class _ImageSlot:
    """The `<|media_pad|>` of one image; expands to that image's token count."""

    image: Any
    label: str


def _pieces(messages: Sequence[Message], add_generation_prompt: bool, continue_final_message: bool) -> list:
    if isinstance(messages, dict) or not isinstance(messages, Sequence) or isinstance(messages, str):
        raise KvlError("messages: expected a list of {'role': ..., 'content': ...} objects")
    if not messages:
        raise KvlError("messages: the conversation is empty")
    if continue_final_message and add_generation_prompt:
        raise KvlError("messages: continue_final_message and add_generation_prompt exclude each other")
    out: list = []
    if _role(messages[0], 0) != "system":
        out += [_Special(ROLE_TOKENS["system"]), _Text("system"), _Special(IM_MIDDLE),
                _Text(DEFAULT_SYSTEM_PROMPT), _Special(IM_END)]
    for i, msg in enumerate(messages):
        role = _role(msg, i)
        asst = role == "assistant"
        out += [_Special(ROLE_TOKENS[role]), _Text(role), _Special(IM_MIDDLE)]
        content = msg.get("content")
        if isinstance(content, str):
            out.append(_Text(content, asst))
        elif isinstance(content, (list, tuple)):
            n_img = 0
            for j, part in enumerate(content):
                if not isinstance(part, dict):
                    raise KvlError(f"message {i + 1}: content part {j + 1} must be an object, got {type(part).__name__}")
                if part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part:
                    n_img += 1
                    ref = _image_ref(part, i, j)
                    label = ref if isinstance(ref, str) and not ref.startswith("data:") else f"message {i + 1} image {n_img}"
                    # Image blocks are prompt structure, never assistant targets.
                    out += [_Special(MEDIA_START), _Text("image"), _Special(MEDIA_CONTENT),
                            _ImageSlot(ref, label), _Special(MEDIA_END)]
                elif part.get("type", "text") == "text":
                    text = part.get("text")
                    if not isinstance(text, str):
                        raise KvlError(f"message {i + 1}: text part {j + 1} needs a 'text' string")
                    out.append(_Text(text, asst))
                else:
                    raise KvlError(f"message {i + 1}: unsupported content part type {part.get('type')!r} "
                                   "(expected 'text' or 'image')")
        else:
            raise KvlError(f"message {i + 1}: content must be a string or a list of parts, "
                           f"got {type(content).__name__}")
        last = i == len(messages) - 1
        if last and continue_final_message:
            if not asst:
                raise KvlError("messages: continue_final_message needs the last message to be the assistant's")
        else:
            out.append(_Special(IM_END, asst))
    if add_generation_prompt:
        out += [_Special(ROLE_TOKENS["assistant"]), _Text("assistant"), _Special(IM_MIDDLE)]
    return out


def _role(msg: Any, i: int) -> str:
    if not isinstance(msg, dict):
        raise KvlError(f"message {i + 1}: expected an object with 'role' and 'content', got {type(msg).__name__}")
    role = msg.get("role")
    if role not in ROLE_TOKENS:
        raise KvlError(f"message {i + 1}: role {role!r} is not one of system, user, assistant")
    return role


def _image_ref(part: dict, i: int, j: int) -> Any:
    for key in ("image", "image_url", "url", "path"):
        if key in part:
            ref = part[key]
            if isinstance(ref, dict):
                ref = ref.get("url")
            if isinstance(ref, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
                return os.fspath(ref) if isinstance(ref, os.PathLike) else ref
            raise KvlError(f"message {i + 1}: image part {j + 1} has an unusable {key!r} value "
                           f"of type {type(ref).__name__}")
    raise KvlError(f"message {i + 1}: image part {j + 1} names no image (use 'image' or 'image_url')")


def render_text(
    messages: Sequence[Message], add_generation_prompt: bool = True, continue_final_message: bool = False
) -> str:
    """The chat-template string, one `<|media_pad|>` per image (before expansion), as the HF template gives.

    `continue_final_message` leaves the last (assistant) message open, to prefill the model's answer.
    """
    parts: list[str] = []
    for p in _pieces(messages, add_generation_prompt, continue_final_message):
        if isinstance(p, _Special):
            parts.append(p.name)
        elif isinstance(p, _Text):
            parts.append(p.text)
        else:
            parts.append(MEDIA_PAD)
    return "".join(parts)


def image_parts(images: Sequence[ImageSource], labels: Sequence[str | None] | None = None) -> list[dict]:
    """Content parts for many images, each optionally preceded by a text label (a timestamp, a page number).

    E.g. `image_parts(frames, ["00:00:01", "00:00:02"]) + [{"type": "text", "text": question}]`.
    """
    if labels is not None and len(labels) != len(images):
        raise ValueError("labels must have one entry per image")
    out: list[dict] = []
    for k, img in enumerate(images):
        if labels is not None and labels[k]:
            out.append({"type": "text", "text": labels[k]})
        out.append({"type": "image", "image": img})
    return out


# ---- thinking ------------------------------------------------------------------------------------

def split_thinking(text: str) -> tuple[str | None, str, bool]:
    """Split a thinking model's output into (reasoning, answer, truncated).

    * `◁think▷ R ◁/think▷ A` -> (R, A, False); text before the opening marker is ignored.
    * `◁think▷ R` without a closing marker -> (R, "", True): generation stopped mid-thought, so there is no
      answer (as evaluation harnesses score it).
    * `R ◁/think▷ A` without an opening marker -> (R, A, False). Thinking-2506 style outputs (and prompts that
      prefill `◁think▷`) can lack the opening marker; a closing marker alone still separates reasoning from
      answer, so everything before it is taken as reasoning.
    * no markers -> (None, text, False).
    Reasoning and answer are stripped of surrounding whitespace; the first closing marker after the opening
    one ends the thought.
    """
    start = text.find(THINK_OPEN)
    close_from = start + len(THINK_OPEN) if start >= 0 else 0
    end = text.find(THINK_CLOSE, close_from)
    if start >= 0 and end < 0:
        return text[close_from:].strip(), "", True
    if end < 0:
        return None, text.strip(), False
    return text[close_from:end].strip(), text[end + len(THINK_CLOSE):].strip(), False


# ---- processor ----------------------------------------------------------------------------------

@dataclass
class EncodedChat:
    """One conversation as model inputs (plain lists + packed image tensors)."""

    input_ids: list[int]
    assistant_mask: list[bool]  # True on assistant content tokens and their closing <|im_end|>
    pixel_values: torch.Tensor | None  # [sum(gh*gw), 3, 14, 14] float32
    image_grid_hws: torch.Tensor | None  # [N, 2] int64, (h, w) in patches
    image_tokens: list[int]  # placeholder count per image, in order

    def __len__(self) -> int:
        return len(self.input_ids)


class Processor:
    """Tokenizer + image processor + chat template: messages in, model inputs out."""

    def __init__(
        self,
        tokenizer: KimiTokenizer,
        image_processor: ImageProcessor | None = None,
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        alpha_background: tuple[int, int, int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor or ImageProcessor()
        self.max_pixels = max_pixels
        self.alpha_background = alpha_background

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, **kwargs: Any) -> "Processor":
        d = Path(model_dir)
        if not d.is_dir():
            raise KvlError(f"{d}: not a checkpoint folder")
        return cls(KimiTokenizer.from_pretrained(d), ImageProcessor.from_pretrained(d), **kwargs)

    def render_text(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                    continue_final_message: bool = False) -> str:
        return render_text(messages, add_generation_prompt, continue_final_message)

    def encode(self, messages: Sequence[Message], add_generation_prompt: bool = True,
               continue_final_message: bool = False, pixels: bool = True) -> EncodedChat:
        """`pixels=False`: token ids and masks only (pixel_values None), for callers that make the image
        tokens' features themselves (kvl_core.training.reading's oracle)."""
        tok = self.tokenizer
        ids: list[int] = []
        mask: list[bool] = []
        images: list[Image.Image] = []
        labels: list[str] = []
        pending: list[str] = []  # adjacent text parts are one string in the reference's tokenisation
        pending_asst = False

        def flush() -> None:
            if pending:
                t = tok.encode("".join(pending))
                ids.extend(t)
                mask.extend([pending_asst] * len(t))
                pending.clear()

        for p in _pieces(messages, add_generation_prompt, continue_final_message):
            if isinstance(p, _Text):
                if pending and p.assistant != pending_asst:
                    flush()
                pending.append(p.text)
                pending_asst = p.assistant
                continue
            flush()
            if isinstance(p, _Special):
                ids.append(tok.token_id(p.name))
                mask.append(p.assistant)
            else:
                img = load_image(p.image, name=p.label, max_pixels=self.max_pixels,
                                 alpha_background=self.alpha_background)
                n = self.image_processor.plan(img.width, img.height, p.label).tokens
                images.append(img)
                labels.append(p.label)
                ids.extend([tok.media_pad_id] * n)
                mask.extend([False] * n)
        flush()

        if images and pixels:
            packed = self.image_processor(images, labels)
            pixel_values, grids = packed["pixel_values"], packed["image_grid_hws"]
            mh, mw = self.image_processor.merge_kernel_size
            counts = [int(h) * int(w) // (mh * mw) for h, w in grids.tolist()]
        else:
            pixel_values, grids, counts = None, None, []
        return EncodedChat(ids, mask, pixel_values, grids, counts)

    def __call__(self, messages: Sequence[Message], add_generation_prompt: bool = True,
                 continue_final_message: bool = False) -> dict[str, torch.Tensor | None]:
        """One conversation -> `input_ids` [1,T] int64, `attention_mask` [1,T] int64, `assistant_mask` [1,T]
        bool, `pixel_values` [L,3,14,14] float32 or None, `image_grid_hws` [N,2] int64 or None."""
        enc = self.encode(messages, add_generation_prompt, continue_final_message)
        ids = torch.tensor([enc.input_ids], dtype=torch.int64)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "assistant_mask": torch.tensor([enc.assistant_mask], dtype=torch.bool),
            "pixel_values": enc.pixel_values,
            "image_grid_hws": enc.image_grid_hws,
        }

    def batch(
        self,
        conversations: Sequence[Sequence[Message]],
        add_generation_prompt: bool = True,
        padding_side: str = "left",
        continue_final_message: bool = False,
    ) -> dict[str, torch.Tensor | None]:
        """Several conversations padded to one [B, T] batch.

        Left padding (default) suits generation: every prompt ends at the last column. Use "right" for training.
        Pads are `[PAD]` with `attention_mask` 0 and `assistant_mask` False. Images of all conversations are
        packed in conversation order, which is also the row-major order of their `<|media_pad|>` ids in
        `input_ids` - the order in which the model substitutes image features.
        """
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        if not conversations:
            raise KvlError("batch: no conversations given")
        encs = [self.encode(c, add_generation_prompt, continue_final_message) for c in conversations]
        width = max(len(e) for e in encs)
        pad_id = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.im_end_id
        B = len(encs)
        input_ids = torch.full((B, width), pad_id, dtype=torch.int64)
        attention = torch.zeros((B, width), dtype=torch.int64)
        asst = torch.zeros((B, width), dtype=torch.bool)
        for b, e in enumerate(encs):
            n = len(e)
            sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
            input_ids[b, sl] = torch.tensor(e.input_ids, dtype=torch.int64)
            attention[b, sl] = 1
            asst[b, sl] = torch.tensor(e.assistant_mask, dtype=torch.bool)
        pv = [e.pixel_values for e in encs if e.pixel_values is not None]
        gh = [e.image_grid_hws for e in encs if e.image_grid_hws is not None]
        return {
            "input_ids": input_ids,
            "attention_mask": attention,
            "assistant_mask": asst,
            "pixel_values": torch.cat(pv) if pv else None,
            "image_grid_hws": torch.cat(gh) if gh else None,
        }

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens)
