"""Causal language modelling (``*ForCausalLM``, GPT-2's ``GPT2LMHeadModel``), gated by perplexity.

Data: documents, one a line of a .txt file or a record of a JSONL file's text column, or a split
dir (calibration/documents.py); the text is its own target, so there are no labels. Each document
is one bootstrap unit with counts [Σ nll, scored tokens]; the metric of summed counts is
``1 / perplexity`` (higher is better, in (0, 1]), and the gate ``perplexity_increase`` is the
relative perplexity increase in percent, ``gates.max_ppl_increase``. The windowing (context =
``max_length``, ``perplexity.stride``) and the math are in compressor/metrics/perplexity.py.

``EvalResult`` for this task: ``predictions`` are the model's top-1 next tokens at every scored
position (documents concatenated), ``labels`` the true next tokens, ``accuracy`` the next-token
accuracy, ``agreement`` between two results the top-1 agreement; ``logits`` holds, per scored
token, the log-probability of the true token (the full rows would be tokens x vocabulary).
"""

from __future__ import annotations

import numpy as np

from mcompress.calibration.documents import Documents, load_documents
from mcompress.core.errors import InputError
from mcompress.core.sections import Table
from mcompress.core.task import Task
from mcompress.metrics.evaluation import EvalResult, check_finite_logits
from mcompress.metrics.perplexity import (Windowing, check_enough_text, document_tokens, inverse_perplexity,
                                          perplexity_increase, score_documents)

IGNORE_INDEX = -100  # targets of padding in training batches (torch's cross_entropy default)


class CausalLM(Task):
    name = "causal-lm"
    head_suffix = ("ForCausalLM", "LMHeadModel")  # GPT-2's head is GPT2LMHeadModel
    auto_model = "AutoModelForCausalLM"
    optimum_model = "ORTModelForCausalLM"
    logits_axes = ("batch", "sequence")
    text_column, label_column = "text", "text"
    metric = "perplexity"
    metrics = ("perplexity",)
    summary_columns = (("perplexity", "perplexity"), ("next-token accuracy", "accuracy"))
    model_types = ("llama", "gpt2")
    labelled = False
    optimum_export_task = "text-generation-with-past"
    gate_change = "increase"
    # Decoders quantize weights only (passes/quantize/decoder.py reads this flag on the
    # Task; activation INT8 measured +62% perplexity on SmolLM2).
    weight_only_quantization = True
    kv_cache = True
    # whole layers (block influence or ablation) and FFN neurons; attention heads stay (their
    # grouped KV heads set the KV cache's shape)
    prunable = frozenset({"layers", "ffn"})

    def __init__(self, stride: int | None = None, batch_tokens: int = 2048):
        self.stride = stride  # None: half the context
        self.batch_tokens = batch_tokens

    def for_recipe(self, recipe):
        task = CausalLM(recipe.perplexity.stride, recipe.perplexity.batch_tokens)
        task.windowing(recipe.max_length)  # a stride longer than the window: InputError before any work
        return task

    def windowing(self, max_length: int) -> Windowing:
        return Windowing(max_length, self.stride or max(1, max_length // 2), self.batch_tokens)

    def shown_score(self, score):
        return 1 / score if score else float("inf")

    def gate_budget(self, gates):
        return gates.max_ppl_increase, "relative"

    def drops(self, reference, candidate, drop_type):
        return perplexity_increase(reference, candidate)

    def task_latency(self, request):
        """Prefill ms, decode tokens/s with the KV cache and peak RSS of the original and the build,
        with gates.min_decode_speedup / max_prefill_ms (compressor/metrics/decoder_latency.py)."""
        from mcompress.metrics.decoder_latency import measure_task_latency

        return measure_task_latency(request)

    def prepare_tokenizer(self, tokenizer, where):
        """An EOS token is required (generation stops on it; GPT-2 pads with it); a tokenizer
        without a pad token pads with EOS (padding is masked and never scored)."""
        if tokenizer.eos_token_id is None:
            raise InputError(f"the tokenizer of {where} has no EOS token; a causal LM needs one to end generation.",
                             "Set eos_token in tokenizer_config.json (tokenizer.eos_token = ...; save_pretrained).")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    def load_data(self, path, label2id, text_column=None, label_column=None, split="test", require_labels=True):
        return load_documents(path, text_column or self.text_column, split)

    # -- scoring ---------------------------------------------------------------------------------

    def _scores(self, runner, tokenizer, data: Documents, max_length, batch_size, on_batch=None):
        windowing = self.windowing(max_length)
        documents = document_tokens(tokenizer, data.texts)
        check_enough_text(documents, windowing, data.source)
        scores = score_documents(runner, documents, windowing, tokenizer.pad_token_id, batch_size)
        if on_batch:  # progress is counted in documents
            on_batch(len(data))
        return scores

    def evaluate(self, runner, tokenizer, data, max_length, batch_size=32, on_batch=None, what=None):
        """Perplexity (as its inverse, the score) over the documents, with top-1 predictions."""
        scores = self._scores(runner, tokenizer, data, max_length, batch_size, on_batch)
        log_probs = (-scores.nll).astype(np.float32)
        document_of_token = np.repeat(np.arange(len(data)), scores.counts[:, 1].astype(np.int64))
        check_finite_logits(log_probs[:, None], runner, data.source, what, example_of_row=document_of_token)
        return EvalResult(float((scores.argmax == scores.targets).mean()) if len(scores.targets) else 0.0,
                          scores.argmax, scores.targets, log_probs, self, stats=scores.counts,
                          details={"windowing": self.windowing(max_length).as_dict(), "tokens": int(len(scores.targets))})

    def scored_logits(self, runner, tokenizer, data, max_length, batch_size=32, what=None):
        """One row per scored token: the full logits (tokens x vocabulary; keep ``data`` small)."""
        documents = document_tokens(tokenizer, data.texts)
        scores = score_documents(runner, documents, self.windowing(max_length), tokenizer.pad_token_id, batch_size,
                                 keep_rows=True)
        check_finite_logits(scores.rows, runner, data.source, what)
        return scores.rows.astype(np.float32), scores.targets

    def selection_loss(self, result):
        """The mean negative log-likelihood per scored token (log perplexity): ``logits`` holds
        each token's log-probability of its true next token."""
        return float(-np.mean(result.logits)) if len(result.logits) else 0.0

    def metric_of_counts(self, counts):
        return inverse_perplexity(counts)

    def metric_drop(self, reference, candidate, drop_type):
        # rounded so that float noise cannot tip an exactly-met budget
        return round(float(perplexity_increase(reference.score, candidate.score)), 9)

    def gate_detail(self, reference, candidate):
        windowing = reference.details["windowing"]
        return (f"perplexity {1 / reference.score:.3f} -> {1 / candidate.score:.3f} on {reference.n} documents "
                f"({reference.details['tokens']} scored tokens; windows of {windowing['context_length']} tokens, "
                f"stride {windowing['stride']}); top-1 next tokens agree on {reference.agreement(candidate):.2%}, "
                f"next-token accuracy {reference.accuracy:.4f} -> {candidate.accuracy:.4f}")

    def summary(self, result):
        return {"score": round(result.score, 9), "perplexity": round(1 / result.score, 4) if result.score else None,
                "accuracy": round(result.accuracy, 6)}

    def report_fields(self, result):
        return {"windowing": result.details["windowing"], "scored_tokens": result.details["tokens"]}

    def report_tables(self, report):
        reference, build = report["reference"], report["build"]
        if "perplexity" not in reference or "perplexity" not in build:
            return []
        windowing = reference.get("windowing", {})
        note = (f"Windows of {windowing.get('context_length')} tokens, stride {windowing.get('stride')}; "
                f"{reference.get('scored_tokens')} scored tokens (compressor/metrics/perplexity.py).",)
        rows = (("perplexity", f"{reference['perplexity']:.3f}", f"{build['perplexity']:.3f}",
                 f"{(build['perplexity'] / reference['perplexity'] - 1) * 100:+.2f}%"),
                ("next-token accuracy", f"{reference['accuracy']:.4f}", f"{build['accuracy']:.4f}",
                 f"{(build['accuracy'] - reference['accuracy']) * 100:+.2f} points"))
        return [Table("Language modelling (eval documents)", ("figure", "original", "build", "change"), rows, note)]

    # -- training hooks: every next token is a target, padding is IGNORE_INDEX -------------------

    def training_batch(self, tokenizer, data, indices, max_length):
        from mcompress.calibration.datasets import tokenize

        inputs = tokenize(tokenizer, [data.texts[i] for i in indices], max_length)
        targets = np.full_like(inputs["input_ids"], IGNORE_INDEX)
        targets[:, :-1] = np.where(inputs["attention_mask"][:, 1:] == 1, inputs["input_ids"][:, 1:], IGNORE_INDEX)
        return inputs, targets

    def resolve_targets(self, targets, reference_logits):
        return reference_logits.argmax(-1) if targets is None else targets

    def scored_rows(self, logits, targets):
        keep = targets != IGNORE_INDEX
        return logits[keep], targets[keep]
