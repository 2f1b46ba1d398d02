"""Validating and loading a user's Hugging Face checkpoint, safely.

Everything a run needs from the model directory is checked before any work starts: the config,
the architecture, the label map, the weights (safetensors by default; a pickle checkpoint only
with --allow-pickle, loaded with ``weights_only=True``) and the tokenizer. Files are only read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.formats import VOCABULARY_FILES
from mcompress.core.task import all_tasks, get_task, task_for_architecture

# BERT-family encoders whose ONNX export and ONNX Runtime fusions are tested (tests/test_checkpoint.py).
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "distilbert")
PICKLE_WEIGHTS = ("pytorch_model.bin",)


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    config: dict
    model_type: str
    architecture: str
    task: str  # the name of its Task (core/task.py): get_task(ckpt.task)
    label2id: dict[str, int]
    id2label: dict[int, str]
    weights_file: Path
    hidden_size: int
    num_attention_heads: int
    content_hash: str = field(repr=False)

    @property
    def num_labels(self) -> int:
        return len(self.id2label)


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _check_safetensors(path: Path) -> None:
    """Read the header and every tensor: a truncated or corrupt file fails here, not mid-run."""
    from safetensors import safe_open

    fault = None
    try:
        with safe_open(str(path), framework="pt") as f:
            names = list(f.keys())
            if not names:
                raise ValueError("it holds no tensors")
            for name in names:
                tensor = f.get_slice(name)[:]  # materialises the bytes; fails on truncation
                fault = fault or _non_finite(name, tensor)
    except Exception as err:  # safetensors raises its own SafetensorError and others
        raise InputError(f"weights file {path} is corrupt or truncated ({str(err).splitlines()[0]}).",
                         "Re-save the checkpoint with save_pretrained(safe_serialization=True).") from None
    if fault:
        raise InputError(f"{fault} in {path}.", NON_FINITE_HINT)


NON_FINITE_HINT = "The checkpoint is damaged or its training diverged; save it again from a model with finite weights."


def _non_finite(name: str, tensor) -> str | None:
    """'weights of NAME contain NaN (k of n values)' when a float tensor is not all finite."""
    import torch

    if not tensor.is_floating_point():
        return None
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return None
    nan = int(torch.isnan(tensor).sum())
    what = "NaN" if nan else "Inf"
    count = nan if nan else int((~finite).sum())
    return f"weights of '{name}' contain {what} ({count} of {tensor.numel()} values)"


def inspect_checkpoint(model_dir: str | Path, allow_pickle: bool = False) -> Checkpoint:
    path = Path(model_dir)
    if not path.exists():
        raise InputError(f"model directory {path} does not exist.")
    if not path.is_dir():
        raise InputError(f"{path} is not a directory.", "Pass the directory that holds config.json and the weights.")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{path} has no config.json.", "Pass a Hugging Face checkpoint saved with save_pretrained().")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise InputError(f"{config_path} is not valid JSON ({err}).") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_path} must hold a JSON object.")
    if config.get("auto_map"):
        raise InputError(f"{path} needs trust_remote_code (config.json has auto_map); mcompress does not run code from checkpoints.",
                         f"Use a model whose type is one of: {', '.join(SUPPORTED_MODEL_TYPES)}.")
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise InputError(f"model type '{model_type}' is not supported.",
                         f"Supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}.")
    architectures = config.get("architectures") or []
    architecture = next((a for a in architectures if task_for_architecture(a)), None)
    if architecture is None:
        heads = ", ".join(f"*{t.head_suffix}" for t in all_tasks())
        raise InputError(f"architecture {architectures or '(none)'} is not supported; mcompress needs a task head.",
                         f"Supported: {heads} (fine-tune the model for your task first).")
    task = task_for_architecture(architecture)

    id2label_raw = config.get("id2label") or {}
    try:
        id2label = {int(k): str(v) for k, v in id2label_raw.items()}
    except (TypeError, ValueError):
        raise InputError(f"{config_path}: id2label keys must be integers.") from None
    if not id2label or sorted(id2label) != list(range(len(id2label))):
        raise InputError(f"{config_path}: id2label must map 0..N-1 to label names.",
                         "Save the checkpoint with id2label/label2id set.")
    label2id = {v: k for k, v in id2label.items()}
    task.check_labels(id2label, f"{config_path} id2label")  # e.g. a tagger's IOB2, checked before any work

    weights = path / "model.safetensors"
    if weights.is_file():
        _check_safetensors(weights)
    else:
        pickle = next((path / n for n in PICKLE_WEIGHTS if (path / n).is_file()), None)
        if pickle is None:
            raise InputError(f"{path} has no model.safetensors.", "Save the weights with save_pretrained(safe_serialization=True).")
        if not allow_pickle:
            raise InputError(f"{path} has only pickle weights ({pickle.name}); pickles can run code when loaded.",
                             "Convert to model.safetensors, or pass --allow-pickle (loaded with weights_only=True).")
        weights = pickle
    if not any((path / n).is_file() for n in VOCABULARY_FILES):
        raise InputError(f"{path} has no tokenizer files ({', '.join(VOCABULARY_FILES)}).",
                         "Save the tokenizer next to the model with tokenizer.save_pretrained().")

    hidden = config.get("hidden_size", config.get("dim"))
    heads = config.get("num_attention_heads", config.get("n_heads"))
    return Checkpoint(path, config, model_type, architecture, task.name, label2id, id2label, weights,
                      int(hidden), int(heads), _sha256([config_path, weights]))


def load_model_and_tokenizer(ckpt: Checkpoint):
    """Load the PyTorch model (eval mode, FP32) and its tokenizer, offline."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    auto_model = getattr(transformers, get_task(ckpt.task).auto_model)

    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.path, local_files_only=True)
    except Exception as err:
        raise InputError(f"cannot load the tokenizer from {ckpt.path}: {str(err).splitlines()[0]}") from None
    if ckpt.weights_file.suffix == ".safetensors":
        model = auto_model.from_pretrained(
            ckpt.path, local_files_only=True, dtype=torch.float32, use_safetensors=True)
    else:
        config = AutoConfig.from_pretrained(ckpt.path, local_files_only=True)
        model = auto_model.from_config(config)
        state = torch.load(ckpt.weights_file, map_location="cpu", weights_only=True)
        fault = next((f for f in (_non_finite(n, t) for n, t in state.items() if isinstance(t, torch.Tensor)) if f), None)
        if fault:
            raise InputError(f"{fault} in {ckpt.weights_file}.", NON_FINITE_HINT)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing:
            raise InputError(f"{ckpt.weights_file} lacks weights the model needs (e.g. {missing[0]}).")
    model.eval()
    return model, tokenizer
