"""Synthetic training data for kvl-nano: rendered documents with their Markdown (OCR), desktop screens
with click targets (GUI grounding), image-caption pairs (CoCa ViT stage) and Markdown text (pre-training),
following the data recipe of the Kimi-VL report §2.3 at toy scale.

Names are re-exported lazily so that importing the package does not pull in Pillow/numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DocSpec": "documents", "DocPlan": "documents", "LAYOUTS": "documents", "render_document": "documents",
    "plan_document": "documents", "draw_document": "documents",
    "ScreenSpec": "screens", "ScreenPlan": "screens", "Target": "screens", "render_screen": "screens",
    "plan_screen": "screens", "draw_screen": "screens", "ground_truth_answer": "screens",
    "render_caption_pair": "captions", "render_shapes": "captions", "caption_document": "captions",
    "caption_screen": "captions",
    "SynthConfig": "dataset", "write_train": "dataset", "heldout": "dataset", "HELDOUT_SEED": "dataset",
    "TRAIN_KINDS": "dataset", "HELDOUT_KINDS": "dataset", "is_reserved": "dataset",
    "image_tokens": "common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'kvl_core.synth' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kvl_core.synth.{mod}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
