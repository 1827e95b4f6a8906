"""Probe of the split that kvl-nano's reading stages use (docs/nano.md, "How it learns to read"), on
bench/nano_probe.py's `lines` task (random strings, training fonts; held out: Aileron, DejaVu Serif Italic), 2x:

  A  the language model alone reads *oracle* visual tokens (fixed random vectors per patch position, slot
     and character): the read-out alignment, with no image encoded
  B  the vision tower + projector alone: dense per-patch character labels, and the projector regressed
     onto the oracle tokens
  C  both checkpoints joined and trained together on the answer (plus the dense losses)
  E2E  the same model from scratch, everything at once (the baseline)

    python bench/nano_oracle.py A --images 20000 --out bench/results/oracleA.pt    # writes .pt + .pt.log
    python bench/nano_oracle.py B --images 16000 --out bench/results/oracleB.pt
    python bench/nano_oracle.py C --lm bench/results/oracleA.pt --vis bench/results/oracleB.pt --out ...

`--mode cell` puts the labels on merged tokens (4 slots) instead of patches (2 slots each). A and B are
independent: run them side by side with --threads 1. This is a probe (its own loop, `torch.save` of its
own checkpoints); the recipe's stages are kvl_core/training/reading.py.
"""
import argparse, json, math, random, sys, time
from pathlib import Path
import torch, torch.nn.functional as F
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import nano_probe as NP  # noqa: E402
from kvl_core.config import preset
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.processor.image import ImageProcessor
from kvl_core.training.init import init_weights
from kvl_core.training.muon import Muon, param_groups_for
from PIL import Image

SLOTS = 4
PS = 2  # per-patch slots
NCLS = 96  # 0 none, 1 space (32) ... 95 (126)

def cls_of(ch):
    return min(max(ord(ch) - 31, 1), 95)

def dense(text, centers, n_cols, n_rows, scale, cell=28):
    tgt = torch.zeros(n_rows * n_cols, SLOTS, dtype=torch.long)
    fill = [0] * (n_rows * n_cols)
    for ch, (x, y) in zip(text, centers):
        r, c = min(int(y * scale // cell), n_rows - 1), min(int(x * scale // cell), n_cols - 1)
        k = r * n_cols + c
        if fill[k] < SLOTS:
            tgt[k, fill[k]] = cls_of(ch); fill[k] += 1
    return tgt

def dense_patch(text, centers, gw, gh, scale):
    tgt = torch.zeros(gh * gw, PS, dtype=torch.long); fill = [0] * (gh * gw)
    for ch, (x, y) in zip(text, centers):
        r, c = min(int(y * scale // 14), gh - 1), min(int(x * scale // 14), gw - 1)
        k = r * gw + c
        if fill[k] < PS:
            tgt[k, fill[k]] = cls_of(ch); fill[k] += 1
    return tgt

def to_merged(t, gh, gw):  # [gh*gw, PS] -> [M, 4*PS] in patch_merger order
    return t.view(gh // 2, 2, gw // 2, 2, PS).permute(0, 2, 1, 3, 4).reshape((gh // 2) * (gw // 2), 4 * PS)

def batch(samples, ip, cfg, up):
    pad, bos, eos = cfg.media_placeholder_token_id, cfg.text.bos_token_id, cfg.text.eos_token_id
    ims, rows, tg, dn, dm = [], [], [], [], []
    for img, text in samples:
        c = img.info["centers"]
        img = img.resize((round(img.width * up), round(img.height * up)), Image.Resampling.BICUBIC)
        ims.append(img)
        gh, gw = ip.plan(img.width, img.height).grid_hw
        if MODE == "patch":
            d = dense_patch(text, c, gw, gh, up); dn.append(d); dm.append(to_merged(d, gh, gw))
        else:
            d = dense(text, c, gw // 2, gh // 2, up); dn.append(d); dm.append(d)
        n = (gh // 2) * (gw // 2)
        t = list(text.encode()) + [eos]
        rows.append([bos] + [pad] * n + t); tg.append((1 + n, len(t)))
    T = max(map(len, rows))
    ids = torch.full((len(rows), T), cfg.text.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, (s, n)) in enumerate(zip(rows, tg)):
        ids[i, :len(r)] = torch.tensor(r); labels[i, s - 1:s - 1 + n] = torch.tensor(r[s:s + n])
    return ids, labels, ims, torch.cat(dn), torch.cat(dm)

class Oracle(torch.nn.Module):
    def __init__(self, dim, seed=99):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        n = 4 * PS if MODE == "patch" else SLOTS
        t = torch.randn(n, NCLS, dim, generator=g) / math.sqrt(2)
        t[:, 0] = 0
        self.register_buffer("table", t)
    def forward(self, d):  # [M, n] -> [M, dim]
        return sum(self.table[s][d[:, s]] for s in range(d.shape[1]))

def vision(model, ip, ims):
    px = ip(ims); g = px["image_grid_hws"]
    fp = model.vision_tower(px["pixel_values"], g)
    return fp, model.multi_modal_projector(model.vision_tower.patch_merger(fp, g))

def dense_logits(head, fp, feats):
    x = fp if MODE == "patch" else feats
    return head(x).view(x.shape[0], -1, NCLS)

def lm_loss(model, ids, labels, feats):
    emb = model.merge_image_features(ids, model.language_model.model.embed_tokens(ids), feats)
    logits = model.language_model(inputs_embeds=emb).logits
    m = labels != -100
    return F.cross_entropy(logits[m].float(), labels[m]), (logits[m].argmax(-1) == labels[m]).float().mean()

@torch.no_grad()
def greedy(model, ids, feats, eos, max_new=40):
    # ids: [1, T0] prompt (BOS + pads); feats for the pads
    out = []
    cur = ids
    for _ in range(max_new):
        emb = model.merge_image_features(cur, model.language_model.model.embed_tokens(cur), feats)
        nxt = int(model.language_model(inputs_embeds=emb).logits[0, -1].argmax())
        if nxt == eos: break
        out.append(nxt); cur = torch.cat([cur, torch.tensor([[nxt]])], 1)
    return bytes(t for t in out if t < 256).decode("utf-8", "replace")

def cer(model, held, ip, cfg, up, oracle=None, n=24):
    from rapidfuzz.distance import Levenshtein
    model.eval(); errs = chars = 0; shown = []
    for img, text in held[:n]:
        ids, _, ims, _, _ = batch([(img, "")], ip, cfg, up)
        ids = ids[:, :-1]
        if oracle is not None:
            feats = oracle(batch([(img, text)], ip, cfg, up)[4])
        else:
            feats = vision(model, ip, ims)[1]
        p = greedy(model, ids, feats, cfg.text.eos_token_id)
        errs += Levenshtein.distance(p, text); chars += len(text)
        if len(shown) < 3: shown.append((text, p))
    model.train()
    return 100.0 * errs / chars, shown

def sched(opt, step, steps, warm=30):
    s = min(1.0, (step + 1) / warm)
    if step >= warm: s = 0.5 * (1 + math.cos(math.pi * step / steps)) * 0.9 + 0.1
    for g in opt.param_groups: g["lr"] = g["peak"] * s

def make_opt(parts_lrs, extra=()):
    groups = []
    for part, lr in parts_lrs:
        groups += param_groups_for(part, lr=lr, weight_decay=0.0)
    for mod, lr in extra:
        groups += param_groups_for(mod, lr=lr, weight_decay=0.0, adamw_only=True)
    for g in groups: g["peak"] = g["lr"]
    return Muon(groups, track_rms=False)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["A", "B", "C", "E2E"])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--lr-vision", type=float, default=2e-3)
    ap.add_argument("--up", type=float, default=2.0)
    ap.add_argument("--eval-every", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mse", type=float, default=1.0)
    ap.add_argument("--ce", type=float, default=1.0)
    ap.add_argument("--aux", type=float, default=0.5, help="phase C: dense/oracle losses kept")
    ap.add_argument("--lm", default="bench/results/oracleA.pt"); ap.add_argument("--vis", default="bench/results/oracleB.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", default="patch", choices=["patch", "cell"])
    a = ap.parse_args()
    global MODE; MODE = a.mode
    torch.set_num_threads(a.threads)
    task = NP.Task("lines", a.seed)
    hr = random.Random(10_000)
    held = [task.sample(hr, heldout=True) for _ in range(48)]
    held_in = [task.sample(hr, heldout=False) for _ in range(48)]
    torch.manual_seed(a.seed)
    cfg = preset("nano"); cfg.torch_dtype = "float32"
    model = KimiVLForConditionalGeneration(cfg)
    init_weights(model, cfg.text.initializer_range, a.seed, scheme="kvl")
    model.train()
    ip = ImageProcessor(in_token_limit=4096)
    oracle = Oracle(cfg.text.hidden_size)
    head = torch.nn.Linear(cfg.vision.hidden_size, PS * NCLS) if MODE == "patch" else torch.nn.Linear(cfg.text.hidden_size, SLOTS * NCLS)
    if a.phase == "A":
        opt = make_opt([(model.language_model, a.lr)])
    elif a.phase == "B":
        opt = make_opt([(model.vision_tower, a.lr_vision), (model.multi_modal_projector, a.lr_vision)], [(head, a.lr_vision)])
    else:
        if a.phase == "C":
            sd = torch.load(a.lm, weights_only=True); model.language_model.load_state_dict(sd)
            sd = torch.load(a.vis, weights_only=True); model.vision_tower.load_state_dict(sd["vt"]); model.multi_modal_projector.load_state_dict(sd["pr"]); head.load_state_dict(sd["head"])
        opt = make_opt([(model.vision_tower, a.lr_vision), (model.multi_modal_projector, a.lr_vision), (model.language_model, a.lr)], [(head, a.lr_vision)])
    steps = math.ceil(a.images / a.batch)
    log = open(a.out + ".log", "w")
    t0 = time.perf_counter(); seen = 0; acc_l = 0.0; acc_n = 0
    for step in range(steps):
        sched(opt, step, steps)
        samples = [task.sample() for _ in range(a.batch)]
        ids, labels, ims, dn, dm = batch(samples, ip, cfg, a.up)
        if a.phase == "A":
            loss, _ = lm_loss(model, ids, labels, oracle(dm))
        else:
            fp, feats = vision(model, ip, ims)
            dl = a.ce * F.cross_entropy(dense_logits(head, fp, feats).flatten(0, 1), dn.flatten()) \
                 + a.mse * F.mse_loss(feats, oracle(dm))
            if a.phase == "B":
                loss = dl
            else:
                ll, _ = lm_loss(model, ids, labels, feats)
                loss = ll + (a.aux * dl if a.phase == "C" else 0.5 * dl)
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
        seen += a.batch; acc_l += float(loss.detach()); acc_n += 1
        if seen // a.eval_every != (seen - a.batch) // a.eval_every or step == steps - 1:
            pt = {"images": seen, "train_loss": round(acc_l / acc_n, 4), "s": round(time.perf_counter() - t0)}
            acc_l = acc_n = 0
            with torch.no_grad():
                model.eval()
                ids, labels, ims, dn, dm = batch(held, ip, cfg, a.up)
                if a.phase == "A":
                    hl, ha = lm_loss(model, ids, labels, oracle(dm)); pt.update(h_loss=round(float(hl), 3), h_acc=round(float(ha), 3))
                else:
                    fp, feats = vision(model, ip, ims)
                    lg = dense_logits(head, fp, feats); m = dn > 0
                    pt["slot_acc"] = round(float((lg.argmax(-1)[m] == dn[m]).float().mean()), 3)
                    pt["mse"] = round(float(F.mse_loss(feats, oracle(dm))), 3)
                    if a.phase != "B":
                        hl, ha = lm_loss(model, ids, labels, feats); pt.update(h_loss=round(float(hl), 3), h_acc=round(float(ha), 3))
                model.train()
            if a.phase == "A":
                pt["cer_oracle"], ex = cer(model, held, ip, cfg, a.up, oracle)
            elif a.phase != "B":
                pt["cer"], ex = cer(model, held, ip, cfg, a.up)
                pt["cer_in"], _ = cer(model, held_in, ip, cfg, a.up)
            else:
                ex = []
            print(json.dumps(pt), flush=True); log.write(json.dumps(pt) + "\n"); log.flush()
            for t, p in ex: print(f"   {t!r:28} -> {p!r}", flush=True)
    if a.phase == "A":
        torch.save(model.language_model.state_dict(), a.out)
    elif a.phase == "B":
        torch.save({"vt": model.vision_tower.state_dict(), "pr": model.multi_modal_projector.state_dict(), "head": head.state_dict()}, a.out)
    else:
        torch.save(model.state_dict(), a.out)

main()
