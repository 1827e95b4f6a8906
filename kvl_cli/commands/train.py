"""`kvl train --stage NAME`: any training stage of the paper, one process or under torchrun.

Thin on purpose: options become a `TrainConfig`; the loop is `kvl_core.training.trainer.train`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from kvl_cli.output import err_console, print_json

STAGES_HELP = "vit | align | pretrain | cooldown | longctx | sft | cot-sft | rl"
RL = "RL (--stage rl, docs/rl.md)"
RECIPE = "Recipes (--recipe, docs/nano.md)"


def train(
    stage: Annotated[Optional[str], typer.Option(help=f"Which stage of the paper: {STAGES_HELP}.", show_default=False)] = None,
    data: Annotated[Optional[list[str]], typer.Option("--data", help="JSONL file(s) as [TAG=]PATH[:WEIGHT]; tags name mixture groups (long= for longctx).", show_default=False)] = None,
    out: Annotated[Optional[str], typer.Option(help="Run folder: checkpoints step_*/, final/, metrics.jsonl, loss.png (--recipe: default runs/RECIPE).", show_default=False)] = None,
    recipe: Annotated[Optional[str], typer.Option(help="Run a whole multi-stage recipe on generated data instead: nano (the built-in kvl-nano) or smoke.", rich_help_panel=RECIPE, show_default=False)] = None,
    export: Annotated[Optional[str], typer.Option(help="Write the final model here as a shippable bf16 folder in the HF layout (also after a sharded FSDP run); must not exist yet.", show_default=False)] = None,
    scale: Annotated[float, typer.Option(help="With --recipe: multiply every stage's steps and the generated training data (e.g. 10 on a GPU).", rich_help_panel=RECIPE)] = 1.0,
    model: Annotated[Optional[str], typer.Option(help="Start from this checkpoint (the previous stage's final/).")] = None,
    preset: Annotated[Optional[str], typer.Option(help="Or start from a fresh model of this preset (tiny, ...).")] = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 100,
    lr: Annotated[Optional[float], typer.Option(help="Peak LR of the first phase (default: the recipe's).")] = None,
    seq_len: Annotated[Optional[int], typer.Option(help="Sequence length of the first phase (later phases keep their multiple).")] = None,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per optimizer step over all ranks (default 8 rows).")] = None,
    micro_rows: Annotated[int, typer.Option(help="Rows per forward pass (memory; the math does not change).")] = 1,
    checkpoint_activations: Annotated[Optional[bool], typer.Option("--checkpoint-activations/--no-checkpoint-activations", help="Recompute each layer in backward instead of storing its activations (default: on for stages of 32K tokens or more).", show_default=False)] = None,
    dist: Annotated[str, typer.Option("--dist", help="Under torchrun: fsdp (shard the LLM, FSDP2), zero1 (replicas + owner-sharded Muon states) or ddp (replicas). Default: fsdp when there is more than one process.")] = "auto",
    eval_data: Annotated[Optional[list[str]], typer.Option("--eval-data", help="Held-out JSONL for the eval loss.")] = None,
    eval_every: Annotated[int, typer.Option(help="Eval loss every N steps (0: at the end).")] = 0,
    save_every: Annotated[int, typer.Option(help="Checkpoint every N steps (0: at the end).")] = 0,
    keep: Annotated[int, typer.Option(help="Checkpoints to keep.")] = 2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest checkpoint in --out.")] = False,
    seed: Annotated[int, typer.Option(help="Data order, init and sampling seed.")] = 0,
    optimizer: Annotated[str, typer.Option(help="muon (Moonlight) or adamw.")] = "muon",
    ns_dtype: Annotated[str, typer.Option(help="Newton-Schulz precision: auto (bf16 where native), bfloat16, float32.")] = "auto",
    on_bad_line: Annotated[str, typer.Option(help="Malformed JSONL lines: stop or skip (counted).")] = "stop",
    overlong: Annotated[str, typer.Option(help="Samples longer than the context: truncate or drop (counted).")] = "truncate",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print the run summary as JSON.")] = False,
    iterations: Annotated[Optional[int], typer.Option(help="RL iterations (default: --steps).", rich_help_panel=RL)] = None,
    k: Annotated[int, typer.Option("--k", help="Samples per problem.", rich_help_panel=RL)] = 8,
    problems: Annotated[int, typer.Option(help="Problems per iteration.", rich_help_panel=RL)] = 8,
    tau: Annotated[float, typer.Option(help="Weight of the squared log-ratio regulariser.", rich_help_panel=RL)] = 0.1,
    max_new_tokens: Annotated[int, typer.Option(help="Rollout length limit.", rich_help_panel=RL)] = 512,
    temperature: Annotated[float, typer.Option(help="Sampling temperature of the rollouts.", rich_help_panel=RL)] = 1.0,
    thinking_budget: Annotated[Optional[int], typer.Option(help="Max tokens inside ◁think▷ per rollout.", rich_help_panel=RL)] = None,
    length_penalty: Annotated[bool, typer.Option("--length-penalty/--no-length-penalty", help="k1.5 length reward.", rich_help_panel=RL)] = True,
    length_warmup: Annotated[int, typer.Option(help="Iterations before the length reward starts.", rich_help_panel=RL)] = 0,
    length_weight: Annotated[Optional[float], typer.Option(help="Weight of the length reward (default: the reward config's, 1.0).", rich_help_panel=RL)] = None,
    curriculum: Annotated[bool, typer.Option("--curriculum/--no-curriculum", help="Easy to hard by 'difficulty'.", rich_help_panel=RL)] = True,
    prioritized: Annotated[bool, typer.Option("--prioritized/--no-prioritized", help="Sample problems by 1 - success rate.", rich_help_panel=RL)] = True,
    reward_config: Annotated[Optional[str], typer.Option(help="JSON reward config (checkers, options, length weight).", rich_help_panel=RL)] = None,
) -> None:
    """Train Kimi-VL with Muon: any stage of the paper, from a checkpoint or a fresh preset."""
    from kvl_core.errors import KvlError
    from kvl_core.training.trainer import TrainConfig, train as run_training

    if recipe is not None:
        summary = run_recipe(recipe, out or f"runs/{recipe}", seed=seed, resume=resume, device=device,
                             export=export, quiet=json_out, scale=scale)
        if json_out:
            print_json(summary)
        return
    if stage is None or not data or out is None:
        raise KvlError("say what to train: --stage NAME --data FILE.jsonl --out DIR, or --recipe NAME")

    if stage == "rl":
        from kvl_core.training.rl import RLConfig, train_rl

        rl = RLConfig(out=out, data=data, model=model, preset=preset, iterations=iterations or steps, k=k,
                      problems=problems, tau=tau, max_new_tokens=max_new_tokens, temperature=temperature,
                      thinking_budget=thinking_budget, length_penalty=length_penalty, length_warmup=length_warmup,
                      length_weight=length_weight, curriculum=curriculum, prioritized=prioritized,
                      reward_config=reward_config, optimizer=optimizer, ns_dtype=ns_dtype, seed=seed, resume=resume,
                      save_every=save_every, keep=keep, device=device, **({"lr": lr} if lr is not None else {}))
        with _Reporter(disable=json_out) as report:
            summary = train_rl(rl, on_event=report)
        if json_out:
            print_json(summary)
        return

    cfg = TrainConfig(stage=stage, out=out, data=data, eval_data=eval_data or [], model=model, preset=preset,
                      steps=steps, lr=lr, seq_len=seq_len, batch_tokens=batch_tokens, micro_rows=micro_rows,
                      seed=seed, resume=resume, save_every=save_every, keep=keep, eval_every=eval_every,
                      optimizer=optimizer, ns_dtype=ns_dtype, data_policy=on_bad_line, overlong=overlong,
                      device=device, checkpoint_activations=checkpoint_activations, dist=dist)
    quiet = int(os.environ.get("RANK", "0")) != 0
    if export and Path(export).exists() and any(Path(export).iterdir()):
        # checked before training, so hours of training never end in a refusal
        raise KvlError(f"{export}: --export folder exists and is not empty; choose a new folder")
    with _Reporter(disable=quiet or json_out) as report:
        summary = run_training(cfg, on_event=report)
    if export and not quiet and summary.get("final"):
        from kvl_core.training import recipes

        recipes.export(summary["final"], export, extra={"stage": stage, "steps": summary["steps"],
                                                         "loss": summary.get("loss")})
        summary["export"] = export
        if not json_out:
            err_console.print(f"[green]exported[/]: {export}")
    if json_out and not quiet:
        print_json(summary)


def run_recipe(name: str, out: str, seed: int = 0, resume: bool = False, device: str = "auto",
               export: str | None = None, quiet: bool = False, scale: float = 1.0) -> dict:
    """Every stage of a recipe, then its held-out evaluation (`kvl eval nano-ocr / nano-ground`), then
    optionally the export of the final model with its metrics."""
    import json
    from pathlib import Path

    from kvl_core.training import recipes

    rec = recipes.recipe(name, scale)
    with _Reporter(disable=quiet) as report:
        summary = recipes.run(rec, out, seed=seed, resume=resume, device=device, on_event=report)
    summary["eval"] = evaluate_heldout(summary, Path(out) / "eval", device=device, quiet=quiet)
    (Path(out) / "recipe.json").write_text(json.dumps(summary, indent=1) + "\n")
    recipes.plot_recipe(Path(out))
    if export:
        recipes.export(summary["final"], export, extra={"recipe": name, "scale": scale, "seed": seed, "eval": summary["eval"],
                                                        "stages": summary["stages"], "skills": list(rec.skills)})
        if not quiet:
            err_console.print(f"[green]exported[/]: {export}")
    return summary


def evaluate_heldout(summary: dict, out, device: str = "auto", quiet: bool = False) -> dict:
    """Score the final model on the recipe's held-out sets with the kvl eval benchmarks of the same kind."""
    import shutil
    from pathlib import Path

    from kvl_cli.output import print_warning, progress
    from kvl_core.errors import KvlError
    from kvl_tasks.eval import get_benchmark
    from kvl_tasks.eval.runner import EvalOptions, load_engine, run_eval

    dev = "cuda" if device == "auto" and _cuda() else ("cpu" if device == "auto" else device)
    engine = None

    def factory():
        nonlocal engine
        engine = engine or load_engine(summary["final"], dev, None)
        return engine

    results = {}
    for kind, data in summary.get("heldout", {}).items():
        bench = get_benchmark(f"nano-{kind}", {})
        shutil.rmtree(Path(out) / kind, ignore_errors=True)  # always score the model as it is now
        try:
            with progress("sample", disable=quiet) as bar:
                r = run_eval(bench, Path(data), None, Path(out) / kind, EvalOptions(batch_size=16), factory, bar,
                             print_warning)
        except KvlError as e:  # e.g. the smoke recipe's 512-token tiny model cannot hold the GUI prompt
            results[kind] = {"error": str(e)}
            print_warning(f"held-out {kind}: {e}")
            continue
        results[kind] = {"metrics": r.summary.get("metrics"), "samples": r.samples}
        if not quiet:
            err_console.print(f"[bold]held-out {kind}[/]: " + ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in (r.summary.get("metrics") or {}).items()))
    return results


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class _Reporter:
    """Turns trainer events into a rich progress bar (loss, lr, tokens/s, ETA) on stderr."""

    def __init__(self, disable: bool):
        from kvl_cli.output import progress

        self.disable = disable
        self.progress = progress("step", disable=disable)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)
        return False

    def __call__(self, kind: str, info: dict) -> None:
        if self.disable:
            return
        if kind == "start":
            frozen = f" (frozen: {', '.join(info['frozen'])})" if info["frozen"] else ""
            err_console.print(f"[bold]kvl train[/] stage {info['stage']}, {info['world']} process(es){frozen}")
            self.task = self.progress.add_task(info["stage"], total=info["steps"], completed=info["step"])
        elif kind == "step" and self.task is not None and "accuracy" in info:
            self.progress.update(self.task, completed=info["step"],
                                 description=f"acc {info['accuracy']:.2f} reward {info['reward']:+.3f} "
                                             f"len {info['length']:.0f} kl {info['kl']:.3f}")
        elif kind == "step" and self.task is not None:
            ev = f" eval {info['eval_loss']:.3f}" if info.get("eval_loss") is not None else ""
            self.progress.update(self.task, completed=info["step"],
                                 description=f"loss {info['loss']:.4f}{ev} lr {info['lr']:.2e} {info['tok_s']:.0f} tok/s")
        elif kind in ("note", "phase", "save"):
            text = info.get("text") or ", ".join(f"{k} {v}" for k, v in info.items())
            self.progress.console.print(f"[dim]{kind}: {text}[/]")
        elif kind == "end":
            result = f"accuracy {info['accuracy']:.3f}" if "accuracy" in info else f"loss {info.get('loss')}"
            self.progress.console.print(f"[green]done[/]: {info['final']} ({result})")
            counts = {k: v for k, v in info.get("data", {}).items() if k in ("truncated", "dropped", "skipped", "read_skipped") and v}
            if counts:
                self.progress.console.print("[yellow]data:[/] " + ", ".join(f"{v} samples {k.replace('_', ' ')}" for k, v in counts.items()))
