"""`mcompress check`: gate verdicts and regressions against a baseline report."""

import json

import pytest
from typer.testing import CliRunner

from mcompress.report.check import check_report
from mcompress.cli import app
from mcompress.core.errors import ExitCode


def _report(accuracy=0.82, size=23_000_000, ref_ms=20.0, build_ms=5.0, passed=True):
    return {
        "passed": passed,
        "gates": [{"name": "accuracy_drop", "passed": passed, "value": 0.3, "threshold": 1.0, "unit": "points"}],
        "data": {"eval": {"sha256": "abc"}},
        "reference": {"accuracy": 0.823},
        "build": {"accuracy": accuracy},
        "artifact": {"model_bytes": size},
        "latency": {"reference": [{"batch_size": 1, "sequence_length": 128, "p50_ms": ref_ms}],
                    "build": [{"batch_size": 1, "sequence_length": 128, "p50_ms": build_ms}]},
    }


def _write(tmp_path, name, report):
    path = tmp_path / name
    path.write_text(json.dumps(report))
    return path


def test_unchanged_report_passes_against_itself(tmp_path):
    path = _write(tmp_path, "r.json", _report())
    result = CliRunner().invoke(app, ["check", str(path), "--baseline", str(path)])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_planted_two_point_regression_fails(tmp_path):
    baseline = _write(tmp_path, "base.json", _report(accuracy=0.82))
    current = _write(tmp_path, "cur.json", _report(accuracy=0.80))
    summary = tmp_path / "summary.md"
    result = CliRunner().invoke(app, ["check", str(current), "--baseline", str(baseline), "--markdown", str(summary)])
    assert result.exit_code == ExitCode.GATE_FAILED
    assert "accuracy vs baseline | **FAIL**" in summary.read_text()


def test_failed_gate_fails_without_baseline(tmp_path):
    path = _write(tmp_path, "r.json", _report(passed=False))
    assert CliRunner().invoke(app, ["check", str(path)]).exit_code == ExitCode.GATE_FAILED


@pytest.mark.parametrize("change, check_name", [({"build_ms": 8.0}, "speedup vs baseline"),
                                                 ({"size": 30_000_000}, "size vs baseline")])
def test_speed_and_size_regressions(change, check_name):
    findings = {f.check: f for f in check_report(_report(**change), _report())}
    assert not findings[check_name].passed
    assert all(f.passed for name, f in findings.items() if name != check_name)


def test_different_eval_data_is_flagged():
    other = _report()
    other["data"]["eval"]["sha256"] = "def"
    findings = {f.check: f for f in check_report(_report(), other)}
    assert not findings["baseline eval data"].passed


def test_not_a_report_is_bad_input(tmp_path):
    path = _write(tmp_path, "x.json", {"hello": 1})
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "not an mcompress report" in result.output
