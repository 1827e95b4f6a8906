"""Is it the typeface or the renderer? kvl-nano on `kvl_core.synth` pages drawn in typefaces it never saw.

bench/nano_ood.py changes everything at once (drawing code, layout, words, fonts). This script changes only
the typeface: it registers unseen font files as extra synth families, draws pages with the synth renderer
(random words, so the language model's prior cannot fill in) and reports, per family,

  glyph_acc    the vision tower's per-patch glyph accuracy (the dense head of the checkpoint, on every drawn
               non-space character: the read-vit / read-joint label),
  doubled_acc  the same on the second letter of a doubled pair and its neighbour ("ll", "oo"),
  cer          the whole model's greedy CER (`kvl eval nano-ocr`, unless --no-eval).

    python bench/nano_typefaces.py --model runs/nano/read-joint/final --out /tmp/typefaces --n 40

The model folder must hold `dense_head.safetensors` (every reading stage's `final/` does; the exported
built-in model does not).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nano_ood import evaluate  # noqa: E402  (bench/ is this script's folder: `kvl eval nano-ocr` on one set)

LIB = "/usr/share/fonts/truetype/liberation/"
FREE = "/usr/share/fonts/truetype/freefont/"
# family -> (regular, bold): Debian's fonts-liberation and fonts-freefont-ttf, and the PDF base-14 faces that
# PyMuPDF embeds (written out to --out); none of them is a synth family
UNSEEN = {
    "lib-sans": (LIB + "LiberationSans-Regular.ttf", LIB + "LiberationSans-Bold.ttf"),
    "lib-serif": (LIB + "LiberationSerif-Regular.ttf", LIB + "LiberationSerif-Bold.ttf"),
    "lib-mono": (LIB + "LiberationMono-Regular.ttf", LIB + "LiberationMono-Bold.ttf"),
    "free-serif": (FREE + "FreeSerif.ttf", FREE + "FreeSerifBold.ttf"),
    "free-mono": (FREE + "FreeMono.ttf", FREE + "FreeMonoBold.ttf"),
    "pdf-helv": ("<pdf>helv", "<pdf>hebo"),
    "pdf-times": ("<pdf>tiro", "<pdf>tibo"),
    "pdf-courier": ("<pdf>cour", "<pdf>cobo"),
}
DEFAULT = "sans,serif,stix,aileron," + ",".join(UNSEEN)


def register(out: Path) -> list[str]:
    """Make the UNSEEN families drawable by the synth renderer; returns those whose files exist."""
    from kvl_core.synth import common as C

    ok = []
    for fam, files in UNSEEN.items():
        paths = []
        for f in files:
            if f.startswith("<pdf>"):
                import pymupdf

                p = out / "fonts" / (f[5:] + ".cff")
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(pymupdf.Font(f[5:]).buffer)
                f = str(p)
            paths.append(f)
        if all(Path(p).exists() for p in paths):
            C.register_family(fam, *paths)
            ok.append(fam)
    return ok


def load(model_dir: Path):
    """(model, dense head, image processor) of a reading stage's final/."""
    import torch
    from safetensors.torch import load_file

    from kvl_core.processor.chat import Processor
    from kvl_core.training.reading import DenseHead
    from kvl_core.training.trainer import load_model

    model, side = load_model(model_dir, None, Path(tempfile.mkdtemp()), 0, torch.device("cpu"))
    head = DenseHead(model.config.vision.hidden_size)
    head.load_state_dict(load_file(str(model_dir / "dense_head.safetensors")))
    return model.eval(), head, Processor.from_pretrained(side).image_processor


def glyph_scores(loaded, fam: str, n: int, out: Path) -> dict:
    """Draw n pages in `fam` into out/ (with data.jsonl for `kvl eval nano-ocr`) and score the dense head."""
    import torch

    from kvl_core.synth import documents as D
    from kvl_core.training.reading import glyph_slots, patch_labels

    model, head, ip = loaded
    spec = D.DocSpec(fonts=(fam,), random_words=1.0)
    ok = tot = dok = dtot = 0
    rows = []
    for i in range(n):
        rng = random.Random(f"kvl-typefaces/{fam}/{i}")
        plan = D.plan_document(rng, spec)
        drawn: dict = {}
        img = D.draw_document(plan, rng, spec, record=drawn)
        gl = D.glyphs(plan, drawn["angle"])
        img.save(out / f"{i:04d}.png")
        rows.append({"id": f"{fam}-{i:04d}", "image": f"{i:04d}.png", "markdown": plan.markdown})
        p = ip.plan(img.width, img.height)
        chars, _ = patch_labels(gl, p.image_wh, p.resized_wh, p.grid_hw, ip.patch_size)
        px = ip([img])
        with torch.no_grad():
            pred = head(model.vision_tower(px["pixel_values"], px["image_grid_hws"]))[0].argmax(-1)
        good = [place is not None and int(pred[place]) == int(chars[place])
                for place in glyph_slots(gl, p.image_wh, p.resized_wh, p.grid_hw, ip.patch_size)]
        for j, g in enumerate(gl):
            if g.char == " ":
                continue
            ok += good[j]
            tot += 1
            if j and gl[j - 1].char == g.char and g.char.isalpha():
                dtot += 1
                dok += good[j] and good[j - 1]
    (out / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"glyph_acc": round(100 * ok / max(tot, 1), 1), "glyphs": tot,
            "doubled_acc": round(100 * dok / max(dtot, 1), 1), "doubled": dtot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a reading stage's final/ (with dense_head.safetensors)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fonts", default=DEFAULT, help="synth families and/or " + ", ".join(UNSEEN))
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    out, model = Path(a.out), Path(a.model)
    if not (model / "dense_head.safetensors").exists():
        raise SystemExit(f"{model}: no dense_head.safetensors (pass a reading stage's final/)")
    registered = register(out)
    loaded = load(model)
    results = {}
    for fam in a.fonts.split(","):
        if fam in UNSEEN and fam not in registered:
            print(f"{fam}: font files not installed, skipped", file=sys.stderr)
            continue
        folder = out / fam
        folder.mkdir(parents=True, exist_ok=True)
        r = glyph_scores(loaded, fam, a.n, folder)
        if not a.no_eval:
            r["cer"] = round(evaluate(folder / "data.jsonl", str(model), folder / "eval")["metrics"]["cer"], 1)
        results[fam] = r
        print(fam, json.dumps(r), flush=True)
    summary = {"model": str(model), "n": a.n, "results": results}
    (out / "typefaces.json").write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
