"""`kvl eval`: the paper's benchmarks (report Tables 3-5), scored as their official tools score them (issue #8,
tasks.md §3).

    kvl eval BENCHMARK --data PATH [--images DIR] [--limit N] [--out DIR] [--resume] [--model M] [--batch-size B]
    kvl eval list

Benchmarks are plugins of the `kvl.benchmarks` entry-point group (base.py is the interface, benchmarks/ the
built-ins), loaded through kvl_cli.registry like any third-party plugin. This module is imported by
`kvl --help`: no torch, PIL or numpy here, and the registry is imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from kvl_cli.options import ApiKeyOpt, BackendOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelOpt

from kvl_core.errors import KvlError


class _EvalGroup(TyperGroup):
    """`kvl eval NAME ...` is `kvl eval run NAME ...`: benchmark names are plugins, not known when the CLI is
    built, so any first word that is not a subcommand is taken as a benchmark name."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


app = typer.Typer(
    cls=_EvalGroup, no_args_is_help=True,
    help="Run a benchmark of the Kimi-VL report and score it like its official tool: "
         "kvl eval BENCHMARK --data PATH (kvl eval list shows the benchmarks).",
)

BENCHMARKS = "kvl.benchmarks"


def installed_benchmarks() -> dict[str, Any]:
    """{name: Benchmark class} from the entry-point group (built-ins and third-party alike)."""
    from kvl_cli.registry import load_group

    return {n: b for n, b in load_group(BENCHMARKS).items() if isinstance(b, type) or callable(b)}


def get_benchmark(name: str, options: dict[str, Any]):
    found = installed_benchmarks()
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise KvlError(f"unknown benchmark '{name}' (known: {known}; see kvl eval list)")
    bench = found[name](**options)
    if not getattr(bench, "name", ""):
        bench.name = name
    return bench


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """`--set k=v` pairs; values are JSON where they parse (numbers, true/false), else strings."""
    import json

    out: dict[str, Any] = {}
    for s in sets:
        key, eq, value = s.partition("=")
        if not eq or not key.strip():
            raise KvlError(f"--set {s}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@app.command("list")
def list_benchmarks(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the installed benchmarks, their metric and the paper's number."""
    from kvl_cli.output import console, print_json

    rows = []
    for name, cls in sorted(installed_benchmarks().items()):
        paper = getattr(cls, "paper", None)
        rows.append({
            "name": name, "title": getattr(cls, "title", "") or name, "metric": getattr(cls, "metric", ""),
            "paper": None if paper is None else {"value": paper.value, "model": paper.model, "where": paper.where},
            "data": getattr(cls, "data_help", ""), "options": dict(getattr(cls, "options", {}) or {}),
        })
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    t = Table(title="kvl eval benchmarks", title_justify="left")
    for col in ("name", "benchmark", "metric", "paper"):
        t.add_column(col, overflow="fold")
    for r in rows:
        p = r["paper"]
        who = "" if p is None or p["model"] == "Kimi-VL-A3B-Instruct" else f" ({p['model'].replace('Kimi-VL-A3B-', '')})"
        t.add_row(r["name"], r["title"], r["metric"], "" if p is None else f"{p['value']:g}{who}")
    console.print(t)
    console.print("kvl eval list --json shows what --data each one reads and its --set options.", style="dim",
                  markup=False, highlight=False)


@app.command("run")
def run(
    benchmark: Annotated[str, typer.Argument(help="Benchmark name (kvl eval list).", show_default=False)],
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="The benchmark's data file or folder.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Folder the data's image paths are relative to.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Only the first N samples.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder (default: eval_runs/BENCHMARK).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out; scored samples are kept.")] = False,
    model: ModelOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Samples generated together (helps on a GPU).")] = 1,
    max_new_tokens: Annotated[Optional[int], typer.Option(min=1, help="Answer budget (default: the harness's for this benchmark).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy, as the reference harnesses run.")] = 0.0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Benchmark option KEY=VALUE (kvl eval list --json shows them).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json instead of the table.")] = False,
) -> None:
    """Run BENCHMARK on --data and score it; writes predictions.jsonl (as it goes) and summary.json to --out."""
    from kvl_cli.output import err_console, print_json, print_warning, progress
    from kvl_tasks.eval.runner import EvalOptions, load_engine, run_eval

    bench = get_benchmark(benchmark, parse_sets(set_ or []))
    if not benchmark.startswith("nano-"):  # the built-in model's own held-out sets are what it can be scored on
        from kvl_core.backend import resolve_backend
        from kvl_core.hub import require_skill

        if resolve_backend(backend, base_url) == "local":
            require_skill(model, "eval", f"kvl eval {benchmark}")
    out = out if out is not None else Path("eval_runs") / benchmark
    opts = EvalOptions(limit, batch_size, max_new_tokens, temperature, resume)
    if data is not None and not data.exists():
        raise KvlError(f"{data}: no such file or folder")
    if images is not None and not images.is_dir():
        raise KvlError(f"{images}: not a folder (--images names the folder the images are in)")
    with progress("sample") as bar:
        result = run_eval(bench, data, images, out, opts, lambda: load_engine(model, device, dtype, backend, base_url, api_key), bar,
                          print_warning)
    if as_json:
        print_json(result.summary)
    else:
        show(result, bench)
    if result.skipped:
        first = "; ".join(f"{s.id}: {s.reason}" for s in result.skipped[:3])
        more = f" (+{len(result.skipped) - 3} more)" if len(result.skipped) > 3 else ""
        print_warning(f"{len(result.skipped)} sample(s) skipped, listed in {out / 'summary.json'}: {first}{more}")
    rate = f", {result.new / result.generation_seconds:.2f} samples/s generating" \
        if result.new and result.generation_seconds else ""
    err_console.print(f"{len(result.records)} scored ({result.new} new, {result.resumed} resumed), "
                      f"{len(result.skipped)} skipped in {result.seconds:.1f} s{rate}; results in {out}",
                      markup=False, highlight=False, soft_wrap=True)


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if unit == "points" else f"{value:.1f}"


def show(result: Any, bench: Any) -> None:
    """The results table: overall (ours beside the paper's), then one section per breakdown."""
    from rich.table import Table

    from kvl_cli.output import console

    s = result.summary
    t = Table(title=f"{bench.title or bench.name}: {s['counts']['scored']} samples", title_justify="left")
    t.add_column("metric")
    t.add_column("n", justify="right")
    t.add_column("kvl", justify="right")
    t.add_column("paper", justify="right")
    paper = s["paper"]
    for name, value in s["metrics"].items():
        p = f"{paper['value']:g} ({paper['model']})" if paper and name == s["metric"] else ""
        label = f"[bold]{name}[/bold]" if name == s["metric"] else name
        unit = s["unit"] if name == s["metric"] else ""
        t.add_row(label, str(s["counts"]["scored"]) if name == s["metric"] else "", fmt(value, unit), p)
    for dim, cats in s["breakdowns"].items():
        t.add_section()
        for cat, v in cats.items():
            t.add_row(f"{dim}: {cat}", str(int(v["n"])), fmt(v["score"], s["unit"]), "")
    console.print(t)
    extra = {k: v for k, v in s["counts"].items() if k not in ("samples", "scored", "new", "resumed") and v}
    if extra:
        console.print("counts: " + ", ".join(f"{k} {v}" for k, v in extra.items()), markup=False, highlight=False)
    for note in s["notes"]:
        console.print(f"note: {note}", style="dim", markup=False, highlight=False)
