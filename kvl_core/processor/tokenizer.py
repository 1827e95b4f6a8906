"""Kimi / Moonlight tiktoken tokenizer (model.md §8; gotcha §13.14).

Vocabulary = BPE ranks from `tiktoken.model` (ids 0..n-1) followed by a block of 256 special tokens
(ids n..n+255) named by `tokenizer_config.json` `added_tokens_decoder`; unnamed slots become
`<|reserved_token_{id}|>`. Pre-tokenisation uses the Kimi `pat_str` below.

One deliberate difference from the reference `TikTokenTokenizer.encode`, which calls tiktoken with
`allowed_special="all"`: `KimiTokenizer.encode` never turns text into control tokens. A user typing
`<|im_end|>` gets those characters as ordinary BPE tokens, so prompts and documents cannot forge chat turns
or image slots. Control tokens are emitted only by id (see `chat.py`) or, for trusted template strings, by
the explicitly named `encode_with_special_tokens`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import tiktoken

from kvl_core.errors import KvlError, read_json_object

# Pre-tokeniser regex, alternatives in the order of model.md §8 (`&&` = class intersection, understood by
# tiktoken's Rust regex engine).
PAT_STR = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

NUM_RESERVED_SPECIAL_TOKENS = 256

# Encoding limits of the reference: tiktoken's pre-tokeniser is quadratic-ish on huge inputs and on very
# long runs of whitespace (or of non-whitespace), so text is cut before it reaches tiktoken. The cuts are at
# the same places as in the reference, so ids stay identical.
MAX_ENCODE_CHARS = 400_000
MAX_CONSECUTIVE_RUN = 25_000

# Kimi-VL special ids as offsets from the first special id (model.md §8: real ids minus 163584). Used only
# when a checkpoint has no tokenizer_config.json.
DEFAULT_SPECIAL_OFFSETS: dict[str, int] = {
    "[BOS]": 0,
    "[EOS]": 1,
    "<|im_end|>": 2,
    "<|im_user|>": 3,
    "<|im_assistant|>": 4,
    "<|start_header_id|>": 6,
    "<|end_header_id|>": 7,
    "[EOT]": 9,
    "<|im_system|>": 10,
    "<|im_middle|>": 17,
    "<|media_start|>": 18,
    "<|media_content|>": 19,
    "<|media_end|>": 20,
    "<|media_pad|>": 21,
    "[UNK]": 254,
    "[PAD]": 255,
}

# Control tokens the chat template needs; a tokenizer without them cannot drive the model.
REQUIRED_SPECIALS = (
    "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>",
    "<|media_start|>", "<|media_content|>", "<|media_end|>", "<|media_pad|>",
)


def load_bpe_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a tiktoken vocabulary file (`<base64 token bytes> <rank>` per line) without tiktoken_ext.

    Ranks must be exactly 0..n-1 (the special block is placed right after them) and every single byte must
    be a token: byte-level BPE starts from single bytes, and tiktoken aborts on a byte it has no rank for.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KvlError(f"{path}: no such file (the tokenizer vocabulary tiktoken.model)") from None
    except OSError as e:
        raise KvlError(f"{path}: cannot read file ({e.strerror or e})") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KvlError(f"{path}:{lineno}: expected '<base64 token> <rank>', got {len(parts)} fields")
        try:
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError):
            raise KvlError(f"{path}:{lineno}: malformed entry (bad base64 or rank)") from None
        if not token:
            raise KvlError(f"{path}:{lineno}: empty token")
        if token in ranks:
            raise KvlError(f"{path}:{lineno}: token {token!r} listed twice")
        ranks[token] = rank
    if not ranks:
        raise KvlError(f"{path}: empty vocabulary")
    values = sorted(ranks.values())
    if values != list(range(len(values))):
        raise KvlError(f"{path}: ranks must be the distinct integers 0..{len(values) - 1}")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise KvlError(f"{path}: byte-level vocabulary lacks {len(missing)} single-byte tokens (e.g. {missing[0]:#04x})")
    return ranks


def load_special_tokens(path: str | os.PathLike) -> dict[int, str]:
    """`added_tokens_decoder` of a `tokenizer_config.json` as {id: name}."""
    path = Path(path)
    d = read_json_object(path)
    dec = d.get("added_tokens_decoder", {})
    if not isinstance(dec, dict):
        raise KvlError(f"{path}: added_tokens_decoder must be an object")
    out: dict[int, str] = {}
    for key, entry in dec.items():
        try:
            tid = int(key)
        except ValueError:
            raise KvlError(f"{path}: added_tokens_decoder key {key!r} is not a token id") from None
        name = entry.get("content") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise KvlError(f"{path}: added_tokens_decoder[{key}] has no 'content' string")
        out[tid] = name
    return out


class KimiTokenizer:
    """tiktoken BPE + Kimi special-token block. No BOS/EOS is ever added implicitly."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: Mapping[int, str] | None = None,
        *,
        name: str = "kimi",
        source: str = "tokenizer",
    ) -> None:
        num_base = len(mergeable_ranks)
        if special_tokens is None:
            special_tokens = {num_base + off: tok for tok, off in DEFAULT_SPECIAL_OFFSETS.items()}
        bad = [i for i in special_tokens if i < num_base]
        if bad:
            raise KvlError(f"{source}: special token id {bad[0]} collides with the {num_base} BPE ranks")
        # The reference reserves 256 slots; a config naming ids beyond them (some lineage copies do) extends
        # the block instead of silently dropping tokens.
        top = max([num_base + NUM_RESERVED_SPECIAL_TOKENS - 1, *special_tokens])
        by_name: dict[str, int] = {}
        for i in range(num_base, top + 1):
            tok = special_tokens.get(i, f"<|reserved_token_{i}|>")
            if tok in by_name:
                raise KvlError(f"{source}: special token {tok!r} is assigned to ids {by_name[tok]} and {i}")
            by_name[tok] = i
        self._enc = tiktoken.Encoding(
            name=name, pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=by_name
        )
        self.num_base_tokens = num_base
        self.special_ids: dict[str, int] = dict(by_name)
        self._special_names: dict[int, str] = {i: t for t, i in by_name.items()}
        self.source = source
        missing = [t for t in REQUIRED_SPECIALS if t not in by_name]
        if missing:
            raise KvlError(f"{source}: special tokens {', '.join(missing)} are not defined")

    # ---- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike) -> "KimiTokenizer":
        """Load `tiktoken.model` (+ `tokenizer_config.json` when present) from a checkpoint folder."""
        d = Path(model_dir)
        vocab = d / "tiktoken.model"
        if not vocab.is_file():
            raise KvlError(f"{vocab}: no such file (a Kimi-VL checkpoint folder holds its tokenizer there)")
        cfg = d / "tokenizer_config.json"
        return cls.from_files(vocab, cfg if cfg.is_file() else None)

    @classmethod
    def from_files(
        cls, vocab_path: str | os.PathLike, config_path: str | os.PathLike | None = None
    ) -> "KimiTokenizer":
        ranks = load_bpe_ranks(vocab_path)
        specials = load_special_tokens(config_path) if config_path is not None else None
        return cls(ranks, specials, source=str(config_path or vocab_path))

    # ---- ids ------------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """BPE ranks + special block (163840 for Kimi-VL; 512 for the tiny fixture, whose model uses 300)."""
        return self._enc.n_vocab

    def token_id(self, name: str) -> int:
        try:
            return self.special_ids[name]
        except KeyError:
            raise KvlError(f"{self.source}: unknown special token {name!r}") from None

    def is_special(self, token_id: int) -> bool:
        return token_id >= self.num_base_tokens

    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get("[BOS]")

    @property
    def eos_id(self) -> int | None:
        """`[EOS]`. Note the chat models end a turn with `<|im_end|>` (`im_end_id`); see `stop_ids`."""
        return self.special_ids.get("[EOS]")

    @property
    def pad_id(self) -> int | None:
        return self.special_ids.get("[PAD]")

    @property
    def unk_id(self) -> int | None:
        return self.special_ids.get("[UNK]")

    @property
    def im_end_id(self) -> int:
        return self.special_ids["<|im_end|>"]

    @property
    def im_user_id(self) -> int:
        return self.special_ids["<|im_user|>"]

    @property
    def im_assistant_id(self) -> int:
        return self.special_ids["<|im_assistant|>"]

    @property
    def im_system_id(self) -> int:
        return self.special_ids["<|im_system|>"]

    @property
    def im_middle_id(self) -> int:
        return self.special_ids["<|im_middle|>"]

    @property
    def media_start_id(self) -> int:
        return self.special_ids["<|media_start|>"]

    @property
    def media_content_id(self) -> int:
        return self.special_ids["<|media_content|>"]

    @property
    def media_end_id(self) -> int:
        return self.special_ids["<|media_end|>"]

    @property
    def media_pad_id(self) -> int:
        return self.special_ids["<|media_pad|>"]

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end generation: `<|im_end|>` (the model's turn end, model.md §10) and `[EOS]`."""
        return frozenset(i for i in (self.im_end_id, self.eos_id) if i is not None)

    # ---- encoding -------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Text -> BPE ids. Special-token strings in `text` stay literal text; nothing is added."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        out: list[int] = []
        for piece in _split_for_tiktoken(text):
            out.extend(self._enc.encode_ordinary(piece))
        return out

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Like the reference encode: special-token strings become control ids. Trusted strings only."""
        out: list[int] = []
        for piece in _split_for_tiktoken(text):
            out.extend(self._enc.encode(piece, allowed_special="all"))
        return out

    # ---- decoding -------------------------------------------------------------------------------

    def _check_ids(self, ids: Sequence[int]) -> list[int]:
        n = self._enc.n_vocab
        out = [int(i) for i in ids]
        for i in out:
            if not 0 <= i < n:
                raise KvlError(f"{self.source}: token id {i} is outside the vocabulary (0..{n - 1})")
        return out

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = True) -> bytes:
        """Raw bytes; useful for streaming, where a UTF-8 character may straddle tokens."""
        ids = self._check_ids(list(ids))
        if skip_special_tokens:
            ids = [i for i in ids if i < self.num_base_tokens]
        return self._enc.decode_bytes(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Ids -> text (invalid UTF-8 becomes U+FFFD). Special ids are dropped unless asked for."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def id_to_token(self, token_id: int) -> bytes:
        """The bytes of one id (special ids give their name, UTF-8 encoded)."""
        (i,) = self._check_ids([token_id])
        if i in self._special_names:
            return self._special_names[i].encode()
        return self._enc.decode_single_token_bytes(i)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"KimiTokenizer(base={self.num_base_tokens}, vocab_size={self.vocab_size}, source={self.source!r})"


# Maximal runs longer than the limit. The look-behinds anchor each attempt at the start of a run; without
# them the scanner would retry from every position inside a long-but-legal run (quadratic time).
_LONG_RUN = re.compile(r"(?<!\s)\s{%d,}|(?<!\S)\S{%d,}" % (MAX_CONSECUTIVE_RUN + 1, MAX_CONSECUTIVE_RUN + 1))


def _split_for_tiktoken(text: str) -> Iterator[str]:
    """Cut `text` where the reference does before tiktoken sees it.

    First into 400,000-char chunks; then, inside each chunk, every maximal run of whitespace (or of
    non-whitespace; `str.isspace` semantics = regex `\\s` on str) longer than 25,000 chars is cut every 25,000
    chars from the run's start. Short runs are never cut, so ordinary text passes as one piece.
    """
    for start in range(0, len(text), MAX_ENCODE_CHARS):
        chunk = text[start:start + MAX_ENCODE_CHARS]
        prev = 0
        for m in _LONG_RUN.finditer(chunk):
            for cut in range(m.start() + MAX_CONSECUTIVE_RUN, m.end(), MAX_CONSECUTIVE_RUN):
                yield chunk[prev:cut]
                prev = cut
        yield chunk[prev:]


def train_bpe(texts: Iterable[tuple[str, int]], num_merges: int) -> list[bytes]:
    """Byte-level BPE merges learned from (text, weight) pairs, for models trained from scratch.

    Pre-tokenised with the Kimi `pat_str` (so merges never cross the chunks tiktoken will see), then the
    classic loop: merge the most frequent adjacent pair, ties broken by the pair's bytes so the result is
    a pure function of the corpus. Returns the merged tokens in rank order (ranks 256, 257, ...); each is
    the concatenation of two lower-ranked tokens, which is what tiktoken's encoder requires.
    """
    import collections

    import regex  # a dependency of tiktoken; understands pat_str's `&&` class intersections in V1 mode

    pattern = regex.compile(PAT_STR, flags=regex.V1)
    words: collections.Counter[tuple[bytes, ...]] = collections.Counter()
    for text, weight in texts:
        for chunk in pattern.findall(text):
            words[tuple(bytes([b]) for b in chunk.encode("utf-8"))] += weight
    vocab = [list(w) for w in words]
    counts = list(words.values())
    merges: list[bytes] = []
    while len(merges) < num_merges:
        pairs: collections.Counter[tuple[bytes, bytes]] = collections.Counter()
        for w, c in zip(vocab, counts):
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += c
        if not pairs:
            raise KvlError(f"the corpus supports only {len(merges)} BPE merges, {num_merges} were asked for")
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        joined = best[0] + best[1]
        merges.append(joined)
        for w in vocab:
            i = 0
            while i < len(w) - 1:
                if w[i] == best[0] and w[i + 1] == best[1]:
                    w[i:i + 2] = [joined]
                i += 1
    return merges


def save_bpe_tokenizer(directory: str | os.PathLike, vocab_size: int, merges: Sequence[bytes] = ()) -> None:
    """Write `tiktoken.model` + `tokenizer_config.json` for a Kimi tokenizer trained from scratch.

    Ranks are the 256 single bytes followed by `merges`; Kimi's special tokens keep their offsets in the
    block after the ranks, with [UNK] and [PAD] on the model's last two ids (the tiny fixture's layout).
    `vocab_size` is the model's.
    """
    num_base = 256 + len(merges)
    if vocab_size < num_base + DEFAULT_SPECIAL_OFFSETS["<|media_pad|>"] + 3:
        raise KvlError(f"vocab_size {vocab_size} is too small for {num_base} BPE ranks plus Kimi's specials")
    tokens = [bytes([b]) for b in range(256)] + list(merges)
    if len(set(tokens)) != len(tokens):
        raise KvlError("BPE merges contain a duplicate token")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "tiktoken.model").write_text("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(tokens)))
    ids = {name: num_base + off for name, off in DEFAULT_SPECIAL_OFFSETS.items() if name not in ("[UNK]", "[PAD]")}
    ids["[UNK]"], ids["[PAD]"] = vocab_size - 2, vocab_size - 1
    entry = dict(lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    cfg = {
        "added_tokens_decoder": {str(i): {"content": name, **entry} for name, i in sorted(ids.items(), key=lambda kv: kv[1])},
        "bos_token": "[BOS]", "eos_token": "[EOS]", "pad_token": "[PAD]", "unk_token": "[UNK]",
        "tokenizer_class": "TikTokenTokenizer",
        "additional_special_tokens": [n for n in REQUIRED_SPECIALS],
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1) + "\n")


def save_byte_level_tokenizer(directory: str | os.PathLike, vocab_size: int) -> None:
    """The byte-level tokenizer of presets without merges (tiny): 256 byte ranks, then the specials."""
    save_bpe_tokenizer(directory, vocab_size)
