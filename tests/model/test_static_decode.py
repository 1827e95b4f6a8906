"""The fixed-shape decode step (what CUDA graphs capture) against the model's own decode, on the CPU."""

import torch

from kvl_core.generation import SamplingParams, StaticDecoder, generate


def test_static_decode_reproduces_reference_greedy_ids(tiny_model, golden):
    out = generate(tiny_model, golden["full.input_ids"], pixel_values=golden["full.pixel_values"],
                   image_grid_hws=golden["full.grid_hws"], params=SamplingParams(max_new_tokens=8), static_decode=True)
    assert out.new_tokens[0] == golden["decode.generated_ids"][0].tolist()


@torch.no_grad()
def test_static_step_logits_match_the_reference_decode_steps(tiny_model, golden):
    ids = golden["full.input_ids"]
    lm = tiny_model.language_model
    cache = lm.new_cache()
    logits = tiny_model(ids, pixel_values=golden["full.pixel_values"], image_grid_hws=golden["full.grid_hws"],
                        past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
    dec = StaticDecoder(lm, 1, 64)
    T = dec.cache.load(cache)
    ref = golden["decode.step_logits"]  # row 0: prefill's last logits, then one row per decode step
    torch.testing.assert_close(logits[0], ref[0], atol=1e-4, rtol=1e-4)
    for step in range(1, ref.shape[0]):
        nxt = golden["decode.generated_ids"][:, step - 1]
        logits = dec.step(nxt, torch.tensor([T + step - 1]), T + step - 1)
        torch.testing.assert_close(logits[0], ref[step], atol=1e-4, rtol=1e-4)


def test_static_decode_left_padded_batch_matches_dynamic(tiny_model):
    from torch.nn.utils.rnn import pad_sequence

    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in (4, 13, 9)]
    ids = pad_sequence(prompts, batch_first=True, padding_value=299, padding_side="left")
    mask = pad_sequence([torch.ones_like(x) for x in prompts], batch_first=True, padding_side="left")
    p = SamplingParams(max_new_tokens=7, do_sample=True, temperature=0.7, seed=3)
    dynamic = generate(tiny_model, ids, attention_mask=mask, params=p)
    static = generate(tiny_model, ids, attention_mask=mask, params=p, static_decode=True)
    assert static.new_tokens == dynamic.new_tokens
    assert tiny_model.language_model._kvl_static_decoder.capacity % 256 == 0


def test_graph_decoding_is_only_chosen_on_cuda_up_to_batch_64(monkeypatch):
    from kvl_core.generation import _want_static

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert not _want_static(cpu, 1, None)  # the CPU keeps the model's own decode path
    assert _want_static(cuda, 1, None) and _want_static(cuda, 64, None)
    assert not _want_static(cuda, 65, None)
    assert _want_static(cpu, 3, True) and not _want_static(cuda, 3, False)
    monkeypatch.setenv("KVL_CUDA_GRAPHS", "0")
    assert not _want_static(cuda, 1, None)
