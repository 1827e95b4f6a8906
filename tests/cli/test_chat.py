"""`kvl chat` as a user runs it: one-shot, --json, the REPL on stdin, errors; and the thinking view."""

import json

import pytest

from kvl_cli.commands.chat import _ThinkingView

from .helpers import run_kvl


def test_one_shot_json(tiny_dir):
    proc = run_kvl("chat", "--model", str(tiny_dir), "hello", "--json", "--temperature", "0", "--max-new-tokens", "5")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["completion_tokens"] == 5 and out["finish_reason"] == "length"
    assert out["prompt_tokens"] > 5 and out["reasoning"] is None
    plain = run_kvl("chat", "--model", str(tiny_dir), "hello", "--temperature", "0", "--max-new-tokens", "5")
    assert plain.returncode == 0
    assert plain.stdout.rstrip("\n") == out["answer"]


def test_repl_keeps_history_and_survives_a_bad_image(tiny_dir):
    script = "first question\n/image missing.png\nsecond\n/exit\n"
    import subprocess

    from .helpers import KVL, kvl_env
    proc = subprocess.run([str(KVL), "chat", "--model", str(tiny_dir), "--json", "--temperature", "0",
                           "--max-new-tokens", "3"], input=script, capture_output=True, text=True,
                          env=kvl_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "missing.png" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.count('"answer"') == 1  # the turn with the bad image is dropped, the session goes on


def test_repl_two_turns_grow_the_context(tiny_dir):
    import subprocess

    from .helpers import KVL, kvl_env
    proc = subprocess.run([str(KVL), "chat", "--model", str(tiny_dir), "--json", "--temperature", "0",
                           "--max-new-tokens", "3"], input="one\ntwo\n", capture_output=True, text=True,
                          env=kvl_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    dec = json.JSONDecoder()
    text, results = proc.stdout.strip(), []
    while text:
        obj, end = dec.raw_decode(text)
        results.append(obj)
        text = text[end:].strip()
    assert len(results) == 2
    assert results[1]["prompt_tokens"] > results[0]["prompt_tokens"] + 3


def test_no_model_configured_chat_refuses_the_built_in_and_says_how(tmp_path):
    # kvl-nano was never trained to chat: one line saying what to pass (tests/cli/test_builtin_model.py has the
    # other verbs); an install without the built-in weights gets the "no model configured" line (tests/test_hub.py)
    proc = run_kvl("chat", "--max-new-tokens", "4", "hi", KVL_CONFIG=str(tmp_path / "none.toml"),
                   HF_HOME=str(tmp_path))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "needs a real model" in proc.stderr and "Traceback" not in proc.stderr


def test_chat_with_the_built_in_by_name_says_so(tmp_path):
    proc = run_kvl("chat", "--model", "kvl-nano", "--max-new-tokens", "4", "hi", KVL_CONFIG=str(tmp_path / "none.toml"),
                   HF_HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_model_path_is_one_line(tmp_path):
    proc = run_kvl("chat", "--model", str(tmp_path / "nope"), "hi")
    assert proc.returncode == 1 and proc.stderr.startswith("error:") and proc.stderr.count("\n") == 1


@pytest.mark.parametrize("show", [False, True])
def test_thinking_view_hides_or_dims_the_reasoning(capsys, show):
    view = _ThinkingView(show_thinking=show)
    for delta in [" ◁thi", "nk▷ let me", " think ◁/th", "ink▷ The answer", " is 4."]:
        view.feed(delta)
    out, err = capsys.readouterr()
    assert out == "The answer is 4."
    assert ("let me think" in err) == show


def test_thinking_view_streams_plain_answers(capsys):
    view = _ThinkingView(show_thinking=False)
    for delta in ["Hel", "lo ", "there"]:
        view.feed(delta)
    assert capsys.readouterr().out == "Hello there"
