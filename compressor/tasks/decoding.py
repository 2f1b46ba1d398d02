"""What the bundle runtime (compressor/bundle/runtime.py) needs from a task: how raw texts are
tokenized, and how a batch's logits become predictions, with numpy and tokenizers only (no torch,
transformers or metrics). Each task names its decoder in its registry line (core/task.py,
``TaskEntry.runtime_decoder``); the runtime and the server only call the ``RuntimeDecoder``
methods, so they never test for a task.

- Text classification (``class_scores``): a text is tokenized whole; one row of logits per text;
  {"label", "score" (its softmax probability), "scores" {label: probability}}.
- Token classification (``word_tags``): a text is split into words at whitespace (the gate's data
  are words joined by single spaces, calibration/tagged.py), the words are tokenized pre-split
  (``is_pretokenized``, as the gate's ``is_split_into_words``), each word is tagged from its first
  sub-token's argmax, words cut off by max_sequence_length are tagged O, and the IOB2 tags are read
  into entities with seqeval's semantics (calibration.tagged.entities): {"entities": [{"type",
  "start", "end" (character offsets in the text, end exclusive), "text", "score" (the mean of its
  words' tag probabilities)}]}.

Monitoring (compressor/serve/monitor.py) observes each prediction as (label, confidence) pairs,
``observations``: a classification is one pair (label, score); a tagging is one pair per entity
(its type, its score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcompress.calibration.tagged import entities

_WORD = re.compile(r"\S+")


def softmax(logits):
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Encoded:
    """One batch as the model is fed it: the tokenizer's encodings, and per text the character
    spans of its words (None for tasks that tokenize texts whole)."""

    encodings: list
    word_spans: list[list[tuple[int, int]]] | None = None

    @property
    def token_lengths(self) -> list[int]:
        """Tokens per text after truncation, special tokens included, padding excluded."""
        return [int(sum(e.attention_mask)) for e in self.encodings]

    @property
    def truncated(self) -> list[bool]:
        """Whether each text lost tokens to max_sequence_length."""
        return [bool(e.overflowing) for e in self.encodings]


class RuntimeDecoder:
    """The runtime's view of a task: encode a batch of texts, decode its logits."""

    def encode(self, tokenizer, texts: list[str]) -> Encoded:
        return Encoded(tokenizer.encode_batch(texts))

    def decode(self, logits, encoded: Encoded, texts: list[str], labels: list[str]) -> list[dict]:
        raise NotImplementedError

    def observations(self, prediction: dict) -> list[tuple[str, float]]:
        raise NotImplementedError


class ClassScores(RuntimeDecoder):
    def decode(self, logits, encoded, texts, labels):
        results = []
        for row in softmax(logits) if len(logits) else []:
            best = int(row.argmax())
            results.append({"label": labels[best], "score": float(row[best]),
                            "scores": {label: float(p) for label, p in zip(labels, row)}})
        return results

    def observations(self, prediction):
        return [(prediction["label"], prediction["score"])]


def _first_subtokens(word_ids) -> dict[int, int]:
    """word index -> position of its first sub-token (words cut off by truncation are absent)."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


class WordTags(RuntimeDecoder):
    def encode(self, tokenizer, texts):
        spans = [[m.span() for m in _WORD.finditer(text)] for text in texts]
        words = [[text[s:e] for s, e in text_spans] for text, text_spans in zip(texts, spans)]
        return Encoded(tokenizer.encode_batch(words, is_pretokenized=True), spans)

    def decode(self, logits, encoded, texts, labels):
        probabilities = softmax(logits) if len(logits) else []
        results = []
        for row, encoding, spans, text in zip(probabilities, encoded.encodings, encoded.word_spans, texts):
            first = _first_subtokens(encoding.word_ids)
            tags, confidences = ["O"] * len(spans), [1.0] * len(spans)
            for word, position in first.items():
                best = int(row[position].argmax())
                tags[word], confidences[word] = labels[best], float(row[position][best])
            found = []
            for kind, start, end in sorted(entities(tags), key=lambda e: e[1]):
                begin, finish = spans[start][0], spans[end][1]
                found.append({"type": kind, "start": begin, "end": finish, "text": text[begin:finish],
                              "score": sum(confidences[start:end + 1]) / (end - start + 1)})
            results.append({"entities": found})
        return results

    def observations(self, prediction):
        return [(entity["type"], entity["score"]) for entity in prediction["entities"]]


class_scores = ClassScores()
word_tags = WordTags()
