"""bench/gpu_check.py --smoke: every part of the GPU check, on the CPU with the tiny preset, so the
script that runs when a GPU is lent cannot rot in between."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "kimi_vl_tiny"


def test_smoke_runs_every_part_and_writes_the_report(tmp_path):
    import pytest

    if not FIXTURE.exists():
        pytest.skip("the shared fixture is absent")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1500)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["fixture", "real", "hf", "train", "nano"]
    bad = {k: (v["status"], v.get("log_tail", "")[-1500:]) for k, v in parts.items() if v["status"] != "ok"}
    assert not bad, bad
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {part: {r["name"]: r for r in data["rows"]} for part, data in parts.items()}

    fp32 = rows["fixture"]["fixture fp32: max |err| (bar 1e-4)"]
    assert fp32["passed"] and fp32["value"] < 1e-4 and fp32["ids"]["graph"] == fp32["ref_ids"]
    real = rows["real"]
    assert real["latent KV cache per token"]["value"] == 3 * (32 + 8) * 4  # tiny: layers x (R + dr) x fp32
    decode = [r for name, r in real.items() if name.startswith("decode")]
    assert len(decode) == 4 and all(r["value"] > 0 and r["limit"] > 0 for r in decode)
    assert any(name.startswith("prefill") for name in real)
    hf = rows["hf"]
    assert any("transformers" in name and r["value"] > 0 for name, r in hf.items())
    train = list(rows["train"].values())
    assert len(train) == 2 and all(r["value"] > 0 for r in train)
    nano = rows["nano"]
    # CER counts insertions too, so an untrained smoke model can score above 100%
    assert "nano held-out OCR CER" in nano and nano["nano held-out OCR CER"]["value"] >= 0
    assert any(name.startswith("nano sft") and r["value"] > 0 for name, r in nano.items())
    # The table printed for docs/gpu.md names every part.
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {p} |" in table for p in parts)
