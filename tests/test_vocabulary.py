"""Vocabulary pruning (passes/prune/vocabulary.py) on the tiny checkpoint (MiniLM's 30,522-piece
WordPiece tokenizer): the training text segments exactly as before and gets the same logits, other
text segments into kept pieces without [UNK], the build ships a consistent tokenizer that Optimum
and the bundle runtime load, and a cache hit restores the pruned tokenizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import batched_score
from mcompress.calibration.datasets import tokenize
from mcompress.cli import app
from mcompress.core.errors import ExitCode
from mcompress.core.pass_base import PassContext
from mcompress.core.state import TOKENIZER_DIR, ModelKind, ModelState
from mcompress.passes.prune import vocabulary as V
from mcompress.targets import get_target

UNSEEN = ["Zebras quietly juggled xylophones in Reykjavik.", "naïve café owners — überraschend!", "qwxz" * 30]


def _context(setup, work_dir: Path) -> PassContext:
    work_dir.mkdir(parents=True, exist_ok=True)
    recipe = setup["recipe"].with_overrides(**{"prune.vocabulary.reserve": "single-characters"})
    return PassContext(recipe, get_target("onnx-cpu"), work_dir, setup["train"], setup["validation"], 1.0)


@pytest.fixture(scope="module")
def pruned(setup, tmp_path_factory):
    state = ModelState(ModelKind.TORCH, setup["ckpt"], setup["tokenizer"], torch_model=setup["model"])
    return V.PruneVocabulary().call(state, _context(setup, tmp_path_factory.mktemp("vocab")))


def test_kept_vocabulary_and_its_metrics(setup, pruned):
    metrics = pruned.metrics
    assert pruned.modified and metrics["vocabulary_before"] == 30522
    used = set(V.piece_counts(setup["tokenizer"], setup["train"].texts))
    assert len(used) < metrics["vocabulary_kept"] < 3000  # the used pieces, specials and ~2 x 1,000 single characters
    assert pruned.state.torch_model.get_input_embeddings().num_embeddings == metrics["vocabulary_kept"]
    assert pruned.state.torch_model.config.vocab_size == metrics["vocabulary_kept"]
    assert setup["model"].get_input_embeddings().num_embeddings == 30522  # the reference is untouched
    seg = metrics["selection_split"]
    assert 0.0 <= seg["tokens_out_of_vocabulary"] <= seg["texts_resegmented"] <= 1.0 and seg["tokens"] > 0


def test_training_text_keeps_its_segmentation_and_logits(setup, pruned):
    old, new = setup["tokenizer"], pruned.state.tokenizer
    texts = setup["train"].texts
    old_pieces = [old.convert_ids_to_tokens(ids) for ids in old(texts)["input_ids"]]
    new_pieces = [new.convert_ids_to_tokens(ids) for ids in new(texts)["input_ids"]]
    assert old_pieces == new_pieces  # same pieces, [CLS]/[SEP] included; only their ids changed
    before = {k: torch.from_numpy(v) for k, v in tokenize(old, texts[:16], 64).items()}
    after = {k: torch.from_numpy(v) for k, v in tokenize(new, texts[:16], 64).items()}
    assert not torch.equal(before["input_ids"], after["input_ids"])  # renumbered
    with torch.inference_mode():
        np.testing.assert_allclose(pruned.state.torch_model(**after).logits.numpy(),
                                   setup["model"](**before).logits.numpy(), atol=1e-6)


def test_unseen_text_segments_into_kept_pieces_without_unknowns(pruned, setup):
    new, old = pruned.state.tokenizer, setup["tokenizer"]
    for text in UNSEEN:
        ids = new(text, add_special_tokens=False)["input_ids"]
        old_unknown = old(text, add_special_tokens=False)["input_ids"].count(old.unk_token_id)
        assert ids.count(new.unk_token_id) == old_unknown  # the single-character reserve: nothing new becomes [UNK]
        assert max(ids) < len(new)
    assert new.pad_token_id == 0 and new.convert_ids_to_tokens([new.cls_token_id, new.sep_token_id]) == ["[CLS]", "[SEP]"]


def test_written_tokenizer_files_agree(pruned):
    folder = Path(pruned.state.annotations[TOKENIZER_DIR])
    spec = json.loads((folder / "tokenizer.json").read_text())
    vocab_txt = (folder / "vocab.txt").read_text().splitlines()
    assert sorted(spec["model"]["vocab"], key=spec["model"]["vocab"].get) == vocab_txt
    assert sorted(spec["model"]["vocab"].values()) == list(range(len(vocab_txt)))
    decoder = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
    assert {int(i): e["content"] for i, e in decoder.items()} == {t["id"]: t["content"] for t in spec["added_tokens"]}


def test_a_bpe_tokenizer_is_refused_with_one_line():
    with pytest.raises(V.VocabularyPruningError, match="supports WordPiece"):
        V.kept_ids({"model": {"type": "BPE", "vocab": {}, "merges": []}}, {}, "none", 1)


VOCAB_RECIPE = "prune:\n  vocabulary:\n    reserve: single-characters\ngates:\n  max_drop: 100\n"


def _run(model: Path, out: Path, recipe: Path):
    result = CliRunner().invoke(app, ["run", str(model), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.mark.slow
def test_vocabulary_pruned_build_end_to_end_and_from_the_cache(tmp_path, tiny_checkpoint, fast_recipe, monkeypatch):
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    from mcompress.bundle.package import package_build
    from mcompress.runtime import load

    monkeypatch.setenv("MCOMPRESS_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "tiny"
    shutil.copytree(tiny_checkpoint, model)
    recipe = tmp_path / "vocab.yaml"
    recipe.write_text(fast_recipe.read_text() + VOCAB_RECIPE)
    reports = []
    for out in (tmp_path / "build", tmp_path / "again"):  # the second run restores every pass from the cache
        code, output = _run(model, out, recipe)
        assert code == ExitCode.OK, output
        reports.append(json.loads((out / "report.json").read_text()))
    first, second = reports
    assert [p["name"] for p in first["passes"]][:2] == ["vocabulary", "export"]
    assert all(p["cached"] for p in second["passes"]) and second["build"] == first["build"]
    kept = first["passes"][0]["metrics"]["vocabulary_kept"]
    build = tmp_path / "again"
    assert json.loads((build / "config.json").read_text())["vocab_size"] == kept
    assert len((build / "vocab.txt").read_text().splitlines()) == kept
    assert first["artifact"]["size_ratio"] < 0.2  # the embedding was ~97% of the tiny model's weights
    seg = first["data"]["eval"]["segmentation"]  # the test split was not used to choose the pieces
    assert 0 <= seg["tokens_out_of_vocabulary"] <= seg["texts_resegmented"] <= 1 and seg["tokens"] > 0
    assert "its own (pruned) vocabulary" in (build / "report.md").read_text()

    texts = [json.loads(l)["text"] for l in (model / "splits" / "test.jsonl").read_text().splitlines() if l.strip()]
    tokenizer = AutoTokenizer.from_pretrained(build)
    ort = ORTModelForSequenceClassification.from_pretrained(build)
    with torch.inference_mode():
        optimum_labels = ort(**tokenizer(texts, padding=True, return_tensors="pt")).logits.argmax(-1).tolist()
    package_build(build, tmp_path / "tiny.mcpkg")
    bundle = load(tmp_path / "tiny.mcpkg")
    predicted = [bundle.labels.index(p["label"]) for p in bundle.predict(texts)]
    rows = [json.loads(l)["label"] for l in (model / "splits" / "test.jsonl").read_text().splitlines() if l.strip()]
    assert np.mean([bundle.labels[i] == r for i, r in zip(predicted, rows)]) == pytest.approx(batched_score(second))
    assert optimum_labels == predicted  # 24 texts: one padded batch either way
