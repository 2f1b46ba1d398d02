"""Token classification (NER): entity-level F1 with seqeval semantics, CoNLL/JSONL tagged data,
first-sub-token alignment, the entity-F1 gate, and `mcompress run` end to end on a tiny tagger
trained and evaluated on a CoNLL-2003 subset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import NER_LABELS, batched_score, ort_session, tree_digest, write_conll
from mcompress.calibration.tagged import (IGNORE_INDEX, aligned_labels, entity_types,
                                          load_tagged_sentences, tokenize_words)
from mcompress.cli import app
from mcompress.metrics.entity_metrics import entities, entity_report, f1_from_counts, sentence_counts
from mcompress.core.errors import ExitCode, InputError

LABEL2ID = {n: i for i, n in enumerate(NER_LABELS)}
TYPES = ["LOC", "MISC", "ORG", "PER"]


# -- entity F1 -----------------------------------------------------------------------------------

def test_entities_follow_seqeval_default_mode():
    assert entities(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 1), ("LOC", 3, 3)}
    # I- after O opens an entity; a type change closes one and opens another; B- after B- splits
    assert entities(["O", "I-ORG", "I-ORG"]) == {("ORG", 1, 2)}
    assert entities(["B-PER", "I-LOC", "I-LOC"]) == {("PER", 0, 0), ("LOC", 1, 2)}
    assert entities(["B-PER", "B-PER", "I-PER"]) == {("PER", 0, 0), ("PER", 1, 2)}
    assert entities(["O", "O"]) == set()


def test_entity_f1_matches_seqeval_readme_example():
    # seqeval's README: f1_score(y_true, y_pred) == 0.50 (one of two entities found; MISC span off by one)
    gold = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    counts = sentence_counts(gold, pred, ["MISC", "PER"])
    assert counts.shape == (2, 2, 3)
    report = entity_report(counts, ["MISC", "PER"])
    assert report["micro"]["f1"] == pytest.approx(0.5)
    assert report["micro"]["precision"] == pytest.approx(0.5) and report["micro"]["recall"] == pytest.approx(0.5)
    assert report["per_type"]["PER"]["f1"] == 1.0 and report["per_type"]["MISC"]["f1"] == 0.0
    assert float(f1_from_counts(np.array([0, 0, 0]))) == 0.0


# -- data ----------------------------------------------------------------------------------------

def test_conll_and_jsonl_give_the_same_sentences(tmp_path):
    sentences = [(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                 (["Peter", "Blackburn"], ["B-PER", "I-PER"])]
    conll = load_tagged_sentences(write_conll(tmp_path / "a.conll", sentences), LABEL2ID)
    two_columns = tmp_path / "b.txt"
    two_columns.write_text("EU B-ORG\nrejects O\nGerman B-MISC\ncall O\n\nPeter B-PER\nBlackburn I-PER\n")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in sentences))
    ids = tmp_path / "d.jsonl"  # tags may be ids
    ids.write_text("".join(json.dumps({"tokens": w, "tags": [LABEL2ID[x] for x in t]}) + "\n" for w, t in sentences))
    loaded = [load_tagged_sentences(p, LABEL2ID) for p in (two_columns, jsonl, ids)]
    assert conll.words == [w for w, _ in sentences] and conll.texts[1] == "Peter Blackburn"
    assert conll.labels == [[3, 0, 7, 0], [1, 2]]
    assert all(d.content_hash() == conll.content_hash() for d in loaded)
    unlabelled = tmp_path / "e.conll"
    unlabelled.write_text("EU\nrejects\n\nPeter\n")
    calib = load_tagged_sentences(unlabelled, LABEL2ID, require_labels=False)
    assert calib.labels is None and calib.words == [["EU", "rejects"], ["Peter"]]


@pytest.mark.parametrize("content, expect", [
    ("EU B-ORG\nrejects O\n\nPeter B-PERSON\n", "tag 'B-PERSON' is not in the checkpoint's label map"),
    ("Peter I-PER\nBlackburn I-PER\n", "not IOB2"),
    ("EU B-ORG\nsays O\nPeter I-PER\n", "tag 'I-PER' of word 3 follows 'O'"),
    ("EU B-ORG\nrejects\n", "a word without a tag"),
])
def test_bad_tags_are_input_errors(tmp_path, content, expect):
    path = tmp_path / "bad.conll"
    path.write_text(content)
    with pytest.raises(InputError, match=expect.replace("(", r"\(").replace(")", r"\)")):
        load_tagged_sentences(path, LABEL2ID)


@pytest.mark.parametrize("labels, expect", [
    (["O", "S-PER", "B-PER", "I-PER", "E-PER"], "'E-PER', which is not an IOB2 tag"),
    (["O", "PER", "LOC"], "'LOC', which is not an IOB2 tag"),
    (["O", "I-PER"], "has I-PER but no B-PER"),
    (["B-PER", "I-PER"], "has no 'O' tag"),
])
def test_label_maps_that_are_not_iob2(labels, expect):
    with pytest.raises(InputError, match=expect):
        entity_types(dict(enumerate(labels)))
    assert entity_types(dict(enumerate(NER_LABELS))) == TYPES


def test_first_subtoken_carries_the_tag(minilm_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    words = [["Washingtonians", "visit", "Paris"], ["Hi"]]
    inputs, first = tokenize_words(tokenizer, words, 32)
    ids = inputs["input_ids"][0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert len(tokenizer.tokenize("Washingtonians")) > 1  # the case this test is about
    assert first[0][0] == 1 and pieces[first[0][1]] == "visit" and pieces[first[0][2]] == "paris"
    labels = aligned_labels(first, [[5, 0, 5], [0]], ids.shape[0])
    assert labels[0, 1] == 5 and (labels[0, 2:first[0][1]] == IGNORE_INDEX).all()  # continuation pieces ignored
    assert labels[0, 0] == IGNORE_INDEX and labels[1, 0] == IGNORE_INDEX  # [CLS]
    assert (labels[1, first[1][0] + 1:] == IGNORE_INDEX).all()  # [SEP] and padding
    # truncation drops the words that do not fit, never a word's first piece alone
    _, cut = tokenize_words(tokenizer, words[:1], 4)
    assert cut[0] == first[0][:1] or len(cut[0]) < len(first[0])


# -- evaluation and the gate -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tagger(tiny_tagger):
    import torch

    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer

    torch.set_num_threads(1)
    ckpt = inspect_checkpoint(tiny_tagger)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    test = load_tagged_sentences(tiny_tagger / "splits", ckpt.label2id, split="test")
    return ckpt, model, tokenizer, test


@pytest.mark.slow
def test_tagger_checkpoint_is_detected(tagger):
    ckpt, model, _, _ = tagger
    assert ckpt.task == "token-classification" and type(model).__name__ == "BertForTokenClassification"


def test_evaluation_scores_entities_and_tags_truncated_words_o(tagger):
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks import evaluate

    _, model, tokenizer, test = tagger
    result = evaluate(TorchRunner(model), tokenizer, test, 128, 8)
    assert result.metric == "entity_f1" and result.n == len(test) and result.details["truncated_words"] == 0
    assert 0.05 < result.score < 1  # the tiny tagger finds some entities, not all
    assert result.score == pytest.approx(result.details["micro"]["f1"])
    assert len(result.predictions) == sum(len(w) for w in test.words)
    # the same metric from the predicted tags, recounted independently of the evaluation's counts
    names, cursor, predicted = list(NER_LABELS), 0, []
    for words in test.words:
        predicted.append([names[i] for i in result.predictions[cursor:cursor + len(words)]])
        cursor += len(words)
    gold = [[names[i] for i in tags] for tags in test.labels]
    tp = sum(len(entities(g) & entities(p)) for g, p in zip(gold, predicted))
    n_pred, n_gold = sum(len(entities(p)) for p in predicted), sum(len(entities(g)) for g in gold)
    assert result.score == pytest.approx(2 * tp / (n_pred + n_gold))
    short = evaluate(TorchRunner(model), tokenizer, test, 8, 8)
    assert short.details["truncated_words"] > 0
    cut = [i for i, words in enumerate(test.words) if len(tokenize_words(tokenizer, [words], 8)[1][0]) < len(words)]
    first_cut = cut[0]
    start = sum(len(w) for w in test.words[:first_cut])
    kept = len(tokenize_words(tokenizer, [test.words[first_cut]], 8)[1][0])
    assert (short.predictions[start + kept:start + len(test.words[first_cut])] == NER_LABELS.index("O")).all()


def test_entity_f1_gate_bootstraps_sentences(tagger):
    from mcompress.core.task import get_task
    from mcompress.metrics.evaluation import EvalResult
    from mcompress.metrics.gates import accuracy_drop_gate

    stats = np.array([[2, 2, 2], [1, 1, 1], [0, 1, 1], [3, 3, 4]] * 10)
    worse = stats.copy()
    worse[::4, 0] = 1  # the candidate misses one entity in every fourth sentence
    make = lambda s: EvalResult(0.9, np.zeros(3), np.zeros(3), np.zeros((3, 9)), get_task("token-classification"), stats=s,
                                details={"micro": {}, "per_type": {}})
    ref, cand = make(stats), make(worse)
    gate = accuracy_drop_gate(ref, cand, 1.0)
    expected = (float(f1_from_counts(stats.sum(0))) - float(f1_from_counts(worse.sum(0)))) * 100
    assert gate.name == "entity_f1_drop" and gate.value == pytest.approx(expected) and not gate.passed
    assert gate.ci95[0] <= gate.value <= gate.ci95[1] and gate.ci95[0] > 0
    same = accuracy_drop_gate(ref, make(stats.copy()), 1.0)
    assert same.value == 0 and same.ci95 == (0.0, 0.0) and same.passed


# -- end to end ----------------------------------------------------------------------------------

def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["run", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tagger_build(tiny_tagger, fast_recipe, tmp_path_factory):
    """One run on the CoNLL test subset given as a CoNLL file, calibrated on the train split."""
    model = tmp_path_factory.mktemp("ner-e2e") / "tagger"
    shutil.copytree(tiny_tagger, model)
    before = tree_digest(model)
    out = model.parent / "build"
    code, output = _run(str(model), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(fast_recipe),
                        "--eval-data", str(model / "conll" / "test.conll"), "--calib-data", str(model / "splits" / "train.jsonl"))
    return code, output, out, model, before


def test_tagger_run_end_to_end_on_conll_subset(tagger_build, tagger):
    from mcompress.metrics.evaluation import TorchRunner
    from mcompress.tasks import evaluate
    from mcompress.engines.onnxruntime_cpu import OrtRunner

    code, output, out, model, before = tagger_build
    _, torch_model, tokenizer, test = tagger
    assert code == ExitCode.OK, output
    assert "entity f1" in output.lower() and tree_digest(model) == before
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "entity_f1" and report["source"]["task"] == "token-classification"
    assert report["gates"][0]["name"] == "entity_f1_drop" and report["gates"][0]["ci95"]
    assert set(report["reference"]["per_entity"]) == set(TYPES) == set(report["build"]["per_entity"])
    # the CoNLL file holds the same sentences as the JSONL test split, and the reference scores the same
    assert report["data"]["eval"]["sha256"] == test.content_hash()
    assert report["reference"]["score"] == pytest.approx(evaluate(TorchRunner(torch_model), tokenizer, test, 128).score, abs=1e-6)
    # the build re-scored here from a fresh session gives the report's figure
    rescored = evaluate(OrtRunner(out / "model.onnx", 1), tokenizer, test, 128, report["recipe"]["eval"]["batch_size"])
    # (batched by eval.batch_size, as the gate's batched mode does; the gate took the worse of that and each sentence alone)
    assert batched_score(report) == pytest.approx(rescored.score, abs=1e-6)
    assert report["build"]["score"] == report["build"]["entity_f1"]
    assert report["build"]["score"] == pytest.approx(min(m["score"] for m in report["as_deployed"]["modes"]), abs=1e-6)
    assert abs(report["build"]["score"] - report["reference"]["score"]) * 100 == pytest.approx(abs(report["gates"][0]["value"]), abs=2e-4)
    md = (out / "report.md").read_text()
    assert "## Entities" in md and "| PER |" in md and "entity F1" in md
    assert "Entities (eval data" in (out / "report.html").read_text()


@pytest.mark.slow
def test_tagger_openvino_cpu_build_gates_entity_f1(tiny_tagger, fast_recipe, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from mcompress.engines.openvino_cpu import OpenVINORunner
    from mcompress.tasks import evaluate

    out = tmp_path / "ov"
    code, output = _run(str(tiny_tagger), "--target", "openvino-cpu", "--out", str(out), "--recipe", str(fast_recipe))
    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "openvino-cpu" and report["metric"] == "entity_f1"
    assert report["gates"][0]["name"] == "entity_f1_drop"
    assert set(report["build"]["per_entity"]) == set(TYPES)
    # the shipped IR, re-scored here on a fresh CPU plugin, gives the report's figure
    from transformers import AutoTokenizer

    from mcompress.calibration.tagged import load_tagged_sentences

    test = load_tagged_sentences(tiny_tagger / "splits", LABEL2ID, "tokens", "tags", "test")
    rescored = evaluate(OpenVINORunner(out / report["artifact"]["model_file"], 1),
                        AutoTokenizer.from_pretrained(out), test, 128, report["recipe"]["eval"]["batch_size"])
    assert batched_score(report) == pytest.approx(rescored.score, abs=1e-6)


@pytest.mark.slow
def test_tagger_cpu_auto_races_both_builds_and_gates_entity_f1(tiny_tagger, fast_recipe, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    out = tmp_path / "auto"
    code, output = _run(str(tiny_tagger), "--target", "cpu-auto", "--out", str(out), "--recipe", str(fast_recipe))
    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    choice = report["cpu_auto"]
    assert {"onnx-cpu", "onnx-cpu+fp32", "openvino-cpu"} <= set(choice["candidates"])
    assert report["target"] == choice["candidates"][choice["chosen"]]["target"]
    assert report["metric"] == "entity_f1" and report["gates"][0]["name"] == "entity_f1_drop"
    for name, candidate in choice["candidates"].items():
        assert candidate["metric"] == "entity_f1" and candidate["passed"], (name, candidate)
        assert candidate["drop"] == candidate["accuracy_drop"]
        assert candidate["race"]["b1"]["p50_ms"] > 0
    other = next(n for n in choice["candidates"] if n != choice["chosen"])
    other_report = json.loads((out / "candidates" / f"{other}.report.json").read_text())
    assert other_report["gates"][0]["name"] == "entity_f1_drop"
    assert choice["candidates"][other]["drop"] == other_report["gates"][0]["value"]
    assert "## Entities" in (out / "report.md").read_text()


def test_tagger_build_has_per_token_logits_with_dynamic_sequence(tagger_build, tagger):
    code, _, out, _, _ = tagger_build
    assert code == ExitCode.OK
    _, torch_model, tokenizer, test = tagger
    session = ort_session(out / "model.onnx")
    for words in (test.words[:1], test.words[:3]):
        inputs, _ = tokenize_words(tokenizer, words, 128)
        logits = session.run(["logits"], {i.name: inputs[i.name] for i in session.get_inputs()})[0]
        assert logits.shape == (*inputs["input_ids"].shape, len(NER_LABELS))


def test_optimum_loads_the_tagger_build(tagger_build):
    from optimum.onnxruntime import ORTModelForTokenClassification

    code, _, out, _, _ = tagger_build
    assert code == ExitCode.OK
    model = ORTModelForTokenClassification.from_pretrained(out)
    assert model.config.id2label[1] == "B-PER"


@pytest.mark.parametrize("case", ["iob1_eval_data", "unknown_tag", "bioes_checkpoint", "classifier_metric"])
def test_tagger_bad_input(case, tiny_tagger, fast_recipe, tmp_path):
    model = tmp_path / "tagger"
    shutil.copytree(tiny_tagger, model)
    extra, expect = [], None
    if case == "iob1_eval_data":
        data = tmp_path / "eval.conll"
        data.write_text("Peter I-PER\nBlackburn I-PER\n\nin O\nParis I-LOC\n")
        extra, expect = ["--eval-data", str(data)], "not IOB2"
    elif case == "unknown_tag":
        data = tmp_path / "eval.jsonl"
        data.write_text(json.dumps({"tokens": ["Peter", "Paris"], "tags": ["B-PERSON", "B-LOC"]}) + "\n")
        extra, expect = ["--eval-data", str(data)], "tag 'B-PERSON' is not in the checkpoint's label map"
    elif case == "bioes_checkpoint":
        config = json.loads((model / "config.json").read_text())
        config["id2label"] = {str(i): n.replace("I-", "E-") for i, n in enumerate(NER_LABELS)}
        config["label2id"] = {n: int(i) for i, n in config["id2label"].items()}
        (model / "config.json").write_text(json.dumps(config))
        expect = "which is not an IOB2 tag"
    else:
        recipe = tmp_path / "metric.yaml"
        recipe.write_text(fast_recipe.read_text() + "gates:\n  metric: accuracy\n")
        extra, expect = ["--recipe", str(recipe)], "gates.metric 'accuracy' does not apply"
    before = tree_digest(model)
    out = tmp_path / "build"
    args = [str(model), "--out", str(out)] + (extra if "--recipe" in extra else extra + ["--recipe", str(fast_recipe)])
    code, output = _run(*args)
    assert code == ExitCode.BAD_INPUT, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in output.replace("\n", ""), output
    assert not out.exists() and tree_digest(model) == before


def test_ner_example_settings_are_recorded():
    from mcompress.examples.finetune import CORPORA, EXAMPLES

    settings = EXAMPLES["ner"]
    assert settings.corpus == "conll2003" and CORPORA["conll2003"] is not None
    assert 0 < settings.train_examples <= 14041 and settings.max_length == 128


def test_conll2003_corpus_is_iob2_with_standard_split():
    from mcompress.examples import corpora as example_data
    from mcompress.calibration.tagged import check_iob2_order

    corpus = example_data.conll2003(0)
    assert (len(corpus.train), len(corpus.validation), len(corpus.test)) == (14041, 3250, 3453)
    assert corpus.labels[0] == "O" and entity_types(dict(enumerate(corpus.labels))) == TYPES
    for words, tags in corpus.test:
        check_iob2_order(tags, "test")
        assert len(words) == len(tags) and set(tags) <= set(corpus.labels)


def test_a_tagger_bundle_predicts_the_builds_entities_with_character_offsets(tagger_build, tagger, tmp_path):
    """Taggers get bundles: the torch-free runtime splits raw text into words, tags each from its
    first sub-token and returns entities with character offsets; they are exactly the entities of
    the build's own ONNX model scored the gate's way (predict_word_logits, same batches)."""
    from mcompress.bundle.package import package_build
    from mcompress.engines.onnxruntime_cpu import OrtRunner
    from mcompress.runtime import load
    from mcompress.tasks.token_classification import predict_word_logits

    code, _, out, _, _ = tagger_build
    _, _, tokenizer, test = tagger
    assert code == ExitCode.OK
    manifest = package_build(out, tmp_path / "t.mcpkg")
    assert manifest["task"] == "token-classification" and manifest["monitoring"]["signals"]["label"]["counts"]
    bundle = load(tmp_path / "t.mcpkg")
    texts = [" ".join(words) for words in test.words]
    got = bundle.predict(texts)
    word_logits = predict_word_logits(OrtRunner(out / "model.onnx", 1), tokenizer, test.words, bundle.max_sequence_length)
    found = 0
    for words, text, logits, prediction in zip(test.words, texts, word_logits, got):
        tags = [NER_LABELS[i] for i in logits.argmax(-1)] + ["O"] * (len(words) - len(logits))
        starts = np.cumsum([0] + [len(w) + 1 for w in words])[:-1].tolist()
        expected = sorted((kind, starts[first], starts[last] + len(words[last])) for kind, first, last in entities(tags))
        assert sorted((e["type"], e["start"], e["end"]) for e in prediction["entities"]) == expected
        for e in prediction["entities"]:
            assert e["text"] == text[e["start"]:e["end"]] and 0 < e["score"] <= 1
        found += len(expected)
    assert found >= 10  # the tiny tagger does tag entities, so the comparison is not vacuous
    # raw text with irregular spacing: offsets point into the text as given
    [spaced] = bundle.predict(["  John   Smith  lives in   London . "])
    for e in spaced["entities"]:
        assert e["text"] == "  John   Smith  lives in   London . "[e["start"]:e["end"]] and not e["text"].startswith(" ")


def test_tagger_sensitivity_ranks_layers_over_words(tiny_tagger, fast_recipe, tmp_path):
    recipe = tmp_path / "sensitivity.yaml"
    recipe.write_text(fast_recipe.read_text().replace("quantize:\n", "quantize:\n  mode: dynamic\n")
                      + "sensitivity:\n  run: always\n  examples: 16\n  granularity: block\n")
    out = tmp_path / "build"
    code, output = _run(str(tiny_tagger), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe))
    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    fallback = next(p for p in report["passes"] if p["name"] == "fallback")["metrics"]
    sens = fallback["sensitivity"]
    assert sens["examples"] == 16 and any(row["layer"].endswith("encoder.layer.1") for row in sens["layers"])
    assert all(0 <= row["accuracy"] <= 1 and row["mean_kl"] >= 0 for row in sens["layers"])
    assert 0 <= fallback["initial"]["score"] <= 1  # entity F1 on the selection split


def test_tagger_prune_and_distill(tiny_tagger, fast_recipe, tmp_path):
    """Structured pruning (a layer dropped by ablation, heads and neurons) scored on per-word
    losses, then word-level distillation from the original with hidden-state matching,
    early-stopped on entity F1; the pruned tagger exports and is gated like any other."""
    recipe = tmp_path / "prune-distill.yaml"
    recipe.write_text(fast_recipe.read_text().replace("quantize:\n", "quantize:\n  mode: dynamic\n")
                      + "prune:\n  keep_layers: 1\n  heads_per_layer: 1\n  ffn_neurons_per_layer: 32\n  importance_examples: 64\n"
                      + "distill:\n  hidden_weight: 1.0\n  steps: 6\n  batch_size: 16\n  eval_every: 3\n  eval_examples: 24\n  lr: 0.003\n"
                      + "gates:\n  max_drop: 100\n")
    out = tmp_path / "build"
    code, output = _run(str(tiny_tagger), "--target", "onnx-cpu", "--out", str(out), "--recipe", str(recipe), "--no-cache")
    assert code == ExitCode.OK, output
    report = json.loads((out / "report.json").read_text())
    passes = {p["name"]: p for p in report["passes"]}
    assert list(passes) == ["prune", "distill", "export", "optimize", "quantize"]
    assert passes["prune"]["metrics"]["heads_per_layer"] == [1] and passes["prune"]["metrics"]["ffn_size"] == 32
    assert len(passes["prune"]["metrics"]["layer_ablation"]) == 1 and len(passes["prune"]["metrics"]["kept_layers"]) == 1
    assert passes["prune"]["metrics"]["importance_loss"] == "cross-entropy vs labels"
    distill = passes["distill"]["metrics"]
    assert distill["steps"] >= 3 and distill["train_labels"] == "given" and len(distill["history"]) >= 1
    # early stopping kept the step with the best selection entity F1 (ties: lower CE)
    best = max(distill["history"], key=lambda h: (h["selection_accuracy"], -h["selection_ce"]))
    assert distill["best_step"] == best["step"] and all(np.isfinite(h["loss"]) for h in distill["history"])
    assert 0 <= passes["distill"]["score"] <= 1 and report["metric"] == "entity_f1"
    assert passes["export"]["flops_seq128"] < report["reference"]["flops_seq128"]
    config = json.loads((out / "config.json").read_text())
    assert config["intermediate_size"] == 32 and config["architectures"] == ["BertForTokenClassification"]
    assert config["num_hidden_layers"] == 1
