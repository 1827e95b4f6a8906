"""Single-step grounding, as ScreenSpot measures it (paper §4.1.5; tasks.md §1.4, §3.2).

The model gets one screenshot and the target as the task instruction, in the same GUI-agent format as the
loop (kvl_core/prompts.py), and answers with a click; the predicted point is the first point of the answer,
normalised to 0-1. A prediction is correct when the point lies inside the target's bounding box.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_user_text

from .actions import parse_point


@dataclass
class Grounding:
    target: str
    point: tuple[float, float] | None  # normalised
    pixels: tuple[int, int] | None  # in the screenshot
    size: tuple[int, int]
    answer: str
    raw: str

    def to_dict(self) -> dict:
        return {"target": self.target, "x": None if self.point is None else round(self.point[0], 4),
                "y": None if self.point is None else round(self.point[1], 4),
                "px": None if self.pixels is None else self.pixels[0],
                "py": None if self.pixels is None else self.pixels[1],
                "width": self.size[0], "height": self.size[1], "answer": self.answer}


def grounding_messages(image, target: str) -> list[dict]:
    return [{"role": "system", "content": GUI_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": gui_user_text(target)}]}]


def to_pixels(point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    return min(int(round(point[0] * w)), w - 1), min(int(round(point[1] * h)), h - 1)


def ground(engine, image, target: str, **sampling) -> Grounding:
    """Ask `engine` where `target` is on `image` (a PIL image)."""
    result = engine.chat(grounding_messages(image, target), **sampling)
    point = parse_point(result.answer, image.size) if not result.truncated else None
    return Grounding(target, point, to_pixels(point, image.size) if point else None, image.size,
                     result.answer, result.text)


def point_in_box(point: tuple[float, float] | None, box: tuple[float, float, float, float],
                 size: tuple[int, int] | None = None) -> bool:
    """Whether a normalised point lies in `box` = (x1, y1, x2, y2), edges included. The box is in pixels
    when `size` is given (ScreenSpot's annotations), else normalised."""
    if point is None:
        return False
    x1, y1, x2, y2 = box
    if size is not None:
        x1, x2 = x1 / size[0], x2 / size[0]
        y1, y2 = y1 / size[1], y2 / size[1]
    return min(x1, x2) <= point[0] <= max(x1, x2) and min(y1, y2) <= point[1] <= max(y1, y2)
