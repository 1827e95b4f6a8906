"""Run the app with uvicorn: load the engine first, then bind, then say where it listens."""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from kvl_core.errors import KvlError
from kvl_core.serving.app import ServeConfig, create_app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(engine: Any, cfg: ServeConfig, announce: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM shut down gracefully)."""
    import socket

    import uvicorn

    from kvl_core.serving.batcher import Batcher

    if not 0 < cfg.port < 65536:
        raise KvlError(f"--port {cfg.port}: must be 1..65535")
    # Bind here, before uvicorn, so that a taken port is one clear line rather than uvicorn's log + exit.
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))
    except OSError as e:
        sock.close()
        raise KvlError(f"{cfg.host}:{cfg.port}: cannot listen ({e.strerror or e})") from None
    batcher = Batcher(engine, cfg.max_batch_size, cfg.batch_wait_ms / 1000)
    app = create_app(engine, cfg, batcher)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5, access_log=False)
    server = uvicorn.Server(config)
    if announce is not None:
        name = cfg.served_name or engine.name
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        announce(f"serving {name} at http://{shown}:{cfg.port}/v1 "
                 f"({'batches of up to ' + str(cfg.max_batch_size) if cfg.max_batch_size > 1 else 'one request at a time'})")
    try:
        server.run(sockets=[sock])
    finally:
        batcher.close()
        sock.close()
    if not server.started:
        raise KvlError(f"{cfg.host}:{cfg.port}: the server failed to start (see the log above)")
