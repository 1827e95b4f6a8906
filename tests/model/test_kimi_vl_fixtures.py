"""Parity with the reference Kimi-VL implementation on the tiny golden fixtures (float32, CPU).

Tolerance atol = rtol = 1e-4 as the fixture README suggests (reference fp32 vs fp64 differ by
<= 6.2e-6); routing indices and greedy ids must be identical.
"""

import pytest
import torch

TOL = dict(atol=1e-4, rtol=1e-4)


def close(a, b):
    torch.testing.assert_close(a, b, **TOL)


@torch.no_grad()
def test_vision_tower_stages(tiny_model, golden):
    vt = tiny_model.vision_tower
    pv, grids = golden["vision.pixel_values"], golden["vision.grid_hws"]
    close(vt.patch_embed(pv, grids), golden["vision.patch_embed_out"])
    enc = vt(pv, grids)
    close(enc, golden["vision.encoder_out"])
    merged = vt.patch_merger(enc, grids)
    close(merged, golden["vision.merged"])
    close(tiny_model.multi_modal_projector(merged), golden["vision.projector_out"])


@torch.no_grad()
def test_language_model_logits_and_hidden_states(tiny_model, golden):
    out = tiny_model.language_model(golden["lm.input_ids"], output_hidden_states=True)
    close(out.logits, golden["lm.logits"])
    assert len(out.hidden_states) == golden["lm.hidden_states"].shape[0]
    for ours, ref in zip(out.hidden_states, golden["lm.hidden_states"]):
        close(ours, ref)


@torch.no_grad()
@pytest.mark.parametrize("layer", [1, 2])
def test_routing_indices_and_weights(tiny_model, golden, layer):
    captured = {}
    gate = tiny_model.language_model.model.layers[layer].mlp.gate
    handle = gate.register_forward_hook(lambda mod, inp, out: captured.setdefault("out", out))
    try:
        tiny_model.language_model(golden["lm.input_ids"])
    finally:
        handle.remove()
    idx, w = captured["out"]
    idx, order = idx.sort(-1)
    assert torch.equal(idx, golden[f"lm.layer{layer}.topk_idx"])
    close(w.gather(1, order), golden[f"lm.layer{layer}.topk_weight"])


@torch.no_grad()
def test_full_model_with_two_images(tiny_model, golden):
    feats = tiny_model.get_image_features(golden["full.pixel_values"], golden["full.grid_hws"])
    close(feats, golden["full.image_features"])
    embeds = tiny_model.merge_image_features(
        golden["full.input_ids"], tiny_model.language_model.model.embed_tokens(golden["full.input_ids"]), feats)
    close(embeds, golden["full.inputs_embeds"])
    out = tiny_model(golden["full.input_ids"], pixel_values=golden["full.pixel_values"],
                     image_grid_hws=golden["full.grid_hws"])
    close(out.logits, golden["full.logits"])


@torch.no_grad()
def test_greedy_decode_with_latent_cache(tiny_model, golden):
    ids = golden["full.input_ids"]
    cache = tiny_model.language_model.new_cache()
    logits = tiny_model(ids, golden["full.pixel_values"], golden["full.grid_hws"],
                        past_key_values=cache, use_cache=True).logits[:, -1]
    steps, generated = [], []
    for _ in range(golden["decode.generated_ids"].shape[1]):
        steps.append(logits[0])
        nxt = logits.argmax(-1, keepdim=True)
        generated.append(int(nxt))
        logits = tiny_model(nxt, past_key_values=cache, use_cache=True).logits[:, -1]
    assert generated == golden["decode.generated_ids"][0].tolist()
    close(torch.stack(steps), golden["decode.step_logits"])
    # the loop fed every generated id back, so all of them are cached; only the latent is stored:
    # (kv_lora_rank + qk_rope_head_dim) fp32 values per layer per token
    t = tiny_model.config.text
    assert cache.nbytes() == (ids.shape[1] + len(generated)) * t.num_hidden_layers * (t.kv_lora_rank + t.qk_rope_head_dim) * 4


@torch.no_grad()
def test_uncached_logits_match_cached(tiny_model, golden):
    seq = torch.cat([golden["full.input_ids"], golden["decode.generated_ids"][:, :7]], 1)
    out = tiny_model(seq, golden["full.pixel_values"], golden["full.grid_hws"])
    n = golden["full.input_ids"].shape[1]
    close(out.logits[0, n - 1 :], golden["decode.nocache_step_logits"])
    close(golden["decode.nocache_step_logits"], golden["decode.step_logits"])
