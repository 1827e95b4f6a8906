"""`kvl agent` through the installed console script, as a user runs it: routing between the instruction and
the `ground` subcommand, one-line errors for bad input, and the real tiny checkpoint end to end."""

from __future__ import annotations

import json


from cli.helpers import listed_commands, run_kvl  # tests/ is on sys.path (rootdir conftest)


def test_help_shows_instruction_and_ground():
    proc = run_kvl("agent", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "kvl agent [OPTIONS] [INSTRUCTION] | ground SCREENSHOT TARGET" in proc.stdout
    assert "ground" in listed_commands(proc.stdout) and "--dry-run" in proc.stdout
    sub = run_kvl("agent", "ground", "--help")
    assert sub.returncode == 0 and "kvl agent ground [OPTIONS]" in sub.stdout and "INSTRUCTION" not in sub.stdout


def test_empty_instruction_is_one_line():
    proc = run_kvl("agent", "  ")
    assert proc.returncode == 1
    assert proc.stderr == "error: the instruction is empty: say what the agent should do, e.g. kvl agent \"Open Settings\"\n"


def test_two_words_unquoted_is_a_usage_error():
    proc = run_kvl("agent", "open", "settings")
    assert proc.returncode == 2 and "quote the instruction" in proc.stderr


def test_no_display_is_a_clear_error_and_is_recorded(tmp_path):
    # a model named (the built-in one refuses whole agent tasks unless named); run_kvl drops DISPLAY
    proc = run_kvl("agent", "Enable Do Not Track", "--model", "kvl-nano", "--trajectory", str(tmp_path / "t"))
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: no X display: run under xvfb-run, or set DISPLAY (e.g. DISPLAY=:0)"
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["status"] == "error" and "no X display" in summary["message"] and summary["steps"] == 0
    assert (tmp_path / "t" / "report.html").exists()


def test_a_display_that_does_not_answer(tmp_path):
    proc = run_kvl("agent", "x", "--model", "kvl-nano", "--trajectory", str(tmp_path / "t"), DISPLAY=":87")
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot open the display ':87'")


def test_tiny_checkpoint_dry_run_end_to_end(xvfb, tiny_long, tmp_path):
    """The real model path: capture, processor, generation, parsing. The tiny random model answers nonsense,
    so every step is rejected and the run stops after --max-steps with everything recorded."""
    out = tmp_path / "run"
    proc = run_kvl("agent", "Enable Do Not Track", "--dry-run", "--model", str(tiny_long), "--max-steps", "3",
                   "--max-new-tokens", "8", "--temperature", "0", "--trajectory", str(out), "--json", **xvfb)
    assert proc.returncode in (4, 5, 6), proc.stderr  # max-steps / stuck / unusable, never a crash
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and summary["exit_code"] == proc.returncode
    lines = [json.loads(x) for x in (out / "traj.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["tokens"]["completion"] >= 1 and line["tokens"]["prompt"] > 100  # a real prompt with an image
        assert line["status"] in ("rejected", "dry-run", "wait", "not-allowed", "stuck", "done", "fail")
        assert (out / line["screenshot"]).exists()
        assert line["timings"]["generate"] > 0
