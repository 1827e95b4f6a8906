"""Scene descriptions from Kimi-VL (Kimi-VL Figure 11, video scene splitting; tasks.md §1.2).

Two ways to use the model:
* `describe_scenes` (default): the detector's scenes are exact; each scene's keyframes, each after a
  `[HH:MM:SS.mmm]` text label, go to the model, which writes one or two sentences about the scene.
* `model_scenes` (`--mode model`, the paper's way): frames sampled across the whole video, each labelled
  `[HH:MM:SS]`, and the model answers with `(HH:MM:SS - HH:MM:SS) description` lines. Its ranges are parsed
  leniently (`parse_ranges`), clamped, ordered, de-overlapped and made to tile the video (`normalize`); then
  every boundary within one sample interval of a detected cut moves onto that cut (`snap`), which puts the
  model's scenes on exact frames (tasks.md §1.2: better than either alone).
Frame count and resolution are chosen so the prompt and the answer fit the model's context (`plan_frames`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from kvl_core.errors import KvlError

from .decode import VideoInfo, display_size, grab, iter_grab
from .scenes import Scene, SceneList, keyframe_times
from .timecode import clock_to_seconds, timecode

SCENE_PROMPT = ("The images above are frames from one scene of a video, in order, each after its timestamp. "
                "Describe what happens in this scene in one or two sentences. Reply with the description only.")
MODEL_PROMPT = ("The images above are frames sampled from a video that lasts {duration}, in order, each after its "
                "timestamp [HH:MM:SS]. Split the video into scenes and describe each one. Write one line per "
                "scene, in time order, covering the whole video, exactly in this form:\n"
                "(HH:MM:SS - HH:MM:SS) description")
MIN_FRAME_TOKENS = 16  # below ~112x112 px a frame stops telling the model anything
MAX_SIDE = 896  # keyframes larger than this cost tokens without helping a one-sentence description


# ---- budget --------------------------------------------------------------------------------------------------

@dataclass
class Budget:
    frames: int
    size: tuple[int, int]  # (w, h) each frame is resized to
    answer_tokens: int


def _context(engine: Any) -> int | None:
    from kvl_core.backend import context_length

    return context_length(engine)  # None for a scripted engine in tests: no limit to respect


def _prompt_tokens(engine: Any, prompt: str, label: str | None = None) -> tuple[int, int]:
    """(tokens of a user turn holding only `prompt`, extra tokens per `[label] <image>` pair besides the image's
    own tokens), both counted by the processor itself on a 28x28 px probe image."""
    try:
        proc = engine.processor
    except AttributeError:  # a scripted engine without a processor: rough counts are enough
        return len(prompt) // 3 + 16, 24
    from PIL import Image

    text_only = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
    fixed = len(proc.encode(text_only).input_ids)
    probe = Image.new("RGB", (28, 28))
    one = _messages([probe], [label or "[00:00:00.000]"], prompt)
    extra = len(proc.encode(one).input_ids) - fixed - proc.image_processor.plan(28, 28).tokens
    return fixed, extra


def _fit(engine: Any, wh: tuple[int, int], tokens: int, max_side: int) -> tuple[int, int]:
    """The largest size with the frame's aspect whose image tokens <= `tokens` (at most `max_side` px)."""
    w, h = wh
    scale = min(1.0, max_side / max(w, h))
    try:
        plan = engine.processor.image_processor.plan
    except AttributeError:
        return max(1, round(w * scale)), max(1, round(h * scale))
    # tokens grow with area: start from the area estimate (28x28 px a token) and step down until it fits
    scale = min(scale, math.sqrt(tokens * 784 / (w * h)) * 1.2)
    while scale > 0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if plan(*size).tokens <= tokens:
            return size
        scale *= 0.93
    return (28, 28)


def plan_frames(engine: Any, want: int, wh: tuple[int, int], prompt: str, answer_tokens: int,
                max_side: int = MAX_SIDE, label: str | None = None) -> Budget:
    """How many labelled frames, at what size, fit beside `prompt` and the answer in the model's context."""
    ctx = _context(engine)
    if ctx is None:
        return Budget(want, _fit(engine, wh, 10**9, max_side), answer_tokens)
    answer_tokens = min(answer_tokens, max(ctx // 4, 16))
    fixed, extra = _prompt_tokens(engine, prompt, label)
    room = ctx - fixed - answer_tokens
    n = min(want, room // (MIN_FRAME_TOKENS + extra)) if room > 0 else 0
    if n < 1:
        raise KvlError(f"{getattr(engine, 'name', 'the model')}: a {ctx}-token context cannot hold a video frame "
                       f"beside the {fixed}-token prompt and a {answer_tokens}-token answer")
    return Budget(n, _fit(engine, wh, room // n - extra, max_side), answer_tokens)


def _messages(frames: list, labels: list[str], prompt: str) -> list[dict]:
    parts: list[dict] = []
    for img, label in zip(frames, labels):
        parts += [{"type": "text", "text": label}, {"type": "image", "image": img}]
    return [{"role": "user", "content": parts + [{"type": "text", "text": prompt}]}]


def clean_description(text: str) -> str | None:
    """One line: no markdown emphasis, no 'Description:' lead-in, no wrapping quotes."""
    text = re.sub(r"[*_`#]+", "", text or "")
    text = re.sub(r"^\s*(scene\s*description|description|scene)\s*[:\-–]\s*", "", text, flags=re.I)
    text = "".join(ch if ch.isprintable() else " " for ch in text)  # control characters break tables and CSV
    text = " ".join(text.split()).strip(" \"'“”")
    return text or None


# ---- per-scene descriptions ------------------------------------------------------------------------------------

def describe_scenes(engine: Any, result: SceneList, frames_per_scene: int = 3,
                    on_scene: Callable[[Scene], None] | None = None, **options: Any) -> bool:
    """Fill `scene.description` (and `keyframes`) in place; False when Ctrl-C stopped it part-way."""
    info = result.video
    budget = plan_frames(engine, frames_per_scene, display_size(info), SCENE_PROMPT,
                         options.pop("max_new_tokens", None) or 96)
    for scene in result.scenes:
        scene.keyframes = keyframe_times(info, scene.start_time, scene.end_time, budget.frames)
    try:
        # one decoding pass in time order for all scenes (decord is opened once), small images only
        frames = iter_grab(info, [t for s in result.scenes for t in s.keyframes], max_side=max(budget.size))
        pending = next(frames, None)
        for scene in result.scenes:
            shots = []
            while pending is not None and pending.time < scene.end_time - 1e-9:
                if pending.time >= scene.start_time - 1e-9:
                    shots.append(pending)
                pending = next(frames, None)
            if shots:  # (a damaged stretch may yield none: the scene stays undescribed)
                images = [g.image.resize(budget.size) for g in shots]
                msgs = _messages(images, [f"[{timecode(g.time)}]" for g in shots], SCENE_PROMPT)
                reply = engine.chat(msgs, max_new_tokens=budget.answer_tokens, **options)
                scene.description = clean_description(reply.answer)
            if on_scene is not None:
                on_scene(scene)
    except KeyboardInterrupt:
        result.partial = True
        return False
    return True


# ---- the paper's way: the model splits, the detector makes it exact ---------------------------------------------

_T = r"(\d{1,2}:\d{2}(?::\d{2})?(?:[.,]\d+)?)"
_RANGE = re.compile(rf"[(\[]?\s*{_T}\s*(?:-|–|—|~|to)\s*{_T}\s*[)\]]?\s*[:\-–—]?\s*(.*)", re.I)


def parse_ranges(text: str) -> tuple[list[tuple[float, float, str | None]], int]:
    """`(HH:MM:SS - HH:MM:SS) description` lines -> [(start, end, description)], and the count of lines that
    looked like ranges but could not be read. Bullets, numbering, brackets, en dashes, 'to', MM:SS and
    fractional seconds are accepted; anything else is ignored."""
    out, bad = [], 0
    for line in (text or "").splitlines():
        m = _RANGE.search(line)
        if not m:
            continue
        a, b = (clock_to_seconds(x.replace(",", ".")) for x in m.group(1, 2))
        if a is None or b is None:
            bad += 1
            continue
        out.append((a, b, clean_description(m.group(3))))
    return out, bad


def normalize(ranges: list[tuple[float, float, str | None]], start: float, end: float) -> list[list]:
    """Clamp to [start, end], drop empty and contained ranges, split overlaps at their middle, close gaps
    (a gap joins the scene before it) so the result tiles [start, end]. Returns [[s, e, description], ...]."""
    items = []
    for a, b, d in ranges:
        a, b = sorted((a, b))
        a, b = max(a, start), min(b, end)
        if b - a > 1e-3:
            items.append([a, b, d])
    items.sort(key=lambda r: (r[0], -r[1]))
    out: list[list] = []
    for a, b, d in items:
        if out and b <= out[-1][1] + 1e-3:  # inside the previous range: nothing new
            continue
        if out and a < out[-1][1]:
            mid = (a + out[-1][1]) / 2
            out[-1][1], a = mid, mid
        out.append([a, b, d])
    if not out:
        return [[start, end, None]]
    out[0][0] = start
    for prev, nxt in zip(out, out[1:]):
        prev[1] = nxt[0]
    out[-1][1] = end
    return out


def snap(bounds: list[float], cuts: list[float], tolerance: float) -> list[float]:
    """Move each boundary onto the nearest unused cut within `tolerance`; keep them strictly increasing."""
    free = sorted(cuts)
    out: list[float] = []
    for b in bounds:
        best = min(free, key=lambda c: abs(c - b), default=None)
        if best is not None and abs(best - b) <= tolerance and (not out or best > out[-1]):
            free.remove(best)
            b = best
        if not out or b > out[-1] + 1e-6:
            out.append(b)
        else:
            out.append(float("nan"))  # collapsed onto the previous boundary: merged by the caller
    return out


def model_scenes(engine: Any, result: SceneList, max_frames: int = 64, **options: Any) -> tuple[SceneList, str]:
    """Replace `result.scenes` by the model's scenes snapped to the detector's cuts; returns (result, raw answer)."""
    info: VideoInfo = result.video
    t0 = float(result.settings.get("start") or 0.0)
    t1 = float(result.settings.get("end") or info.end_time)
    prompt = MODEL_PROMPT.format(duration=timecode(t1 - t0, millis=False))
    want = max(1, min(max_frames, 256, math.ceil(t1 - t0)))  # about 1 fps, at most 256 images (tasks.md §1.2)
    budget = plan_frames(engine, want, display_size(info), prompt,
                         options.pop("max_new_tokens", None) or 1024, max_side=640, label="[00:00:00]")
    step = (t1 - t0) / budget.frames
    shots = grab(info, [t0 + step * (i + 0.5) for i in range(budget.frames)], max_side=max(budget.size))
    msgs = _messages([g.image.resize(budget.size) for g in shots],
                     [f"[{timecode(g.time, millis=False)}]" for g in shots], prompt)
    answer = engine.chat(msgs, max_new_tokens=budget.answer_tokens, **options).answer
    ranges, _ = parse_ranges(answer)
    if not ranges:  # nothing usable: the detector's scenes stand, undescribed
        return result, answer
    tiles = normalize(ranges, t0, t1)
    inner = snap([r[0] for r in tiles[1:]], [c for c in result.cut_times if t0 < c < t1], step)
    merged = [tiles[0]]
    for b, tile in zip(inner, tiles[1:]):
        if b != b:  # NaN: snapped onto the previous boundary, so the two scenes are one
            merged[-1][2] = " ".join(x for x in (merged[-1][2], tile[2]) if x) or None
            continue
        merged[-1][1], tile[0] = b, b
        merged.append(tile)
    scenes: list[Scene] = []
    kinds = dict(zip(result.cut_times, result.cut_kinds))
    for n, (a, b, desc) in enumerate(merged, start=1):
        fa, fb = info.first_at_or_after(a), info.first_at_or_after(b) if b < t1 else info.first_at_or_after(t1)
        if fb <= fa:
            continue
        end_t = float(info.times[fb]) if fb < info.frame_count else info.end_time
        # a boundary snapped onto a detected one keeps its kind; one the model placed alone is the model's
        kind = None if not scenes else kinds.get(float(info.times[fa]), "model")
        scenes.append(Scene(n, fa, fb, float(info.times[fa]), end_t, desc, [g.time for g in shots
                                                                             if info.times[fa] <= g.time < end_t],
                            kind=kind))
    for n, s in enumerate(scenes, start=1):
        s.number = n
    result.scenes, result.mode = scenes, "model"
    return result, answer
