"""Sections that belong to a task, a target or a pass, as Tables: the task's own figures (a
tagger's per-entity scores, Task.report_tables), the target's build facts (Target.build_table),
and the accuracy control a quantize pass ran. They render through the same Table path as every
other section; report/ asks the interfaces and never tests for a task's or a target's name.
"""

from __future__ import annotations

from mcompress.core.sections import Table
from mcompress.core.task import UNRECORDED_TASK, get_task
from mcompress.report.formats import score
from mcompress.report.schema import Report

FACT_COLUMNS = ("fact", "value")


def contributed_sections(report: Report) -> list[Table]:
    raw = report.model_dump(mode="json")
    tables = list(get_task(report.source.task or UNRECORDED_TASK).report_tables(raw))
    tables += [t for t in (target_build_table(report), accuracy_control_table(report)) if t is not None]
    return tables


def target_build_table(report: Report) -> Table | None:
    """What the target's build step recorded (report.json's target_build), as the target tells it."""
    from mcompress.targets import TARGETS, get_target

    if not report.target_build or report.target not in TARGETS:
        return None
    return get_target(report.target).build_table(report.target_build)


def accuracy_control_table(report: Report) -> Table | None:
    """What a quantize pass's accuracy control (NNCF's) measured and reverted to float."""
    quantize = next((p.metrics for p in report.passes if p.name == "quantize"), {})
    control = quantize.get("accuracy_control")
    if not control:
        return None
    reverted = control.get("reverted_operations") or []
    rows = (("budget", f"{control['budget']} {control['drop_type']} on the selection split "
                       f"({control['selection_examples']} examples)"),
            ("FP32 / fully INT8", f"{score(control.get('fp32_selection_accuracy'))} / "
                                  f"{score(control.get('int8_selection_accuracy'))} ({report.metric.replace('_', ' ')})"),
            ("verdict", str(control.get("nncf_verdict"))),
            ("reverted to float", f"{', '.join(f'`{n}`' for n in reverted) if reverted else 'nothing'}; "
                                  f"{quantize.get('quantized_operations')} operations stay INT8 in the saved IR (NNCF "
                                  f"counted {control.get('quantized_operations_before')} in its graph before reverting)"))
    return Table("Quantization accuracy control (NNCF)", FACT_COLUMNS, rows)
