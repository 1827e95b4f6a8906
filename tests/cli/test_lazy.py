"""Lazy verbs (kvl_cli/lazy.py): `kvl --help` imports no verb, a run imports its own verb only, and the
summaries that stand in for kvl's verbs say what the verbs' own help says."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

import pytest
import typer

from kvl_cli import lazy, registry
from kvl_cli.main import STATIC, make_app, run

from .helpers import kvl_env, strip_ansi

TASK_MODULES = {"kvl_tasks.ocr", "kvl_tasks.pdf_qa", "kvl_tasks.video", "kvl_tasks.agent", "kvl_tasks.eval"}
COMMAND_MODULES = {target.partition(":")[0] for target in STATIC.values()}


def _imported_by(*argv: str) -> set[str]:
    """Modules a fresh `kvl ARGV` process has imported when it exits (it runs through main(), as kvl does)."""
    code = ("import atexit, json, sys\n"
            "atexit.register(lambda: sys.__stderr__.write('MODULES' + json.dumps(sorted(sys.modules)) + '\\n'))\n"
            f"sys.argv = ['kvl', *{list(argv)!r}]\n"
            "from kvl_cli.main import main\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kvl_env(KVL_DISABLE_PLUGINS="1"), capture_output=True,
                          text=True, timeout=120)
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES"))
    return set(json.loads(line[len("MODULES"):]))


# what typer's help would import for features kvl's help does not use (kvl_cli/lazy.py says why)
UNUSED_BY_HELP = {"pydantic", "rich.markdown", "rich.traceback", "pygments", "markdown_it"}


def test_help_imports_no_verb():
    mods = _imported_by("--help")
    assert not mods & (TASK_MODULES | COMMAND_MODULES)
    assert "torch" not in mods and "numpy" not in mods
    assert not mods & UNUSED_BY_HELP


def test_a_verb_imports_itself_only():
    mods = _imported_by("video", "scenes", "--help")
    assert "kvl_tasks.video" in mods
    assert not mods & (TASK_MODULES - {"kvl_tasks.video"} | COMMAND_MODULES)
    assert "av" not in mods and "cv2" not in mods and "numpy" not in mods  # the video task imports them to run
    assert not mods & UNUSED_BY_HELP


def test_deferred_help_modules_still_work():
    code = ("import io, contextlib\n"
            "from kvl_cli.main import app, run\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    run(app, ['--help'])\n"
            "import typer.rich_utils as r\n"
            "from rich.markdown import Markdown\n"
            "from rich.traceback import Traceback\n"
            "assert r.Markdown is not Markdown  # typer holds the stand-in, later importers the real class\n"
            "md = r.Markdown('**x**')\n"
            "assert isinstance(md, Markdown) and isinstance(md, r.Markdown)\n"
            "assert r.Traceback.from_exception == Traceback.from_exception\n"
            "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], env=kvl_env(KVL_DISABLE_PLUGINS="1"), capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_usage_errors_still_coerce(capsys):
    # the help flag's pass-through coercion must leave every other option's checks alone
    assert run(make_app(), ["--help"]) == 0
    from kvl_cli.main import app

    assert run(app, ["video", "scenes", "--width", "5", "x.mp4"]) == 2
    assert "--width" in strip_ansi(capsys.readouterr().err)


@pytest.mark.parametrize("target", sorted(lazy.SUMMARIES))
def test_summary_is_the_verbs_own_help(target):
    cmd = lazy.build("x", lazy.import_object(target))
    own = inspect.cleandoc(cmd.short_help or cmd.help or "").split("\n\n")[0]
    assert " ".join(own.split()) == lazy.SUMMARIES[target], f"update SUMMARIES[{target!r}] in kvl_cli/lazy.py"


def test_every_builtin_verb_has_a_summary(monkeypatch):
    # one without would still work, but `kvl --help` would import it
    monkeypatch.setenv("KVL_DISABLE_PLUGINS", "1")
    builtins = registry.iter_group(registry.TASKS)
    assert builtins
    assert {ep.value for ep in builtins} <= set(lazy.SUMMARIES)
    assert set(STATIC.values()) <= set(lazy.SUMMARIES)


def test_help_lists_every_verb_in_order():
    proc = subprocess.run([sys.executable, "-m", "kvl_cli.main", "--help"], env=kvl_env(KVL_DISABLE_PLUGINS="1"),
                          capture_output=True, text=True, timeout=120)
    panel = strip_ansi(proc.stdout).split("Commands")[1].split("╰")[0]
    names = [m.group(1) for m in re.finditer(r"^│ (\S+)", panel, re.M)]
    builtins = [ep.name for ep in registry.iter_group(registry.TASKS) if registry.is_builtin(ep)]
    assert names[:len(STATIC)] == list(STATIC)
    assert sorted(names[len(STATIC):]) == sorted(builtins)


# In-process: a group with stand-in verbs that record being loaded.
def _app(verbs):
    app = make_app()
    lazy.add_source(app, lambda taken: [v for v in verbs if v.name not in taken])
    return app


def _group(loaded, name="grp"):
    def load():
        loaded.append(name)
        g = typer.Typer(help="Real help.")

        @g.command()
        def go(n: int = 1):
            """Go."""
            print("went", n)

        return g

    return load


def test_help_does_not_load_a_verb_with_a_summary(capsys):
    loaded: list[str] = []
    app = _app([lazy.Verb("grp", "x:grp", _group(loaded), "Stand-in summary.")])
    assert run(app, ["--help"]) == 0
    assert loaded == []
    assert "Stand-in summary." in strip_ansi(capsys.readouterr().out)
    assert run(app, ["grp", "go", "--n", "3"]) == 0
    assert loaded == ["grp"]
    assert "went 3" in capsys.readouterr().out


def test_help_loads_a_verb_without_a_summary(capsys):
    loaded: list[str] = []
    app = _app([lazy.Verb("grp", "x:grp", _group(loaded))])
    assert run(app, ["--help"]) == 0
    assert loaded == ["grp"]
    assert "Real help." in strip_ansi(capsys.readouterr().out)


def test_a_verb_that_fails_to_load_is_reported_and_left_out(capsys):
    errors = []

    def broken():
        raise ImportError("needs the frobnicator extra")

    def report(name, e, stage):
        errors.append((name, stage, str(e)))

    app = _app([lazy.Verb("bad", "x:bad", broken, "Broken.", on_error=report),
                lazy.Verb("grp", "x:grp", _group([]))])
    assert run(app, ["bad"]) == 2  # then it is not a verb: a usage error
    assert errors == [("bad", "load", "needs the frobnicator extra")]
    assert run(app, ["grp", "go"]) == 0  # the others still run


def test_a_builtin_that_fails_to_load_is_kvls_bug(capsys):
    def broken():
        raise ImportError("boom")

    app = _app([lazy.Verb("bad", "x:bad", broken, "Broken.")])
    assert run(app, ["bad"]) == 1
    assert "ImportError: boom" in capsys.readouterr().err


def test_typo_suggests_a_verb_not_built_yet(capsys):
    app = _app([lazy.Verb("scenery", "x:scenery", _group([]), "S.")])
    assert run(app, ["scenerz"]) == 2
    assert "Did you mean 'scenery'?" in strip_ansi(capsys.readouterr().err)


def test_static_verbs_win_over_a_source():
    loaded: list[str] = []
    app = _app([lazy.Verb("info", "x:info", _group(loaded, "info"), "Impostor.")])
    group = typer.main.get_command(app)
    assert group.lazy["info"].target == STATIC["info"]
    assert loaded == []
