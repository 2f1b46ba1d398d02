"""Validating and loading a user's Hugging Face checkpoint, safely.

Everything a run needs from the model directory is checked before any work starts: the config,
the architecture, the label map, the weights (safetensors by default; a pickle checkpoint only
with --allow-pickle, loaded with ``weights_only=True``) and the tokenizer. Files are only read.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from mcompress.core.errors import InputError
from mcompress.core.formats import VOCABULARY_FILES
from mcompress.core.limits import brief_repr, json_loads_bounded, read_text_bounded
from mcompress.core.model_config import HEADS_KEYS, HIDDEN_KEYS, head_dim_of
from mcompress.core.safetensors_header import check_header_matches_config, read_safetensors_header
from mcompress.core.task import all_tasks, get_task, task_for_architecture

# BERT-family encoders whose ONNX export and ONNX Runtime fusions are tested (tests/test_checkpoint.py);
# every task names the model types it supports (Task.model_types), e.g. llama and gpt2 decoders.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "distilbert")
PICKLE_WEIGHTS = ("pytorch_model.bin",)
# Limits of config.json (docs/limits.md); the safetensors header's are in core/safetensors_header.py.
MAX_CONFIG_BYTES = 16 * 1024 ** 2
MAX_LABELS = 100_000
MAX_CONFIG_SIZE = 10_000_000  # any size field below: layers, heads, widths, vocabulary, positions
# Size fields mcompress or transformers read from the config; each must be a positive int.
SIZE_FIELDS = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size",
               "max_position_embeddings", "vocab_size", "type_vocab_size", "dim", "n_heads", "n_layers", "hidden_dim",
               "n_embd", "n_head", "n_layer", "n_positions", "num_key_value_heads")
# The same size under each family's name: BERT/LLaMA, DistilBERT, GPT-2.
POSITIONS_KEYS = ("max_position_embeddings", "n_positions")
LAYERS_KEYS, FFN_KEYS = ("num_hidden_layers", "n_layers", "n_layer"), ("intermediate_size", "hidden_dim", "n_inner")
# Config flags that make a layer's computation depend on its position in the stack (GPT-2's
# scale_attn_by_inverse_layer_idx divides attention scores by the layer's index + 1), so dropping
# earlier layers would change the kept layers' function.
LAYER_INDEX_DEPENDENT_KEYS = ("scale_attn_by_inverse_layer_idx",)
_ID = re.compile(r"[0-9]{1,9}")


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

    @property
    def block_shape(self) -> dict[str, int]:
        """Layers, attention heads per layer and FFN width (what structured pruning keeps a share
        of), read the way recipe validation reads them; 0 where the config does not say."""
        config = self.config
        layers = next((config[k] for k in LAYERS_KEYS if config.get(k)), 0)
        ffn = next((config[k] for k in FFN_KEYS if config.get(k)), 0)
        if not ffn and config.get("n_embd"):  # GPT-2: n_inner null means 4 x n_embd
            ffn = 4 * config["n_embd"]
        return {"layers": int(layers), "heads": int(self.num_attention_heads), "ffn": int(ffn)}

    @property
    def head_dim(self) -> int | None:
        """The size of one attention head (head_dim_of)."""
        return head_dim_of(self.config)

    @property
    def layer_index_dependence(self) -> str | None:
        """The config flag that ties each layer's function to its index, if one is set."""
        return next((k for k in LAYER_INDEX_DEPENDENT_KEYS if self.config.get(k)), None)


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


def _read_config(config_path: Path) -> dict:
    try:
        config = json_loads_bounded(read_text_bounded(config_path, MAX_CONFIG_BYTES, "model config"))
    except ValueError as err:
        raise InputError(f"{config_path} is not valid JSON ({err}).") from None
    if not isinstance(config, dict):
        raise InputError(f"{config_path} must hold a JSON object.")
    for key in SIZE_FIELDS:
        value = config.get(key)
        if value is not None and (type(value) is not int or not 0 < value <= MAX_CONFIG_SIZE):
            raise InputError(f"{config_path}: {key} is {brief_repr(value)}; it must be a whole number from 1 to "
                             f"{MAX_CONFIG_SIZE:,}.", "Save the checkpoint again with save_pretrained().")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise InputError(f"{config_path}: architectures is {brief_repr(architectures)}; it must be a list of class names.")
    if config_value(config, HIDDEN_KEYS) is None or config_value(config, HEADS_KEYS) is None:
        raise InputError(f"{config_path} lacks hidden_size or num_attention_heads.",
                         "Save the checkpoint again with save_pretrained().")
    pruned = config.get("pruned_heads") or {}
    if not (isinstance(pruned, dict) and all(label_id_key(k) is not None and isinstance(v, list)
                                             and all(type(h) is int and h >= 0 for h in v) for k, v in pruned.items())):
        raise InputError(f"{config_path}: pruned_heads must map layer numbers to lists of head numbers.")
    return config


def config_value(config: dict, keys: tuple[str, ...]):
    """The first of ``keys`` that config.json sets (one size under its family's names), or None."""
    return next((config[k] for k in keys if config.get(k) is not None), None)


def supported_model_types() -> tuple[str, ...]:
    """Every model type some task supports, in the tasks' order."""
    return tuple(dict.fromkeys(m for task in all_tasks() for m in task.model_types))


def label_id_key(key) -> int | None:
    """A JSON object key (or int) as a label id: ASCII decimal digits only, else None."""
    if type(key) is int:
        return key
    if isinstance(key, str) and _ID.fullmatch(key):
        return int(key)
    return None


def _label_maps(config: dict, config_path: Path) -> tuple[dict[int, str], dict[str, int]]:
    """id2label (ids exactly 0..N-1, distinct names) and label2id, which must be its inverse when
    the config has one: a map that disagrees with itself would silently score every prediction
    against the wrong label."""
    id2label_raw = config.get("id2label") or {}
    if not isinstance(id2label_raw, dict):
        raise InputError(f"{config_path}: id2label is {type(id2label_raw).__name__}, not a map of ids to label names.",
                         "Save the checkpoint with id2label/label2id set.")
    if len(id2label_raw) > MAX_LABELS:
        raise InputError(f"{config_path}: id2label has {len(id2label_raw):,} labels, over the limit of {MAX_LABELS:,}.")
    id2label = {label_id_key(k): v for k, v in id2label_raw.items()}
    if None in id2label:
        raise InputError(f"{config_path}: id2label keys must be integers.") from None
    if not id2label or sorted(id2label) != list(range(len(id2label))):
        raise InputError(f"{config_path}: id2label must map 0..N-1 to label names.",
                         "Save the checkpoint with id2label/label2id set.")
    bad = next((i for i, name in id2label.items() if not isinstance(name, str) or not name.strip()), None)
    if bad is not None:
        raise InputError(f"{config_path}: id2label[{bad}] is {brief_repr(id2label[bad])}, not a label name.")
    label2id = {name: i for i, name in id2label.items()}
    if len(label2id) < len(id2label):
        name = next(n for n in label2id if sum(v == n for v in id2label.values()) > 1)
        raise InputError(f"{config_path}: id2label gives the label {brief_repr(name)} to more than one id.",
                         "Give every label a distinct name.")
    given = config.get("label2id")
    if given is not None and (not isinstance(given, dict) or {k: label_id_key(v) for k, v in given.items()} != label2id):
        shown = next((f"label2id[{brief_repr(k)}] is {brief_repr(v)}, id2label says {label2id.get(k)}"
                      for k, v in (given.items() if isinstance(given, dict) else [])
                      if label2id.get(k) != label_id_key(v)), None)
        raise InputError(f"{config_path}: label2id disagrees with id2label"
                         f" ({shown or 'they hold different labels'}); every accuracy would be scored against the wrong labels.",
                         "Save the checkpoint with one consistent label map (label2id the inverse of id2label).")
    return id2label, label2id


def inspect_checkpoint(model_dir: str | Path, allow_pickle: bool = False) -> Checkpoint:
    path = Path(model_dir)
    if not path.exists():
        raise InputError(f"model directory {path} does not exist.")
    if not path.is_dir():
        raise InputError(f"{path} is not a directory.", "Pass the directory that holds config.json and the weights.")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise InputError(f"{path} has no config.json.", "Pass a Hugging Face checkpoint saved with save_pretrained().")
    config = _read_config(config_path)
    if config.get("auto_map"):
        raise InputError(f"{path} needs trust_remote_code (config.json has auto_map); mcompress does not run code from checkpoints.",
                         f"Use a model whose type is one of: {', '.join(supported_model_types())}.")
    model_type = config.get("model_type")
    supported = supported_model_types()
    if model_type not in supported:
        raise InputError(f"model type {brief_repr(model_type)} is not supported.",
                         f"Supported model types: {', '.join(supported)}.")
    architecture = next((a for a in config.get("architectures") or [] if task_for_architecture(a)), None)
    if architecture is None:
        heads = ", ".join(f"*{suffix}" for t in all_tasks() for suffix in t.head_suffixes)
        raise InputError(f"architecture {brief_repr(config.get('architectures')) if config.get('architectures') else '(none)'} "
                         "is not supported; mcompress needs a task head.",
                         f"Supported: {heads} (fine-tune the model for your task first).")
    task = task_for_architecture(architecture)
    if model_type not in task.model_types:
        raise InputError(f"model type {brief_repr(model_type)} is not supported with the architecture {architecture} "
                         f"({task.name}).", f"Supported model types for {task.name}: {', '.join(task.model_types)}.")
    id2label, label2id = _label_maps(config, config_path) if task.labelled else ({}, {})
    task.check_labels(id2label, f"{config_path} id2label")  # e.g. a tagger's IOB2, checked before any work

    weights = _weights_file(path, allow_pickle, config, len(id2label))
    if not any((path / n).is_file() for n in VOCABULARY_FILES):
        raise InputError(f"{path} has no tokenizer files ({', '.join(VOCABULARY_FILES)}).",
                         "Save the tokenizer next to the model with tokenizer.save_pretrained().")

    hidden = config_value(config, HIDDEN_KEYS)
    heads = config_value(config, HEADS_KEYS)
    return Checkpoint(path, config, model_type, architecture, task.name, label2id, id2label, weights,
                      int(hidden), int(heads), _sha256([config_path, weights]))


def _weights_file(path: Path, allow_pickle: bool, config: dict, num_labels: int) -> Path:
    weights = path / "model.safetensors"
    if weights.is_file():
        header = read_safetensors_header(weights)
        check_header_matches_config(weights, header, config, num_labels)
        _check_safetensors(weights)
        return weights
    pickle = next((path / n for n in PICKLE_WEIGHTS if (path / n).is_file()), None)
    if pickle is None:
        raise InputError(f"{path} has no model.safetensors.", "Save the weights with save_pretrained(safe_serialization=True).")
    if not allow_pickle:
        raise InputError(f"{path} has only pickle weights ({pickle.name}); pickles can run code when loaded.",
                         "Convert to model.safetensors, or pass --allow-pickle (loaded with weights_only=True).")
    return pickle


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
    get_task(ckpt.task).prepare_tokenizer(tokenizer, str(ckpt.path))
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
