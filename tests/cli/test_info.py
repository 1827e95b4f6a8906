"""`kvl info` (kvl_cli/commands/info.py): tables and JSON from config + safetensors headers, one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from kvl_cli.commands.info import info
from kvl_core.config import kimi_vl_a3b
from kvl_core.errors import KvlError

REPO = Path(__file__).resolve().parents[2]
KVL = Path(sys.executable).parent / "kvl"


def invoke(*args: str):
    app = typer.Typer()
    app.command("info")(info)
    app.command("other")(lambda: None)  # two commands, so typer keeps "info" as a verb
    return CliRunner().invoke(app, ["info", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def ok_json(*args: str) -> dict:
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_fixture_tables(tiny_dir):
    result = invoke(str(tiny_dir))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "MoonViT, 2 layers, hidden 64" in out
    assert "8 routed (2 per token) + 2 shared" in out
    assert "361,776" in out  # total parameters
    assert "480 B/token" in out and "1.9 KiB/token" in out  # (32 + 8) x 3 x 4 bytes vs 3 x 4 x (24 + 16) x 4
    assert "float32" in out
    assert "Tensor names and shapes match the config" in out


def test_fixture_json(tiny_dir):
    data = ok_json(str(tiny_dir))
    assert data["dtype"] == "float32"
    assert data["parameters"]["total"] == 361_776
    assert data["parameters"]["lm"]["routed_experts"] == {"total": 2 * 8 * 3 * 16 * 64, "active": 2 * 2 * 3 * 16 * 64}
    assert data["kv_cache"]["latent_bytes_per_token"] == (32 + 8) * 3 * 4
    assert data["kv_cache"]["naive_bytes_per_token"] == 3 * 4 * (24 + 16) * 4
    w = data["weights"]
    assert w["files"] == ["model.safetensors"] and w["tensors"] == 120 and w["parameters"] == 361_776
    assert w["matches_config"] is True and w["dtypes"] == {"F32": 361_776 * 4}
    assert data["config"]["media_placeholder_token_id"] == 277


def test_config_only_folder_of_the_real_model(tmp_path):
    kimi_vl_a3b().save(tmp_path / "config.json")
    data = ok_json(str(tmp_path))
    assert data["weights"] is None
    p = data["parameters"]
    assert p["total"] == 16_407_656_048 and p["lm_total"] == 15_960_110_208
    assert p["vision"]["total"] == 416_866_032 and p["projector"]["total"] == 30_679_808
    assert p["lm_active"] == 2_914_776_192 and p["lm_active_non_embedding"] == 2_243_687_552
    assert data["dtype"] == "bfloat16"
    assert data["kv_cache"]["latent_bytes_per_token"] == 576 * 27 * 2
    assert data["kv_cache"]["naive_bytes_per_token"] == 27 * 16 * (192 + 128) * 2
    text = invoke(str(tmp_path)).stdout
    assert "16,407,656,048" in text and "2.91B counting the embedding table" in text
    assert "2.24B non-embedding" in text
    assert "config only" in text and "131,072 tokens" in text and "163605" in text


def test_weight_dtype_comes_from_the_headers(tmp_path, tiny_dir):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    from kvl_core.checkpoint import save_state_dict

    shutil.copy(tiny_dir / "config.json", tmp_path)  # says float32
    sd = {k: v.to(torch.bfloat16) for k, v in load_file(str(tiny_dir / "model.safetensors")).items()}
    save_state_dict(sd, tmp_path, max_shard_bytes=200_000)
    data = ok_json(str(tmp_path))
    assert data["dtype"] == "bfloat16"
    assert data["kv_cache"]["latent_bytes_per_token"] == (32 + 8) * 3 * 2
    assert len(data["weights"]["files"]) >= 2 and data["weights"]["matches_config"] is True


def test_mismatch_is_reported_not_raised(tmp_path, tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = 320
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").symlink_to(tiny_dir / "model.safetensors")
    data = ok_json(str(tmp_path))
    assert data["weights"]["matches_config"] is False
    assert "language_model.lm_head.weight: expected 320x64, got 300x64" in data["weights"]["wrong_shape"]
    out = invoke(str(tmp_path)).stdout
    assert "do not match" in out and "2 wrong shape" in out


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "missing", "no such directory"),
        (lambda d: d, "no config.json"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}') and d, "unsupported model_type"),
        (lambda d: (d / "config.json").write_text("{broken") and d, "not valid JSON"),
    ],
    ids=["missing-path", "no-config", "unknown-model-type", "bad-json"],
)
def test_bad_input_is_one_kvl_error(tmp_path, setup, message):
    result = invoke(str(setup(tmp_path)))
    assert result.exit_code != 0
    assert isinstance(result.exception, KvlError)
    assert message in str(result.exception) and "\n" not in str(result.exception)


def test_damaged_weights_are_errors(tmp_path, tiny_dir):
    shutil.copy(tiny_dir / "config.json", tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    result = invoke(str(tmp_path))
    assert isinstance(result.exception, KvlError) and "never unpickles" in str(result.exception)
    (tmp_path / "pytorch_model.bin").unlink()
    data = (tiny_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    result = invoke(str(tmp_path))
    assert isinstance(result.exception, KvlError) and "truncated" in str(result.exception)


def test_info_never_imports_torch(tiny_dir):
    code = ("import sys; from kvl_cli.commands.info import collect_info; d = collect_info(sys.argv[1]); "
            "assert d['weights']['matches_config']; assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_dir)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def _cli_has_info() -> bool:
    main = REPO / "kvl_cli" / "main.py"
    return KVL.exists() and main.exists() and "commands.info import info" in main.read_text()


@pytest.mark.skipif(not _cli_has_info(), reason="the kvl console script does not register `info` yet")
def test_console_script(tiny_dir, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "160", "KVL_DISABLE_PLUGINS": "1"}
    proc = subprocess.run([str(KVL), "info", str(tiny_dir), "--json"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["parameters"]["total"] == 361_776
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 4)
    shutil.copy(tiny_dir / "config.json", tmp_path)
    proc = subprocess.run([str(KVL), "info", str(tmp_path)], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().count("\n") == 0 and "truncated" in proc.stderr
