"""Checkpoint IO: HF-layout safetensors folders (single file or sharded + index), read and written without pickle.

Layout: a directory with `config.json` and either `model.safetensors` or `model-0000i-of-0000N.safetensors`
shards listed in `model.safetensors.index.json`. Pickle weights (`*.bin`, `*.pt`, ...) are refused: unpickling
runs arbitrary code, and nothing here ever calls `torch.load`.

Loading (`load_into`) targets a model built on the `meta` device. It validates every name and shape first (one
error listing all problems), then materialises one tensor at a time with plain `readinto` calls straight into
the destination tensor's memory. Plain reads rather than safetensors' memory map keep peak RSS at about the
final model size: pages of a mapped file are resident (and counted) for as long as the mapping lives, which
would make a single-file checkpoint cost twice its size while loading. `mmap=True` switches to `safe_open`
(zero-copy on CPU: weights stay file-backed and are paged in on first use).

Writing (`save_state_dict`) streams each tensor's bytes to a temporary file in the target directory and renames
it into place, so an interrupted save never leaves a half-written file under a real checkpoint name.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvl_core.errors import KvlError

if TYPE_CHECKING:  # torch is imported lazily: `kvl info` on a config-only folder should not pay for it
    import torch
    from torch import nn

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_RE = re.compile(r"^model-(\d{5})-of-(\d{5})\.safetensors$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# A header larger than this is not a real checkpoint (the real model's largest header is well under 1 MB).
_MAX_HEADER_BYTES = 100 * 2**20
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
             "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}
_ABBREVIATE_AFTER = 10


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its file, shape, safetensors dtype name ("BF16", ...) and absolute byte range."""

    file: Path
    shape: tuple[int, ...]
    dtype: str
    start: int  # absolute offset of the first data byte in `file`
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


# ---- locating files -------------------------------------------------------------------------------------------

def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """The checkpoint directory named by `path`; raises KvlError unless it exists and holds `config.json`."""
    p = Path(path).expanduser()
    if not p.exists():
        from kvl_core.hub import resolve_from_hf_cache  # a repo id already in the local HF cache

        found = resolve_from_hf_cache(str(path)) if "/" in str(path) and not str(path).startswith((".", "/", "~")) else None
        if found is not None:
            return resolve_checkpoint_dir(found)
        raise KvlError(f"{path}: no such directory")
    if not p.is_dir():
        raise KvlError(f"{path}: not a directory (expected a checkpoint folder holding {CONFIG_NAME})")
    if not (p / CONFIG_NAME).is_file():
        raise KvlError(f"{path}: no {CONFIG_NAME} in this directory, so it is not a model checkpoint")
    return p


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files holding the weights of `directory`, in a stable order.

    `model.safetensors` wins (as in transformers), then the shards named by `model.safetensors.index.json`
    (validated), then any other `*.safetensors`. Pickle-only folders and folders without weights raise KvlError.
    """
    d = Path(directory)
    single = d / SINGLE_NAME
    if single.is_file():
        return [single]
    index = d / INDEX_NAME
    if index.is_file():
        return sorted({d / shard for shard in _read_index(index).values()})
    found = sorted(f for f in d.glob("*.safetensors") if f.is_file())
    if found:
        return found
    pickles = sorted(f.name for f in d.iterdir() if f.is_file() and f.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise KvlError(
            f"{d}: only pickle weights found ({', '.join(pickles[:3])}{', ...' if len(pickles) > 3 else ''}); "
            "kvl never unpickles files because that can run arbitrary code. Convert them once, in an environment "
            "you trust, e.g. safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors')"
        )
    raise KvlError(f"{d}: no weights found (expected {SINGLE_NAME}, or {INDEX_NAME} with its shards)")


def _read_index(index: Path) -> dict[str, str]:
    """Validated `weight_map` of a shard index: tensor name -> shard file name (every shard must exist)."""
    try:
        data = json.loads(index.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise KvlError(f"{index}: not a readable JSON index ({e})") from None
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap:
        raise KvlError(f"{index}: no 'weight_map' object mapping tensor names to shard files")
    bad = sorted({str(v) for v in wmap.values() if not isinstance(v, str) or Path(v).name != v or not v})
    if bad:
        # A shard name with a directory part could point outside the checkpoint folder.
        raise KvlError(f"{index}: invalid shard file names in weight_map: {_abbrev(bad)}")
    missing = sorted({v for v in wmap.values() if not (index.parent / v).is_file()})
    if missing:
        raise KvlError(f"{index}: shard files listed in the index are missing: {_abbrev(missing)}")
    return wmap


# ---- headers --------------------------------------------------------------------------------------------------

def read_header(file: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor infos and `__metadata__` of one safetensors file, from its header only.

    Cheap integrity checks: header JSON valid and well-formed, byte ranges consistent with dtype x shape, and the
    file long enough for the largest data end offset (a truncated download fails here, not mid-load).
    """
    f = Path(file)
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise KvlError(f"{f}: truncated or not a safetensors file ({size} bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER_BYTES or 8 + n > size:
                raise KvlError(f"{f}: corrupt or truncated safetensors file (header length {n}, file {size} bytes)")
            blob = fh.read(n)
    except OSError as e:
        raise KvlError(f"{f}: cannot read ({e.strerror or e})") from None
    try:
        header = json.loads(blob)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KvlError(f"{f}: corrupt safetensors header (not valid JSON)") from None
    if not isinstance(header, dict):
        raise KvlError(f"{f}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    infos: dict[str, TensorInfo] = {}
    data_end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (start, end) = entry["dtype"], tuple(entry["shape"]), entry["data_offsets"]
            ok = (dtype in _ITEMSIZE and all(isinstance(s, int) and s >= 0 for s in shape)
                  and isinstance(start, int) and isinstance(end, int) and 0 <= start <= end
                  and end - start == math.prod(shape) * _ITEMSIZE[dtype])
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise KvlError(f"{f}: corrupt safetensors header entry for tensor {name!r}")
        infos[name] = TensorInfo(f, shape, dtype, base + start, base + end)
        data_end = max(data_end, end)
    if base + data_end > size:
        raise KvlError(f"{f}: truncated file ({size} bytes, its header needs {base + data_end})")
    return infos, {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def tensor_index(directory: str | os.PathLike) -> dict[str, TensorInfo]:
    """name -> TensorInfo over all weight files of `directory`, from headers only (no tensor data is read)."""
    d = Path(directory)
    files = weight_files(d)
    out: dict[str, TensorInfo] = {}
    dupes: list[str] = []
    for f in files:
        infos, _ = read_header(f)
        for name, info in infos.items():
            if name in out:
                dupes.append(name)
            out[name] = info
    if dupes:
        raise KvlError(f"{d}: tensors stored in more than one file: {_abbrev(sorted(dupes))}")
    index = d / INDEX_NAME
    if index.is_file() and files[0].name != SINGLE_NAME:
        wmap = _read_index(index)
        wrong = sorted(k for k, v in wmap.items() if k not in out or out[k].file.name != v)
        if wrong:
            raise KvlError(f"{index}: weight_map names tensors not found in their shard: {_abbrev(wrong)}")
    return out


# ---- loading --------------------------------------------------------------------------------------------------

def parse_dtype(dtype: "str | torch.dtype | None") -> "torch.dtype | None":
    """Floating torch dtype from a torch.dtype or a name ("bf16", "bfloat16", "torch.float32", "fp16", ...)."""
    import torch

    if dtype is None:
        return None
    aliases = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
               "fp64": "float64", "double": "float64"}
    name = str(dtype).lower().removeprefix("torch.")
    resolved = dtype if isinstance(dtype, torch.dtype) else getattr(torch, aliases.get(name, name), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise KvlError(f"unknown dtype {dtype!r}: expected a floating type (bfloat16, float16 or float32)")
    return resolved


def _torch_dtype(st_dtype: str) -> "torch.dtype":
    import torch

    table = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool, "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
             "F8_E5M2": getattr(torch, "float8_e5m2", None), "U16": getattr(torch, "uint16", None),
             "U32": getattr(torch, "uint32", None), "U64": getattr(torch, "uint64", None)}
    dt = table.get(st_dtype)
    if dt is None:
        raise KvlError(f"safetensors dtype {st_dtype} is not supported by this torch build")
    return dt


def _safetensors_name(dtype: "torch.dtype") -> str:
    import torch

    table = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
             torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
             torch.bool: "BOOL"}
    for attr, name in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                       ("uint32", "U32"), ("uint64", "U64")):
        if hasattr(torch, attr):
            table[getattr(torch, attr)] = name
    try:
        return table[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} cannot be stored in safetensors") from None


@dataclass
class _Slot:
    """Every place (module, attribute) holding one tensor object: tied weights share a slot."""

    names: list[str]
    places: list[tuple["nn.Module", str]]
    tensor: "torch.Tensor"
    is_param: bool


def _slots(model: "nn.Module") -> list[_Slot]:
    by_id: dict[int, _Slot] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        prefix = mod_name + "." if mod_name else ""
        entries = [(k, v, True) for k, v in mod._parameters.items()]
        entries += [(k, v, False) for k, v in mod._buffers.items() if k not in mod._non_persistent_buffers_set]
        for attr, t, is_param in entries:
            if t is None:
                continue
            slot = by_id.setdefault(id(t), _Slot([], [], t, is_param))
            slot.names.append(prefix + attr)
            slot.places.append((mod, attr))
    return list(by_id.values())


@dataclass
class TensorDiff:
    """How a checkpoint's tensors differ from what a model expects (all lists sorted by name)."""

    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]  # "name: expected AxB, got CxD"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("wrong shape", self.mismatched)):
            if items:
                parts.append(f"{len(items)} {label}: {_abbrev(items)}")
        return "; ".join(parts)


def diff_tensors(expected: Mapping[str, Iterable[int]], found: Mapping[str, Iterable[int]],
                 alternatives: Iterable[Iterable[str]] = ()) -> TensorDiff:
    """Compare name -> shape maps. `alternatives` groups names of one tensor (tied weights): one suffices."""
    groups = [list(g) for g in alternatives]
    grouped = {n for g in groups for n in g}
    missing = [n for n in expected if n not in found and n not in grouped]
    missing += [g[0] for g in groups if not any(n in found for n in g)]
    return TensorDiff(
        missing=sorted(missing),
        unexpected=sorted(n for n in found if n not in expected),
        mismatched=sorted(f"{n}: expected {_shape(expected[n])}, got {_shape(found[n])}"
                          for n in expected if n in found and tuple(found[n]) != tuple(expected[n])),
    )


def check_tensors(expected: Mapping[str, Iterable[int]], found: Mapping[str, Iterable[int]], source: str,
                  alternatives: Iterable[Iterable[str]] = ()) -> None:
    """Raise ONE KvlError listing missing, unexpected and wrongly shaped tensors (name: expected vs got)."""
    diff = diff_tensors(expected, found, alternatives)
    if not diff.ok:
        raise KvlError(f"{source}: checkpoint does not match the model: {diff.summary()}")


def load_into(model: "nn.Module", directory: str | os.PathLike, dtype: "str | torch.dtype | None" = None,
              device: "str | torch.device" = "cpu", *,
              transform: Callable[[str, "torch.Tensor"], "torch.Tensor"] | None = None,
              mmap: bool = False) -> "nn.Module":
    """Fill a meta-device `model` with the weights of checkpoint `directory`, one tensor at a time.

    dtype: target dtype of floating tensors (None keeps each tensor's stored dtype; integer/bool tensors always
    keep theirs). device: where the tensors end up. transform(name, tensor) may rewrite a tensor after reading
    (e.g. a row permutation); it must keep the shape. mmap: use safetensors' `safe_open`; tensors kept on the
    CPU at their stored dtype then stay zero-copy views of a private (copy-on-write) file mapping, resident
    only once touched, so the file must not be truncated in place while the model lives (`save_state_dict`
    replaces files by rename, which is safe). Parameters keep their `requires_grad`; tied weights stay tied.
    Returns `model`.
    """

    d = Path(directory)
    target = parse_dtype(dtype)
    dev = _parse_device(device)
    index = tensor_index(d)
    slots = _slots(model)
    expected = {n: tuple(s.tensor.shape) for s in slots for n in s.names}
    check_tensors(expected, {k: v.shape for k, v in index.items()}, str(d),
                  alternatives=[s.names for s in slots if len(s.names) > 1])

    by_file: dict[Path, list[tuple[_Slot, str]]] = defaultdict(list)
    for s in slots:
        src = next(n for n in s.names if n in index)
        by_file[index[src].file].append((s, src))
    for file, items in by_file.items():
        items.sort(key=lambda it: index[it[1]].start)  # sequential reads
        if mmap:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as fh:
                for s, name in items:
                    _install(s, _finish(fh.get_tensor(name), name, target, dev, transform))
        else:
            with open(file, "rb", buffering=0) as fh:
                for s, name in items:
                    _install(s, _finish(_read_tensor(fh, index[name]), name, target, dev, transform))

    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"load_into left tensors on the meta device (model bug): {_abbrev(left)}")
    return model


def _parse_device(device: "str | torch.device") -> "torch.device":
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise KvlError(f"unknown device {device!r} (try cpu, cuda or cuda:0)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise KvlError(f"device {device!r} requested but CUDA is not available in this torch build/machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise KvlError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return dev


def _read_tensor(fh: Any, info: TensorInfo) -> "torch.Tensor":
    """Read one tensor straight into freshly allocated memory (no intermediate buffer)."""
    import torch

    t = torch.empty(info.shape, dtype=_torch_dtype(info.dtype))
    if info.nbytes == 0:
        return t
    buf = memoryview(_bytes_view(t).numpy())
    fh.seek(info.start)
    got = 0
    while got < info.nbytes:
        n = fh.readinto(buf[got:])
        if not n:
            raise KvlError(f"{info.file}: truncated while reading (file changed during load?)")
        got += n
    if sys.byteorder != "little" and t.element_size() > 1:
        t = _byteswapped(t)  # safetensors data is little-endian
    return t


def _bytes_view(t: "torch.Tensor") -> "torch.Tensor":
    """The raw bytes of a contiguous tensor as a flat uint8 tensor sharing its memory."""
    import torch

    return t.reshape(-1).view(torch.uint8)


def _byteswapped(t: "torch.Tensor") -> "torch.Tensor":
    import torch

    raw = _bytes_view(t).view(-1, t.element_size()).flip(-1).contiguous()
    return raw.view(torch.uint8).reshape(-1).view(t.dtype).view(t.shape)


def _finish(t: "torch.Tensor", name: str, target: "torch.dtype | None", dev: "torch.device",
            transform: Callable | None) -> "torch.Tensor":
    if transform is not None:
        shape = t.shape
        t = transform(name, t)
        if t.shape != shape:
            raise ValueError(f"transform changed the shape of {name}: {list(shape)} -> {list(t.shape)}")
    if target is None or not t.is_floating_point() or t.dtype == target:
        return t.to(dev)
    # Convert on whichever side holds the smaller copy: widening after the transfer, narrowing before it.
    if target.itemsize > t.element_size():
        return t.to(dev).to(target)
    return t.to(target).to(dev)


def _install(slot: _Slot, t: "torch.Tensor") -> None:
    import torch

    if slot.is_param:
        new: torch.Tensor = torch.nn.Parameter(t, requires_grad=slot.tensor.requires_grad)
        for mod, attr in slot.places:
            mod._parameters[attr] = new
    else:
        for mod, attr in slot.places:
            mod._buffers[attr] = t


# ---- saving ---------------------------------------------------------------------------------------------------

def save_state_dict(model_or_state_dict: "nn.Module | Mapping[str, torch.Tensor]", directory: str | os.PathLike,
                    max_shard_bytes: int = 5 * 2**30, metadata: Mapping[str, str] | None = None) -> list[Path]:
    """Write weights as `model.safetensors`, or as HF-style shards + `model.safetensors.index.json` when they
    exceed `max_shard_bytes`. Each file is written to a temporary name and renamed into place; files of a
    previous save in the other layout are removed afterwards so loaders never pick up stale weights.
    Tensors sharing storage (tied weights, views) need no special care: each name's bytes are streamed out on
    their own, so every name gets an independent copy in the file. Returns the files written.
    config.json is the caller's job (`KimiVLConfig.save`).
    """
    import torch

    state = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, torch.nn.Module) \
        else dict(model_or_state_dict)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: not a tensor ({type(t).__name__})")
        if t.is_meta:
            raise ValueError(f"{name}: cannot save a meta tensor (the model was never materialised)")
        tensors[name] = t.detach()

    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    meta = {"format": "pt", **(metadata or {})}

    if len(shards) == 1:
        names = [SINGLE_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    temps: list[tuple[Path, Path]] = []
    try:
        for fname, keys in zip(names, shards):
            tmp = d / f".{fname}.tmp-{os.getpid()}"
            temps.append((tmp, d / fname))
            _write_safetensors(tmp, {k: tensors[k] for k in keys}, meta)
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            wmap = {k: fname for fname, keys in zip(names, shards) for k in keys}
            tmp = d / f".{INDEX_NAME}.tmp-{os.getpid()}"
            temps.append((tmp, d / INDEX_NAME))
            _write_atomic_text(tmp, json.dumps({"metadata": {"total_size": total},
                                                "weight_map": dict(sorted(wmap.items()))}, indent=2) + "\n")
        # The index is renamed last: it is what makes a sharded checkpoint visible to loaders.
        for tmp, final in temps:
            os.replace(tmp, final)
        _fsync_dir(d)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    _remove_stale(d, set(names) | ({INDEX_NAME} if len(shards) > 1 else set()))
    return [d / n for n in names] + ([d / INDEX_NAME] if len(shards) > 1 else [])


def _fsync_dir(d: Path) -> None:
    """Make the renames durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale(d: Path, keep: set[str]) -> None:
    for f in d.iterdir():
        if f.name in keep:
            continue
        if f.name in (SINGLE_NAME, INDEX_NAME) or SHARD_RE.match(f.name):
            f.unlink(missing_ok=True)


def _write_atomic_text(tmp: Path, text: str) -> None:
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _write_safetensors(path: Path, tensors: Mapping[str, "torch.Tensor"], metadata: Mapping[str, str]) -> None:
    """Write one safetensors file, streaming each tensor's bytes (no whole-file buffer)."""
    # Widest dtypes first keeps every tensor aligned to its element size (the header is padded to 8).
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for k in order:
        t = tensors[k]
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": _safetensors_name(t.dtype), "shape": list(t.shape),
                     "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(blob)))
        fh.write(blob)
        for k in order:
            t = tensors[k]
            if t.numel() == 0:
                continue
            t = t.to("cpu").contiguous()
            if sys.byteorder != "little" and t.element_size() > 1:
                t = _byteswapped(t)
            fh.write(memoryview(_bytes_view(t).numpy()))
        fh.flush()
        os.fsync(fh.fileno())


def _shape(shape: Iterable[int]) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _abbrev(items: list[str], limit: int = _ABBREVIATE_AFTER) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")
