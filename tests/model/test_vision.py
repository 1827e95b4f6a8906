"""MoonViT: NaViT packing isolation, patch-merger order, guard rails."""

import pytest
import torch

from kvl_core.config import tiny
from kvl_core.model.vision import MoonViT, varlen_attention


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    return MoonViT(tiny().vision).eval()


@torch.no_grad()
def test_packed_batch_equals_each_image_alone(tower):
    grids = torch.tensor([[2, 4], [10, 2], [4, 6], [2, 4], [6, 6]])  # repeated size exercises batching by length
    sizes = (grids[:, 0] * grids[:, 1]).tolist()
    pv = torch.randn(sum(sizes), 3, 14, 14, generator=torch.Generator().manual_seed(1))
    packed = tower(pv, grids)
    start = 0
    for g, n in zip(grids, sizes):
        alone = tower(pv[start : start + n], g[None])
        torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=1e-5)
        start += n


@torch.no_grad()
def test_varlen_attention_never_crosses_images():
    # Changing image 2's keys/values must leave image 1's output untouched.
    q, k, v = (torch.randn(10, 2, 8) for _ in range(3))
    out1 = varlen_attention(q, k, v, [0, 4, 10])
    k2, v2 = k.clone(), v.clone()
    k2[4:] += 5
    v2[4:] -= 3
    out2 = varlen_attention(q, k2, v2, [0, 4, 10])
    torch.testing.assert_close(out1[:4], out2[:4])
    assert not torch.allclose(out1[4:], out2[4:])
    # and equals plain attention over image 1 alone
    ref = torch.softmax((q[:4].transpose(0, 1) @ k[:4].transpose(0, 1).transpose(1, 2)) / 8**0.5, -1) @ v[:4].transpose(0, 1)
    torch.testing.assert_close(out1[:4], ref.transpose(0, 1), atol=1e-5, rtol=1e-5)


def test_patch_merger_groups_2x2_blocks_row_major(tower):
    h, w = 4, 6
    # feature = (row, col) of the patch, so the expected grouping is readable
    rows = torch.arange(h).repeat_interleave(w)
    cols = torch.arange(w).repeat(h)
    x = torch.stack([rows, cols], -1).float()
    merged = tower.patch_merger(x, torch.tensor([[h, w]]))
    assert merged.shape == (h * w // 4, 4, 2)
    for t in range(merged.shape[0]):
        R, C = divmod(t, w // 2)
        expect = [[2 * R, 2 * C], [2 * R, 2 * C + 1], [2 * R + 1, 2 * C], [2 * R + 1, 2 * C + 1]]
        assert merged[t].tolist() == expect


def test_grid_mismatch_and_oversized_grid_are_rejected(tower):
    with pytest.raises(ValueError, match="patches"):
        tower(torch.zeros(5, 3, 14, 14), torch.tensor([[2, 2]]))
    with pytest.raises(ValueError, match="RoPE"):
        tower(torch.zeros(512 * 2, 3, 14, 14), torch.tensor([[512, 2]]))
