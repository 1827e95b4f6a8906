"""Generation: fixture parity through the public API, batching, stopping, sampling, thinking budget."""

import torch
from torch import nn

from kvl_core.generation import THINK_CLOSE, SamplingParams, generate, process_logits
from kvl_core.model.cache import LatentCache


def test_model_generate_reproduces_reference_greedy_ids(tiny_model, golden):
    out = tiny_model.generate(golden["full.input_ids"], golden["full.pixel_values"], golden["full.grid_hws"],
                              max_new_tokens=8)
    assert out.shape == (1, golden["full.input_ids"].shape[1] + 8)
    assert torch.equal(out[:, : golden["full.input_ids"].shape[1]], golden["full.input_ids"])
    assert out[0, -8:].tolist() == golden["decode.generated_ids"][0].tolist()


def test_batched_prompts_of_different_lengths_match_one_by_one(tiny_model):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (n,), generator=g) for n in (5, 11, 8)]
    T = max(len(x) for x in prompts)
    ids = torch.full((3, T), 299)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, T - len(x):] = x
        mask[i, T - len(x):] = 1
    batched = generate(tiny_model, ids, attention_mask=mask, params=SamplingParams(max_new_tokens=6))
    for i, x in enumerate(prompts):
        alone = generate(tiny_model, x[None], params=SamplingParams(max_new_tokens=6))
        assert batched.new_tokens[i] == alone.new_tokens[0]
    assert batched.prompt_tokens == [5, 11, 8]


def test_stop_id_ends_a_row_and_pads_it(tiny_model, golden):
    # the reference greedy continuation is 273 x4, then 66: stopping on 66 must end after 5 tokens
    out = generate(tiny_model, golden["full.input_ids"], pixel_values=golden["full.pixel_values"],
                   image_grid_hws=golden["full.grid_hws"], params=SamplingParams(max_new_tokens=8),
                   eos_token_id=66, pad_token_id=299)
    assert out.new_tokens[0] == [273, 273, 273, 273, 66]
    assert out.finish_reasons == ["stop"]
    no_stop = generate(tiny_model, golden["full.input_ids"], pixel_values=golden["full.pixel_values"],
                       image_grid_hws=golden["full.grid_hws"], params=SamplingParams(max_new_tokens=3))
    assert no_stop.finish_reasons == ["length"] and len(no_stop.new_tokens[0]) == 3


def test_sampling_is_seeded_and_filters_work():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.9]])
    p = SamplingParams(do_sample=True, temperature=1.0, seed=0)
    draws = lambda params, seed: [int(process_logits(logits, params, None, torch.Generator().manual_seed(seed)))
                                  for _ in range(1)]
    assert draws(p, 1) == draws(p, 1)
    top1 = SamplingParams(do_sample=True, top_k=1)
    assert {int(process_logits(logits, top1, None, torch.Generator().manual_seed(s))) for s in range(20)} == {1}
    nucleus = SamplingParams(do_sample=True, top_p=0.5)  # token 1 alone holds < 0.5, tokens {1, 3} reach it
    got = {int(process_logits(logits, nucleus, None, torch.Generator().manual_seed(s))) for s in range(200)}
    assert got == {1, 3}


def test_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    p = SamplingParams(repetition_penalty=1.5)
    assert int(process_logits(logits, p, torch.tensor([[0]]), None)) == 1  # 2.0/1.5 < 1.9
    assert int(process_logits(logits, SamplingParams(), torch.tensor([[0]]), None)) == 0


class ByteCodec:
    def encode(self, text):
        return list(text.encode())

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="ignore")


class ScriptedLM(nn.Module):
    """Emits a fixed script regardless of input (a control-flow double, not a model test):
    position k of the continuation gets a one-hot logit; forced tokens are just echoed back."""

    def __init__(self, script: list[int], vocab: int = 300):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.w = nn.Parameter(torch.zeros(1))
        self.fed: list[int] = []

    def new_cache(self, capacity=0):
        return LatentCache(1)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, logits_to_keep=0, **_):
        if past_key_values.seq_len:
            self.fed.append(int(input_ids[0, -1]))
        past_key_values._len[0] += input_ids.shape[1]
        k = len(self.fed)
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -10.0)
        logits[:, :, self.script[min(k, len(self.script) - 1)]] = 10.0
        from kvl_core.model.language import CausalLMOutput
        return CausalLMOutput(logits=logits)


def test_thinking_budget_forces_the_close_marker():
    codec = ByteCodec()
    script = codec.encode("◁think▷") + codec.encode("x" * 50)
    lm = ScriptedLM(script)
    out = generate(lm, torch.tensor([[1, 2, 3]]), codec=codec,
                   params=SamplingParams(max_new_tokens=40, thinking_budget=10))
    text = codec.decode(out.new_tokens[0])
    assert text.startswith("◁think▷")
    assert THINK_CLOSE in text
    reasoning = text[len("◁think▷"): text.index(THINK_CLOSE)]
    assert reasoning == "x" * 10  # the budget counts the tokens after the opening marker
    assert out.thinking_tokens[0] == 10
    free = generate(ScriptedLM(script), torch.tensor([[1, 2, 3]]), codec=codec,
                    params=SamplingParams(max_new_tokens=40))
    assert THINK_CLOSE not in codec.decode(free.new_tokens[0])


def test_stop_strings():
    codec = ByteCodec()
    lm = ScriptedLM(codec.encode("hello STOP world"))
    out = generate(lm, torch.tensor([[1]]), codec=codec, params=SamplingParams(max_new_tokens=30, stop_strings=["STOP"]))
    assert codec.decode(out.new_tokens[0]) == "hello STOP"
    assert out.finish_reasons == ["stop"]
