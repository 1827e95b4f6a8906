"""The Kimi-VL model, one file per part: vision.py (MoonViT), projector.py, language.py (MLA
decoder), moe.py (router + experts), cache.py (latent KV cache), kimi_vl.py (the combined model)."""

from kvl_core.model.kimi_vl import KimiVLForConditionalGeneration
from kvl_core.model.language import CausalLMOutput, DeepseekV3ForCausalLM
from kvl_core.model.vision import MoonViT

__all__ = ["KimiVLForConditionalGeneration", "DeepseekV3ForCausalLM", "MoonViT", "CausalLMOutput"]
