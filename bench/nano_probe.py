"""Probe harness for kvl-nano's sample efficiency: how many images does a fresh model need to read?

Each run trains a fresh `nano`-preset Kimi-VL (MoonViT -> projector -> MLA/MoE LM, the real modules) on
one small reading task, generated on the fly, and logs a learning curve every `--eval-every` images:
training loss per target byte, held-out teacher-forced byte accuracy, and (at the end and at each eval
if `--greedy`) greedy-decoded CER on held-out lines in fonts the run never trained on.

Tasks:
  words200   one of 200 fixed random words (4-8 letters), DejaVu Sans 16 px, fixed place (issue #16, table B)
  lines      random strings of letters, digits and punctuation (never a closed vocabulary), 1-4 words,
             every training font, 12-18 px, random place; held-out in other fonts (Pillow's built-in
             Aileron, DejaVu Serif Italic) and other strings

One factor at a time: --init (vision/projector/LM initialisation), --lr / --lr-adamw (peak LR per
optimizer family), --warmup, --batch, --upscale (image scale before patching: a 16-px glyph spans ~1
patch at 1x, ~2 at 2x; tokens grow by upscale^2).

    python bench/nano_probe.py --task lines --init kvl --upscale 2 --images 8000 --out bench/results/probe.json

Writes a JSON with the curve; `python bench/nano_probe.py plot OUT.png A.json B.json ...` draws several
side by side. `--baseline` trains the known-good CNN+CTC reader on the same task instead.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import string
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvl_core.config import preset  # noqa: E402
from kvl_core.model import KimiVLForConditionalGeneration  # noqa: E402
from kvl_core.processor.image import ImageProcessor  # noqa: E402
from kvl_core.training.init import init_weights  # noqa: E402
from kvl_core.training.muon import Muon, param_groups_for  # noqa: E402

CHARS = string.ascii_letters + string.digits + "$.,:#/-%()"
TRAIN_FONTS = ["DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"]
HELDOUT_FONTS = ["<pillow>", "DejaVuSerif-Italic.ttf"]


def _font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font(name: str, size: int):
    if name == "<pillow>":
        return ImageFont.load_default(size)
    for d in (_font_dir(), Path("/usr/share/fonts/truetype/dejavu")):
        if (d / name).exists():
            return ImageFont.truetype(str(d / name), size)
    raise FileNotFoundError(name)


def render(text: str, fnt, rng: random.Random, jitter: bool) -> Image.Image:
    """The line on white; img.info["centers"] holds each character's centre (for the dense reading loss)."""
    x0, y0, x1, y1 = fnt.getbbox(text)
    pad_x = rng.randint(2, 20) if jitter else 6
    pad_y = rng.randint(2, 10) if jitter else 5
    w, h = x1 + 2 * pad_x, y1 + 2 * pad_y
    img = Image.new("RGB", (max(w, 28), max(h, 28)), (255, 255, 255))
    d = ImageDraw.Draw(img)
    ink = (rng.randint(0, 80),) * 3 if jitter else (0, 0, 0)
    d.text((pad_x, pad_y), text, font=fnt, fill=ink)
    yc = pad_y + (y0 + y1) / 2
    img.info["centers"] = [(pad_x + (fnt.getlength(text[:i]) + fnt.getlength(text[: i + 1])) / 2, yc)
                           for i in range(len(text))]
    return img


LINE_SHAPE = {"max_words": 4, "max_word_len": 7}


def random_line(rng: random.Random) -> str:
    words = []
    for _ in range(rng.randint(1, LINE_SHAPE["max_words"])):
        words.append("".join(rng.choice(CHARS) for _ in range(rng.randint(1, LINE_SHAPE["max_word_len"]))))
    return " ".join(words)


class Task:
    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = random.Random(seed)
        if name == "words200":
            wr = random.Random(1234)
            self.words = ["".join(wr.choice(string.ascii_lowercase) for _ in range(wr.randint(4, 8))) for _ in range(200)]
            self.font = font("DejaVuSans.ttf", 16)

    def sample(self, rng: random.Random | None = None, heldout: bool = False) -> tuple[Image.Image, str]:
        rng = rng or self.rng
        if self.name == "words200":
            word = rng.choice(self.words)
            img = Image.new("RGB", (224, 56), (255, 255, 255))
            ImageDraw.Draw(img).text((20, 18), word, font=self.font, fill=(0, 0, 0))
            yc = 18 + sum(self.font.getbbox(word)[1::2]) / 2
            img.info["centers"] = [(20 + (self.font.getlength(word[:i]) + self.font.getlength(word[: i + 1])) / 2, yc)
                                   for i in range(len(word))]
            return img, word
        text = random_line(rng)
        name = rng.choice(HELDOUT_FONTS if heldout else TRAIN_FONTS)
        return render(text, font(name, rng.randint(12, 18)), rng, jitter=True), text


AUX_SLOTS = 3  # characters a merged token can hold in the dense target (more are dropped)


def dense_targets(text: str, centers, n_cols: int, n_rows: int, scale: float, cell: int = 28) -> torch.Tensor:
    """[rows*cols, AUX_SLOTS] class ids: the characters (byte - 31; 0 = none) whose centre falls in each
    merged token's cell, left to right."""
    tgt = torch.zeros(n_rows * n_cols, AUX_SLOTS, dtype=torch.long)
    fill = [0] * (n_rows * n_cols)
    for ch, (x, y) in zip(text, centers):
        if ch == " ":
            continue
        r, c = min(int(y * scale // cell), n_rows - 1), min(int(x * scale // cell), n_cols - 1)
        k = r * n_cols + c
        if fill[k] < AUX_SLOTS:
            tgt[k, fill[k]] = min(max(ord(ch) - 31, 1), 95)
            fill[k] += 1
    return tgt


def build_batch(samples, ip: ImageProcessor, cfg, upscale: float, dense: bool = False):
    pad = cfg.media_placeholder_token_id
    bos, eos = cfg.text.bos_token_id, cfg.text.eos_token_id
    images, rows, targets, aux = [], [], [], []
    for img, text in samples:
        centers = img.info.get("centers")
        if upscale != 1:
            img = img.resize((round(img.width * upscale), round(img.height * upscale)), Image.Resampling.BICUBIC)
        images.append(img)
        n = ip.num_image_tokens(img.width, img.height)
        if dense:
            gh, gw = ip.plan(img.width, img.height).grid_hw
            aux.append(dense_targets(text, centers, gw // 2, gh // 2, upscale))
        tgt = list(text.encode()) + [eos]
        rows.append([bos] + [pad] * n + tgt)
        targets.append((1 + n, len(tgt)))
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), cfg.text.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, (start, n)) in enumerate(zip(rows, targets)):
        ids[i, : len(r)] = torch.tensor(r)
        labels[i, start - 1 : start - 1 + n] = torch.tensor(r[start : start + n])
    px = ip(images)
    if dense:
        px["dense"] = torch.cat(aux)
    return ids, labels, px


class DenseHead(torch.nn.Module):
    """Training-only reading head on the projector's outputs: each merged token names its characters."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = torch.nn.Linear(dim, AUX_SLOTS * 96)

    def forward(self, feats):
        return self.proj(feats).view(feats.shape[0], AUX_SLOTS, 96)


ORACLE: dict[str, torch.Tensor] = {}


def oracle_features(dense: torch.Tensor, dim: int) -> torch.Tensor:
    """Perfect vision for the LM-only probe: each image token is the sum of fixed random vectors of the
    characters in its cell (slot-dependent), so only the language model's reading-out is learned."""
    if "table" not in ORACLE:
        g = torch.Generator().manual_seed(99)
        ORACLE["table"] = torch.randn(AUX_SLOTS, 96, dim, generator=g)
        ORACLE["table"][:, 0] = 0
    t = ORACLE["table"]
    return sum(t[s][dense[:, s]] for s in range(AUX_SLOTS))


def loss_and_acc(model, ids, labels, px, head=None, aux_weight=1.0, dense_only=False):
    if dense_only:  # the vision-first phase: the reading head alone, no language-model pass
        feats = model.get_image_features(px["pixel_values"], px["image_grid_hws"])
        loss = F.cross_entropy(head(feats).flatten(0, 1), px["dense"].flatten())
        return loss, torch.zeros(())
    if "oracle" in px:
        feats = oracle_features(px["oracle"], model.config.text.hidden_size)
    else:
        feats = model.get_image_features(px["pixel_values"], px["image_grid_hws"])
    embeds = model.merge_image_features(ids, model.language_model.model.embed_tokens(ids), feats)
    logits = model.language_model(inputs_embeds=embeds).logits
    mask = labels != -100
    loss = F.cross_entropy(logits[mask].float(), labels[mask])
    acc = (logits[mask].argmax(-1) == labels[mask]).float().mean()
    if isinstance(head, torch.nn.Module) and "dense" in px:
        loss = loss + aux_weight * F.cross_entropy(head(feats).flatten(0, 1), px["dense"].flatten())
    elif head == "lm" and "dense" in px:
        # the LM's own output at each image position names that token's first character (or a space):
        # the visual tokens then speak the vocabulary the answer is written in
        is_img = ids == model.config.media_placeholder_token_id
        first = px["dense"][:, 0]
        tgt = torch.where(first > 0, first + 31, torch.full_like(first, 32))
        loss = loss + aux_weight * F.cross_entropy(logits[is_img].float(), tgt)
    return loss, acc


@torch.no_grad()
def greedy_cer(model, samples, ip, cfg, upscale: float, max_new: int = 40) -> tuple[float, list]:
    from rapidfuzz.distance import Levenshtein

    model.eval()
    errs, chars, shown = 0, 0, []
    for img, text in samples:
        ids, _, px = build_batch([(img, "")], ip, cfg, upscale)
        ids = ids[:, :-1]  # drop the EOS target: the prompt is BOS + image tokens
        seq = model.generate(input_ids=ids, pixel_values=px["pixel_values"], image_grid_hws=px["image_grid_hws"],
                             max_new_tokens=max_new, eos_token_id=cfg.text.eos_token_id)
        new = [t for t in seq[0, ids.shape[1]:].tolist() if t < 256]
        pred = bytes(new).decode("utf-8", "replace")
        errs += Levenshtein.distance(pred, text)
        chars += len(text)
        if len(shown) < 4:
            shown.append((text, pred))
    model.train()
    return 100.0 * errs / max(chars, 1), shown


class CnnCtc(torch.nn.Module):
    """The known-good baseline on the same task: a 4-block CNN over the line (height 32) and CTC over its
    columns, the classic CRNN recipe without the recurrent layer. Classes: CTC blank + bytes 32..126."""

    def __init__(self, width: int = 128):
        super().__init__()
        c = lambda i, o: torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o), torch.nn.ReLU())  # noqa: E731
        self.body = torch.nn.Sequential(c(1, 32), torch.nn.MaxPool2d(2), c(32, 64), torch.nn.MaxPool2d(2),
                                        c(64, width), torch.nn.MaxPool2d((2, 1)), c(width, width),
                                        torch.nn.MaxPool2d((4, 1)))
        self.cls = torch.nn.Conv1d(width, 96, 3, padding=1)

    def forward(self, x):  # [B, 1, 32, W] -> [W/4, B, 96] log-probs
        return self.cls(self.body(x).squeeze(2)).permute(2, 0, 1).log_softmax(-1)


def _cnn_batch(samples):
    ims = [img.convert("L").resize((max(4, round(img.width * 32 / img.height)), 32), Image.Resampling.BICUBIC)
           for img, _ in samples]
    W = max(im.width for im in ims)
    W += (-W) % 4
    x = torch.ones(len(ims), 1, 32, W)
    for i, im in enumerate(ims):
        x[i, 0, :, : im.width] = torch.tensor(list(im.getdata()), dtype=torch.float32).view(32, im.width) / 255
    tg = [torch.tensor([min(max(ord(ch) - 31, 1), 95) for ch in t]) for _, t in samples]
    return 1 - x, tg


def _cnn_decode(lp) -> list[str]:
    out = []
    for row in lp.argmax(-1).T.tolist():
        s, prev = [], 0
        for k in row:
            if k != prev and k != 0:
                s.append(chr(k + 31))
            prev = k
        out.append("".join(s))
    return out


def cnn_baseline(args, task, held) -> dict:
    from rapidfuzz.distance import Levenshtein

    torch.manual_seed(args.seed)
    net = CnnCtc()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    ctc = torch.nn.CTCLoss(zero_infinity=True)
    curve, seen, t0 = [], 0, time.perf_counter()
    while seen < args.images:
        x, tg = _cnn_batch([task.sample() for _ in range(args.batch)])
        lp = net(x)
        loss = ctc(lp, torch.cat(tg), torch.full((len(tg),), lp.shape[0]), torch.tensor([len(t) for t in tg]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += args.batch
        if seen % args.eval_every < args.batch:
            net.eval()
            with torch.no_grad():
                x, _ = _cnn_batch(held)
                preds = _cnn_decode(net(x))
            net.train()
            errs = sum(Levenshtein.distance(p, t) for p, (_, t) in zip(preds, held))
            point = {"images": seen, "train_loss": float(loss), "heldout_cer": 100.0 * errs / sum(len(t) for _, t in held),
                     "seconds": round(time.perf_counter() - t0, 1)}
            curve.append(point)
            print(json.dumps(point), flush=True)
    return {"args": vars(args), "curve": curve}


def _save(out: str | None, result: dict) -> dict:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="lines", choices=["words200", "lines"])
    ap.add_argument("--init", default="kvl", help="kvl (kvl_core.training.init), legacy (N(0,0.02) everywhere), torch")
    ap.add_argument("--opt", default="muon", choices=["muon", "adamw"])
    ap.add_argument("--lr", type=float, default=3e-4, help="peak LR of the Muon matrices (or all, with --opt adamw)")
    ap.add_argument("--lr-adamw", type=float, default=None, help="peak LR of the AdamW group (default: --lr)")
    ap.add_argument("--lr-vision", type=float, default=None,
                    help="peak LR of the vision tower and projector (default: --lr; the AdamW group follows --lr-adamw)")
    ap.add_argument("--warmup", type=int, default=30, help="steps")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--upscale", type=float, default=1.0)
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--eval-every", type=int, default=1000, help="images")
    ap.add_argument("--heldout", type=int, default=48)
    ap.add_argument("--greedy", action="store_true", help="greedy CER at every eval, not only at the end")
    ap.add_argument("--dense", type=float, default=0.0, help="weight of the dense per-token reading loss (0: off)")
    ap.add_argument("--dense-mode", default="head", choices=["head", "lm"],
                    help="head: a linear reading head on the projector outputs; lm: the LM's own logits at image positions")
    ap.add_argument("--max-words", type=int, default=4)
    ap.add_argument("--max-word-len", type=int, default=7)
    ap.add_argument("--vision-first", type=int, default=0,
                    help="images trained on the dense reading head alone (vision + projector) before the LM loss joins")
    ap.add_argument("--oracle", action="store_true", help="LM only: image tokens carry their characters exactly")
    ap.add_argument("--baseline", action="store_true", help="train the CNN+CTC baseline instead of kvl-nano")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    LINE_SHAPE.update(max_words=args.max_words, max_word_len=args.max_word_len)
    task = Task(args.task, args.seed)
    held_rng = random.Random(10_000 + args.seed)
    held = [task.sample(held_rng, heldout=True) for _ in range(args.heldout)]
    held_in = [task.sample(held_rng, heldout=False) for _ in range(args.heldout)] if args.task == "lines" else []
    if args.baseline:
        result = cnn_baseline(args, task, held)
        return _save(args.out, result)
    torch.manual_seed(args.seed)
    cfg = preset("nano")
    cfg.torch_dtype = "float32"
    model = KimiVLForConditionalGeneration(cfg)
    if args.init != "torch":
        init_weights(model, cfg.text.initializer_range, args.seed, scheme=args.init)
    model.train()
    ip = ImageProcessor(in_token_limit=4096)
    head = (DenseHead(cfg.text.hidden_size) if args.dense_mode == "head" else "lm") if args.dense else None
    groups = []
    for part, lr in ((model.vision_tower, args.lr_vision or args.lr), (model.multi_modal_projector, args.lr_vision or args.lr),
                     (model.language_model, args.lr)):
        groups += param_groups_for(part, lr=lr, weight_decay=0.0, adamw_only=args.opt == "adamw")
    if isinstance(head, torch.nn.Module):
        groups += param_groups_for(head, lr=args.lr, weight_decay=0.0, adamw_only=True)
    for g in groups:
        if g["algo"] == "adamw" and args.lr_adamw is not None:
            g["lr"] = args.lr_adamw
        g["peak"] = g["lr"]
    opt = Muon(groups, track_rms=False)
    steps = math.ceil(args.images / args.batch)
    curve, t0, seen, run_loss, run_n = [], time.perf_counter(), 0, 0.0, 0

    def evaluate():
        with torch.no_grad():
            model.eval()
            ids, labels, px = build_batch(held, ip, cfg, args.upscale, dense=args.oracle)
            if args.oracle:
                px["oracle"] = px.pop("dense")
            hl, ha = loss_and_acc(model, ids, labels, px)
            model.train()
        point = {"images": seen, "train_loss": run_loss / max(run_n, 1), "heldout_loss": float(hl),
                 "heldout_byte_acc": float(ha), "seconds": round(time.perf_counter() - t0, 1)}
        final = seen >= args.images
        if (args.greedy or final) and not args.oracle:
            point["heldout_cer"], shown = greedy_cer(model, held[:24], ip, cfg, args.upscale)
            if held_in:
                point["indist_cer"], _ = greedy_cer(model, held_in[:24], ip, cfg, args.upscale)
            point["examples"] = shown
        curve.append(point)
        print(json.dumps({k: v for k, v in point.items() if k != "examples"}), flush=True)
        if "examples" in point:
            for t, p in point["examples"]:
                print(f"   {t!r:28} -> {p!r}", flush=True)

    for step in range(steps):
        scale = min(1.0, (step + 1) / max(args.warmup, 1))
        scale *= 0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1 if step >= args.warmup else 1.0
        for g in opt.param_groups:
            g["lr"] = g["peak"] * scale
        ids, labels, px = build_batch([task.sample() for _ in range(args.batch)], ip, cfg, args.upscale,
                                      dense=head is not None or args.oracle)
        if args.oracle:
            px["oracle"] = px.pop("dense")
        loss, _ = loss_and_acc(model, ids, labels, px, head, args.dense,
                               dense_only=seen < args.vision_first and isinstance(head, torch.nn.Module))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += args.batch
        run_loss += float(loss.detach())
        run_n += 1
        if seen // args.eval_every != (seen - args.batch) // args.eval_every or step == steps - 1:
            evaluate()
            run_loss, run_n = 0.0, 0
    return _save(args.out, {"args": vars(args), "curve": curve})


def plot(png: str, files: list[str]) -> None:
    """Learning curves of several probe JSONs side by side: held-out loss per byte and CER vs images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, f in enumerate(files):
        color = f"C{i % 10}"  # one colour per run in both panels
        text = Path(f).read_text()
        # a finished run's JSON, or the log of a run (one JSON point per line) stopped early
        pts = json.loads(text)["curve"] if f.endswith(".json") else [
            json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]
        label = Path(f).stem
        if any("heldout_loss" in p for p in pts):
            a.plot([p["images"] for p in pts], [p["heldout_loss"] for p in pts], marker=".", label=label, color=color)
        cer = [p for p in pts if "heldout_cer" in p]
        if cer:
            b.plot([p["images"] for p in cer], [p["heldout_cer"] for p in cer], marker="o", label=label, color=color)
    a.set_title("held-out loss per target byte (kvl-nano runs)"), a.set_xlabel("images seen"), a.grid(alpha=.3)
    b.set_title("held-out CER % (unseen fonts and strings)"), b.set_xlabel("images seen"), b.grid(alpha=.3)
    b.set_ylim(0, 110)
    a.legend(fontsize=7), b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)


if __name__ == "__main__":
    if sys.argv[1:2] == ["plot"]:
        plot(sys.argv[2], sys.argv[3:])
    else:
        main()
