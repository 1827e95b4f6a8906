"""Test helpers: where the tiny checkpoint lives and a small hand-made BPE vocabulary with merges."""

from __future__ import annotations

import base64
from pathlib import Path

FIXTURE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "kimi_vl_tiny"

# Merged tokens appended after the 256 single bytes, in rank order (rank = 256 + index). Chosen so that the
# pre-tokeniser's splits change the result: "文a" ranks *before* "中文", so if Han and Latin letters were one
# pre-token, "中文a" would encode as 中 + 文a; with the Kimi pat_str it is 中文 + a. Likewise "34" ranks before
# "123": unsplit, "1234" would become 12 + 34; with digit runs of at most 3 it is 123 + 4. "a文" exists so that
# a letter run swallowing a following Han character (missing `&&[^\p{Han}]`) would show.
MERGES: list[bytes] = [
    b"he", b"ll", b"hell", b"hello",
    b" w", b"or", b" wor", b"ld", b" world",
    b"12", b"34", b"123",
    "中".encode()[:2], "中".encode(), "文".encode()[:2], "文".encode(),
    "文".encode() + b"a", "中文".encode(), b"a" + "文".encode(),
]


def merge_id(tok: bytes | str) -> int:
    if isinstance(tok, str):
        tok = tok.encode()
    return 256 + MERGES.index(tok)


def write_vocab(path: Path, tokens: list[bytes]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))


def special_config(num_base: int) -> dict:
    """A tokenizer_config.json naming the Kimi control tokens at the real offsets from num_base."""
    names = {0: "[BOS]", 1: "[EOS]", 2: "<|im_end|>", 3: "<|im_user|>", 4: "<|im_assistant|>",
             10: "<|im_system|>", 17: "<|im_middle|>", 18: "<|media_start|>", 19: "<|media_content|>",
             20: "<|media_end|>", 21: "<|media_pad|>", 254: "[UNK]", 255: "[PAD]"}
    return {"added_tokens_decoder": {str(num_base + k): {"content": v, "special": True} for k, v in names.items()}}
