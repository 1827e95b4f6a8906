"""Checkpoint IO (kvl_core/checkpoint.py): safetensors round trips, strict validation, refusal of bad input."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from kvl_core import checkpoint as ck
from kvl_core import stats
from kvl_core.config import KimiVLConfig
from kvl_core.errors import KvlError


class Small(nn.Module):
    """Every kind of tensor the loader must handle: linear/norm weights, an embedding, a frozen parameter,
    integer and bool buffers, and a submodule list (digit names)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.embed = nn.Embedding(16, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(3)])
        self.norm = nn.LayerNorm(width)
        self.frozen = nn.Parameter(torch.randn(4), requires_grad=False)
        self.register_buffer("positions", torch.arange(6))
        self.register_buffer("mask", torch.tensor([True, False, True]))


def make(seed: int = 0, **kw) -> Small:
    torch.manual_seed(seed)
    return Small(**kw)


def meta_small(**kw) -> Small:
    with torch.device("meta"):
        return Small(**kw)


def assert_same(a: nn.Module, b: nn.Module, dtype: torch.dtype | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        want = sa[k].to(dtype) if dtype is not None and sa[k].is_floating_point() else sa[k]
        assert sb[k].dtype == want.dtype, k
        assert torch.equal(sb[k], want), k


def module_from_shapes(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """A parameter-only meta module with exactly these names (stands in for a model class)."""
    root = nn.Module()
    with torch.device("meta"):
        for name, shape in shapes.items():
            *path, leaf = name.split(".")
            mod = root
            for part in path:
                if part not in mod._modules:
                    mod.add_module(part, nn.Module())
                mod = mod._modules[part]
            mod.register_parameter(leaf, nn.Parameter(torch.empty(shape)))
    return root


# ---- round trips ----------------------------------------------------------------------------------------------

def test_single_file_round_trip(tmp_path):
    src = make()
    files = ck.save_state_dict(src, tmp_path)
    assert files == [tmp_path / "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]  # no temp files left behind
    # The reference library reads our files: the format is real safetensors.
    ref = load_file(str(files[0]))
    assert {k: v.dtype for k, v in ref.items()} == {k: v.dtype for k, v in src.state_dict().items()}
    with safe_open(str(files[0]), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    dst = ck.load_into(meta_small(), tmp_path)
    assert_same(src, dst)
    assert not any(t.is_meta for t in dst.state_dict().values())
    assert dst.frozen.requires_grad is False and dst.embed.weight.requires_grad is True
    assert isinstance(dst.blocks[0].weight, nn.Parameter) and dst.blocks[0].weight.device.type == "cpu"


def test_sharded_round_trip(tmp_path):
    src = make(1)
    files = ck.save_state_dict(src, tmp_path, max_shard_bytes=300)
    shards = [f for f in files if f.suffix == ".safetensors"]
    assert len(shards) >= 3
    assert [f.name for f in shards] == [f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                                        for i in range(1, len(shards) + 1)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    state = src.state_dict()
    assert set(index["weight_map"]) == set(state)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in state.values())
    assert ck.weight_files(tmp_path) == shards
    for name, info in ck.tensor_index(tmp_path).items():
        assert info.file.name == index["weight_map"][name]
        assert info.shape == tuple(state[name].shape)
    assert_same(src, ck.load_into(meta_small(), tmp_path))
    assert_same(src, ck.load_into(meta_small(), tmp_path, mmap=True))


def test_dtype_conversion_keeps_integer_tensors(tmp_path):
    src = make(2)
    ck.save_state_dict(src, tmp_path)
    dst = ck.load_into(meta_small(), tmp_path, dtype=torch.bfloat16)
    assert_same(src, dst, dtype=torch.bfloat16)
    assert dst.positions.dtype == torch.int64 and dst.mask.dtype == torch.bool
    assert ck.load_into(meta_small(), tmp_path, dtype="fp16").norm.weight.dtype == torch.float16


def test_stored_dtype_is_kept_when_no_dtype_is_given(tmp_path):
    src = make(3).to(torch.bfloat16)
    ck.save_state_dict(src, tmp_path)
    assert ck.tensor_index(tmp_path)["norm.weight"].dtype == "BF16"
    dst = ck.load_into(meta_small(), tmp_path)  # the meta model is float32; the checkpoint wins
    assert dst.norm.weight.dtype == torch.bfloat16
    assert_same(src, dst)
    assert_same(src, ck.load_into(meta_small(), tmp_path, dtype="float32"), dtype=torch.float32)


def test_unknown_dtype_name_is_a_user_error(tmp_path):
    ck.save_state_dict(make(), tmp_path)
    with pytest.raises(KvlError, match="unknown dtype"):
        ck.load_into(meta_small(), tmp_path, dtype="int3")


def test_tied_weights_save_and_stay_tied(tmp_path):
    src = make(4)
    src.head = nn.Linear(8, 16, bias=False)
    src.head.weight = src.embed.weight
    ck.save_state_dict(src, tmp_path)
    assert set(load_file(str(tmp_path / "model.safetensors"))) >= {"head.weight", "embed.weight"}
    dst = meta_small()
    dst.head = nn.Linear(8, 16, bias=False, device="meta")
    dst.head.weight = dst.embed.weight
    ck.load_into(dst, tmp_path)
    assert dst.head.weight is dst.embed.weight
    assert torch.equal(dst.head.weight, src.embed.weight)


def test_transform_hook(tmp_path):
    src = make(5)
    ck.save_state_dict(src, tmp_path)
    flip = lambda name, t: t.flip(0) if name == "blocks.0.weight" else t  # noqa: E731
    dst = ck.load_into(meta_small(), tmp_path, transform=flip)
    assert torch.equal(dst.blocks[0].weight, src.blocks[0].weight.flip(0))
    with pytest.raises(ValueError, match="changed the shape"):
        ck.load_into(meta_small(), tmp_path, transform=lambda n, t: t.reshape(-1))


def test_leftover_meta_tensor_is_a_bug(tmp_path):
    ck.save_state_dict(make(), tmp_path)
    model = meta_small()
    model.register_buffer("table", torch.empty(3, device="meta"), persistent=False)
    with pytest.raises(RuntimeError, match="table"):
        ck.load_into(model, tmp_path)


def test_fixture_headers_and_load(tiny_dir):
    index = ck.tensor_index(tiny_dir)
    with safe_open(str(tiny_dir / "model.safetensors"), framework="pt") as f:
        assert set(index) == set(f.keys())
        for name in ("language_model.lm_head.weight", "vision_tower.patch_embed.pos_emb.weight"):
            assert index[name].shape == tuple(f.get_slice(name).get_shape())
            assert index[name].dtype == "F32"
    cfg = KimiVLConfig.from_file(tiny_dir / "config.json")
    model = ck.load_into(module_from_shapes(stats.expected_tensors(cfg)), tiny_dir, dtype="bfloat16")
    ref = load_file(str(tiny_dir / "model.safetensors"))
    got = model.state_dict()
    assert all(torch.equal(got[k], v.to(torch.bfloat16)) for k, v in ref.items())


# ---- strict validation ----------------------------------------------------------------------------------------

def test_missing_unexpected_and_mismatched_are_reported_together(tmp_path):
    state = make().state_dict()
    del state["norm.bias"]
    state["extra.weight"] = torch.zeros(2)
    state["blocks.1.weight"] = torch.zeros(8, 5)
    ck.save_state_dict(state, tmp_path)
    model = meta_small()
    with pytest.raises(KvlError) as exc:
        ck.load_into(model, tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg and str(tmp_path) in msg
    assert "1 missing: norm.bias" in msg
    assert "1 unexpected: extra.weight" in msg
    assert "1 wrong shape: blocks.1.weight: expected 8x8, got 8x5" in msg
    assert model.norm.weight.is_meta  # validation happens before anything is read


def test_long_lists_are_abbreviated(tmp_path):
    ck.save_state_dict({"only.weight": torch.zeros(1)}, tmp_path)
    shapes = {f"layer.{i:02d}.weight": (2,) for i in range(25)}
    with pytest.raises(KvlError) as exc:
        ck.load_into(module_from_shapes(shapes), tmp_path)
    msg = str(exc.value)
    assert "25 missing: layer.00.weight" in msg and "and 15 more" in msg and "layer.24.weight" not in msg


# ---- damaged and unsupported input ----------------------------------------------------------------------------

def test_truncated_file_is_detected_from_the_header(tmp_path):
    ck.save_state_dict(make(), tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(KvlError, match="truncated") as exc:
        ck.tensor_index(tmp_path)
    assert str(f) in str(exc.value)
    with pytest.raises(KvlError, match="truncated"):
        ck.load_into(meta_small(), tmp_path)
    f.write_bytes(f.read_bytes()[:5])  # cut inside the length prefix
    with pytest.raises(KvlError, match="truncated"):
        ck.tensor_index(tmp_path)


def test_corrupt_header(tmp_path):
    f = tmp_path / "model.safetensors"
    body = b"{not json!"
    f.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 64)
    with pytest.raises(KvlError, match="not valid JSON"):
        ck.tensor_index(tmp_path)
    f.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    with pytest.raises(KvlError, match="corrupt or truncated"):
        ck.tensor_index(tmp_path)
    # Offsets that disagree with dtype x shape.
    body = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode()
    f.write_bytes(struct.pack("<Q", len(body)) + body + b"\0" * 16)
    with pytest.raises(KvlError, match="entry for tensor 'w'"):
        ck.tensor_index(tmp_path)


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(os.urandom(256))

    def boom(*a, **k):
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(KvlError, match="never unpickles") as exc:
        ck.weight_files(tmp_path)
    assert "pytorch_model.bin" in str(exc.value) and "safetensors" in str(exc.value)
    with pytest.raises(KvlError, match="never unpickles"):
        ck.load_into(meta_small(), tmp_path)


def test_no_weights_at_all(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(KvlError, match="no weights found"):
        ck.weight_files(tmp_path)


def test_index_problems(tmp_path):
    ck.save_state_dict(make(), tmp_path, max_shard_bytes=300)
    index = tmp_path / "model.safetensors.index.json"
    good = index.read_text()
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.rename(tmp_path / "elsewhere.bin")
    with pytest.raises(KvlError, match="missing") as exc:
        ck.weight_files(tmp_path)
    assert shard.name in str(exc.value)
    (tmp_path / "elsewhere.bin").rename(shard)

    index.write_text("{oops")
    with pytest.raises(KvlError, match="not a readable JSON index"):
        ck.weight_files(tmp_path)
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(KvlError, match="weight_map"):
        ck.weight_files(tmp_path)
    index.write_text(json.dumps({"weight_map": {"norm.weight": "../model.safetensors"}}))
    with pytest.raises(KvlError, match="invalid shard file names"):
        ck.weight_files(tmp_path)
    data = json.loads(good)
    data["weight_map"]["ghost.weight"] = shard.name
    index.write_text(json.dumps(data))
    with pytest.raises(KvlError, match="ghost.weight"):
        ck.tensor_index(tmp_path)


def test_same_tensor_in_two_files(tmp_path):
    ck.save_state_dict({"a": torch.zeros(2)}, tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "one.safetensors")
    ck.save_state_dict({"a": torch.ones(2)}, tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "two.safetensors")
    assert [f.name for f in ck.weight_files(tmp_path)] == ["one.safetensors", "two.safetensors"]
    with pytest.raises(KvlError, match="more than one file"):
        ck.tensor_index(tmp_path)


def test_resolve_checkpoint_dir(tmp_path):
    with pytest.raises(KvlError, match="no such directory"):
        ck.resolve_checkpoint_dir(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(KvlError, match="not a directory"):
        ck.resolve_checkpoint_dir(tmp_path / "file.txt")
    with pytest.raises(KvlError, match="no config.json"):
        ck.resolve_checkpoint_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert ck.resolve_checkpoint_dir(str(tmp_path)) == tmp_path


# ---- saving ---------------------------------------------------------------------------------------------------

def test_crash_mid_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    ck.save_state_dict(make(0), tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    real = ck._write_safetensors

    def crash(path: Path, tensors, metadata):
        real(path, tensors, metadata)
        with open(path, "r+b") as fh:  # a half-written file under the temporary name...
            fh.truncate(os.path.getsize(path) // 2)
        raise OSError("disk full")  # ...then the process dies

    monkeypatch.setattr(ck, "_write_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        ck.save_state_dict(make(1), tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]

    # A sharded save that dies on its second shard publishes nothing either.
    calls = []

    def crash_second(path: Path, tensors, metadata):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real(path, tensors, metadata)

    monkeypatch.setattr(ck, "_write_safetensors", crash_second)
    with pytest.raises(OSError):
        ck.save_state_dict(make(1), tmp_path, max_shard_bytes=300)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_switching_layouts_removes_stale_files(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    ck.save_state_dict(make(0), tmp_path, max_shard_bytes=300)
    assert (tmp_path / "model.safetensors.index.json").exists()
    src = make(1)
    ck.save_state_dict(src, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "notes.txt"]
    ck.save_state_dict(src, tmp_path, max_shard_bytes=300)
    assert not (tmp_path / "model.safetensors").exists()
    assert_same(src, ck.load_into(meta_small(), tmp_path))


def test_save_handles_views_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    state = {"t": base.t(), "row": base[1], "same": base}  # shared storage, a transpose, a view
    ck.save_state_dict(state, tmp_path)
    got = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(got[k], v) for k, v in state.items())
    with pytest.raises(ValueError, match="meta"):
        ck.save_state_dict({"m": torch.empty(2, device="meta")}, tmp_path / "other")


def test_bad_device_is_a_user_error(tmp_path):
    ck.save_state_dict(make(), tmp_path)
    with pytest.raises(KvlError, match="unknown device"):
        ck.load_into(meta_small(), tmp_path, device="tpu:x")
    if not torch.cuda.is_available():
        with pytest.raises(KvlError, match="CUDA is not available"):
            ck.load_into(meta_small(), tmp_path, device="cuda")
