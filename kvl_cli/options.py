"""Option types shared by every verb that runs the model, so each spells them the same way.

A verb declares `backend: BackendOpt = None, base_url: BaseUrlOpt = None, api_key: ApiKeyOpt = None`
next to its `--model`, and hands them to `kvl_core.backend.load_engine`. The environment fallbacks
($KVL_BACKEND, $KVL_BASE_URL, $KVL_API_KEY / $OPENAI_API_KEY) are read there, not by typer, so that
library callers get them too. Light on purpose: imported at `kvl --help` time.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

BackendOpt = Annotated[Optional[str], typer.Option(
    "--backend", help="local (this machine) or openai (an OpenAI-compatible server: kvl serve, vLLM); "
                      "default $KVL_BACKEND, else openai when a base URL is set, else local.",
    show_default=False)]
BaseUrlOpt = Annotated[Optional[str], typer.Option(
    "--base-url", help="Server for --backend openai, e.g. http://127.0.0.1:8000/v1 (default $KVL_BASE_URL).",
    show_default=False)]
# For verbs whose --backend already means something else (kvl video: the decoder).
ModelBackendOpt = Annotated[Optional[str], typer.Option(
    "--model-backend", help="Where the model runs: local or openai (an OpenAI-compatible server); "
                            "default $KVL_BACKEND, else openai when a base URL is set, else local.",
    show_default=False)]
ApiKeyOpt = Annotated[Optional[str], typer.Option(
    "--api-key", help="Bearer key for --backend openai (default $KVL_API_KEY or $OPENAI_API_KEY).",
    show_default=False)]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Checkpoint dir or cached HF repo id (default $KVL_MODEL or the user config).",
    show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Checkpoint dir or cached HF repo id (default $KVL_MODEL or the user config); "
                          "with --backend openai, the served model name (default: the server's only model).",
    show_default=False)]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:1, mps ...")]
DtypeOpt = Annotated[Optional[str], typer.Option(
    "--dtype", help="float32, bfloat16 or float16 (default: the checkpoint's).", show_default=False)]
