"""What an agent run leaves behind (tasks.md §2.3): one folder with `step_NNN.png` (the screenshot the model saw,
the action drawn on it), `traj.jsonl` (one line per step: raw model output, parsed actions, pixels, timings),
`summary.json`, and `report.html`, a self-contained page a person scrolls through.

Text the agent types is written as a character count unless the user asks for it (`--log-typed-text`): it
is masked in the parsed actions and in the raw model output alike.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from kvl_core.errors import KvlError

from .actions import Action

MARK = (230, 30, 60)


@dataclass
class StepRecord:
    step: int
    status: str  # executed | dry-run | rejected | declined | not-allowed | done | fail | wait | error
    thought: str = ""
    code: str = ""
    raw: str = ""
    reasoning: str | None = None
    actions: list[Action] = field(default_factory=list)
    pixels: list[list[int] | None] = field(default_factory=list)
    error: str | None = None
    screen_changed: bool | None = None
    timings: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    screenshot: str | None = None  # file name inside the trajectory folder


def redact(text: str, actions: list[Action]) -> str:
    for a in actions:
        if a.kind == "type" and a.text:
            text = text.replace(a.text, f"<{len(a.text)} characters not logged>")
    return text


def annotate(image, actions: list[Action], pixels: list, label: str, origin: tuple[int, int] = (0, 0)):
    """A copy of the screenshot with each action's point marked, under a caption strip (added above the
    screenshot, so it hides nothing)."""
    from PIL import Image, ImageDraw

    strip = max(18, image.height // 40)
    canvas = Image.new("RGB", (image.width, image.height + strip), (20, 20, 20))
    canvas.paste(image.convert("RGB"), (0, strip))
    d = ImageDraw.Draw(canvas)
    d.text((6, (strip - 11) // 2), label[:400], fill=(255, 255, 255))
    img = image.copy()
    d = ImageDraw.Draw(img)
    r = max(8, img.width // 100)
    for a, p in zip(actions, pixels):
        if p is None:
            continue
        x, y = p[0] - origin[0], p[1] - origin[1]
        d.ellipse((x - r, y - r, x + r, y + r), outline=MARK, width=3)
        d.line((x - 2 * r, y, x - r // 2, y), fill=MARK, width=2)
        d.line((x + r // 2, y, x + 2 * r, y), fill=MARK, width=2)
        d.line((x, y - 2 * r, x, y - r // 2), fill=MARK, width=2)
        d.line((x, y + r // 2, x, y + 2 * r), fill=MARK, width=2)
        d.text((x + r + 4, y - r - 12), a.kind, fill=MARK)
    canvas.paste(img.convert("RGB"), (0, strip))
    return canvas


class Trajectory:
    def __init__(self, folder: Path, log_typed_text: bool = False):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / ".kvl-write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise KvlError(f"{self.folder}: cannot write the trajectory here ({e.strerror or e})") from None
        self.log_typed_text = log_typed_text
        self.jsonl = self.folder / "traj.jsonl"
        self.jsonl.write_text("")
        self.records: list[StepRecord] = []
        self.thumbs: list[str | None] = []  # base64 JPEGs for the report
        self.started = time.time()

    def add(self, rec: StepRecord, image=None, origin=(0, 0)) -> None:
        redacted = not self.log_typed_text
        if image is not None:
            label = f"step {rec.step}: " + ("; ".join(a.code(redact=redacted) for a in rec.actions)
                                            or (rec.error or rec.status))
            marked = annotate(image, rec.actions, rec.pixels, label, origin)
            name = f"step_{rec.step:03d}.png"
            marked.save(self.folder / name, optimize=False, compress_level=3)
            rec.screenshot = name
            thumb = marked.convert("RGB")
            thumb.thumbnail((1280, 1280))
            buf = io.BytesIO()
            thumb.save(buf, "JPEG", quality=80)
            self.thumbs.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        else:
            self.thumbs.append(None)
        self.records.append(rec)
        with self.jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(self.step_dict(rec), ensure_ascii=False) + "\n")

    def step_dict(self, rec: StepRecord) -> dict:
        redacted = not self.log_typed_text
        scrub = (lambda s: redact(s, rec.actions) if s and redacted else s)
        return {
            "step": rec.step, "status": rec.status, "thought": scrub(rec.thought),
            "code": scrub(rec.code), "raw": scrub(rec.raw), "reasoning": scrub(rec.reasoning),
            "actions": [a.to_dict(redact=redacted) for a in rec.actions], "pixels": rec.pixels,
            "error": scrub(rec.error), "screen_changed": rec.screen_changed, "screenshot": rec.screenshot,
            "timings": {k: round(v, 4) for k, v in rec.timings.items()}, "tokens": rec.tokens,
        }

    def finish(self, summary: dict) -> None:
        summary = dict(summary, steps=len(self.records), seconds=round(time.time() - self.started, 3))
        _atomic(self.folder / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        _atomic(self.folder / "report.html", self.html(summary))

    def html(self, summary: dict) -> str:
        e = html.escape
        rows = []
        for rec, thumb in zip(self.records, self.thumbs):
            d = self.step_dict(rec)
            img = (f'<img src="data:image/jpeg;base64,{thumb}" alt="step {rec.step} screenshot">'
                   if thumb else '<p class="none">no screenshot</p>')
            acts = "<br>".join(e(a.code(redact=not self.log_typed_text)) for a in rec.actions) or "—"
            timing = ", ".join(f"{k} {v:.2f} s" for k, v in rec.timings.items())
            err = f'<p class="err">{e(d["error"])}</p>' if d["error"] else ""
            think = (f"<details><summary>reasoning</summary><pre>{e(d['reasoning'])}</pre></details>"
                     if d["reasoning"] else "")
            rows.append(f"""<section class="step {e(rec.status)}">
<h2>Step {rec.step} <span class="badge">{e(rec.status)}</span></h2>
<div class="cols"><div class="shot">{img}</div><div class="info">
<p class="thought">{e(d['thought'] or '(no action description)')}</p>
<p><code>{acts}</code></p>{err}
<p class="meta">{e(timing)}{' · screen changed' if rec.screen_changed else ''}</p>
{think}<details><summary>raw model output</summary><pre>{e(d['raw'])}</pre></details>
</div></div></section>""")
        head = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in summary.items()
                       if k not in ("options",))
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvl agent: {e(summary.get('instruction', ''))}</title>
<style>
body{{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1500px;padding:1em 2em;color:#222}}
table{{border-collapse:collapse;margin-bottom:1.5em}} th{{text-align:left;padding:2px 12px 2px 0;color:#666}}
.step{{border-top:1px solid #ddd;padding:.8em 0}} h2{{font-size:1.1em;margin:.2em 0}}
.cols{{display:flex;gap:1.5em;align-items:flex-start}} .shot{{flex:3}} .info{{flex:2}}
.shot img{{width:100%;border:1px solid #ccc}} .badge{{font-size:.8em;background:#eee;padding:1px 8px;border-radius:8px}}
.done .badge{{background:#c8f0c8}} .fail .badge,.rejected .badge,.error .badge{{background:#f6c8c8}}
.err{{color:#a00}} .meta{{color:#777}} pre{{white-space:pre-wrap;background:#f6f6f6;padding:.5em}}
.thought{{font-size:1.05em}}
</style></head><body>
<h1>kvl agent</h1>
<table>{head}</table>
{''.join(rows) or '<p>No steps were run.</p>'}
</body></html>
"""


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
