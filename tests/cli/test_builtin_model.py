"""The built-in kvl-nano model: the default when nothing is configured, announced in one dim line, and
actually doing its job on the held-out example shipped in examples/ (never trained on); every verb it was
not trained for refuses in one line."""

import json
from pathlib import Path

import pytest

from kvl_core import hub
from kvl_tasks.eval.benchmarks.nano import normalize_markdown
from kvl_tasks.eval.scoring import levenshtein

from .helpers import run_kvl

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

pytestmark = pytest.mark.skipif(hub.builtin_model("kvl-nano") is None, reason="kvl-nano weights not in this tree")


@pytest.fixture
def no_config(tmp_path):
    # no $KVL_MODEL (helpers drop KVL_*), no user config, an empty HF cache: only the built-in is left
    return {"KVL_CONFIG": str(tmp_path / "none.toml"), "HF_HOME": str(tmp_path / "hf")}


def test_models_lists_the_built_in_as_the_default(no_config):
    proc = run_kvl("models", "--json", **no_config)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    nano = rows["kvl-nano"]
    assert nano["installed"] and nano["default"] and nano["kind"] == "built-in"
    assert nano["size_mb"] < 20  # the shipping budget


def test_ocr_without_a_model_uses_kvl_nano_and_reads_the_invoice(no_config):
    proc = run_kvl("ocr", str(EXAMPLES / "invoice.png"), "--to", "markdown", **no_config)
    assert proc.returncode == 0, proc.stderr
    notices = [ln for ln in proc.stderr.splitlines() if "using kvl-nano" in ln]
    assert len(notices) == 1 and "--model" in notices[0]
    # the README's main job promises the true markdown, character for character (docs/nano.md); the weights
    # before these wrote it with 4, 2 and 7 wrong characters, and an untrained model with an invoice's shape
    truth = (EXAMPLES / "invoice.md").read_text()
    assert proc.stdout.strip() == truth.strip(), (
        f"{levenshtein(normalize_markdown(proc.stdout), normalize_markdown(truth))} edits:\n{proc.stdout}")


def test_agent_ground_on_kvl_nano_by_name(no_config):
    # kvl-nano was not taught grounding (its skills are ocr only), so it runs only when named; its answer
    # either holds a point in the image or ends in one error line, never a traceback
    target = json.loads((EXAMPLES / "screen.json").read_text())
    box = ",".join(str(v) for v in target["bbox"])
    proc = run_kvl("agent", "ground", str(EXAMPLES / "screen.png"), target["instruction"], "--box", box, "--json",
                   "--model", "kvl-nano", **no_config)
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        out = json.loads(proc.stdout)
        assert 0 <= out["x"] <= 1 and 0 <= out["y"] <= 1
        assert (out["px"], out["py"]) == (round(out["x"] * 448), round(out["y"] * 336))
    else:
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "screen.png" in lines[0] and "holds no point" in lines[0], proc.stderr


def test_a_configured_model_silences_the_notice(no_config, tiny_dir):
    proc = run_kvl("chat", "--max-new-tokens", "2", "hi", KVL_MODEL=str(tiny_dir), **no_config)
    assert proc.returncode == 0, proc.stderr
    assert "using kvl-nano" not in proc.stderr


# ---- what the built-in model must not do: verbs outside its skills refuse in one line ------------------

def _pdf(tmp_path: Path) -> Path:
    fitz = pytest.importorskip("fitz")
    doc = fitz.open()
    doc.new_page().insert_text((72, 72), "Revenue in Q3 was $4.2M.")
    path = tmp_path / "report.pdf"
    doc.save(path)
    return path


REFUSED = {
    "chat": lambda tmp: ["chat", "What is the total?"],
    "pdf ask": lambda tmp: ["pdf", "ask", str(_pdf(tmp)), "What was Q3 revenue?"],
    "agent": lambda tmp: ["agent", "enable Do Not Track", "--dry-run", "--trajectory", str(tmp / "traj")],
    "agent ground": lambda tmp: ["agent", "ground", str(EXAMPLES / "screen.png"), "the Save button"],
    "video describe": lambda tmp: ["video", "scenes", str(ROOT / "examples" / "invoice.png"), "--describe"],
    "eval": lambda tmp: ["eval", "ocrbench", "--data", str(tmp), "--out", str(tmp / "ev")],
    "serve": lambda tmp: ["serve", "--port", "1"],
}


@pytest.mark.parametrize("verb", list(REFUSED))
def test_verbs_outside_the_built_in_skills_refuse_in_one_line(verb, no_config, tmp_path):
    proc = run_kvl(*REFUSED[verb](tmp_path), **no_config)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert "needs a real model" in line and "kvl-nano" in line
    for how in ("--model", "KVL_MODEL", "--backend openai"):
        assert how in line
    assert "kvl ocr" in line  # says what the built-in model can do
    assert proc.stdout == ""
    assert not (tmp_path / "traj").exists() and not (tmp_path / "ev").exists()  # nothing was started


def test_naming_kvl_nano_runs_it_anyway(no_config):
    proc = run_kvl("chat", "--model", "kvl-nano", "--max-new-tokens", "3", "hi", **no_config)
    assert proc.returncode == 0, proc.stderr
    assert "needs a real model" not in proc.stderr


def test_the_built_in_models_own_benchmarks_are_not_refused(no_config, tmp_path):
    proc = run_kvl("eval", "nano-ocr", "--data", str(tmp_path / "missing.jsonl"), **no_config)
    assert "needs a real model" not in proc.stderr
