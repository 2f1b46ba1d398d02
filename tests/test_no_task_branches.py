"""Generic code never branches on a task's or a metric's name: what differs between tasks lives in
their modules (compressor/tasks/, behind core/task.py's Task interface). This reads every module
outside compressor/tasks/ and fails on a comparison, membership test or name-keyed dict of task or
metric names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("compressor", "passes", "targets", "calibration")
TASK_MODULES = ROOT / "compressor" / "tasks"

TASK_NAMES = ("text-classification", "token-classification", "causal-lm")
METRIC_NAMES = ("accuracy", "entity_f1", "perplexity")
NAME = "|".join(re.escape(n) for n in TASK_NAMES) + "|(?:" + "|".join(map(re.escape, METRIC_NAMES)) + ")(?:_drop|_increase)?"
QUOTED = rf"""["'](?:{NAME})["']"""  # a task or metric name, or a metric's gate name, in quotes
QUOTED_TASK = rf"""["'](?:{'|'.join(map(re.escape, TASK_NAMES))})["']"""

BRANCHES = {
    "a comparison with a task or metric name": rf"(?:==|!=)\s*{QUOTED}|{QUOTED}\s*(?:==|!=)",
    "a membership test against task or metric names": rf"\bin\s*[(\[{{][^)\]}}\n]*{QUOTED}",
    "a dict keyed by task names (dispatch)": rf"[{{,]\s*{QUOTED_TASK}\s*:",
    "a dict keyed by metric names, indexed (dispatch)": rf"\{{[^{{}}]*{QUOTED}\s*:[^{{}}]*\}}\s*\[",
    "a task picked by a fixed name": rf"\[\s*{QUOTED_TASK}\s*\]|get_task\(\s*{QUOTED_TASK}",
    "a test of the task or metric attribute": r"\.(?:task|metric)\s*(?:==|!=|\bin\b|\bnot in\b)",
    "a test against the tagger's data class": r"isinstance\([^)]*TaggedSentences",
}


def branches(text: str) -> list[tuple[int, str, str]]:
    """(line, kind, code) of every task- or metric-name branch in a module's source."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        code = line.split("#", 1)[0]
        found += [(number, kind, code.strip()) for kind, pattern in BRANCHES.items() if re.search(pattern, code)]
    return found


def package_modules(root: Path) -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (root / d).rglob("*.py")
                  if (root / "compressor" / "tasks") not in p.parents)


@pytest.mark.parametrize("line, kind", [
    ('if data.task == "token-classification":', "a comparison with a task or metric name"),
    ("if metric != 'entity_f1':", "a comparison with a task or metric name"),
    ('if report.get("metric") == "entity_f1":', "a comparison with a task or metric name"),
    ('if name in ("accuracy", "macro_f1"):', "a membership test against task or metric names"),
    ('evaluator = {"text-classification": a, "token-classification": b}[data.task]', "a dict keyed by task names (dispatch)"),
    ("tagger = data.task == TAGGING", "a test of the task or metric attribute"),
    ("if result.metric != ENTITY_F1:", "a test of the task or metric attribute"),
    ('return {"accuracy": _accuracy, "entity_f1": f1}[metric](counts)', "a dict keyed by metric names, indexed (dispatch)"),
    ('task = TASKS["text-classification"]', "a task picked by a fixed name"),
    ('gate = next(g for g in gates if g["name"] == "accuracy_drop")', "a comparison with a task or metric name"),
])
def test_the_patterns_catch_each_kind_of_branch(line, kind):
    assert kind in [k for _, k, _ in branches(line)]


def test_the_patterns_let_task_data_and_report_keys_pass():
    fine = ['"accuracy": round(score, 4),', 'name = "text-classification"', 'metric: Literal["auto", "accuracy", "entity_f1"]',
            'gate = next(g for g in gates if g["name"] == f"{metric}_drop")', 'report.get("metric", "accuracy")']
    assert [b for line in fine for b in branches(line)] == []


def test_generic_code_has_no_task_or_metric_branches():
    found = [f"{path.relative_to(ROOT)}:{line}: {kind}: {code}"
             for path in package_modules(ROOT) for line, kind, code in branches(path.read_text(encoding="utf-8"))]
    assert found == [], "task/metric names tested outside compressor/tasks/:\n" + "\n".join(found)
