"""The server's settings (one frozen object, from the CLI flags)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mcompress.core.errors import InputError


@dataclass(frozen=True)
class ServeConfig:
    model: Path  # a .mcpkg bundle, or a build directory packaged in memory
    host: str = "127.0.0.1"
    port: int = 8000
    # texts per model call, also the length-bucket size; None: the largest batch the bundle was gated
    # at (Bundle.largest_gated_batch), so served answers are the ones the gate judged
    max_batch_size: int | None = None
    max_wait_ms: float = 5.0  # Ray Serve: how long a batch waits for more requests (serve.batch); in-process: unused
    max_queue: int = 256  # requests waiting for the model; more are answered 503
    max_texts: int = 64  # texts per request
    max_chars: int = 10_000  # characters per text
    max_body_bytes: int = 1_048_576  # request body
    drift_window: int = 2000  # predictions the drift monitor compares with the reference
    threads: int | None = None  # intra-op threads of the model session (None: the runtime's default)
    allow_failed: bool = False  # serve a build directory whose gates failed
    graceful_timeout_s: float = 30.0  # how long SIGTERM waits for in-flight requests
    # PEM EC public keys: refuse a bundle not signed by one of them (bundle/signing.py); None: no check
    trusted_keys: tuple[Path, ...] | None = None

    def __post_init__(self):
        for name in ("max_queue", "max_texts", "max_chars", "max_body_bytes", "drift_window"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)}).")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise InputError(f"--max-batch-size must be >= 1 (got {self.max_batch_size}).")
        if self.max_wait_ms < 0:
            raise InputError(f"--max-wait-ms must be >= 0 (got {self.max_wait_ms}).")
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be in 0..65535 (got {self.port}).")

    def for_bundle(self, bundle) -> "ServeConfig":
        """These settings with max_batch_size given: the flag's, else the bundle's gated batch size
        (bundle/runtime.py Bundle.largest_gated_batch)."""
        return self if self.max_batch_size is not None else replace(self, max_batch_size=bundle.largest_gated_batch)
