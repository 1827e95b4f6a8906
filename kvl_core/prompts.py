"""Prompts shared by the task runners and by the synthetic training data (kvl_core/synth).

They live in core, not in the tasks, because the built-in kvl-nano model is trained on exactly the
prompts the tasks send (a model that never saw a task's wording would not follow it), and core never
imports upward. Paper §4.1.5 (GUI agent) and tasks.md §1.1, §1.3.
"""

from __future__ import annotations

from collections.abc import Sequence

# GUI agent / grounding (tasks.md §1.3): the answer is a one-sentence action description followed by
# pyautogui code with coordinates normalised to the screenshot (0-1, origin top-left). This is the
# format the published Kimi-VL grounding evaluations use, so real checkpoints answer in it.
GUI_SYSTEM_PROMPT = (
    "You are a GUI agent. You are given a task and a screenshot of a computer screen. You need to perform "
    "an action and pyautogui code to complete the task. Provide your response in this format:\n\n"
    "## Action:\nProvide a one-sentence description of the action to perform.\n\n"
    "## Code:\nOutput the pyautogui code for the action, using normalized screen coordinates "
    "(values between 0 and 1), e.g. pyautogui.click(x=0.204, y=0.149). When the task is complete answer "
    "DONE, when it cannot be done answer FAIL, and to wait for the screen answer WAIT."
)


def gui_user_text(instruction: str, history: Sequence[str] = ()) -> str:
    """The text after the screenshot(s): the task, then the earlier steps as text (Aguvis-style)."""
    text = f"## Task Instruction:\n{instruction}"
    if history:
        steps = "\n".join(f"Step {i}: {h}" for i, h in enumerate(history, 1))
        text += f"\n\nPrevious actions:\n{steps}"
    return text


def gui_answer(action: str, code: str) -> str:
    """An answer in the agent format (what the model is trained to produce and the parser reads)."""
    return f"## Action:\n{action}\n\n## Code:\n```python\n{code}\n```"


# OCR / document -> Markdown (tasks.md §1.1): our own wording of the olmOCR/marker conventions, kept
# short because it is paid on every page.
OCR_PROMPT = ("Convert this page to GitHub Markdown in reading order: headings, lists, pipe tables (HTML <table> "
              "if cells span), math as $...$ or $$...$$. {furniture}Output only the Markdown.")
OCR_NO_FURNITURE = "Skip running headers, footers, page numbers. "


def ocr_prompt(keep_furniture: bool = False) -> str:
    return OCR_PROMPT.format(furniture="" if keep_furniture else OCR_NO_FURNITURE)
