"""Generated test documents and a scripted engine for the document tasks (tests/tasks/*).

The scripted engine has the real tiny checkpoint's processor (so prompts are tokenised and budgeted for
real) but answers from a script: it lets the tests pin down post-processing and control flow. End-to-end
plumbing runs against the real tiny checkpoint elsewhere.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

from PIL import Image


def make_pdf(path: Path, texts: Sequence[str], size: tuple[float, float] = (300, 400), fontsize: float = 9,
             user_pw: str | None = None, image_only: Sequence[int] = ()) -> Path:
    """A PDF with one page per text; pages whose 0-based index is in `image_only` carry the text only as
    pixels (a scan: no text layer)."""
    import pymupdf

    doc = pymupdf.open()
    for i, text in enumerate(texts):
        page = doc.new_page(width=size[0], height=size[1])
        rect = pymupdf.Rect(20, 20, size[0] - 20, size[1] - 20)
        if i in image_only:
            scratch = pymupdf.open()
            sp = scratch.new_page(width=size[0], height=size[1])
            sp.insert_textbox(rect, text, fontsize=fontsize)
            pix = sp.get_pixmap(dpi=150)
            page.insert_image(page.rect, stream=pix.tobytes("png"))
        else:
            page.insert_textbox(rect, text, fontsize=fontsize)
    kw = {}
    if user_pw:
        kw = dict(encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=user_pw, owner_pw=user_pw + "-owner")
    doc.save(str(path), **kw)
    return path


def zero_page_pdf(path: Path) -> Path:
    """A syntactically valid PDF whose page tree is empty (pymupdf refuses to write one)."""
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def bomb_png(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A tiny PNG whose header claims width x height pixels: a guard must refuse it before decoding."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    # IHDR is the first chunk: length(4) type(4) at 8..16, width/height at 16..24, CRC over type+data.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def reply(text: str, finish_reason: str = "stop", completion_tokens: int = 5):
    from kvl_core.engine import ChatResult
    from kvl_core.processor.chat import split_thinking

    reasoning, answer, truncated = split_thinking(text)
    return ChatResult(text=text, answer=answer, reasoning=reasoning, truncated=truncated,
                      finish_reason=finish_reason, prompt_tokens=0, completion_tokens=completion_tokens,
                      thinking_tokens=0, prefill_seconds=0.0, decode_seconds=0.0)


class ScriptedEngine:
    """`chat`/`chat_batch` like kvl_core.engine.Engine, answering with `script(messages) -> str`."""

    def __init__(self, processor, script: Callable[[list], str] | Sequence[str] = "ok", context: int = 32768,
                 max_new_tokens: int = 64):
        self.processor = processor
        self.model = SimpleNamespace(config=SimpleNamespace(text=SimpleNamespace(max_position_embeddings=context)))
        self.defaults = {"max_new_tokens": max_new_tokens}
        self.name = "scripted"
        self.script = script
        self.calls: list[tuple[list, dict]] = []

    def _answer(self, messages) -> str:
        if callable(self.script):
            return self.script(messages)
        if isinstance(self.script, str):
            return self.script
        return self.script[(len(self.calls) - 1) % len(self.script)]

    def chat_batch(self, conversations, on_text=None, **options):
        out = []
        for messages in conversations:
            self.calls.append((messages, options))
            # The real engine refuses prompts beyond its context: so must this one, or budgets go untested.
            from kvl_tasks.documents import prompt_tokens

            n = prompt_tokens(self.processor, messages)
            limit = self.model.config.text.max_position_embeddings
            assert n < limit, f"prompt of {n} tokens exceeds the context of {limit}"
            out.append(reply(self._answer(messages)))
        return out

    def chat(self, messages, on_text=None, **options):
        return self.chat_batch([messages], on_text=on_text, **options)[0]


def texts_of(messages) -> str:
    """All text parts of a conversation, concatenated."""
    parts = []
    for m in messages:
        c = m["content"]
        parts += [c] if isinstance(c, str) else [p["text"] for p in c if p.get("type") == "text"]
    return "\n".join(parts)


def images_of(messages) -> list:
    return [p["image"] for m in messages if isinstance(m["content"], list) for p in m["content"]
            if p.get("type") == "image"]
