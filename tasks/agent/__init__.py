"""`kvl agent`: Kimi-VL as an OS agent on a real desktop (paper §4.1.5, Figure 10; tasks.md §1.3, §1.4, §2.3, §5).

`kvl agent "INSTRUCTION"` runs the screenshot -> model -> action loop (loop.py) with the real mouse and keyboard;
`kvl agent ground SCREENSHOT "TARGET"` is single-step grounding (ground.py). The group takes a positional
instruction *and* has a subcommand, which click cannot tell apart on its own: AgentGroup routes by the
first word. Nothing heavy is imported at module level (`kvl --help` loads this module on machines without
a display): mss, pyautogui, PIL and torch are imported inside the commands.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from kvl_cli.options import ApiKeyOpt, BackendOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelOpt


class AgentGroup(TyperGroup):
    """`kvl agent WORD ...`: WORD names a subcommand when it is one, otherwise it is the instruction."""

    def parse_args(self, ctx, args):
        if not args:
            return super().parse_args(ctx, args)  # no_args_is_help
        if args[0] in self.commands:
            # The group's own options take their defaults; the rest belongs to the subcommand.
            saved, self.no_args_is_help = self.no_args_is_help, False
            try:
                super(TyperGroup, self).parse_args(ctx, [])
            finally:
                self.no_args_is_help = saved
            ctx._protected_args, ctx.args = args[:1], args[1:]
            ctx.meta["kvl_agent_subcommand"] = True
            return ctx.args
        # The instruction: options may come before or after it, as for any command.
        ctx.allow_interspersed_args = True
        rest = super(TyperGroup, self).parse_args(ctx, args)
        if rest:
            ctx.fail(f"unexpected extra argument {rest[0]!r} (quote the instruction: kvl agent \"...\")")
        return []

    def get_params(self, ctx):
        params = super().get_params(ctx)
        if ctx.meta.get("kvl_agent_subcommand"):  # `kvl agent ground --help` should not show [INSTRUCTION]
            params = [p for p in params if p.name != "instruction"]
        return params


app = typer.Typer(
    name="agent", cls=AgentGroup, invoke_without_command=True, no_args_is_help=True,
    subcommand_metavar="| ground SCREENSHOT TARGET", rich_markup_mode="rich", add_completion=False,
    help="GUI agent: operate the desktop from a screenshot each step, or ground one target on a screenshot.",
)

EXAMPLES = """
[bold]Examples[/bold]
  kvl agent "Enable Do Not Track in Chrome" --dry-run      [dim]# show what it would do, touch nothing[/dim]
  kvl agent "Turn on the dark theme" --confirm             [dim]# ask before every action[/dim]
  xvfb-run -s "-screen 0 1280x800x24" kvl agent "..."      [dim]# a virtual display[/dim]
  kvl agent "Fill in the form" --allow click,type --trajectory runs/form
  kvl agent ground shot.png "the Save button" --box 40,10,120,40

[bold]Exit codes[/bold] 0 done, 1 error, 3 the model gave up (FAIL), 4 step limit, 5 stuck, 6 unusable answers,
130 Ctrl-C, fail-safe or [bold]q[/bold] at a confirmation.
"""

ALLOW_GROUPS = {"mouse": ("click", "doubleclick", "rightclick", "move", "drag", "scroll"),
                "keyboard": ("type", "press", "hotkey")}


def load_engine(model: Optional[str], device: str, dtype: Optional[str], backend: Optional[str] = None,
                base_url: Optional[str] = None, api_key: Optional[str] = None):
    """The one place the agent loads a model: this machine, or an OpenAI-compatible server."""
    from kvl_core.backend import load_engine as load

    return load(model, backend, base_url, api_key, device=device, dtype=dtype)


def parse_allow(value: Optional[str]) -> frozenset[str]:
    from kvl_core.errors import KvlError

    from .actions import KINDS

    if value is None or value.strip().lower() == "all":
        return frozenset(KINDS)
    kinds: set[str] = set()
    for word in (w.strip().lower().replace("_", "").replace("-", "") for w in value.split(",")):
        if not word:
            continue
        word = {"write": "type", "typewrite": "type", "moveto": "move", "dragto": "drag"}.get(word, word)
        if word in ALLOW_GROUPS:
            kinds.update(ALLOW_GROUPS[word])
        elif word in KINDS:
            kinds.add(word)
        else:
            raise KvlError(f"--allow: unknown action kind {word!r} (choose from {', '.join(KINDS)}, mouse, "
                           "keyboard, all)")
    if not kinds:
        raise KvlError("--allow: no action kinds given")
    return frozenset(kinds)


class ConsoleUI:
    """Step lines on stderr, confirmation prompts on the terminal."""

    def __init__(self, quiet: bool, log_typed_text: bool):
        from kvl_cli.output import err_console

        self.console = err_console
        self.quiet = quiet
        self.log_typed_text = log_typed_text
        self._status = None

    def thinking(self, step, config):
        if not self.quiet:
            self.console.print(f"[dim]step {step}/{config.max_steps}: thinking ...[/dim]", highlight=False)

    def step(self, rec, config):
        if self.quiet:
            return
        from rich.markup import escape

        style = {"executed": "green", "dry-run": "cyan", "done": "bold green", "fail": "red",
                 "rejected": "yellow", "not-allowed": "yellow", "declined": "yellow", "stuck": "red"}
        what = "; ".join(f"{a.code()}" + (f" -> ({p[0]}, {p[1]}) px" if p else "")
                         for a, p in zip(rec.actions, rec.pixels)) or rec.status
        secs = sum(rec.timings.values())
        self.console.print(f"[{style.get(rec.status, 'white')}]{rec.status:>11}[/] step {rec.step}: "
                           f"{escape(what)} [dim]({secs:.1f} s)[/dim]", highlight=False, soft_wrap=True)
        if rec.thought:
            self.console.print(f"             [dim]{escape(rec.thought)}[/dim]", highlight=False, soft_wrap=True)
        if rec.error:
            self.console.print(f"             [yellow]{escape(rec.error)}[/yellow]", highlight=False, soft_wrap=True)

    def confirm(self, action, pixels) -> str:
        where = f" at ({pixels[0]}, {pixels[1]}) px" if pixels else ""
        while True:
            self.console.print(f"run {action.code()}{where}? [bold][y]es / [n]o, skip / [q]uit[/bold] ",
                               end="", highlight=False, markup=True)
            try:
                line = input()
            except EOFError:
                return "q"
            answer = line.strip().lower()[:1]
            if answer in ("y", "n", "q"):
                return answer

    def typing(self, text):
        if not self.quiet:
            self.console.print(f"             typing {len(text)} characters: {text!r}", highlight=False,
                               markup=False, soft_wrap=True)


@app.callback(epilog=EXAMPLES)
def agent(
    ctx: typer.Context,
    instruction: Annotated[Optional[str], typer.Argument(metavar="INSTRUCTION", show_default=False, help="What to do, in plain words (quote it).")] = None,
    max_steps: Annotated[int, typer.Option(min=1, max=500, help="Stop after this many model calls.")] = 15,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Capture and ask the model, but execute nothing: show and record what would happen.")] = False,
    confirm: Annotated[bool, typer.Option("--confirm", help="Ask before every action (y: run it, n: skip it and tell the model, q: stop).")] = False,
    monitor: Annotated[int, typer.Option(min=0, help="Monitor to capture and act on (1 = first; 0 = all monitors as one image).")] = 1,
    history: Annotated[int, typer.Option(min=1, max=8, help="Screenshots shown to the model per step, the current one included (earlier steps are always given as text).")] = 3,
    trajectory: Annotated[Optional[Path], typer.Option(help="Folder for the trajectory (screenshots, traj.jsonl, summary.json, report.html). Default: ./kvl-agent-runs/<time>.", show_default=False)] = None,
    allow: Annotated[Optional[str], typer.Option(help="Action kinds the agent may use, comma-separated: click, doubleclick, rightclick, move, drag, scroll, type, press, hotkey, or the groups mouse, keyboard (default: all).", show_default=False)] = None,
    log_typed_text: Annotated[bool, typer.Option("--log-typed-text", help="Write typed text into the trajectory (default: only its length, since it may be a secret).")] = False,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer budget per step (default: the checkpoint's).", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Sampling temperature (default: the checkpoint's; 0 = greedy).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.", show_default=False)] = None,
    settle: Annotated[float, typer.Option(min=0.0, max=30.0, help="Seconds to let the screen react after an action before the next screenshot.")] = 0.5,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's summary as JSON on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No step lines.")] = False,
) -> None:
    """Carry out INSTRUCTION on the desktop: each step the model sees the screen and answers with one action."""
    if ctx.invoked_subcommand is not None:
        return
    from kvl_core.errors import KvlError

    if instruction is None or not instruction.strip():
        raise KvlError("the instruction is empty: say what the agent should do, e.g. kvl agent \"Open Settings\"")
    allowed = parse_allow(allow)
    folder = trajectory or Path("kvl-agent-runs") / time.strftime("%Y%m%d-%H%M%S")
    result = run_command(instruction.strip(), folder, model=model, backend=backend, base_url=base_url,
                         api_key=api_key, device=device, dtype=dtype, max_steps=max_steps,
                         dry_run=dry_run, confirm=confirm, monitor=monitor, history=history, allow=allowed,
                         log_typed_text=log_typed_text, settle=settle, quiet=quiet,
                         sampling={k: v for k, v in {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                                     "seed": seed}.items() if v is not None})
    if json_out:
        from kvl_cli.output import print_json

        print_json(result)
    code = result["exit_code"]
    if code:
        raise typer.Exit(code)


def run_command(instruction: str, folder: Path, *, model, device, dtype, max_steps, dry_run, confirm, monitor,
                history, allow, log_typed_text, settle, quiet, sampling, backend=None, base_url=None,
                api_key=None) -> dict:
    """Open the trajectory, the screen and the model, run the loop; the trajectory records failures too."""
    from kvl_cli.output import err_console
    from kvl_core.errors import KvlError

    from kvl_core.backend import resolve_backend
    from kvl_core.hub import require_skill

    from .loop import AgentConfig, run_agent
    from .trajectory import Trajectory

    if resolve_backend(backend, base_url) == "local":  # before a trajectory folder or the screen is touched
        require_skill(model, "agent", 'kvl agent "INSTRUCTION"')
    traj = Trajectory(folder, log_typed_text=log_typed_text)
    config = AgentConfig(instruction, max_steps=max_steps, history=history, dry_run=dry_run, confirm=confirm,
                         allow=allow, settle=settle, sampling=sampling)
    summary = {"instruction": instruction, "model": model, "status": "error", "exit_code": 1, "message": "",
               "dry_run": dry_run, "monitor": monitor, "trajectory": str(folder),
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "options": {"max_steps": max_steps, "history": history, "allow": sorted(allow), "confirm": confirm}}
    screen = None
    try:
        from .screen import Executor, Screen

        screen = Screen(monitor)
        summary["screen"] = screen.monitor.describe()
        executor = None if dry_run else Executor(screen)
        if not quiet:
            err_console.print("[dim]loading the model ...[/dim]", highlight=False)
        engine = load_engine(model, device, dtype, backend, base_url, api_key)
        summary["model"] = getattr(engine, "name", model)
        if not quiet:
            mode = "dry run: nothing will be executed" if dry_run else (
                "live: the agent moves the mouse and types; move the mouse into a screen corner to abort")
            err_console.print(f"[bold]{mode}[/bold] [dim](monitor {screen.monitor.describe()})[/dim]",
                              highlight=False)
        ui = ConsoleUI(quiet, log_typed_text)
        result = run_agent(engine, screen, executor, traj, config, ui)
        summary.update(status=result.status, exit_code=result.exit_code, message=result.message)
    except KvlError as e:
        summary["message"] = str(e)
        raise
    except KeyboardInterrupt:  # while loading, before the loop could catch it
        summary.update(status="interrupted", exit_code=130, message="interrupted (Ctrl-C)")
    except Exception as e:
        summary["message"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        summary["steps"] = len(traj.records)
        traj.finish(summary)
        if screen is not None:
            screen.close()
    if not quiet:
        colour = "green" if summary["exit_code"] == 0 else "yellow"
        err_console.print(f"[{colour}]{summary['message']}[/] after {summary['steps']} step"
                          f"{'s' * (summary['steps'] != 1)}; report: {folder / 'report.html'}", highlight=False)
    return summary


@app.command("ground", epilog="Point-in-box scoring as in ScreenSpot: pass the target's box with --box.")
def ground_command(
    screenshot: Annotated[Path, typer.Argument(metavar="SCREENSHOT", help="The screenshot (PNG, JPEG, ...).", show_default=False)],
    target: Annotated[str, typer.Argument(metavar="TARGET", help="What to find, e.g. \"the Save button\".", show_default=False)],
    box: Annotated[Optional[str], typer.Option(help="The target's box as x1,y1,x2,y2 in pixels: also report whether the point hits it.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the screenshot with the point marked to this image file.", show_default=False)] = None,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer budget (default: the checkpoint's).", show_default=False)] = None,
    temperature: Annotated[Optional[float], typer.Option(min=0.0, help="Sampling temperature (default: the checkpoint's).", show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.", show_default=False)] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Print where TARGET is on SCREENSHOT: the model's click point, normalised (0-1) and in pixels."""
    from kvl_cli.output import console, print_json
    from kvl_core.errors import KvlError, read_user_file

    if not target.strip():
        raise KvlError("the target is empty: say what to find, e.g. \"the Save button\"")
    the_box = _parse_box(box) if box is not None else None
    data = read_user_file(screenshot, what="an image")  # before torch is imported: bad paths fail fast

    from kvl_core.backend import resolve_backend
    from kvl_core.hub import require_skill
    from kvl_core.processor.image import load_image

    from .ground import ground, point_in_box

    image = load_image(data, name=str(screenshot))
    if resolve_backend(backend, base_url) == "local":  # the built-in model was not taught grounding
        require_skill(model, "ground", "kvl agent ground")
    engine = load_engine(model, device, dtype, backend, base_url, api_key)
    sampling = {k: v for k, v in {"max_new_tokens": max_new_tokens, "temperature": temperature,
                                  "seed": seed}.items() if v is not None}
    g = ground(engine, image, target.strip(), **sampling)
    d = g.to_dict()
    if the_box is not None:
        d["box"] = list(the_box)
        d["hit"] = point_in_box(g.point, the_box, image.size)
    if out is not None and g.pixels is not None:
        from .actions import Action
        from .trajectory import annotate

        try:
            annotate(image, [Action("click", *g.point)], [g.pixels], f"{target}").save(out)
        except (OSError, ValueError) as e:
            raise KvlError(f"{out}: cannot write the image ({e})") from None
    if json_out:
        print_json(d)
    elif g.point is None:
        pass
    else:
        line = (f"x={g.point[0]:.4f} y={g.point[1]:.4f}  ({g.pixels[0]}, {g.pixels[1]}) px "
                f"of {image.size[0]}x{image.size[1]}")
        if the_box is not None:
            line += "  hit" if d["hit"] else "  miss"
        console.print(line, highlight=False, markup=False)
    if g.point is None:
        short = " ".join(g.answer.split())[:160]
        raise KvlError(f"{screenshot}: the model's answer holds no point ({short!r})")


def _parse_box(text: str) -> tuple[float, float, float, float]:
    from kvl_core.errors import KvlError

    try:
        vals = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        vals = ()
    if len(vals) != 4 or vals[2] <= vals[0] or vals[3] <= vals[1] or min(vals) < 0:
        raise KvlError(f"--box {text!r}: expected x1,y1,x2,y2 in pixels with x2 > x1 and y2 > y1")
    return vals  # type: ignore[return-value]
