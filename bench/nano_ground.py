"""Probe: can kvl-nano's language model learn GUI grounding when its image tokens are perfect (docs/nano.md,
*Grounding*)? The reading recipe learned to read by splitting the read-out from the vision tower; this asks
the same of clicks: the LM alone, on *oracle* tokens that carry their position (`Oracle.position`), trained
on screens (`read-lm` with `positions=True`), then scored on the held-out screens of `kvl eval run
nano-ground` with the image tokens replaced by the oracle's.

    python bench/nano_ground.py --model kvl_core/assets/kvl-nano --out /tmp/g1 --screens 3000 --steps 600
    python bench/nano_ground.py --model /tmp/g1/read-lm-screens/final --out /tmp/g1 --eval-only

Writes OUT/data/screen.jsonl (+ PNGs; reused), OUT/read-lm-screens/ and OUT/eval*.json: click in box,
unparsable answers and the random-click baseline, by target kind.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvl_core.processor.chat import Processor  # noqa: E402
from kvl_core.prompts import GUI_SYSTEM_PROMPT, gui_answer, gui_user_text  # noqa: E402
from kvl_core.synth import dataset as D  # noqa: E402
from kvl_core.synth.screens import draw_screen, glyphs as screen_glyphs  # noqa: E402
from kvl_core.training.reading import Oracle, merged_positions, merged_targets, patch_labels  # noqa: E402
from kvl_tasks.eval.benchmarks.screenspot import in_box, parse_point  # noqa: E402


def heldout_screens(n: int):
    """The held-out screens of kvl_core.synth.heldout("ground") (same plans, same order), with their glyphs."""
    cfg = D.SynthConfig()
    seen: set = set()
    out = []
    for i in range(n):
        rng, plan, key = D._plan_screen("heldout", "ground", D.HELDOUT_SEED, i, cfg.screen, seen)
        img = draw_screen(plan, rng, cfg.screen)
        t = D.pick_targets(rng, plan.targets, 1)[0]
        seen.add(key)
        W, H = plan.size
        out.append({"image": img, "instruction": t.instruction, "kind": t.kind,
                    "box": [t.bbox[0] / W, t.bbox[1] / H, t.bbox[2] / W, t.bbox[3] / H],
                    "glyphs": screen_glyphs(plan)})
    return out


def words_of(glyphs: list) -> list[tuple[str, list[float]]]:
    """(word, [x1, y1, x2, y2]) of every word drawn, from glyph rows [char, x, y, bold] (spaces included; a
    jump in y or a gap of more than about two characters starts a new word too). The box spans the glyph centres plus half a character each side."""
    steps = sorted(b[1] - a[1] for a, b in zip(glyphs, glyphs[1:]) if 0 < b[1] - a[1] < 40 and abs(b[2] - a[2]) <= 4)
    gap = 2.2 * steps[len(steps) // 2] if steps else 30.0  # table cells are drawn apart, without a space glyph
    words, cur = [], []
    for g in list(glyphs) + [[" ", 0, 0, 0]]:
        if g[0] == " " or (cur and (abs(g[2] - cur[-1][2]) > 4 or g[1] - cur[-1][1] > gap)):
            if cur:
                words.append(cur)
            cur = [] if g[0] == " " else [g]
        else:
            cur.append(g)
    out = []
    for w in words:
        adv = (w[-1][1] - w[0][1]) / (len(w) - 1) if len(w) > 1 else 8.0
        half = max(3.0, 0.5 * adv)
        ys = [g[2] for g in w]
        out.append(("".join(g[0] for g in w), [w[0][1] - half, min(ys) - 2 * half, w[-1][1] + half, max(ys) + 2 * half]))
    return out


def rows_of(glyphs: list) -> int:
    """How many text rows an image has (glyph centres more than 4 px apart in y start a new one)."""
    ys = sorted(g[2] for g in glyphs)
    return sum(1 for a, b in zip([-99.0] + ys, ys) if b - a > 4)


def point_chats(src: Path, dst: Path, seed: int = 0, start: int = 0, stop: int | None = None,
                max_rows: int | None = None) -> Path:
    """A pointing task on pages or lines (glyph-bearing chats of kvl_core.synth): "Click Xyz" -> the GUI answer at
    the centre of a word that occurs once on the image (letters, 3+ long), from lines [start, stop) of `src`. Same
    system prompt and format as the screens, so the skill that transfers is find-the-text-then-say-where."""
    import random

    from PIL import Image

    rng = random.Random(f"point/{seed}")
    rows = []
    for k, line in enumerate(open(src)):
        if k < start:
            continue
        if stop is not None and k >= stop:
            break
        r = json.loads(line)
        if max_rows is not None and rows_of(r["glyphs"]) > max_rows:
            continue
        words = words_of(r["glyphs"])
        counts: dict = {}
        for w, _ in words:
            counts[w] = counts.get(w, 0) + 1
        cands = [(w, b) for w, b in words if counts[w] == 1 and len(w) >= 3 and w.isalpha()]
        if not cands:
            continue
        w, b = rng.choice(cands)
        img = str((src.parent / r["messages"][0]["content"][0]["image"]).resolve())
        W, H = Image.open(img).size
        box = [max(0.0, b[0]) / W, max(0.0, b[1]) / H, min(W, b[2]) / W, min(H, b[3]) / H]
        ins = rng.choice((f"Click {w}", f'Click the word "{w}"', f"Click on {w}", f"Select {w}", f"Tap {w}"))
        ans = gui_answer(f'Click "{w}".', f"pyautogui.click(x={(box[0] + box[2]) / 2:.3f}, y={(box[1] + box[3]) / 2:.3f})")
        rows.append({"id": r["id"], "messages": [
            {"role": "system", "content": GUI_SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": gui_user_text(ins)}]},
            {"role": "assistant", "content": ans}], "glyphs": r["glyphs"], "box": box, "instruction": ins})
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return dst


def point_samples(path: Path, n: int) -> list[dict]:
    """Held-out pointing chats (point_chats output) as evaluate() samples."""
    from PIL import Image

    from kvl_core.synth.documents import Glyph

    out = []
    for line in list(open(path))[:n]:
        r = json.loads(line)
        gl = [Glyph(c, x, y, 0, bool(b)) for c, x, y, b in r["glyphs"]]  # as training/reading.py reads them
        out.append({"image": Image.open(r["messages"][1]["content"][0]["image"]).convert("RGB"),
                    "instruction": r["instruction"], "kind": "word", "box": r["box"], "glyphs": gl})
    return out


@torch.no_grad()
def evaluate(model_dir: str, screens: list[dict], seed: int = 0, code: str = "fourier") -> dict:
    from kvl_core.model import KimiVLForConditionalGeneration

    model = KimiVLForConditionalGeneration.from_pretrained(model_dir).float().eval()
    proc = Processor.from_pretrained(model_dir)
    ip = proc.image_processor
    oracle = Oracle(model.config.text.hidden_size, seed=seed, position_code=code)
    recs = []
    for s in screens:
        msgs = [{"role": "system", "content": GUI_SYSTEM_PROMPT},
                {"role": "user", "content": [{"type": "image", "image": s["image"]},
                                             {"type": "text", "text": gui_user_text(s["instruction"])}]}]
        enc = proc.encode(msgs, add_generation_prompt=True, pixels=False)
        plan = ip.plan(s["image"].width, s["image"].height)
        chars, bold = patch_labels(s["glyphs"], plan.image_wh, plan.resized_wh, plan.grid_hw, ip.patch_size)
        _, _, mc, mb = merged_targets([(chars, bold, plan.grid_hw)])
        feats = oracle(mc, mb, merged_positions([plan.grid_hw]))
        model.get_image_features = lambda pv, g, f=feats: f  # the oracle stands in for the vision tower
        ids = torch.tensor([enc.input_ids])
        seq = model.generate(ids, pixel_values=torch.zeros(1, 1), image_grid_hws=torch.tensor([plan.grid_hw]),
                             max_new_tokens=128, eos_token_id=sorted(proc.tokenizer.stop_ids))
        text = proc.tokenizer.decode(seq[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        pt = parse_point(text, 1.0, 1.0)
        area = (s["box"][2] - s["box"][0]) * (s["box"][3] - s["box"][1])
        recs.append({"kind": s["kind"], "hit": bool(pt is not None and in_box(pt, s["box"])), "parsed": pt is not None,
                     "area": area, "answer": text, "point": pt, "box": s["box"]})
    by_kind: dict = {}
    for r in recs:
        by_kind.setdefault(r["kind"], []).append(r["hit"])
    n = len(recs)
    return {"model": model_dir, "n": n, "accuracy": sum(r["hit"] for r in recs) / n,
            "unparsable": sum(not r["parsed"] for r in recs) / n, "random_baseline": sum(r["area"] for r in recs) / n,
            "by_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())},
            "examples": [r["answer"] for r in recs[:5]], "records": recs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--screens", type=int, default=3000, help="training screen lines (3 targets per screen)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mix", default="", help="extra data PATH[:WEIGHT] mixed in (e.g. pages, to keep reading)")
    ap.add_argument("--n", type=int, default=100, help="held-out screens scored")
    ap.add_argument("--code", default="fourier", help="how oracle tokens say where they are (fourier | digits)")
    ap.add_argument("--words", default="", help="train on pointing at words instead: a glyph-bearing JSONL (synth "
                    "line/ocr); its last --n lines are held out and scored too")
    ap.add_argument("--max-rows", type=int, default=None, help="--words: only images with at most this many text rows")
    ap.add_argument("--no-screens", action="store_true", help="do not score the held-out screens")
    ap.add_argument("--eval-only", action="store_true")
    a = ap.parse_args()
    for path, what in ((a.model, "model folder"), (a.words, "glyph-bearing JSONL")):
        if path and not Path(path).exists():
            sys.exit(f"{path}: no such {what}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    screens = [] if a.no_screens else heldout_screens(a.n)
    model = a.model
    if not a.eval_only:
        from kvl_core.training.reading import ReadConfig, train_reading

        data = out / "data" / "screen.jsonl"
        if a.words:
            src = Path(a.words)
            total = sum(1 for _ in open(src))
            # the file's last --n lines are held out
            data = point_chats(src, out / "data" / f"point-{src.stem}.jsonl", stop=total - a.n, max_rows=a.max_rows)
            point_chats(src, out / "data" / f"point-{src.stem}-heldout.jsonl", seed=1, start=total - a.n)
        elif not data.exists():
            t0 = time.perf_counter()
            D.write_train("screen", out / "data", a.screens, seed=0, workers=1)
            print(f"data: {a.screens} screen lines in {time.perf_counter() - t0:.0f} s", flush=True)
        sources = [str(data)] + ([a.mix] if a.mix else [])
        t0 = time.perf_counter()
        stage = out / (f"read-lm-point-{a.code}" if a.words else f"read-lm-screens-{a.code}")
        train_reading(ReadConfig(mode="read-lm", out=str(stage), data=sources, steps=a.steps, batch=a.batch,
                                 lr=a.lr, lr_vision=0.0, model=a.model, positions=True, position_code=a.code),
                      on_event=lambda k, i: print(json.dumps(i), flush=True) if k == "step" and i["step"] % 50 == 0 else None)
        print(f"trained {a.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        model = str(stage / "final")
    sets = {} if a.no_screens else {"screens": screens}
    if a.words:
        sets["words"] = point_samples(out / "data" / f"point-{Path(a.words).stem}-heldout.jsonl", a.n)
    for name, samples in sets.items():
        res = evaluate(model, samples, code=a.code)
        (out / f"eval-{Path(model).parent.name}-{name}.json").write_text(json.dumps(res, indent=1))
        print(name, json.dumps({k: v for k, v in res.items() if k not in ("examples", "records")}), flush=True)
        for e in res["examples"][:3]:
            print(repr(e))


if __name__ == "__main__":
    main()
