"""Byte-level BPE for models trained from scratch (kvl-nano): learned merges, saved as a Kimi tokenizer."""

import pytest

from kvl_core.errors import KvlError
from kvl_core.processor.tokenizer import KimiTokenizer, save_bpe_tokenizer, train_bpe

CORPUS = [("Send a Do Not Track request", 5), ("| Item | Price |\n| --- | --- |\n| Tea | $4.50 |", 3),
          ("## Invoice 2041\n\n- Tea\n- Butter", 2), ("Convert this page to GitHub Markdown.", 8)]


def test_merges_are_deterministic_and_built_from_lower_ranks():
    merges = train_bpe(CORPUS, 40)
    assert merges == train_bpe(list(CORPUS), 40)
    known = {bytes([b]) for b in range(256)}
    for tok in merges:
        # tiktoken can only reach a token that splits into two earlier tokens
        assert any(tok[:i] in known and tok[i:] in known for i in range(1, len(tok))), tok
        known.add(tok)
    assert len(set(merges)) == 40


def test_saved_tokenizer_round_trips_and_compresses(tmp_path):
    merges = train_bpe(CORPUS, 60)
    save_bpe_tokenizer(tmp_path, vocab_size=256 + 60 + 44, merges=merges)
    tok = KimiTokenizer.from_pretrained(tmp_path)
    text = "Send a Do Not Track request"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # frequent phrases become a few tokens
    unseen = "Zebra crossing ☃ 123"
    assert tok.decode(tok.encode(unseen)) == unseen  # bytes still cover anything
    # Kimi's specials follow the ranks at their usual offsets; [UNK]/[PAD] are the model's last ids
    assert tok.bos_id == 256 + 60 and tok.media_pad_id == 256 + 60 + 21 and tok.pad_id == 256 + 60 + 43


def test_too_small_vocab_and_exhausted_corpus_are_errors(tmp_path):
    with pytest.raises(KvlError, match="too small"):
        save_bpe_tokenizer(tmp_path, vocab_size=300, merges=train_bpe(CORPUS, 30))
    with pytest.raises(KvlError, match="supports only"):
        train_bpe([("ab", 1)], 5)
