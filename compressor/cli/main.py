"""The `mcompress` command line. Heavy libraries are imported inside commands, not at start-up."""

from __future__ import annotations

import logging
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from mcompress.core.errors import ExitCode, McompressError

if TYPE_CHECKING:
    from mcompress.report.schema import Report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress fine-tuned Hugging Face checkpoints and build them for a deployment target.")

_debug = False

TRUSTED_KEY_HELP = ("Refuse the bundle unless it is signed by this PEM EC public key; repeat for several "
                    "(a fleet rotating keys trusts old and new). Needs mcompress[sign].")


def _trusted(keys: Optional[list[Path]]) -> Optional[list[Path]]:
    """--trusted-key values, or None (no signature check) when none were given."""
    return list(keys) if keys else None


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _line(markup: str, text: str) -> None:
    """One line on stderr: ``text`` is printed literally (escaped, so a path such as ``x[/]y``
    is neither markup nor a crash) and never wrapped, even when stderr is not a terminal."""
    from rich.markup import escape

    _console().print(f"{markup} {escape(text)}", highlight=False, soft_wrap=True)


def _fail(err: McompressError) -> None:
    _line("[bold red]error:[/]", err.one_line())
    raise typer.Exit(int(err.exit_code))


def _guard(fn, *args, **kwargs):
    """Run a command body: user-facing errors become one line and their exit code.

    SIGINT and SIGTERM raise KeyboardInterrupt (deferred while a build is renamed into place), so
    the staging dir, the temp work dir and any half-written cache entry are removed on the way out."""
    from mcompress.pipeline.outputs import on_interrupt_signal

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, on_interrupt_signal)
    try:
        return fn(*args, **kwargs)
    except McompressError as err:
        if _debug:
            raise
        _fail(err)
    except KeyboardInterrupt:
        _console().print("[bold red]interrupted:[/] no partial build was left in the output directory.")
        raise typer.Exit(int(ExitCode.INTERRUPTED))
    except typer.Exit:
        raise
    except Exception as err:  # a bug: one line by default, the traceback with --debug
        if _debug:
            raise
        _line("[bold red]internal error:[/]", f"{type(err).__name__}: {err} (rerun with --debug for the traceback)")
        raise typer.Exit(int(ExitCode.INTERNAL))
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show progress logs.")) -> None:
    global _debug
    _debug = debug
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # mcompress never fetches from a hub
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = RichHandler(console=_console(), show_path=False)
    # ONNX Runtime's quantizer warns on the root logger about shape pre-processing on every call;
    # mcompress quantizes graphs whose shapes the exporter already recorded.
    handler.addFilter(lambda record: not (record.getMessage().startswith("Please consider") and "pre-processing" in record.getMessage()))
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler])


@app.command()
def example(name: str = typer.Argument(..., help="sentiment | topics | ner | lm"),
            out_dir: Path = typer.Argument(..., help="Where to write the fine-tuned checkpoint and its splits.")) -> None:
    """Fine-tune all-MiniLM-L6-v2 into a built-in example checkpoint (offline, cached); `lm`: SmolLM2
    converted from its GGUF file, with news-article splits (docs/causal-lm.md)."""
    def body():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from mcompress.examples.finetune import EXAMPLES, build_example, is_built

        if name == "lm":  # a decoder converted from GGUF, not a MiniLM fine-tune
            _lm_example(out_dir)
            return

        if name in EXAMPLES and is_built(out_dir, EXAMPLES[name]):
            _console().print(f"example '{name}' is already built in {out_dir} (cached)")
            return
        with Progress(TextColumn("fine-tuning {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("loss {task.fields[loss]:.3f}"), TimeRemainingColumn(), console=_console()) as bar:
            task = bar.add_task(name, total=None, loss=float("nan"))
            meta = build_example(name, out_dir, on_step=lambda s, n, loss: bar.update(task, completed=s, total=n, loss=loss))
        score = (f"test entity F1 {meta['test_entity_f1']:.4f}" if "test_entity_f1" in meta
                 else f"test accuracy {meta['test_accuracy']:.4f}")
        _console().print(f"built '{name}' in {out_dir}: {score} "
                         f"({meta['trained_on']} training examples, {meta['train_seconds']:.0f} s)")

    _guard(body)


def _lm_example(out_dir: Path) -> None:
    from mcompress.examples.lm import build_lm_example, is_lm_built

    if is_lm_built(out_dir):
        _console().print(f"example 'lm' is already built in {out_dir} (cached)")
        return
    _console().print("converting SmolLM2-135M-Instruct from GGUF and scoring the test split (a few minutes)")
    meta = build_lm_example(out_dir)
    _console().print(f"built 'lm' in {out_dir}: test perplexity {meta['test_perplexity']:.3f} "
                     f"({meta['test_before']['scored_tokens']} tokens, windows {meta['settings']['eval_length']}/"
                     f"stride {meta['settings']['eval_stride']}; {'not fine-tuned' if not meta['fine_tune'] else 'fine-tuned'})")


@app.command()
def run(
    model_dir: Path = typer.Argument(..., help="Fine-tuned Hugging Face checkpoint (config.json, model.safetensors, tokenizer)."),
    target: str = typer.Option("cpu", "--target", "-t", help="Deployment target: cpu (default: the fastest build for this CPU: onnx-cpu and openvino-cpu, if installed, at every precision the CPU offers, raced, the fastest that passes kept) | cpu-auto (the same, requiring both targets) | onnx-cpu | openvino-cpu | tensorrt."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe YAML (default: recipes/ptq.yaml)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Labelled eval data: CSV, JSONL or a split dir (default: MODEL_DIR/splits test split)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration text: CSV, JSONL or a split dir (default: the train split)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Build directory (default: build/<model>-<target>)."),
    text_column: Optional[str] = typer.Option(None, help="Text column of the data files (default: text; tokens for a tagger's JSONL)."),
    label_column: Optional[str] = typer.Option(None, help="Label column of the data files, names from label2id or ids (default: label; tags for a tagger's JSONL)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Override gates.max_drop (absolute accuracy points)."),
    max_latency_ms: Optional[float] = typer.Option(None, "--max-latency-ms", help="Override gates.max_latency_ms (p50, batch 1, sequence 128)."),
    max_latency_p95_ms: Optional[float] = typer.Option(None, "--max-latency-p95-ms", help="Override gates.max_latency_p95_ms (p95, batch 1, sequence 128)."),
    max_size_ratio: Optional[float] = typer.Option(None, "--max-size-ratio", help="Override gates.max_size_ratio (model file / FP32 original)."),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="Override gates.min_speedup (vs PyTorch FP32)."),
    quantize_mode: Optional[str] = typer.Option(None, "--quantize", help="Override quantize.mode: auto | dynamic | static | none."),
    eval_examples: Optional[int] = typer.Option(None, "--eval-examples", help="Evaluate on the first N eval examples only."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Accept pytorch_model.bin (loaded with weights_only=True)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Pass cache (default: $MCOMPRESS_CACHE_DIR or ~/.cache/mcompress)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Run every pass; neither read nor write the pass cache."),
    cache_max_gb: float = typer.Option(10.0, "--cache-max-gb", min=0, help="Evict least recently used cache entries above this size."),
    time_budget: Optional[str] = typer.Option(None, "--time-budget", help="Wall time the default CPU build plans in (no --recipe; default 15m): the first INT8 build, then pruned + distilled builds when they fit, then the other precisions while it lasts, e.g. 10m, 1h."),
) -> None:
    """Compress MODEL_DIR for a target, gate the built artifact on held-out data, write the build."""
    def body():
        from mcompress.core.limits import parse_duration
        from mcompress.pipeline.job import RunRequest, run as run_job

        request = RunRequest(model_dir, target, out, recipe, eval_data, calib_data, text_column, label_column,
                             force, allow_pickle,
                             {"gates.max_drop": max_drop, "gates.max_latency_ms": max_latency_ms,
                              "gates.max_latency_p95_ms": max_latency_p95_ms, "gates.max_size_ratio": max_size_ratio,
                              "gates.min_speedup": min_speedup, "quantize.mode": quantize_mode,
                              "eval.max_examples": eval_examples},
                             cache_dir=cache_dir, use_cache=not no_cache, cache_max_gb=cache_max_gb,
                             time_budget_s=parse_duration(time_budget) if time_budget is not None else None)
        with _progress_bars() as task:
            report = run_job(request, task)
        if report is not None:  # None: a rank > 0 of a torchrun/accelerate launch (rank 0 reports)
            _print_summary(report)

    _guard(body)


@contextmanager
def _progress_bars():
    """A pipeline.prepare.ProgressFactory drawing transient rich bars on stderr."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_console(), transient=True) as bar:
        def task(description: str, total: int):
            task_id = bar.add_task(description, total=total)
            return lambda n: bar.advance(task_id, n)

        yield task


def _print_summary(report: Report) -> None:
    from rich.markup import escape

    console = _console()
    out = escape(report.out)
    gate = report.metric_gate()
    title, key = report.metric_columns()[0]  # the gated metric as the task shows it (perplexity: 1 / score)
    ref_b1, build_b1 = report.latency.pairs()[0]
    console.print(f"[bold green]PASS[/] {report.target} build in {out}", highlight=False)
    console.print(f"  {title} {getattr(report.reference, key):.4f} -> {getattr(report.build, key):.4f} "
                  f"({gate.name.rsplit('_', 1)[-1]} {gate.value:.2f} {gate.unit}, 95% CI [{gate.ci95[0]:.2f}, {gate.ci95[1]:.2f}], budget {gate.threshold})",
                  highlight=False)
    console.print(f"  latency b{build_b1.batch_size}/s{build_b1.sequence_length} p50 {ref_b1.p50_ms:.2f} -> {build_b1.p50_ms:.2f} ms "
                  f"({ref_b1.p50_ms / build_b1.p50_ms:.2f}x); size {report.artifact.size_ratio:.3f}x "
                  f"({report.artifact.quantization}); report {out}/report.md", highlight=False)
    if report.cpu_auto:
        console.print(f"  CPU choice kept {report.cpu_auto.chosen}: {report.cpu_auto.reason}", highlight=False)
    if report.artifact.float_layers:
        console.print(f"  left in float by the fallback: {', '.join(report.artifact.float_layers)}", highlight=False)
    reused = [p.name for p in report.passes if p.cached]
    if reused:
        console.print(f"  reused cached {', '.join(reused)} (inputs unchanged; --no-cache reruns them)", highlight=False)


@app.command()
def tune(
    model_dir: Path = typer.Argument(..., help="Fine-tuned Hugging Face checkpoint with splits/ (train, validation, test)."),
    target: str = typer.Option("onnx-cpu", "--target", "-t", help="Deployment target of every trial: onnx-cpu | openvino-cpu | tensorrt | cpu-auto."),
    max_drop: Optional[float] = typer.Option(1.0, "--max-drop", help="Accuracy budget: gates.max_drop of every trial (points)."),
    time_budget: str = typer.Option("60m", "--time-budget", help="Wall time for the search and the final race, e.g. 20m, 1.5h, 900s."),
    trials: int = typer.Option(50, "--trials", min=1, help="Most trials to start (the time budget usually ends the search first)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (e.g. ray://head:10001 or head:6379); default: a local Ray on this machine."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Tune directory: build/, recipe.yaml, tune.json, tune.html, trials/, experiment/ (default: build/<model>-tune)."),
    space: Optional[Path] = typer.Option(None, "--space", help="Search space YAML (default: derived from the model; docs/distributed.md)."),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="Labelled eval data (default: MODEL_DIR/splits test split)."),
    calib_data: Optional[Path] = typer.Option(None, "--calib-data", help="Calibration/training text (default: the train split)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Pass cache every trial shares (default: $MCOMPRESS_CACHE_DIR or ~/.cache/mcompress; on a cluster: a shared filesystem)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", min=1, help="CPUs of the local Ray cluster (default: all); ignored with --ray-address."),
    cpus_per_trial: Optional[float] = typer.Option(None, "--cpus-per-trial", min=0.1, help="CPUs each trial holds (default: min(4, the largest node's CPUs))."),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", min=0, help="GPUs each trial holds (default: 1 when the cluster has GPUs, else 0)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the TPE sampler."),
    force: bool = typer.Option(False, "--force", help="Start over in an --out that holds a tune (finished or not)."),
) -> None:
    """Search the recipe space on Ray Tune for the fastest build within --max-drop; rerun the same command to resume a killed search.

    Needs the distributed extra: pip install 'mcompress\\[distributed]' (exit 4 without it)."""
    def body():
        from mcompress.core.limits import parse_duration
        from mcompress.tune.search import TuneRequest, require_extra, tune as run_tune

        require_extra()
        request = TuneRequest(model_dir, target, max_drop, parse_duration(time_budget), trials, ray_address, out, space,
                              cache_dir, num_cpus, cpus_per_trial, gpus_per_trial, eval_data, calib_data, force, seed)
        with _progress_bars() as task:
            summary = run_tune(request, task)
        _line("[bold green]PASS[/]", f"kept trial {summary['chosen']} in {summary['build']}: {summary['metric']} "
                                     f"{summary['chosen_score']:.4f} (reference {summary['reference_score']:.4f}), "
                                     f"batch-1 p50 {summary['chosen_b1_ms']:.2f} ms raced here; "
                                     f"{summary['trials_completed']} trials completed, {summary['trials_stopped']} stopped, "
                                     f"{summary['trials_failed']} failed; {request.out_dir}/tune.html")

    _guard(body)


@app.command()
def check(
    report: Path = typer.Argument(..., help="report.json of a build."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="report.json of the last accepted build."),
    max_accuracy_regression: float = typer.Option(0.5, help="Allowed accuracy loss vs the baseline, absolute points."),
    max_speedup_regression: float = typer.Option(0.2, help="Allowed relative loss of speedup over FP32 vs the baseline."),
    max_size_growth: float = typer.Option(0.05, help="Allowed relative growth of the model file vs the baseline."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Also write the summary here (e.g. $GITHUB_STEP_SUMMARY)."),
    allow_unmeasured: bool = typer.Option(False, "--allow-unmeasured", help="Accept a build whose gates ran on a stand-in (a TensorRT engine built without a GPU)."),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Also check that this .mcpkg is the build the report gated (model sha256, source, verdicts, provenance)."),
    trusted_keys: Optional[list[Path]] = typer.Option(None, "--trusted-key", help="With --bundle: " + TRUSTED_KEY_HELP),
) -> None:
    """Exit non-zero (3) when a report's gates failed, ran on a stand-in, regressed against a baseline, or --bundle is not the gated build.

    Exit 2 when the bundle itself is unreadable or its signature is refused."""
    def body():
        from mcompress.report.check import check_bundle, check_report, load_report, render_markdown

        gated = load_report(report)
        findings = check_report(gated, load_report(baseline) if baseline else None,
                                max_accuracy_regression, max_speedup_regression, max_size_growth, allow_unmeasured)
        if bundle is not None:
            from mcompress.bundle.runtime import read_bundle

            findings += check_bundle(gated, read_bundle(bundle, trusted_keys=_trusted(trusted_keys))[0])
        summary = render_markdown(findings, report)
        typer.echo(summary)
        if markdown:
            with open(markdown, "a", encoding="utf-8") as f:
                f.write(summary)
        if not all(f.passed for f in findings):
            failed = next(f for f in findings if not f.passed)
            _line("[bold red]check failed:[/]", f"{failed.check}: {failed.detail}")
            raise typer.Exit(int(ExitCode.GATE_FAILED))

    _guard(body)


@app.command()
def package(
    build_dir: Path = typer.Argument(..., help="Build directory written by `mcompress run`."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle to write: NAME.mcpkg."),
    force: bool = typer.Option(False, "--force", help="Replace the bundle if it exists."),
    allow_failed: bool = typer.Option(False, "--allow-failed", help="Package a build whose gates failed."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Sign the bundle with this PEM EC private key (P-256; needs mcompress[sign])."),
    reference_data: Optional[Path] = typer.Option(None, "--reference-data",
                                                  help="Eval data for the monitoring reference (default: the one report.json records)."),
) -> None:
    """Package a build into one reproducible NAME.mcpkg bundle (model, tokenizer, labels, manifest with provenance)."""
    def body():
        from mcompress.bundle.package import package_build
        from mcompress.core.hashing import file_digest

        manifest = package_build(build_dir, out, force=force, allow_failed=allow_failed, reference_data=reference_data,
                                 sign_key=sign_key)
        size = out.stat().st_size
        verdict = "PASS" if manifest["passed"] else "FAIL (packaged with --allow-failed)"
        signed = f", signed with {sign_key.name}" if sign_key else ", unsigned"
        _line("[bold green]packaged[/]", f"{build_dir} -> {out} ({size / 1e6:.1f} MB, {len(manifest['files']) + 1 + bool(sign_key)} files, "
                                          f"gates {verdict}{signed}, sha256 {file_digest(out)})")
        if "unavailable" in manifest["monitoring"]:
            _line("[yellow]note:[/]", f"no drift-monitoring reference in the bundle: {manifest['monitoring']['unavailable']}.")

    _guard(body)


@app.command()
def sign(
    bundle: Path = typer.Argument(..., help="Bundle written by `mcompress package` (NAME.mcpkg)."),
    key: Path = typer.Option(..., "--key", help="PEM EC private key (P-256/384/521). Make one: openssl ecparam -name prime256v1 -genkey -noout -out KEY.pem"),
    out: Path = typer.Option(..., "--out", "-o", help="Signed bundle to write (BUNDLE itself is never modified)."),
    force: bool = typer.Option(False, "--force", help="Replace -o if it exists."),
) -> None:
    """Sign a bundle (OpenSSF model-signing: every member's sha256, manifest and provenance included), replacing any signature it has."""
    def body():
        from mcompress.bundle.package import sign_bundle

        signer = sign_bundle(bundle, key, out, force)
        _line("[bold green]signed[/]", f"{bundle} -> {out} with key sha256 {signer[:16]}…")

    _guard(body)


@app.command()
def serve(
    model: Path = typer.Argument(..., help="Bundle (NAME.mcpkg) or build directory (packaged in memory) to serve."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    max_batch_size: Optional[int] = typer.Option(None, "--max-batch-size", help="Texts per model call (the length-bucket "
                                                 "size; default: the largest batch the bundle was gated at)."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="How long a batch waits for requests still arriving."),
    max_queue: int = typer.Option(256, "--max-queue", help="Requests that may wait for the model; more get 503."),
    max_texts: int = typer.Option(64, "--max-texts", help="Texts per request."),
    max_chars: int = typer.Option(10_000, "--max-chars", help="Characters per text."),
    max_body_bytes: int = typer.Option(1_048_576, "--max-body-bytes", help="Request body size."),
    drift_window: int = typer.Option(2000, "--drift-window", help="Recent texts the drift monitor compares."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Model intra-op threads."),
    allow_failed: bool = typer.Option(False, "--allow-failed", help="Serve a build directory whose gates failed."),
    trusted_keys: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
    ray: bool = typer.Option(False, "--ray", help="Run as a Ray Serve deployment (needs mcompress[serve-ray])."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (default: start a local one)."),
    replicas: int = typer.Option(1, "--replicas", help="Ray Serve replicas (with --ray)."),
) -> None:
    """Serve a bundle or build over HTTP: POST /v1/predict, /v1/model, /v1/monitor, /metrics, /healthz, /readyz."""
    def body():
        from functools import partial

        from mcompress.serve.config import ServeConfig

        if ray or ray_address or replicas != 1:
            from mcompress.serve.ray_serve import require_ray, serve_on_ray

            require_ray(ray, replicas)
            run_server = partial(serve_on_ray, replicas=replicas, address=ray_address)
        else:
            from mcompress.serve.server import serve as run_server

        keys = _trusted(trusted_keys)
        config = ServeConfig(model, host, port, max_batch_size, max_wait_ms, max_queue, max_texts, max_chars,
                             max_body_bytes, drift_window, threads, allow_failed,
                             trusted_keys=tuple(keys) if keys else None)
        return config, run_server

    config, run_server = _guard(body)
    # outside _guard's handlers: uvicorn handles SIGTERM/SIGINT itself (drain, then exit 0)
    _guard(run_server, config, lambda url: _line("[bold green]serving[/]", f"{model} at {url} (docs: {url}/docs)"))


@app.command()
def triton(
    model: Path = typer.Argument(..., help="Bundle (NAME.mcpkg) or build directory (an onnx-cpu build)."),
    out: Path = typer.Argument(..., help="Triton model repository to write the model into (created if missing)."),
    name: str = typer.Option("mcompress", "--name", help="Model name in the repository."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Triton max_batch_size and largest preferred batch."),
    max_queue_delay_us: int = typer.Option(5000, "--max-queue-delay-us", help="Dynamic batching queue delay."),
    allow_failed: bool = typer.Option(False, "--allow-failed", help="Use a build directory whose gates failed."),
) -> None:
    """Write a Triton Inference Server model repository entry (config.pbtxt with dynamic batching, 1/model.onnx)."""
    def body():
        from mcompress.bundle.runtime import read_bundle
        from mcompress.serve.server import bundle_source
        from mcompress.serve.triton import write_repository

        source, data = bundle_source(model, allow_failed)
        manifest, members = read_bundle(source, data=data)
        written = write_repository(manifest, members, source, out, name, max_batch_size, max_queue_delay_us)
        _line("[bold green]wrote[/]", f"{written}/config.pbtxt and {written}/1/model.onnx (Triton onnxruntime backend)")

    _guard(body)


@app.command()
def predict(
    bundle: Path = typer.Argument(..., help="Bundle written by `mcompress package` (NAME.mcpkg)."),
    texts: Optional[list[str]] = typer.Argument(None, help="Texts to classify or tag, or prompts to continue."),
    input_file: Optional[Path] = typer.Option(None, "--input", help="CSV/TSV/JSONL file of texts to classify (after any TEXTS)."),
    text_column: str = typer.Option("text", help="Text column of the --input file."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Texts per model call (default: the largest "
                                             "batch the bundle was gated at)."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Generation: most new tokens (default: the bundle's)."),
    temperature: float = typer.Option(0.0, "--temperature", help="Generation: 0 = greedy; > 0 samples."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Generation: sample from the k most probable tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Generation: sample from the smallest set reaching probability p."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Generation: sampling seed (same seed, same continuation)."),
    trusted_keys: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
) -> None:
    """Run a bundle on texts. Classifiers and taggers print one JSON line per text (text, label,
    score, scores / entities); a causal LM prints the continuation of each prompt (its token count,
    why it stopped and its speed on stderr)."""
    def body():
        from mcompress.calibration.datasets import read_texts
        from mcompress.bundle.runtime import load
        from mcompress.core.errors import InputError

        all_texts = list(texts or [])
        if input_file is not None:
            all_texts += read_texts(input_file, text_column)
        if not all_texts:
            raise InputError("no texts to run the bundle on.", "Pass texts as arguments or --input FILE.jsonl.")
        loaded = load(bundle, trusted_keys=_trusted(trusted_keys))
        asked = {"--max-new-tokens": max_new_tokens, "--top-k": top_k, "--top-p": top_p, "--seed": seed,
                 "--temperature": temperature or None}
        if loaded.decoder.generates:
            from mcompress.engines.generation import Sampling

            sampling = Sampling(max_new_tokens if max_new_tokens is not None else loaded.manifest["generation"]["max_new_tokens"],
                                temperature, top_k, top_p, seed)
            _print_continuations(loaded, all_texts, sampling)
            return
        given = [flag for flag, value in asked.items() if value is not None]
        if given:
            raise InputError(f"{', '.join(given)} apply to bundles that generate text; {bundle} is a "
                             f"{loaded.manifest.get('task')} bundle.", "Leave them out.")
        _print_predictions(loaded, all_texts, batch_size)

    _guard(body)


def _print_predictions(loaded, texts: list[str], batch_size: int | None) -> None:
    import json

    for text, result in zip(texts, loaded.predict(texts, batch_size)):
        sys.stdout.write(json.dumps({"text": text, **result}, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _print_continuations(loaded, prompts: list[str], sampling) -> None:
    for prompt in prompts:
        result = loaded.generate(prompt, sampling)
        sys.stdout.write(result["text"] + "\n")
        sys.stdout.flush()
        speed = f", decode {result['decode_tokens_per_s']} tok/s" if result["decode_tokens_per_s"] else ""
        _line("[dim]generated[/]", f"{len(result['tokens'])} tokens after a {result['prompt_tokens']}-token prompt "
                                   f"(stopped: {result['stopped']}; prefill {result['prefill_ms']:.1f} ms{speed})")


@app.command()
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle written by `mcompress package` (NAME.mcpkg)."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
    provenance: bool = typer.Option(False, "--provenance", help="Print the build's provenance (in-toto Statement, SLSA provenance v1) as JSON."),
    trusted_keys: Optional[list[Path]] = typer.Option(None, "--trusted-key", help=TRUSTED_KEY_HELP),
) -> None:
    """Verify a bundle (every file's sha256; its signature with --trusted-key) and summarize its manifest."""
    def body():
        import json

        from mcompress.bundle.runtime import open_bundle

        contents = open_bundle(bundle, trusted_keys=_trusted(trusted_keys))
        if provenance:
            from mcompress.core.errors import InputError

            if not contents.manifest.get("provenance"):
                raise InputError(f"bundle {bundle} records no provenance (packaged by an older mcompress).",
                                 "Repackage the build with this version.")
            sys.stdout.write(json.dumps(contents.manifest["provenance"], indent=2, sort_keys=True) + "\n")
            return
        if as_json:
            sys.stdout.write(json.dumps(contents.manifest, indent=2, sort_keys=True) + "\n")
            return
        sys.stdout.write(_bundle_summary(bundle, contents.manifest, contents.members, _signature_line(contents)))

    _guard(body)


def _signature_line(contents) -> str:
    if contents.signer is not None:
        return (f"verified: signed by trusted key {contents.signer.path} "
                f"(sha256 {contents.signer.key_id[:16]}…), every member matches the signed digests")
    if contents.signature is None:
        return "unsigned"
    from mcompress.bundle.signing import signature_key_id

    named = signature_key_id(contents.signature)
    return (f"signed (not verified; pass --trusted-key PUB.pem), key sha256 {named[:16]}…" if named
            else "signed (not verified; the signature names no key)")


def _bundle_summary(bundle: Path, m: dict, members: dict[str, bytes], signature: str = "unsigned") -> str:
    files = m.get("files", {})
    lines = [f"bundle   {bundle} ({bundle.stat().st_size / 1e6:.1f} MB; sha256 of {len(files)} files verified)",
             f"task     {m.get('task')} on {m.get('target')} ({m.get('quantization') or 'no'} quantization), "
             f"schema {m.get('schema_version')}"]
    metrics = m.get("metrics", {})
    lines += _labels_lines(m, members) + _input_lines(m) + _text_lines(m)
    runtime = m.get("runtime", {})
    lines.append("runtime  gated with " + ", ".join(f"{k} {v}" for k, v in runtime.items() if v))
    lines.append(f"source   checkpoint sha256 {(m.get('source') or {}).get('sha256')}")
    lines.append(f"signature {signature}")
    if m.get("provenance"):
        lines.append("provenance in-toto Statement, SLSA provenance v1 (mcompress inspect --provenance)")
    lines.append(f"gates    {'PASS' if m.get('passed') else 'FAIL'}")
    for g in m.get("gates", []):
        ci = f", 95% CI [{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]" if g.get("ci95") else ""
        lines.append(f"  {g.get('name')}: {g.get('value'):.3f} {g.get('unit')} (budget {g.get('threshold')}{ci}) "
                     f"{'pass' if g.get('passed') else 'FAIL'}")
    ref, build = metrics.get("reference_accuracy"), metrics.get("build_accuracy")
    if ref is not None and build is not None:
        lines.append(f"accuracy {ref:.4f} (reference) -> {build:.4f} (build) on {metrics.get('eval_examples')} examples")
    latency = metrics.get("latency") or {}
    for r, c in zip(latency.get("reference", []), latency.get("build", [])):
        lines.append(f"latency  b{c['batch_size']}/s{c['sequence_length']} p50 {r['p50_ms']:.2f} -> {c['p50_ms']:.2f} ms "
                     f"({r['p50_ms'] / c['p50_ms']:.2f}x)")
    lines.append("files")
    for name, entry in sorted(files.items()):
        lines.append(f"  {name:<26} {entry['bytes']:>13,} bytes  sha256 {entry['sha256'][:16]}")
    return "\n".join(lines) + "\n"


def _labels_lines(m: dict, members: dict[str, bytes]) -> list[str]:
    import json

    if "labels_file" not in m and "generation" in m:  # an unlabelled (generating) bundle
        return []
    try:
        id2label = json.loads(members[m.get("labels_file", "labels.json")])
        labels = ", ".join(f"{i}={name}" for i, name in sorted(id2label.items(), key=lambda kv: int(kv[0])))
    except (KeyError, ValueError, TypeError, AttributeError):
        labels = "? (unreadable label file)"
    return [f"labels   {labels}"]


def _input_lines(m: dict) -> list[str]:
    """One line per tokenizer-fed input; the inputs the generation loop feeds (the KV cache) as one line."""
    feeds = (m.get("preprocessing") or {}).get("feeds") or {}
    lines, cache = [], []
    for spec in m.get("inputs", []):
        shape = ", ".join(str(d) for d in spec.get("shape", []))
        if "generation" in m and spec.get("name") not in feeds:
            cache.append(spec)
            continue
        lines.append(f"input    {spec.get('name')} {spec.get('dtype')} [{shape}] <- tokenizer {feeds.get(spec.get('name'))}")
    past = [s for s in cache if str(s.get("name", "")).startswith("past_key_values.")]
    fed = [s.get("name") for s in cache if s not in past]
    if fed:
        lines.append(f"input    {', '.join(map(str, fed))} <- the generation loop (ids, mask, positions)")
    if past:
        shape = ", ".join(str(d) for d in past[0].get("shape", []))
        lines.append(f"input    past_key_values.* x{len(past)} {past[0].get('dtype')} [{shape}] <- the KV cache (present.*)")
    return lines


def _text_lines(m: dict) -> list[str]:
    pre = m.get("preprocessing") or {}
    generation = m.get("generation")
    if generation:
        return [f"text     {pre.get('tokenizer_file')}, prompts untruncated and unpadded (at most "
                f"{generation.get('context_length', 0) - 1} tokens)",
                f"generate context {generation.get('context_length')} tokens, stop tokens {generation.get('stop_token_ids')}, "
                f"KV cache {generation.get('kv_heads')} heads x {generation.get('head_dim')}, "
                f"{generation.get('max_new_tokens')} new tokens by default (greedy; sampling with --temperature)"]
    return [f"text     {pre.get('tokenizer_file')}, truncation at {m.get('max_sequence_length')} tokens, "
            f"padding to the longest text (pad {pre.get('pad_token')!s}={pre.get('pad_id')})"]


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
