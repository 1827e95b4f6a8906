"""The CUDA paths must not sync with the host (a sync per layer costs latency and makes CUDA-graph
capture fail). Checked on the CPU by watching the aten ops they dispatch: every host sync goes
through one of the ops below (`.item()`/`.tolist()`/`bool()` are `_local_scalar_dense`)."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kvl_core.config import TextConfig
from kvl_core.generation import StaticDecoder
from kvl_core.model.moe import MoE

SYNCING = {"_local_scalar_dense", "nonzero", "bincount", "unique", "_unique2", "unique_consecutive",
           "masked_select", "repeat_interleave"}


class SyncWatch(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name in ("index", "index_put", "index_put_") and any(
            isinstance(t, torch.Tensor) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else ()) or ())
        if name in SYNCING or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))


def test_the_watch_sees_item_and_bincount():
    with SyncWatch() as w:
        torch.arange(3).sum().item()
        torch.bincount(torch.tensor([0, 2]))
    assert w.seen == ["_local_scalar_dense", "bincount"]


@pytest.mark.parametrize("impl", ["grouped_mm", "pairs", "padded"])
@torch.no_grad()
def test_grouped_experts_never_sync(impl):
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    cfg = TextConfig(hidden_size=32, moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=3, n_shared_experts=1)
    moe = MoE(cfg)
    x = torch.randn(11, 32)
    moe.expert_stacks()  # built once, outside the step (as the graph warm-up does)
    with SyncWatch() as w:
        idx, wts = moe.gate(x)
        moe.routed_grouped(x, idx, wts, impl=impl)
    assert w.seen == []
    with SyncWatch() as w:  # the CPU loop does sync: that is why CUDA does not use it
        moe.routed(x, idx, wts)
    assert "bincount" in w.seen


@torch.no_grad()
def test_static_decode_step_never_syncs(tiny_model, golden, monkeypatch):
    # On CUDA MoE.forward takes the grouped path; force it here on the CPU.
    monkeypatch.setattr(MoE, "routed", lambda self, x, idx, w: self.routed_grouped(x, idx, w, impl="pairs"))
    lm = tiny_model.language_model
    dec = StaticDecoder(lm, 2, 256)
    dec._run()  # warm-up: absorbed and stacked weights
    with SyncWatch() as w:
        logits = dec._run()
    assert w.seen == [] and logits.shape == (2, lm.config.vocab_size)


@pytest.mark.parametrize("impl", ["grouped_mm", "pairs", "padded"])
@torch.no_grad()
def test_static_decode_step_runs_on_the_meta_device(impl, monkeypatch):
    """Meta tensors have no values: any read of one on the host (.tolist(), int(), a data-dependent
    shape) raises. The step running there is the proof that it never needs the host."""
    if impl == "grouped_mm" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    from kvl_core.config import tiny
    from kvl_core.model.language import DeepseekV3ForCausalLM

    with torch.device("meta"):
        lm = DeepseekV3ForCausalLM(tiny().text).eval().to(torch.bfloat16)  # _grouped_mm is bf16-only on CUDA
        dec = StaticDecoder(lm, 3, 256)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the CPU loop reads its counts on the host
        dec._run()
    monkeypatch.setattr(MoE, "routed", lambda self, x, idx, w: self.routed_grouped(x, idx, w, impl=impl))
    logits = dec._run()
    assert logits.device.type == "meta" and logits.shape == (3, 300)
