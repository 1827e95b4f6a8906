"""One training loop for every supervised stage of Kimi-VL (paper §2.3–2.4; training.md §2, §4).

Per optimizer step: fetch this step's packed micro-batches, count the supervised tokens of the
*global* batch (all micro-batches, all ranks), backpropagate sum-CE / that count per micro-batch,
sum gradients across ranks, clip, step Muon (owner-sharded ZeRO-1 under torchrun), nudge the MoE
routers' correction biases from the observed expert load (aux-loss-free balancing), log.

Checkpoints are directories `step_000123/` in the run folder (HF-layout weights + tokenizer and
processor files + `trainer_state.json` + `optimizer.pt`), written to a hidden temporary folder and
renamed into place, so a crash mid-save never damages the previous checkpoint. Resuming restores
weights, optimizer, data position and RNG states: the following losses equal an uninterrupted
run's. Frozen parts (e.g. the LLM in `align`) get no optimizer state and stay bitwise unchanged.

The loop reports through a callback (`on_event(kind, info)`); the CLI turns it into a progress bar.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from kvl_core.config import preset as config_preset
from kvl_core.errors import KvlError
from kvl_core.model import KimiVLForConditionalGeneration
from kvl_core.training import stages as stage_recipes
from kvl_core.training.init import init_weights

# Max 14-px patches per image for a model trained from a preset (the released models use 4096). kvl-nano
# reads at 2x (below): 3072 patches keep a 448 x 336 page at that scale instead of shrinking it back.
PRESET_PATCH_LIMIT = {"tiny": 256, "nano": 3072}
# Presets whose fresh models read at a larger image scale (ImageProcessor.upscale, docs/nano.md): a
# 13-18 px glyph then spans about two 14-px patches, and a patch holds at most one or two glyph centres.
PRESET_UPSCALE: dict[str, float] = {"nano": 2.0}
SIDE_FILES = ("tiktoken.model", "tokenizer_config.json", "preprocessor_config.json", "generation_config.json")


@dataclass
class TrainConfig:
    stage: str = "sft"
    out: str = "runs/sft"
    data: list[str] = field(default_factory=list)  # JSONL files as [TAG=]PATH[:WEIGHT]
    eval_data: list[str] = field(default_factory=list)
    model: str | None = None  # start from this checkpoint (stage N-1's output) ...
    preset: str | None = None  # ... or from a fresh model of this preset
    steps: int = 100
    lr: float | None = None  # peak LR of the first phase (the recipe's by default)
    seq_len: int | None = None  # first phase's sequence length (the recipe's by default)
    batch_tokens: int | None = None  # tokens per optimizer step over all ranks (default: 8 rows)
    micro_rows: int = 1  # rows per forward pass: the memory knob, not the math
    seed: int = 0
    resume: bool = False
    save_every: int = 0  # 0: only at the end
    keep: int = 2  # checkpoints kept (the final one always stays)
    eval_every: int = 0
    eval_batches: int = 4
    optimizer: str = "muon"  # muon | adamw
    ns_dtype: str = "auto"  # Newton-Schulz precision: bf16 where matmuls are native bf16, else fp32
    data_policy: str = "stop"  # stop | skip  (malformed JSONL lines)
    overlong: str = "truncate"  # truncate | drop  (samples longer than the context)
    device: str = "auto"
    plot: bool = True
    stop_after: int | None = None  # end the process after this many steps (tests simulate a crash)
    tokenizer: str | None = None  # fresh presets: take tokenizer files from this folder (else byte-level)
    checkpoint_activations: bool | None = None  # per-layer recompute; None: on when a phase is >= 32K tokens
    dist: str = "auto"  # fsdp | ddp | zero1; auto: fsdp under torchrun (world > 1), else one process


# ---- helpers ------------------------------------------------------------------------------------

def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (a folder is complete once renamed into place)."""
    return sorted(p for p in out.glob("step_*") if p.is_dir() and (p / "trainer_state.json").exists())


def load_model(source: Path | str | None, preset: str | None, out: Path, seed: int, device: torch.device,
               write_side_files: bool = True, tokenizer: str | None = None) -> tuple[KimiVLForConditionalGeneration, Path]:
    """The model to train (fp32) and the folder holding its tokenizer/processor files: a checkpoint
    folder, or a fresh `preset` model (seeded init) with a tokenizer written to out/.tokenizer (copied
    from `tokenizer`, else byte-level)."""
    from kvl_core.processor.image import ImageProcessor
    from kvl_core.processor.tokenizer import save_byte_level_tokenizer

    if source is not None:
        model = KimiVLForConditionalGeneration.from_pretrained(source, dtype=torch.float32, device=device)
        return model, Path(model.name_or_path)
    if not preset:
        raise KvlError("say what to train: --model CHECKPOINT (the previous stage's output) or --preset NAME")
    mcfg = config_preset(preset)
    mcfg.torch_dtype = "float32"
    torch.manual_seed(seed)
    model = KimiVLForConditionalGeneration(mcfg)
    init_weights(model, mcfg.text.initializer_range, seed)
    model.to(device)
    side_dir = Path(out) / ".tokenizer"
    if write_side_files:
        if tokenizer is not None:
            side_dir.mkdir(parents=True, exist_ok=True)
            for name in ("tiktoken.model", "tokenizer_config.json"):
                shutil.copyfile(Path(tokenizer) / name, side_dir / name)
        else:
            save_byte_level_tokenizer(side_dir, mcfg.text.vocab_size)
        ip = ImageProcessor(in_token_limit=PRESET_PATCH_LIMIT.get(preset, 4096), upscale=PRESET_UPSCALE.get(preset, 1.0))
        (side_dir / "preprocessor_config.json").write_text(json.dumps(ip.to_dict(), indent=1))
    return model, side_dir


def write_checkpoint(out: Path, step: int, model: torch.nn.Module, side_dir: Path, state: dict,
                     extra: Callable[[Path], None] | None = None, keep: int = 2, fresh: bool = True) -> Path:
    """Write out/step_NNNNNN/ (weights, side files, trainer_state.json, whatever `extra(folder)` adds)
    into a hidden folder first and rename it into place; prune all but the newest `keep`. `fresh=False`
    keeps what other ranks already wrote into the hidden folder (sharded optimizer state)."""
    out.mkdir(parents=True, exist_ok=True)
    final_dir = out / f"step_{step:06d}"
    tmp = out / f".tmp_step_{step:06d}"
    if fresh:
        shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in SIDE_FILES:
        if (side_dir / name).exists():
            shutil.copy2(side_dir / name, tmp / name)
    if extra is not None:
        extra(tmp)
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    if final_dir.exists():
        shutil.rmtree(final_dir)
    os.replace(tmp, final_dir)
    for old in checkpoints(out)[: -keep] if keep > 0 else []:
        if old != final_dir:
            shutil.rmtree(old, ignore_errors=True)
    return final_dir


def publish_final(out: Path, path: Path) -> Path:
    """Copy a checkpoint to out/final atomically (the folder users pass to the next stage)."""
    final = out / "final"
    tmp = out / ".tmp_final"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(path, tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def set_trainable(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """requires_grad only under the given module prefixes ("*" = all). Returns the frozen prefixes."""
    everything = "*" in prefixes
    for name, p in model.named_parameters():
        if name.endswith("e_score_correction_bias"):
            p.requires_grad_(False)  # moved by load balancing, never by gradients
            continue
        p.requires_grad_(everything or any(name.startswith(pre + ".") for pre in prefixes))
    return [] if everything else sorted({n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad})


CHECKPOINTED_LAYERS = ("DecoderLayer", "EncoderLayer")  # LLM decoder layers, MoonViT blocks
AUTO_CHECKPOINT_SEQ = 32768


def checkpoint_activations(model: torch.nn.Module) -> int:
    """Per-layer activation checkpointing (torch.utils.checkpoint, non-reentrant): each decoder layer and
    ViT block keeps only its input for backward and recomputes its inside, so activation memory is one
    layer's worth plus the layer inputs. The layer's `forward` is wrapped in place (parameter names and
    checkpoints are unchanged); without grad (eval, generation) it runs as before. Returns the count."""
    from torch.utils.checkpoint import checkpoint

    n = 0
    for m in model.modules():
        if type(m).__name__ not in CHECKPOINTED_LAYERS or getattr(m, "_kvl_checkpointed", False):
            continue
        inner = m.forward

        def forward(*args, _inner=inner, **kw):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False, **kw)
            return _inner(*args, **kw)

        m.forward = forward
        m._kvl_checkpointed = True
        n += 1
    return n


class ExpertLoad:
    """Counts tokens per routed expert during forward passes (for aux-loss-free bias updates).

    `real` ([B*T] bool, set per micro-batch) leaves the rows' tail padding out: it is no data, and how
    wide a row is padded must not steer the routers. `paused` is set around backward, where activation
    checkpointing re-runs the forward (and its hooks) a second time."""

    def __init__(self, model: torch.nn.Module):
        self.gates = [(name, m) for name, m in model.named_modules() if type(m).__name__ == "MoEGate"]
        self.counts = {name: torch.zeros(m.n_experts, dtype=torch.float64) for name, m in self.gates}
        self.handles = [m.register_forward_hook(self._hook(name)) for name, m in self.gates]
        self.real: torch.Tensor | None = None
        self.paused = False

    def _hook(self, name):
        def hook(mod, inp, out):
            if mod.training and not self.paused:
                ids = out[0]
                if self.real is not None and self.real.shape[0] == ids.shape[0]:
                    ids = ids[self.real]
                self.counts[name] += torch.bincount(ids.flatten().cpu(), minlength=mod.n_experts).double()
        return hook

    def update_biases(self, rate: float, reduce: Callable[[torch.Tensor], torch.Tensor]) -> float:
        """b_i += u * (sign(e_i) - mean(sign(e))), e_i = mean load - load_i (Moonlight App. C).
        Returns the max load / mean load imbalance seen this step (1.0 = perfectly balanced)."""
        worst = 1.0
        for name, gate in self.gates:
            load = reduce(self.counts[name].clone())
            if load.sum() > 0:
                worst = max(worst, float(load.max() / load.mean()))
                if rate > 0:
                    s = torch.sign(load.mean() - load)
                    with torch.no_grad():
                        gate.e_score_correction_bias.add_((rate * (s - s.mean())).to(gate.e_score_correction_bias))
            self.counts[name].zero_()
        return worst


def _rng_state() -> dict[str, Any]:
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the trainer ------------------------------------------------------------------------------

class Trainer:
    def __init__(self, cfg: TrainConfig, on_event: Callable[[str, dict], None] | None = None):
        from kvl_core.training import distributed as dist

        self.cfg = cfg
        self.emit = on_event or (lambda kind, info: None)
        self.dist = dist
        dist.init_distributed()
        self.rank, self.world = dist.rank(), dist.world()
        self.device = _device(cfg.device)
        self.out = Path(cfg.out)
        self.stage = stage_recipes.override(stage_recipes.stage(cfg.stage), seq_len=cfg.seq_len, lr=cfg.lr)
        if cfg.steps <= 0:
            raise KvlError("--steps must be positive")
        if not cfg.data:
            raise KvlError("no training data: pass --data FILE.jsonl (see the README for the JSONL layout)")
        self.step = 0
        self._load_model()
        self._setup_parallel()
        self._build_optimizer()
        self._build_data()
        if self.resume_from is not None:
            self._restore(self.resume_from)

    # ---- set-up -------------------------------------------------------------------------------

    def _load_model(self) -> None:
        from kvl_core.processor.chat import Processor

        cfg = self.cfg
        existing = checkpoints(self.out) if self.out.exists() else []
        self.resume_from = existing[-1] if (cfg.resume and existing) else None
        if cfg.resume and not existing:
            self.emit("note", {"text": f"no checkpoint in {self.out} yet: starting from the beginning"})
        if existing and not cfg.resume:
            raise KvlError(f"{self.out}: holds checkpoints of an earlier run; pass --resume to continue it "
                           "or choose another --out")
        source = self.resume_from or (Path(cfg.model) if cfg.model else None)
        self.model, self.side_dir = load_model(source, cfg.preset, self.out, cfg.seed, self.device,
                                               write_side_files=self.rank == 0, tokenizer=cfg.tokenizer)
        self.dist.barrier()
        self.model.train()
        self.processor = Processor.from_pretrained(self.side_dir)
        self._native_limit = self.processor.image_processor.in_token_limit
        phases = self.stage.phases
        # Long-context stages set a new RoPE base and need positions up to their longest phase.
        t = self.model.config.text
        t.max_position_embeddings = max(t.max_position_embeddings, max(p.seq_len for p in phases))
        self.frozen = set_trainable(self.model, self.stage.trainable if self.stage.loss == "lm" else ["vision_tower"])
        self.coca = None
        if self.stage.loss == "coca":
            from kvl_core.training.coca import CoCaConfig, CoCaHeads

            torch.manual_seed(cfg.seed + 1)
            self.coca = CoCaHeads(CoCaConfig(vocab_size=self.processor.tokenizer.vocab_size,
                                             vision_hidden=self.model.config.vision.hidden_size,
                                             pad_id=self.processor.tokenizer.pad_id)).to(self.device)
        self.expert_load = ExpertLoad(self.model)
        ac = cfg.checkpoint_activations
        if ac is None:
            ac = max(p.seq_len for p in phases) >= AUTO_CHECKPOINT_SEQ
        self.checkpointed = checkpoint_activations(self.model) if ac else 0

    def _setup_parallel(self) -> None:
        """--dist: fsdp (FSDP2: LLM sharded, ShardedMuon, sharded DCP optimizer checkpoints), zero1 (full
        replicas, gradients all-reduced, DistMuon owner-sharded states), ddp (full replicas, every rank runs
        the whole optimizer)."""
        mode = self.cfg.dist
        if mode not in DIST_MODES:
            raise KvlError(f"unknown --dist {mode!r}; use {', '.join(DIST_MODES)}")
        if mode == "auto":
            resumes_fsdp = self.resume_from is not None and (self.resume_from / "optim").is_dir()
            mode = "fsdp" if self.world > 1 or resumes_fsdp else "zero1"
        self.dist_mode = mode
        self.vision_turn = None
        if mode != "fsdp":
            return
        # whole on every rank, gradients all-reduced: the router biases and the small CoCa heads (vit)
        self.replicated = self.dist.replicated_params(self.model) + (list(self.coca.parameters()) if self.coca else [])
        if self.world > 1:
            mesh = self.dist.device_mesh(self.device)
            bf16 = torch.bfloat16 if self.device.type == "cuda" else None  # fp32 on CPU: exact against world 1
            self.dist.fully_shard_model(self.model, mesh, param_dtype=bf16)
            if self.coca is None:
                self.vision_turn = self.dist.VisionTurn(self.model)

    def _trainable_modules(self) -> list[torch.nn.Module]:
        return [self.model] + ([self.coca] if self.coca is not None else [])

    def _build_optimizer(self) -> None:
        from kvl_core.training.muon import param_groups_for

        cfg = self.cfg
        groups = []
        for m in self._trainable_modules():
            groups += param_groups_for(m, lr=self.stage.phases[0].lr_peak, weight_decay=self.stage.weight_decay,
                                       ns_dtype=cfg.ns_dtype, adamw_only=cfg.optimizer == "adamw")
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise KvlError(f"stage {self.stage.name}: nothing is trainable")
        if cfg.optimizer not in ("muon", "adamw"):
            raise KvlError(f"unknown optimizer {cfg.optimizer!r}; use muon or adamw")
        # Owner-sharded ZeRO-1 under torchrun; at world 1 it is exactly the single-process Muon.
        if self.dist_mode == "fsdp":
            self.optimizer = self.dist.ShardedMuon(groups)
        elif self.dist_mode == "ddp":
            from kvl_core.training.muon import Muon

            self.optimizer = Muon(groups)
        else:
            self.optimizer = self.dist.DistMuon(groups)

    def _sources(self, specs: list[str]):
        """`[TAG=]PATH[:WEIGHT]`: the tag names a mixture group (e.g. `long=` for longctx)."""
        from kvl_core.training.data import Source, split_weight

        sources = []
        for spec in specs:
            tag, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
            path, weight = split_weight(rest)
            sources.append(Source(path, weight=weight, name=tag or None, tags=(tag,) if tag else ()))
        return sources

    def _mixture(self) -> dict:
        st, total = self.stage, self.cfg.steps
        if st.multimodal_ratio is not None:
            return {"ratio": lambda s: st.multimodal_share(s, total), "ratio_tag": "multimodal"}
        if st.long_ratio is not None:
            return {"ratio": lambda s: st.long_ratio, "ratio_tag": "long"}
        return {}

    def _stream(self, specs: list[str], seq_len: int, seed: int):
        from kvl_core.training.data import Stream

        return Stream(self._sources(specs), self.processor, seq_len=seq_len, batch_rows=self._rows_per_step(seq_len),
                      seed=seed, supervise=self.stage.supervise, world_size=self.world, rank=self.rank,
                      policy=self.cfg.data_policy, overlong=self.cfg.overlong,
                      kind="caption" if self.stage.loss == "coca" else None, **self._mixture())

    def _build_data(self) -> None:
        self.phase_index = -1
        self.stream = None
        self._ensure_phase()

    def _rows_per_step(self, seq_len: int) -> int:
        """Rows of the global batch: a function of the config alone, never of the world size, so that
        1 and N processes train on identical batches."""
        tokens = self.cfg.batch_tokens or 8 * seq_len
        rows = max(1, tokens // seq_len)
        if rows % self.world:
            raise KvlError(f"a global batch of {rows} rows of {seq_len} tokens cannot be split evenly over "
                           f"{self.world} processes; make --batch-tokens a multiple of {seq_len * self.world}")
        return rows

    def _ensure_phase(self) -> None:
        """Build the data stream for the phase of the current step (sequence lengths differ per phase)."""
        phase, _, _ = self.stage.phase_at(self.step, self.cfg.steps)
        idx = self.stage.phases.index(phase)
        if idx == self.phase_index:
            return
        state = self.stream.state_dict() if self.stream is not None else None
        if phase.rope_theta is not None:
            self.model.config.text.rope_theta = phase.rope_theta
        self.stream = self._stream(self.cfg.data, phase.seq_len, self.cfg.seed)
        if state is not None:
            self.stream.load_state_dict(state)
        self.phase_index = idx
        self.emit("phase", {"phase": phase.name, "seq_len": phase.seq_len, "rope_theta": self.model.config.text.rope_theta})

    # ---- the step -----------------------------------------------------------------------------

    def _forward_loss(self, mb) -> torch.Tensor:
        """Summed loss of one micro-batch (CE over supervised tokens, or the CoCa objective)."""
        dev = self.device
        if self.coca is not None:
            feats = self.model.vision_tower(mb.pixel_values.to(dev), mb.image_grid_hws.to(dev))
            out = self.coca(feats, mb.image_grid_hws.to(dev), mb.caption_ids.to(dev), self.stage.caption_weight)
            self._coca_parts = out
            return out["loss"] * len(mb.caption_ids)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
        self.expert_load.real = (~mb.padding_mask()).flatten().to(dev)
        if self.vision_turn is not None:
            self.vision_turn.needed = mb.pixel_values is None or mb.pixel_values.numel() == 0
        with autocast:
            # the loss comes from the model in chunks of tokens: [T, V] logits never exist at once
            return self.model(
                mb.input_ids.to(dev),
                pixel_values=mb.pixel_values.to(dev) if mb.pixel_values is not None else None,
                image_grid_hws=mb.image_grid_hws.to(dev) if mb.image_grid_hws is not None else None,
                position_ids=mb.position_ids.to(dev), doc_ids=mb.doc_ids.to(dev), labels=mb.labels.to(dev),
            ).loss

    def _image_budget(self) -> int | None:
        """Progressive resolution (vit stage): the max patches per image grows linearly over the stage,
        from the recipe's start to its end, capped by the checkpoint's own limit."""
        if self.stage.progressive_resolution is None:
            return None
        lo, hi = self.stage.progressive_resolution
        hi = min(hi, self._native_limit)
        lo = min(lo, hi)
        return int(lo + (hi - lo) * self.step / max(1, self.cfg.steps - 1))

    def train_step(self) -> dict[str, float]:
        self._ensure_phase()
        budget = self._image_budget()
        if budget is not None:
            self.processor.image_processor.in_token_limit = budget
        lr = self.stage.lr_at(self.step, self.cfg.steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        batch = self.stream.next_batch()
        micro = batch.split(self.cfg.micro_rows)
        # the loss denominator is the supervised count of the *global* batch, so every rank's gradient
        # sums to exactly the single-process gradient
        n_global = float(batch.global_n_images if self.coca is not None else batch.global_n_supervised)
        if n_global == 0:
            raise KvlError("a training step had no supervised tokens; check --stage (sft masks all but answers) "
                           "and the data")
        t0 = time.perf_counter()
        loss_sum = 0.0
        try:
            for mb in micro:
                if self.coca is None and mb.n_tokens == 0 and self.dist_mode != "fsdp":
                    # an empty row (a small dataset's step holds one pass over it): no loss, no gradient;
                    # under FSDP every rank must still run it (the layers gather their shards collectively)
                    continue
                loss = self._forward_loss(mb)
                # a micro-batch can be out of reach of every trainable weight (align trains only the
                # vision side; a row of text-only documents never touches it): it adds no gradient
                if loss.requires_grad:
                    self.expert_load.paused = True
                    try:
                        (loss / n_global).backward()
                    finally:
                        self.expert_load.paused = False
                loss_sum += float(loss.detach())
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if "out of memory" not in str(e) and "can't allocate memory" not in str(e):
                raise
            rows = micro[0].rows if hasattr(micro[0], "rows") else "?"
            raise KvlError(f"out of memory at step {self.step + 1} ({rows} rows x {self.stream.seq_len} tokens per "
                           "forward): lower --micro-rows, --seq-len or --batch-tokens, or add GPUs (torchrun)") from None
        params = [p for m in self._trainable_modules() for p in m.parameters() if p.requires_grad]
        # Also at world 1: it gives experts that no token chose a zero gradient, as every rank > 1
        # must (so that 1 and N processes update identically).
        if self.dist_mode == "fsdp":
            # sharded grads are already reduce-scattered; the replicated vision side is summed as under ZeRO-1
            self.dist.all_reduce_grads([p for p in self.replicated if p.requires_grad], op="sum")
            for p in params:  # parameters no rank reached (e.g. an expert nobody chose) step with zeros
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        else:
            self.dist.all_reduce_grads(params, op="sum")
        grad_norm = _grad_norm(params, self.stage.grad_clip) if self.stage.grad_clip else 0.0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        trains_lm = "*" in self.stage.trainable or "language_model" in self.stage.trainable
        imbalance = self.expert_load.update_biases(self.stage.moe_bias_update if trains_lm else 0.0,
                                                   self.dist.all_reduce_sum)
        dt = time.perf_counter() - t0
        tokens = float(getattr(batch, "global_n_tokens", batch.n_tokens))
        self.step += 1
        extra = {"image_budget": budget} if budget is not None else {}
        return {**extra, "step": self.step, "loss": self.dist.all_reduce_scalar(loss_sum) / n_global, "lr": lr,
                "grad_norm": grad_norm, "tokens": tokens, "supervised": n_global, "tok_s": tokens / max(dt, 1e-9),
                "step_s": dt, "expert_imbalance": imbalance}

    def _count(self, mb) -> int:
        return len(mb.caption_ids) if self.coca is not None else int(mb.n_supervised)

    # ---- eval ---------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> float | None:
        if not self.cfg.eval_data:
            return None
        phase, _, _ = self.stage.phase_at(max(0, self.step - 1), self.cfg.steps)
        stream = self._stream(self.cfg.eval_data, phase.seq_len, self.cfg.seed + 12345)
        self.model.eval()
        total, count = 0.0, 0.0
        for _ in range(self.cfg.eval_batches):
            batch = stream.next_batch()
            batch = batch if self.coca is not None else batch.trimmed()
            total += float(self._forward_loss(batch))
            count += self._count(batch)
        self.model.train()
        return self.dist.all_reduce_scalar(total) / max(1.0, self.dist.all_reduce_scalar(count))

    # ---- checkpoints --------------------------------------------------------------------------

    def save(self) -> Path | None:
        """Write step_NNNNNN/ atomically (rank 0 writes; every rank contributes optimizer state).

        Under FSDP every rank writes its optimizer shards into the hidden folder (optim/, a
        torch.distributed.checkpoint), rank 0 the gathered HF-layout weights; then rank 0 renames it."""
        fsdp = self.dist_mode == "fsdp"
        state = {"step": self.step, "stage": self.stage.name, "config": asdict(self.cfg),
                 "data": self.stream.state_dict(), "phase_index": self.phase_index,
                 "rope_theta": self.model.config.text.rope_theta, "dist": self.dist_mode, "world": self.world}
        if fsdp:
            import torch.distributed.checkpoint as dcp

            model = _GatheredModel(self.model, self.dist.full_state_dict(self.model))  # collective
            tmp = self.out / f".tmp_step_{self.step:06d}"
            if self.rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            self.dist.barrier()
            import warnings

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
                dcp.save(self.optimizer.dcp_state(), checkpoint_id=str(tmp / "optim"))  # collective
            opt_state = None
        else:
            model = self.model
            opt_state = self.optimizer.consolidated_state_dict() if hasattr(self.optimizer, "consolidated_state_dict") \
                else self.optimizer.state_dict()  # a collective: every rank takes part
        if self.rank != 0:
            self.dist.barrier()
            return None

        def extra(tmp: Path) -> None:
            if self.coca is not None:
                from kvl_core.checkpoint import save_state_dict

                (tmp / "coca").mkdir()
                save_state_dict(self.coca, tmp / "coca")
            blob = {"rng": _rng_state(), **({"optimizer": opt_state} if opt_state is not None else {})}
            torch.save(blob, tmp / "optimizer.pt")

        final_dir = write_checkpoint(self.out, self.step, model, self.side_dir, state, extra, self.cfg.keep,
                                     fresh=not fsdp)
        self.dist.barrier()
        self.emit("save", {"path": str(final_dir)})
        return final_dir

    def _restore(self, ckpt: Path) -> None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        if state["stage"] != self.stage.name:
            raise KvlError(f"{ckpt}: is a checkpoint of stage {state['stage']!r}, not {self.stage.name!r}")
        self.step = int(state["step"])
        self.model.config.text.rope_theta = state.get("rope_theta", self.model.config.text.rope_theta)
        blob = torch.load(ckpt / "optimizer.pt", weights_only=True, map_location="cpu")
        if (ckpt / "optim").is_dir():
            self._load_sharded_optimizer(ckpt / "optim")
        elif self.dist_mode == "fsdp":
            raise KvlError(f"{ckpt}: holds a {state.get('dist', 'zero1')} optimizer state, not an FSDP one; resume it "
                           f"with --dist {state.get('dist', 'zero1')}")
        else:
            self.optimizer.load_state_dict(blob["optimizer"])
        _set_rng_state(blob["rng"])
        if self.coca is not None:
            from kvl_core.checkpoint import load_into

            load_into(self.coca, ckpt / "coca", dtype=torch.float32, device=self.device)
        self.phase_index = -1
        self._ensure_phase()
        self.stream.load_state_dict(state["data"])
        self.emit("note", {"text": f"resumed from {ckpt} at step {self.step}"})

    def _load_sharded_optimizer(self, folder: Path) -> None:
        """Fill the optimizer from a torch.distributed.checkpoint folder saved at any world size."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import DefaultLoadPlanner

        if self.dist_mode != "fsdp":
            raise KvlError(f"{folder.parent}: holds a sharded (FSDP) optimizer state; resume it with --dist fsdp")
        import warnings

        from torch.distributed.checkpoint.api import CheckpointException

        sd = self.optimizer.dcp_state(empty=True)
        try:
            meta = dcp.FileSystemReader(str(folder)).read_metadata()
            files = sorted({info.relative_path for info in (meta.storage_data or {}).values()})
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise KvlError(f"{folder}: shard file {missing[0]} is missing ({len(missing)} of {len(files)} "
                               "missing); copy the whole checkpoint folder, or resume from an earlier one")
            saved = set(meta.state_dict_metadata)
            if not saved <= set(sd):
                raise KvlError(f"{folder}: the optimizer state does not fit this model and stage (it has "
                               f"{len(saved)} tensors, {len(saved - set(sd))} of them unknown here): wrong --model/--preset "
                               "or --stage/--optimizer for this checkpoint")
            for k in saved:
                want = tuple(sd[k].shape)
                got = tuple(getattr(meta.state_dict_metadata[k], "size", want))
                if got != want:
                    raise KvlError(f"{folder}: optimizer tensor {k} has shape {list(got)}, this model needs "
                                   f"{list(want)}: the checkpoint was made with another config")
            sd = {k: v for k, v in sd.items() if k in saved}
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
                dcp.load(sd, checkpoint_id=str(folder), planner=DefaultLoadPlanner(allow_partial_load=True))
        except KvlError:
            raise
        except (Exception, CheckpointException) as e:  # noqa: BLE001 - DCP reports damage in many ways
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise KvlError(f"{folder}: cannot read the sharded optimizer state (a shard file is missing or "
                           f"damaged: {first[:200]})") from None
        self.optimizer.load_dcp_state(sd)

    # ---- the run ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        metrics_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            _truncate_metrics(metrics_path, self.step)
        self.emit("start", {"steps": cfg.steps, "step": self.step, "stage": self.stage.name,
                            "frozen": sorted(self.frozen), "world": self.world,
                            "checkpointed_layers": self.checkpointed})
        last: dict[str, Any] = {}
        while self.step < cfg.steps:
            last = self.train_step()
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                last["eval_loss"] = self.evaluate()
            if self.rank == 0:
                with metrics_path.open("a") as f:
                    f.write(json.dumps(last) + "\n")
            self.emit("step", last)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                self.save()
            if cfg.stop_after is not None and self.step >= cfg.stop_after:
                return {"stopped_at": self.step}
        if "eval_loss" not in last and cfg.eval_data:
            last["eval_loss"] = self.evaluate()
        path = self.save()
        if self.rank == 0 and path is not None:
            publish_final(self.out, path)
            if cfg.plot:
                plot_metrics(metrics_path, self.out / "loss.png", title=f"kvl train --stage {self.stage.name}")
        summary = {"final": str(self.out / "final"), "steps": self.step, **{k: last.get(k) for k in ("loss", "eval_loss")},
                   "data": self.stream.stats.as_dict()}  # tokens, truncated/dropped/skipped samples
        self.emit("end", summary)
        return summary


DIST_MODES = ("auto", "fsdp", "ddp", "zero1")


class _GatheredModel:
    """Stands in for an FSDP-sharded model when writing its HF-layout checkpoint from the gathered tensors."""

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor] | None):
        self.config, self.tensors = model.config, tensors

    def save_pretrained(self, path: Path) -> None:
        from kvl_core.checkpoint import save_state_dict

        path.mkdir(parents=True, exist_ok=True)
        self.config.torch_dtype = str(next(iter(self.tensors.values())).dtype).removeprefix("torch.")
        save_state_dict(self.tensors, path)
        self.config.save(path / "config.json")


def _grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """clip_grad_norm_ over plain and DTensor (sharded) gradients alike; returns the total norm."""
    from torch.distributed.tensor import DTensor

    sharded = [p for p in params if isinstance(p, DTensor)]
    if not sharded:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    plain = [p for p in params if not isinstance(p, DTensor)]
    sq = torch.zeros((), dtype=torch.float64)
    for p in sharded:  # each rank's shards, then one sum over ranks
        sq += p.grad.to_local().double().square().sum()
    from kvl_core.training import distributed as dist

    dist.all_reduce_sum(sq)
    for p in plain:  # replicated: the same on every rank, counted once
        sq += p.grad.double().square().sum()
    total = float(sq.sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return total


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the file reads as one uninterrupted run."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def plot_metrics(metrics: Path, png: Path, title: str = "",
                 panels: list[tuple[str, list[str]]] | None = None, x: str = "step") -> Path | None:
    """Curves of metrics.jsonl against `x` ("step", or "images" where rows count them) as a PNG; skipped
    quietly when matplotlib is not installed. `panels` = [(y label, [keys...]), ...]; the default is the
    trainer's loss (+ eval loss) and lr."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return None
    panels = panels or [("loss", ["loss", "eval_loss"]), ("learning rate", ["lr"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, keys) in zip(axes[0], panels):
        for key in keys:
            pts = [(r[x], r[key]) for r in rows if r.get(key) is not None]
            if not pts:
                continue
            sparse = len(pts) < len(rows)  # e.g. eval every N steps: show the points
            ax.plot(*zip(*pts), "o-" if sparse else "-", label=key.replace("_", " "))
        ax.set_xlabel({"images": "images seen"}.get(x, x)), ax.set_ylabel(ylabel), ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def train(cfg: TrainConfig, on_event: Callable[[str, dict], None] | None = None) -> dict[str, Any]:
    return Trainer(cfg, on_event).run()
