"""Our Moonlight/DeepSeek-V3 language model against transformers' own DeepseekV3ForCausalLM.

transformers is an independent implementation (fused experts, its own MLA and router code), so
agreement on random configs — non-zero correction bias, several shared experts, several dense
layers, grouped routing — checks our math rather than our reading of one reference file.
"""

import pytest
import torch

from kvl_core.config import TextConfig
from kvl_core.model.language import DeepseekV3ForCausalLM

transformers = pytest.importorskip("transformers")

CONFIGS = [
    # (seed, overrides)
    (0, dict()),
    (1, dict(n_shared_experts=3, first_k_dense_replace=2, num_hidden_layers=4)),
    (2, dict(n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=2, n_shared_experts=1)),
    (3, dict(q_lora_rank=24, num_attention_heads=2, num_key_value_heads=2, routed_scaling_factor=1.0)),
]


def tiny_text_config(**kw) -> TextConfig:
    base = dict(vocab_size=120, hidden_size=48, intermediate_size=72, moe_intermediate_size=16,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=16,
                qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=12, n_routed_experts=8,
                num_experts_per_tok=2, n_shared_experts=2, first_k_dense_replace=1, rope_theta=800000.0,
                max_position_embeddings=256, pad_token_id=None)
    base.update(kw)
    return TextConfig(**base)


def randomize_(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("e_score_correction_bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.4 - 0.2)
            elif p.dim() == 1:  # norms: around 1, so a wrong eps or cast would show
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def to_hf(cfg: TextConfig, ours: DeepseekV3ForCausalLM):
    from kvl_core.model.hf_compat import to_transformers

    return to_transformers(ours)


@pytest.mark.parametrize("seed,overrides", CONFIGS)
def test_logits_match_transformers(seed, overrides):
    cfg = tiny_text_config(**overrides)
    torch.manual_seed(seed)
    ours = DeepseekV3ForCausalLM(cfg).eval()
    randomize_(ours, seed)
    hf = to_hf(cfg, ours)
    ids = torch.randint(0, cfg.vocab_size, (2, 17), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        a = ours(ids).logits
        b = hf(ids).logits.float()
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_cached_decode_matches_transformers():
    cfg = tiny_text_config()
    ours = DeepseekV3ForCausalLM(cfg).eval()
    randomize_(ours, 7)
    hf = to_hf(cfg, ours)
    ids = torch.randint(0, cfg.vocab_size, (1, 9), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        cache = ours.new_cache()
        step = ours(ids, past_key_values=cache, use_cache=True).logits[:, -1]
        ours_steps, seq = [step], ids
        for _ in range(5):
            nxt = step.argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
            step = ours(nxt, past_key_values=cache, use_cache=True).logits[:, -1]
            ours_steps.append(step)
        hf_steps = [hf(seq[:, : 9 + i]).logits[:, -1].float() for i in range(6)]
    torch.testing.assert_close(torch.stack(ours_steps), torch.stack(hf_steps), atol=1e-4, rtol=1e-4)
