"""Builds a serialized TensorRT engine from an ONNX file, with data-centre ``tensorrt`` or
TensorRT for RTX (``tensorrt_rtx``): the two share the builder/parser API this module uses.

- Network: strongly typed where the API has it (TensorRT >= 10, TensorRT-RTX): precisions come
  from the graph itself, INT8 exactly where the Q/DQ pairs are, FP32 elsewhere. Older TensorRT
  gets the FP16 and INT8 builder flags instead.
- One optimization profile for the token inputs (input_ids, attention_mask, token_type_ids):
  min/opt/max batch and sequence (``ShapeProfile``).
- A timing cache read from and written back to a file, so rebuilds skip kernel timing
  (data-centre TensorRT; TensorRT-RTX >= 1.2 made timing-cache calls no-ops, it tunes at run time).
- ``SPARSE_WEIGHTS`` when the weights carry a 2:4 pattern (the prune pass's annotation).
- TensorRT-RTX compiles ahead of time without a GPU (its default: an engine portable across the
  compute capabilities its docs list); ``compute_capabilities`` narrows that set.
  Data-centre TensorRT needs a GPU to build.
"""

from __future__ import annotations

import importlib
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mcompress.core.errors import InputError, McompressError

logger = logging.getLogger(__name__)

# Tried in this order: data-centre TensorRT first (it is what a data-centre GPU runs).
MODULES = ("tensorrt", "tensorrt_rtx")
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
STANDARD_DOMAINS = ("", "ai.onnx")


class EngineBuildError(McompressError):
    """The parser or builder rejected the model: a bug in the graph mcompress produced, or an
    operator the installed TensorRT does not support."""


def find_tensorrt(modules: tuple[str, ...] = MODULES):
    """The first TensorRT Python module that imports, or None."""
    for name in modules:
        try:
            return importlib.import_module(name)
        except Exception as err:  # ImportError, or OSError from a wheel whose libraries are missing
            logger.debug("%s does not import: %s", name, err)
    return None


def is_rtx(trt) -> bool:
    return trt.__name__.split(".")[0] == "tensorrt_rtx"


def package_info(trt) -> dict:
    """Module, version and the pip distribution that provides it (e.g. tensorrt-rtx-cu13)."""
    from importlib import metadata

    module = trt.__name__.split(".")[0]
    dists = metadata.packages_distributions().get(module, [])
    # The metapackage (tensorrt-rtx-cu13) is the one a user installs; the bindings/libs wheels
    # provide the module. Prefer the name without a -bindings/-libs suffix.
    dists = sorted({d.lower().replace("_", "-") for d in dists}, key=lambda d: (d.endswith(("bindings", "libs")), len(d)))
    return {"module": module, "version": getattr(trt, "__version__", None),
            "distribution": dists[0] if dists else None}


def cuda_device() -> dict | None:
    """Name, compute capability and CUDA version of GPU 0, from torch; None without one."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        major, minor = torch.cuda.get_device_capability(0)
        return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
                "cuda": torch.version.cuda}
    except Exception as err:  # a broken driver is "no GPU" here; the report records why
        logger.debug("no CUDA device: %s", err)
        return None


def nonstandard_ops(onnx_path: Path) -> list[str]:
    """Operators outside the standard ai.onnx domain (e.g. com.microsoft.Attention): TensorRT's
    ONNX parser cannot read them."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sorted({f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in STANDARD_DOMAINS})


@dataclass(frozen=True)
class ShapeProfile:
    """Batch and sequence bounds of the engine's one optimization profile; every token input is
    [batch, sequence]."""

    inputs: tuple[str, ...]
    batch: tuple[int, int, int]  # min, opt, max
    sequence: tuple[int, int, int]
    # Where the bounds came from, for the report: the eval data's token-length distribution.
    data_lengths: dict | None = None

    @classmethod
    def from_data(cls, inputs, token_lengths, max_length: int, eval_batch_size: int, cfg=None) -> "ShapeProfile":
        """Defaults: batch 1 / eval batch / eval batch; sequence 2 (an empty text, [CLS] [SEP]) /
        the median token count of the eval data / max_length (the tokenizer truncates there, so
        every input fits). ``cfg`` (recipe.tensorrt) overrides any bound it sets."""
        lengths = np.asarray(token_lengths if token_lengths is not None and len(token_lengths) else [max_length])
        lengths = np.minimum(lengths, max_length)
        stats = {"examples": int(lengths.size), "min": int(lengths.min()), "median": int(np.median(lengths)),
                 "p95": int(np.percentile(lengths, 95)), "max": int(lengths.max())}
        batch = [1, eval_batch_size, eval_batch_size]
        sequence = [min(2, max_length), max(2, stats["median"]), max_length]
        if cfg is not None:
            for i, key in enumerate(("min", "opt", "max")):
                batch[i] = getattr(cfg, f"{key}_batch") or batch[i]
                sequence[i] = getattr(cfg, f"{key}_sequence") or sequence[i]
        # A bound the recipe set wins; a derived one moves to keep min <= opt <= max.
        batch[1] = min(max(batch[1], batch[0]), batch[2])
        sequence[1] = min(max(sequence[1], sequence[0]), sequence[2])
        if batch[0] > batch[2] or sequence[0] > sequence[2]:
            raise InputError(f"tensorrt profile min > max (batch {batch}, sequence {sequence}).",
                                 "Check the tensorrt: section of the recipe against max_length and eval.batch_size.")
        return cls(tuple(inputs), tuple(batch), tuple(sequence), stats)

    def shapes(self) -> list[tuple[str, tuple[int, int], tuple[int, int], tuple[int, int]]]:
        return [(n, (self.batch[0], self.sequence[0]), (self.batch[1], self.sequence[1]),
                 (self.batch[2], self.sequence[2])) for n in self.inputs]

    def as_dict(self) -> dict:
        return {"inputs": list(self.inputs), "batch": dict(zip(("min", "opt", "max"), self.batch)),
                "sequence": dict(zip(("min", "opt", "max"), self.sequence)), "eval_token_lengths": self.data_lengths}


@dataclass(frozen=True)
class BuildOptions:
    optimization_level: int = 3
    sparse_weights: bool = False  # the weights carry a 2:4 pattern
    compute_capabilities: tuple[str, ...] = ()  # TensorRT-RTX only; () = the builder's default set
    workspace_mb: int | None = None
    timing_cache: Path | None = None  # read if it exists, written after the build


def command_line(trt_module: str, onnx_name: str, engine_name: str, profile: ShapeProfile, options: BuildOptions,
                 strongly_typed: bool = True) -> str:
    """The equivalent command: ``trtexec`` for TensorRT, ``tensorrt_rtx`` (same flags) for
    TensorRT-RTX; both ship with the SDK archives, not with the pip wheels."""
    rtx = trt_module == "tensorrt_rtx"
    dims = lambda i: ",".join(f"{n}:{s[i][0]}x{s[i][1]}" for n, *s in profile.shapes())
    args = ["tensorrt_rtx" if rtx else "trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if strongly_typed and not rtx:  # TensorRT-RTX networks are always strongly typed
        args.append("--stronglyTyped")
    elif not strongly_typed:
        args += ["--fp16", "--int8"]
    args += [f"--minShapes={dims(0)}", f"--optShapes={dims(1)}", f"--maxShapes={dims(2)}"]
    if not rtx:
        args.append(f"--builderOptimizationLevel={options.optimization_level}")
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={Path(options.timing_cache).name}")
    if options.sparse_weights:
        args.append("--sparsity=enable")
    if options.workspace_mb:
        args.append(f"--memPoolSize=workspace:{options.workspace_mb}M")
    if not rtx:
        args.append("--skipInference")  # build and save only; running needs the GPU it was built on
    lines = [shlex.join(args)]
    if rtx:
        cc = ", ".join(options.compute_capabilities) or "the builder's default (portable) set"
        lines.append(f"# builder optimization level {options.optimization_level} and compute capabilities ({cc}) "
                     "were set through the Python API (IBuilderConfig)")
    return "\n".join(lines) + "\n"


class _Log:
    """Collects the builder's warnings and errors (and forwards them to logging), so a failed
    build reports what TensorRT said."""

    def __new__(cls, trt):
        class Log(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[str] = []

            def log(self, severity, msg):
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    self.messages.append(f"{severity.name}: {msg}")
                    logger.info("tensorrt: %s", msg)  # kept in tensorrt_build.json; an error is raised with it
                else:
                    logger.debug("tensorrt: %s", msg)

        return Log()


def _parser_errors(parser) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node, name, op = e.node(), getattr(e, "node_name", lambda: "")(), getattr(e, "node_operator", lambda: "")()
        where = f"node {node}" + (f" '{name}'" if name else "") + (f" ({op})" if op else "") if node >= 0 else "model"
        errors.append(f"{where}: {e.desc()}")
    return errors


def _network_flags(trt) -> tuple[int, bool]:
    """Network creation flags, and whether they make the network strongly typed."""
    creation = trt.NetworkDefinitionCreationFlag
    if hasattr(creation, "STRONGLY_TYPED"):
        return 1 << int(creation.STRONGLY_TYPED), True
    if hasattr(creation, "EXPLICIT_BATCH"):  # TensorRT 8.x
        return 1 << int(creation.EXPLICIT_BATCH), False
    return 0, False


def _parsed_network(trt, builder, log, onnx_path: Path, flags: int):
    """(network, parser) for the ONNX file; the parser owns the weights, so it must outlive the build."""
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errors = _parser_errors(parser) or log.messages[-5:] or ["(no error recorded)"]
        raise EngineBuildError(f"TensorRT's ONNX parser rejected {Path(onnx_path).name}: " + "; ".join(errors[:5]))
    return network, parser


def _configure(trt, config, options: BuildOptions, strongly_typed: bool) -> bool:
    """Precision flags (a network that is not strongly typed), optimization level, workspace,
    sparsity and compute capabilities; whether SPARSE_WEIGHTS was set."""
    if not strongly_typed:
        for flag in ("FP16", "INT8"):
            if hasattr(trt.BuilderFlag, flag):
                config.set_flag(getattr(trt.BuilderFlag, flag))
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = options.optimization_level
    if options.workspace_mb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    sparse = options.sparse_weights and hasattr(trt.BuilderFlag, "SPARSE_WEIGHTS")
    if sparse:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    if options.compute_capabilities:
        if not hasattr(config, "set_compute_capability"):
            raise EngineBuildError("tensorrt.compute_capabilities is a TensorRT-RTX setting; the installed "
                                   f"{trt.__name__} builds for the GPU it runs on.",)
        config.num_compute_capabilities = len(options.compute_capabilities)
        for i, cc in enumerate(options.compute_capabilities):
            config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + cc.replace(".", "")), i)
    return sparse


def _add_profile(builder, config, network, profile: ShapeProfile) -> set[str]:
    """The one optimization profile, for the token inputs the network has; the network's input names."""
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    trt_profile = builder.create_optimization_profile()
    for name, lo, opt, hi in profile.shapes():
        if name in names:
            trt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(trt_profile)
    return names


def _load_timing_cache(trt, config, options: BuildOptions) -> bool:
    """Give the builder the timing cache file (empty when it does not exist yet); whether one is used."""
    # TensorRT-RTX (>= 1.2) tunes kernels just in time on the user's GPU; its timing-cache calls
    # are deprecated no-ops, so the cache file is kept for data-centre TensorRT only.
    use_timing_cache = options.timing_cache is not None and not is_rtx(trt) and hasattr(config, "create_timing_cache")
    if use_timing_cache:
        path = Path(options.timing_cache)
        cache = config.create_timing_cache(path.read_bytes() if path.is_file() else b"")
        config.set_timing_cache(cache, False)
    return use_timing_cache


def _save_timing_cache(config, path: Path) -> int:
    """Write the builder's timing cache back to ``path``; its size in bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = config.get_timing_cache().serialize()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # atomic: a concurrent build reads the old cache or the new, never half
    return path.stat().st_size


def build_engine(trt, onnx_path: Path, engine_path: Path, profile: ShapeProfile, options: BuildOptions) -> dict:
    """Parse, configure, build and serialize. Returns facts for the build metadata."""
    log = _Log(trt)
    started = time.perf_counter()
    builder = trt.Builder(log)
    flags, strongly_typed = _network_flags(trt)
    network, parser = _parsed_network(trt, builder, log, onnx_path, flags)
    config = builder.create_builder_config()
    sparse = _configure(trt, config, options, strongly_typed)
    names = _add_profile(builder, config, network, profile)
    use_timing_cache = _load_timing_cache(trt, config, options)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError("TensorRT's builder returned no engine: " + ("; ".join(log.messages[-5:]) or "(no error logged)"))
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    with open(engine_path, "wb") as f:
        f.write(serialized)
    timing_cache_bytes = _save_timing_cache(config, options.timing_cache) if use_timing_cache else None
    return {"strongly_typed": strongly_typed, "sparse_weights": sparse, "build_s": round(time.perf_counter() - started, 2),
            "engine_bytes": engine_path.stat().st_size, "timing_cache_bytes": timing_cache_bytes,
            "timing_cache_used": use_timing_cache,
            "network_inputs": sorted(names), "warnings": log.messages[-20:], "options": {
                **asdict(options), "timing_cache": str(options.timing_cache) if options.timing_cache else None}}
