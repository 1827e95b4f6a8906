"""Entry-point plugins: a real pip-installed plugin, a broken one, name clashes and KVL_DISABLE_PLUGINS."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer
from .helpers import listed_commands, run_kvl

from kvl_cli import registry

REPO = Path(__file__).resolve().parents[2]

# A second plugin distribution, written here so that it cannot be installed by accident: one entry point
# whose module fails to import, one typer group, and one that tries to take over the built-in `info`.
MIXED = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "kvl-mixed"
        version = "0.0.1"

        [project.entry-points."kvl.tasks"]
        broken = "kvl_mixed.broken:app"
        badsig = "kvl_mixed.good:badsig"
        grp = "kvl_mixed.good:app"
        info = "kvl_mixed.good:impostor"

        [tool.setuptools]
        packages = ["kvl_mixed"]
    """,
    "kvl_mixed/__init__.py": "",
    "kvl_mixed/broken.py": """
        raise ImportError("kvl_mixed.broken needs the frobnicator extra")
    """,
    "kvl_mixed/good.py": '''
        import typer

        app = typer.Typer(help="A plugin group.")

        @app.command()
        def ok(n: int = 1):
            """Say ok."""
            print("ok " * n)

        @app.command()
        def fail():
            """Fail with a bug."""
            raise ValueError("plugin bug")

        def impostor():
            """IMPOSTOR info."""
            print("IMPOSTOR")

        from typing import Annotated

        def badsig(x: Annotated[int, typer.Option("--x"), typer.Option("--y")] = 1):
            """typer refuses two option declarations for one parameter."""
    ''',
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> str:
    """A directory holding kvl-hello and kvl-mixed, installed once for the module (pip ~2-3 s)."""
    root = tmp_path_factory.mktemp("plugins")
    # Build from copies: setuptools writes build/ and *.egg-info next to the sources.
    hello = shutil.copytree(REPO / "plugins" / "kvl-hello", root / "src" / "kvl-hello")
    mixed = root / "src" / "kvl-mixed"
    for rel, text in MIXED.items():
        (mixed / rel).parent.mkdir(parents=True, exist_ok=True)
        (mixed / rel).write_text(textwrap.dedent(text))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(hello), str(mixed)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return str(target)


@pytest.fixture(scope="module")
def help_with_plugins(site):
    return run_kvl("--help", pythonpath=site)


def test_installed_plugin_appears_in_help(help_with_plugins):
    proc = help_with_plugins
    assert proc.returncode == 0, proc.stderr
    verbs = listed_commands(proc.stdout)
    assert {"hello", "grp", "info"} <= verbs
    assert "broken" not in verbs and "badsig" not in verbs


def test_broken_plugin_and_clash_warn_one_line_each(help_with_plugins):
    proc = help_with_plugins
    warnings = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(warnings) == 3, proc.stderr
    assert any("'badsig'" in w and "cannot be built" in w for w in warnings)
    broken = next(w for w in warnings if "'broken'" in w)
    assert broken.startswith("warning: ") and "kvl-mixed" in broken and "frobnicator" in broken
    clash = next(w for w in warnings if "'info'" in w)
    assert "kvl-mixed" in clash
    assert "Traceback" not in proc.stderr


def test_builtin_verb_wins_a_clash(site):
    proc = run_kvl("info", "--help", pythonpath=site)
    assert proc.returncode == 0
    assert "IMPOSTOR" not in proc.stdout


def test_function_plugin_runs_with_its_options(site):
    proc = run_kvl("hello", "Ada", "--times", "2", "--shout", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "HELLO, ADA!\nHELLO, ADA!\n"
    assert run_kvl("hello", pythonpath=site).stdout == "Hello, world!\n"


def test_plugin_kvl_error_is_one_line(site):
    proc = run_kvl("hello", " ", pythonpath=site)
    assert proc.returncode == 1
    # kvl-mixed's broken entry point warns on every run; everything else on stderr is the error
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert lines == ["error: hello: the name must not be empty"]


def test_typer_plugin_becomes_a_group(site):
    proc = run_kvl("grp", "ok", "--n", "2", pythonpath=site)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["ok", "ok"]
    proc = run_kvl("grp", "fail", pythonpath=site)
    assert proc.returncode == 1
    assert "error: ValueError: plugin bug (run with --debug" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Traceback" in run_kvl("--debug", "grp", "fail", pythonpath=site).stderr


def test_disable_plugins_keeps_only_builtins(site):
    proc = run_kvl("--help", pythonpath=site, KVL_DISABLE_PLUGINS="1")
    assert proc.returncode == 0
    verbs = listed_commands(proc.stdout)
    assert "info" in verbs
    assert not verbs & {"hello", "grp"}
    assert proc.stderr.strip() == ""  # the broken plugin is not even imported


def test_plugin_absent_when_not_installed(site):
    proc = run_kvl("--help")
    assert proc.returncode == 0
    assert not listed_commands(proc.stdout) & {"hello", "grp"}


# In-process checks of the ordering rules, with stand-in entry points (no install needed).
class FakeDist:
    def __init__(self, name):
        self.metadata = {"Name": name}


class FakeEP:
    def __init__(self, name, dist, obj):
        self.name, self.dist, self.value, self._obj = name, FakeDist(dist), f"{dist}:{name}", obj

    def load(self):
        if isinstance(self._obj, Exception):
            raise self._obj
        return self._obj


@pytest.fixture
def fake_eps(monkeypatch, capsys):
    monkeypatch.setattr(registry, "_warned", set())
    monkeypatch.delenv("KVL_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("KVL_DEBUG", raising=False)
    eps = [
        FakeEP("ocr", "kvl-evil", "evil-ocr"),  # listed first, as an installer might
        FakeEP("zzz", "kvl-third", "third"),
        FakeEP("ocr", "kvl", "builtin-ocr"),
        FakeEP("bad", "kvl-third", RuntimeError("boom")),
    ]
    monkeypatch.setattr(registry, "entry_points", lambda group: [ep for ep in eps if group == "kvl.tests"])
    return capsys


def _warnings(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_builtin_entry_point_wins_and_warns_once(fake_eps):
    assert registry.load_group("kvl.tests") == {"ocr": "builtin-ocr", "zzz": "third"}
    registry.load_group("kvl.tests")  # a second load must not repeat the warnings
    warnings = _warnings(fake_eps)
    assert len(warnings) == 2
    assert any("'ocr'" in w and "kvl-evil" in w for w in warnings)
    assert any("'bad'" in w and "RuntimeError: boom" in w for w in warnings)


def test_reserved_names_beat_every_entry_point(fake_eps):
    assert registry.load_group("kvl.tests", reserved={"zzz"}) == {"ocr": "builtin-ocr"}


def test_disable_plugins_env(fake_eps, monkeypatch):
    monkeypatch.setenv("KVL_DISABLE_PLUGINS", "1")
    assert registry.load_group("kvl.tests") == {"ocr": "builtin-ocr"}
    assert _warnings(fake_eps) == []


def test_add_tasks_mounts_groups_and_functions(monkeypatch):
    group = typer.Typer()
    group.command("scenes")(lambda: None)

    def ocr():
        """Read text."""

    monkeypatch.setattr(registry, "load_group", lambda name, reserved=(): {"video": group, "ocr": ocr})
    app = typer.Typer()
    registry.add_tasks(app)
    assert [g.name for g in app.registered_groups] == ["video"]
    assert [c.name for c in app.registered_commands] == ["ocr"]
