"""`kvl models`: the models this machine can run — built-in ones and Kimi-VL checkpoints in the HF cache.

Reads only config files and file sizes (no weights), so it is instant even with a 33 GB model cached.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer


def list_models() -> list[dict[str, Any]]:
    import json

    from kvl_core import hub

    rows: list[dict[str, Any]] = []
    configured = hub.configured_model_spec()
    for name, what in hub.BUILTIN_MODELS.items():
        path = hub.builtin_model(name)
        rows.append({"name": name, "kind": "built-in", "path": str(path) if path else None,
                     "size_mb": _size_mb(path) if path else None, "installed": path is not None,
                     "default": not configured and name == hub.DEFAULT_MODEL,
                     "about": "; ".join(x for x in (what, hub.builtin_quality(name)) if x)})
    cache = hub.hf_cache_dir()
    for repo_dir in sorted(cache.glob("models--*")) if cache.is_dir() else []:
        repo = repo_dir.name.removeprefix("models--").replace("--", "/")
        snap = hub.resolve_from_hf_cache(repo)
        if snap is None or not (snap / "config.json").exists():
            continue
        try:
            model_type = json.loads((snap / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            continue
        if model_type != "kimi_vl":
            continue
        rows.append({"name": repo, "kind": "hf-cache", "path": str(snap), "size_mb": _size_mb(snap),
                     "installed": True, "default": configured == repo,
                     "about": hub.KNOWN_MODELS.get(repo, "")})
    if configured and not any(r["default"] for r in rows):
        rows.append({"name": configured, "kind": "configured", "path": configured, "size_mb": None,
                     "installed": None, "default": True, "about": "from --model / KVL_MODEL / config.toml"})
    return rows


def _size_mb(path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 1)


def models(
    json_out: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List built-in models and Kimi-VL checkpoints in the local Hugging Face cache."""
    from kvl_cli.output import console, print_json

    rows = list_models()
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in ("", "model", "kind", "size", "about"):
        table.add_column(col)
    for r in rows:
        size = f"{r['size_mb']:.0f} MB" if r["size_mb"] is not None else ("not installed" if r["installed"] is False else "")
        table.add_row("*" if r["default"] else "", r["name"], r["kind"], size, r["about"])
    console.print(table)
    console.print("[dim]* = used when no --model is given. Real weights: `hf download moonshotai/Kimi-VL-A3B-Instruct`.[/]")
