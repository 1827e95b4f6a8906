"""A scripted engine and a fake screen for the agent tests, and the small Tk app the desktop tests drive.

The scripted engine has the methods the agent uses on kvl_core.engine.Engine (`chat`, `chat_batch`,
returning ChatResult, thinking split off the same way), so the loop, the parser and the executor run for
real while the answers are pinned down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from kvl_core.prompts import gui_answer


def reply(text: str):
    from kvl_core.engine import ChatResult
    from kvl_core.processor.chat import split_thinking

    reasoning, answer, truncated = split_thinking(text)
    return ChatResult(text=text, answer=answer, reasoning=reasoning, truncated=truncated, finish_reason="stop",
                      prompt_tokens=0, completion_tokens=len(text.split()), thinking_tokens=0,
                      prefill_seconds=0.0, decode_seconds=0.0)


class ScriptedEngine:
    """Answers step k with script[k] (the last entry repeats), or with script(messages, step)."""

    name = "scripted"

    def __init__(self, script: Sequence[str] | Callable[[list, int], str], processor=None):
        self.script = script
        self.processor = processor  # when given, every prompt is also rendered and encoded for real
        self.calls: list[tuple[list, dict]] = []

    def chat_batch(self, conversations, on_text=None, **options):
        out = []
        for messages in conversations:
            self.calls.append((messages, options))
            if self.processor is not None:
                self.processor(messages)
            k = len(self.calls) - 1
            text = self.script(messages, k) if callable(self.script) else self.script[min(k, len(self.script) - 1)]
            out.append(reply(text))
        return out

    def chat(self, messages, on_text=None, **options):
        return self.chat_batch([messages], on_text=on_text, **options)[0]


def click(x: float, y: float, what: str = "Click it.") -> str:
    return gui_answer(what, f"pyautogui.click(x={x:.4f}, y={y:.4f})")


def user_text(messages) -> str:
    return "\n".join(p["text"] for p in messages[-1]["content"] if p.get("type") == "text")


def user_images(messages) -> list:
    return [p["image"] for p in messages[-1]["content"] if p.get("type") == "image"]


@dataclass
class FakeShot:
    image: object
    monitor: object
    seconds: float = 0.0


class FakeScreen:
    """A Screen without a display: returns the given images in turn (the last one repeats)."""

    def __init__(self, images: Sequence):
        from kvl_tasks.agent.screen import Monitor

        self.images = list(images)
        w, h = self.images[0].size
        self.monitor = Monitor(1, 0, 0, w, h)
        self.monitors = [Monitor(0, 0, 0, w, h), self.monitor]
        self.n = 0

    def capture(self):
        img = self.images[min(self.n, len(self.images) - 1)]
        self.n += 1
        return FakeShot(img, self.monitor)

    def to_pixels(self, x, y):
        m = self.monitor
        return min(int(round(x * m.width)), m.width - 1), min(int(round(y * m.height)), m.height - 1)

    def close(self):
        pass


class RecordingExecutor:
    def __init__(self):
        self.done: list = []

    def execute(self, action, pixels):
        self.done.append((action, pixels))


TK_APP = r'''
import json, sys, tkinter as tk

state_path, geom_path = sys.argv[1], sys.argv[2]
root = tk.Tk()
root.title("Privacy settings")
root.geometry("640x360+0+0")
root.configure(bg="white")
tk.Label(root, text="Privacy and security", font=("Helvetica", 18), bg="white").pack(anchor="w", padx=20, pady=12)
row = tk.Frame(root, bg="white"); row.pack(anchor="w", padx=20, pady=8)
tk.Label(row, text="Homepage:", bg="white").pack(side="left")
home = tk.StringVar(value="")
entry = tk.Entry(row, textvariable=home, width=30); entry.pack(side="left", padx=8)
dnt = tk.IntVar(value=0)
box = tk.Checkbutton(root, text='Send a "Do Not Track" request with your browsing traffic', variable=dnt, bg="white",
                     highlightthickness=0)
box.pack(anchor="w", padx=20, pady=12)

def save(*_):
    with open(state_path + ".tmp", "w") as f:
        json.dump({"dnt": dnt.get(), "homepage": home.get()}, f)
    import os; os.replace(state_path + ".tmp", state_path)

dnt.trace_add("write", save); home.trace_add("write", save)

def report():
    root.update_idletasks()
    g = {name: [w.winfo_rootx(), w.winfo_rooty(), w.winfo_width(), w.winfo_height()]
         for name, w in (("checkbox", box), ("entry", entry))}
    save()
    with open(geom_path + ".tmp", "w") as f:
        json.dump(g, f)
    import os; os.replace(geom_path + ".tmp", geom_path)

root.after(300, report)
root.mainloop()
'''
