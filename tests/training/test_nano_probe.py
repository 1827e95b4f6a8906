"""bench/nano_probe.py, the kvl-nano sample-efficiency harness (slow: it trains real models for a while)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _probe():
    spec = importlib.util.spec_from_file_location("nano_probe", ROOT / "bench" / "nano_probe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["nano_probe"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_probe_learns_the_output_distribution_and_writes_its_curve(tmp_path):
    out = tmp_path / "p.json"
    res = _probe().main(["--task", "words200", "--images", "320", "--eval-every", "160", "--heldout", "8",
                         "--batch", "16", "--lr", "1e-3", "--dense", "1", "--out", str(out)])
    curve = json.loads(out.read_text())["curve"]
    assert [p["images"] for p in curve] == [p["images"] for p in res["curve"]] == [160, 320]
    assert curve[-1]["heldout_loss"] < 5.0 < 6.93  # below the uniform 1024-way loss: it trained
    assert 0 <= curve[-1]["heldout_cer"] and len(curve[-1]["examples"]) == 4


def test_dense_targets_put_each_character_in_its_cell():
    probe = _probe()
    # "ab" with centres at x=10 and x=40 (cells of 28 px, scale 1): one per cell, row 0; spaces are not targets
    t = probe.dense_targets("a b", [(10, 5), (20, 5), (40, 5)], n_cols=2, n_rows=1, scale=1.0)
    assert t.tolist() == [[ord("a") - 31, 0, 0], [ord("b") - 31, 0, 0]]


def test_cnn_baseline_runs_on_the_same_task(tmp_path):
    res = _probe().main(["--baseline", "--task", "lines", "--images", "64", "--eval-every", "32", "--heldout", "4",
                         "--batch", "16"])
    assert [p["images"] for p in res["curve"]] == [32, 64]


def test_oracle_probe_phases_train_and_join(tmp_path):
    """bench/nano_oracle.py: A (LM on oracle tokens) and B (vision, dense) train apart and C joins them."""
    import subprocess

    script = ROOT / "bench" / "nano_oracle.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=600, cwd=tmp_path)
    a, b = tmp_path / "A.pt", tmp_path / "B.pt"
    for phase, out in (("A", a), ("B", b)):
        proc = run(phase, "--images", "64", "--eval-every", "64", "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        log = [json.loads(x) for x in Path(str(out) + ".log").read_text().splitlines()]
        assert log[-1]["images"] == 64 and log[-1]["train_loss"] < (7.0 if phase == "A" else 6.0)
    proc = run("C", "--lm", str(a), "--vis", str(b), "--images", "16", "--batch", "16", "--eval-every", "16",
               "--out", str(tmp_path / "C.pt"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cer" in json.loads(Path(str(tmp_path / "C.pt") + ".log").read_text().splitlines()[-1])
