"""Tagged sentences for token classification (NER): loading, IOB2 checks, sub-token alignment.

Inputs (``--eval-data``/``--calib-data`` when the checkpoint is a tagger):

- CoNLL-style files (``.conll``, ``.txt``, ``.iob``, ``.bio``): one word a line, fields separated
  by whitespace, the word in the first field and its tag in the last (CoNLL-2003's
  ``word POS chunk NER`` and plain ``word TAG`` both work); a blank line ends a sentence;
  ``-DOCSTART-`` lines are skipped. A file with a single field per line is unlabelled text
  (calibration only).
- JSONL: one sentence a line, ``{"tokens": [...], "tags": [...]}`` (column names set with
  ``--text-column``/``--label-column``); tags are names from the label map or integer ids.
- a split dir written by ``mcompress example ner`` (``train/validation/test.jsonl``).

Tags must be IOB2 (``O``, ``B-TYPE`` opens an entity, ``I-TYPE`` continues one of the same type).
The checkpoint's label map is checked for that scheme, and gold tags for IOB2 order: an ``I-X``
that follows ``O`` or another type is IOB1 (or broken) data, and an error.

Sub-token alignment: the words of a sentence are tokenized with ``is_split_into_words=True``;
the FIRST sub-token of each word carries the word's tag in training and its prediction in
evaluation; later sub-tokens, special tokens and padding are ignored (label -100). Words cut off
by ``max_length`` are predicted ``O`` (their gold entities count as missed).

For everything that only needs text (calibration, latency inputs, length batching, hashing),
a sentence is its words joined by single spaces: BERT-family pre-tokenizers split on whitespace
first, so this tokenizes to the same sub-tokens as the split words.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mcompress.calibration.datasets import data_lines, label_id_of, read_data_text, read_rows, resolve_data_file
from mcompress.core.limits import brief
from mcompress.core.errors import InputError

CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio", ".iob2")
IGNORE_INDEX = -100  # the label of sub-tokens that are not a word's first (PyTorch's CE default)
_IOB2 = re.compile(r"^(?P<prefix>[BI])-(?P<type>\S+)$")


@dataclass(frozen=True)
class TaggedSentences:
    words: list[list[str]]
    labels: list[list[int]] | None  # tag ids per word; None for unlabelled text (calibration only)
    source: str
    tag_names: tuple[str, ...] = ()  # the label map the tags were mapped through, in id order
    texts: list[str] = field(init=False, repr=False, compare=False)

    task = "token-classification"

    def __post_init__(self):
        object.__setattr__(self, "texts", [" ".join(w) for w in self.words])

    def __len__(self) -> int:
        return len(self.words)

    def head(self, n: int | None) -> "TaggedSentences":
        if n is None or n >= len(self.words):
            return self
        return TaggedSentences(self.words[:n], None if self.labels is None else self.labels[:n], self.source,
                               self.tag_names)

    def select(self, indices) -> "TaggedSentences":
        """The sentences at ``indices``, in that order."""
        return TaggedSentences([self.words[i] for i in indices],
                               None if self.labels is None else [self.labels[i] for i in indices], self.source,
                               self.tag_names)

    def without_labels(self) -> "TaggedSentences":
        return TaggedSentences(self.words, None, self.source, self.tag_names)

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for i, words in enumerate(self.words):
            tags = "" if self.labels is None else " ".join(map(str, self.labels[i]))
            digest.update(f"{tags}\t{chr(31).join(words)}\n".encode())
        return digest.hexdigest()


# -- the label map ---------------------------------------------------------------------------------

def entity_types(id2label: dict[int, str], where: str = "the checkpoint's label map") -> list[str]:
    """The entity types of an IOB2 label map, sorted; InputError naming the first label that is
    not ``O``/``B-TYPE``/``I-TYPE``, or an ``I-TYPE`` without its ``B-TYPE``."""
    labels = set(id2label.values())
    if "O" not in labels:
        raise InputError(f"{where} has no 'O' tag ({', '.join(sorted(labels))}); mcompress scores IOB2 taggers.",
                         "Label the checkpoint with IOB2 tags: O, B-TYPE, I-TYPE.")
    types = set()
    for label in sorted(labels - {"O"}):
        match = _IOB2.match(label)
        if not match:
            raise InputError(f"{where} holds '{label}', which is not an IOB2 tag (O, B-TYPE, I-TYPE); "
                             "other schemes (IOBES/BILOU, bare types) are not supported.",
                             "Convert the tags to IOB2 and fine-tune with that label map.")
        types.add(match["type"])
    missing = sorted(t for t in types if f"B-{t}" not in labels)
    if missing:
        raise InputError(f"{where} has I-{missing[0]} but no B-{missing[0]}; IOB2 opens every entity with B-.",
                         "Convert the tags to IOB2 (IOB1 data starts entities with I-).")
    return sorted(types)


def check_iob2_order(tags: list[str], where: str) -> None:
    """Gold tags in IOB2 order: every ``I-X`` continues a ``B-X`` or ``I-X``."""
    previous = "O"
    for i, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            raise InputError(f"{where}: tag '{tag}' of word {i + 1} follows '{previous}', which is not IOB2 "
                             "(the data looks like IOB1, where entities may start with I-).",
                             "Convert the tags to IOB2: the first word of every entity is B-TYPE.")
        previous = tag


# -- loading -------------------------------------------------------------------------------------

def read_conll(path: Path) -> tuple[list[list[str]], list[list[str]] | None, list[int]]:
    """(words, tags or None, first line number of each sentence)."""
    words, tags, starts = [], [], []
    sentence_words, sentence_tags, start = [], [], 0
    fields_per_line = set()
    raw = read_data_text(path, "Give a file with at least one sentence.")
    for line_no, line in enumerate(data_lines(path, raw), start=1):
        parts = line.split()
        if parts and parts[0] == "-DOCSTART-":
            continue
        if not parts:
            if sentence_words:
                words.append(sentence_words)
                tags.append(sentence_tags)
                starts.append(start)
            sentence_words, sentence_tags = [], []
            continue
        if not sentence_words:
            start = line_no
        fields_per_line.add(min(len(parts), 2))
        sentence_words.append(parts[0])
        sentence_tags.append(parts[-1] if len(parts) > 1 else "")
    if sentence_words:
        words.append(sentence_words)
        tags.append(sentence_tags)
        starts.append(start)
    if not words:
        raise InputError(f"data file {path} holds no sentences.", "CoNLL files need one word a line, sentences separated by blank lines.")
    if fields_per_line == {1}:
        return words, None, starts
    if 1 in fields_per_line:
        sentence = next(i for i, t in enumerate(tags) if "" in t)
        raise InputError(f"{path}:{starts[sentence] + tags[sentence].index('')}: a word without a tag, while other lines have one.",
                         "Give every line of a CoNLL file a word and its tag (the last field).")
    return words, tags, starts


def _jsonl_sentences(path: Path, tokens_column: str, tags_column: str):

    rows = read_rows(path)
    if not rows:
        raise InputError(f"data file {path} has no sentences.")
    columns = set(rows[0])
    if tokens_column not in columns:
        raise InputError(f"data file {path} has no tokens column '{tokens_column}' (columns: {', '.join(sorted(columns))}).",
                         "A tagger's JSONL needs a list of words per line; name its column with --text-column.")
    has_tags = tags_column in columns
    words, tags = [], []
    for i, row in enumerate(rows, start=1):
        sentence = row.get(tokens_column)
        if not isinstance(sentence, list) or not sentence or not all(isinstance(w, str) and w.strip() for w in sentence):
            raise InputError(f"{path}: sentence {i} has no list of non-empty words in '{tokens_column}'.")
        words.append([w.strip() for w in sentence])
        if has_tags:
            sentence_tags = row.get(tags_column)
            if not isinstance(sentence_tags, list) or len(sentence_tags) != len(sentence):
                got = len(sentence_tags) if isinstance(sentence_tags, list) else type(sentence_tags).__name__
                raise InputError(f"{path}: sentence {i} has {len(sentence)} words but {got} tags in '{tags_column}'.",
                                 "Give one tag per word.")
            tags.append([str(t).strip() for t in sentence_tags])
    return words, (tags if has_tags else None), list(range(1, len(rows) + 1))


def load_tagged_sentences(path: str | Path, label2id: dict[str, int], tokens_column: str = "tokens",
                          tags_column: str = "tags", split: str = "test", require_labels: bool = True) -> TaggedSentences:
    """Load a CoNLL/JSONL file (or one split of a split dir), check the tags, map them to ids."""

    tag_names = tuple(name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1]))
    path = resolve_data_file(path, split, "Pass a CoNLL/JSONL file or a split dir written by `mcompress example ner`.")
    suffix = path.suffix.lower()
    if suffix in CONLL_SUFFIXES:
        words, tags, starts = read_conll(path)
        where = lambda i: f"{path}:{starts[i]}"
    elif suffix in (".jsonl", ".json"):
        words, tags, starts = _jsonl_sentences(path, tokens_column, tags_column)
        where = lambda i: f"{path}: sentence {i + 1}"
    else:
        raise InputError(f"data file {path} has an unsupported extension '{suffix}' for a tagger.",
                         f"Use CoNLL ({', '.join(CONLL_SUFFIXES)}), JSONL with tokens and tags, or a split dir.")
    if tags is None:
        if require_labels:
            raise InputError(f"data file {path} has no tags (column '{tags_column}' or a CoNLL tag field).",
                             "Evaluation needs a tag for every word.")
        return TaggedSentences(words, None, str(path), tag_names)
    id2label = {i: name for name, i in label2id.items()}
    labels = []
    for i, sentence_tags in enumerate(tags):
        names = []
        for tag in sentence_tags:
            if tag not in label2id:
                tag_id = label_id_of(tag, len(id2label))
                if tag_id is not None and tag_id in id2label:
                    tag = id2label[tag_id]
                else:
                    raise InputError(f"{where(i)}: tag {brief(tag)!r} is not in the checkpoint's label map "
                                     f"({brief(', '.join(sorted(label2id)), 200)}).",
                                     "Fix the tag, or use the checkpoint whose config.json label2id has it.")
            names.append(tag)
        check_iob2_order(names, where(i))
        labels.append([label2id[t] for t in names])
    return TaggedSentences(words, labels, str(path), tag_names)


def write_tagged_jsonl(path: Path, words: list[list[str]], tags: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for sentence, sentence_tags in zip(words, tags):
            f.write(json.dumps({"tokens": sentence, "tags": sentence_tags}, ensure_ascii=False) + "\n")


# -- sub-token alignment ---------------------------------------------------------------------------

def tokenize_words(tokenizer, words: list[list[str]], max_length: int):
    """Tokenize pre-split sentences (padded to the longest); returns (int64 numpy inputs, the
    position of each word's first sub-token per sentence, words beyond max_length dropped)."""
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length,
                        padding="longest", return_tensors="np")
    first_positions = []
    for i in range(len(words)):
        positions, previous = [], None
        for position, word in enumerate(encoded.word_ids(i)):
            if word is not None and word != previous:
                positions.append(position)
            previous = word
        first_positions.append(positions)
    inputs = {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}
    return inputs, first_positions


def aligned_labels(first_positions: list[list[int]], labels: list[list[int]], sequence_length: int) -> np.ndarray:
    """Training targets: each word's tag at its first sub-token, IGNORE_INDEX everywhere else."""
    out = np.full((len(labels), sequence_length), IGNORE_INDEX, dtype=np.int64)
    for i, (positions, tags) in enumerate(zip(first_positions, labels)):
        out[i, positions] = tags[: len(positions)]
    return out


PREDICTED = -1  # the target of a word whose tag is unknown (untagged text): the teacher's/model's argmax


def word_targets(first_positions: list[list[int]], labels: list[list[int]] | None, sequence_length: int) -> np.ndarray:
    """Training targets of a batch: the tag at each word's first sub-token (PREDICTED for untagged
    text), IGNORE_INDEX at every other position."""
    if labels is None:
        labels = [[PREDICTED] * len(p) for p in first_positions]
    return aligned_labels(first_positions, labels, sequence_length)


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first word, last word) of every entity in one sentence's IOB2 tags."""
    found, start, current = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[0], tag[2:]) if tag != "O" and len(tag) > 2 and tag[1] == "-" else ("O", None)
        begins = prefix == "B" or (prefix == "I" and kind != current)
        if current is not None and (prefix == "O" or begins):
            found.add((current, start, i - 1))
            current = None
        if begins:
            start, current = i, kind
    return found
