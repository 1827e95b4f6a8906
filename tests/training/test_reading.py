"""Dense reading targets (training/reading.py): glyph -> patch labels, the merge order, the oracle tokens,
the dense head, and the reading stages' error path."""

import json
from types import SimpleNamespace as G

import pytest
import torch

from kvl_core.config import tiny
from kvl_core.errors import KvlError
from kvl_core.model.vision import MoonViT
from kvl_core.training import reading as R


def test_char_classes_cover_printable_ascii_bullet_and_the_rest():
    assert R.char_class(" ") == 1 and R.char_class("~") == 95 and R.char_class("A") == ord("A") - 31
    assert R.char_class("\u2022") == R.BULLET and R.char_class("é") == R.OTHER
    assert len({R.char_class(chr(o)) for o in range(32, 127)}) == 95


def test_patch_labels_put_each_glyph_in_the_patch_of_its_centre():
    # a 56x28 image, no resize: a 2x4 grid of 14-px patches, row-major
    glyphs = [G(char="a", x=20, y=5, bold=False), G(char="b", x=22, y=6, bold=True),
              G(char="c", x=25, y=7, bold=False),  # third in patch 1: dropped (2 slots)
              G(char=" ", x=50, y=20, bold=True)]  # a space never sets bold
    chars, bold = R.patch_labels(glyphs, (56, 28), (56, 28), (2, 4))
    assert chars.shape == (8, R.SLOTS)
    assert chars[1].tolist() == [R.char_class("a"), R.char_class("b")]
    assert chars[7].tolist() == [R.char_class(" "), 0]
    assert chars.sum() == chars[1].sum() + chars[7].sum()
    assert bold[1] == 1 and bold[7] == -100 and bold[0] == -100


def test_glyph_slots_name_each_glyphs_place_and_drop_the_overflow():
    glyphs = [G(char="a", x=20, y=5), G(char="b", x=22, y=6), G(char="c", x=25, y=7), G(char="d", x=60, y=30)]
    # patch 1 takes a and b, c overflows its two slots; d lies outside the 56x28 image and is clamped to the last patch
    assert R.glyph_slots(glyphs, (56, 28), (56, 28), (2, 4)) == [(1, 0), (1, 1), None, (7, 0)]


def test_patch_labels_follow_the_processors_resize():
    # 100x50 drawn, 200x100 fed to the ViT (2x): (20, 5) -> (40, 10) -> patch row 0, column 2
    chars, _ = R.patch_labels([G(char="x", x=20, y=5, bold=False)], (100, 50), (200, 100), (8, 16))
    assert chars[2, 0] == R.char_class("x") and int((chars > 0).sum()) == 1


def test_to_merged_matches_the_models_patch_merger():
    vit = MoonViT(tiny().vision)
    grids = [(4, 6), (2, 2)]
    per = [torch.arange(h * w) + 100 * i for i, (h, w) in enumerate(grids)]
    x = torch.cat(per).float().unsqueeze(-1)
    merged = vit.patch_merger(x, torch.tensor(grids)).squeeze(-1)
    ours = torch.cat([R.to_merged(p.unsqueeze(-1), g).squeeze(-1) for p, g in zip(per, grids)])
    assert torch.equal(merged.long(), ours)


def test_oracle_is_fixed_per_seed_and_sums_its_slots():
    a, b, c = R.Oracle(32, seed=0), R.Oracle(32, seed=0), R.Oracle(32, seed=1)
    chars = torch.randint(0, R.N_CLASSES, (5, 4, R.SLOTS))
    assert torch.equal(a(chars), b(chars)) and not torch.allclose(a(chars), c(chars))
    assert torch.count_nonzero(a(torch.zeros(3, 4, R.SLOTS, dtype=torch.long))) == 0  # no glyph: zero token
    only0, only1 = chars.clone(), chars.clone()
    only0[..., 1], only1[..., 0] = 0, 0
    assert torch.allclose(a(only0) + a(only1), a(chars), atol=1e-6)
    bold = torch.zeros(5, 4, dtype=torch.long)
    bold[0, 2] = 1
    diff = a(chars, bold) - a(chars)
    assert torch.count_nonzero(diff[1:]) == 0 and torch.count_nonzero(diff[0]) > 0


def test_dense_head_learns_fixed_labels():
    torch.manual_seed(0)
    head = R.DenseHead(16)
    feats = torch.randn(24, 16)
    chars = torch.randint(0, R.N_CLASSES, (24, R.SLOTS))
    bold = torch.randint(0, 2, (24,))
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first, acc0 = head.loss(feats, chars, bold)
    for _ in range(200):
        loss, acc = head.loss(feats, chars, bold)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1 * float(first.detach()) and float(acc) == 1.0 and float(acc0) < 0.5


def test_oracle_positions_are_smooth_and_leave_the_characters_alone():
    o = R.Oracle(64, seed=0)
    chars = torch.randint(0, R.N_CLASSES, (3, 4, R.SLOTS))
    pos = torch.tensor([[0.100, 0.50], [0.104, 0.50], [0.90, 0.50]])
    assert torch.equal(R.Oracle(64, seed=0)(chars), o(chars))  # the earlier stages' vectors are unchanged
    p = o(chars, pos=pos) - o(chars)
    assert torch.allclose(p, o.position(pos), atol=1e-5)
    near, far = (p[0] - p[1]).norm(), (p[0] - p[2]).norm()
    assert near < 0.5 * far  # neighbours get neighbouring vectors
    assert 0.5 < p.norm(dim=-1).mean() / o(chars).norm(dim=-1).mean() < 2  # about a character's weight

def test_digit_positions_spell_the_first_two_decimals():
    o = R.Oracle(64, seed=0, position_code="digits")
    pos = torch.tensor([[0.192, 0.544], [0.199, 0.541], [0.291, 0.544], [0.999, 1.0]])
    p = o.position(pos)
    assert torch.allclose(p[0], p[1])  # same two decimals of x and of y: the same vector
    want = o.digits[0, 0][1] + o.digits[0, 1][9] + o.digits[1, 0][5] + o.digits[1, 1][4]
    assert torch.allclose(p[0], want, atol=1e-5)
    assert not torch.allclose(p[0], p[2])  # 0.19 and 0.29 differ
    assert torch.isfinite(p[3]).all()  # 1.0 is clamped into the last cell
    assert torch.equal(R.Oracle(64, seed=0, position_code="digits")(torch.zeros(1, 4, R.SLOTS, dtype=torch.long), pos=pos[:1]), p[:1])
    with pytest.raises(ValueError):
        R.Oracle(64, position_code="polar")



def test_merged_positions_are_token_centres_in_merger_order():
    pos = R.merged_positions([(4, 6), (2, 2)])
    assert pos.shape == (3 * 2 + 1, 2)
    assert pos[:3, 1].eq(0.25).all() and torch.allclose(pos[:3, 0], torch.tensor([1 / 6, 0.5, 5 / 6]))
    assert pos[3, 1] == 0.75 and torch.equal(pos[-1], torch.tensor([0.5, 0.5]))


def test_mixed_sources_follow_their_weights_and_each_reads_its_own_epochs():
    a, b = [R._Doc(f"a{i}", [], []) for i in range(3)], [R._Doc(f"b{i}", [], []) for i in range(50)]
    batches = R._Batches([a, b], [1.0, 3.0], batch=8, seed=0)
    seen = [d.image for step in range(100) for d in batches.take(step)]
    share = sum(x.startswith("a") for x in seen) / len(seen)
    assert 0.2 < share < 0.3
    firsts = [x for x in seen if x.startswith("a")]
    assert all(sorted(firsts[k:k + 3]) == ["a0", "a1", "a2"] for k in range(0, len(firsts) - 2, 3))  # whole epochs
    again = R._Batches([a, b], [1.0, 3.0], batch=8, seed=0)
    assert [d.image for step in range(100) for d in again.take(step)] == seen
    assert R._sources(["x/ocr.jsonl", "y/screen.jsonl:2.5"]) == [("x/ocr.jsonl", 1.0), ("y/screen.jsonl", 2.5)]


def test_reading_stage_refuses_data_without_glyphs(tmp_path):
    data = tmp_path / "chats.jsonl"
    msgs = [{"role": "user", "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "x"}]
    data.write_text(json.dumps({"messages": msgs}) + "\n")
    with pytest.raises(KvlError, match=r"chats\.jsonl:1: no 'glyphs'"):
        R.train_reading(R.ReadConfig("read-lm", str(tmp_path / "out"), str(data), steps=1, batch=1, lr=1e-3,
                                     lr_vision=1e-3, preset="tiny"))


def test_unknown_reading_stage_is_named(tmp_path):
    with pytest.raises(KvlError, match="unknown reading stage 'read-all'"):
        R.train_reading(R.ReadConfig("read-all", str(tmp_path), "x.jsonl", steps=1, batch=1, lr=1e-3, lr_vision=1e-3))
