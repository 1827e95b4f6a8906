"""`kvl serve`: the local engine behind an OpenAI-compatible HTTP API (kvl_core/serving)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kvl_cli.options import CheckpointOpt, DeviceOpt, DtypeOpt


def serve(
    model: CheckpointOpt = None,
    host: Annotated[str, typer.Option(help="Address to bind; anything but loopback exposes the model to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[Optional[str], typer.Option(help="Name clients pass as `model` (default: --model as given).")] = None,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    allow_local_files: Annotated[bool, typer.Option("--allow-local-files", help="Accept file:// image URLs (files this machine can read).")] = False,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Requests generated together at most.")] = 16,
    batching: Annotated[bool, typer.Option("--batching/--no-batching", help="--no-batching serves one request at a time.")] = True,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="How long a batch waits for requests arriving together.")] = 5.0,
    max_body_mb: Annotated[float, typer.Option(min=0.001, help="Largest request body, in MiB (base64 images count).")] = 32.0,
    max_images: Annotated[int, typer.Option(min=0, help="Most images in one request.")] = 16,
    max_image_pixels: Annotated[int, typer.Option(min=1, help="Largest decoded image, in pixels.")] = 40_000_000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require this bearer key on /v1/*.", show_default=False)] = None,
) -> None:
    """Serve the model over an OpenAI-compatible API (/v1/chat/completions, /v1/models, /health)."""
    from kvl_cli.output import err_console, print_warning
    from kvl_core.engine import Engine
    from kvl_core.serving.app import ServeConfig
    from kvl_core.serving.server import is_loopback, serve as run_server

    if not is_loopback(host):
        print_warning(f"binding {host}: anyone who can reach this machine can use the model"
                      + ("" if api_key else " (no --api-key set)"))
    cfg = ServeConfig(host=host, port=port, served_name=served_model_name, api_key=api_key,
                      allow_local_files=allow_local_files, max_body_bytes=int(max_body_mb * 2**20),
                      max_images=max_images, max_image_pixels=max_image_pixels,
                      max_batch_size=max_batch_size if batching else 1, batch_wait_ms=batch_wait_ms)
    from kvl_core.hub import require_skill

    require_skill(model, "chat", "kvl serve")
    err_console.print("[dim]loading the model ...[/dim]")
    engine = Engine.load(model, device=device, dtype=dtype)
    run_server(engine, cfg, announce=lambda msg: err_console.print(msg, markup=False, highlight=False))
