"""The tasks mcompress compresses, as data: what differs between a classifier and a tagger.

The task is read from the checkpoint's architecture (``*ForSequenceClassification`` or
``*ForTokenClassification``, compressor/core/checkpoint.py) and flows through the run as a TaskSpec:
which transformers class loads it, which data loader reads its eval/calibration data, which
metric gates it, and the shape of its logits in the exported graph.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    head_suffix: str  # the end of the architecture name, e.g. "ForTokenClassification"
    auto_model: str  # transformers Auto* class that loads the checkpoint
    optimum_model: str  # optimum.onnxruntime class that loads a build
    metric: str  # the gated metric when gates.metric is auto
    metrics: tuple[str, ...]  # metrics gates.metric may name for this task
    logits_axes: tuple[str, ...]  # dynamic axes of the exported logits output
    text_column: str  # default data columns of JSONL/CSV inputs
    label_column: str


TASKS = {
    "text-classification": TaskSpec(
        "text-classification", "ForSequenceClassification", "AutoModelForSequenceClassification",
        "ORTModelForSequenceClassification", "accuracy", ("accuracy",), ("batch",), "text", "label"),
    "token-classification": TaskSpec(
        "token-classification", "ForTokenClassification", "AutoModelForTokenClassification",
        "ORTModelForTokenClassification", "entity_f1", ("entity_f1",), ("batch", "sequence"),
        "tokens", "tags"),
}


def task_for_architecture(architecture: str) -> TaskSpec | None:
    return next((t for t in TASKS.values() if architecture.endswith(t.head_suffix)), None)


def load_task_data(task: TaskSpec, path, label2id: dict[str, int], text_column: str | None, label_column: str | None,
                   split: str = "test", require_labels: bool = True):
    """LabelledTexts for a classifier, TaggedSentences for a tagger."""
    text_column, label_column = text_column or task.text_column, label_column or task.label_column
    if task.name == "token-classification":
        from mcompress.calibration.tagged import load_tagged_sentences

        return load_tagged_sentences(path, label2id, text_column, label_column, split, require_labels)
    from mcompress.calibration.datasets import load_labelled_texts

    return load_labelled_texts(path, label2id, text_column, label_column, split, require_labels)


def gated_metric(task: TaskSpec, recipe_metric: str) -> str:
    """The metric the accuracy gate uses: the task's own for ``auto``, else the recipe's, which
    must be one the task has (InputError otherwise)."""
    from mcompress.core.errors import InputError

    metric = task.metric if recipe_metric == "auto" else recipe_metric
    if metric not in task.metrics:
        raise InputError(f"recipe gates.metric '{recipe_metric}' does not apply to a {task.name} model.",
                         f"Use one of: auto, {', '.join(task.metrics)}.")
    return metric
