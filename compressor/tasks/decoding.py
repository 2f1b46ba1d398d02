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

- Causal language modelling (``continuation``): a prompt is tokenized whole (special tokens as the
  tokenizer adds them, e.g. a BOS), without truncation or padding (a prompt over the context is
  refused, not cut), and continued by the generation loop (compressor/engines/generation.py) on the
  KV cache; {"text" (the continuation, special tokens left out), "tokens" (its ids), "stopped"}.
  Its bundles carry no labels; packaging records how to generate (``generation``: the context
  length, the stop tokens, the KV shape, the defaults) from the build's config.json and
  generation_config.json (``manifest_fields``).

A decoder's capabilities are attributes, so that packaging and the runtime ask them instead of
testing a task: ``labelled`` (bundles carry labels.json and the logits' width is the label count),
``padded`` (the tokenizer pads batches, so a pad token is required), ``generates`` (predictions are
continuations from the generation loop, not one pass's logits), ``monitored`` (packaging records
the prediction histograms of the eval data; generating for every eval text would take minutes).

Monitoring (compressor/serve/monitor.py) observes each prediction as (label, confidence) pairs,
``observations``: a classification is one pair (label, score); a tagging is one pair per entity
(its type, its score).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mcompress.calibration.tagged import entities
from mcompress.engines.generation import context_length_of, kv_shape_of

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

    labelled = True
    padded = True
    generates = False
    monitored = True

    def manifest_fields(self, read_json) -> dict:
        """Task-specific manifest entries, from the build's JSON files (``read_json(name)``: the
        parsed file, or None when the build has none)."""
        return {}

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


def _token_ids(value) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if type(v) is int and v >= 0]


class Continuation(RuntimeDecoder):
    labelled = False
    padded = False
    generates = True
    monitored = False
    DEFAULT_MAX_NEW_TOKENS = 32

    def encode(self, tokenizer, texts):
        return Encoded([tokenizer.encode(text) for text in texts])

    def manifest_fields(self, read_json):
        from mcompress.core.errors import InputError

        config = read_json("config.json") or {}
        generation = read_json("generation_config.json") or {}
        stops = _token_ids(generation.get("eos_token_id", config.get("eos_token_id")))
        if not stops:
            raise InputError("the build names no EOS token (eos_token_id in generation_config.json or config.json), "
                             "so generation could never stop at the end of a text.",
                             "Set eos_token_id in the checkpoint's config.json and rebuild.")
        context = context_length_of(config)
        if context is None:
            raise InputError("the build's config.json gives no context length (max_position_embeddings or n_positions).",
                             "Rebuild it from a checkpoint whose config.json has one.")
        kv_heads, head_dim = kv_shape_of(config) or (None, None)
        max_new = generation.get("max_new_tokens")
        return {"generation": {
            "context_length": context, "stop_token_ids": sorted(set(stops)),
            "bos_token_id": (_token_ids(generation.get("bos_token_id", config.get("bos_token_id"))) or [None])[0],
            "kv_heads": kv_heads, "head_dim": head_dim,
            "max_new_tokens": max_new if type(max_new) is int and max_new > 0 else self.DEFAULT_MAX_NEW_TOKENS}}

    def observations(self, prediction):
        return []  # a continuation has no label or confidence; the server still watches prompt lengths


class_scores = ClassScores()
word_tags = WordTags()
continuation = Continuation()
