"""GUI grounding: ScreenSpot-V2, ScreenSpot-Pro and OSWorld-G (report Tables 3 and 5; tasks.md §1.4, §3.2).

Prompt: the Kimi-VL grounding prompt (kvl_core.prompts: GUI_SYSTEM_PROMPT, then the screenshot and
`## Task Instruction:`), the one the public ScreenSpot-Pro wrapper for Kimi-VL uses. The answer is the first
`x=…, y=…` pair after the thinking block, normalised to the screenshot (0-1); values above 1 are pixels and are
divided by the image size, as VLMEvalKit's `evaluate_point` does. A prediction without a point is
"wrong_format" (wrong), except where the item is a refusal item and the model refused (FAIL, or a negative
point, OSWorld-G's convention).

Box formats differ and are told apart by the keys, never guessed from numbers: the OS-Copilot ScreenSpot-V2
release has `bbox=[x, y, w, h]` (VLMEvalKit: inclusive, right edge x+w-1); GUI-Actor's widely used copy adds
`img_size` and stores `[x1, y1, x2, y2]`; ScreenSpot-Pro is `[x1, y1, x2, y2]` with `img_size`; OSWorld-G is
`[x, y, w, h]` (inclusive x+w, lmms-eval) or a polygon.
"""

from __future__ import annotations

import re
from pathlib import Path

from kvl_core.errors import KvlError
from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_user_text
from kvl_tasks.eval.base import Aggregate, Benchmark, Loaded, PaperScore, Sample, Skipped, breakdowns, \
    check_rows, image_part, mean_score, resolve_image, text_message, text_part
from kvl_tasks.eval.readers import read_rows
from kvl_tasks.eval.scoring import strip_thinking

_POINT = re.compile(r"x\s*=\s*(-?\d+(?:\.\d+)?|-?\.\d+)\s*,\s*y\s*=\s*(-?\d+(?:\.\d+)?|-?\.\d+)")
_REFUSAL = re.compile(r"\bFAIL\b")


def parse_point(prediction: str, width: float, height: float) -> tuple[float, float] | None:
    """The first `x=…, y=…` of the answer as normalised (x, y); pixel values (>1) are divided by the image size.
    Negative values are kept (a refusal point)."""
    m = _POINT.search(strip_thinking(prediction))
    if not m:
        return None
    x, y = float(m.group(1)), float(m.group(2))
    if x > 1 or y > 1:
        x, y = x / width, y / height
    return x, y


def is_refusal(prediction: str, point: tuple[float, float] | None) -> bool:
    if point is not None:
        return point[0] < 0 and point[1] < 0
    return bool(_REFUSAL.search(strip_thinking(prediction)))


def in_box(point: tuple[float, float], box: list[float]) -> bool:
    """Inclusive point-in-box; `box` is normalised [x1, y1, x2, y2]."""
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def in_polygon(x: float, y: float, flat: list[float]) -> bool:
    """Even-odd ray casting over a flat [x1, y1, x2, y2, ...] polygon."""
    pts = list(zip(flat[0::2], flat[1::2]))
    inside = False
    j = len(pts) - 1
    for i in range(len(pts)):
        (xi, yi), (xj, yj) = pts[i], pts[j]
        if (yi > y) != (yj > y) and x < (xj - xi) * (y - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # noqa: BLE001 -- Pillow raises many types for a bad file
        raise ValueError(f"{path}: not a readable image ({type(e).__name__})") from None


def _files(data: Path, pattern: str = "*.json") -> list[Path]:
    if data.is_dir():
        files = sorted(p for p in data.glob(pattern) if p.is_file())
        if not files:
            raise KvlError(f"{data}: no {pattern} annotation files in this folder")
        return files
    if not data.exists():
        raise KvlError(f"{data}: no such file")
    return [data]


class _Grounding(Benchmark):
    max_new_tokens = 128
    category_keys = ("ui_type", "group")

    def messages(self, sample: Sample) -> list[dict]:
        return text_message([image_part(sample.inputs["image"]), text_part(gui_user_text(sample.inputs["instruction"]))],
                            system=GUI_SYSTEM_PROMPT)

    def _bases(self, path: Path, images: Path | None, extra: tuple[str, ...]) -> list[Path]:
        if images:
            return [images]
        root = path.parent if path.is_file() else path
        return [root, *(root / e for e in extra), *(root.parent / e for e in extra)]

    def score(self, prediction: str, sample: Sample) -> dict:
        t = sample.target
        pt = parse_point(prediction, t["width"], t["height"])
        if t.get("refusal"):
            hit = is_refusal(prediction, pt)
        else:
            hit = pt is not None and in_box(pt, t["box"])
        return {"score": float(hit), "point": pt, "parsed": pt is not None or is_refusal(prediction, pt)}


class ScreenSpotV2(_Grounding):
    name = "screenspot-v2"
    title = "ScreenSpot-V2"
    paper = PaperScore(92.8)
    data_help = "screenspot_{desktop,mobile,web}_v2.json (a file or their folder) + --images folder"

    def load(self, data: Path, images: Path | None) -> Loaded:
        out = Loaded([])
        files = _files(data, "screenspot_*.json") if data.is_dir() else _files(data)
        for f in files:
            bases = self._bases(f, images, ("screenspotv2_image", "images"))
            rows = read_rows(f)
            stem = f.stem

            def make(i: int, r: dict, stem=stem, bases=bases) -> Sample | Skipped:
                sid = f"{stem}/{i}"
                img = resolve_image(str(r["img_filename"]), bases)
                if img is None:
                    return Skipped(sid, f"image {r['img_filename']} not found under {bases[0]}")
                b = [float(v) for v in r["bbox"]]
                if len(b) != 4:
                    return Skipped(sid, f"bbox has {len(b)} numbers, not 4")
                if "img_size" in r:  # GUI-Actor's release: xyxy in pixels
                    w, h = (float(v) for v in r["img_size"])
                    box = [b[0] / w, b[1] / h, b[2] / w, b[3] / h]
                    fmt = "xyxy"
                else:  # OS-Copilot's release: xywh, right/bottom edge inclusive at x+w-1 (VLMEvalKit)
                    w, h = image_size(img)
                    box = [b[0] / w, b[1] / h, (b[0] + b[2] - 1) / w, (b[1] + b[3] - 1) / h]
                    fmt = "xywh"
                group = r.get("group") or stem.replace("screenspot_", "").replace("_v2", "")
                ui = r.get("ui_type") or r.get("data_type", "")
                return Sample(sid, {"image": str(img), "instruction": r["instruction"]},
                              {"box": box, "width": w, "height": h, "bbox_format": fmt},
                              {"ui_type": ui, "group": group, "platform": r.get("platform") or r.get("data_source", "")})

            part = check_rows(str(f), rows, ("img_filename", "bbox", "instruction"), make)
            out.samples += part.samples
            out.skipped += part.skipped
        return out

    def aggregate(self, records: list[dict]) -> Aggregate:
        b = breakdowns(records, ("group", "ui_type"))
        combos = {}
        for r in records:
            combos.setdefault(f"{r.get('group')}/{r.get('ui_type')}", []).append(r["score"])
        b["group/ui_type"] = {k: {"n": len(v), "score": 100 * sum(v) / len(v)} for k, v in sorted(combos.items())}
        metrics = {"accuracy": mean_score(records)}
        for ui in ("text", "icon"):
            sub = [r for r in records if r.get("ui_type") == ui]
            if sub:
                metrics[f"{ui}_accuracy"] = mean_score(sub)
        return Aggregate(metrics, b)


class ScreenSpotPro(_Grounding):
    name = "screenspot-pro"
    title = "ScreenSpot-Pro"
    paper = PaperScore(34.5)
    data_help = "the annotations/ folder (or one of its *.json) + --images folder"
    category_keys = ("group", "ui_type", "application")

    def load(self, data: Path, images: Path | None) -> Loaded:
        out = Loaded([])
        for f in _files(data):
            bases = self._bases(f, images, ("images",))
            rows = read_rows(f)

            def make(i: int, r: dict, f=f, bases=bases) -> Sample | Skipped:
                sid = str(r.get("id") or f"{f.stem}/{i}")
                img = resolve_image(str(r["img_filename"]), bases)
                if img is None:
                    return Skipped(sid, f"image {r['img_filename']} not found under {bases[0]}")
                w, h = (float(v) for v in r["img_size"])
                b = [float(v) for v in r["bbox"]]
                refusal = str(r.get("gt_type", "positive")).lower() == "negative"
                return Sample(sid, {"image": str(img), "instruction": r["instruction"]},
                              {"box": [b[0] / w, b[1] / h, b[2] / w, b[3] / h], "width": w, "height": h,
                               "refusal": refusal},
                              {"group": r.get("group", ""), "ui_type": r.get("ui_type", ""),
                               "application": r.get("application", ""), "platform": r.get("platform", "")})

            part = check_rows(str(f), rows, ("img_filename", "bbox", "instruction", "img_size"), make)
            out.samples += part.samples
            out.skipped += part.skipped
        return out

    def aggregate(self, records: list[dict]) -> Aggregate:
        metrics = {"accuracy": mean_score(records)}
        for ui in ("text", "icon"):
            sub = [r for r in records if r.get("ui_type") == ui]
            if sub:
                metrics[f"{ui}_accuracy"] = mean_score(sub)
        return Aggregate(metrics, breakdowns(records, self.category_keys))


class OSWorldG(_Grounding):
    name = "osworld-g"
    title = "OSWorld-G"
    paper = PaperScore(52.5, "Kimi-VL-A3B-Thinking-2506", "report Table 5 (full set with refusal)")
    data_help = "OSWorld-G.json (or _refined) + --images folder"
    category_keys = ("box_type",)

    def load(self, data: Path, images: Path | None) -> Loaded:
        f = _files(data)[0] if data.is_file() else next(iter(_files(data, "OSWorld-G*.json")))
        bases = self._bases(f, images, ("images",))
        rows = read_rows(f)

        def make(i: int, r: dict) -> Sample | Skipped:
            sid = str(r.get("id") or i)
            img = resolve_image(str(r["image_path"]), bases)
            if img is None:
                return Skipped(sid, f"image {r['image_path']} not found under {bases[0]}")
            w, h = (float(v) for v in r["image_size"])
            kind = str(r["box_type"])
            coords = [float(v) for v in (r.get("box_coordinates") or [])]
            if kind not in ("bbox", "polygon", "refusal"):
                return Skipped(sid, f"unknown box_type {kind!r}")
            if kind != "refusal" and len(coords) < 4:
                return Skipped(sid, f"box_coordinates has {len(coords)} numbers")
            return Sample(sid, {"image": str(img), "instruction": r["instruction"]},
                          {"kind": kind, "coords": coords, "width": w, "height": h, "refusal": kind == "refusal"},
                          {"box_type": kind})

        return check_rows(str(f), rows, ("image_path", "image_size", "instruction", "box_type"), make)

    def score(self, prediction: str, sample: Sample) -> dict:
        t = sample.target
        pt = parse_point(prediction, t["width"], t["height"])
        refused = is_refusal(prediction, pt)
        if t["kind"] == "refusal":
            return {"score": float(refused), "point": pt, "parsed": pt is not None or refused}
        if pt is None or refused:
            return {"score": 0.0, "point": pt, "parsed": refused}
        x, y = pt[0] * t["width"], pt[1] * t["height"]  # lmms-eval scores absolute pixels
        c = t["coords"]
        if t["kind"] == "bbox" or len(c) == 4:
            hit = c[0] <= x <= c[0] + c[2] and c[1] <= y <= c[1] + c[3]
        else:
            hit = in_polygon(x, y, c)
        return {"score": float(hit), "point": pt, "parsed": True}
