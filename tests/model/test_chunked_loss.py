"""The training loss in chunks of tokens (language.py `chunked_lm_loss`): equal to cross-entropy over the
whole row's logits, forward and gradients, while keeping no logits for backward (issue 18)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kvl_core.config import preset
from kvl_core.model.language import DeepseekV3ForCausalLM, chunked_lm_loss


def _saved_bytes(fn) -> tuple[torch.Tensor, int]:
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total


@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_loss_equals_whole_row_cross_entropy(chunk):
    torch.manual_seed(0)
    head = nn.Linear(32, 500, bias=False)
    x = torch.randn(2, 150, 32, requires_grad=True)
    labels = torch.randint(0, 500, (2, 150))
    labels[torch.rand(2, 150) < 0.3] = -100
    ref = F.cross_entropy(head(x).flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    gx_ref, gw_ref = torch.autograd.grad(ref, [x, head.weight])
    got = chunked_lm_loss(head, x, labels, chunk=chunk)
    gx, gw = torch.autograd.grad(got, [x, head.weight])
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert float((gx - gx_ref).abs().max()) <= 1e-6
    assert float((gw - gw_ref).abs().max()) <= 1e-5
    if chunk >= 300:  # one chunk: the plain path, same bits
        assert torch.equal(got, ref) and torch.equal(gw, gw_ref)


def test_chunks_keep_no_logits_for_backward():
    torch.manual_seed(0)
    head = nn.Linear(16, 4000, bias=False)
    x = torch.randn(1, 512, 16, requires_grad=True)
    labels = torch.randint(0, 4000, (1, 512))
    _, whole = _saved_bytes(lambda: chunked_lm_loss(head, x, labels, chunk=512))
    _, chunked = _saved_bytes(lambda: chunked_lm_loss(head, x, labels, chunk=64))
    logits_bytes = 512 * 4000 * 4
    assert whole >= logits_bytes  # the plain path keeps the [T, V] logits (and their softmax)
    assert chunked < logits_bytes / 8  # chunked: only the head inputs per chunk


def test_language_model_returns_the_summed_loss_from_labels():
    torch.manual_seed(0)
    cfg = preset("tiny").text
    model = DeepseekV3ForCausalLM(cfg)
    ids = torch.randint(0, cfg.vocab_size, (1, 40))
    labels = ids.roll(-1, 1)
    labels[0, -1] = -100
    logits = model(input_ids=ids).logits
    ref = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100, reduction="sum")
    out = model(input_ids=ids, labels=labels)
    assert out.logits is None and torch.equal(out.loss, ref)
