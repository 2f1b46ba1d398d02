"""One check per fuzz target, shared by the hypothesis properties (tests/fuzz/test_fuzz_*.py),
the corpus replay (test_fuzz_corpus.py) and the atheris harnesses (fuzz/): each runs the real
entry points on one input file and fails on anything but acceptance or a one-line InputError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import onnxruntime  # noqa: F401 - imported here, once, rather than inside the first example's deadline
import torch  # noqa: F401 - the same (inspect_checkpoint reads the tensors with torch)
from typer.testing import CliRunner

from fuzz_support import accepted_or_input_error
from mcompress.bundle.runtime import Bundle, load, read_bundle
from mcompress.calibration.datasets import LabelledTexts, load_labelled_texts, read_texts
from mcompress.calibration.tagged import TaggedSentences, load_tagged_sentences
from mcompress.cli import app
from mcompress.core.checkpoint import Checkpoint, inspect_checkpoint
from mcompress.core.errors import ExitCode, InputError
from mcompress.core.recipe import Recipe, load_recipe

LABELS = {"neg": 0, "pos": 1}
TAGS = {"O": 0, "B-PER": 1, "I-PER": 2}


def run_cli(args: list[str]):
    """The CLI's result; an internal error (exit 1) is run again with --debug and its exception
    raised, so that hypothesis and libFuzzer tell different bugs apart by where they happen."""
    result = CliRunner().invoke(app, args)
    if result.exit_code == ExitCode.INTERNAL:
        debug = CliRunner().invoke(app, ["--debug", *args])
        if debug.exception is not None and not isinstance(debug.exception, SystemExit):
            raise debug.exception
    return result


def check_data_file(path: Path):
    """Every reader on one file: classifier (labelled, unlabelled), prediction and tagger."""
    outcomes = [accepted_or_input_error(load_labelled_texts, path, LABELS),
                accepted_or_input_error(load_labelled_texts, path, LABELS, require_labels=False),
                accepted_or_input_error(read_texts, path)]
    tagged = accepted_or_input_error(load_tagged_sentences, path, TAGS, require_labels=False)
    # The CLI reads --input before it opens the bundle: exit 2 either way, one line.
    cli = run_cli(["predict", str(path.parent / "missing.mcpkg"), "--input", str(path)])
    assert cli.exit_code == ExitCode.BAD_INPUT, cli.output
    assert len([line for line in cli.output.splitlines() if line.strip()]) == 1, cli.output
    for result in outcomes[:2]:
        if isinstance(result, LabelledTexts):
            assert all(isinstance(t, str) and t.strip() for t in result.texts)
            assert result.labels is None or all(label in (0, 1) for label in result.labels)
    if isinstance(tagged, TaggedSentences) and tagged.labels is not None:
        assert all(len(w) == len(t) and set(t) <= {0, 1, 2} for w, t in zip(tagged.words, tagged.labels))
    return outcomes + [tagged]


def check_recipe_file(path: Path):
    result = accepted_or_input_error(load_recipe, path)
    assert isinstance(result, (Recipe, InputError))
    return result


CONFIG = {"model_type": "bert", "architectures": ["BertForSequenceClassification"], "hidden_size": 4,
          "num_attention_heads": 2, "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10,
          "max_position_embeddings": 8, "id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
TENSORS = {"bert.embeddings.word_embeddings.weight": (10, 4), "bert.embeddings.position_embeddings.weight": (8, 4),
           "classifier.weight": (2, 4), "classifier.bias": (2,)}


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def valid_weights() -> tuple[dict, bytes]:
    header, data, offset = {"__metadata__": {"format": "pt"}}, b"", 0
    for name, shape in TENSORS.items():
        blob = np.full(shape, 0.5, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
        data, offset = data + blob, offset + len(blob)
    return header, data


def write_checkpoint(root, config, weights: bytes):
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
    (root / "model.safetensors").write_bytes(weights)
    (root / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    return root


def check_checkpoint_dir(root: Path):
    """inspect_checkpoint on one model dir; when accepted, its label map is consistent and
    safetensors reads the weights whose header was checked."""
    result = accepted_or_input_error(inspect_checkpoint, root)
    if isinstance(result, Checkpoint):
        assert sorted(result.id2label) == list(range(result.num_labels))
        assert result.label2id == {name: i for i, name in result.id2label.items()}
        given_label2id = result.config.get("label2id")
        assert given_label2id is None or {k: int(v) for k, v in given_label2id.items()} == result.label2id
        from safetensors import safe_open

        with safe_open(str(root / "model.safetensors"), framework="numpy") as f:  # the header told the truth
            assert f.get_tensor("classifier.weight").shape[0] == result.num_labels
    return result


def check_bundle_file(path: Path):
    """read_bundle, load (then predict) and `mcompress inspect` on one bundle file, alone in its folder."""
    folder = path.parent
    read = accepted_or_input_error(read_bundle, path)
    loaded = accepted_or_input_error(load, path)
    if isinstance(loaded, Bundle):
        assert not isinstance(read, Exception)
        predictions = loaded.predict(["a film", "", "a " * 40])
        assert len(predictions) == 3 and all(set(p["scores"]) == set(loaded.labels) for p in predictions)
    result = run_cli(["inspect", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (ExitCode.OK, ExitCode.BAD_INPUT), result.output
    if result.exit_code == ExitCode.BAD_INPUT:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert [p.name for p in folder.iterdir()] == [path.name]  # nothing extracted or written
    return loaded
