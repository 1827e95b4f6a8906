"""Shared fixtures for the processor tests: the tiny checkpoint folder and a merge vocabulary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import FIXTURE_DIR, MERGES, special_config, write_vocab


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    if not (FIXTURE_DIR / "tiktoken.model").is_file():
        pytest.skip(f"tiny checkpoint fixture not found at {FIXTURE_DIR}")
    return FIXTURE_DIR


@pytest.fixture(scope="session")
def merge_vocab_dir(tmp_path_factory) -> Path:
    """A checkpoint-like folder with the 256 bytes + MERGES vocabulary and a Kimi special block."""
    d = tmp_path_factory.mktemp("merge_vocab")
    write_vocab(d / "tiktoken.model", [bytes([b]) for b in range(256)] + MERGES)
    (d / "tokenizer_config.json").write_text(json.dumps(special_config(256 + len(MERGES))))
    return d
