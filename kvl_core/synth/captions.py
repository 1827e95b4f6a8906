"""Image-caption pairs for the MoonViT CoCa stage (Kimi-VL report §2.3 "ViT training stage": a contrastive
plus caption loss on image-text pairs, here with synthetic renders instead of web alt text).

Captions describe what is drawn, in short templated English: document kind and counts plus some of its
words (so the caption decoder has to read), screen windows and widgets with their labels, and simple
geometric scenes with colours and spatial relations ("a red circle above a blue square").
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from kvl_core.synth import common as C
from kvl_core.synth.documents import DocPlan, DocSpec, draw_document, plan_document
from kvl_core.synth.screens import ScreenPlan, ScreenSpec, draw_screen, plan_screen

_NUM = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _n(k: int, noun: str) -> str:
    word = _NUM[k] if k < len(_NUM) else str(k)
    return f"{word} {noun}{'' if k == 1 else 's'}"


def _heading_of(plan: DocPlan) -> str | None:
    first = plan.markdown.split("\n", 1)[0]
    return first.lstrip("#").strip() if first.startswith("#") else None


def caption_document(plan: DocPlan, rng: random.Random) -> str:
    info, head = plan.info, _heading_of(plan)
    titled = f' titled "{head}"' if head and rng.random() < 0.7 else ""
    if plan.layout == "paragraph":
        words = plan.markdown.split("\n\n")[-1].split()[:4]
        return rng.choice((f"a page{titled} with {_n(info.get('paragraphs', 1), 'paragraph')}",
                           f'a short text{titled} that begins "{" ".join(words)}"'))
    if plan.layout in ("bullets", "numbered"):
        kind = "bulleted" if plan.layout == "bullets" else "numbered"
        first = plan.markdown.split("\n\n")[-1].split("\n")[0].split(" ", 1)[1]
        return rng.choice((f"a {kind} list{titled} with {_n(info['items'], 'item')}",
                           f'a {kind} list of {info["items"]} items starting with "{first}"'))
    if plan.layout == "keyvalue":
        keys = info.get("keys", [])
        return rng.choice((f"a form{titled} with {_n(len(keys), 'field')}",
                           f"a list of fields: {', '.join(k.lower() for k in keys)}"))
    if plan.layout == "table":
        header = plan.markdown.split("\n\n")[-1].split("\n")[0].strip("| ").split(" | ")
        return rng.choice((f"a table{titled} with {_n(info['cols'], 'column')} and {_n(info['rows'], 'row')}",
                           f"a table with the columns {', '.join(h.lower() for h in header)}"))
    kind = "an invoice" if info.get("invoice") else "a receipt"
    total = f" totalling {C.fmt_price(info['total'])}" if info.get("total") is not None and rng.random() < 0.5 else ""
    return f"{kind} from {info['title']} with {_n(info['items'], 'item')}{total}" if not info.get("invoice") \
        else f"{kind} with {_n(info['items'], 'item')}{total}"


def caption_screen(plan: ScreenPlan, rng: random.Random) -> str:
    parts = []
    for win in plan.windows:
        counts: dict[str, int] = {}
        for w in win.widgets:
            counts[w.kind] = counts.get(w.kind, 0) + 1
        desc = [f'a {"dark " if plan.dark else ""}window titled "{win.title}"']
        named = [w for w in win.widgets if w.kind in ("checkbox", "toggle", "field", "button")]
        if named:
            w = rng.choice(named)
            noun = {"checkbox": "a checkbox", "toggle": "a switch", "field": "a text field", "button": "a button"}[w.kind]
            desc.append(f'with {noun} labelled "{w.label}"')
        if counts.get("button", 0) > 1:
            desc.append(f"and {_n(counts['button'], 'button')}")
        if counts.get("menu"):
            desc.append("and a menu bar")
        parts.append(" ".join(desc))
    return " next to ".join(parts) if len(parts) > 1 else parts[0]


_RELATIONS = {"above": (0, -1), "below": (0, 1), "left of": (-1, 0), "right of": (1, 0)}


def render_shapes(rng: random.Random, size: tuple[int, int] = (224, 224)) -> tuple[Image.Image, str]:
    """One or two coloured shapes on a plain background; with two, the caption names their relation."""
    W, H = size
    bg = rng.choice(((255, 255, 255), (245, 242, 235), (230, 235, 240), (250, 250, 250)))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    colors = rng.sample([c for c in C.COLORS if c not in ("gray",)], 2)
    shapes = [rng.choice(C.SHAPES), rng.choice(C.SHAPES)]
    r = rng.randint(W // 9, W // 6)
    if rng.random() < 0.3:
        cx, cy = rng.randint(r + 4, W - r - 4), rng.randint(r + 4, H - r - 4)
        _shape(d, shapes[0], cx, cy, r, C.COLORS[colors[0]])
        big = "a large" if r > W // 7 else "a small"
        return img, f"{big} {colors[0]} {shapes[0]}"
    rel = rng.choice(tuple(_RELATIONS))
    dx, dy = _RELATIONS[rel]
    # first shape at A, second at B, with A = B + offset in the direction of the relation
    gap = 2 * r + rng.randint(8, 30)
    bx = rng.randint(r + 4 + max(0, -dx * gap), W - r - 4 - max(0, dx * gap))
    by = rng.randint(r + 4 + max(0, -dy * gap), H - r - 4 - max(0, dy * gap))
    ax, ay = bx + dx * gap + rng.randint(-r // 2, r // 2) * abs(dy), by + dy * gap + rng.randint(-r // 2, r // 2) * abs(dx)
    # the jitter is across the relation's axis, so clamping it keeps the relation true
    ax, ay = min(max(ax, r + 2), W - r - 2), min(max(ay, r + 2), H - r - 2)
    _shape(d, shapes[0], ax, ay, r, C.COLORS[colors[0]])
    _shape(d, shapes[1], bx, by, r, C.COLORS[colors[1]])
    return img, f"{_a(colors[0])} {colors[0]} {shapes[0]} {rel} {_a(colors[1])} {colors[1]} {shapes[1]}"


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _shape(d: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, fill) -> None:
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif shape == "bar":
        d.rectangle((cx - r, cy - r // 3, cx + r, cy + r // 3), fill=fill)
    else:  # star
        import math

        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)


CAPTION_SOURCES = ("document", "screen", "shapes")


def render_caption_pair(rng: random.Random, weights: tuple[float, float, float] = (0.45, 0.3, 0.25),
                        doc_spec: DocSpec = DocSpec(), screen_spec: ScreenSpec = ScreenSpec()) -> tuple[Image.Image, str]:
    """(image, caption) from a document, a screen or a shapes scene, chosen by `weights`."""
    source = rng.choices(CAPTION_SOURCES, weights=weights)[0]
    if source == "document":
        plan = plan_document(rng, doc_spec)
        return draw_document(plan, rng, doc_spec), caption_document(plan, rng)
    if source == "screen":
        splan = plan_screen(rng, screen_spec)
        return draw_screen(splan, rng, screen_spec), caption_screen(splan, rng)
    return render_shapes(rng)


__all__ = ["CAPTION_SOURCES", "caption_document", "caption_screen", "render_caption_pair", "render_shapes"]
