"""Fixtures for the document-task tests: the tiny checkpoint's processor and engine, and the CLI run
in-process (one torch import for the whole session instead of one per command)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_processor(tiny_dir):
    from kvl_core.processor.chat import Processor

    return Processor.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir):
    from kvl_core.engine import Engine

    return Engine.load(tiny_dir)


@pytest.fixture
def kvl(tiny_dir, tiny_engine, monkeypatch, capsys):
    """`kvl(*argv, stdin=None) -> (code, stdout, stderr)`: the real CLI app in this process. `--model` must
    name the tiny checkpoint, which is loaded once per session rather than once per command."""
    import io
    import sys

    from kvl_core.engine import Engine
    from kvl_cli.main import app, run

    def load(cls, spec=None, device="cpu", dtype=None):
        assert str(spec) == str(tiny_dir), spec
        return tiny_engine

    monkeypatch.setattr(Engine, "load", classmethod(load))

    def call(*argv: str, stdin: str | None = None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = run(app, [str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call
