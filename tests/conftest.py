"""Shared test fixtures: paths to ../shared (fixtures, real data) that skip cleanly when absent."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_DIR = SHARED / "fixtures" / "kimi_vl_tiny"
REALDATA = SHARED / "realdata"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    if not (TINY_DIR / "config.json").exists():
        pytest.skip("shared/fixtures/kimi_vl_tiny is not present")
    return TINY_DIR


@pytest.fixture(scope="session")
def golden(tiny_dir):
    from safetensors.torch import load_file

    return load_file(str(tiny_dir / "golden.safetensors"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    from kvl_core.model import KimiVLForConditionalGeneration

    return KimiVLForConditionalGeneration.from_pretrained(tiny_dir, dtype="float32")


@pytest.fixture(scope="session")
def realdata() -> Path:
    if not REALDATA.exists():
        pytest.skip("shared/realdata is not present")
    return REALDATA
