"""`kvl chat`: one-shot when a prompt is given, an interactive multi-turn session otherwise.

Thin on purpose: options are parsed here, the work is `kvl_core.engine.Engine.chat`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from kvl_cli.options import ApiKeyOpt, BackendOpt, BaseUrlOpt, DeviceOpt, DtypeOpt, ModelOpt
from kvl_cli.output import console, err_console, print_error, print_json
from kvl_core.errors import KvlError


def chat(
    prompt: Annotated[Optional[str], typer.Argument(help="Ask once and exit; omit for an interactive session.")] = None,
    image: Annotated[Optional[list[Path]], typer.Option("--image", "-i", help="Image file(s) to show the model; repeatable.")] = None,
    model: ModelOpt = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt (default: the model's own).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Answer budget in tokens (default: the checkpoint's).")] = None,
    temperature: Annotated[Optional[float], typer.Option(help="0 = greedy (default: the checkpoint's recommendation).")] = None,
    top_p: Annotated[Optional[float], typer.Option(help="Nucleus sampling mass.")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample among the k most likely tokens (0 = off).")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option(help="> 1 discourages repeats.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,
    thinking_budget: Annotated[Optional[int], typer.Option(help="Thinking models: cap reasoning tokens, then make it answer.")] = None,
    show_thinking: Annotated[bool, typer.Option("--show-thinking", help="Print a thinking model's reasoning too.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print answer, reasoning, token counts and timings as JSON.")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    backend: BackendOpt = None,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
) -> None:
    """Talk to the model: text, images, multi-turn."""
    from kvl_core.backend import load_engine

    engine = load_engine(model, backend, base_url, api_key, device=device, dtype=dtype, skill="chat", verb="kvl chat")
    options = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                   repetition_penalty=repetition_penalty, seed=seed, thinking_budget=thinking_budget)
    history = [{"role": "system", "content": system}] if system else []
    images = [str(p) for p in image or []]
    if prompt is not None:
        history.append(user_turn(prompt, images))
        if json_out:
            print_json({"model": engine.name, **engine.chat(history, **options).to_dict()})
        else:
            stream_answer(engine, history, options, show_thinking)
        return
    repl(engine, history, images, options, show_thinking, json_out)


def user_turn(text: str, images: list[str]) -> dict:
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*({"type": "image", "image": p} for p in images), {"type": "text", "text": text}]}


def stream_answer(engine, history: list, options: dict, show_thinking: bool):
    """Print the reply as it is generated. A thinking model's reasoning is hidden (or, with
    --show-thinking, streamed dimmed to stderr) and its answer streams once the think block closes."""
    view = _ThinkingView(show_thinking)
    result = engine.chat(history, on_text=view.feed, **options)
    view.finish(result)
    sys.stdout.write("\n")
    if result.truncated:
        err_console.print("[yellow]the reasoning was cut off before an answer (raise --max-new-tokens)[/]")
    elif result.finish_reason == "length":
        err_console.print("[dim]stopped at --max-new-tokens[/]")
    return result


class _ThinkingView:
    def __init__(self, show_thinking: bool):
        from kvl_core.processor.chat import THINK_CLOSE, THINK_OPEN

        self.open, self.close = THINK_OPEN, THINK_CLOSE
        self.show = show_thinking
        self.text = ""
        self.state = "undecided"  # -> "answer" | "thinking"
        self.printed = 0  # characters of self.text already shown (answer or reasoning)

    def feed(self, delta: str) -> None:
        self.text += delta
        head = self.text.lstrip()
        if self.state == "undecided":
            if head.startswith(self.open):
                self.state, self.printed = "thinking", len(self.text) - len(head) + len(self.open)
            elif not self.open.startswith(head):
                self.state = "answer"
            else:
                return
        if self.state == "thinking":
            end = self.text.find(self.close, self.printed)
            upto = end if end >= 0 else max(self.printed, len(self.text) - len(self.close))
            if self.show and upto > self.printed:
                err_console.print(self.text[self.printed:upto], style="dim", end="", markup=False, highlight=False)
            self.printed = upto
            if end < 0:
                return
            self.state, self.printed = "answer", end + len(self.close)
            if self.show:
                err_console.print()
            rest = self.text[self.printed:].lstrip()
            self.printed = len(self.text) - len(rest)
        sys.stdout.write(self.text[self.printed:])
        sys.stdout.flush()
        self.printed = len(self.text)

    def finish(self, result) -> None:
        if self.state == "undecided":  # a reply shorter than the marker
            sys.stdout.write(result.answer)


def repl(engine, history: list, images: list[str], options: dict, show_thinking: bool, json_out: bool) -> None:
    interactive = sys.stdin.isatty()
    if interactive:
        console.print(f"[bold]kvl chat[/] with {engine.name} — /image PATH attaches an image, /clear forgets, /exit quits")
    pending_images = list(images)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/clear":
            history[:] = [m for m in history if m["role"] == "system"]
            pending_images.clear()
            continue
        if line.startswith("/image "):
            pending_images.append(line.split(" ", 1)[1].strip())
            continue
        history.append(user_turn(line, pending_images))
        pending_images = []
        try:
            if json_out:
                result = engine.chat(history, **options)
                print_json(result.to_dict())
            else:
                result = stream_answer(engine, history, options, show_thinking)
        except KvlError as e:  # e.g. an unreadable image: report it, drop the turn, keep the session
            print_error(str(e))
            history.pop()
            continue
        # Only the answer goes back into the context, as the model card advises for thinking models.
        history.append({"role": "assistant", "content": result.answer})
