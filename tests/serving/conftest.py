"""A real `kvl serve` subprocess on a free loopback port, shared by the tests of a module."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

KVL = Path(sys.executable).parent / "kvl"


def kvl_env(**extra: str) -> dict[str, str]:
    """The user's environment without KVL_*/OPENAI_* settings that would steer kvl behind a test's back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVL_", "OPENAI_"))}
    env.update(NO_COLOR="1", COLUMNS="160", OMP_NUM_THREADS="1", **extra)
    return env


def free_port() -> int:
    # Ask the kernel for a free port, then hand the number to the server (it binds it itself).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, model: str, log: Path):
        self.proc, self.port, self.model, self.log = proc, port, model, log
        self.root = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root}/v1"

    def health(self) -> dict:
        return httpx.get(f"{self.root}/health", timeout=5).json()

    def alive(self) -> bool:
        return self.proc.poll() is None and self.health()["status"] == "ok"


@contextlib.contextmanager
def running_server(model: Path, tmp: Path, *args: str):
    port = free_port()
    log = tmp / f"serve-{port}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(KVL), "serve", "--model", str(model), "--port", str(port), *args],
                                env=kvl_env(), stdout=fh, stderr=subprocess.STDOUT)
    server = Server(proc, port, str(model), log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kvl serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if server.health()["status"] == "ok":
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kvl serve did not come up: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
