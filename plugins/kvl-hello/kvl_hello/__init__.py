"""`kvl hello`: the smallest useful kvl plugin.

kvl imports this module to build its help, so keep the top of the module light: import torch,
pymupdf, decord and friends inside the command function, never up here.
"""

from typing import Annotated

import typer

from kvl_core.errors import KvlError


def hello(
    name: Annotated[str, typer.Argument(help="Who to greet.")] = "world",
    times: Annotated[int, typer.Option("--times", "-n", min=1, help="How many greetings to print.")] = 1,
    shout: Annotated[bool, typer.Option("--shout", help="Greet in capitals.")] = False,
) -> None:
    """Print a greeting (example plugin: see plugins/kvl-hello in the kvl repo)."""
    if not name.strip():
        # A KvlError is how a plugin reports bad input: kvl prints it as one `error:` line, exit 1.
        raise KvlError("hello: the name must not be empty")
    line = f"Hello, {name}!"
    for _ in range(times):
        typer.echo(line.upper() if shout else line)
