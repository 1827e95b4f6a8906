"""The one place kvl writes to the terminal: rich consoles, one-line errors, plain JSON, progress bars.

Human-facing text goes through `console` (stdout) or `err_console` (stderr); machine-facing output
(`--json`) goes through `print_json`, which bypasses rich so no markup, wrapping or colour can leak in.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from rich.progress import Progress

console = Console()
# Progress, warnings and errors go to stderr so `kvl ... --json | jq` stays parseable.
err_console = Console(stderr=True)


def _one_line(msg: str) -> str:
    return " ".join(part.strip() for part in str(msg).splitlines() if part.strip())


def print_error(msg: str) -> None:
    """`error: <msg>` as exactly one red line on stderr (never wrapped, markup in msg printed literally)."""
    err_console.print(f"error: {_one_line(msg)}", style="red", markup=False, highlight=False, soft_wrap=True)


def print_warning(msg: str) -> None:
    """A dim `warning: <msg>` line on stderr, for things that do not stop the command."""
    err_console.print(f"warning: {_one_line(msg)}", style="dim", markup=False, highlight=False, soft_wrap=True)


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, PurePath):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    # numpy arrays/scalars and torch tensors, duck-typed so this module never imports either
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def print_json(obj: Any) -> None:
    """Write `obj` as indented JSON to stdout, followed by a newline."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=_to_jsonable) + "\n")
    sys.stdout.flush()


def progress(unit: str = "it", *, transient: bool = False, disable: bool = False) -> Progress:
    """A Progress on stderr with description, bar, done/total, rate in `unit`/s, elapsed and ETA.

    Use as `with progress("page") as p: t = p.add_task("ocr", total=n); ...; p.advance(t)`.
    """
    # Imported here: rich.progress costs ~20 ms that `kvl --help` should not pay.
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        # rich's TransferSpeedColumn only speaks bytes; tasks count pages, frames, samples.
        def render(self, task):
            speed = task.finished_speed or task.speed
            shown = "?" if speed is None else f"{speed:.2f}" if speed < 10 else f"{speed:.1f}"
            return Text(f"{shown} {unit}/s", style="progress.data.speed")

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err_console,
        transient=transient,
        disable=disable,
    )
