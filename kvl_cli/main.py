"""`kvl`: assembles the typer app and turns every failure into one line on stderr.

Static verbs are kvl_cli/commands; task verbs come from the `kvl.tasks` entry points (kvl_cli/registry.py),
built-in and third-party alike. Both are imported only when they run (kvl_cli/lazy.py): a process runs one
verb, and building every verb's typer command cost more than the rest of start-up. Nothing imported at
module level may pull in torch or an optional extra: `kvl --help` has to stay instant and work on a machine
without a display.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Annotated

import typer

from kvl_cli.output import err_console, print_error
from kvl_cli.lazy import SUMMARIES, Verb, add_source, cheap_help_flags, import_object
from kvl_cli.registry import add_lazy_tasks, env_flag
from kvl_core.errors import KvlError

# name -> the function, in the order `kvl --help` lists them
STATIC = {
    "info": "kvl_cli.commands.info:info",
    "models": "kvl_cli.commands.models:models",
    "chat": "kvl_cli.commands.chat:chat",
    "train": "kvl_cli.commands.train:train",
    "serve": "kvl_cli.commands.serve:serve",
}

HELP = """\
Kimi-VL end to end: run the model on images, video and PDFs, train it and evaluate it.

Run [bold]kvl VERB --help[/bold] for a verb's options. Add [bold]--debug[/bold] (or set KVL_DEBUG=1)
to see the full traceback when something fails.
"""

# Set by the root callback; read by run() after the command has failed, when typer's context is gone.
_state = {"debug": False}


def _show_version(value: bool) -> None:
    if value:
        from kvl_core import __version__

        typer.echo(f"kvl {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print kvl's version and exit."),
    ] = False,
    # KVL_DEBUG is read by run() rather than as this option's envvar: click would reject KVL_DEBUG=2.
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback when a command fails (or set KVL_DEBUG=1).")
    ] = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


def make_app() -> typer.Typer:
    """The root app with its global options and static verbs, before any task is added."""
    app = typer.Typer(
        name="kvl",
        help=HELP,
        rich_markup_mode="rich",
        no_args_is_help=True,
        add_completion=False,
        # A rich traceback dumps every local (tensors included); ours is a plain one, and only on --debug.
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    add_source(app, _static_verbs)
    return app


def _static_verbs(taken: set[str]) -> list[Verb]:
    # kvl's own: a failure to load is kvl's bug, so it raises (and run() makes it one line)
    return [Verb(name, target, lambda target=target: import_object(target), SUMMARIES.get(target))
            for name, target in STATIC.items() if name not in taken]


cheap_help_flags()
app = make_app()
add_lazy_tasks(app)


def _fail(e: BaseException, msg: str) -> int:
    if _state["debug"]:
        traceback.print_exception(e)
    print_error(msg)
    return 1


def _interrupted() -> int:
    err_console.print("interrupted", markup=False, highlight=False)
    return 130


class _NoticeHandler(logging.Handler):
    """`kvl.notice` log records (e.g. "using the built-in demo model") as one dim line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(record.getMessage(), style="dim", markup=False, highlight=False, soft_wrap=True)


def _setup_notices() -> None:
    log = logging.getLogger("kvl.notice")
    if not any(isinstance(h, _NoticeHandler) for h in log.handlers):
        log.addHandler(_NoticeHandler())
    log.setLevel(logging.INFO)
    log.propagate = False


def run(cli: typer.Typer, argv: list[str] | None = None) -> int:
    """Run `cli` on argv (default sys.argv[1:]) and return the process exit code; never raises."""
    _state["debug"] = env_flag("KVL_DEBUG")
    _setup_notices()
    try:
        cli(args=argv, prog_name="kvl")
    except SystemExit as e:  # typer always ends this way: --help, usage errors, typer.Exit, success
        if e.code is None:
            return 0
        if isinstance(e.code, int):
            # typer turns Ctrl-C inside a command into a silent Exit(130)
            return _interrupted() if e.code == 130 else e.code
        print_error(str(e.code))  # sys.exit("message")
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except KvlError as e:
        return _fail(e, str(e))
    except Exception as e:  # noqa: BLE001 -- the last line of defence: one line, not a wall of text
        what = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return _fail(e, what if _state["debug"] else f"{what} (run with --debug for the traceback)")
    return 0


def main() -> None:
    sys.exit(run(app))


if __name__ == "__main__":
    main()
