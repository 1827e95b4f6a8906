"""Verbs that are imported only when they run: what keeps `kvl --help` and `kvl video scenes ...` fast.

Building a typer command means importing its module and evaluating every parameter's annotation; for all of
kvl's verbs that cost more than the rest of start-up together, for a process that runs one verb. So the root
group knows each verb as a `Verb`: a name, how to load it, and (for kvl's own verbs) the one-line summary that
`kvl --help` shows, so that listing the verbs imports none of them. Running `kvl video ...` loads and builds
`video` alone. A verb without a summary (a third-party plugin) is loaded to be listed, as before.

Two more start-up costs of typer's are avoided here, for help screens: its renderer's imports of rich.markdown
and rich.traceback (`import_help_renderer`) and pydantic for a help flag that was not given (`cheap_help_flags`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from difflib import get_close_matches
from typing import Any, Callable, ClassVar, Optional

import typer
from typer.core import TyperCommand, TyperGroup

try:  # recent typer carries its own copy of click
    from typer import _click
except ImportError:  # pragma: no cover -- older typer
    import click as _click

# One-line summaries of kvl's own verbs, shown by `kvl --help` without importing them, keyed by the object's
# import path ("module:attribute", as in an entry point) so that a verb pointed elsewhere falls back to being
# loaded. tests/cli/test_lazy.py checks each against the help its command really has.
SUMMARIES = {
    "kvl_cli.commands.info:info":
        "Show a model's configuration, parameter counts, dtype and KV-cache size (reads headers only).",
    "kvl_cli.commands.models:models":
        "List built-in models and Kimi-VL checkpoints in the local Hugging Face cache.",
    "kvl_cli.commands.chat:chat": "Talk to the model: text, images, multi-turn.",
    "kvl_cli.commands.train:train":
        "Train Kimi-VL with Muon: any stage of the paper, from a checkpoint or a fresh preset.",
    "kvl_cli.commands.serve:serve":
        "Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health).",
    "kvl_tasks.ocr:ocr": "Images and PDFs to markdown (or text, JSON, HTML).",
    "kvl_tasks.pdf_qa:app": "Long-PDF question answering.",
    "kvl_tasks.video:app": "Video: scene splitting with exact cut frames, timestamps and descriptions.",
    "kvl_tasks.agent:app":
        "GUI agent: operate the desktop from a screenshot each step, or ground one target on a screenshot.",
    "kvl_tasks.eval:app":
        "Run a benchmark of the Kimi-VL report and score it like its official tool: kvl eval BENCHMARK --data PATH "
        "(kvl eval list shows the benchmarks).",
}


def import_object(target: str) -> Any:
    """"package.module:attr" -> the object (what an entry point's load() does)."""
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass
class Verb:
    name: str
    target: str  # "module:attr", for messages and SUMMARIES
    load: Callable[[], Any]  # -> a typer.Typer (a group) or a function (a command); may raise
    # what `kvl --help` lists without loading; None: load the verb to list it (and to check that it loads)
    summary: Optional[str] = None
    # (name, exception, "load" or "build"): reports a failure, after which the verb is left out; None: raise
    on_error: Optional[Callable[[str, BaseException, str], None]] = None


def build(name: str, obj: Any, markup_mode: Any = "rich") -> _click.Command:
    """The click command typer would make of `obj` mounted as `name` (raises if typer cannot build it)."""
    if not isinstance(obj, typer.Typer) and not callable(obj):
        raise TypeError(f"expected a typer.Typer or a function, got {type(obj).__name__}")
    probe = typer.Typer(rich_markup_mode=markup_mode, add_completion=False)
    probe.callback()(_noop)  # with a callback typer always builds a group, whatever it holds
    if isinstance(obj, typer.Typer):
        probe.add_typer(obj, name=name)
    else:
        probe.command(name)(obj)
    return typer.main.get_command(probe).commands[name]


def _noop() -> None:
    pass


class LazyGroup(TyperGroup):
    """A typer group whose `Verb`s are built on first use; `sources` are called once per group built."""

    # each: (names already taken) -> verbs to add, in order; a name already taken must not be returned
    sources: ClassVar[tuple[Callable[[set[str]], list[Verb]], ...]] = ()

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lazy: dict[str, Verb] = {}
        self._listing = False
        for source in self.sources:
            for verb in source(set(self.commands) | set(self.lazy)):
                self.lazy[verb.name] = verb

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return [*self.commands, *(n for n in self.lazy if n not in self.commands)]

    def get_command(self, ctx: _click.Context, cmd_name: str) -> Optional[_click.Command]:
        cmd = self.commands.get(cmd_name)
        verb = self.lazy.get(cmd_name)
        if cmd is not None or verb is None:
            return cmd
        if self._listing and verb.summary is not None:
            return TyperCommand(name=cmd_name, callback=None, help=verb.summary)  # a stand-in for the verbs panel
        stage = "load"
        try:
            obj = verb.load()
            stage = "build"
            cmd = build(cmd_name, obj, self.rich_markup_mode)
        except Exception as e:  # noqa: BLE001 -- a plugin's failure must not take the CLI down
            del self.lazy[cmd_name]
            if verb.on_error is None:
                raise
            verb.on_error(cmd_name, e, stage)
            return None
        self.commands[cmd_name] = cmd
        return cmd

    def parse_args(self, ctx: _click.Context, args: list[str]) -> list[str]:
        if not args or any(a in ctx.help_option_names for a in args):  # help on its way, at whatever level
            import_help_renderer()
        return super().parse_args(ctx, args)

    def format_help(self, ctx: _click.Context, formatter: _click.HelpFormatter) -> None:
        self._listing = True
        try:
            return super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def resolve_command(self, ctx: _click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except _click.exceptions.UsageError as e:
            # typer's "Did you mean" only knows the verbs built so far
            if getattr(self, "suggest_commands", True) and args and "Did you mean" not in e.message:
                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    e.message = f"{e.message.rstrip('.')}. Did you mean {', '.join(map(repr, matches))}?"
            raise


def add_source(app: typer.Typer, source: Callable[[set[str]], list[Verb]]) -> None:
    """Make `app` build its click group as a LazyGroup that also lists the verbs from `source`."""
    base = app.info.cls if isinstance(app.info.cls, type) and issubclass(app.info.cls, LazyGroup) else LazyGroup
    app.info.cls = type(base.__name__, (base,), {"sources": (*base.sources, source)})


# typer's help renderer (typer.rich_utils) imports rich.markdown (markdown-it, pygments) and rich.traceback at
# its top, ~65 ms of `kvl --help`, for markdown-mode help and pretty tracebacks: kvl uses neither (rich markup,
# pretty_exceptions_enable=False). These modules stand in for them while rich_utils is imported.
_HEAVY_HELP_MODULES = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


class _Deferred(type):
    """The metaclass of a stand-in class: any use (a call, an attribute, isinstance) imports the real class."""

    def _real(cls):
        import importlib

        return getattr(importlib.import_module(cls._module), cls.__name__)

    def __call__(cls, *args, **kwargs):
        return cls._real()(*args, **kwargs)

    def __getattr__(cls, name):
        return getattr(cls._real(), name)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._real())


def import_help_renderer() -> None:
    """Import typer.rich_utils without rich.markdown and rich.traceback (see above); they load on first use."""
    import sys
    import types

    if "typer.rich_utils" in sys.modules or any(name in sys.modules for name in _HEAVY_HELP_MODULES):
        return
    for name, cls in _HEAVY_HELP_MODULES.items():
        stub = types.ModuleType(name)
        setattr(stub, cls, _Deferred(cls, (), {"_module": name}))
        sys.modules[name] = stub
    try:
        import typer.rich_utils  # noqa: F401
    except ImportError:  # pragma: no cover -- typer without rich: plain help
        pass
    finally:
        for name in _HEAVY_HELP_MODULES:  # whoever imports them next gets the real modules
            if isinstance(sys.modules.get(name), types.ModuleType) and not hasattr(sys.modules[name], "__file__"):
                del sys.modules[name]


def cheap_help_flags() -> None:
    """A help option that was not given reaches typer's coercion as None, and coercing builds a pydantic adapter:
    importing pydantic (~50 ms) on every run and every `kvl VERB --help`, only to return None. A help flag is
    True or absent, so its coercion passes the value through (typer's own pass-through, exact for both)."""
    try:
        from typer._click.core import Command
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:  # pragma: no cover -- other typer versions: nothing to do
        return
    original = Command.get_help_option
    if getattr(original, "_kvl_cheap", False):
        return

    def get_help_option(self, ctx):
        opt = original(self, ctx)
        if opt is not None and getattr(opt, "_runtime_param", False) is None:
            opt._runtime_param = PassThroughRuntimeParam(parameter_info=opt.type_descriptor.parameter_info,
                                                         annotation=bool)
        return opt

    get_help_option._kvl_cheap = True
    Command.get_help_option = get_help_option
