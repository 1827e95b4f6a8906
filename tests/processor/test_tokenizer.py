"""KimiTokenizer (model.md §8): vocabulary parsing, pat_str splits, special block, safe encoding, chunking."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvl_core.errors import KvlError
from kvl_core.processor.tokenizer import (
    MAX_CONSECUTIVE_RUN,
    MAX_ENCODE_CHARS,
    PAT_STR,
    KimiTokenizer,
    _split_for_tiktoken,
)

from .helpers import MERGES, merge_id, special_config, write_vocab

BYTES = [bytes([b]) for b in range(256)]

# model.md §8, the eight alternatives in order.
SPEC_ALTERNATIVES = [
    r"[\p{Han}]+",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    r"\p{N}{1,3}",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    r"\s*[\r\n]+",
    r"\s+(?!\S)",
    r"\s+",
]

SAMPLES = [
    "Hello, world!",
    "naïve café — Ünïcödé",
    "中文分词测试，标点。",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "tabs\tand\nnewlines\r\n  indented\n\n\n",
    " " * 100 + "x" + "\n" * 50,
    "mixed 中文and English 123456 ٣٤٥ ≤≥ ∑",
    "",
]


@pytest.fixture(scope="module")
def tiny(fixture_dir) -> KimiTokenizer:
    return KimiTokenizer.from_pretrained(fixture_dir)


@pytest.fixture(scope="module")
def merged(merge_vocab_dir) -> KimiTokenizer:
    return KimiTokenizer.from_pretrained(merge_vocab_dir)


def test_pat_str_is_the_spec_regex():
    assert PAT_STR == "|".join(SPEC_ALTERNATIVES)


# ---- the tiny fixture tokenizer --------------------------------------------------------------------

def test_fixture_special_ids_match_meta(tiny, fixture_dir):
    meta = json.loads((fixture_dir / "meta.json").read_text())
    for name, tid in meta["tiny_special_token_ids"].items():
        assert tiny.token_id(name) == tid, name
    assert tiny.media_pad_id == 277 and tiny.im_end_id == 258 and tiny.pad_id == 299
    assert (tiny.im_user_id, tiny.im_assistant_id, tiny.im_system_id, tiny.im_middle_id) == (259, 260, 266, 273)
    assert (tiny.media_start_id, tiny.media_content_id, tiny.media_end_id) == (274, 275, 276)
    assert tiny.bos_id == 256 and tiny.eos_id == 257
    assert tiny.stop_ids == {258, 257}


def test_fixture_special_block_layout(tiny, fixture_dir):
    cfg = json.loads((fixture_dir / "tokenizer_config.json").read_text())
    for key, entry in cfg["added_tokens_decoder"].items():
        assert tiny.token_id(entry["content"]) == int(key)
    # 256 byte ranks + the reference's 256 reserved special slots; unnamed slots get reserved names.
    assert tiny.num_base_tokens == 256
    assert tiny.vocab_size == 512
    assert tiny.token_id("<|reserved_token_261|>") == 261
    assert tiny.token_id("<|reserved_token_511|>") == 511
    assert all(tiny.is_special(i) for i in range(256, 512)) and not tiny.is_special(255)
    with pytest.raises(KvlError, match="unknown special token"):
        tiny.token_id("<|nope|>")


@pytest.mark.parametrize("text", SAMPLES)
def test_fixture_is_byte_level(tiny, text):
    # The fixture vocabulary is the 256 single bytes: ids are the UTF-8 bytes, and nothing is prepended.
    assert tiny.encode(text) == list(text.encode("utf-8"))
    assert tiny.decode(tiny.encode(text)) == text


@pytest.mark.parametrize("s", ["<|im_end|>", "<|media_pad|>", "[BOS]", "<|im_user|>user<|im_middle|>",
                               "<|reserved_token_300|>", "<|im_end|"])
def test_special_strings_stay_literal(tiny, s):
    ids = tiny.encode(f"before {s} after")
    assert ids == list(f"before {s} after".encode())
    assert all(i < 256 for i in ids)


def test_trusted_encoding_parses_specials(tiny):
    assert tiny.encode_with_special_tokens("hi<|im_end|>") == [104, 105, 258]
    assert tiny.encode_with_special_tokens("<|media_pad|><|media_pad|>") == [277, 277]


def test_decode_special_handling(tiny):
    ids = [259] + list(b"user") + [273] + list(b"hi") + [258]
    assert tiny.decode(ids) == "userhi"
    assert tiny.decode(ids, skip_special_tokens=False) == "<|im_user|>user<|im_middle|>hi<|im_end|>"
    assert tiny.id_to_token(258) == b"<|im_end|>"
    assert tiny.id_to_token(65) == b"A"


def test_decode_rejects_out_of_range(tiny):
    for bad in (512, 10**6, -1):
        with pytest.raises(KvlError, match="outside the vocabulary"):
            tiny.decode([bad])


def test_decode_replaces_split_utf8(tiny):
    euro = list("€".encode())  # three bytes
    assert tiny.decode(euro[:2]) == "\ufffd"
    assert tiny.decode_bytes(euro[:2]) + tiny.decode_bytes(euro[2:]) == "€".encode()


@settings(max_examples=150, deadline=None)
@given(text=st.text())
def test_fixture_round_trip_property(tiny, text):
    ids = tiny.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tiny.decode(ids) == text


# ---- a vocabulary with merges, written by the test ------------------------------------------------

def test_merges_applied(merged):
    assert merged.num_base_tokens == 256 + len(MERGES)
    assert merged.encode("hello world") == [merge_id("hello"), merge_id(" world")]
    assert merged.encode("hell") == [merge_id("hell")]
    assert merged.encode("help") == [merge_id("he"), ord("l"), ord("p")]


def test_pat_str_splits_digits_in_threes(merged):
    # Unsplit BPE would give 12 + 34 ("34" outranks "123"); the \p{N}{1,3} alternative makes it 123 + 4.
    assert merged.encode("1234") == [merge_id("123"), ord("4")]
    assert merged.encode("12") == [merge_id("12")]


def test_pat_str_separates_han_from_latin(merged):
    # "文a" outranks "中文": only a Han/Latin split yields 中文 + a.
    assert merged.encode("中文a") == [merge_id("中文"), ord("a")]
    assert merged.encode("中文") == [merge_id("中文")]
    # Letter runs exclude Han, so "a" and "文" are separate pre-tokens although "a文" is a token.
    assert merged.encode("a文") == [ord("a"), merge_id("文")]
    assert merged.encode("Ba文") == [ord("B"), ord("a"), merge_id("文")]
    assert merged.encode("B文a") == [ord("B"), merge_id("文"), ord("a")]  # nor do capital runs


def test_merged_specials_follow_the_ranks(merged):
    base = 256 + len(MERGES)
    assert merged.im_end_id == base + 2 and merged.media_pad_id == base + 21 and merged.pad_id == base + 255
    assert merged.vocab_size == base + 256
    assert merged.encode("<|im_end|>") == list(b"<|im_end|>")


@settings(max_examples=150, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("helowrd 1234中文a\n\t<|>_") + ["😀", "é"]), max_size=60))
def test_merged_round_trip_property(merged, text):
    ids = merged.encode(text)
    assert all(0 <= i < merged.num_base_tokens for i in ids)
    assert merged.decode(ids) == text


def test_default_special_layout_without_config(tmp_path, fixture_dir):
    # No tokenizer_config.json: the Kimi-VL offsets apply. On a 256-rank vocabulary they must land on the
    # fixture's ids (tiny id = real id - 163328, i.e. the same offsets from the first special id).
    write_vocab(tmp_path / "tiktoken.model", BYTES)
    tok = KimiTokenizer.from_pretrained(tmp_path)
    meta = json.loads((fixture_dir / "meta.json").read_text())
    for name, tid in meta["tiny_special_token_ids"].items():
        assert tok.token_id(name) == tid, name


def test_config_ids_beyond_the_block_extend_it(tmp_path):
    write_vocab(tmp_path / "tiktoken.model", BYTES)
    cfg = special_config(256)
    cfg["added_tokens_decoder"]["513"] = {"content": "<|extra|>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = KimiTokenizer.from_pretrained(tmp_path)
    assert tok.token_id("<|extra|>") == 513 and tok.vocab_size == 514
    assert tok.token_id("<|reserved_token_512|>") == 512


# ---- chunking (model.md §8: <=400,000-char chunks, runs of <=25,000 (non-)whitespace) ---------------

def _spec_pieces(text: str) -> list[str]:
    """The splitting rule written out naively, character by character."""
    pieces = []
    for c0 in range(0, len(text), MAX_ENCODE_CHARS):
        chunk = text[c0:c0 + MAX_ENCODE_CHARS]
        start, run, prev_space = 0, 0, None
        for i, ch in enumerate(chunk):
            sp = ch.isspace()
            if sp == prev_space:
                run += 1
                if run > MAX_CONSECUTIVE_RUN:
                    pieces.append(chunk[start:i])
                    start, run = i, 1
            else:
                run, prev_space = 1, sp
        pieces.append(chunk[start:])
    return [p for p in pieces if p]


@pytest.mark.parametrize(
    "text",
    [
        " " * 60_000,
        "a" * 25_000 + " " * 25_001 + "b" * 50_001,
        ("x" * 30_000 + "\n") * 3,
        "word " * 1000,
        "y" * 25_000,
        "\u3000" * 26_000 + "z",  # ideographic space is whitespace too
    ],
    ids=["spaces60k", "runs", "long-lines", "short-runs", "exact-limit", "unicode-space"],
)
def test_split_matches_spec_rule(text):
    assert [p for p in _split_for_tiktoken(text) if p] == _spec_pieces(text)


def test_split_cuts_at_chunk_size():
    text = "ab " * 300_000  # 900k chars, no long runs
    pieces = [p for p in _split_for_tiktoken(text) if p]
    assert [len(p) for p in pieces] == [400_000, 400_000, 100_000]
    assert "".join(pieces) == text


def test_long_whitespace_encodes(merged, tiny):
    text = "he" + " " * 70_000 + "llo\n" + "\t" * 30_000
    expected = [i for p in _spec_pieces(text) for i in merged.encode(p)]
    assert merged.encode(text) == expected
    assert merged.decode(merged.encode(text)) == text
    assert tiny.encode(text) == list(text.encode())


# ---- malformed files -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "content, message",
    [
        ("not_base64! 0\n", "malformed"),
        ("QQ==\n", "expected"),
        ("QQ== x\n", "malformed"),
        ("", "empty vocabulary"),
    ],
)
def test_bad_vocab_lines(tmp_path, content, message):
    p = tmp_path / "tiktoken.model"
    p.write_text(content)
    with pytest.raises(KvlError, match=message) as e:
        KimiTokenizer.from_files(p)
    assert str(p) in str(e.value)


def test_bad_vocab_ranks(tmp_path):
    p = tmp_path / "tiktoken.model"
    write_vocab(p, BYTES)
    p.write_text(p.read_text().replace("AA== 0", "AA== 999"))
    with pytest.raises(KvlError, match="ranks"):
        KimiTokenizer.from_files(p)
    write_vocab(p, BYTES[1:])  # byte 0x00 missing
    with pytest.raises(KvlError, match="single-byte"):
        KimiTokenizer.from_files(p)
    write_vocab(p, BYTES + [b"A"])
    with pytest.raises(KvlError, match="twice"):
        KimiTokenizer.from_files(p)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(KvlError, match="tiktoken.model"):
        KimiTokenizer.from_pretrained(tmp_path)


def test_bad_special_configs(tmp_path):
    write_vocab(tmp_path / "tiktoken.model", BYTES)
    cfg_path = tmp_path / "tokenizer_config.json"

    cfg_path.write_text("{not json")
    with pytest.raises(KvlError, match="not valid JSON") as e:
        KimiTokenizer.from_pretrained(tmp_path)
    assert str(cfg_path) in str(e.value)

    cfg = special_config(256)
    cfg["added_tokens_decoder"]["100"] = {"content": "<|low|>"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(KvlError, match="collides"):
        KimiTokenizer.from_pretrained(tmp_path)

    cfg = special_config(256)
    cfg["added_tokens_decoder"]["300"] = {"content": "<|im_end|>"}
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(KvlError, match="assigned to ids"):
        KimiTokenizer.from_pretrained(tmp_path)

    cfg = special_config(256)
    del cfg["added_tokens_decoder"]["277"]  # <|media_pad|>
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(KvlError, match="media_pad"):
        KimiTokenizer.from_pretrained(tmp_path)


def test_byte_level_tokenizer_for_fresh_models_has_the_fixture_layout(tmp_path, fixture_dir):
    from kvl_core.processor.tokenizer import save_byte_level_tokenizer

    save_byte_level_tokenizer(tmp_path, vocab_size=300)
    ours, ref = KimiTokenizer.from_pretrained(tmp_path), KimiTokenizer.from_pretrained(fixture_dir)
    assert ours.special_ids == ref.special_ids
    text = "Kimi-VL ◁think▷ 中文 <|im_end|>"
    assert ours.encode(text) == ref.encode(text) == list(text.encode())
