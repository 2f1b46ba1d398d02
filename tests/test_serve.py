"""`mcompress serve`: a real uvicorn server on 127.0.0.1 (started as a user starts it) over the tiny
classifier's and the tiny tagger's bundles. Answers equal bundle.predict, the metrics count what
was sent, bad requests are refused before the model, overload answers 503 and recovers, SIGTERM
loses no request in flight, a tampered bundle fails before the port is bound, drift is flagged on
a one-class stream and not on the eval split, and the API holds to its own OpenAPI schema."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from conftest import synthetic_rows
from serving import metric, port_is_bound, running, start
from mcompress.core.errors import ExitCode

pytestmark = pytest.mark.slow  # each module fixture builds a model; each test starts a server (seconds)

httpx = pytest.importorskip("httpx")


@pytest.fixture(scope="module")
def classifier_build(tiny_checkpoint, fast_recipe, tmp_path_factory) -> Path:
    from mcompress.pipeline.job import RunRequest, run

    out = tmp_path_factory.mktemp("serve-cls") / "build"
    # Static INT8: its answers do not depend on what shares a batch (dynamic INT8's do: the gate's
    # as_deployed table shows by how much), so micro-batched answers can be compared tightly.
    run(RunRequest(tiny_checkpoint, out=out, recipe_path=fast_recipe,
                   overrides={"gates.max_drop": 100.0, "quantize.mode": "static"}))
    return out


@pytest.fixture(scope="module")
def classifier_bundle(classifier_build, tmp_path_factory) -> Path:
    from mcompress.bundle.package import package_build

    out = tmp_path_factory.mktemp("serve-cls-bundle") / "tiny.mcpkg"
    package_build(classifier_build, out)
    return out


@pytest.fixture(scope="module")
def tagger_bundle(tiny_tagger, fast_recipe, tmp_path_factory) -> Path:
    from mcompress.bundle.package import package_build
    from mcompress.pipeline.job import RunRequest, run

    root = tmp_path_factory.mktemp("serve-ner")
    run(RunRequest(tiny_tagger, out=root / "build", recipe_path=fast_recipe, overrides={"gates.max_drop": 100.0}))
    package_build(root / "build", root / "tagger.mcpkg")
    return root / "tagger.mcpkg"


def _split_texts(checkpoint: Path, split: str = "test") -> list[str]:
    rows = [json.loads(line) for line in (checkpoint / "splits" / f"{split}.jsonl").read_text().splitlines() if line.strip()]
    return [r["text"] if "text" in r else " ".join(r["tokens"]) for r in rows]


def _predict(url: str, texts: list[str]) -> dict:
    response = httpx.post(f"{url}/v1/predict", json={"texts": texts}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


async def _concurrently(url: str, bodies: list, timeout: float = 60) -> list:
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=len(bodies))) as client:
        return await asyncio.gather(*(client.post(f"{url}/v1/predict", json=body) for body in bodies))


def test_served_classifier_answers_equal_bundle_predict_and_metrics_count_them(classifier_bundle, tiny_checkpoint, tmp_path):
    from mcompress.runtime import load

    bundle = load(classifier_bundle, threads=1)
    texts = _split_texts(tiny_checkpoint)
    with running(classifier_bundle, tmp_path / "log") as server:
        # one request holding the split: the same length buckets as bundle.predict, so exactly equal
        answer = _predict(server.url, texts)
        assert answer["predictions"] == bundle.predict(texts)
        assert answer["task"] == "text-classification"
        # one text per request, all at once: grouped into micro-batches; each text alone equals its own direct call
        responses = asyncio.run(_concurrently(server.url, [{"texts": [t]} for t in texts]))
        assert all(r.status_code == 200 for r in responses)
        alone = [r.json()["predictions"][0] for r in responses]
        direct = bundle.predict(texts)
        assert [a["label"] for a in alone] == [d["label"] for d in direct]
        assert all(abs(a["score"] - d["score"]) < 1e-5 for a, d in zip(alone, direct))
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["labels"] == bundle.labels and model["model_sha256"] == answer["model_sha256"]
        scraped = httpx.get(f"{server.url}/metrics").text
    sent = 2 * len(texts)
    assert metric(scraped, "mcompress_requests_total", route="/v1/predict", status="200") == 1 + len(texts)
    assert metric(scraped, "mcompress_texts_total") == sent
    assert metric(scraped, "mcompress_predictions_total") == sent
    labels = [d["label"] for d in direct] * 2
    for label in set(labels):
        assert metric(scraped, "mcompress_predictions_total", label=label) == labels.count(label)
    assert metric(scraped, "mcompress_prediction_confidence_count") == sent
    assert metric(scraped, "mcompress_input_tokens_count") == sent
    assert metric(scraped, "mcompress_batch_texts_sum") == sent
    # fewer batches than requests: concurrent requests were grouped
    assert metric(scraped, "mcompress_batch_texts_count") < 1 + len(texts)


def test_served_tagger_answers_entities_equal_to_bundle_predict(tagger_bundle, tiny_tagger, tmp_path):
    from mcompress.runtime import load

    bundle = load(tagger_bundle, threads=1)
    texts = _split_texts(tiny_tagger)
    expected = bundle.predict(texts)  # in batches of the gated batch size, which the server forms by default
    with running(tagger_bundle, tmp_path / "log", "--max-texts", "64") as server:
        got = _predict(server.url, texts)["predictions"]
        assert httpx.get(f"{server.url}/v1/model").json()["serving"]["max_batch_size"] == bundle.largest_gated_batch
    assert got == expected
    assert sum(len(p["entities"]) for p in got) >= 10
    assert all(texts[i][e["start"]:e["end"]] == e["text"] for i, p in enumerate(got) for e in p["entities"])


def test_bad_requests_are_refused_naming_the_field_before_the_model(classifier_bundle, tmp_path):
    with running(classifier_bundle, tmp_path / "log", "--max-texts", "4", "--max-chars", "50",
                 "--max-body-bytes", "2000") as server:
        post = lambda **kw: httpx.post(f"{server.url}/v1/predict", timeout=30, **kw)
        refused = [
            (post(json={}), "texts"),
            (post(json={"texts": "one string"}), "texts"),
            (post(json={"texts": []}), "texts"),
            (post(json={"texts": ["a"] * 5}), "texts"),
            (post(json={"texts": ["ok", 3]}), "texts.1"),
            (post(json={"texts": ["ok", "x" * 51]}), "texts.1"),
            (post(json={"texts": ["ok"], "extra": 1}), "extra"),
            (post(content=b'{"texts": [', headers={"content-type": "application/json"}), "body"),
        ]
        for response, field in refused:
            assert response.status_code == 422, response.text
            assert response.json()["field"] == field and response.json()["error"].startswith(field)
        too_big = post(content=b'{"texts": ["' + b"x" * 3000 + b'"]}', headers={"content-type": "application/json"})
        assert too_big.status_code == 413 and too_big.json()["field"] == "body"
        assert httpx.get(f"{server.url}/v1/nothing").status_code == 404
        assert httpx.post(f"{server.url}/v1/generate", json={"prompt": "x"}).status_code == 404  # a classifier does not generate
        assert httpx.get(f"{server.url}/v1/predict").status_code == 405
        assert post(json={"texts": ["fine"]}).status_code == 200
        scraped = httpx.get(f"{server.url}/metrics").text
    assert metric(scraped, "mcompress_texts_total") == 1  # only the good request reached the model
    assert metric(scraped, "mcompress_requests_total", route="/v1/predict", status="422") == len(refused)
    assert metric(scraped, "mcompress_requests_total", route="/v1/predict", status="413") == 1


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory) -> Path:
    """The tiny LLaMA's export with the KV cache, packaged (tests/lm_models.py)."""
    from lm_models import build_report, exported
    from mcompress.bundle.package import package_build

    checkpoint, export = exported("llama", tmp_path_factory)
    root = tmp_path_factory.mktemp("lm-bundle")
    build = Path(shutil.copytree(export, root / "build"))
    build_report(build, checkpoint, "llama")
    package_build(build, root / "lm.mcpkg")
    return root / "lm.mcpkg"


def _events(response) -> list[tuple[str, dict]]:
    """The server-sent events of a streamed response, as (event, data)."""
    events, event = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            events.append((event, json.loads(line[len("data: "):])))
    return events


def test_a_causal_lm_generates_over_http_whole_and_streamed_as_events(lm_bundle, tmp_path):
    """POST /v1/generate equals bundle.generate (greedy, and sampled with a seed); with stream the
    tokens come one event each, their text joins to the completion, and `done` closes it; a prompt
    over the context and sampling settings without a temperature are 422 naming the field."""
    from mcompress.engines.generation import Sampling
    from mcompress.runtime import load

    bundle = load(lm_bundle, threads=1)
    prompt = "The council met on Tuesday"
    greedy = bundle.generate(prompt, Sampling(max_new_tokens=12))
    sampled = bundle.generate(prompt, Sampling(max_new_tokens=12, temperature=0.9, top_k=20, seed=3))
    with running(lm_bundle, tmp_path / "log") as server:
        url = f"{server.url}/v1/generate"
        whole = httpx.post(url, json={"prompt": prompt, "max_new_tokens": 12}, timeout=60).json()
        assert (whole["tokens"], whole["text"], whole["task"]) == (greedy["tokens"], greedy["text"], "causal-lm")
        with httpx.stream("POST", url, json={"prompt": prompt, "max_new_tokens": 12, "stream": True}, timeout=60) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = _events(r)
        tokens = [data for event, data in events if event == "token"]
        assert [e for e, _ in events] == ["token"] * len(tokens) + ["done"]
        assert [t["token"] for t in tokens if t["token"] is not None] == greedy["tokens"]
        assert "".join(t["text"] for t in tokens) == greedy["text"] == events[-1][1]["text"]
        seeded = {"prompt": prompt, "max_new_tokens": 12, "temperature": 0.9, "top_k": 20, "seed": 3}
        assert [httpx.post(url, json=seeded, timeout=60).json()["tokens"] for _ in range(2)] == [sampled["tokens"]] * 2
        too_long = httpx.post(url, json={"prompt": " ".join([prompt] * 40), "stream": True}, timeout=60)
        assert too_long.status_code == 422 and too_long.json()["field"] == "prompt"
        assert "context" in too_long.json()["error"]
        greedy_top_p = httpx.post(url, json={"prompt": prompt, "top_p": 0.5}, timeout=60)
        assert greedy_top_p.status_code == 422 and "temperature" in greedy_top_p.text
        assert httpx.post(url, json={"prompt": prompt, "max_new_tokens": 0}, timeout=60).json()["field"] == "max_new_tokens"
        scraped = httpx.get(f"{server.url}/metrics").text
    assert metric(scraped, "mcompress_requests_total", route="/v1/generate", status="200") == 4
    assert metric(scraped, "mcompress_requests_total", route="/v1/generate", status="422") == 3


def test_overload_answers_503_with_retry_after_then_recovers(classifier_bundle, tmp_path):
    long_texts = [("a long and winding review of the film " * 12)[:400]] * 16
    with running(classifier_bundle, tmp_path / "log", "--max-queue", "1", "--max-batch-size", "1",
                 "--max-texts", "16") as server:
        responses = asyncio.run(_concurrently(server.url, [{"texts": long_texts}] * 24))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1
        assert all(r.headers["retry-after"] == "1" for r in responses if r.status_code == 503)
        assert _predict(server.url, ["recovered"])["predictions"][0]["label"]
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_sigterm_drains_requests_in_flight_and_exits_0(classifier_bundle, tmp_path):
    server = start(classifier_bundle, tmp_path / "log", "--max-batch-size", "2", "--max-texts", "16")
    texts = [("an unhurried, sincere and slightly too long review " * 8)[:380]] * 16

    async def scenario():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=40)) as client:
            pending = [asyncio.ensure_future(client.post(f"{server.url}/v1/predict", json={"texts": texts}))
                       for _ in range(12)]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:  # until most requests are in the server
                scraped = (await client.get(f"{server.url}/metrics")).text
                if metric(scraped, "mcompress_in_flight_requests") >= 7:  # 6 predicts + this scrape
                    break
                await asyncio.sleep(0.01)
            in_flight = metric(scraped, "mcompress_in_flight_requests") - 1
            server.process.send_signal(15)
            return in_flight, await asyncio.gather(*pending, return_exceptions=True)

    try:
        in_flight, responses = asyncio.run(scenario())
        code = server.process.wait(60)
    finally:
        server.stop()
    assert in_flight >= 6
    assert all(not isinstance(r, Exception) and r.status_code == 200 for r in responses), responses
    assert code == ExitCode.OK, server.output()
    assert not port_is_bound(server.port)


def test_a_tampered_or_missing_bundle_fails_at_start_with_exit_2_before_binding(classifier_bundle, tmp_path):
    import subprocess

    from serving import MCOMPRESS, free_port

    tampered = tmp_path / "tampered.mcpkg"
    with zipfile.ZipFile(classifier_bundle) as zin, zipfile.ZipFile(tampered, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data.replace(b"[UNK]", b"[UNX]") if info.filename == "tokenizer.json" else data)
    for model, message in ((tampered, "fails its sha256 check"), (tmp_path / "absent.mcpkg", "does not exist")):
        port = free_port()
        proc = subprocess.run([MCOMPRESS, "serve", str(model), "--port", str(port)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], proc.stderr
        assert not port_is_bound(port)


def test_a_build_directory_is_served_as_its_bundle(classifier_build, classifier_bundle, tiny_checkpoint, tmp_path):
    texts = _split_texts(tiny_checkpoint)
    with running(classifier_bundle, tmp_path / "a") as from_bundle, running(classifier_build, tmp_path / "b") as from_dir:
        assert _predict(from_dir.url, texts) == _predict(from_bundle.url, texts)
        bundle_model, dir_model = (httpx.get(f"{s.url}/v1/model").json() for s in (from_bundle, from_dir))
    assert bundle_model["files"] == dir_model["files"]


def test_drift_is_flagged_on_a_one_class_stream_and_not_on_the_eval_split(classifier_bundle, tiny_checkpoint, tmp_path):
    texts = _split_texts(tiny_checkpoint)
    one_class = [r["text"] for r in synthetic_rows(96, seed=7) if r["label"] == "pos"][:len(texts)]
    with running(classifier_bundle, tmp_path / "log", "--drift-window", str(len(texts))) as server:
        assert httpx.get(f"{server.url}/v1/monitor").json()["verdict"] == "insufficient_data"
        _predict(server.url, texts)
        calm = httpx.get(f"{server.url}/v1/monitor").json()
        _predict(server.url, one_class)
        shifted = httpx.get(f"{server.url}/v1/monitor").json()
        scraped = httpx.get(f"{server.url}/metrics").text
    assert calm["verdict"] == "ok", calm
    assert all(s["psi"] < 0.2 for s in calm["signals"].values()), calm
    assert shifted["verdict"] == "drift" and shifted["signals"]["label"]["psi"] > calm["threshold"] == 0.2, shifted
    assert metric(scraped, "mcompress_drift_alarm") == 1
    assert metric(scraped, "mcompress_drift_psi", signal="label") == pytest.approx(shifted["signals"]["label"]["psi"], abs=1e-6)


def test_the_monitoring_reference_is_the_builds_predictions_on_its_eval_split(classifier_bundle, classifier_build,
                                                                             tiny_checkpoint, tmp_path):
    from mcompress.bundle.package import package_build
    from mcompress.runtime import load

    bundle = load(classifier_bundle, threads=1)
    reference = bundle.manifest["monitoring"]
    predictions = bundle.predict(_split_texts(tiny_checkpoint))
    labels = [p["label"] for p in predictions]
    assert reference["signals"]["label"]["counts"] == {label: labels.count(label) for label in set(labels)}
    assert sum(reference["signals"]["confidence"]["counts"]) == reference["texts"] == len(predictions)
    assert reference["source"]["matches_gated_eval"] and reference["threshold"] == 0.2
    # eval data that is gone: the bundle says why it has no reference, and the server says so
    moved = tmp_path / "build"
    shutil.copytree(classifier_build, moved)
    report = json.loads((moved / "report.json").read_text())
    report["data"]["eval"]["source"] = str(tmp_path / "gone.jsonl")
    (moved / "report.json").write_text(json.dumps(report))
    manifest = package_build(moved, tmp_path / "no-ref.mcpkg")
    assert "not found" in manifest["monitoring"]["unavailable"]


@pytest.fixture(scope="module")
def fuzzed_server(classifier_bundle, tmp_path_factory):
    with running(classifier_bundle, tmp_path_factory.mktemp("fuzz") / "log", "--max-texts", "8",
                 "--max-chars", "200") as server:
        yield server


def test_the_api_holds_to_its_openapi_schema(fuzzed_server):
    """schemathesis, from the server's own /openapi.json, valid and invalid requests to every
    operation (bounded, derandomized): no 5xx, status codes, content types and bodies as the schema
    says, invalid requests refused."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{fuzzed_server.url}/openapi.json")
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        @settings(max_examples=40, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=schema.as_strategy(mode))
        def check(case):
            case.call_and_validate(timeout=30)

        check()
    assert fuzzed_server.process.poll() is None, fuzzed_server.output()


def test_triton_repository_from_a_bundle(classifier_bundle, tmp_path):
    """`mcompress triton` writes config.pbtxt (inputs/outputs from the manifest, dynamic batching)
    and the bundle's own model bytes; the written model runs at max_batch_size rows."""
    import numpy as np
    from typer.testing import CliRunner

    from conftest import ort_session
    from mcompress.cli import app
    from mcompress.runtime import read_bundle

    result = CliRunner().invoke(app, ["triton", str(classifier_bundle), str(tmp_path / "repo"), "--name", "tiny",
                                      "--max-batch-size", "8"])
    assert result.exit_code == 0, result.output
    manifest, members = read_bundle(classifier_bundle)
    model_dir = tmp_path / "repo" / "tiny"
    assert (model_dir / "1" / "model.onnx").read_bytes() == members["model.onnx"]
    config = (model_dir / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "max_batch_size: 8" in config
    assert "preferred_batch_size: [ 1, 2, 4, 8 ]" in config and "max_queue_delay_microseconds: 5000" in config
    for spec in manifest["inputs"]:
        assert f'name: "{spec["name"]}" data_type: TYPE_INT64 dims: [ -1 ]' in config
    assert f'name: "logits" data_type: TYPE_FP32 dims: [ {manifest["num_labels"]} ]' in config
    session = ort_session(model_dir / "1" / "model.onnx")
    feed = {i.name: np.ones((8, 16), dtype=np.int64) for i in session.get_inputs()}
    assert session.run(["logits"], feed)[0].shape == (8, manifest["num_labels"])
    again = CliRunner().invoke(app, ["triton", str(classifier_bundle), str(tmp_path / "repo"), "--name", "tiny"])
    assert again.exit_code == ExitCode.BAD_INPUT and "already exists" in again.output


class _GatedBundle:
    """The real bundle; run() records each batch's texts and waits for the test's go first, so the
    test decides when the model is busy."""

    def __init__(self, bundle):
        import threading

        self.bundle, self.batches, self.go = bundle, [], threading.Event()
        self.go.set()

    def run(self, texts, batch_size):
        self.batches.append(list(texts))
        assert self.go.wait(30)
        return self.bundle.run(texts, batch_size)


def test_the_batcher_dispatches_at_once_when_idle_and_batches_what_queued_while_busy(classifier_bundle):
    """Order, not timing: a lone request reaches the model by itself although max_wait_ms is a minute;
    requests that arrive while the model is busy make up the next batch, in arrival order, up to
    max_batch_size texts; each gets its own answer."""
    from mcompress.runtime import load
    from mcompress.serve.batcher import MicroBatcher

    real = load(classifier_bundle, threads=1)
    gated = _GatedBundle(real)

    async def scenario():
        batcher = MicroBatcher(gated, max_batch_size=3, max_wait_ms=60_000, max_queue=16)
        batcher.start()
        alone = await asyncio.wait_for(batcher.submit(["alone"]), 30)
        assert gated.batches == [["alone"]]
        gated.go.clear()
        busy = asyncio.ensure_future(batcher.submit(["a"]))
        while len(gated.batches) < 2:  # until the model thread holds "a"
            await asyncio.sleep(0.001)
        later = [asyncio.ensure_future(batcher.submit([text])) for text in "bcde"]
        await asyncio.sleep(0)  # every submit has queued its job
        assert batcher.depth == 4
        gated.go.set()
        answers = await asyncio.wait_for(asyncio.gather(busy, *later), 30)
        await batcher.stop()
        return alone, answers

    alone, answers = asyncio.run(scenario())
    assert gated.batches == [["alone"], ["a"], ["b", "c", "d"], ["e"]]
    assert alone[0] == real.predict(["alone"])
    for text, (results, lengths, truncated, queued) in zip("abcde", answers):
        assert [r["label"] for r in results] == [p["label"] for p in real.predict([text])]
        assert len(lengths) == len(truncated) == 1 and queued >= 0


def test_ray_serve_runs_the_same_app_on_two_replicas_and_shuts_down_cleanly(classifier_bundle, tiny_checkpoint, tmp_path):
    """`mcompress serve --ray --replicas 2` on a real local Ray cluster (started by the command):
    answers equal bundle.predict, both replicas answer, the limits hold, SIGTERM exits 0 and leaves
    no process of the cluster behind."""
    pytest.importorskip("ray.serve")
    import psutil

    from mcompress.runtime import load

    bundle = load(classifier_bundle, threads=1)
    texts = _split_texts(tiny_checkpoint)
    server = start(classifier_bundle, tmp_path / "log", "--ray", "--replicas", "2", "--max-texts", "64", timeout=400)
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
        ready = set()
        deadline = time.monotonic() + 120
        while len(ready) < 2 and time.monotonic() < deadline:  # the proxy picks a replica per request
            response = httpx.get(f"{server.url}/readyz", timeout=30)
            if response.status_code == 200:
                ready.add(response.headers["x-mcompress-replica"])
        assert len(ready) == 2, ready
        answer = _predict(server.url, texts)
        assert answer["predictions"] == bundle.predict(texts)
        responses = asyncio.run(_concurrently(server.url, [{"texts": [t]} for t in texts]))
        assert all(r.status_code == 200 for r in responses)
        assert {r.headers["x-mcompress-replica"] for r in responses} == ready
        direct = bundle.predict(texts)
        alone = [r.json()["predictions"][0] for r in responses]
        assert [a["label"] for a in alone] == [d["label"] for d in direct]
        assert all(abs(a["score"] - d["score"]) < 1e-5 for a, d in zip(alone, direct))
        refused = httpx.post(f"{server.url}/v1/predict", json={"texts": ["ok", 3]}, timeout=30)
        assert refused.status_code == 422 and refused.json()["field"] == "texts.1"
        scraped = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert metric(scraped, "mcompress_texts_total") >= 1
    finally:
        code = server.stop(timeout=180)
    assert code == ExitCode.OK, server.output()
    assert not port_is_bound(server.port)
    deadline = time.monotonic() + 60
    while any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_ray_flags_without_ray_or_with_no_replicas_exit_2_with_one_line(classifier_bundle):
    import subprocess

    from serving import MCOMPRESS

    for flags, message in ((["--replicas", "2"], "Add --ray"), (["--ray", "--replicas", "0"], "--replicas must be >= 1")):
        proc = subprocess.run([MCOMPRESS, "serve", str(classifier_bundle), *flags], capture_output=True, text=True,
                              timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == ExitCode.BAD_INPUT and len(lines) == 1 and message in lines[0], proc.stderr
