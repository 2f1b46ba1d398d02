"""Perplexity of a causal language model on held-out documents, with a stated windowing.

Tokens. Each document (one line of a .txt file, one record of a JSONL file) is tokenized on its
own, with the tokenizer's special tokens (SmolLM2's adds BOS), never truncated. Token ``t`` of a
document is predicted from tokens ``0..t-1``; token 0 is never scored.

Windowing (Hugging Face's "strided" perplexity). A model sees at most ``context`` tokens, so a
document of ``n`` tokens is cut into windows ``[begin, end)`` with ``begin = k·stride`` (k = 0, 1,
...; but at most the previous window's end minus one, so that the first new token has a token of
context) and ``end = min(begin + context, n)``, the last one ending at ``n``. Each window scores only
the tokens that no earlier window scored (``[previous end, end)``; the first window from token 1),
so every token is scored exactly once and, beyond the first window, with at least
``context - stride`` tokens of context. ``stride == context`` gives disjoint windows (cheapest,
least context); a smaller stride costs ``context / stride`` times the compute.

Negative log-likelihood. For a scored token with logits ``z`` (over the vocabulary) and target
``y``: ``nll = logsumexp(z) - z[y]`` (natural log), computed in float64 from the model's logits.

Per document, the counts are ``[Σ nll, scored tokens]``; over any set of documents
``perplexity = exp(Σ nll / Σ tokens)`` — token-weighted, the corpus perplexity, not a mean of
per-document perplexities. The gated score is ``1 / perplexity = exp(-Σ nll / Σ tokens)``, the
geometric mean of the probabilities given to the true next tokens, in (0, 1] and higher-is-better
like accuracy. The gate's value is the relative perplexity increase of a candidate over the
reference, ``(ppl_c / ppl_r - 1) · 100`` percent; its 95% interval is the paired bootstrap over
documents (metrics/gates.py): resample documents, sum both models' counts, recompute.

Top-1: the argmax of the logits at every scored position. Against the text it is the next-token
accuracy; against the original model's argmax at the same positions, the top-1 agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcompress.core.errors import InputError


@dataclass(frozen=True)
class Windowing:
    context: int  # tokens a window holds (the recipe's max_length)
    stride: int  # tokens between window starts
    batch_tokens: int  # windows per model call = max(1, batch_tokens // context), at most the batch size

    def __post_init__(self):
        if not 1 <= self.stride <= self.context:
            raise InputError(f"perplexity stride {self.stride} must be between 1 and the context length {self.context}.",
                             "Set perplexity.stride <= max_length.")

    def as_dict(self) -> dict:
        return {"context_length": self.context, "stride": self.stride}


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window of a document of ``n_tokens`` tokens;
    the scored positions ``first..end-1`` of all windows cover ``1..n_tokens-1`` exactly once."""
    out, scored_to, begin = [], 1, 0
    while scored_to < n_tokens:
        start = min(begin, scored_to - 1)
        end = min(start + context, n_tokens)
        out.append((start, end, scored_to))
        scored_to = end
        begin += stride
    return out


@dataclass
class TokenScores:
    """Per scored token (documents concatenated, in order): its nll, its target, the model's argmax;
    and per document the [Σ nll, tokens] counts."""

    nll: np.ndarray  # float64
    targets: np.ndarray  # int64
    argmax: np.ndarray  # int64
    counts: np.ndarray  # (documents, 2)
    rows: np.ndarray | None = None  # the logits of every scored token (tokens, vocabulary), when kept


def document_tokens(tokenizer, texts: list[str]) -> list[np.ndarray]:
    return [np.asarray(ids, dtype=np.int64) for ids in tokenizer(texts, truncation=False)["input_ids"]]


def check_enough_text(documents: list[np.ndarray], windowing: Windowing, source: str) -> None:
    """InputError when the documents together hold fewer tokens than one window: a perplexity
    over less than one context length says little about the model at that length."""
    total = sum(len(d) for d in documents)
    if total <= windowing.context:
        raise InputError(f"{source} holds {total} tokens in {len(documents)} documents, fewer than one window of "
                         f"{windowing.context} tokens (max_length) plus one.",
                         "Give more text (one document a line), or lower max_length.")


def _nll_and_argmax(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of logits (tokens, vocabulary) and their targets: natural-log nll, float64; argmax."""
    rows = logits.astype(np.float64)
    top = rows.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(rows - top).sum(axis=-1)) + top[:, 0]
    return lse - rows[np.arange(len(targets)), targets], logits.argmax(-1).astype(np.int64)


def score_documents(runner, documents: list[np.ndarray], windowing: Windowing, pad_id: int, batch_size: int,
                    on_batch=None, keep_rows: bool = False) -> TokenScores:
    """Every document's tokens scored through ``runner.logits`` (right-padded windows, batched by
    window length so padding stays small); see the module docstring for the windowing.
    ``keep_rows``: also keep the scored logits rows (tokens x vocabulary: for small data only)."""
    spans = [(d, *w) for d, ids in enumerate(documents) for w in windows(len(ids), windowing.context, windowing.stride)]
    per_call = max(1, min(batch_size, windowing.batch_tokens // windowing.context))
    order = sorted(range(len(spans)), key=lambda i: spans[i][2] - spans[i][1])
    results: list = [None] * len(spans)
    for start in range(0, len(order), per_call):
        chosen = [spans[i] for i in order[start:start + per_call]]
        longest = max(end - begin for _, begin, end, _ in chosen)
        ids = np.full((len(chosen), longest), pad_id, dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, (d, begin, end, _) in enumerate(chosen):
            ids[row, :end - begin], mask[row, :end - begin] = documents[d][begin:end], 1
        logits = runner.logits({k: v for k, v in (("input_ids", ids), ("attention_mask", mask)) if k in runner.input_names})
        for row, (i, (d, begin, end, first)) in enumerate(zip(order[start:start + per_call], chosen)):
            targets, rows = documents[d][first:end], np.asarray(logits[row, first - begin - 1:end - begin - 1])
            results[i] = (targets, *_nll_and_argmax(rows, targets), rows if keep_rows else None)
        if on_batch:
            on_batch(len(chosen))
    return _concatenate(spans, results, len(documents))


def _concatenate(spans, results, n_documents: int) -> TokenScores:
    counts = np.zeros((n_documents, 2))
    for (d, *_), (targets, nll, *_) in zip(spans, results):
        counts[d] += (nll.sum(), len(targets))
    if not results:
        empty = np.zeros(0)
        return TokenScores(empty, empty.astype(np.int64), empty.astype(np.int64), counts)
    targets, nll, argmax = (np.concatenate(parts) for parts in list(zip(*results))[:3])
    rows = np.concatenate([r[3] for r in results]) if results[0][3] is not None else None
    return TokenScores(nll, targets, argmax, counts, rows)


def inverse_perplexity(counts: np.ndarray) -> np.ndarray:
    """exp(-Σ nll / Σ tokens) of summed [Σ nll, tokens] counts (last axis): 1 / perplexity; 0 when no
    token was scored."""
    counts = np.asarray(counts, dtype=np.float64)
    mean = np.divide(counts[..., 0], counts[..., 1], out=np.full(counts.shape[:-1], np.inf), where=counts[..., 1] > 0)
    return np.exp(-mean)


def perplexity_increase(reference_score, candidate_score) -> np.ndarray:
    """(ppl_c / ppl_r - 1) * 100 from inverse perplexities (scores): percent; inf for a zero score."""
    reference_score, candidate_score = np.asarray(reference_score, float), np.asarray(candidate_score, float)
    ratio = np.divide(reference_score, candidate_score, out=np.full(np.shape(candidate_score), np.inf),
                      where=candidate_score > 0)
    return (ratio - 1.0) * 100.0
