"""Dense reading targets for training a Kimi-VL from scratch (kvl-nano): per-patch character labels and
the "oracle" visual tokens they define.

Why (docs/nano.md, "Sample efficiency"): a from-scratch model has to learn two hard things at once from
the answer text alone: glyphs (the vision tower) and where on the page the next character is (the
language model's read-out alignment). Each hides the other's learning signal, so the joint model sits on
the unigram plateau for tens of thousands of images. Splitting them makes both cheap:

  * the vision tower learns glyphs from a per-patch label ("which characters have their centre in this
    14-px patch"), the dense signal a CNN+CTC reader gets for free;
  * the language model learns to read out from *oracle* visual tokens, the tokens a perfect vision tower
    would produce: each merged token is a sum of fixed random vectors, one per (patch position in the
    2x2 merge, slot, character class), plus a bold flag. No image is decoded or encoded for this, so the
    LM sees tens of thousands of pages in the time the ViT needs for a few thousand;
  * the projector is trained to produce exactly those tokens (MSE), so the two halves meet with no
    alignment left to learn; joint training then fine-tunes both on the real answer.

The labels come from where the renderer put every character (`kvl_core.synth.documents.glyphs`).

Shape legend: L patches of a batch (sum of gh*gw), M merged tokens (L / 4), S = SLOTS per patch,
K = 4 patches per merged token, C = N_CLASSES, E the LM's hidden size, D the ViT's hidden size.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

SLOTS = 2  # characters whose centre falls in one patch (left to right); more are dropped
# 0: no character; 1..95: ASCII 32..126 (space included: a gap between words is something to see);
# 96: the bullet U+2022; 97: any other character
N_CLASSES = 98
NONE, BULLET, OTHER = 0, 96, 97
NONE_WEIGHT = 0.1
POSITION_CODES = ("fourier", "digits")
POS_FREQS = 8  # Fourier frequencies per axis of the oracle's position vector


def char_class(ch: str) -> int:
    o = ord(ch)
    if 32 <= o <= 126:
        return o - 31
    return BULLET if ch == "\u2022" else OTHER


def glyph_slots(glyphs: Iterable, image_wh: tuple[int, int], resized_wh: tuple[int, int],
                grid_hw: tuple[int, int], patch: int = 14) -> list[tuple[int, int] | None]:
    """(patch index, slot) of each glyph (`.x .y`, in the original image's pixels): the patch holding its centre
    after the processor's resize, slots filled in drawing order (left to right within a line); None for a glyph
    whose patch already holds SLOTS."""
    gh, gw = grid_hw
    sx, sy = resized_wh[0] / image_wh[0], resized_wh[1] / image_wh[1]
    fill = [0] * (gh * gw)
    out: list[tuple[int, int] | None] = []
    for g in glyphs:
        r = min(max(int(g.y * sy // patch), 0), gh - 1)
        c = min(max(int(g.x * sx // patch), 0), gw - 1)
        k = r * gw + c
        out.append((k, fill[k]) if fill[k] < SLOTS else None)
        fill[k] += 1
    return out


def patch_labels(glyphs: Iterable, image_wh: tuple[int, int], resized_wh: tuple[int, int],
                 grid_hw: tuple[int, int], patch: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """(chars [gh*gw, S], bold [gh*gw]) of one image: each glyph (`.char .x .y .bold`) in its `glyph_slots`
    place. bold is -100 (ignored) where a patch holds no glyph."""
    glyphs = list(glyphs)
    gh, gw = grid_hw
    chars = torch.zeros(gh * gw, SLOTS, dtype=torch.long)
    bold = torch.full((gh * gw,), -100, dtype=torch.long)
    for g, place in zip(glyphs, glyph_slots(glyphs, image_wh, resized_wh, grid_hw, patch)):
        if place is None:
            continue
        k, slot = place
        chars[k, slot] = char_class(g.char)
        if g.char != " ":
            bold[k] = max(int(bold[k]), int(g.bold))
    return chars, bold


def to_merged(t: torch.Tensor, grid_hw: tuple[int, int], merge: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """Per-patch rows [gh*gw, ...] -> [M, K, ...] in the patch merger's order (merged tokens row-major,
    the K patches of each row-major inside it)."""
    gh, gw = grid_hw
    kh, kw = merge
    rest = t.shape[1:]
    t = t.reshape(gh // kh, kh, gw // kw, kw, *rest).transpose(1, 2)
    return t.reshape((gh // kh) * (gw // kw), kh * kw, *rest)


class Oracle(nn.Module):
    """The visual tokens a perfect vision tower would give: [M, K, S] char classes (+ [M, K] bold) ->
    [M, E]. Fixed random vectors (seeded; never trained): what they mean is learned by the LM (read-out)
    and by the projector (production), each against the same fixed target."""

    def __init__(self, hidden: int, seed: int = 0, kernel: int = 4, scale: float = 1.0, position_code: str = "fourier"):
        super().__init__()
        if position_code not in POSITION_CODES:
            raise ValueError(f"position_code must be one of {POSITION_CODES}, not {position_code!r}")
        self.position_code = position_code
        g = torch.Generator().manual_seed(10_007 + seed)
        chars = torch.randn(kernel * SLOTS, N_CLASSES, hidden, generator=g) * (scale / math.sqrt(SLOTS))
        chars[:, NONE] = 0
        self.register_buffer("chars", chars, persistent=False)
        self.register_buffer("bold", torch.randn(kernel, hidden, generator=g) * (scale / math.sqrt(SLOTS)),
                             persistent=False)
        # Where the token is (for grounding: the read-out has to say where things are): a fixed random
        # projection of Fourier features of the token's centre, x and y in [0, 1] of the image. Smooth in
        # the position, so nearby tokens get nearby vectors; each axis has about one character's norm.
        # Its own generator: the character vectors above stay what the earlier stages learned.
        gp = torch.Generator().manual_seed(20_011 + seed)
        self.register_buffer("freqs", 2 * math.pi * torch.logspace(-1, math.log10(16), POS_FREQS), persistent=False)
        self.register_buffer("pos", torch.randn(2, 2 * POS_FREQS, hidden, generator=gp) * (scale / math.sqrt(2 * POS_FREQS)),
                             persistent=False)
        # "digits": the first two decimals of x and of y, each a fixed random vector like a character's, so that
        # the answer's "x=0.19" is read off the target's token the way its letters are (a copy, not a decode
        # of sines). Own generator, as above.
        gd = torch.Generator().manual_seed(30_011 + seed)
        self.register_buffer("digits", torch.randn(2, 2, 10, hidden, generator=gd) * (scale / math.sqrt(SLOTS)),
                             persistent=False)

    def position(self, pos: torch.Tensor) -> torch.Tensor:
        """[M, 2] centres (x, y) in [0, 1] -> [M, E]."""
        if self.position_code == "digits":
            hundredths = (pos.clamp(0, 0.999) * 100).long()  # [M, 2]
            out = torch.zeros(pos.shape[0], self.digits.shape[-1], dtype=self.digits.dtype, device=pos.device)
            for axis in range(2):
                out += self.digits[axis, 0][hundredths[:, axis] // 10] + self.digits[axis, 1][hundredths[:, axis] % 10]
            return out
        ang = pos.to(self.freqs.dtype).unsqueeze(-1) * self.freqs  # [M, 2, F]
        feats = torch.cat([ang.sin(), ang.cos()], -1)  # [M, 2, 2F]
        return torch.einsum("maf,afe->me", feats, self.pos)

    def forward(self, chars: torch.Tensor, bold: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        m = chars.shape[0]
        flat = chars.reshape(m, -1)  # [M, K*S]
        out = torch.zeros(m, self.chars.shape[-1], dtype=self.chars.dtype, device=chars.device)
        for j in range(flat.shape[1]):
            out += self.chars[j][flat[:, j]]
        if bold is not None:
            out += (bold.clamp(min=0).to(out.dtype).unsqueeze(-1) * self.bold).sum(1)
        if pos is not None:
            out += self.position(pos)
        return out


class DenseHead(nn.Module):
    """Training-only reading head on the ViT's patch outputs: S character slots + bold per patch."""

    def __init__(self, vision_hidden: int):
        super().__init__()
        self.chars = nn.Linear(vision_hidden, SLOTS * N_CLASSES)
        self.bold = nn.Linear(vision_hidden, 2)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # feats [L, D] -> char logits [L, S, C], bold logits [L, 2]
        return self.chars(feats).view(feats.shape[0], SLOTS, N_CLASSES), self.bold(feats)

    def loss(self, feats: torch.Tensor, chars: torch.Tensor, bold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(CE over every slot + bold where a glyph is, accuracy over the non-empty slots). Empty slots
        weigh NONE_WEIGHT: ~95% of a page's slots are empty, and at full weight they drown the glyphs'
        signal, so the tower spends thousands of images learning only where ink is."""
        lc, lb = self(feats)
        w = torch.ones(N_CLASSES, device=lc.device)
        w[NONE] = NONE_WEIGHT
        loss = F.cross_entropy(lc.flatten(0, 1).float(), chars.flatten(), weight=w)
        if (bold >= 0).any():
            loss = loss + 0.25 * F.cross_entropy(lb.float(), bold, ignore_index=-100)
        filled = chars > 0
        acc = (lc.argmax(-1)[filled] == chars[filled]).float().mean() if filled.any() else torch.zeros(())
        return loss, acc.detach()


def merged_targets(per_image: Sequence[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate per-image (chars, bold, grid) into patch-level [L, S], [L] and merged [M, K, S], [M, K]."""
    cs, bs, mc, mb = [], [], [], []
    for chars, bold, grid in per_image:
        cs.append(chars)
        bs.append(bold)
        mc.append(to_merged(chars, grid))
        mb.append(to_merged(bold, grid))
    return torch.cat(cs), torch.cat(bs), torch.cat(mc), torch.cat(mb)


def merged_positions(grids: Sequence[tuple[int, int]], merge: tuple[int, int] = (2, 2)) -> torch.Tensor:
    """[M, 2] centre (x, y) of every merged token of the images, in [0, 1] of its image, merger order."""
    out = []
    for gh, gw in grids:
        mh, mw = gh // merge[0], gw // merge[1]
        y, x = torch.meshgrid((torch.arange(mh) + 0.5) / mh, (torch.arange(mw) + 0.5) / mw, indexing="ij")
        out.append(torch.stack([x.flatten(), y.flatten()], -1))
    return torch.cat(out)




# ---- the reading stages ---------------------------------------------------------------------------
#
#   read-vit   vision tower + projector (+ DenseHead): per-patch CE on crops of documents, and the
#              projector's merged tokens regressed onto the oracle tokens (MSE). No LM pass.
#   read-lm    language model only, on the OCR chats with the oracle tokens in the image slots: the
#              read-out (alignment, markdown) is learned without encoding a single image.
#   read-joint everything, on the real images: the answer's CE plus the dense losses (weight `aux`).

READ_MODES = ("read-vit", "read-lm", "read-joint")


@dataclass
class ReadConfig:
    mode: str
    out: str
    data: str | list[str]  # chats JSONL whose lines carry "glyphs" (synth kinds ocr, line, screen), PATH[:WEIGHT]
    steps: int
    batch: int  # images per optimizer step
    lr: float  # peak LR of the language model's groups
    lr_vision: float  # peak LR of the vision tower, projector and dense head
    model: str | None = None  # the previous stage's final/ ...
    preset: str | None = None  # ... or a fresh model of this preset
    tokenizer: str | None = None  # fresh presets: tokenizer files from here
    seed: int = 0
    warmup: int = 30
    crop: tuple[int, int] = (320, 96)  # read-vit: max crop (w, h) in original pixels
    aux: float = 0.5  # read-joint: weight of the dense losses
    positions: bool = False  # oracle tokens say where they are (Oracle.position): for grounding
    position_code: str = "fourier"  # how they say it (POSITION_CODES)
    device: str = "auto"


@dataclass
class _Doc:
    image: str
    messages: list[dict]
    glyphs: list


def _read_docs(path: str) -> list[_Doc]:
    from kvl_core.errors import KvlError
    from kvl_core.synth.documents import Glyph

    base = Path(path).parent
    docs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            row = json.loads(line)
            if "glyphs" not in row:
                raise KvlError(f"{path}:{lineno}: no 'glyphs' (the reading stages need the renderer's glyph "
                               "positions; generate the data with kvl_core.synth.write_train('ocr', ...))")
            msgs = row["messages"]
            image = next(p["image"] for m in msgs if isinstance(m["content"], list) for p in m["content"]
                         if p.get("type") == "image")
            glyphs = [Glyph(c, x, y, 0, bool(b)) for c, x, y, b in row["glyphs"]]  # size is not stored
            docs.append(_Doc(str(base / image), msgs, glyphs))
    return docs


def _order(n: int, seed: int, epoch: int, source: int = 0) -> list[int]:
    idx = list(range(n))
    random.Random(f"kvl-read/{seed}/{epoch}" + (f"/{source}" if source else "")).shuffle(idx)
    return idx


def _sources(data: str | list[str]) -> list[tuple[str, float]]:
    """`PATH[:WEIGHT]` specs (the trainer's syntax) -> [(path, weight)]."""
    from kvl_core.training.data import split_weight

    return [split_weight(spec) for spec in ([data] if isinstance(data, str) else data)]


class _Batches:
    """The documents of each step. One source: shuffled epochs, `batch` at a time (a ragged tail is
    dropped). Several: each image's source drawn by weight (seeded per step), each source read in its
    own shuffled epochs, so a small source repeats while a large one is still on its first pass."""

    def __init__(self, sources: list[list[_Doc]], weights: list[float], batch: int, seed: int):
        self.sources, self.weights, self.batch, self.seed = sources, weights, batch, seed
        self.cursor = [0] * len(sources)
        self._orders: dict[int, tuple[int, list[int]]] = {}  # source -> (epoch, its order): the current one

    def take(self, step: int) -> list[_Doc]:
        if len(self.sources) == 1:
            docs = self.sources[0]
            epoch, k = divmod(step, max(1, len(docs) // self.batch))
            order = _order(len(docs), self.seed, epoch)
            return [docs[i] for i in order[k * self.batch:(k + 1) * self.batch]]
        rng = random.Random(f"kvl-read/{self.seed}/{step}/mix")
        out = []
        for s in rng.choices(range(len(self.sources)), weights=self.weights, k=self.batch):
            docs = self.sources[s]
            epoch, k = divmod(self.cursor[s], len(docs))
            if self._orders.get(s, (None,))[0] != epoch:
                self._orders[s] = (epoch, _order(len(docs), self.seed, epoch, s + 1))
            out.append(docs[self._orders[s][1][k]])
            self.cursor[s] += 1
        return out


def _crop(img, glyphs, rng: random.Random, max_wh: tuple[int, int]):
    """A random window of at most `max_wh` px and the glyphs whose centre is inside it (shifted)."""
    from dataclasses import replace

    w, h = img.size
    cw, ch = min(w, rng.randint(max_wh[0] // 2, max_wh[0])), min(h, rng.randint(max_wh[1] // 2, max_wh[1]))
    x0, y0 = rng.randint(0, w - cw), rng.randint(0, h - ch)
    inside = [replace(g, x=g.x - x0, y=g.y - y0) for g in glyphs if x0 <= g.x < x0 + cw and y0 <= g.y < y0 + ch]
    return img.crop((x0, y0, x0 + cw, y0 + ch)), inside


class _Schedule:
    def __init__(self, groups: list[dict], steps: int, warmup: int):
        self.groups, self.steps, self.warmup = groups, steps, warmup
        for g in groups:
            g.setdefault("peak", g["lr"])

    def lr_scale(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.steps - self.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    def apply(self, step: int) -> float:
        s = self.lr_scale(step)
        for g in self.groups:
            g["lr"] = g["peak"] * s
        return s


def train_reading(cfg: ReadConfig, on_event=None) -> dict:
    """Run one reading stage; writes `out/final` (HF layout + side files + dense_head.safetensors)."""
    import time

    from safetensors.torch import load_file, save_file

    from kvl_core.errors import KvlError
    from kvl_core.processor.chat import Processor
    from kvl_core.processor.image import load_image
    from kvl_core.training.muon import Muon, param_groups_for
    from kvl_core.training.trainer import (ExpertLoad, _device, load_model, plot_metrics, publish_final,
                                           write_checkpoint)

    if cfg.mode not in READ_MODES:
        raise KvlError(f"unknown reading stage {cfg.mode!r}; one of {', '.join(READ_MODES)}")
    emit = on_event or (lambda kind, info: None)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = _device(cfg.device)
    model, side_dir = load_model(Path(cfg.model) if cfg.model else None, cfg.preset, out, cfg.seed, dev,
                                 tokenizer=cfg.tokenizer)
    model.train()
    processor = Processor.from_pretrained(side_dir)
    ip = processor.image_processor
    sources = _sources(cfg.data)
    batches = _Batches([_read_docs(p) for p, _ in sources], [w for _, w in sources], cfg.batch, cfg.seed)
    torch.manual_seed(cfg.seed + 7)
    head = DenseHead(model.config.vision.hidden_size).to(dev)
    if cfg.model and (Path(cfg.model) / "dense_head.safetensors").exists():
        head.load_state_dict(load_file(str(Path(cfg.model) / "dense_head.safetensors")))
    oracle = Oracle(model.config.text.hidden_size, seed=cfg.seed, position_code=cfg.position_code).to(dev)

    vision_parts = [model.vision_tower, model.multi_modal_projector]
    train_vision = cfg.mode in ("read-vit", "read-joint")
    train_lm = cfg.mode in ("read-lm", "read-joint")
    for p in model.parameters():
        p.requires_grad_(False)
    groups = []
    if train_vision:
        for part in vision_parts:
            part.requires_grad_(True)
            groups += param_groups_for(part, lr=cfg.lr_vision, weight_decay=0.0)
        groups += param_groups_for(head, lr=cfg.lr_vision, weight_decay=0.0, adamw_only=True)
    if train_lm:
        model.language_model.requires_grad_(True)
        for n, p in model.language_model.named_parameters():
            if n.endswith("e_score_correction_bias"):
                p.requires_grad_(False)
        groups += param_groups_for(model.language_model, lr=cfg.lr, weight_decay=0.0)
    groups = [g for g in groups if g["params"]]
    opt = Muon(groups, track_rms=False)
    sched = _Schedule(opt.param_groups, cfg.steps, cfg.warmup)
    load = ExpertLoad(model) if train_lm else None
    params = [p for g in opt.param_groups for p in g["params"]]

    metrics = out / "metrics.jsonl"
    metrics.write_text("")
    emit("start", {"steps": cfg.steps, "step": 0, "stage": cfg.mode, "frozen": [], "world": 1})
    t0 = time.perf_counter()
    last: dict = {}
    for step in range(cfg.steps):
        t_step = time.perf_counter()
        scale = sched.apply(step)
        batch = batches.take(step)
        rng = random.Random(f"kvl-read/{cfg.seed}/{step}")
        rows, per_image, images = [], [], []
        for d in batch:
            img = load_image(d.image)
            glyphs = d.glyphs
            if cfg.mode == "read-vit":
                img, glyphs = _crop(img, glyphs, rng, cfg.crop)
                plan = ip.plan(img.width, img.height)
            else:
                msgs = [{**m, "content": [{"type": "image", "image": img} if p.get("type") == "image" else p
                                          for p in m["content"]]} if isinstance(m["content"], list) else m
                        for m in d.messages]
                enc = processor.encode(msgs, add_generation_prompt=False, pixels=False)  # the images go in below
                plan = ip.plan(img.width, img.height)
                rows.append((enc.input_ids, enc.assistant_mask))
            images.append(img)
            chars, bold = patch_labels(glyphs, plan.image_wh, plan.resized_wh, plan.grid_hw, ip.patch_size)
            per_image.append((chars, bold, plan.grid_hw))
        pc, pb, mc, mb = (t.to(dev) for t in merged_targets(per_image))
        pos = merged_positions([g for _, _, g in per_image]).to(dev) if cfg.positions else None
        tokens = sum(len(r[0]) for r in rows) if rows else len(mc)
        loss = torch.zeros((), device=dev)
        info: dict = {}
        if train_vision:
            px = ip(images)
            grids = px["image_grid_hws"].to(dev)
            fp = model.vision_tower(px["pixel_values"].to(dev), grids)
            feats = model.multi_modal_projector(model.vision_tower.patch_merger(fp, grids))
            dl, acc = head.loss(fp, pc, pb)
            mse = F.mse_loss(feats, oracle(mc, mb, pos))
            info.update(dense=float(dl.detach()), slot_acc=float(acc), mse=float(mse.detach()))
            loss = loss + (1.0 if cfg.mode == "read-vit" else cfg.aux) * (dl + mse)
        else:
            feats = oracle(mc, mb, pos)
        if train_lm:
            T = max(len(r[0]) for r in rows)
            pad = processor.tokenizer.pad_id
            ids = torch.full((len(rows), T), pad, dtype=torch.long)
            labels = torch.full((len(rows), T), -100, dtype=torch.long)
            for i, (r, mask) in enumerate(rows):
                ids[i, :len(r)] = torch.tensor(r)
                for t in range(1, len(r)):
                    if mask[t]:
                        labels[i, t - 1] = r[t]
            ids, labels = ids.to(dev), labels.to(dev)
            emb = model.merge_image_features(ids, model.language_model.model.embed_tokens(ids), feats)
            load.real = (labels != -100).flatten() | (ids != pad).flatten()
            logits = model.language_model(inputs_embeds=emb).logits
            sup = labels != -100
            ce = F.cross_entropy(logits[sup].float(), labels[sup])
            info.update(lm=float(ce.detach()), byte_acc=float((logits[sup].argmax(-1) == labels[sup]).float().mean()))
            loss = loss + ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
        opt.step()
        if load is not None:
            load.update_biases(1e-3, lambda x: x)
        last = {"step": step + 1, "loss": float(loss.detach()), "lr": groups[0]["peak"] * scale, "grad_norm": gn,
                "tok_s": tokens / max(1e-9, time.perf_counter() - t_step), "step_s": time.perf_counter() - t_step,
                "images": (step + 1) * cfg.batch, "seconds": round(time.perf_counter() - t0, 1), **info}
        with metrics.open("a") as f:
            f.write(json.dumps(last) + "\n")
        emit("step", last)

    def extra(tmp: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
                  str(tmp / "dense_head.safetensors"))

    model.eval()
    # the trainer's state layout where it applies (images seen as the data counter), so tools read both alike
    state = {"step": cfg.steps, "stage": cfg.mode, "data": {"counters": {"samples": cfg.steps * cfg.batch}}}
    path = write_checkpoint(out, cfg.steps, model, side_dir, state, extra=extra, keep=1)
    publish_final(out, path)
    keys = {"read-vit": ["dense", "mse"], "read-lm": ["lm"], "read-joint": ["lm", "dense", "mse"]}[cfg.mode]
    plot_metrics(metrics, out / "loss.png", title=f"kvl-nano {cfg.mode}",
                 panels=[("loss", ["loss", *keys]), ("accuracy", ["slot_acc", "byte_acc"])], x="images")
    summary = {"final": str(out / "final"), "steps": cfg.steps, "loss": last.get("loss")}
    emit("end", summary)
    return summary


__all__ = ["SLOTS", "N_CLASSES", "POSITION_CODES", "READ_MODES", "ReadConfig", "char_class", "glyph_slots", "patch_labels", "to_merged",
           "merged_targets", "merged_positions", "Oracle", "DenseHead", "train_reading"]
