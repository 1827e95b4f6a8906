"""The training stages of Kimi-VL as named recipes (paper §2.3–2.4, Table 1, Figures 4–5).

Each recipe is a plain function returning a `StageConfig`: what is trainable, which loss, how the
data sources are mixed (including the progressive multimodal ratio of joint pre-training), the
sequence length and RoPE base of each phase, and the learning-rate schedule. Everything can be
overridden from `kvl train`; stage N starts from stage N-1's checkpoint (`--model`).

  vit       CoCa-style MoonViT training: SigLIP sigmoid loss + 2 x caption loss (tiny decoder),
            progressive resolution                                                   (§2.3)
  align     only MoonViT + projector learn, the LLM is frozen; caption data           (§2.3)
  pretrain  joint pre-training: text first, then a ramp of multimodal data up to 40%  (§2.3)
  cooldown  high-quality mix, LR re-warmed then decayed                               (§2.3)
  longctx   RoPE base 50,000 -> 800,000, context x4 twice, 25% long / 75% replay      (§2.3)
  sft       32K then 128K; LR 2e-5 -> 2e-6, re-warm to 1e-5 -> 1e-6; answers only    (§2.4)
  cot-sft   light long chain-of-thought warm-up SFT                                   (§2.4)

Sequence lengths are the paper's; `--seq-len` rescales a recipe (later phases keep their
multiples), which is how the tiny CPU runs use the same recipes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from kvl_core.errors import KvlError


@dataclass
class Phase:
    """A contiguous part of a stage with one sequence length and one LR segment."""

    name: str
    fraction: float  # share of the stage's steps
    seq_len: int
    lr_peak: float
    lr_end: float
    warmup_frac: float = 0.0  # of this phase's steps, linear from lr_start to lr_peak
    decay: str = "cosine"  # cosine | linear | constant
    lr_start: float = 0.0  # where warm-up starts (re-warm-ups start at the previous phase's end)
    rope_theta: float | None = None  # None: keep the model's


@dataclass
class StageConfig:
    name: str
    loss: str  # "lm" | "coca"
    trainable: list[str]  # module prefixes; ["*"] = everything
    phases: list[Phase]
    supervise: str = "all"  # "all" text tokens | "assistant" answers only
    multimodal_ratio: tuple[float, float] | None = None  # (start, end) share of image sources, ramped
    ramp_start: float = 0.0  # fraction of the stage before the multimodal ramp begins
    long_ratio: float | None = None  # share of sources tagged "long" (longctx)
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    moe_bias_update: float = 1e-3  # aux-loss-free balancing rate (0 = frozen bias)
    caption_weight: float = 2.0  # lambda of L = L_siglip + lambda L_caption (vit stage)
    progressive_resolution: tuple[int, int] | None = None  # (start, end) max patches per image (vit)
    notes: str = ""

    def phase_at(self, step: int, total: int) -> tuple[Phase, int, int]:
        """(phase, step within it, its length) for a global step of a `total`-step run."""
        bounds = phase_bounds(self.phases, total)
        for ph, (a, b) in zip(self.phases, bounds):
            if step < b or ph is self.phases[-1]:
                return ph, step - a, max(1, b - a)
        raise AssertionError("unreachable")

    def lr_at(self, step: int, total: int) -> float:
        ph, k, n = self.phase_at(step, total)
        warm = int(round(ph.warmup_frac * n))
        if k < warm:
            return ph.lr_start + (ph.lr_peak - ph.lr_start) * (k + 1) / warm
        t = (k - warm) / max(1, n - warm - 1) if n - warm > 1 else 1.0
        t = min(max(t, 0.0), 1.0)
        if ph.decay == "constant":
            return ph.lr_peak
        if ph.decay == "linear":
            return ph.lr_peak + (ph.lr_end - ph.lr_peak) * t
        return ph.lr_end + 0.5 * (ph.lr_peak - ph.lr_end) * (1 + math.cos(math.pi * t))

    def multimodal_share(self, step: int, total: int) -> float | None:
        if self.multimodal_ratio is None:
            return None
        start, end = self.multimodal_ratio
        p = step / max(1, total - 1)
        if p < self.ramp_start:
            return 0.0  # "the initial steps utilize solely language data" (§2.3)
        t = (p - self.ramp_start) / max(1e-9, 1 - self.ramp_start)
        return start + (end - start) * t


def phase_bounds(phases: list[Phase], total: int) -> list[tuple[int, int]]:
    out, a = [], 0
    acc = 0.0
    for i, ph in enumerate(phases):
        acc += ph.fraction
        b = total if i == len(phases) - 1 else int(round(acc * total))
        out.append((a, b))
        a = b
    return out


# ---- recipes --------------------------------------------------------------------------------

def vit() -> StageConfig:
    return StageConfig(
        name="vit", loss="coca", trainable=["vision_tower", "coca"], supervise="all",
        phases=[Phase("vit", 1.0, 512, 2e-4, 2e-5, warmup_frac=0.02)],
        progressive_resolution=(256, 4096), moe_bias_update=0.0,
        notes="MoonViT + SigLIP text tower + tiny caption decoder; L = L_siglip + 2 L_caption",
    )


def align() -> StageConfig:
    return StageConfig(
        name="align", loss="lm", trainable=["vision_tower", "multi_modal_projector"], supervise="all",
        phases=[Phase("align", 1.0, 8192, 1e-4, 1e-5, warmup_frac=0.02)], moe_bias_update=0.0,
        notes="LLM frozen; lowers the initial perplexity of image embeddings in the LLM",
    )


def pretrain() -> StageConfig:
    return StageConfig(
        name="pretrain", loss="lm", trainable=["*"], supervise="all",
        # continues Moonlight's schedule: the LR is resumed, not re-warmed
        phases=[Phase("joint", 1.0, 8192, 4.2e-4, 4.2e-5, warmup_frac=0.0)],
        multimodal_ratio=(0.0, 0.4), ramp_start=0.1,
        notes="text only at first, then the multimodal share ramps up to 40%",
    )


def cooldown() -> StageConfig:
    return StageConfig(
        name="cooldown", loss="lm", trainable=["*"], supervise="all",
        phases=[Phase("cooldown", 1.0, 8192, 1e-4, 0.0, warmup_frac=0.05, decay="linear", lr_start=4.2e-5)],
        multimodal_ratio=(0.4, 0.4),
        notes="high-quality text + multimodal, small synthetic QA share; re-warm then linear decay",
    )


def longctx() -> StageConfig:
    return StageConfig(
        name="longctx", loss="lm", trainable=["*"], supervise="all",
        phases=[
            Phase("32k", 0.5, 32768, 2e-5, 2e-5, decay="constant", rope_theta=800000.0),
            Phase("128k", 0.5, 131072, 2e-5, 2e-5, decay="constant", rope_theta=800000.0),
        ],
        long_ratio=0.25,
        notes="RoPE base 50,000 -> 800,000; 8K -> 32K -> 128K; 25% long data, 75% replay",
    )


def sft() -> StageConfig:
    return StageConfig(
        name="sft", loss="lm", trainable=["*"], supervise="assistant", moe_bias_update=0.0,
        phases=[
            Phase("32k", 0.5, 32768, 2e-5, 2e-6, warmup_frac=0.03),
            Phase("128k", 0.5, 131072, 1e-5, 1e-6, warmup_frac=0.03, lr_start=2e-6),
        ],
        notes="packed ChatML; loss on answers and their special tokens only",
    )


def cot_sft() -> StageConfig:
    return StageConfig(
        name="cot-sft", loss="lm", trainable=["*"], supervise="assistant", moe_bias_update=0.0,
        phases=[Phase("long-cot", 1.0, 32768, 1e-5, 1e-6, warmup_frac=0.05)],
        notes="small verified long-CoT warm-up set (planning, evaluation, reflection, exploration)",
    )


STAGES = {"vit": vit, "align": align, "pretrain": pretrain, "cooldown": cooldown, "longctx": longctx,
          "sft": sft, "cot-sft": cot_sft}


def stage(name: str) -> StageConfig:
    try:
        return STAGES[name]()
    except KeyError:
        raise KvlError(f"unknown stage {name!r}; choose from {', '.join(STAGES)}") from None


def override(cfg: StageConfig, *, seq_len: int | None = None, lr: float | None = None) -> StageConfig:
    """Rescale a recipe: `seq_len` sets the first phase's length (later phases keep their multiple of
    it); `lr` sets the first phase's peak (every LR of the stage is scaled by the same factor)."""
    phases = list(cfg.phases)
    if seq_len is not None:
        base = phases[0].seq_len
        phases = [replace(p, seq_len=max(1, int(seq_len * p.seq_len / base))) for p in phases]
    if lr is not None:
        f = lr / phases[0].lr_peak
        phases = [replace(p, lr_peak=p.lr_peak * f, lr_end=p.lr_end * f, lr_start=p.lr_start * f) for p in phases]
    return replace(cfg, phases=phases)


__all__ = ["Phase", "StageConfig", "STAGES", "stage", "override", "phase_bounds"]
