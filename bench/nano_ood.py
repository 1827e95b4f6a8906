"""kvl-nano on documents it was never trained on: another renderer, other words, other fonts.

The built-in model is trained on `kvl_core.synth` documents. This script writes held-out sets that share
none of that code: its own layout and drawing (below), English words outside the synth corpus (checked at
run time), and fonts the recipe never uses. Each set is a folder with `data.jsonl` in the `nano-ocr`
format, so the score is the same `kvl eval nano-ocr` a user runs:

    python bench/nano_ood.py --out bench/results/ood            # write the sets, evaluate kvl-nano on each
    python bench/nano_ood.py --out DIR --model runs/nano/sft/final --n 60

Sets:
  fonts    Liberation Sans/Serif/Mono, FreeSans/FreeSerif (Debian's fonts-liberation, fonts-freefont-ttf),
           DejaVu Serif Italic (matplotlib); whichever are installed
  pillow   Pillow's built-in font (`ImageFont.load_default(size)`, Aileron), as other people's Pillow code
           draws text
  pdf      the same pages written into a PDF in the base-14 fonts (Helvetica, Times, Courier: MuPDF's Nimbus
           clones) and rasterised by MuPDF, as `kvl ocr` sees a born-digital PDF page
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]

# Everyday English words written for this set; those the synth corpus also has are dropped at run time.
WORDS = """
harbor lantern velvet quarterly revenue orchard marble cobalt meadow pillow saddle thimble canyon glacier
voyage sketch parcel ribbon walnut pepper cinnamon ginger tunnel ladder castle falcon badger otter beaver
cricket violin trumpet anchor compass mirror basket candle feather jacket helmet kettle lemon mango olive
peanut quilt rocket shovel tomato umbrella vacuum wagon yacht zipper acorn blossom breeze copper crystal
dolphin ember forest granite horizon iceberg jungle kingdom lagoon mosaic nectar oyster pebble quartz
rainbow summit thunder valley willow yonder zenith atlas bamboo cactus dune echo fjord geyser hammock
igloo jasmine kayak lotus monsoon nutmeg oasis prairie quiver reef safari tundra urchin vortex wharf
invoice clause tenant ledger refund voucher deposit surcharge discount gallery seminar workshop survey
audit permit license warranty shipment courier pallet crate barrel bottle carton pouch sachet jar tin
""".split()
NAMES = ["Alvarez", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Fitzgerald", "Nakamura",
         "Oyelaran", "Petrova", "Quinlan", "Ramirez", "Sorensen", "Uchida", "Vasquez", "Whitaker", "Yilmaz"]
KEYS = ["Tenant", "Clause", "Courier", "Voucher", "Deposit", "Permit", "Pallet", "Warranty", "Ledger", "Surcharge"]

FONT_FILES = {
    "fonts": ["/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
              "/usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf",
              "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
              "/usr/share/fonts/truetype/freefont/FreeSerif.ttf",
              "<mpl>DejaVuSerif-Italic.ttf"],
}
BOLD = {"Regular": "Bold", "FreeSans.ttf": "FreeSansBold.ttf", "FreeSerif.ttf": "FreeSerifBold.ttf",
        "DejaVuSerif-Italic.ttf": "DejaVuSerif-BoldItalic.ttf"}


def _mpl_fonts() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _resolve(path: str) -> str | None:
    p = Path(path.replace("<mpl>", str(_mpl_fonts()) + "/"))
    return str(p) if p.exists() else None


def _bold(path: str) -> str:
    for a, b in BOLD.items():
        if a in path:
            cand = path.replace(a, b)
            if Path(cand).exists():
                return cand
    return path


def _vocab() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from kvl_core.synth import common as C

    corpus = {w.lower() for name in ("NOUNS", "ADJECTIVES", "VERBS_PAST", "VERBS_BASE", "ITEMS", "CITIES", "STORES",
                                     "KEYS", "HEADING_NOUNS", "HEADING_ADJS", "ROLES", "STATUSES")
              for x in getattr(C, name) for w in x.split()}
    return [w for w in WORDS if w not in corpus]


class Font:
    """A typeface at one size, as Pillow draws it (TrueType files, or Pillow's built-in font)."""

    def __init__(self, kind: str, path: str | None, size: int):
        self.kind, self.path, self.size = kind, path, size
        if kind == "pillow":
            self.regular = self.bold = ImageFont.load_default(size)
            self.fake_bold = True
        else:
            self.regular = ImageFont.truetype(path, size)
            bold = _bold(path)
            self.bold = ImageFont.truetype(bold, size)
            self.fake_bold = bold == path

    @property
    def name(self) -> str:
        return Path(self.path).name if self.path else "Pillow built-in (Aileron)"

    def scaled(self, size: int) -> "Font":
        return Font(self.kind, self.path, size)

    def length(self, text: str, bold: bool = False) -> float:
        return (self.bold if bold else self.regular).getlength(text)

    def draw(self, W: int, H: int, bg: int, ink: int, runs: list) -> Image.Image:
        img = Image.new("RGB", (W, H), (bg,) * 3)
        d = ImageDraw.Draw(img)
        for x, y, text, font, bold in runs:
            f = font.bold if bold else font.regular
            d.text((x, y), text, font=f, fill=(ink,) * 3)
            if bold and font.fake_bold:
                d.text((x + 1, y), text, font=f, fill=(ink,) * 3)
        return img


class PdfFont:
    """One of the PDF base-14 families, drawn by MuPDF into a PDF page and rasterised at 72 dpi (1 pt = 1 px):
    another rasteriser, and typefaces (MuPDF's Nimbus Sans / Roman / Mono) the recipe never renders."""

    BASE14 = {"helv": "hebo", "tiro": "tibo", "cour": "cobo"}

    def __init__(self, kind: str, path: str, size: int):
        import pymupdf

        self.kind, self.path, self.size = kind, path, size
        self.regular, self.bold = pymupdf.Font(path), pymupdf.Font(self.BASE14[path])

    @property
    def name(self) -> str:
        return self.regular.name

    def scaled(self, size: int) -> "PdfFont":
        return PdfFont(self.kind, self.path, size)

    def length(self, text: str, bold: bool = False) -> float:
        return (self.bold if bold else self.regular).text_length(text, self.size)

    def draw(self, W: int, H: int, bg: int, ink: int, runs: list) -> Image.Image:
        import pymupdf

        doc = pymupdf.open()
        page = doc.new_page(width=W, height=H)
        page.draw_rect(page.rect, color=None, fill=(bg / 255,) * 3)
        # a TextWriter maps characters through the font's own cmap (insert_text's simple encoding turns the
        # bullet into a middle dot)
        tw = pymupdf.TextWriter(page.rect)
        for x, y, text, font, bold in runs:
            face = font.bold if bold else font.regular
            # Pillow's y is the top of the line box; PDF text is placed by its baseline
            tw.append((x, y + face.ascender * font.size), text, font=face, fontsize=font.size)
        tw.write_text(page, color=(ink / 255,) * 3)
        pix = page.get_pixmap(dpi=72, alpha=False)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples)


def _doc(rng: random.Random, font: Font, words: list[str]) -> tuple[Image.Image, str]:
    """One page of 3-6 lines in one of four layouts, drawn line by line; returns (image, markdown)."""
    W = rng.randint(300, 440)
    m = rng.randint(10, 20)
    pitch = round(font.size * rng.uniform(1.35, 1.6))
    lines: list[list[tuple[str, bool, str]]] = []  # runs: (text, bold, align)
    layout = rng.choice(["heading-text", "keys", "receipt", "bullets"])
    md: list[str] = []

    def phrase(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    def fits(text: str, bold: bool = False) -> bool:
        return font.length(text, bold) <= W - 2 * m

    head = phrase(rng.randint(1, 2)).title()
    level = 1 if layout == "receipt" else 2
    hfont = font.scaled(round(font.size * (1.5 if level == 1 else 1.25)))
    if layout in ("heading-text", "bullets", "receipt") and hfont.length(head, True) <= W - 2 * m:
        lines.append([(head, True, "h")])  # headings are drawn larger, as markdown renderers do
        md.append("#" * level + " " + head)
    n = rng.randint(2, 5)
    if layout == "heading-text":
        para = []
        for _ in range(n):
            t = phrase(rng.randint(2, 5))
            if rng.random() < 0.3:
                t += f" {rng.randint(2, 999)}"
            t = t[0].upper() + t[1:]
            while not fits(t):
                t = t.rsplit(" ", 1)[0]
            lines.append([(t, False, "l")])
            para.append(t)
        md.append(" ".join(para))
    elif layout == "keys":
        kv = []
        for key in rng.sample(KEYS, n):
            v = rng.choice([phrase(1).capitalize(), f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(2020, 2029)}",
                            f"{rng.choice(NAMES)}", f"${rng.randint(1, 999)}.{rng.randint(0, 99):02d}"])
            lines.append([(key + ":", True, "l"), (v, False, "after")])
            kv.append(f"**{key}:** {v}")
        md.append("\n".join(kv))
    elif layout == "receipt":
        total, rows = 0, []
        for _ in range(n - 1):
            item = phrase(1).capitalize()
            cents = rng.randint(50, 4999)
            total += cents
            p = f"${cents // 100}.{cents % 100:02d}"
            lines.append([(item, False, "l"), (p, False, "r")])
            rows.append(f"{item} {p}")
        p = f"${total // 100}.{total % 100:02d}"
        lines.append([("Total:", True, "l"), (p, True, "r")])
        rows.append(f"**Total:** {p}")
        md.append("\n".join(rows))
    else:
        items = []
        for _ in range(n):
            t = phrase(rng.randint(1, 3)).capitalize()
            lines.append([("\u2022", False, "l"), (t, False, "bullet")])
            items.append(f"- {t}")
        md.append("\n".join(items))
    heads = sum(r[0][2] == "h" for r in lines)
    H = 2 * m + pitch * len(lines) + heads * (hfont.size - font.size + font.size // 2)
    bg, ink = rng.randint(245, 255), rng.randint(0, 50)
    runs_at = []  # (x, y, text, font, bold)
    y = m
    for runs in lines:
        x = m
        for text, bold, align in runs:
            f = hfont if align == "h" else font
            if align == "r":
                x = W - m - f.length(text, bold)
            elif align == "bullet":
                x = m + round(font.size * 1.2)
            runs_at.append((x, y, text, f, bold))
            x += f.length(text, bold) + font.length(" ")
        y += pitch + (hfont.size - font.size + font.size // 2 if runs[0][2] == "h" else 0)
    img = font.draw(W, H, bg, ink, runs_at)
    return img, "\n\n".join(md)


def write_set(kind: str, out: Path, n: int, seed: int) -> Path:
    rng = random.Random(f"kvl-ood/{kind}/{seed}")
    words = _vocab()
    if kind == "pdf":
        cls, files = PdfFont, list(PdfFont.BASE14)
    else:
        cls = Font
        files = [p for p in (_resolve(f) for f in FONT_FILES.get(kind, [])) if p] if kind != "pillow" else [None]
    if not files:
        raise SystemExit(f"no font for set {kind!r} is installed")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        font = cls(kind, rng.choice(files), rng.randint(13, 19))
        img, md = _doc(rng, font, words)
        name = f"{i:04d}.png"
        img.save(out / name)
        rows.append({"id": f"{kind}-{i:04d}", "image": name, "markdown": md, "font": font.name})
    (out / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def evaluate(data: Path, model: str | None, out: Path) -> dict:
    kvl = Path(sys.executable).parent / "kvl"
    cmd = [str(kvl), "eval", "nano-ocr", "--data", str(data), "--out", str(out), "--json"]
    if model:
        cmd += ["--model", model]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "kvl eval failed")
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "ood"))
    ap.add_argument("--model", default=None, help="default: the built-in kvl-nano")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", default="fonts,pillow,pdf")
    ap.add_argument("--no-eval", action="store_true")
    a = ap.parse_args()
    results = {}
    for kind in a.sets.split(","):
        data = write_set(kind, Path(a.out) / kind / "data", a.n, a.seed)
        if a.no_eval:
            continue
        r = evaluate(data, a.model, Path(a.out) / kind / "eval")
        results[kind] = r.get("metrics", r)
        print(kind, json.dumps(results[kind]), flush=True)
    if results:
        (Path(a.out) / "ood.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
