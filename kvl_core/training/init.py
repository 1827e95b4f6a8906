"""Initialisation of a fresh model (a preset trained from scratch, e.g. kvl-nano).

Two schemes:

  legacy  every matrix and embedding N(0, std) with std = initializer_range (0.02), zero biases, unit
          norms. DeepSeek/Moonlight's rule for the language model; what kvl used for every part until
          the kvl-nano probes showed it stalls the vision tower (docs/nano.md, "Initialisation").
  kvl     per part (the default since then):
            vision tower + projector  fan-in scaled: N(0, gain / sqrt(fan_in)) for the patch conv and
                                      every linear (gain 1), the learned position table N(0, pos_std)
                                      with pos_std 1 (torch's default for a free table: it must be as
                                      large as the patch signal to be seen at all)
            language model            N(0, 0.02) as DeepSeek-V3 / Moonlight
            everywhere                zero biases, unit norms, zero router correction bias

A ViT initialised at N(0, 0.02) starts with patch features ~30x smaller than a fan-in init gives them
at the 588-input patch conv and a position table 50x below the content signal; pre-norm blocks then
see mostly noise and the whole model waits for the tower to grow. `overrides` change one factor at a
time for the probes in bench/nano_probe.py: vit / proj / lm = "fanin" or a float std, pos = float,
zero_out = 0/1 (zero-init each residual block's output projection: ViT wo and fc1, LM o_proj and
down_proj).
"""

from __future__ import annotations

import math

import torch

SCHEMES = ("kvl", "legacy")
_OUTPUT_PROJ = (".wo.weight", ".mlp.fc1.weight", ".o_proj.weight", ".down_proj.weight")


def parse_scheme(spec: str) -> tuple[str, dict[str, str]]:
    """"kvl", "legacy" or "kvl:pos=0.02,zero_out=1" -> (scheme, overrides)."""
    name, _, rest = spec.partition(":")
    if name not in SCHEMES:
        raise ValueError(f"unknown init scheme {name!r}; choose from {', '.join(SCHEMES)}")
    overrides = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    return name, overrides


def _part(name: str) -> str:
    if name.startswith("vision_tower."):
        return "vit"
    if name.startswith("multi_modal_projector."):
        return "proj"
    return "lm"


def part_rules(scheme: str, std: float, overrides: dict[str, str] | None = None) -> dict[str, str | float]:
    """The rule of each part: "fanin" or a std, plus pos (std of the ViT position table) and zero_out."""
    if scheme == "legacy":
        rules: dict[str, str | float] = {"vit": std, "proj": std, "lm": std, "pos": std, "zero_out": 0.0}
    else:
        rules = {"vit": "fanin", "proj": "fanin", "lm": std, "pos": 1.0, "zero_out": 0.0}
    for k, v in (overrides or {}).items():
        if k not in rules:
            raise ValueError(f"unknown init override {k!r}; known: {', '.join(rules)}")
        rules[k] = v if v == "fanin" else float(v)
    return rules


def init_weights(model: torch.nn.Module, std: float, seed: int, scheme: str = "kvl") -> None:
    """Initialise every parameter of `model` in place from one seeded generator (deterministic: the
    same seed, scheme and parameter order give the same tensors on any machine)."""
    name_, overrides = parse_scheme(scheme)
    rules = part_rules(name_, std, overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias") or (p.dim() == 1 and "norm" not in name):
                p.zero_()
                continue
            if p.dim() == 1:
                p.fill_(1.0)
                continue
            if rules["zero_out"] and name.endswith(_OUTPUT_PROJ):
                p.zero_()
                continue
            if name.endswith("pos_emb.weight"):
                s = float(rules["pos"])
            else:
                rule = rules[_part(name)]
                # fan-in of a linear [out, in] or conv [out, in, kh, kw]; embeddings are looked up, not
                # multiplied, so they keep the fixed std
                s = 1.0 / math.sqrt(p[0].numel()) if rule == "fanin" and "embed_tokens" not in name else (
                    std if rule == "fanin" else float(rule))
            p.copy_(torch.randn(p.shape, generator=g) * s)
