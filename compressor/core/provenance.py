"""What produced a build, as an in-toto Statement with the SLSA provenance v1 predicate.

    {"_type": "https://in-toto.io/Statement/v1",
     "subject": [{"name": "model.onnx", "digest": {"sha256": ...}}, ...],   # the model's files
     "predicateType": "https://slsa.dev/provenance/v1",
     "predicate": {
       "buildDefinition": {
         "buildType": "urn:mcompress:run:v1",
         "externalParameters": {"target": ..., "recipe": {... resolved recipe ...}},
         "internalParameters": {"passes": [{"name": ..., "cache_key": ...}, ...]},
         "resolvedDependencies": [checkpoint, recipe, eval/selection/calibration data: name + sha256]},
       "runDetails": {
         "builder": {"id": "urn:mcompress:cli", "version": {"mcompress": ..., "torch": ..., ...}},
         "byproducts": [one per gate: name, sha256 of its record, the record; then the verdict]}}}

Digests: the checkpoint's is ``core.checkpoint``'s content hash (file names and bytes of config,
weights and tokenizer files); the recipe's is ``core.hashing.json_digest`` of the resolved recipe
as report.json records it (so anyone can recompute it from the report); a data set's is its
``content_hash()`` (the examples as read: label, tab, text per line), not the bytes of its file; a
pass's ``cache_key`` is the pass cache's key (``pipeline/cache.py``: its input's key, its code,
settings, data and library versions; null with ``--no-cache``). Nothing in it depends on when or
where the build ran, so two identical builds give the same statement apart from measured timings
(the latency gates' values). ``mcompress run`` writes it into report.json (``provenance``);
``mcompress package`` copies it into the bundle manifest, which the bundle's signature covers.
"""

from __future__ import annotations

from mcompress.core.hashing import json_digest

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:mcompress:run:v1"
BUILDER_ID = "urn:mcompress:cli"
GATE_FIELDS = ("name", "passed", "value", "threshold", "unit")


def _dependency(name: str, sha256: str | None, **annotations) -> dict:
    entry = {"name": name, "digest": {"sha256": sha256}} if sha256 else {"name": name}
    kept = {k: v for k, v in annotations.items() if v is not None}
    return {**entry, "annotations": kept} if kept else entry


def _data_dependencies(data: dict) -> list[dict]:
    deps = []
    for split in ("eval", "selection", "calibration"):
        entry = data.get(split) or {}
        if entry:
            deps.append(_dependency(f"{split} data", entry.get("sha256"), source=entry.get("source"),
                                    examples=entry.get("examples")))
    return deps


def _byproducts(report: dict) -> list[dict]:
    gates = []
    for gate in report.get("gates") or []:
        record = {k: gate.get(k) for k in GATE_FIELDS if k in gate}
        gates.append({"name": gate.get("name"), "digest": {"sha256": json_digest(record)}, "annotations": record})
    verdict = {"passed": bool(report.get("passed")), "metric": report.get("metric")}
    return gates + [{"name": "verdict", "digest": {"sha256": json_digest(verdict)}, "annotations": verdict}]


def recipe_digest(recipe: dict) -> str:
    return json_digest(recipe)


def build_provenance(report: dict, model_files: list[str]) -> dict:
    """The statement for the build ``report`` (report.json's dict) describes, whose model is
    ``model_files`` (names in ``report["artifact"]["files"]``)."""
    files = (report.get("artifact") or {}).get("files") or {}
    source = report.get("source") or {}
    recipe = report.get("recipe") or {}
    versions = report.get("versions") or {}
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": files[name]["sha256"]}} for name in model_files if name in files],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"target": report.get("target"), "recipe": recipe},
                "internalParameters": {"passes": [{"name": p.get("name"), "cache_key": p.get("cache_key")}
                                                  for p in report.get("passes") or []]},
                "resolvedDependencies": [
                    _dependency("checkpoint", source.get("sha256"), model_type=source.get("model_type"),
                                architecture=source.get("architecture"), task=source.get("task")),
                    _dependency("recipe", recipe_digest(recipe), recipe_name=recipe.get("name")),
                    *_data_dependencies(report.get("data") or {}),
                ],
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"mcompress": report.get("mcompress_version"), **versions}},
                "byproducts": _byproducts(report),
            },
        },
    }


def subject_digests(statement: dict | None) -> dict[str, str]:
    """name -> sha256 of the statement's subjects ({} without a statement)."""
    subjects = (statement or {}).get("subject") or []
    return {s.get("name"): (s.get("digest") or {}).get("sha256") for s in subjects if isinstance(s, dict)}
