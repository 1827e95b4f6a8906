"""kvl's scorers against the official scorers' own code on the same predictions (bench/eval_fidelity.py).

The official packages (olmocr, lmms-eval; `make eval-check-deps`) are not kvl dependencies: without them these
tests skip. The fast tests run every lmms-eval-covered benchmark and olmOCR-bench on kvl's text layer and its
corrupted variants; the slow one adds pymupdf4llm's Markdown and the browser-rendered math tests. Any verdict
that differs without a documented reason fails.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def _fidelity():
    for pkg in ("olmocr", "lmms_eval", "fuzzysearch", "bs4", "loguru"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed (make eval-check-deps)")
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import eval_fidelity
    finally:
        sys.path.remove(str(REPO / "bench"))
    return eval_fidelity


def _verdicts(report, min_cases: int) -> None:
    assert report.cases >= min_cases
    assert report.agree + len(report.deliberate) == report.cases
    assert not report.disagree, report.disagree[:5]
    for d in report.deliberate:
        assert d["reason"], d  # a deliberate difference always says why


LMMS = {"ocrbench": 1000, "docvqa": 200, "infovqa": 200, "mmmu": 200, "mathvista": 200, "mmstar": 200,
        "mmbench": 200, "ai2d": 200, "video-mme": 200, "longvideobench": 200, "mlvu": 200}


@pytest.mark.parametrize("name", sorted(LMMS))
def test_lmms_eval_benchmarks_agree(name, request):
    F = _fidelity()
    if name in ("ocrbench", "docvqa", "infovqa"):  # their questions and answers are the real OCRBench.json
        request.getfixturevalue("realdata")
    report = F.CHECKS[name](None)
    _verdicts(report, LMMS[name])
    if name in ("mmstar", "ai2d"):  # with lmms-eval's rule selected, not even a deliberate difference
        lm = [d for d in report.deliberate if d["case"].endswith("/lmms-eval")]
        assert all(d["reason"] == F.UNCLOSED for d in lm), lm[:3]


def test_olmocr_bench_text_layer_and_corruptions_agree(realdata):
    F = _fidelity()
    report = F.check_olmocr(math=False, with_pymupdf4llm=False)
    _verdicts(report, 700)
    assert not report.deliberate  # outside math tests kvl is the official rule


@pytest.mark.slow
def test_olmocr_bench_full_cross_check(realdata):
    F = _fidelity()
    report = F.check_olmocr(math=True, with_pymupdf4llm=True)
    _verdicts(report, 900)
    assert all("KaTeX" in d["reason"] for d in report.deliberate)
