"""The Task interface: everything that differs between the kinds of model mcompress compresses.

A checkpoint's task is read from its architecture (``*ForSequenceClassification``,
``*ForTokenClassification``; compressor/core/checkpoint.py). Generic code (the job, the passes, the
gates, the report) asks the Task, and never tests for a task's or a metric's name. Each task is one
module of ``mcompress.tasks`` (compressor/tasks/) registered by one line in ``TASKS`` below; task
modules are imported only when asked for, since they live above this layer.

Scores are functions of per-example counts (``EvalResult.stats``, one row per bootstrap unit: a
text, a sentence), summed over the examples: the gates' paired bootstrap resamples those rows and
asks the task for the metric of each resample's sums (``metric_of_counts``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from mcompress.core.errors import InputError

if TYPE_CHECKING:
    import numpy as np

    from mcompress.core.sections import Table


@dataclass(frozen=True)
class TaskEntry:
    """A registered task: its Task class, and the torch-free function the bundle runtime turns the
    model's logits into predictions with (None: the task has no bundles yet). The decoder is named
    here, not on the Task, because the runtime must not import the task module (it pulls in the
    metrics and the data loaders)."""

    implementation: str  # "module:Class"
    runtime_decoder: str | None = None  # "module:object", a tasks.decoding.RuntimeDecoder


# name -> TaskEntry; a task registers itself by adding a line here.
TASKS = {
    "text-classification": TaskEntry("mcompress.tasks.text_classification:TextClassification",
                                     runtime_decoder="mcompress.tasks.decoding:class_scores"),
    "token-classification": TaskEntry("mcompress.tasks.token_classification:TokenClassification",
                                      runtime_decoder="mcompress.tasks.decoding:word_tags"),
    "causal-lm": TaskEntry("mcompress.tasks.causal_lm:CausalLM", runtime_decoder="mcompress.tasks.decoding:continuation"),
}
# The task of reports and bundles that do not record one (written before taggers were supported).
UNRECORDED_TASK = "text-classification"


class Task(ABC):
    """One kind of model head and how it is fed, scored, compressed and reported.

    ``data`` below is what ``load_data`` returns (calibration.datasets.LabelledTexts,
    calibration.tagged.TaggedSentences, ...): it has ``texts`` (one string per example, for
    tokenizing, batching and hashing), ``labels`` (None when unlabelled), ``source`` and a
    ``task`` attribute naming its task."""

    name: str
    # the end of the architecture name, e.g. "ForSequenceClassification"; or several (str.endswith's tuple)
    head_suffix: str | tuple[str, ...]
    auto_model: str  # the transformers Auto class that loads the checkpoint
    optimum_model: str  # the optimum.onnxruntime ORTModel class that loads a build
    logits_axes: tuple[str, ...]  # dynamic axes of the exported "logits" output
    # True: the quantize pass quantizes weights only, with the decoder schemes of recipe
    # quantize.decoder (passes/quantize/decoder.py, nncf_weights.py); a causal LM sets it.
    weight_only_quantization: bool = False
    text_column: str  # default data columns of JSONL/CSV inputs
    label_column: str
    metric: str  # the gated metric when gates.metric is auto
    metrics: tuple[str, ...]  # the metrics gates.metric may name
    # (title, key) of the two figures of the report's pass tables: keys of summary()
    summary_columns: tuple[tuple[str, str], tuple[str, str]]
    # model_type values of config.json whose export and evaluation are tested for this task
    model_types: tuple[str, ...] = ("bert", "roberta", "distilbert")
    labelled: bool = True  # whether the checkpoint must carry a label map (id2label/label2id)
    # Optimum's exporter task when the export goes through optimum (a decoder with its KV cache);
    # None: the TorchScript export of the logits alone (passes/export/onnx_export.py).
    optimum_export_task: str | None = None
    # True: the exported model carries a KV cache (past key/values in, present out); only targets
    # whose capabilities say kv_cache_decoders build it (Target.check_task).
    kv_cache: bool = False
    # What the prune pass's structured pruning can remove from this task's models
    # (passes/prune/structured.py; PruneConfig.structures names what a recipe asks for): a recipe
    # that asks for more is refused before work.
    prunable: frozenset[str] = frozenset({"layers", "heads", "ffn", "2:4"})
    gate_change: str = "drop"  # the accuracy gate is named "<metric>_<gate_change>"

    def check_recipe(self, recipe) -> None:
        """InputError for what the recipe asks that this task cannot do (before any work)."""
        asked = recipe.prune.structures() if recipe.prune is not None else {}
        refused = {structure: keys for structure, keys in asked.items() if structure not in self.prunable}
        if refused:
            keys = sorted({k for ks in refused.values() for k in ks})
            raise InputError(f"recipe prune: {self.name} models cannot have their {', '.join(sorted(refused))} pruned "
                             f"(prune.{', prune.'.join(keys)}).",
                             f"Remove {', '.join('prune.' + k for k in keys)}; "
                             f"{self.name} pruning can remove: {', '.join(sorted(self.prunable)) or 'nothing'}.")

    def gate_budget(self, gates) -> tuple[float, str]:
        """(budget, drop_type) of the accuracy gate from the recipe's ``gates`` section."""
        return gates.max_drop, gates.drop_type

    def drops(self, reference: "np.ndarray", candidate: "np.ndarray", drop_type: str) -> "np.ndarray":
        """The gate's value for arrays of both models' metric values (bootstrap resamples): points
        (absolute) or percent of the reference (relative); positive is worse."""
        import numpy as np

        drops = (np.asarray(reference, float) - np.asarray(candidate, float)) * 100.0
        if drop_type == "relative":
            return np.divide(drops, reference, out=np.zeros_like(drops), where=np.asarray(reference) > 0)
        return drops

    def selection_loss(self, result) -> float:
        """The loss that breaks ties between equal validation scores in distillation (an EvalResult
        of the selection split): the cross-entropy of its logit rows against their labels."""
        import numpy as np

        from mcompress.core.numerics import log_softmax

        labels = np.asarray(result.logit_labels(), np.int64)
        log_probs = log_softmax(result.logits)
        return float(-log_probs[np.arange(len(labels)), labels].mean())

    def shown_score(self, score: float) -> float:
        """The gated score as reports show it (a causal LM's perplexity is 1 / score)."""
        return score

    def for_recipe(self, recipe) -> "Task":
        """The task as a recipe configures it (a decoder's perplexity windowing); itself by default."""
        return self

    def prepare_tokenizer(self, tokenizer, where: str) -> None:
        """Checks (InputError) and completes the loaded tokenizer for this task; nothing by default."""

    @property
    def head_suffixes(self) -> tuple[str, ...]:
        return self.head_suffix if isinstance(self.head_suffix, tuple) else (self.head_suffix,)

    def gated_metric(self, recipe_metric: str) -> str:
        """The metric the accuracy gate uses: the task's own for ``auto``, else the recipe's, which
        must be one the task has (InputError otherwise)."""
        metric = self.metric if recipe_metric == "auto" else recipe_metric
        if metric not in self.metrics:
            raise InputError(f"recipe gates.metric '{recipe_metric}' does not apply to a {self.name} model.",
                             f"Use one of: auto, {', '.join(self.metrics)}.")
        return metric

    def check_labels(self, id2label: dict[int, str], where: str) -> None:
        """Checks the checkpoint's label map before any work (InputError); any map by default."""

    # -- data ------------------------------------------------------------------------------------

    @abstractmethod
    def load_data(self, path, label2id: dict[str, int], text_column: str | None, label_column: str | None,
                  split: str = "test", require_labels: bool = True) -> Any:
        """The task's data from a file or a split dir; None columns: the task's defaults."""

    # -- scoring ---------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, runner, tokenizer, data, max_length: int, batch_size: int = 32, on_batch=None,
                 what: str | None = None):
        """``runner`` scored on labelled ``data``: a metrics.evaluation.EvalResult whose ``task`` is
        this task; ``what`` names the model in errors (e.g. "after quantize")."""

    @abstractmethod
    def scored_logits(self, runner, tokenizer, data, max_length: int, batch_size: int = 32,
                      what: str | None = None) -> tuple["np.ndarray", "np.ndarray | None"]:
        """(logits, labels) of the units predictions are made on, as 2-D rows, checked finite; for
        comparing models row by row (passes/quantize/sensitivity.py)."""

    @abstractmethod
    def metric_of_counts(self, counts: "np.ndarray") -> "np.ndarray":
        """The gated metric of summed per-example counts (last axis), in [0, 1]."""

    @abstractmethod
    def metric_drop(self, reference, candidate, drop_type: str) -> float:
        """The gated metric's drop from the reference EvalResult to the candidate's (points, or
        percent of the reference with drop_type relative), robust to float noise at the budget."""

    @abstractmethod
    def gate_detail(self, reference, candidate) -> str:
        """The accuracy gate's sentence: both models' figures and how often their predictions agree."""

    @abstractmethod
    def summary(self, result) -> dict:
        """What the report shows for a model: the gated metric as ``score`` and the task's figures."""

    def report_fields(self, result) -> dict:
        """Extra report.json fields of a model's EvalResult (e.g. a tagger's per entity scores)."""
        return {}

    def report_tables(self, report: dict) -> "list[Table]":
        """The task's own report sections, from report.json's ``reference`` and ``build``."""
        return []

    # -- hooks of the training passes (prune importance, distillation losses), on torch tensors ----

    @abstractmethod
    def training_batch(self, tokenizer, data, indices, max_length: int) -> tuple[dict, "np.ndarray | None"]:
        """Examples ``indices`` of ``data`` as int64 numpy model inputs (padded to the longest) and
        their targets, in the shape ``resolve_targets`` takes; None when ``data`` has no labels."""

    @abstractmethod
    def resolve_targets(self, targets, reference_logits):
        """``targets`` with the open ones (all, when None; untagged words) set to the argmax of
        ``reference_logits`` (the teacher's, or the unpruned model's own)."""

    @abstractmethod
    def scored_rows(self, logits, targets):
        """(rows, targets): the logits at the scored units as 2-D rows, with their targets, so that
        losses treat every task like one label per row."""


    # -- latency beyond the batch latency every build is timed at --------------------------------

    def task_latency(self, request: "TaskLatencyRequest") -> "TaskLatency | None":
        """The latency figures this task's users judge a build by besides batch latency (a
        decoder's prefill time and decode rate with its KV cache, metrics/decoder_latency.py),
        the original and the build measured in the same run, and their gates; None (the default):
        the task has none."""
        return None


@dataclass(frozen=True)
class TaskLatencyRequest:
    """What Task.task_latency measures: the original, the file that ships, real text, and how."""

    checkpoint: Any  # the original's core.checkpoint.Checkpoint (its ``path``)
    build_model: Any  # the build's model file (pathlib.Path)
    tokenizer: Any  # the build's tokenizer (transformers)
    texts: list[str]  # the eval data's texts, for the prompt
    threads: int | None
    gates: Any  # the recipe's GateConfig
    isolation: str  # the recipe's latency.isolation: "process" (each model in its own) or "shared"


@dataclass(frozen=True)
class TaskLatency:
    """Task.task_latency's answer: report.json's ``task_latency`` figures, the gates on them
    (metrics.gates.GateResult), and the report sections that show them (core.sections.Table)."""

    figures: dict
    gates: list
    tables: list


def _load(reference: str):
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


@cache
def get_task(name: str) -> Task:
    if name not in TASKS:
        raise InputError(f"unknown task '{name}'.", f"Known tasks: {', '.join(TASKS)}.")
    return _load(TASKS[name].implementation)()


def all_tasks() -> list[Task]:
    return [get_task(name) for name in TASKS]


def task_for_architecture(architecture: str) -> Task | None:
    """The task whose head the architecture (e.g. "BertForTokenClassification") has, or None."""
    return next((t for t in all_tasks() if architecture.endswith(t.head_suffix)), None)


def runtime_decoder(name: str):
    """The bundle runtime's decoder of a task (tasks.decoding.RuntimeDecoder: encode texts, decode
    a batch's logits into one dict per text); None when the task has none (or is unknown)."""
    entry = TASKS.get(name) if isinstance(name, str) else None
    return _load(entry.runtime_decoder) if entry and entry.runtime_decoder else None
