"""Fixtures for the agent tests: one Xvfb for the session (pyautogui binds to the display it first sees, so
in-process tests must share one), and the Tk "Do Not Track" app on it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from .helpers import TK_APP

SCREEN = (1280, 800)


@pytest.fixture(scope="session")
def xvfb():
    """{"DISPLAY": ":N", "XAUTHORITY": empty file} of a private Xvfb, or a skip when Xvfb is not installed."""
    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt install xvfb)")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24",
                             "-nolisten", "tcp", "-noreset"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    number = b""
    deadline = time.monotonic() + 15
    with os.fdopen(read_fd, "rb") as f:
        while not number.endswith(b"\n") and time.monotonic() < deadline:
            chunk = f.read(1)
            if not chunk:
                break
            number += chunk
    if not number.strip():
        proc.kill()
        pytest.skip("Xvfb did not start")
    fd, xauth = tempfile.mkstemp(prefix="kvl-test-xauth-")
    os.close(fd)
    env = {"DISPLAY": f":{number.decode().strip()}", "XAUTHORITY": xauth}
    try:
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(xauth)


@pytest.fixture
def display(xvfb, monkeypatch):
    """The session Xvfb as this process's display."""
    for k, v in xvfb.items():
        monkeypatch.setenv(k, v)
    return xvfb


class TkApp:
    def __init__(self, folder: Path, env: dict):
        self.state_path, self.geom_path = folder / "state.json", folder / "geometry.json"
        script = folder / "dnt_app.py"
        script.write_text(TK_APP)
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.state_path), str(self.geom_path)],
                                     env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while not self.geom_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.poll() is not None else "timeout"
                self.close()
                pytest.skip(f"the Tk app did not start: {err[-300:]}")
            time.sleep(0.05)
        self.geometry = json.loads(self.geom_path.read_text())

    def state(self) -> dict:
        return json.loads(self.state_path.read_text())

    def center(self, name: str, dx: int | None = None) -> tuple[float, float]:
        """Normalised screen coordinates of a widget's centre (or `dx` pixels from its left edge)."""
        x, y, w, h = self.geometry[name]
        return (x + (w // 2 if dx is None else dx)) / SCREEN[0], (y + h // 2) / SCREEN[1]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def tk_app(display, tmp_path):
    app = TkApp(tmp_path, display)
    yield app
    app.close()


@pytest.fixture
def tiny_long(tiny_dir, tmp_path):
    """The tiny checkpoint with a 4096-token context: its 512 cannot hold the agent's system prompt (that case
    is tested in test_desktop.py); the weights are the same files."""
    folder = tmp_path / "tiny_long"
    folder.mkdir()
    for f in tiny_dir.iterdir():
        if f.name != "config.json":
            (folder / f.name).symlink_to(f)
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture
def kvl(monkeypatch, capsys):
    """`kvl(engine, *argv) -> (code, stdout, stderr)`: the real CLI app, its model replaced by `engine`."""
    import kvl_tasks.agent as agent
    from kvl_cli.main import app, run

    def call(engine, *argv):
        if engine is not None:
            monkeypatch.setattr(agent, "load_engine", lambda model, device, dtype, *backend: engine)
            # a scripted engine stands in for a real model: the built-in model's skill check does not apply
            monkeypatch.setattr("kvl_core.hub.require_skill", lambda *a, **k: None)
        capsys.readouterr()
        code = run(app, [str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return call
