"""`mcompress check`: a CI verdict on a report, optionally against a baseline report.

Regressions are judged on quantities that travel between machines: accuracy (absolute points on
the same eval data, checked by its content hash), size, and speedup over the FP32 original
measured in the same run (a ratio), not raw milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mcompress.core.provenance import subject_digests
from mcompress.report.schema import Report


@dataclass
class Finding:
    check: str
    passed: bool
    detail: str


def load_report(path: Path) -> Report:
    return Report.load(path)


def _speedup_b1(report: Report) -> float | None:
    timed = report.latency_at(1, 128)
    return timed[0].p50_ms / timed[1].p50_ms if timed else None


def check_report(report: Report | dict, baseline: Report | dict | None = None, max_accuracy_regression: float = 0.5,
                 max_speedup_regression: float = 0.2, max_size_growth: float = 0.05,
                 allow_unmeasured: bool = False) -> list[Finding]:
    report = Report.parse(report)
    findings = [Finding(f"gate {g.name}", g.passed, f"{g.value:.3f} {g.unit} (budget {g.threshold})") for g in report.gates]
    if not report.artifact_measured():
        gated = report.target_build.get("gated_artifact", "a stand-in")
        findings.append(Finding("deployed artifact measured", allow_unmeasured,
                                f"no: gates ran on {gated}" + (" (accepted by --allow-unmeasured)" if allow_unmeasured else "")))
    if baseline is None:
        return findings
    baseline = Report.parse(baseline, "the baseline")
    if report.data.eval.sha256 != baseline.data.eval.sha256:
        findings.append(Finding("baseline eval data", False,
                                "eval data differs from the baseline's (sha256); accuracies are not comparable"))
    # the gated metric: accuracy, or entity F1 for a tagger ("score"; older reports have accuracy only)
    new_score, old_score = report.build.gated_score, baseline.build.gated_score
    change = (new_score - old_score) * 100
    findings.append(Finding(f"{report.metric.replace('_', ' ')} vs baseline", -change <= max_accuracy_regression,
                            f"{old_score:.4f} -> {new_score:.4f} "
                            f"({change:+.2f} points, tolerance {max_accuracy_regression})"))
    old, new = _speedup_b1(baseline), _speedup_b1(report)
    if old and new:
        findings.append(Finding("speedup vs baseline", new >= old * (1 - max_speedup_regression),
                                f"{old:.2f}x -> {new:.2f}x over FP32 at batch 1, sequence 128 "
                                f"(tolerance {max_speedup_regression:.0%})"))
    old_size, new_size = baseline.artifact.model_bytes, report.artifact.model_bytes
    findings.append(Finding("size vs baseline", new_size <= old_size * (1 + max_size_growth),
                            f"{old_size / 1e6:.1f} MB -> {new_size / 1e6:.1f} MB (tolerance {max_size_growth:.0%})"))
    return findings


def _gate_records(gates: list) -> list[tuple]:
    return [(g.get("name"), g.get("passed"), g.get("value"), g.get("threshold")) for g in gates if isinstance(g, dict)]


def check_bundle(report: Report | dict, manifest: dict) -> list[Finding]:
    """Whether a bundle (its verified manifest, bundle.runtime.read_bundle) is the build ``report``
    gated: the same model files (sha256), source checkpoint, verdicts and provenance."""
    report = Report.parse(report)
    files = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    gated = subject_digests(report.provenance) or {
        report.artifact.model_file: getattr(report.artifact.files.get(report.artifact.model_file), "sha256", None)}
    differing = [n for n, digest in gated.items() if (files.get(n) or {}).get("sha256") != digest]
    findings = [Finding("bundle model is the gated build's", not differing,
                        "differs: " + ", ".join(f"{n} sha256 {str((files.get(n) or {}).get('sha256'))[:16]}… in the bundle, "
                                                f"{str(gated[n])[:16]}… gated" for n in differing) if differing
                        else ", ".join(f"{n} sha256 {str(d)[:16]}…" for n, d in gated.items()))]
    source = (manifest.get("source") or {}).get("sha256")
    findings.append(Finding("bundle source checkpoint", source == report.source.sha256,
                            f"bundle {str(source)[:16]}…, report {report.source.sha256[:16]}…"))
    gates = _gate_records([g.model_dump(mode="json") for g in report.gates])
    same = manifest.get("passed") == report.passed and _gate_records(manifest.get("gates") or []) == gates
    findings.append(Finding("bundle gate verdicts", same, f"{len(gates)} gates, {report.verdict()}" if same else
                            f"bundle {'PASS' if manifest.get('passed') else 'FAIL'} with "
                            f"{_gate_records(manifest.get('gates') or [])}, report {report.verdict()} with {gates}"))
    if report.provenance is not None:
        recorded = manifest.get("provenance")
        findings.append(Finding("bundle provenance", recorded == report.provenance,
                                "identical to the report's" if recorded == report.provenance else
                                "the bundle has none" if recorded is None else "differs from the report's"))
    return findings


def render_markdown(findings: list[Finding], report_path: Path) -> str:
    verdict = "PASS" if all(f.passed for f in findings) else "FAIL"
    lines = [f"### mcompress check: {verdict}", "", f"Report: `{report_path}`", "", "| check | verdict | detail |", "|---|---|---|"]
    lines += [f"| {f.check} | {'pass' if f.passed else '**FAIL**'} | {f.detail} |" for f in findings]
    return "\n".join(lines) + "\n"
