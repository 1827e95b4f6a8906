"""`kvl serve`: an OpenAI-compatible HTTP server over the local engine (FastAPI + uvicorn, the `serve` extra).

The deployment side of the paper's efficiency story (§2.1, §2.3): many clients share one loaded model,
and concurrent requests are batched into one generation. `app.py` is the ASGI app, `batcher.py` the
queue in front of the single engine thread, `protocol.py` the request checks. Imports of FastAPI live in
those modules; this package's `__init__` stays light.
"""
