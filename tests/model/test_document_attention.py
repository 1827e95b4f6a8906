"""Document attention of packed rows (language.py `DocumentLayout`) equals the dense T x T masked
reference (`document_mask`) on random packings, forward and backward, for every CPU-runnable backend."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kvl_core.config import preset
from kvl_core.model.language import FLEX_BLOCK, DeepseekV3ForCausalLM, DocumentLayout, document_mask

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")


def packing(draw_lengths: list[list[int]]) -> torch.Tensor:
    """Rows of documents (lengths) -> doc_ids [B, T]; rows shorter than the widest get a padding document."""
    T = max(sum(r) for r in draw_lengths)
    rows = []
    for lens in draw_lengths:
        ids = [d for d, n in enumerate(lens) for _ in range(n)]
        ids += [len(lens)] * (T - len(ids))
        rows.append(ids)
    return torch.tensor(rows)


rows_strategy = st.lists(st.lists(st.integers(1, 90), min_size=1, max_size=6), min_size=1, max_size=3)


# FlexAttention has no backward on CPU (torch 2.13): its gradients are checked where CUDA is.
GRADS = {"mask": True, "sdpa": True, "flex": torch.cuda.is_available()}


def _attend(backend: str, doc_ids, q, k, v, scale):
    if not GRADS[backend]:
        with torch.no_grad():
            return DocumentLayout.from_doc_ids(doc_ids, backend).attend(q, k, v, scale), None
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = DocumentLayout.from_doc_ids(doc_ids, backend).attend(q, k, v, scale)
    g = torch.Generator().manual_seed(1)
    (out * torch.randn(out.shape, generator=g)).sum().backward()
    return out.detach(), [t.grad for t in (q, k, v)]


@settings(max_examples=12, deadline=None)
@given(lengths=rows_strategy, seed=st.integers(0, 2**16), heads=st.sampled_from([1, 3]))
def test_backends_equal_the_masked_reference(lengths, seed, heads):
    doc_ids = packing(lengths)
    B, T = doc_ids.shape
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, heads, T, 24, generator=g) for _ in range(2))
    v = torch.randn(B, heads, T, 16, generator=g)
    ref, ref_grads = _attend("mask", doc_ids, q, k, v, 0.3)
    for backend in ("sdpa", "flex"):
        out, grads = _attend(backend, doc_ids, q, k, v, 0.3)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=lambda m: f"{backend} forward: {m}")
        for name, a, b in zip("qkv", grads or [], ref_grads if grads else []):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m: f"{backend} d{name}: {m}")


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.lists(st.integers(1, 300), min_size=1, max_size=8), min_size=1, max_size=3))
def test_flex_block_mask_classifies_blocks_like_the_dense_mask(lengths):
    """Blocks FlexAttention skips must be all-masked and blocks it runs without mask_mod all-visible."""
    doc_ids = packing(lengths)
    B, T = doc_ids.shape
    dense = document_mask(doc_ids)[:, 0]
    nb = -(-T // FLEX_BLOCK)
    dense = torch.nn.functional.pad(dense, (0, nb * FLEX_BLOCK - T, 0, nb * FLEX_BLOCK - T))
    blocks = dense.view(B, nb, FLEX_BLOCK, nb, FLEX_BLOCK)
    any_visible, all_visible = blocks.any((2, 4)), blocks.all((2, 4))
    bm = DocumentLayout.from_doc_ids(doc_ids, "flex").block_mask("cpu")
    for b in range(B):
        for qb in range(nb):
            partial = set(bm.kv_indices[b, 0, qb, : bm.kv_num_blocks[b, 0, qb]].tolist())
            full = set(bm.full_kv_indices[b, 0, qb, : bm.full_kv_num_blocks[b, 0, qb]].tolist())
            assert not partial & full
            for kb in range(nb):
                if any_visible[b, qb, kb]:
                    assert kb in partial | full, (b, qb, kb)
                if kb in full:
                    assert all_visible[b, qb, kb], (b, qb, kb)


def test_equal_length_documents_are_batched_into_one_call(monkeypatch):
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q, *a, **kw):
        calls.append(tuple(q.shape))
        return real(q, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    doc_ids = packing([[5, 5, 7], [5, 7, 3]])  # lengths 5 x3, 7 x2, 3 x1 and 2 tokens of padding (T = 17)
    q = torch.randn(2, 2, 17, 8)
    DocumentLayout.from_doc_ids(doc_ids, "sdpa").attend(q, q, q, 0.5)
    assert sorted(calls) == sorted([(3, 2, 5, 8), (2, 2, 7, 8), (1, 2, 3, 8), (1, 2, 2, 8)])


@pytest.fixture(scope="module")
def tiny_lm():
    torch.manual_seed(0)
    return DeepseekV3ForCausalLM(preset("tiny").text).float()


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_language_model_loss_and_grads_match_the_masked_path(tiny_lm, monkeypatch, backend):
    g = torch.Generator().manual_seed(3)
    doc_ids = packing([[40, 13, 70, 1], [124], [9, 9, 9, 30]])
    B, T = doc_ids.shape
    ids = torch.randint(0, 256, (B, T), generator=g)
    change = torch.ones_like(doc_ids, dtype=torch.bool)
    change[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    # positions restart per document: the index minus the start of its document
    start = torch.where(change, torch.arange(T).expand(B, T), 0).cummax(1).values
    pos = torch.arange(T).expand(B, T) - start

    def run(name):
        monkeypatch.setenv("KVL_DOC_ATTENTION", name)
        tiny_lm.zero_grad()
        with torch.set_grad_enabled(GRADS[backend]):
            logits = tiny_lm(ids, position_ids=pos, doc_ids=doc_ids).logits
        if not GRADS[backend]:
            return logits, {}
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in tiny_lm.named_parameters() if p.grad is not None}

    ref_logits, ref_grads = run("mask")
    logits, grads = run(backend)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    assert grads.keys() == (ref_grads.keys() if GRADS[backend] else set())
    for n in grads:
        torch.testing.assert_close(grads[n], ref_grads[n], atol=1e-5, rtol=1e-5, msg=lambda m: f"{n}: {m}")
