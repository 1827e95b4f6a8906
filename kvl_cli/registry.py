"""Entry-point plugins: the only module that calls `importlib.metadata.entry_points`.

Groups: `kvl.tasks` (CLI verbs), later `kvl.benchmarks` and `kvl.executors`. kvl's own built-ins are
declared in our pyproject under the same groups and load through the same path as third-party plugins;
they are told apart only by their distribution being `kvl`, which is what `KVL_DISABLE_PLUGINS=1`
keeps. `kvl` itself loads task verbs lazily (`add_lazy_tasks`, kvl_cli/lazy.py): a run imports the verb it
runs, and `kvl --help` lists kvl's own verbs from their summaries but loads every third-party plugin (it has
no other way to learn their help, and that is where a broken plugin is reported). Loading imports the
plugin's module, so plugin modules must import heavy libraries (torch, decord, pymupdf, pyautogui, ...)
inside their functions.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import typer

from kvl_cli.lazy import SUMMARIES, LazyGroup, Verb, add_source
from kvl_cli.output import err_console, print_warning

BUILTIN_DIST = "kvl"
TASKS = "kvl.tasks"

# One warning per problem per process, however often a group is loaded.
_warned: set[str] = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        print_warning(msg)


def env_flag(name: str) -> bool:
    """An on/off environment switch (KVL_DEBUG, KVL_DISABLE_PLUGINS): unset, empty, 0, false, no are off."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def plugins_disabled() -> bool:
    return env_flag("KVL_DISABLE_PLUGINS")


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    name = dist.metadata["Name"] if dist is not None else None
    return (name or "?").lower().replace("_", "-")


def is_builtin(ep: EntryPoint) -> bool:
    return _dist_name(ep) == BUILTIN_DIST


def iter_group(group: str) -> list[EntryPoint]:
    """Entry points of `group` without loading them: built-ins first, then plugins by name.

    That order is what lets a built-in win a name clash. Plugins are dropped under KVL_DISABLE_PLUGINS.
    """
    eps = list(entry_points(group=group))
    builtins = [ep for ep in eps if is_builtin(ep)]
    if plugins_disabled():
        return builtins
    return builtins + sorted((ep for ep in eps if not is_builtin(ep)), key=lambda ep: (ep.name, _dist_name(ep)))


def load_group(group: str, reserved: Iterable[str] = ()) -> dict[str, Any]:
    """Load every entry point of `group` into {name: object}.

    A plugin that fails to import, or whose name is in `reserved` (static verbs) or already taken,
    is skipped with one dim warning line: one bad plugin must never take the whole CLI down.
    """
    taken = set(reserved)
    loaded: dict[str, Any] = {}
    for ep in iter_group(group):
        origin = f"plugin '{ep.name}' ({_dist_name(ep)}, {ep.value})"
        if ep.name in taken or ep.name in loaded:
            _warn_once(f"{origin} ignored: the name '{ep.name}' is already a kvl verb")
            continue
        try:
            loaded[ep.name] = ep.load()
        except Exception as e:  # noqa: BLE001 -- any failure inside third-party code
            _warn_once(f"{origin} failed to load and was skipped: {type(e).__name__}: {e}")
            if env_flag("KVL_DEBUG"):
                err_console.print(traceback.format_exc(), markup=False, highlight=False, style="dim")
    return loaded


def _command_names(app: typer.Typer) -> set[str]:
    names = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands if c.callback}
    names |= {g.name or g.typer_instance.info.name for g in app.registered_groups}
    cls = app.info.cls
    if isinstance(cls, type) and issubclass(cls, LazyGroup):  # the lazy verbs app already has (static ones)
        taken: set[str] = set()
        for source in cls.sources:
            taken |= {v.name for v in source(names | taken)}
        names |= taken
    return {n for n in names if isinstance(n, str)}


def task_verbs(taken: set[str]) -> list[Verb]:
    """`kvl.tasks` entry points as verbs, none of them loaded: the first of each name (built-ins first, see
    iter_group), none that `taken` (static verbs) already has. A clash warns here, on every run, as loading
    everything used to; a plugin that fails to load warns when it is loaded."""
    verbs: dict[str, Verb] = {}
    for ep in iter_group(TASKS):
        if ep.name in taken or ep.name in verbs:
            _warn_once(f"plugin '{ep.name}' ({_dist_name(ep)}, {ep.value}) ignored: the name '{ep.name}' is "
                       f"already a kvl verb")
            continue
        summary = SUMMARIES.get(ep.value) if is_builtin(ep) else None
        verbs[ep.name] = Verb(ep.name, ep.value, ep.load, summary, on_error=_load_failed(ep))
    return list(verbs.values())


def _load_failed(ep: EntryPoint):
    def report(name: str, e: BaseException, stage: str) -> None:
        if stage == "load":
            _warn_once(f"plugin '{name}' ({_dist_name(ep)}, {ep.value}) failed to load and was skipped: "
                       f"{type(e).__name__}: {e}")
        else:
            _warn_once(f"plugin '{name}' skipped: its command cannot be built ({type(e).__name__}: {e})")
        if env_flag("KVL_DEBUG"):
            err_console.print(traceback.format_exc(), markup=False, highlight=False, style="dim")

    return report


def add_lazy_tasks(app: typer.Typer) -> None:
    """List every `kvl.tasks` entry point among `app`'s verbs, each loaded only when it runs (kvl_cli/lazy.py)."""
    add_source(app, task_verbs)


def add_tasks(app: typer.Typer) -> None:
    """Add every `kvl.tasks` entry point to `app` now: a Typer becomes a group, a function a command.

    For a caller that wants the whole typer tree at once; `kvl` itself uses add_lazy_tasks."""
    for name, obj in load_group(TASKS, reserved=_command_names(app)).items():
        if not isinstance(obj, typer.Typer) and not callable(obj):
            _warn_once(f"plugin '{name}' skipped: expected a typer.Typer or a function, got {type(obj).__name__}")
            continue
        try:
            # typer builds commands lazily, so a signature it cannot handle would only fail when the
            # whole CLI runs; build this plugin alone first so that one bad plugin cannot break kvl.
            probe = typer.Typer()
            _attach(probe, name, obj)
            typer.main.get_command(probe)
        except Exception as e:  # noqa: BLE001 -- any failure here is the plugin's, not ours
            _warn_once(f"plugin '{name}' skipped: its command cannot be built ({type(e).__name__}: {e})")
            continue
        _attach(app, name, obj)


def _attach(app: typer.Typer, name: str, obj) -> None:
    if isinstance(obj, typer.Typer):
        app.add_typer(obj, name=name)
    else:
        app.command(name)(obj)
