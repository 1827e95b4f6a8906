"""Running the installed `kvl` console script the way a user does, for test_cli.py and test_registry.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

# The console script installed next to the interpreter running the tests (the venv's bin/).
KVL = Path(sys.executable).parent / "kvl"

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def kvl_env(pythonpath: str | None = None, **extra: str) -> dict[str, str]:
    """The user's environment minus anything that would change kvl's behaviour behind a test's back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVL_")}
    for var in ("DISPLAY", "WAYLAND_DISPLAY", "PYTHONPATH", "FORCE_COLOR"):
        env.pop(var, None)
    env.update(NO_COLOR="1", COLUMNS="160")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    env.update(extra)
    return env


def run_kvl(*args: str, pythonpath: str | None = None, **env: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [str(KVL), *args], env=kvl_env(pythonpath, **env), capture_output=True, text=True, timeout=240
    )
    proc.stdout, proc.stderr = strip_ansi(proc.stdout), strip_ansi(proc.stderr)
    return proc


def listed_commands(help_text: str) -> set[str]:
    """Verb names from the Commands panel of rich help (lines like `│ hello  Print a greeting │`)."""
    names, in_panel = set(), False
    for line in help_text.splitlines():
        if "Commands" in line and line.lstrip().startswith("╭"):
            in_panel = True
        elif in_panel and line.lstrip().startswith("╰"):
            in_panel = False
        elif in_panel:
            # a name starts right after "│ "; wrapped help lines are indented further
            m = re.match(r"\s*│ (\S+)", line)
            if m:
                names.add(m.group(1))
    return names
