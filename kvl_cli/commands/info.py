"""`kvl info PATH`: describe a Kimi-VL checkpoint folder without loading any weights.

Works on a folder holding only `config.json` (inspect a model before downloading it); when weights are present
only their safetensors headers are read (dtypes, file count, sizes, and whether names/shapes match the config).
Heavy imports stay inside the functions so that `kvl --help` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def collect_info(path: str) -> dict[str, Any]:
    """Everything `kvl info` shows, as a JSON-ready dict. Raises KvlError for unusable input."""
    from kvl_core import checkpoint, stats
    from kvl_core.config import KimiVLConfig

    d = checkpoint.resolve_checkpoint_dir(path)
    cfg = KimiVLConfig.from_file(d / checkpoint.CONFIG_NAME)
    v, t = cfg.vision, cfg.text

    weights: dict[str, Any] | None = None
    dtype = str(cfg.torch_dtype)
    if _has_weight_files(d):
        files = checkpoint.weight_files(d)
        index = checkpoint.tensor_index(d)
        by_dtype: dict[str, int] = {}
        for info in index.values():
            by_dtype[info.dtype] = by_dtype.get(info.dtype, 0) + info.nbytes
        floating = {k: n for k, n in by_dtype.items() if k.startswith(("F", "BF"))}
        if floating:
            dtype = _DTYPE_NAMES.get(max(floating, key=floating.__getitem__), dtype)
        diff = checkpoint.diff_tensors(stats.expected_tensors(cfg), {k: i.shape for k, i in index.items()})
        weights = {
            "files": [f.name for f in files],
            "file_bytes": sum(f.stat().st_size for f in files),
            "tensors": len(index),
            "parameters": sum(i.numel for i in index.values()),
            "dtypes": {k: by_dtype[k] for k in sorted(by_dtype)},
            "matches_config": diff.ok,
            "missing": diff.missing,
            "unexpected": diff.unexpected,
            "wrong_shape": diff.mismatched,
        }

    params = stats.param_stats(cfg)
    kv = stats.kv_cache_stats(cfg, dtype)
    n_moe = sum(t.is_moe_layer(i) for i in range(t.num_hidden_layers))
    kh, kw = v.merge_kernel_size
    return {
        "path": str(d),
        "model_type": "kimi_vl",
        "dtype": dtype,
        "config": {
            "vision": {"layers": v.num_hidden_layers, "hidden_size": v.hidden_size, "heads": v.num_attention_heads,
                       "intermediate_size": v.intermediate_size, "patch_size": v.patch_size,
                       "pos_emb_grid": [v.init_pos_emb_height, v.init_pos_emb_width],
                       "merge_kernel_size": [kh, kw]},
            "projector": {"in": v.hidden_size * kh * kw, "hidden": v.hidden_size * kh * kw, "out": t.hidden_size},
            "text": {"layers": t.num_hidden_layers, "dense_layers": t.num_hidden_layers - n_moe, "moe_layers": n_moe,
                     "hidden_size": t.hidden_size, "heads": t.num_attention_heads, "vocab_size": t.vocab_size,
                     "q_lora_rank": t.q_lora_rank, "kv_lora_rank": t.kv_lora_rank,
                     "qk_nope_head_dim": t.qk_nope_head_dim, "qk_rope_head_dim": t.qk_rope_head_dim,
                     "v_head_dim": t.v_head_dim, "intermediate_size": t.intermediate_size,
                     "moe_intermediate_size": t.moe_intermediate_size, "n_routed_experts": t.n_routed_experts,
                     "num_experts_per_tok": t.num_experts_per_tok, "n_shared_experts": t.n_shared_experts,
                     "scoring_func": t.scoring_func, "topk_method": t.topk_method,
                     "max_position_embeddings": t.max_position_embeddings, "rope_theta": t.rope_theta,
                     "tie_word_embeddings": t.tie_word_embeddings},
            "media_placeholder_token_id": cfg.media_placeholder_token_id,
        },
        "parameters": params.as_dict(),
        "kv_cache": {**kv.as_dict(),
                     "latent_bytes_at_max_context": kv.latent_bytes_per_token * t.max_position_embeddings,
                     "naive_bytes_at_max_context": kv.naive_bytes_per_token * t.max_position_embeddings},
        "weights": weights,
    }


def _has_weight_files(d) -> bool:
    from kvl_core.checkpoint import PICKLE_SUFFIXES

    # Only a folder with no weight-like files at all is "config only"; pickles go through weight_files to be refused.
    return any(f.suffix == ".safetensors" or f.name.endswith(".safetensors.index.json") or f.suffix in PICKLE_SUFFIXES
               for f in d.iterdir() if f.is_file())


_DTYPE_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64",
                "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def info(
    path: Annotated[str, typer.Argument(help="Checkpoint folder: config.json, with or without the weights.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the same information as JSON.")] = False,
) -> None:
    """Show a model's configuration, parameter counts, dtype and KV-cache size (reads headers only)."""
    data = collect_info(path)
    if json_out:
        from kvl_cli.output import print_json

        print_json(data)
        return
    _render(data)


def _render(data: dict[str, Any]) -> None:
    from functools import partial

    from rich.table import Table

    from kvl_cli.output import console as _console

    # Numbers in prose would otherwise be recoloured by rich's highlighter.
    out = partial(_console.print, highlight=False)
    c, p, kv, w = data["config"], data["parameters"], data["kv_cache"], data["weights"]
    v, t = c["vision"], c["text"]

    summary = Table(title=f"Kimi-VL model: {data['path']}", show_header=False, title_justify="left")
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("vision tower", f"MoonViT, {v['layers']} layers, hidden {v['hidden_size']}, {v['heads']} heads, "
                    f"MLP {v['intermediate_size']}, patch {v['patch_size']}, pos-emb grid "
                    f"{v['pos_emb_grid'][0]}x{v['pos_emb_grid'][1]}, merge {v['merge_kernel_size'][0]}x"
                    f"{v['merge_kernel_size'][1]}")
    pj = c["projector"]
    summary.add_row("projector", f"LayerNorm -> Linear {pj['in']}->{pj['hidden']} -> GELU -> Linear "
                    f"{pj['hidden']}->{pj['out']}")
    summary.add_row("language model", f"{t['layers']} layers ({t['dense_layers']} dense + {t['moe_layers']} MoE), "
                    f"hidden {t['hidden_size']}, {t['heads']} heads, vocab {t['vocab_size']}"
                    f"{', tied lm_head' if t['tie_word_embeddings'] else ''}")
    summary.add_row("attention", f"MLA: q_lora_rank {t['q_lora_rank'] or 'none'}, kv_lora_rank {t['kv_lora_rank']}, "
                    f"qk {t['qk_nope_head_dim']} nope + {t['qk_rope_head_dim']} rope, v {t['v_head_dim']}")
    if t["n_routed_experts"]:
        summary.add_row("experts", f"{t['n_routed_experts']} routed ({t['num_experts_per_tok']} per token) + "
                        f"{t['n_shared_experts'] or 0} shared, expert MLP {t['moe_intermediate_size']}, dense MLP "
                        f"{t['intermediate_size']}, router {t['scoring_func']}/{t['topk_method']}")
    summary.add_row("context length", f"{t['max_position_embeddings']:,} tokens")
    summary.add_row("rope theta", f"{t['rope_theta']:g}")
    summary.add_row("image placeholder id", str(c["media_placeholder_token_id"]))
    summary.add_row("dtype", data["dtype"])
    out(summary)

    table = Table(title="Parameters", title_justify="left")
    table.add_column("part")
    table.add_column("total", justify="right")
    table.add_column("active / token", justify="right")
    table.add_row("vision tower", _n(p["vision"]["total"]), _n(p["vision"]["active"]))
    table.add_row("projector", _n(p["projector"]["total"]), _n(p["projector"]["active"]))
    for name, cnt in p["lm"].items():
        table.add_row(f"  LM {name.replace('_', ' ')}", _n(cnt["total"]), _n(cnt["active"]))
    table.add_row("language model", _n(p["lm_total"]), _n(p["lm_active"]), style="bold")
    table.add_row("total", _n(p["total"]), _n(p["active"]), style="bold")
    out(table)
    out(
        f"LM active per token: {_b(p['lm_active'])} counting the embedding table and lm_head, "
        f"{_b(p['lm_active_without_embedding_table'])} without the embedding table (a lookup reads one row), "
        f"{_b(p['lm_active_non_embedding'])} non-embedding (without both). Routed experts count "
        f"{t['num_experts_per_tok']} of {t['n_routed_experts']} per MoE layer; vision + projector are dense "
        "and run only on image tokens (\"total\" active = LM + vision + projector).")

    ratio = kv["naive_bytes_per_token"] / kv["latent_bytes_per_token"]
    out(
        f"KV cache ({kv['dtype']}): {_bytes(kv['latent_bytes_per_token'])}/token for the MLA latent "
        f"({kv['latent_values_per_token']:,} values: (kv_lora_rank + qk_rope_head_dim) x layers); "
        f"a naive full K/V cache would need {_bytes(kv['naive_bytes_per_token'])}/token ({ratio:.1f}x). "
        f"At {t['max_position_embeddings']:,} tokens: {_bytes(kv['latent_bytes_at_max_context'])} vs "
        f"{_bytes(kv['naive_bytes_at_max_context'])}.")

    if w is None:
        out("Weights: none in this folder (config only).")
        return
    dtypes = ", ".join(f"{k} {_bytes(n)}" for k, n in w["dtypes"].items())
    out(f"Weights: {len(w['files'])} file(s), {_bytes(w['file_bytes'])}, {w['tensors']:,} tensors, "
                  f"{_n(w['parameters'])} parameters ({dtypes}).")
    if w["matches_config"]:
        out("[green]Tensor names and shapes match the config.[/green]")
    else:
        from kvl_core.checkpoint import TensorDiff

        diff = TensorDiff(w["missing"], w["unexpected"], w["wrong_shape"])
        out(f"[red]Tensors do not match the config:[/red] {diff.summary()}", soft_wrap=True)


def _n(n: int) -> str:
    return f"{n:,} ({_b(n)})"


def _b(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
