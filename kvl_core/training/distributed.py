"""Data parallelism for kvl training: process-group setup, gradient all-reduce, and `DistMuon`, a
ZeRO-1 Muon exactly equivalent to the single-process optimizer (Moonlight report §2.3 "Distributed
Muon", Algorithm 1; design: shared/design/training.md §1.5 and §4).

Moonlight's Algorithm 1 splits each matrix across data-parallel ranks inside Megatron's flat
buffer and all-gathers the momentum before NS. We shard by *ownership* instead (KellerJordan's
distributed Muon, torch's ZeroRedundancyOptimizer): every optimizer unit — one parameter, or one
stacked group of same-shape expert matrices — has exactly one owner rank. Each step:

  1. the trainer all-reduces gradients (`all_reduce_grads`), so every rank holds the global gradient;
  2. each rank runs the single-process `Muon` code on the units it owns only: the momentum / Adam
     moments of a unit exist on its owner alone (ZeRO-1 memory), and each matrix's Newton–Schulz
     runs once, on its owner;
  3. the updated parameters are all-gathered as raw bytes, so every rank ends with the owner's
     exact bits.

Because step 2 is literally `Muon`'s per-unit code on the full matrix, DistMuon with identical
gradients is bitwise identical to `Muon` (tests/training/test_distributed.py, T1).

Checkpoints: `state_dict()` is this rank's shard in `Muon`'s format (global parameter indices);
`consolidated_state_dict()` gathers the shards to one single-process state dict, and
`load_state_dict()` accepts a consolidated (or single-process) dict on any world size, keeping only
the owned entries. So a run may resume with a different number of ranks.

Without torchrun (WORLD_SIZE unset) everything degrades to world 1: no process group, collectives
are no-ops and DistMuon is Muon.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kvl_core.training.muon import Muon

# ---- process group ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device


def _on() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if _on() else 0


def world() -> int:
    return dist.get_world_size() if _on() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if _on():
        dist.barrier()


def init_distributed(backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables this is a no-op returning world 1 on the default device. Backend:
    nccl when CUDA is available (each process takes GPU LOCAL_RANK), gloo otherwise. Idempotent.
    """
    cuda = torch.cuda.is_available()
    lr = local_rank()
    device = torch.device("cuda", lr) if cuda else torch.device("cpu")
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return DistInfo(0, 1, 0, torch.device("cuda", 0) if cuda else device)
    if cuda:
        torch.cuda.set_device(device)
    if not _on():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"),
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if cuda else {}))
    return DistInfo(dist.get_rank(), dist.get_world_size(), lr, device)


def destroy_distributed() -> None:
    if _on():
        dist.destroy_process_group()


# ---- collectives ------------------------------------------------------------------------------

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def all_reduce_sum(t: torch.Tensor, group=None) -> torch.Tensor:
    """In-place SUM over ranks (no-op at world 1); returns t."""
    if _on() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def all_reduce_scalar(x: float, op: str = "sum", group=None) -> float:
    """A Python number reduced over ranks: op in {"sum", "mean", "max", "min"} (fp64 on the wire)."""
    if not (_on() and dist.get_world_size(group) > 1):
        return float(x)
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
    t = torch.tensor([float(x)], dtype=torch.float64, device=dev)
    dist.all_reduce(t, op=_OPS["sum" if op == "mean" else op], group=group)
    v = t.item()
    return v / dist.get_world_size(group) if op == "mean" else v


def fill_missing_grads(params) -> None:
    """Zero `.grad` for trainable params that have none (see `all_reduce_grads`)."""
    for p in params:
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def all_reduce_grads(params, op: str = "sum", bucket_mb: float = 25.0, fill_none: bool = True, group=None) -> None:
    """Reduce `.grad` of every parameter with requires_grad across ranks, in place.

    op="sum" (what the kvl trainer uses): each rank's loss is its sum of token losses divided by
    the GLOBAL supervised-token count, so the sum over ranks is exactly the full-batch gradient.
    op="avg": sum / world (for per-rank mean losses).

    fill_none: a parameter that got no gradient on this rank (an MoE expert no local token chose)
    gets zeros first. Every rank must take part in the same collectives, and it keeps world 1
    and world N identical — call this at world 1 too (it only fills, no communication).
    Grads are flattened into buckets of ≤ bucket_mb per dtype/device in parameter order.
    """
    if op not in ("sum", "avg"):
        raise ValueError(f"op must be 'sum' or 'avg', got {op!r}")
    params = [p for p in params if p.requires_grad]
    if fill_none:
        fill_missing_grads(params)
    n = dist.get_world_size(group) if _on() else 1
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    limit = int(bucket_mb * 2**20)
    buckets: dict[tuple, list[list[torch.Tensor]]] = {}
    filled: dict[tuple, int] = {}
    for g in grads:
        key = (g.dtype, g.device)
        lst = buckets.setdefault(key, [[]])
        nbytes = g.numel() * g.element_size()
        if lst[-1] and filled[key] + nbytes > limit:
            lst.append([])
            filled[key] = 0
        lst[-1].append(g)
        filled[key] = filled.get(key, 0) + nbytes
    for lst in buckets.values():
        for bucket in lst:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            if op == "avg":
                flat.div_(n)
            off = 0
            for g in bucket:
                g.copy_(flat[off : off + g.numel()].view_as(g))
                off += g.numel()


# ---- ZeRO-1 Muon ------------------------------------------------------------------------------


def assign_owners(unit_sizes: list[int], world_size: int) -> list[int]:
    """Greedy by size: largest unit first (ties: earlier unit), to the least-loaded rank (ties:
    lowest rank). A pure function of the sizes, so every rank computes the same map."""
    load = [0] * world_size
    owner = [0] * len(unit_sizes)
    for i in sorted(range(len(unit_sizes)), key=lambda i: (-unit_sizes[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += unit_sizes[i]
    return owner


class DistMuon(Muon):
    """`Muon` with ZeRO-1 ownership over the data-parallel group (see module docstring).

    Same constructor as `Muon` plus `process_group` (default: the global group; world 1 when
    torch.distributed is not initialised) and `sync_bucket_mb` (parameter all-gather chunk size).
    Gradients must already be reduced (`all_reduce_grads`) when `step()` runs. Add all param
    groups before the first step: ownership is recomputed on `add_param_group`.
    """

    def __init__(self, params, *, process_group=None, sync_bucket_mb: float = 64.0, **kwargs):
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group) if _on() else 1
        self.rank = dist.get_rank(process_group) if _on() else 0
        self.sync_bucket_bytes = int(sync_bucket_mb * 2**20)
        self._unit_owner: list[list[int]] = []
        super().__init__(params, **kwargs)

    # ---- ownership ------------------------------------------------------------------------------

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._assign()

    def _assign(self) -> None:
        units = [(gi, ui, sum(p.numel() for p in unit))
                 for gi, g in enumerate(self.param_groups) for ui, unit in enumerate(self._units(g))]
        owners = assign_owners([u[2] for u in units], self.world_size)
        self._unit_owner = [[0] * len(self._units(g)) for g in self.param_groups]
        for (gi, ui, _), r in zip(units, owners):
            self._unit_owner[gi][ui] = r
        # global param index -> owner, and per rank the params it broadcasts (in global order)
        self.param_owner: list[int] = []
        for gi, g in enumerate(self.param_groups):
            for ui, unit in enumerate(self._units(g)):
                self.param_owner.extend([self._unit_owner[gi][ui]] * len(unit))
        flat = [p for g in self.param_groups for p in g["params"]]
        self._owned_by = [[p for p, r in zip(flat, self.param_owner) if r == k] for k in range(self.world_size)]

    def _owns(self, gi: int, ui: int) -> bool:
        return self._unit_owner[gi][ui] == self.rank

    # ---- step -----------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self.world_size > 1:
            self._sync_params()
        return loss

    def _finish_rms(self, sq: list[torch.Tensor], counts: list[int]) -> None:
        if self.world_size > 1 and self.track_rms and sq:
            # sum of squares and element counts over owners, one small collective
            t = torch.stack([torch.stack([s.to(sq[0].device).double().reshape(()) for s in sq]),
                             torch.tensor(counts, dtype=torch.float64, device=sq[0].device)])
            t = t.to(self._comm_device())
            dist.all_reduce(t, group=self.process_group)
            sq = list(t[0].cpu().unbind())
            counts = [int(c) for c in t[1].tolist()]
        super()._finish_rms(sq, counts)

    def _comm_device(self) -> torch.device:
        if dist.get_backend(self.process_group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _sync_params(self) -> None:
        """Every rank gets every parameter as its owner computed it, bit for bit.

        Parameters travel as raw bytes (any dtype mix, exact). Each rank's owned params form one
        byte stream; in round k every rank contributes its k-th chunk of ≤ sync_bucket_bytes
        (padded), and one all_gather_into_tensor delivers all of them.
        """
        dev = self._comm_device()
        streams = [[p for p in owned] for owned in self._owned_by]
        sizes = [sum(p.numel() * p.element_size() for p in s) for s in streams]
        chunk = max(1, min(self.sync_bucket_bytes, max(sizes) if sizes else 1))
        rounds = max((s + chunk - 1) // chunk for s in sizes) if sizes else 0
        cursors = [_ByteCursor(s) for s in streams]
        for _ in range(rounds):
            send = torch.zeros(chunk, dtype=torch.uint8, device=dev)
            cursors[self.rank].read_into(send)
            recv = torch.empty(chunk * self.world_size, dtype=torch.uint8, device=dev)
            _all_gather_flat(recv, send, self.process_group)
            for r in range(self.world_size):
                if r == self.rank:
                    continue
                cursors[r].write_from(recv[r * chunk : (r + 1) * chunk])

    # ---- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """This rank's shard in `Muon`'s format (only owned params have "state" entries) plus a
        "kvl_dist" record {world_size, rank, param_owner}."""
        sd = super().state_dict()
        sd["kvl_dist"] = {"world_size": self.world_size, "rank": self.rank, "param_owner": list(self.param_owner)}
        return sd

    sharded_state_dict = state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Accepts a consolidated / single-process dict, or this rank's own shard, saved at any
        world size; keeps the state of the params this rank owns now."""
        meta = state_dict.get("kvl_dist")
        if meta is not None and (meta["world_size"], meta["rank"], meta["param_owner"]) != (
                self.world_size, self.rank, self.param_owner):
            # a shard holds only its owner's states: loading it elsewhere would silently restart
            # the other params' momentum from zero
            raise ValueError(f"this is rank {meta['rank']}'s optimizer shard of a {meta['world_size']}-rank run; "
                             "merge all shards with consolidate([...]) and load that instead")
        state = {int(k): v for k, v in state_dict["state"].items()}
        n = len(self.param_owner)
        if any(not 0 <= k < n for k in state):
            raise ValueError("optimizer state refers to parameters this optimizer does not have")
        mine = {k: v for k, v in state.items() if self.param_owner[k] == self.rank}
        super().load_state_dict({"state": mine, "param_groups": state_dict["param_groups"]})

    load_consolidated = load_state_dict

    def consolidated_state_dict(self, dst: int | None = 0) -> dict | None:
        """Gather every rank's shard (tensors moved to CPU) into one single-process-format state
        dict, returned on rank `dst` (None elsewhere); dst=None returns it on every rank.
        Collective: every rank must call it. Loadable by `Muon.load_state_dict` and by
        `DistMuon.load_state_dict` at any world size; contains only tensors and plain Python values.
        """
        shard = _to_cpu(self.state_dict())
        if self.world_size == 1:
            return consolidate([shard])
        if dst is None:
            shards: list = [None] * self.world_size
            dist.all_gather_object(shards, shard, group=self.process_group)
            return consolidate(shards)
        shards = [None] * self.world_size if self.rank == dst else None
        dist.gather_object(shard, shards, dst=dist.get_global_rank(self.process_group, dst)
                           if self.process_group is not None else dst, group=self.process_group)
        return consolidate(shards) if self.rank == dst else None


def consolidate(shards: list[dict]) -> dict:
    """Merge per-rank `DistMuon.state_dict()` shards (e.g. loaded from optim/rank{r}.pt) into the
    single-process `Muon.state_dict()` format. No communication; checks the shards fit together."""
    if not shards:
        raise ValueError("no optimizer shards to consolidate")
    groups = shards[0]["param_groups"]
    state: dict[int, dict] = {}
    for i, sh in enumerate(shards):
        if [len(g["params"]) for g in sh["param_groups"]] != [len(g["params"]) for g in groups]:
            raise ValueError(f"optimizer shard {i} has different param groups from shard 0")
        meta = sh.get("kvl_dist")
        for k, v in sh["state"].items():
            k = int(k)
            if meta is not None and meta["param_owner"][k] != meta["rank"]:
                raise ValueError(f"optimizer shard {i} holds state for parameter {k} it does not own")
            if k in state:
                raise ValueError(f"parameter {k} has optimizer state in two shards")
            state[k] = v
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def _all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group) -> None:
    # torch 2.13 renamed all_gather_into_tensor to all_gather_single (same semantics)
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    fn(out, inp, group=group)


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


class _ByteCursor:
    """Walks a list of tensors as one contiguous byte stream, chunk by chunk."""

    def __init__(self, tensors: list[torch.Tensor]):
        for t in tensors:
            if not t.is_contiguous():
                raise ValueError("DistMuon needs contiguous parameters")
        self.views = [t.data.reshape(-1).view(torch.uint8) for t in tensors]
        self.i = 0  # current tensor
        self.off = 0  # byte offset in it

    def _walk(self, n: int):
        done = 0
        while done < n and self.i < len(self.views):
            v = self.views[self.i]
            take = min(n - done, v.numel() - self.off)
            yield v[self.off : self.off + take], done, take
            done += take
            self.off += take
            if self.off == v.numel():
                self.i, self.off = self.i + 1, 0

    def read_into(self, buf: torch.Tensor) -> None:
        for src, at, n in self._walk(buf.numel()):
            buf[at : at + n].copy_(src)

    def write_from(self, buf: torch.Tensor) -> None:
        for dst, at, n in self._walk(buf.numel()):
            dst.copy_(buf[at : at + n])


# ---- FSDP2 (fully sharded data parallel) -------------------------------------------------------
#
# `torch.distributed.fsdp.fully_shard` over a 1-D DeviceMesh: every trainable-model parameter is a
# DTensor sharded on dim 0 across the ranks, gathered unit by unit for forward and backward and
# resharded after; gradients are reduce-scattered (SUM: the loss is already divided by the global token
# count). Units: each decoder layer, each ViT block, the vision tower's own rest (patch embedding, final
# norm), the projector, and the root (embeddings, lm_head, final norm). Replicated instead: the router
# correction biases (not gradient-trained; every rank moves them identically from the all-reduced load).
#
# A sharded unit's forward is a collective, so every rank must run the vision side at the same point of
# every forward, also when its own micro-batch holds no image: `VisionTurn` then runs it on one blank
# 2x2-patch image and adds the result with weight 0 (its gradients are exact zeros), see below.
#
# Muon needs whole matrices: each Muon unit keeps its ZeRO-1 owner (`assign_owners`, as DistMuon); the
# owner gathers the unit's gradient shards, runs the single-process momentum + Newton-Schulz on the whole
# matrix and scatters each rank its own rows of the update; every rank applies decay and update to its
# shard. AdamW is elementwise, so it runs on the local shards directly. At world 1 it is plain Muon.

SHARDED_LAYERS = ("DecoderLayer", "EncoderLayer")
SHARDED_CHILDREN = ("vision_tower", "multi_modal_projector")
REPLICATED_PARAMS = ("e_score_correction_bias",)


def device_mesh(device: torch.device):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (world(),), mesh_dim_names=("dp",))


def fully_shard_model(model: torch.nn.Module, mesh, param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Apply FSDP2 to a kvl model in place (units as above). `param_dtype` bf16 gives bf16 compute on
    fp32 master weights with fp32 gradient reduction. Returns the model (now an FSDPModule)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    ignored = set(replicated_params(model))
    kw = dict(mesh=mesh, mp_policy=mp, ignored_params=ignored or None)
    for m in list(model.modules()):
        if type(m).__name__ in SHARDED_LAYERS:
            fully_shard(m, **kw)
    for name in SHARDED_CHILDREN:
        if isinstance(getattr(model, name, None), torch.nn.Module):
            fully_shard(getattr(model, name), **kw)
    fully_shard(model, **kw)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            # MoE: an expert no token of this rank chose must still take part in the reduce-scatter
            m.set_reduce_scatter_unused_params(True, recurse=False)
            # SUM, not FSDP's default mean; forced plain sum (gloo has no pre-multiplied sum)
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    return model


def replicated_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters FSDP leaves whole on every rank (see above), in model order."""
    return [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in REPLICATED_PARAMS]


class VisionTurn:
    """Keeps every rank's vision units in step under FSDP: before the language model runs, a rank whose
    micro-batch had no image runs the vision tower and projector on one blank image and adds the sum of
    the features times 0 to the input embeddings. The values are unchanged (x + 0 = x) and the vision
    gradients of that rank are exact zeros, but its all-gathers and reduce-scatters happen at the same
    point as on the ranks that saw images. Set `needed` per micro-batch."""

    def __init__(self, model: torch.nn.Module):
        self.model, self.needed = model, False
        v = model.config.vision
        kh, kw = v.merge_kernel_size
        self.grid = torch.tensor([[kh, kw]])
        self.pixels = torch.zeros(kh * kw, 3, v.patch_size, v.patch_size)
        self.handle = model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not self.needed:
            return None
        embeds = kwargs["inputs_embeds"]
        feats = self.model.get_image_features(self.pixels.to(embeds.device), self.grid.to(embeds.device))
        return args, {**kwargs, "inputs_embeds": embeds + 0 * feats.sum().to(embeds.dtype)}


def _is_dtensor(t) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's tensors (CPU), gathered one by one to rank 0 (None on the other ranks).
    Collective under FSDP; a plain model just returns its state_dict."""
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        full = t.full_tensor() if _is_dtensor(t) else t
        if rank() == 0:
            out[name] = full.detach().cpu()
    return out if rank() == 0 else None


class ShardedMuon(DistMuon):
    """Muon over FSDP2-sharded (DTensor) parameters, exactly the single-process maths (see above).

    Optimizer state: AdamW moments are local shards; a Muon momentum buffer is the whole matrix, on its
    owner only. `dcp_state()` presents both as Shard(0) DTensors for torch.distributed.checkpoint, so
    a checkpoint can be loaded at another world size (`load_dcp_state`)."""

    def _comm_device(self) -> torch.device:
        return super()._comm_device() if self.world_size > 1 else torch.device("cpu")

    @torch.no_grad()
    def step(self, closure=None):
        self.last_ns_params = []
        sq: list[torch.Tensor] = []
        counts: list[int] = []
        for gi, group in enumerate(self.param_groups):
            acc, n = torch.zeros((), dtype=torch.float64), 0
            for ui, unit in enumerate(self._units(group)):
                if group["algo"] == "adamw":
                    (p,) = unit
                    if p.grad is None:
                        continue
                    local = p.to_local() if _is_dtensor(p) else p
                    g = p.grad.to_local() if _is_dtensor(p.grad) else p.grad
                    s, k = self._adamw_apply(group, local, g, self.state[p])
                else:
                    s, k = self._muon_sharded(group, unit, self._unit_owner[gi][ui])
                if k:
                    acc, n = acc + s.double().cpu(), n + k
            sq.append(acc)
            counts.append(n)
        self._finish_rms(sq, counts)
        return None

    def _muon_sharded(self, group: dict, unit: list, owner: int) -> tuple[torch.Tensor | None, int]:
        params = [p for p in unit if p.grad is not None]
        if not params:
            return None, 0
        if self.world_size == 1 or not _is_dtensor(params[0]):
            return self._muon_replicated(group, params, owner)
        from kvl_core.training.muon import _matrix_shape, muon_scale

        # Newton-Schulz needs the whole matrix, but only its owner does: the owner gathers the gradient
        # shards and scatters back to each rank just its own rows of the update. Every rank moves 1/W of
        # each matrix per direction (an all-gather of the gradient plus a broadcast of the update would
        # move W times that in total).
        n, d0, rest = len(params), params[0].shape[0], params[0][0].numel()
        c = -(-d0 // self.world_size)  # rows per rank: torch.chunk's split, as FSDP's Shard(0)
        rows = [max(0, min(c, d0 - r * c)) for r in range(self.world_size)]
        dev = params[0].to_local().device
        send = torch.zeros(n, c, rest, dtype=params[0].grad.dtype, device=dev)  # shards padded to c rows
        for i, p in enumerate(params):
            g = p.grad.to_local()
            send[i, : g.shape[0]] = g.reshape(g.shape[0], rest)
        mine = self.rank == owner
        bufs = [torch.empty_like(send) for _ in range(self.world_size)] if mine else None
        dist.gather(send, bufs, dst=self._global(owner), group=self.process_group)
        recv = torch.empty(n, c, rest, dtype=params[0].dtype, device=dev)
        if mine:
            full = torch.cat([b[:, :k] for b, k in zip(bufs, rows)], dim=1)  # [n, d0, rest]
            del bufs
            grads = [full[i].reshape(p.shape) for i, p in enumerate(params)]
            O, step = self._muon_direction(group, params, grads)
            O = O.reshape(n, d0, rest).to(params[0].dtype)
            parts, at = [], 0
            for k in rows:
                part = torch.zeros_like(recv)
                part[:, :k] = O[:, at : at + k]
                parts.append(part)
                at += k
            dist.scatter(recv, parts, src=self._global(owner), group=self.process_group)
        else:
            step = group["lr"] * muon_scale(_matrix_shape(params[0], group["flatten"]))
            dist.scatter(recv, None, src=self._global(owner), group=self.process_group)
        lr, wd = group["lr"], group["weight_decay"]
        for i, p in enumerate(params):
            local = p.to_local()
            local.mul_(1 - lr * wd)
            local.add_(recv[i, : local.shape[0]].reshape(local.shape), alpha=-step)
        if not self.track_rms or not mine:
            return None, 0
        return O.double().square().sum() * step * step, O.numel()

    def _muon_replicated(self, group: dict, params: list, owner: int) -> tuple[torch.Tensor | None, int]:
        """A Muon unit held whole on every rank (world 1, or a module FSDP leaves replicated): the owner
        orthogonalises it and broadcasts the update, as under ZeRO-1."""
        from kvl_core.training.muon import _matrix_shape, muon_scale

        grads = [p.grad for p in params]
        shape = (len(params), *grads[0].shape) if len(params) > 1 else tuple(grads[0].shape)
        if self.rank == owner:
            O, step = self._muon_direction(group, params, grads)
            O = O.reshape(shape).to(params[0].dtype).contiguous()
        else:
            O = torch.empty(shape, dtype=params[0].dtype, device=grads[0].device)
            step = group["lr"] * muon_scale(_matrix_shape(params[0], group["flatten"]))
        if self.world_size > 1:
            dist.broadcast(O, src=self._global(owner), group=self.process_group)
        lr, wd = group["lr"], group["weight_decay"]
        for i, p in enumerate(params):
            p.mul_(1 - lr * wd)
            p.add_((O[i] if len(params) > 1 else O).reshape(p.shape), alpha=-step)
        if not self.track_rms or self.rank != owner:
            return None, 0
        return O.double().square().sum() * step * step, O.numel()

    def _global(self, r: int) -> int:
        return dist.get_global_rank(self.process_group, r) if self.process_group is not None else r

    # ---- checkpoints (torch.distributed.checkpoint) ---------------------------------------------

    def _flat(self) -> list[tuple[int, dict, torch.Tensor, int]]:
        """(global index, group, param, owner) of every parameter."""
        out, i = [], 0
        for gi, g in enumerate(self.param_groups):
            for ui, unit in enumerate(self._units(g)):
                for p in unit:
                    out.append((i, g, p, self._unit_owner[gi][ui]))
                    i += 1
        return out

    def dcp_state(self, empty: bool = False) -> dict[str, torch.Tensor]:
        """The optimizer state as a flat dict of Shard(0) DTensors (plain tensors when not sharded), keys
        `"{index}.{name}"`. `empty=True` builds same-shaped placeholders for `dcp.load` to fill.
        Collective (the owners scatter the momentum buffers)."""
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor

        sd: dict[str, torch.Tensor] = {}
        for i, g, p, owner in self._flat():
            st = self.state.get(p, {})
            sharded = _is_dtensor(p)
            if g["algo"] == "adamw":
                if not empty and "step" not in st:
                    continue
                for key in ("exp_avg", "exp_avg_sq"):
                    local = torch.zeros_like(p.to_local() if sharded else p) if empty else st[key]
                    sd[f"{i}.{key}"] = (DTensor.from_local(local, p.device_mesh, p.placements, shape=p.shape,
                                                           stride=p.stride(), run_check=False) if sharded else local)
                sd[f"{i}.step"] = torch.tensor(0 if empty else st["step"], dtype=torch.int64)
            else:
                has = self._stepped if not empty else True
                if not has:
                    continue
                full = st.get("momentum_buffer") if self.rank == owner and not empty else None
                if full is None:
                    full = torch.zeros(p.shape, dtype=p.dtype, device=(p.to_local() if sharded else p).device)
                sd[f"{i}.momentum_buffer"] = (distribute_tensor(full, p.device_mesh, [Shard(0)], src_data_rank=owner)
                                              if sharded else full)
        return sd

    @property
    def _stepped(self) -> bool:
        return any("step" in self.state.get(p, {}) for _, g, p, _ in self._flat() if g["algo"] == "adamw") or any(
            "momentum_buffer" in self.state.get(p, {}) for _, g, p, _ in self._flat())

    def load_dcp_state(self, sd: dict[str, torch.Tensor]) -> None:
        """Install a state filled by dcp.load into placeholders from `dcp_state(empty=True)` (collective)."""
        for i, g, p, owner in self._flat():
            if g["algo"] == "adamw":
                if f"{i}.exp_avg" not in sd:
                    continue
                m, v = (sd[f"{i}.{k}"] for k in ("exp_avg", "exp_avg_sq"))
                self.state[p] = {"step": int(sd[f"{i}.step"]), "exp_avg": m.to_local() if _is_dtensor(m) else m,
                                 "exp_avg_sq": v.to_local() if _is_dtensor(v) else v}
            elif f"{i}.momentum_buffer" in sd:
                t = sd[f"{i}.momentum_buffer"]
                full = t.full_tensor() if _is_dtensor(t) else t
                if self.rank == owner:
                    self.state[p] = {"momentum_buffer": full}
