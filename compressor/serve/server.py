"""Start the server: verify and load the model, then bind and serve with uvicorn.

A build directory is packaged in memory (bundle.package.bundle_bytes, what `mcompress package`
writes) and loaded from those bytes by the same runtime and checks as a .mcpkg file, so both serve
the gated artifact one way. Any load error (missing, tampered, unsupported) is raised before the
port is bound; the CLI prints its one line and exits 2.

Shutdown: on SIGTERM or SIGINT uvicorn stops accepting connections, lets in-flight requests finish
(up to graceful_timeout_s), then the app's lifespan stops the batcher; ``serve`` returns normally
(exit 0).
"""

from __future__ import annotations

import signal
from pathlib import Path

from mcompress.serve.config import ServeConfig


def bundle_source(model: Path, allow_failed: bool = False) -> tuple[Path, bytes | None]:
    """(name, bytes) to hand the runtime: a .mcpkg file is read by the runtime itself (bytes None),
    a build directory is packaged in memory first."""
    if model.is_dir():
        from mcompress.bundle.package import bundle_bytes

        data, _ = bundle_bytes(model, allow_failed=allow_failed)
        return model / "(packaged in memory)", data
    return model, None


def bundle_data(config: ServeConfig) -> tuple[Path, bytes]:
    """(name, bytes) of the bundle to serve, read or packaged into memory (what Ray replicas load)."""
    name, data = bundle_source(config.model, config.allow_failed)
    return name, data if data is not None else name.read_bytes()


def load_model(config: ServeConfig):
    """The Bundle to serve: a .mcpkg file as is, a build directory packaged in memory."""
    from mcompress.bundle.runtime import load

    name, data = bundle_source(config.model, config.allow_failed)
    return load(name, threads=config.threads, data=data, server=True,
                trusted_keys=list(config.trusted_keys) if config.trusted_keys else None)


def model_sha256(bundle) -> str:
    return bundle.manifest["files"][bundle.manifest["model_file"]]["sha256"]


def _ignore(signum, frame) -> None:
    """uvicorn re-raises the signal it stopped on once it has shut down; by then there is nothing
    left to do, so the process exits 0 instead of dying by the signal."""


def serve(config: ServeConfig, on_ready=None) -> None:
    """Load, bind, serve until SIGTERM/SIGINT. ``on_ready(url)`` is called once the model is loaded."""
    import uvicorn

    from mcompress.serve.app import create_app

    bundle = load_model(config)
    app = create_app(bundle, config, model_sha256(bundle))
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           access_log=False, timeout_graceful_shutdown=config.graceful_timeout_s,
                                           lifespan="on"))
    if on_ready is not None:
        on_ready(f"http://{config.host}:{config.port}")
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, _ignore)
    try:
        server.run()
    except SystemExit:  # uvicorn exits 1 when it cannot bind
        pass
    if not server.started:
        from mcompress.core.errors import InputError

        raise InputError(f"cannot listen on {config.host}:{config.port} (in use, or not an address of this machine).",
                         "Choose another --host/--port.")
