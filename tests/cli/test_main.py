"""The `kvl` entry point: help, version, usage errors and the one-line error contract."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from .helpers import KVL, kvl_env, listed_commands, run_kvl, strip_ansi
from typer.testing import CliRunner

from kvl_cli import output
from kvl_cli.main import app, make_app, run
from kvl_core.errors import KvlError

# torch and the optional extras: none may be imported just to print help (no display, no GPU stack).
HEAVY = {"torch", "numpy", "decord", "fitz", "pymupdf", "mss", "pyautogui", "matplotlib", "transformers", "av", "cv2"}


def test_help_lists_static_verbs_and_imports_nothing_heavy():
    # -X importtime logs every module the real console script imports, on stderr.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", str(KVL), "--help"],
        env=kvl_env(KVL_DISABLE_PLUGINS="1"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "info" in listed_commands(strip_ansi(proc.stdout))
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "kvl_cli.main" in imported  # the log really is of kvl
    assert not {m.split(".")[0] for m in imported} & HEAVY


def test_version_matches_installed_metadata():
    proc = run_kvl("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"kvl {importlib.metadata.version('kvl')}"


def test_unknown_verb_is_a_usage_error():
    proc = run_kvl("no-such-verb", KVL_DISABLE_PLUGINS="1")
    assert proc.returncode == 2
    assert "no-such-verb" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_no_arguments_shows_help_not_a_traceback():
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 2
    assert "Usage" in strip_ansi(result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit)


# In-process: run() is exactly what main() does, applied to an app with the real root callback
# plus commands that fail on purpose.
LONG = "the checkpoint at /data/ckpt has no config.json; " + "x" * 120


@pytest.fixture
def failing_app() -> typer.Typer:
    cli = make_app()

    @cli.command("user-error")
    def user_error():
        raise KvlError(f"{LONG}\n[red]not markup[/red]")

    @cli.command("bug")
    def bug():
        raise ValueError("index 7 out of range")

    @cli.command("ctrl-c")
    def ctrl_c():
        raise KeyboardInterrupt

    @cli.command("exit-msg")
    def exit_msg():
        sys.exit("could not open the camera")

    @cli.command("ok")
    def ok():
        print("done")

    return cli


def _stderr_lines(capsys) -> list[str]:
    return [line for line in strip_ansi(capsys.readouterr().err).splitlines() if line.strip()]


def test_kvl_error_is_one_line_exit_1(failing_app, capsys, monkeypatch):
    monkeypatch.delenv("KVL_DEBUG", raising=False)
    assert run(failing_app, ["user-error"]) == 1
    # One line even though the message is longer than the console and has a newline and brackets.
    assert _stderr_lines(capsys) == [f"error: {LONG} [red]not markup[/red]"]


def test_unexpected_exception_names_type_and_hints_debug(failing_app, capsys, monkeypatch):
    monkeypatch.delenv("KVL_DEBUG", raising=False)
    assert run(failing_app, ["bug"]) == 1
    assert _stderr_lines(capsys) == [
        "error: ValueError: index 7 out of range (run with --debug for the traceback)"
    ]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_traceback(failing_app, capsys, monkeypatch, how):
    monkeypatch.delenv("KVL_DEBUG", raising=False)
    argv = ["bug"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv("KVL_DEBUG", "1")
    assert run(failing_app, argv) == 1
    lines = _stderr_lines(capsys)
    assert lines[0] == "Traceback (most recent call last):"
    assert any("def bug" in line or 'raise ValueError("index 7' in line for line in lines)
    assert lines[-1] == "error: ValueError: index 7 out of range"


def test_debug_flag_does_not_leak_into_the_next_run(failing_app, capsys, monkeypatch):
    monkeypatch.delenv("KVL_DEBUG", raising=False)
    run(failing_app, ["--debug", "bug"])
    capsys.readouterr()
    run(failing_app, ["bug"])
    assert "Traceback" not in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(failing_app, capsys):
    assert run(failing_app, ["ctrl-c"]) == 130
    assert _stderr_lines(capsys) == ["interrupted"]


def test_sys_exit_with_message_becomes_an_error_line(failing_app, capsys):
    assert run(failing_app, ["exit-msg"]) == 1
    assert _stderr_lines(capsys) == ["error: could not open the camera"]


def test_success_and_usage_errors_keep_their_codes(failing_app, capsys):
    assert run(failing_app, ["ok"]) == 0
    assert capsys.readouterr().out == "done\n"
    assert run(failing_app, ["ok", "--no-such-option"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_print_json_is_plain_parseable_json(capsys):
    output.print_json({"page": 3, "path": Path("/tmp/a [b].pdf"), "tags": {"b", "a"}, "text": "[bold]x[/bold] é"})
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert json.loads(out) == {"page": 3, "path": "/tmp/a [b].pdf", "tags": ["a", "b"], "text": "[bold]x[/bold] é"}
    with pytest.raises(TypeError):
        output.print_json({"x": object()})


def test_progress_reports_count_rate_and_eta_on_stderr(capsys):
    with output.progress("page") as bar:
        task = bar.add_task("ocr", total=3)
        for _ in range(3):
            bar.advance(task)
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays free for --json
    err = strip_ansi(captured.err)
    assert "ocr" in err and "3/3" in err and "page/s" in err
