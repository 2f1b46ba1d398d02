"""The manifest's monitoring reference (bundle/monitoring.py): the bundle being packaged, loaded
from its in-memory bytes by the bundle runtime, predicts the build's eval data with the gate's batch
size (the recipe's eval.batch_size), and the histograms of those predictions are recorded.

The eval data is the file report.json recorded (data.eval.source, relative to the directory
`mcompress run` was started in, or absolute) or the one passed as ``reference_data``. The recorded
file is used only if its content hash still equals the gated one (data.eval.sha256); when it cannot
be found or differs, the manifest says why under ``monitoring.unavailable`` and the server reports
no drift verdict. It costs one inference pass over the eval data, at package time.
"""

from __future__ import annotations

from pathlib import Path

from mcompress.bundle.monitoring import reference_from
from mcompress.core.errors import InputError
from mcompress.core.task import get_task

DEFAULT_EVAL_BATCH = 16  # core/recipe.py EvalConfig.batch_size


def _eval_data(report: dict, task: str, labels: dict[str, str], reference_data: Path | None):
    """(data, source facts) of the reference data, or (None, why not)."""
    recorded = (report.get("data") or {}).get("eval") or {}
    path = Path(reference_data) if reference_data is not None else (
        Path(recorded["source"]) if recorded.get("source") else None)
    if path is None:
        return None, "report.json records no eval data; pass --reference-data"
    if not path.exists():
        if reference_data is not None:
            raise InputError(f"reference data {path} does not exist.", "Pass the eval data the build was gated on.")
        return None, f"the recorded eval data {path} is not found from {Path.cwd()}; pass --reference-data"
    label2id = {name: int(i) for i, name in labels.items()}
    data = get_task(task).load_data(path, label2id, split="test", require_labels=False)
    matches = data.content_hash() == recorded.get("sha256")
    if not matches and reference_data is None:
        return None, f"the eval data at {path} differs from the gated one (content sha256); pass --reference-data"
    return data, {"path": str(path), "sha256": data.content_hash(), "matches_gated_eval": matches}


def monitoring_reference(build_dir: Path, report: dict, task: str, labels: dict[str, str], bundle: bytes,
                         reference_data: Path | None = None) -> dict:
    """The manifest's ``monitoring`` entry for ``bundle`` (its bytes, manifest without monitoring)."""
    from mcompress.bundle.runtime import load

    data, source = _eval_data(report, task, labels, reference_data)
    if data is None:
        return {"unavailable": source}
    loaded = load(Path(build_dir) / "(bundle in memory)", threads=1, data=bundle)
    batch_size = ((report.get("recipe") or {}).get("eval") or {}).get("batch_size", DEFAULT_EVAL_BATCH)
    prediction = loaded.run(data.texts, batch_size)
    observations = [pair for result in prediction.results for pair in loaded.decoder.observations(result)]
    return reference_from(observations, prediction.token_lengths, loaded.max_sequence_length,
                          {**source, "batch_size": batch_size})
