"""Kimi-VL: MoonViT -> 2x2 patch merge -> MLP projector -> Moonlight MoE language model (paper §2.1, Fig. 3).

The text holds one `<|media_pad|>` token per merged image token; their embedding rows are
replaced, in order of appearance (batch-major, then position), by the projector's outputs.
Positions in the language model are plain 1-D over the whole sequence, image tokens included.

Shape legend: B batch, T tokens, L packed patches, N images, M image tokens, E text hidden.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kvl_core.config import KimiVLConfig
from kvl_core.errors import KvlError
from kvl_core.model.language import CausalLMOutput, DeepseekV3ForCausalLM
from kvl_core.model.projector import MultiModalProjector
from kvl_core.model.vision import MoonViT

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "float": torch.float32}


def as_dtype(dtype) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise KvlError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16") from None


class KimiVLForConditionalGeneration(nn.Module):
    def __init__(self, config: KimiVLConfig):
        super().__init__()
        self.config = config
        self.vision_tower = MoonViT(config.vision)
        self.multi_modal_projector = MultiModalProjector(config)
        self.language_model = DeepseekV3ForCausalLM(config.text)

    # ---- checkpoints --------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype=None, device="cpu") -> "KimiVLForConditionalGeneration":
        """Load an HF-layout Kimi-VL checkpoint directory (config.json + safetensors).

        The module is built on the meta device and each tensor is materialised straight into the
        requested dtype/device, so loading never holds a second copy of the weights.
        """
        from kvl_core import checkpoint

        path = checkpoint.resolve_checkpoint_dir(path)
        config = KimiVLConfig.from_file(path / "config.json")
        with torch.device("meta"):
            model = cls(config)
        checkpoint.load_into(model, path, dtype=as_dtype(dtype), device=device)
        model.config.torch_dtype = str(model.dtype).removeprefix("torch.")
        model.name_or_path = str(path)
        return model.eval()

    def save_pretrained(self, path: str | Path, max_shard_bytes: int = 5 * 2**30) -> None:
        from kvl_core import checkpoint

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.torch_dtype = str(self.dtype).removeprefix("torch.")
        checkpoint.save_state_dict(self, path, max_shard_bytes=max_shard_bytes)
        self.config.save(path / "config.json")

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.lm_head.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.language_model.lm_head.weight.device

    # ---- forward ------------------------------------------------------------------------------

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_hws: torch.Tensor) -> torch.Tensor:
        """[L, 3, p, p] packed patches + [N, 2] grids -> [M, E] projected image tokens in image order."""
        pixel_values = pixel_values.to(device=self.device, dtype=self.vision_tower.patch_embed.proj.weight.dtype)
        feats = self.vision_tower(pixel_values, image_grid_hws)
        return self.multi_modal_projector(self.vision_tower.patch_merger(feats, image_grid_hws))

    def merge_image_features(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor,
                             image_features: torch.Tensor) -> torch.Tensor:
        is_pad = input_ids == self.config.media_placeholder_token_id
        n_pad, n_img = int(is_pad.sum()), image_features.shape[0]
        if n_pad != n_img:
            raise KvlError(
                f"the prompt has {n_pad} image placeholder tokens but the images give {n_img} image tokens; "
                "build prompts with the processor so each image's <|media_pad|> is expanded to its token count"
            )
        inputs_embeds = inputs_embeds.to(image_features.dtype).clone()
        inputs_embeds[is_pad] = image_features
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_hws: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        doc_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CausalLMOutput:
        embeds = self.language_model.model.embed_tokens(input_ids)
        if pixel_values is not None and pixel_values.numel() > 0:
            if image_grid_hws is None:
                raise KvlError("pixel_values were given without image_grid_hws")
            embeds = self.merge_image_features(input_ids, embeds, self.get_image_features(pixel_values, image_grid_hws))
        elif (input_ids == self.config.media_placeholder_token_id).any() and (past_key_values is None or past_key_values.seq_len == 0):
            raise KvlError("the prompt has image placeholder tokens but no pixel_values were given")
        return self.language_model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
            doc_ids=doc_ids,
            labels=labels,
        )

    # ---- generation (HF-style low-level API) --------------------------------------------------

    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_hws: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 512,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Prompt ids followed by the new ids, [B, T + new]; rows that stopped early are padded."""
        from kvl_core.generation import SamplingParams, generate

        params = SamplingParams(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty, seed=seed)
        if pad_token_id is None:
            pad_token_id = self.config.text.pad_token_id
        return generate(self, input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                        image_grid_hws=image_grid_hws, params=params, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id).sequences
