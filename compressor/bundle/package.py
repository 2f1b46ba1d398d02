"""Edge packaging: one build directory -> one reproducible ``NAME.mcpkg`` archive.

A bundle is a zip (every entry ZIP_STORED, names sorted, timestamps 1980-01-01, mode 0644) that
holds the model, the tokenizer files, ``labels.json`` (id -> label name) and ``manifest.json``,
which records how to feed the model (input names, dtypes, dynamic axes read from the ONNX graph;
tokenizer, truncation, padding), the sha256 and size of every other member, the recipe, the runtime
versions the build was gated with, the source checkpoint's hash, the gate verdicts and metrics, and
the build's provenance (core/provenance.py: an in-toto Statement, SLSA provenance v1). Nothing
in it depends on when or where it was packaged, so packaging one build twice gives the same bytes.
With a signing key, the bundle also holds ``signature.sigstore.json`` over every other member
(bundle/signing.py); ECDSA signatures are randomised, so a signed bundle's bytes differ from one
signing to the next in that member only. ``mcompress.runtime`` loads it with only onnxruntime, tokenizers and numpy; a bundle of
an openvino-cpu build (``model_format: openvino-ir``: model.xml + model.bin) with only openvino,
tokenizers and numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mcompress import __version__
from mcompress.bundle.runtime import GENERATING_SESSIONS, SIGNATURE
from mcompress.core.errors import InputError
from mcompress.core.formats import ONNX, OPENVINO_IR, TOKENIZER_FILES, ModelFormat, format_named, format_of
from mcompress.core.task import TASKS, UNRECORDED_TASK, runtime_decoder
from mcompress.core.provenance import build_provenance, subject_digests

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
LABELS = "labels.json"
# The tokenizer file the runtime reads is tokenizer.json; the others (TOKENIZER_FILES) ride along
# so the bundle's contents can also be loaded with transformers' AutoTokenizer.
REQUIRED_FILES = ("report.json", "tokenizer.json")
# Which tokenizer output feeds which model input.
FEEDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
FILE_MODE = 0o100644  # regular file, rw-r--r--


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot read {what} {path}: {err}.", "Rebuild it with `mcompress run`.") from None


def _graph_io(model_files: list[bytes], model_path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an ONNX graph (``model_files``: the graph's bytes, then its external data if any)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        model = onnx.load_model_from_string(model_files[0])
    except Exception as err:  # onnx raises DecodeError and friends
        raise InputError(f"{model_path} is not a readable ONNX model: {err}.", "Rebuild it with `mcompress run`.") from None
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise InputError(f"{model_path} stores weights as ONNX external data, which bundles do not support.",
                         "Build a model under 2 GB with its weights inside model.onnx.")
    initializers = {t.name for t in model.graph.initializer}

    def describe(value) -> dict:
        tensor = value.type.tensor_type
        dims, dynamic = [], {}
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            else:
                name = dim.dim_param or f"dim{axis}"
                dims.append(name)
                dynamic[str(axis)] = name
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                "shape": dims, "dynamic_axes": dynamic}

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    outputs = [describe(v) for v in model.graph.output]
    return inputs, outputs


def _ir_io(model_files: list[bytes], model_path: Path) -> tuple[list[dict], list[dict]]:
    """Inputs and outputs of an OpenVINO IR (the .xml's bytes, then the .bin's), described like
    _graph_io describes an ONNX graph."""
    import openvino as ov

    xml, weights = model_files
    try:
        model = ov.Core().read_model(xml, weights)
    except Exception as err:  # openvino raises RuntimeError with a multi-line message
        raise InputError(f"{model_path} is not a readable OpenVINO IR: {str(err).splitlines()[0]}.",
                         "Rebuild it with `mcompress run --target openvino-cpu`.") from None

    def describe(port) -> dict:
        dims, dynamic = [], {}
        for axis, dim in enumerate(port.get_partial_shape()):
            if dim.is_static:
                dims.append(int(dim.get_length()))
            else:
                dims.append(f"dim{axis}")
                dynamic[str(axis)] = f"dim{axis}"
        return {"name": port.get_any_name(), "dtype": port.get_element_type().to_dtype().name, "shape": dims,
                "dynamic_axes": dynamic}

    return [describe(p) for p in model.inputs], [describe(p) for p in model.outputs]


def _pad_settings(tokenizer_json: bytes, build_dir: Path) -> dict:
    """The pad token, id and side, as transformers would use them for this build."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    config = {}
    if (build_dir / "tokenizer_config.json").is_file():
        config = _read_json(build_dir / "tokenizer_config.json", "tokenizer config")
    pad_token = config.get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    if pad_token is None and (build_dir / "special_tokens_map.json").is_file():
        special = _read_json(build_dir / "special_tokens_map.json", "special tokens map").get("pad_token")
        pad_token = special.get("content") if isinstance(special, dict) else special
    padding = tokenizer.padding or {}
    if pad_token is None:
        pad_token = padding.get("pad_token")
    pad_id = tokenizer.token_to_id(pad_token) if pad_token is not None else None
    if pad_id is None:
        raise InputError(f"the tokenizer in {build_dir} has no pad token, so batches cannot be padded.",
                         "Set pad_token in tokenizer_config.json and rebuild.")
    return {"pad_token": pad_token, "pad_id": int(pad_id),
            "pad_type_id": int(config.get("pad_token_type_id", padding.get("pad_type_id", 0))),
            "padding_side": config.get("padding_side", "right"),
            "truncation_side": config.get("truncation_side", "right")}


@dataclass(frozen=True)
class _Bundled:
    """What packaging needs to know of a model format a bundle can hold."""

    describe_io: Callable[[list[bytes], Path], tuple[list[dict], list[dict]]]
    runtime: Callable[[dict], dict]  # report.json -> the manifest's runtime facts for this format


def _onnx_runtime(report: dict) -> dict:
    return {"onnxruntime": (report.get("versions") or {}).get("onnxruntime")}


def _openvino_runtime(report: dict) -> dict:
    # how the build was compiled when it was gated; the runtime compiles the same way
    requested = (report.get("target_build") or {}).get("requested") or {}
    return {"openvino": (report.get("versions") or {}).get("openvino"),
            "inference_precision": requested.get("inference_precision", "f32")}


# The model formats a bundle can hold (the bundle runtime loads these; core/formats.py names them).
BUNDLED = {ONNX.name: _Bundled(_graph_io, _onnx_runtime), OPENVINO_IR.name: _Bundled(_ir_io, _openvino_runtime)}


def _metrics(report: dict) -> dict:
    """The gated figures of the build (the manifest's ``metrics``)."""
    return {
        "eval_examples": ((report.get("data") or {}).get("eval") or {}).get("examples"),
        "eval_sha256": ((report.get("data") or {}).get("eval") or {}).get("sha256"),
        "reference_accuracy": (report.get("reference") or {}).get("accuracy"),
        "build_accuracy": (report.get("build") or {}).get("accuracy"),
        "reference_score": (report.get("reference") or {}).get("score"),
        "build_score": (report.get("build") or {}).get("score"),
        "latency": report.get("latency"),
    }


def _check_feedable(decoder, inputs: list[dict], outputs: list[dict], model_path: Path) -> None:
    """The runtime can feed every input: from the tokenizer (FEEDS), or, for a generating task,
    by the generation loop (engines.generation.graph_problem)."""
    if decoder.generates:
        from mcompress.engines.generation import EXPORT_HINT, graph_problem

        problem = graph_problem([i["name"] for i in inputs], [o["name"] for o in outputs])
        if problem:
            raise InputError(f"{model_path} {problem}.", EXPORT_HINT)
        return
    unknown = [i["name"] for i in inputs if i["name"] not in FEEDS]
    if unknown:
        raise InputError(f"{model_path} has inputs the bundle runtime cannot feed: {', '.join(unknown)}.",
                         f"Supported inputs: {', '.join(FEEDS)}.")
    if not any(o["name"] == "logits" for o in outputs):
        raise InputError(f"{model_path} has no 'logits' output.", "Rebuild it with `mcompress run`.")


def _build_json(build_dir: Path):
    """``read_json(name)`` for a decoder's manifest_fields: a JSON file of the build, or None."""
    return lambda name: _read_json(build_dir / name, name) if (build_dir / name).is_file() else None


def _preprocessing(decoder, files: dict[str, bytes], build_dir: Path, inputs: list[dict], max_length: int) -> dict:
    feeds = {} if decoder.generates else {i["name"]: FEEDS[i["name"]] for i in inputs}
    return {"tokenizer_file": "tokenizer.json", "truncation": not decoder.generates,
            "padding": "longest" if decoder.padded else "none", "max_length": max_length, "feeds": feeds,
            **(_pad_settings(files["tokenizer.json"], build_dir) if decoder.padded else {})}


def build_manifest(build_dir: Path, report: dict, files: dict[str, bytes], labels: dict[str, str] | None,
                   model_format: ModelFormat, task: str = UNRECORDED_TASK) -> dict:
    decoder = runtime_decoder(task)
    model_file = model_format.model_file
    model_names = [p.name for p in model_format.files(build_dir / model_file)]
    inputs, outputs = BUNDLED[model_format.name].describe_io([files[n] for n in model_names], build_dir / model_file)
    _check_feedable(decoder, inputs, outputs, build_dir / model_file)
    recipe = report.get("recipe") or {}
    max_length = recipe.get("max_length")
    if not isinstance(max_length, int) or max_length < 2:
        raise InputError(f"{build_dir / 'report.json'} has no recipe max_length.", "Rebuild it with `mcompress run`.")
    task_fields = decoder.manifest_fields(_build_json(build_dir))
    # a generating task's sequence limit is the model's context, not the gate's max_length
    max_length = task_fields.get("generation", {}).get("context_length", max_length)
    versions = report.get("versions") or {}
    return {
        "schema_version": SCHEMA_VERSION,
        "task": task,
        "target": report.get("target"),
        "mcompress_version": __version__,
        "built_with_mcompress": report.get("mcompress_version"),
        "model_file": model_file,
        "model_format": model_format.name,
        **({"weights_file": model_names[1]} if model_format.companions(Path(model_file)) else {}),
        **({"labels_file": LABELS, "num_labels": len(labels)} if decoder.labelled else {}),
        "inputs": inputs,
        "outputs": outputs,
        "max_sequence_length": max_length,
        "preprocessing": _preprocessing(decoder, files, build_dir, inputs, max_length),
        "postprocessing": {"output": "logits", "activation": "softmax"},
        "runtime": {**BUNDLED[model_format.name].runtime(report),
                    "tokenizers": versions.get("tokenizers"), "numpy": versions.get("numpy"),
                    "python": versions.get("python")},
        "recipe": recipe,
        "source": {"sha256": (report.get("source") or {}).get("sha256"),
                   "model_type": (report.get("source") or {}).get("model_type"),
                   "architecture": (report.get("source") or {}).get("architecture")},
        "quantization": (report.get("artifact") or {}).get("quantization"),
        "passed": bool(report.get("passed")),
        "gates": report.get("gates") or [],
        "metrics": _metrics(report),
        "provenance": _provenance(build_dir, report, files, model_names),
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in sorted(files.items())},
        **task_fields,
    }


def _provenance(build_dir: Path, report: dict, files: dict[str, bytes], model_names: list[str]) -> dict:
    """The build's provenance statement (report.json's, or made from the report of a build that
    predates it); its subjects must be the model files being packaged."""
    statement = report.get("provenance") or build_provenance(report, model_names)
    for name, digest in subject_digests(statement).items():
        if name not in files or digest != _sha256(files[name]):
            raise InputError(f"{build_dir / name} is not the model report.json's provenance names (sha256 differs).",
                             "Rebuild with `mcompress run`.")
    return statement


def _labels(build_dir: Path, report: dict) -> dict[str, str]:
    id2label = None
    if (build_dir / "config.json").is_file():
        id2label = _read_json(build_dir / "config.json", "model config").get("id2label")
    if not id2label:
        id2label = (report.get("source") or {}).get("labels")
    if not id2label:
        raise InputError(f"{build_dir} has no label map (config.json id2label).", "Rebuild it with `mcompress run`.")
    try:
        ordered = sorted(((int(k), str(v)) for k, v in id2label.items()))
    except (TypeError, ValueError):
        raise InputError(f"{build_dir / 'config.json'} id2label keys are not integer ids.") from None
    if [i for i, _ in ordered] != list(range(len(ordered))):
        raise InputError(f"{build_dir / 'config.json'} id2label ids are not 0..{len(ordered) - 1}.")
    return {str(i): name for i, name in ordered}


def _bundled_format(build_dir: Path, report: dict, decoder) -> ModelFormat:
    """The format of the build's model file (report.json artifact.model_file), if bundles of the
    task hold it (a generating task's: those the generation loop steps)."""
    model_file = (report.get("artifact") or {}).get("model_file", ONNX.model_file)
    model_format = format_of(Path(model_file))
    bundled = [name for name in BUNDLED if not decoder.generates or name in GENERATING_SESSIONS]
    if model_format is None or model_format.name not in bundled or model_file != model_format.model_file:
        supported = " and ".join(f"{format_named(name).model_file} ({name})" for name in bundled)
        raise InputError(f"build {build_dir} ships {model_file}; {(report.get('source') or {}).get('task', 'its task')} "
                         f"bundles support {supported} builds only.")
    return model_format


def _zip_bytes(members: dict[str, bytes], out) -> None:
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3  # Unix, so external_attr carries the mode
            info.external_attr = FILE_MODE << 16
            zf.writestr(info, members[name])


def _check_build_dir(build_dir: Path) -> None:
    """Refuse a build directory that is not one."""
    if not build_dir.exists():
        raise InputError(f"build directory {build_dir} does not exist.", "Pass the --out directory of `mcompress run`.")
    if not build_dir.is_dir():
        raise InputError(f"build directory {build_dir} is not a directory.", "Pass the --out directory of `mcompress run`.")
    missing = [name for name in REQUIRED_FILES if not (build_dir / name).is_file()]
    if missing:
        raise InputError(f"build directory {build_dir} lacks {', '.join(missing)}.",
                         "Pass a complete build written by `mcompress run`.")


def _check_paths(build_dir: Path, out_file: Path, force: bool) -> Path:
    """Refuse a build directory that is not one, and a bundle path that is unusable; return the
    bundle's resolved path."""
    _check_build_dir(build_dir)
    if out_file.suffix != ".mcpkg":
        raise InputError(f"bundle name {out_file} must end in .mcpkg.", "Pass -o NAME.mcpkg.")
    resolved = out_file.resolve()
    if build_dir.resolve() in resolved.parents:
        raise InputError(f"bundle {out_file} would be written inside the build directory {build_dir}.",
                         "Choose an output path outside the build.")
    if out_file.exists() and not force:
        raise InputError(f"bundle {out_file} already exists.", "Pass --force to replace it, or choose another -o.")
    if out_file.exists() and not out_file.is_file():
        raise InputError(f"bundle path {out_file} exists and is not a file.")
    if not resolved.parent.is_dir():
        raise InputError(f"the directory of {out_file} ({resolved.parent}) does not exist.", "Create it first.")
    return resolved


def _bundled_task(build_dir: Path, report: dict) -> str:
    task = (report.get("source") or {}).get("task", UNRECORDED_TASK)
    if runtime_decoder(task) is None:
        supported = ", ".join(n for n, entry in TASKS.items() if entry.runtime_decoder)
        raise InputError(f"build {build_dir} is a {task} model; bundles and the bundle runtime support {supported} so far.",
                         "Deploy the build directory itself (model.onnx, config.json, tokenizer files) with ONNX Runtime or Optimum.")
    return task


def _build_files(build_dir: Path, report: dict, decoder) -> tuple[dict[str, bytes], dict[str, str] | None, ModelFormat]:
    """The bundle's members but the manifest (model, tokenizer files, labels.json when the task is
    labelled), checked against the sha256 report.json recorded when the build was gated; the label
    map (None for an unlabelled task); the model format."""
    model_format = _bundled_format(build_dir, report, decoder)
    model_files = [p.name for p in model_format.files(build_dir / model_format.model_file)]
    missing = [name for name in model_files if not (build_dir / name).is_file()]
    if missing:
        raise InputError(f"build directory {build_dir} lacks {', '.join(missing)}.",
                         "Pass a complete build written by `mcompress run`.")
    files = {name: (build_dir / name).read_bytes() for name in model_files}
    for name in TOKENIZER_FILES:
        if (build_dir / name).is_file():
            files[name] = (build_dir / name).read_bytes()
    labels = _labels(build_dir, report) if decoder.labelled else None
    if labels is not None:
        files[LABELS] = (json.dumps(labels, indent=2, sort_keys=True) + "\n").encode()
    recorded = (report.get("artifact") or {}).get("files") or {}
    for name, data in files.items():
        expected = (recorded.get(name) or {}).get("sha256")
        if expected and expected != _sha256(data):
            raise InputError(f"{build_dir / name} changed since the build was gated (sha256 differs from report.json).",
                             "Rebuild with `mcompress run`.")
    return files, labels, model_format


def _members(files: dict[str, bytes], manifest: dict) -> dict[str, bytes]:
    """The bundle's members: ``files`` and the manifest."""
    return {**files, MANIFEST: (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()}


def _zipped(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    _zip_bytes(members, buffer)
    return buffer.getvalue()


def _signature(members: dict[str, bytes], key: Path, name: str) -> bytes:
    """The signature member over every other member's sha256 (bundle/signing.py)."""
    from mcompress.bundle.signing import sign_digests

    return sign_digests({n: _sha256(data) for n, data in members.items() if n != SIGNATURE}, key, name)


def bundle_bytes(build_dir: Path, allow_failed: bool = False, reference_data: Path | None = None,
                 sign_key: Path | None = None, name: str = "bundle") -> tuple[bytes, dict]:
    """The bundle of ``build_dir`` as bytes, and its manifest, built in memory (``mcompress
    package`` writes these bytes; ``mcompress serve BUILD_DIR`` loads them). The manifest's
    ``monitoring`` reference comes from running this very bundle on the eval data
    (bundle/monitoring.py); with ``sign_key`` (a PEM EC private key) the bundle is signed as ``name``."""
    build_dir = Path(build_dir)
    _check_build_dir(build_dir)
    report = _read_json(build_dir / "report.json", "build report")
    task = _bundled_task(build_dir, report)
    if not report.get("passed") and not allow_failed:
        failed = ", ".join(g.get("name", "?") for g in report.get("gates", []) if not g.get("passed")) or "unknown"
        raise InputError(f"build {build_dir} failed its gates ({failed}); refusing to package it.",
                         "Pass --allow-failed to package it anyway.")
    decoder = runtime_decoder(task)
    files, labels, model_format = _build_files(build_dir, report, decoder)
    manifest = build_manifest(build_dir, report, files, labels, model_format, task)
    if decoder.monitored:
        from mcompress.bundle.reference import monitoring_reference

        manifest["monitoring"] = monitoring_reference(build_dir, report, task, labels,
                                                      _zipped(_members(files, manifest)), reference_data)
    else:
        manifest["monitoring"] = {"unavailable": f"{task} bundles record no prediction histograms "
                                                 "(it would take a generation per eval text)"}
    members = _members(files, manifest)
    if sign_key is not None:
        members[SIGNATURE] = _signature(members, sign_key, name)
    return _zipped(members), manifest


def _write_atomically(data: bytes, resolved: Path, out_file: Path) -> None:
    """``data`` at ``resolved``, appearing only when complete."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_file.name}.", suffix=".partial", dir=resolved.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, resolved)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def package_build(build_dir: Path, out_file: Path, force: bool = False, allow_failed: bool = False,
                  reference_data: Path | None = None, sign_key: Path | None = None) -> dict:
    """Write ``out_file`` (a .mcpkg bundle) from ``build_dir``, signed with the PEM EC private key
    ``sign_key`` if given; return its manifest.

    Nothing in ``build_dir`` is modified; ``out_file`` appears only when complete."""
    build_dir, out_file = Path(build_dir), Path(out_file)
    resolved = _check_paths(build_dir, out_file, force)
    data, manifest = bundle_bytes(build_dir, allow_failed, reference_data, sign_key, out_file.stem)
    _write_atomically(data, resolved, out_file)
    return manifest


def sign_bundle(bundle: Path, key: Path, out_file: Path, force: bool = False) -> str:
    """Sign ``bundle`` (replacing any signature it has) into a new file ``out_file`` (the input
    bundle is never modified); return the signing key's id (bundle/signing.key_id). The bundle is
    verified first, so only an intact bundle is signed; its members keep their bytes."""
    from mcompress.bundle.runtime import open_bundle

    bundle, out_file = Path(bundle), Path(out_file)
    if out_file.suffix != ".mcpkg":
        raise InputError(f"bundle name {out_file} must end in .mcpkg.", "Pass -o NAME.mcpkg.")
    contents = open_bundle(bundle)
    resolved = out_file.resolve()
    if resolved == bundle.resolve():
        raise InputError(f"-o {out_file} is the bundle being signed; the input is never modified.",
                         "Pass another -o, e.g. NAME.signed.mcpkg.")
    if out_file.exists() and not force:
        raise InputError(f"bundle {out_file} already exists.", "Pass --force to replace it, or choose another -o.")
    if not resolved.parent.is_dir():
        raise InputError(f"the directory of {out_file} ({resolved.parent}) does not exist.", "Create it first.")
    members = dict(contents.members)
    with zipfile.ZipFile(bundle) as zf:  # the manifest's own bytes (open_bundle returns it parsed)
        members[MANIFEST] = zf.read(MANIFEST)
    if json.loads(members[MANIFEST]) != contents.manifest:
        raise InputError(f"bundle {bundle} changed while it was being signed.", "Sign it again.")
    members[SIGNATURE] = _signature(members, key, out_file.stem)
    _write_atomically(_zipped(members), resolved, out_file)
    from mcompress.bundle.signing import signature_key_id

    return signature_key_id(members[SIGNATURE])
