"""The ASGI app (FastAPI) around one loaded bundle: routes, limits, metrics (docs/serving.md).

Limits are enforced before anything reaches the model: the body size by an ASGI middleware (413,
from Content-Length or while the body streams in), the number of texts and characters per text by
the request schema (422 naming the field: ``{"error": ..., "field": "texts.3", "detail": [...]}``);
a full queue answers 503 with ``Retry-After``.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures, whose models are local

import json
import os
import socket
import time
from typing import Annotated, Any

from mcompress.serve.batcher import MicroBatcher, QueueFull
from mcompress.serve.config import ServeConfig
from mcompress.serve.metrics import ServerMetrics
from mcompress.serve.monitor import DriftMonitor

PREDICT = "/v1/predict"
RETRY_AFTER_S = 1
REPLICA_HEADER = b"x-mcompress-replica"  # host:pid of the process that answered (one per Ray replica)
GENERATE = "/v1/generate"
ROUTES = ("/v1/predict", GENERATE, "/v1/model", "/v1/monitor", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


def _models(config: ServeConfig):
    """Request and response schemas, with the configured limits in the request's."""
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints

    Text = Annotated[str, StringConstraints(max_length=config.max_chars)]

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: Annotated[list[Text], Field(min_length=1, max_length=config.max_texts,
                                           description=f"1 to {config.max_texts} texts of at most "
                                                       f"{config.max_chars} characters each")]

    class PredictResponse(BaseModel):
        predictions: list[dict[str, Any]] = Field(description="one prediction per text, in order (the task's runtime decoder)")
        task: str
        model_sha256: str

    class Error(BaseModel):
        error: str
        field: str | None = None

    return PredictRequest, PredictResponse, Error


def _generate_model(config: ServeConfig, context_length: int):
    """The request schema of /v1/generate (a generating bundle's), with the configured limits."""
    from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

    class GenerateRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        prompt: Annotated[str, StringConstraints(max_length=config.max_chars)] = Field(
            description=f"the text to continue, at most {config.max_chars} characters (and the model's context in tokens)")
        max_new_tokens: int | None = Field(None, ge=1, le=context_length,
                                           description="tokens to generate at most (default: the bundle's)")
        temperature: float = Field(0.0, ge=0, le=100, allow_inf_nan=False, description="0 = greedy")
        top_k: int | None = Field(None, ge=1)
        top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
        seed: int | None = Field(None, ge=0, lt=2 ** 63, description="a seed repeats a sampled continuation")
        stream: bool = Field(False, description="server-sent events: one `token` event per token, then `done`")

        @model_validator(mode="after")
        def _sampling_needs_a_temperature(self):
            if self.temperature == 0 and (self.top_k is not None or self.top_p is not None):
                raise ValueError("top_k and top_p sample; temperature 0 is greedy: give a temperature > 0")
            return self

    return GenerateRequest


def _json(status: int, body: dict, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse(body, status_code=status, headers=headers)


class _Limits:
    """ASGI middleware: counts in-flight requests, times and counts every response by route and
    status, names the replica that answered (header), and refuses bodies over max_body_bytes (413)."""

    def __init__(self, app, state):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state, path = self.state, scope["path"]
        route = path if path in ROUTES else "other"
        status, started = {"code": 500}, time.perf_counter()
        limit = state.config.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        state.metrics.in_flight.inc()
        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                return await self._too_large(scope, receive, send, status)
            received = {"bytes": 0}

            async def counted_receive():
                message = await receive()
                if message["type"] == "http.request":
                    received["bytes"] += len(message.get("body", b""))
                    if received["bytes"] > limit:
                        raise _BodyTooLarge
                return message

            async def recorded_send(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    message["headers"] = [*message.get("headers", ()), (REPLICA_HEADER, state.replica.encode())]
                await send(message)

            try:
                await self.app(scope, counted_receive, recorded_send)
            except _BodyTooLarge:
                await self._too_large(scope, receive, send, status)
        finally:
            state.metrics.in_flight.dec()
            state.metrics.requests.labels(route, str(status["code"])).inc()
            state.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _too_large(self, scope, receive, send, status):
        status["code"] = 413
        response = _json(413, {"error": f"request body is over {self.state.config.max_body_bytes} bytes "
                                        "(--max-body-bytes)", "field": "body"})
        await response(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _field_of(errors: list[dict]) -> str:
    """The field the first error is about, dotted ("texts.3"); "body" for a body that is not JSON."""
    if not errors or errors[0].get("type") == "json_invalid":
        return "body"
    return ".".join(str(part) for part in (errors[0].get("loc") or []) if part != "body") or "body"


class AppState:
    """Everything the routes share: the bundle, its batcher, metrics and drift monitor."""

    def __init__(self, bundle, config: ServeConfig, model_sha256: str, batcher=MicroBatcher):
        config = config.for_bundle(bundle)
        self.bundle, self.config, self.model_sha256 = bundle, config, model_sha256
        self.metrics = ServerMetrics(config.max_batch_size, bundle.max_sequence_length)
        self.monitor = DriftMonitor(bundle.manifest.get("monitoring"), config.drift_window)
        self.batcher = batcher.for_config(bundle, config, self.on_batch)
        self.ready = False
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    def on_batch(self, jobs, prediction, seconds: float) -> None:
        self.metrics.observe_batch(len(jobs), len(prediction.results), seconds)
        observations = [self.bundle.decoder.observations(result) for result in prediction.results]
        self.metrics.observe_predictions(observations, prediction.token_lengths, prediction.truncated)
        self.monitor.observe(observations, prediction.token_lengths)

    async def warm_up(self) -> None:
        """Real model calls before /readyz says ready (Bundle.warm_up: the largest batch the server
        forms, or a generation), so the session's memory arena holds its peak before traffic."""
        await self.batcher.call(self.bundle.warm_up, self.config.max_batch_size)
        self.ready = True
        self.metrics.ready.set(1)


def create_app(bundle, config: ServeConfig, model_sha256: str, batcher=MicroBatcher):
    """The FastAPI app serving ``bundle`` (a loaded mcompress.runtime Bundle); ``batcher``: the
    MicroBatcher class that groups its requests (serve/ray_serve.py passes Ray Serve's)."""
    import asyncio
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException as StarletteHTTPException

    state = AppState(bundle, config, model_sha256, batcher)
    PredictRequest, PredictResponse, Error = _models(state.config)

    @asynccontextmanager
    async def lifespan(app):
        state.batcher.start()
        warm = asyncio.get_running_loop().create_task(state.warm_up())
        yield
        warm.cancel()
        await state.batcher.stop()

    app = FastAPI(title="mcompress serve", version=str(bundle.manifest.get("mcompress_version")),
                  description=f"{bundle.manifest.get('task')} bundle {bundle.path.name}", lifespan=lifespan)
    app.state.serve = state

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = json.loads(json.dumps(exc.errors(), default=str))
        first = errors[0] if errors else {}
        field = _field_of(errors)
        return _json(422, {"error": f"{field}: {first.get('msg', 'invalid request')}", "field": field,
                           "detail": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # FastAPI could not parse the body (not UTF-8, not the declared form)
            return _json(422, {"error": f"body: {exc.detail}; send UTF-8 JSON {{\"texts\": [...]}}", "field": "body"})
        return _json(exc.status_code, {"error": str(exc.detail)}, getattr(exc, "headers", None))

    _routes(app, state, PredictRequest, PredictResponse, Error, Response)
    return _Limits(app, state)


def _routes(app, state: AppState, PredictRequest, PredictResponse, Error, Response) -> None:
    from fastapi import Request

    busy = {503: {"model": Error, "description": "the queue is full; retry after Retry-After seconds"},
            413: {"model": Error, "description": "the body is over --max-body-bytes"},
            422: {"model": Error, "description": "the request does not match the schema or the limits"}}

    @app.post(PREDICT, response_model=PredictResponse, responses=busy)
    async def predict(body: PredictRequest, request: Request):
        try:
            results, _, _, queued = await state.batcher.submit(body.texts)
        except QueueFull:
            return _json(503, {"error": f"the server is busy ({state.config.max_queue} requests waiting, --max-queue)"},
                         {"Retry-After": str(RETRY_AFTER_S)})
        state.metrics.queue_latency.observe(queued)
        return {"predictions": results, "task": state.bundle.manifest.get("task"), "model_sha256": state.model_sha256}

    if state.bundle.decoder.generates:
        _generate_route(app, state, Error)

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        manifest = state.bundle.manifest
        return {"bundle": state.bundle.path.name, "model_sha256": state.model_sha256,
                **{key: manifest.get(key) for key in ("task", "target", "model_format", "num_labels", "max_sequence_length",
                                                      "mcompress_version", "built_with_mcompress", "passed", "gates",
                                                      "metrics", "runtime", "source", "quantization", "files")},
                "labels": state.bundle.labels,
                "serving": {"replica": state.replica,
                            "max_batch_size": state.config.max_batch_size, "max_wait_ms": state.config.max_wait_ms,
                            "max_queue": state.config.max_queue, "max_texts": state.config.max_texts,
                            "max_chars": state.config.max_chars, "max_body_bytes": state.config.max_body_bytes}}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": Error, "description": "still warming up"}})
    async def readyz():
        if not state.ready:
            return _json(503, {"error": "warming up"})
        return {"status": "ready"}

    @app.get("/v1/monitor")
    async def monitor() -> dict[str, Any]:
        report = state.monitor.report()
        state.metrics.set_drift(report)
        return report

    @app.get("/metrics", response_class=Response)
    async def metrics():
        state.metrics.queue_depth.set(state.batcher.depth)
        state.metrics.set_drift(state.monitor.report())
        data, content_type = state.metrics.exposition()
        return Response(data, media_type=content_type)


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _generate_route(app, state: AppState, Error) -> None:
    """POST /v1/generate: a causal LM's continuation, whole or streamed as server-sent events.
    Generations run one at a time on the inference thread (the batcher's), at most max_queue
    waiting (then 503); a prompt over the context is 422 naming ``prompt``, before any event."""
    import asyncio

    from fastapi.responses import StreamingResponse

    from mcompress.core.errors import InputError
    from mcompress.engines.generation import Sampling

    settings = state.bundle.manifest["generation"]
    GenerateRequest = _generate_model(state.config, settings["context_length"])
    waiting = {"n": 0}
    refused = {503: {"model": Error, "description": "the queue is full; retry after Retry-After seconds"},
               422: {"model": Error, "description": "the request does not match the schema, or the prompt is over the context"}}

    def finished(result: dict) -> dict:
        return {**result, "task": state.bundle.manifest.get("task"), "model_sha256": state.model_sha256}

    @app.post(GENERATE, responses={200: {"content": {"text/event-stream": {}}}, **refused})
    async def generate(body: GenerateRequest):
        if waiting["n"] >= state.config.max_queue:
            return _json(503, {"error": f"the server is busy ({state.config.max_queue} generations waiting, --max-queue)"},
                         {"Retry-After": str(RETRY_AFTER_S)})
        sampling = Sampling(max_new_tokens=body.max_new_tokens or settings["max_new_tokens"], temperature=body.temperature,
                            top_k=body.top_k, top_p=body.top_p, seed=body.seed)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def put(event: str, data) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (event, data))

        def run() -> None:  # on the inference thread; every outcome is an event, nothing is raised
            started = time.perf_counter()
            try:
                result = state.bundle.generate(body.prompt, sampling,
                                               (lambda token, text: put("token", {"token": token, "text": text}))
                                               if body.stream else None)
            except InputError as err:
                put("refused", {"error": f"prompt: {err.one_line()}", "field": "prompt"})
                return
            except Exception as err:  # the model failed: the stream ends with an error event, the server stays up
                put("error", {"error": f"{type(err).__name__}: {err}"})
                return
            state.metrics.observe_batch(1, 1, time.perf_counter() - started)
            put("done", finished(result))

        waiting["n"] += 1
        job = asyncio.ensure_future(state.batcher.call(run))
        job.add_done_callback(lambda _: waiting.__setitem__("n", waiting["n"] - 1))
        first = await events.get()
        if first[0] in ("refused", "error"):
            return _json(422 if first[0] == "refused" else 500, first[1])
        if not body.stream:
            return first[1]

        async def stream():
            event = first
            while True:
                yield _sse(*event)
                if event[0] in ("done", "error"):
                    return
                event = await events.get()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

