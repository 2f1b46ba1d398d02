"""The typed report: report.json round-trips through the schema, report.md and report.html render
the same sections (built once), and reports of other shapes (older, minimal) still load."""

import html
import json
import re
from pathlib import Path

import pytest

from mcompress.core.errors import InputError
from mcompress.core.sections import Table
from mcompress.report.blocks import LongTable, ScatterChart
from mcompress.report.check import check_report
from mcompress.report.html import render_html
from mcompress.report.markdown import render_markdown
from mcompress.report.schema import CpuAutoChoice, Report
from mcompress.report.sections import build_sections
from mcompress.report.write import write_report

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


@pytest.fixture(scope="module")
def built(tiny_checkpoint, fast_recipe, tmp_path_factory):
    """One run of the job: (the Report it returned, the build dir)."""
    from mcompress.pipeline.job import RunRequest, run

    out = tmp_path_factory.mktemp("schema") / "build"
    return run(RunRequest(tiny_checkpoint, out=out, recipe_path=fast_recipe, overrides={"gates.max_drop": 100.0})), out


def _minimal() -> dict:
    """The fewest keys a report needs (no sections beyond gates, passes and latency)."""
    return {
        "passed": False, "target": "onnx-cpu", "recipe": {"name": "r", "gates": {"max_drop": 1.0}},
        "source": {"path": "/m", "sha256": "0" * 64}, "data": {"eval": {"source": "<t>", "examples": 3}},
        "reference": {"accuracy": 0.9, "size_bytes": 10_000_000},
        "passes": [{"name": "export", "wall_s": 1.0, "size_bytes": 9_000_000, "metrics": {}}],
        "build": {"accuracy": 0.8}, "latency": {"reference": [], "build": []},
        "gates": [{"name": "accuracy_drop", "value": 10.0, "threshold": 1, "unit": "points", "passed": False,
                   "detail": "a | b"}],
        "artifact": {"model_bytes": 5_000_000, "size_ratio": 0.5},
    }


def test_report_json_of_a_run_round_trips_unchanged(built):
    report, out = built
    text = (out / "report.json").read_text()
    assert Report.load(out / "report.json").to_json() == text  # same keys, values, order and bytes
    written = json.loads(text)
    assert list(written)[:4] == ["schema", "mcompress_version", "target", "recipe"]
    assert "out" not in written and "target_build" not in written and "sections" not in written
    assert report.out == str(out.resolve())
    assert {k: v for k, v in report.model_dump(mode="json").items() if k != "out"} == written


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.report.json")), ids=lambda p: p.name)
def test_reports_of_earlier_versions_load_and_dump_the_same_data(path):
    raw = json.loads(path.read_text())
    report = Report.model_validate(raw)
    assert report.model_dump(mode="json") == raw
    assert render_markdown(report).startswith(f"# mcompress build: {report.verdict()}")


def _markdown_tables(text: str) -> tuple[list[str], list[list[str]]]:
    headings = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    return headings, rows


def _html_tables(page: str) -> tuple[list[str], list[list[str]]]:
    plain = lambda s: html.unescape(re.sub(r"<[^>]+>", "", s))
    headings = [plain(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]
    rows = [[plain(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)] for row in re.findall(r"<tr>(.*?)</tr>", page)]
    return headings, rows


def test_markdown_and_html_show_the_same_sections_and_cells(built):
    report, _ = built
    md_headings, md_rows = _markdown_tables(render_markdown(report))
    html_headings, html_rows = _html_tables(render_html(report))
    chart_headings = [b.heading for b in build_sections(report) if isinstance(b, ScatterChart)]  # no chart in report.md
    assert md_headings == [h for h in html_headings if h not in chart_headings]
    assert {"Gates", "Passes", "Latency (ms, same process, interleaved rounds)"} <= set(md_headings)
    unmark = lambda cell: cell.replace("**", "").replace("`", "")
    assert [[unmark(c) for c in row] for row in md_rows] == html_rows
    tables = [b for b in build_sections(report) if isinstance(b, Table)]
    assert sum(len(t.rows) + 1 for t in tables) == len(html_rows)  # every row of every table, once


def test_html_is_deterministic_and_self_contained(built):
    report, out = built
    page = (out / "report.html").read_text(encoding="utf-8")
    assert render_html(Report.load(out / "report.json")) == page
    assert not re.search(r"https?://|<script", page) and page.count("<svg") >= 4


def test_a_report_without_optional_sections_renders(tmp_path):
    report = Report.parse(_minimal())
    markdown, page = render_markdown(report), render_html(report)
    assert markdown.startswith("# mcompress build: FAIL") and "| accuracy_drop | 10.000 points | ≤ 1 |" in markdown
    assert "a \\| b" in markdown and "<td>a | b</td>" in page and "&lt;t&gt;" in page
    for absent in ("Entities", "Target build", "cpu-auto", "Float fallback", "Layer sensitivity", "Candidates"):
        assert absent not in markdown and absent not in page
    write_report(report, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == _minimal()
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "report.html"}


@pytest.mark.parametrize("quantization, cause", [
    ("dynamic", "dynamically quantized INT8 takes activation ranges over the padded batch"),
    ("nncf-int8", "its scales are fixed, so the difference is the kernels'"),
])
def test_a_batch_dependent_build_is_explained_by_its_quantization(quantization, cause):
    data = _minimal()
    data["artifact"]["quantization"] = quantization
    data["as_deployed"] = {"modes": [{"batch_size": 1, "score": 0.8, "drop": 10.0, "agreement": 1.0},
                                     {"batch_size": 32, "score": 0.8, "drop": 10.0, "agreement": 0.99}],
                           "gated_batch_size": 1, "batch_dependent": True, "max_logit_difference": 0.007,
                           "tolerance": 0.001}
    markdown = render_markdown(Report.parse(data))
    assert "answers depend on what shares a batch (largest logit difference between batchings 0.007 > 0.001; " + cause in markdown
    assert ("activation ranges" in markdown) == (quantization == "dynamic")


def test_contributed_sections_render_in_both_formats_after_the_standard_ones():
    extra = Table("Generation", ("prompt", "tokens/s"), (("`hello`", "12.5"),), ("Measured at batch 1.",))
    report = Report.parse({**_minimal(), "sections": [extra]})
    markdown, page = render_markdown(report), render_html(report)
    assert markdown.index("## Latency") < markdown.index("## Generation") and "| `hello` | 12.5 |" in markdown
    assert "<h2>Generation</h2>" in page and "<td><code>hello</code></td>" in page and "Measured at batch 1." in page
    again = Report.model_validate_json(report.to_json())
    assert again.sections == [extra] and again.to_json() == report.to_json()


def test_long_table_previews_in_markdown_and_shows_every_row_in_html():
    sensitivity = {"examples": 8, "ranked_by": "kl", "int8": {"accuracy": 0.8, "mean_kl": 0.1}, "fp32_onnx_accuracy": 0.9,
                   "unmeasured": [], "layers": [{"rank": i, "layer": f"layer.{i}", "nodes": [f"n{i}"], "accuracy": 0.8,
                                                 "accuracy_change_points": 0.0, "mean_kl": 0.1, "kl_reduction": 0.01,
                                                 "max_abs_logit_diff": 0.2} for i in range(1, 21)]}
    raw = _minimal()
    raw["passes"].append({"name": "fallback", "wall_s": 1.0, "size_bytes": 1, "metrics": {"sensitivity": sensitivity}})
    report = Report.parse(raw)
    [long_table] = [b for b in build_sections(report) if isinstance(b, LongTable)]
    markdown, page = render_markdown(report), render_html(report)
    assert "`layer.15`" in markdown and "layer.16" not in markdown and "… 5 more in report.json" in markdown
    assert all(f"<code>layer.{i}</code>" in page for i in range(1, 21)) and len(long_table.table.rows) == 20


def test_check_loads_an_old_shape_report(tmp_path):
    old = _minimal() | {"passed": True, "build": {"accuracy": 0.81}, "a_key_from_another_version": {"kept": True}}
    old["gates"][0] = {"name": "accuracy_drop", "passed": True, "value": 0.3, "threshold": 1.0, "unit": "points"}
    findings = {f.check: f for f in check_report(old, _minimal() | {"build": {"accuracy": 0.82}})}
    assert findings["gate accuracy_drop"].passed and findings["accuracy vs baseline"].detail.startswith("0.8200 -> 0.8100")
    assert Report.parse(old).model_dump(mode="json") == old  # unknown keys survive a round trip
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"gates": []}))
    with pytest.raises(InputError, match="not an mcompress report"):
        Report.load(path)


def test_cpu_auto_section_is_added_to_the_model():
    report = Report.parse(_minimal())
    race = {"b1": {"batch_size": 1, "sequence_length": 128, "p50_ms": 2.0, "p95_ms": 2.5, "iterations": 10}}
    candidate = {"passed": True, "accuracy": 0.8, "accuracy_drop": 0.1, "runtime": "ort", "model_bytes": 1_000_000,
                 "failed_gates": [], "race": race}
    report.cpu_auto = {"criterion": "fastest", "chosen": "onnx-cpu", "reason": "faster", "sequence_length": 128,
                       "race_rounds": 5, "threads": 2, "other_processes_cpu_percent": 3.0,
                       "offered": {"onnx-cpu": "int8", "bf16": "not offered: openvino-cpu: no BF16 here"},
                       "unavailable": {"tensorrt-cpu": "not installed"},
                       "candidates": {"onnx-cpu": candidate | {"target": "onnx-cpu", "precision": "int8"},
                                      "openvino-cpu": candidate | {"passed": False},
                                      "stopped-cpu": {"passed": False, "stopped": "gate after export",
                                                      "failed_gates": ["gates.after"], "race": None}},
                       "candidate_reports": {"openvino-cpu": "candidates/openvino-cpu.report.json"}}
    assert isinstance(report.cpu_auto, CpuAutoChoice) and list(report.model_dump(mode="json"))[-1] == "cpu_auto"
    markdown = render_markdown(report)
    assert "## CPU target choice (cpu-auto)" in markdown and "**Kept onnx-cpu**: faster" in markdown
    assert "| onnx-cpu | int8 | pass | 0.8000 | 0.100 | 2.00 | 2.50 | – | – | 1.0 |" in markdown
    assert "| openvino-cpu | - | **FAIL** | 0.8000 | 0.100 | 2.00 | 2.50 | – | – | 1.0 |" in markdown
    assert "| stopped-cpu | - | **FAIL** | – | – | – | – | – | – | – |" in markdown
    assert ("Not raced on this machine: bf16: not offered: openvino-cpu: no BF16 here; tensorrt-cpu not built: "
            "not installed.") in markdown
    assert '<span class="fail">FAIL</span>' in render_html(report)
    stopped = report.model_dump(mode="json")["cpu_auto"]["candidates"]["stopped-cpu"]
    assert list(stopped) == ["passed", "stopped", "failed_gates", "race"]
