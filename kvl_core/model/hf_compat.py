"""Our Moonlight language model as a transformers `DeepseekV3ForCausalLM` (same weights).

transformers (5.x) implements DeepSeek-V3 independently — fused experts, its own MLA and router —
so it serves as the parity oracle in tests and the speed reference in benchmarks. Requires the
optional `transformers` package; imported lazily.
"""

from __future__ import annotations

import torch

from kvl_core.config import TextConfig


def transformers_config(cfg: TextConfig, attn_implementation: str = "eager"):
    import transformers

    hf_cfg = transformers.DeepseekV3Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        moe_intermediate_size=cfg.moe_intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.num_key_value_heads,
        n_shared_experts=cfg.n_shared_experts, n_routed_experts=cfg.n_routed_experts,
        routed_scaling_factor=cfg.routed_scaling_factor, kv_lora_rank=cfg.kv_lora_rank,
        q_lora_rank=cfg.q_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
        qk_nope_head_dim=cfg.qk_nope_head_dim, n_group=cfg.n_group, topk_group=cfg.topk_group,
        num_experts_per_tok=cfg.num_experts_per_tok, first_k_dense_replace=cfg.first_k_dense_replace,
        norm_topk_prob=cfg.norm_topk_prob, rms_norm_eps=cfg.rms_norm_eps,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=False, attention_bias=cfg.attention_bias, num_nextn_predict_layers=0,
    )
    hf_cfg._attn_implementation = attn_implementation
    return hf_cfg


def to_transformers(model, attn_implementation: str = "eager"):
    """A transformers DeepseekV3ForCausalLM holding the weights of our `DeepseekV3ForCausalLM`."""
    import transformers

    hf = transformers.DeepseekV3ForCausalLM(transformers_config(model.config, attn_implementation)).eval()
    sd = {k: v for k, v in model.state_dict().items() if ".mlp.experts." not in k}
    for i, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):  # transformers stores experts fused: [E, 2I, H] and [E, H, I]
            ex = layer.mlp.experts
            sd[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([e.gate_proj.weight, e.up_proj.weight]) for e in ex])
            sd[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([e.down_proj.weight for e in ex])
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "rotary" not in m]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping to transformers is incomplete: missing {missing}, unexpected {unexpected}")
    return hf
