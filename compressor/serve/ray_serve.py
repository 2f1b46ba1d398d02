"""`mcompress serve --ray`: the same app (serve/app.py: routes, limits, metrics, drift monitor) as a
Ray Serve deployment with N replicas, each a Ray actor process holding its own model session.

Protocol: the driver (this process) verifies and loads the bundle once, so a bad bundle fails with
the runtime's one-line error and exit 2 before anything starts; it puts the verified bundle bytes
into the Ray object store, so replicas on other nodes need no copy of the file; connects to the
cluster at ``--ray-address`` or starts a local one; starts Serve's HTTP proxy on --host/--port and
deploys ``ServeReplica`` at route prefix ``/`` with ``num_replicas``. Each replica builds the app
with ``RayBatcher``, whose grouping is Ray Serve's own ``@serve.batch`` (batch_size_fn counts
texts; ``batch_wait_timeout_s`` = --max-wait-ms: unlike the in-process batcher, serve.batch waits
that long for company even when the model is idle). The grouped texts go through the same
``MicroBatcher._predict`` (one Bundle.run in the gate's length buckets, each request its slice).

Per replica: /metrics and /v1/monitor describe that replica (scrape each replica, or sum them);
the proxy picks a replica per request. SIGTERM/SIGINT: the application is deleted (Serve drains
its replicas' in-flight requests) and a local cluster this process started is shut down; exit 0.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from mcompress.serve.batcher import MicroBatcher, QueueFull, Job
from mcompress.serve.config import ServeConfig

APP_NAME = "mcompress"
# Ray Serve's default max_ongoing_requests (5) would cap a replica's batches at 5 requests; the
# replica's own queue limit (--max-queue, answered 503) is the limit that counts.
ONGOING_MARGIN = 8


class RayBatcher(MicroBatcher):
    """MicroBatcher whose grouping is Ray Serve's ``serve.batch``: no batcher task of its own."""

    @classmethod
    def for_config(cls, bundle, config, on_batch=None) -> "RayBatcher":
        batcher = super().for_config(bundle, config, on_batch)
        batcher.max_texts, batcher._waiting = config.max_texts, 0
        return batcher

    def start(self) -> None:
        from ray import serve

        # a request may hold more texts than max_batch_size (up to --max-texts); serve.batch refuses
        # an item larger than its max_batch_size, so the cap is the larger of the two
        largest = max(self.max_batch_size, self.max_texts)
        self._batched = serve.batch(max_batch_size=largest, batch_wait_timeout_s=self.max_wait_s,
                                    batch_size_fn=lambda jobs: sum(len(job.texts) for job in jobs))(self._predict)

    @property
    def depth(self) -> int:
        return self._waiting

    async def submit(self, texts: list[str]):
        if self._waiting >= self.max_queue:
            raise QueueFull
        self._waiting += 1
        try:
            return await self._batched(Job(list(texts)))
        finally:
            self._waiting -= 1


class ServeReplica:
    """One Ray Serve replica: loads the verified bundle bytes and serves the app on them."""

    def __init__(self, config: ServeConfig, name: str, data_ref: list):
        self.config, self.name, self.data_ref = config, name, data_ref

    def __serve_build_asgi_app__(self):
        import ray

        from mcompress.bundle.runtime import load
        from mcompress.serve.app import create_app
        from mcompress.serve.server import model_sha256

        # verified by the driver (its trusted keys too); the manifest hashes are checked again here
        bundle = load(Path(self.name), threads=self.config.threads, data=ray.get(self.data_ref[0]), server=True)
        return create_app(bundle, self.config, model_sha256(bundle), RayBatcher)


def _connect(address: str | None, replicas: int) -> bool:
    """Join the cluster at ``address`` or start a local one; True when this process started it."""
    import ray

    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        return False
    # a local cluster reserves one logical CPU per replica; a machine with fewer cores still starts them all
    ray.init(num_cpus=max(os.cpu_count() or 1, replicas), include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    return True


def _deployment(config: ServeConfig, replicas: int):
    from ray import serve

    return serve.deployment(name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": 1},
                            max_ongoing_requests=config.max_queue + config.max_batch_size + ONGOING_MARGIN
                            )(serve.ingress()(ServeReplica))


def require_ray(enabled: bool, replicas: int) -> None:
    """The --ray flags make sense together, and Ray Serve is installed (else exit 2 or 4)."""
    from mcompress.core.errors import InputError, TargetUnavailable

    if not enabled:
        raise InputError("--replicas and --ray-address run the server on Ray Serve.", "Add --ray.")
    if replicas < 1:
        raise InputError(f"--replicas must be >= 1 (got {replicas}).")
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        raise TargetUnavailable("--ray needs Ray Serve, which is not installed.",
                                "pip install 'mcompress[serve-ray]' (ray[serve]==2.60.0).") from None


def serve_on_ray(config: ServeConfig, on_ready=None, *, replicas: int = 1, address: str | None = None) -> None:
    """Deploy, call ``on_ready(url)``, serve until SIGTERM/SIGINT, then remove the deployment."""
    from mcompress.serve.server import bundle_data, load_model

    # verify and load once here: a bad bundle fails before any cluster starts
    config = config.for_bundle(load_model(config))
    name, data = bundle_data(config)
    import ray
    from ray import serve

    started = _connect(address, replicas)
    stop = threading.Event()
    # Our handlers replace the ones ray.init installed, and go in before serve.run: the proxy answers
    # requests (/readyz included) as soon as a replica is up, before serve.run returns, so a SIGTERM can
    # come while it still waits; Ray's own handler would then abort the driver (exit -6, no cleanup).
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, lambda signum, frame: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(_deployment(config, replicas).bind(config, str(name), [ray.put(data)]), name=APP_NAME,
                  route_prefix="/")
        if on_ready is not None and not stop.is_set():
            on_ready(f"http://{config.host}:{config.port}")
        while not stop.wait(0.5):
            pass
    finally:
        if started:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
        ray.shutdown()
