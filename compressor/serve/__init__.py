"""`mcompress serve`: an HTTP API over the torch-free bundle runtime, with dynamic micro-batching,
Prometheus metrics and drift monitoring (docs/serving.md). Heavy imports (fastapi, uvicorn,
prometheus_client) happen inside the modules that need them, not here."""
