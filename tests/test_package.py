"""Edge packaging: `mcompress package` -> NAME.mcpkg -> `mcompress.runtime.load(...).predict(...)`.

The bundle must predict exactly what the gated build predicts, be byte-reproducible, refuse any
tampered, truncated or unsafe archive with a one-line BundleError, and run with only onnxruntime,
tokenizers and numpy importable."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import batched_score, ort_session, predict_with_imports_blocked, tree_digest
from mcompress.cli import app
from mcompress.core.errors import ExitCode, InputError, McompressError
from mcompress.bundle.package import package_build
from mcompress.runtime import MAX_MEMBERS, BundleError, load, read_bundle

EXTRA_TEXTS = [
    "",  # no words at all: [CLS] [SEP]
    "Great.",
    "word " * 400,  # far past max_length: truncated
    "Ünïcödé — the film was 素晴らしい, honestly; \"quoted\" & <tagged>.",
]


@pytest.fixture(scope="module")
def build(tiny_checkpoint, fast_recipe, tmp_path_factory) -> Path:
    """A passing build of the tiny checkpoint, made through the library (no CLI)."""
    from mcompress.pipeline.job import RunRequest, run

    out = tmp_path_factory.mktemp("pkg") / "build"
    # The gate budget is not what these tests are about: a flipped prediction on 24 examples is 4 points.
    run(RunRequest(tiny_checkpoint, out=out, recipe_path=fast_recipe, overrides={"gates.max_drop": 100.0}))
    return out


@pytest.fixture(scope="module")
def bundle_path(build, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny.mcpkg"
    package_build(build, out)
    return out


@pytest.fixture(scope="module")
def test_texts(tiny_checkpoint) -> list[str]:
    rows = [json.loads(l) for l in (tiny_checkpoint / "splits" / "test.jsonl").read_text().splitlines() if l.strip()]
    return [r["text"] for r in rows] + EXTRA_TEXTS


def _report(build: Path) -> dict:
    return json.loads((build / "report.json").read_text())


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _rezip(src: Path, dest: Path, change=None, extra: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Copy a bundle member by member (valid CRCs), optionally changing, adding or dropping members."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info)
            zout.writestr(info, change(info.filename, data) if change else data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dest


def _member_data_offset(path: Path, name: str) -> tuple[int, int]:
    """(offset of the member's stored bytes in the file, their length)."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


# --- round trip --------------------------------------------------------------------------------


def test_bundle_layout_and_manifest(build, bundle_path):
    report = _report(build)
    with zipfile.ZipFile(bundle_path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        manifest = json.loads(zf.read("manifest.json"))
        labels = json.loads(zf.read("labels.json"))
    assert names == sorted(names)
    assert set(names) == {"manifest.json", "labels.json", "model.onnx", "tokenizer.json", "tokenizer_config.json",
                          "special_tokens_map.json", "vocab.txt"}
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED
        assert info.date_time == (1980, 1, 1, 0, 0, 0)
        assert (info.external_attr >> 16) & 0o777 == 0o644
    assert labels == json.loads((build / "config.json").read_text())["id2label"]
    assert manifest["schema_version"] == 1 and manifest["task"] == "text-classification"
    assert manifest["target"] == "onnx-cpu"
    assert manifest["max_sequence_length"] == report["recipe"]["max_length"]
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    for spec in manifest["inputs"]:
        assert spec["dtype"] == "int64" and set(spec["dynamic_axes"]) == {"0", "1"}
    pre = manifest["preprocessing"]
    assert pre["tokenizer_file"] == "tokenizer.json" and pre["truncation"] is True and pre["padding"] == "longest"
    assert set(pre["feeds"]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert manifest["files"]["model.onnx"]["bytes"] == (build / "model.onnx").stat().st_size
    assert manifest["files"]["model.onnx"]["sha256"] == report["artifact"]["files"]["model.onnx"]["sha256"]
    assert manifest["runtime"]["onnxruntime"] == report["versions"]["onnxruntime"]
    assert manifest["recipe"] == report["recipe"]
    assert manifest["source"]["sha256"] == report["source"]["sha256"]
    assert manifest["passed"] is True and manifest["gates"] == report["gates"]
    assert manifest["metrics"]["reference_accuracy"] == report["reference"]["accuracy"]
    assert manifest["metrics"]["build_accuracy"] == report["build"]["accuracy"]
    assert manifest["metrics"]["latency"] == report["latency"]


def test_tokenization_matches_transformers(build, bundle_path, test_texts):
    from transformers import AutoTokenizer

    bundle = load(bundle_path)
    max_length = _report(build)["recipe"]["max_length"]
    expected = AutoTokenizer.from_pretrained(build)(test_texts, truncation=True, max_length=max_length,
                                                    padding="longest", return_tensors="np")
    encodings = bundle.tokenizer.encode_batch(test_texts)
    for name, attr in bundle.feeds.items():
        np.testing.assert_array_equal(np.array([getattr(e, attr) for e in encodings]), expected[name], err_msg=name)
    assert max(sum(e.attention_mask) for e in encodings) == max_length  # the long text was truncated


def test_round_trip_one_text_at_a_time(build, bundle_path, test_texts):
    """Each text alone: the bundle's label and scores equal a fresh ONNX Runtime session on the build's
    model.onnx, fed by transformers' tokenizer from the build dir at the report's max_length."""
    from transformers import AutoTokenizer

    bundle = load(bundle_path)
    tokenizer = AutoTokenizer.from_pretrained(build)
    session = ort_session(build / "model.onnx")
    max_length = _report(build)["recipe"]["max_length"]
    id2label = {int(k): v for k, v in json.loads((build / "config.json").read_text())["id2label"].items()}
    results = bundle.predict(test_texts, batch_size=1)
    assert len(results) == len(test_texts)
    for text, result in zip(test_texts, results):
        batch = tokenizer([text], truncation=True, max_length=max_length, return_tensors="np")
        logits = session.run(["logits"], {i.name: batch[i.name].astype(np.int64) for i in session.get_inputs()})[0][0]
        probs = _softmax(logits.astype(np.float64))
        assert result["label"] == id2label[int(logits.argmax())], text
        assert result["score"] == pytest.approx(probs.max(), abs=1e-5)
        assert list(result["scores"]) == [id2label[i] for i in range(len(id2label))]
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-9)
        np.testing.assert_allclose([result["scores"][id2label[i]] for i in range(len(id2label))], probs, atol=1e-5)


def test_round_trip_batched_reproduces_the_gated_build(build, bundle_path, test_texts, tiny_checkpoint):
    """Batched as `mcompress run` batched its eval data: same logits, and on the test split the same
    accuracy the build was gated with."""
    from transformers import AutoTokenizer

    from mcompress.metrics.evaluation import predict_logits
    from mcompress.engines.onnxruntime_cpu import OrtRunner

    bundle = load(bundle_path)
    report = _report(build)
    tokenizer = AutoTokenizer.from_pretrained(build)
    gated = report["recipe"]["eval"]["batch_size"]  # the bundle's default batch: the largest the gate judged
    assert bundle.largest_gated_batch == gated
    expected = predict_logits(OrtRunner(build / "model.onnx", 1), tokenizer, test_texts, report["recipe"]["max_length"], gated)
    got = bundle.logits(test_texts)
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    predictions = bundle.predict(test_texts)
    assert [p["label"] for p in predictions] == [bundle.labels[i] for i in expected.argmax(-1)]

    rows = [json.loads(l) for l in (tiny_checkpoint / "splits" / "test.jsonl").read_text().splitlines() if l.strip()]
    accuracy = np.mean([p["label"] == r["label"] for p, r in zip(predictions, rows)])
    assert accuracy == pytest.approx(batched_score(report), abs=1e-12)  # the bundle batches as the gate's batched mode


def test_predict_edge_cases(bundle_path):
    bundle = load(bundle_path)
    assert bundle.predict([]) == []
    with pytest.raises(TypeError):
        bundle.predict("one string, not a list")
    assert bundle.manifest["task"] == "text-classification"
    assert bundle.max_sequence_length == bundle.manifest["max_sequence_length"]


# --- reproducibility and packaging refusals -----------------------------------------------------


def test_packaging_is_reproducible_and_leaves_the_build_alone(build, bundle_path, tmp_path):
    before = tree_digest(build)
    again = tmp_path / "again.mcpkg"
    package_build(build, again)
    assert again.read_bytes() == bundle_path.read_bytes()
    copy = tmp_path / "copied-build"
    shutil.copytree(build, copy)
    package_build(copy, tmp_path / "from-copy.mcpkg")
    assert (tmp_path / "from-copy.mcpkg").read_bytes() == bundle_path.read_bytes()  # nothing path- or time-dependent
    assert tree_digest(build) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.mcpkg", "copied-build", "from-copy.mcpkg"]  # no temp files


def test_existing_output_needs_force(build, tmp_path):
    out = tmp_path / "b.mcpkg"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match="already exists"):
        package_build(build, out)
    assert out.read_bytes() == b"old"
    package_build(build, out, force=True)
    assert zipfile.is_zipfile(out)


@pytest.mark.parametrize("missing", ["model.onnx", "report.json", "tokenizer.json"])
def test_incomplete_build_is_refused(build, tmp_path, missing):
    copy = tmp_path / "build"
    shutil.copytree(build, copy)
    (copy / missing).unlink()
    with pytest.raises(InputError, match=missing.replace(".", r"\.")):
        package_build(copy, tmp_path / "x.mcpkg")
    assert not (tmp_path / "x.mcpkg").exists()


def test_missing_build_dir_is_refused(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        package_build(tmp_path / "nope", tmp_path / "x.mcpkg")


def test_failed_build_needs_allow_failed(build, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(build, copy)
    report = _report(copy)
    report["passed"] = False
    report["gates"][0]["passed"] = False
    (copy / "report.json").write_text(json.dumps(report))
    with pytest.raises(InputError, match="failed its gates") as err:
        package_build(copy, tmp_path / "x.mcpkg")
    assert "--allow-failed" in err.value.one_line()
    manifest = package_build(copy, tmp_path / "x.mcpkg", allow_failed=True)
    assert manifest["passed"] is False and load(tmp_path / "x.mcpkg").manifest["passed"] is False


def test_build_file_changed_after_gating_is_refused(build, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(build, copy)
    with open(copy / "vocab.txt", "a") as f:
        f.write("extra\n")
    with pytest.raises(InputError, match="vocab.txt changed since the build was gated"):
        package_build(copy, tmp_path / "x.mcpkg")


# --- loading refusals ----------------------------------------------------------------------------


def test_flipped_model_byte_is_refused(bundle_path, tmp_path):
    data = bytearray(bundle_path.read_bytes())
    offset, length = _member_data_offset(bundle_path, "model.onnx")
    data[offset + length // 2] ^= 0xFF
    bad = tmp_path / "flipped.mcpkg"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"'model\.onnx'.*sha256") as err:
        load(bad)
    assert err.value.exit_code == ExitCode.BAD_INPUT and isinstance(err.value, McompressError)


def test_modified_model_with_valid_zip_checksums_fails_sha256(bundle_path, tmp_path):
    def flip(name, data):
        return data[:100] + bytes([data[100] ^ 1]) + data[101:] if name == "model.onnx" else data

    bad = _rezip(bundle_path, tmp_path / "modified.mcpkg", change=flip)
    with pytest.raises(BundleError, match=r"'model\.onnx' fails its sha256 check"):
        load(bad)


def test_modified_tokenizer_fails_sha256(bundle_path, tmp_path):
    bad = _rezip(bundle_path, tmp_path / "tok.mcpkg",
                 change=lambda n, d: d.replace(b'"[UNK]"', b'"[UNX]"', 1) if n == "tokenizer.json" else d)
    with pytest.raises(BundleError, match=r"'tokenizer\.json'.*sha256"):
        load(bad)


@pytest.mark.parametrize("name", ["../evil", "/etc/evil", "sub/../../evil", "..\\evil", "C:/evil", "a//b"])
def test_unsafe_member_names_are_refused(bundle_path, tmp_path, name):
    bad = tmp_path / "evil.mcpkg"
    shutil.copyfile(bundle_path, bad)
    with zipfile.ZipFile(bad, "a") as zf:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() would normalise some of these; a hostile writer does not
        zf.writestr(info, b"pwned")
    with pytest.raises(BundleError, match="refusing"):
        load(bad)
    assert not (tmp_path.parent / "evil").exists() and not Path("/etc/evil").exists()


def test_symlink_member_is_refused(bundle_path, tmp_path):
    bad = tmp_path / "link.mcpkg"
    shutil.copyfile(bundle_path, bad)
    with zipfile.ZipFile(bad, "a") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (0o120777 << 16)
        zf.writestr(info, b"/etc/passwd")
    with pytest.raises(BundleError, match="'link' is a symlink"):
        load(bad)


def test_unlisted_member_is_refused(bundle_path, tmp_path):
    bad = _rezip(bundle_path, tmp_path / "extra.mcpkg", extra={"payload.bin": b"\0" * 16})
    with pytest.raises(BundleError, match="does not list: payload.bin"):
        load(bad)


def test_listed_file_missing_is_refused(bundle_path, tmp_path):
    bad = _rezip(bundle_path, tmp_path / "missing.mcpkg", drop=("vocab.txt",))
    with pytest.raises(BundleError, match="lacks files its manifest lists: vocab.txt"):
        load(bad)


def test_missing_manifest_is_refused(bundle_path, tmp_path):
    bad = _rezip(bundle_path, tmp_path / "nomanifest.mcpkg", drop=("manifest.json",))
    with pytest.raises(BundleError, match="no manifest.json"):
        load(bad)


def test_size_and_member_limits(bundle_path):
    with pytest.raises(BundleError, match="over the limit"):
        load(bundle_path, max_bytes=1_000_000)
    with pytest.raises(BundleError, match="members, over the limit"):
        load(bundle_path, max_members=3)
    assert MAX_MEMBERS == 10_000


@pytest.mark.parametrize("keep", [0.5, 0.9999, "minus-1", "header-only"])
def test_truncated_bundle_is_refused(bundle_path, tmp_path, keep):
    data = bundle_path.read_bytes()
    cut = {"minus-1": len(data) - 1, "header-only": 10}.get(keep) or int(len(data) * keep)
    bad = tmp_path / "truncated.mcpkg"
    bad.write_bytes(data[:cut])
    with pytest.raises(BundleError, match="truncated|corrupt|not a readable zip"):
        load(bad)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load(tmp_path / "nope.mcpkg")
    (tmp_path / "text.mcpkg").write_text("hello")
    with pytest.raises(BundleError, match="not a readable zip"):
        load(tmp_path / "text.mcpkg")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("manifest.json", "{not json")
    (tmp_path / "badjson.mcpkg").write_bytes(buf.getvalue())
    with pytest.raises(BundleError, match="not valid JSON"):
        load(tmp_path / "badjson.mcpkg")


def test_read_bundle_returns_verified_members(bundle_path, build):
    manifest, members = read_bundle(bundle_path)
    assert set(members) == set(manifest["files"])
    assert members["model.onnx"] == (build / "model.onnx").read_bytes()


# --- runtime without the compiler's dependencies ------------------------------------------------


def test_runtime_runs_without_torch_transformers_pydantic_typer_rich(bundle_path):
    texts = ["a wonderful, moving film", "dull and tedious"]
    out = predict_with_imports_blocked(bundle_path, {"torch", "transformers", "pydantic", "typer", "rich"}, texts)
    assert out["loaded"] == []
    assert len(out["results"]) == 2 and all(set(r) == {"label", "score", "scores"} for r in out["results"])
    assert out["results"] == load(bundle_path).predict(texts)


# --- CLI -----------------------------------------------------------------------------------------


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def test_cli_package_predict_inspect(build, bundle_path, tmp_path):
    out = tmp_path / "cli.mcpkg"
    result = _invoke(["package", str(build), "-o", str(out)])
    assert result.exit_code == ExitCode.OK, result.output
    assert "packaged" in result.output and str(out) in result.output
    assert out.read_bytes() == bundle_path.read_bytes()

    again = _invoke(["package", str(build), "-o", str(out)])
    assert again.exit_code == ExitCode.BAD_INPUT and "--force" in again.output
    assert _invoke(["package", str(build), "-o", str(out), "--force"]).exit_code == ExitCode.OK

    texts = ["a wonderful, moving film", "dull and tedious"]
    result = _invoke(["predict", str(out), *texts])
    assert result.exit_code == ExitCode.OK, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    expected = load(out).predict(texts)
    assert [l["text"] for l in lines] == texts
    assert [{k: l[k] for k in ("label", "score", "scores")} for l in lines] == expected

    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps({"sentence": t}) + "\n" for t in texts))
    result = _invoke(["predict", str(out), "--input", str(data), "--text-column", "sentence"])
    assert result.exit_code == ExitCode.OK, result.output
    assert [json.loads(l)["label"] for l in result.stdout.splitlines()] == [e["label"] for e in expected]

    result = _invoke(["inspect", str(out)])
    assert result.exit_code == ExitCode.OK, result.output
    manifest = load(out).manifest
    for fragment in ("text-classification", "onnx-cpu", "0=neg, 1=pos", "input_ids int64 [batch, sequence]",
                     "gates    PASS", "accuracy_drop", "model.onnx", f"{manifest['files']['model.onnx']['bytes']:,}",
                     "accuracy "):
        assert fragment in result.stdout, (fragment, result.stdout)

    result = _invoke(["inspect", str(out), "--json"])
    assert result.exit_code == ExitCode.OK and json.loads(result.stdout) == manifest


def _one_error_line(output: str, expect: str) -> None:
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], output


def test_cli_errors_are_one_line_exit_2(bundle_path, tmp_path):
    result = _invoke(["package", str(tmp_path / "missing-build"), "-o", str(tmp_path / "x.mcpkg")])
    assert result.exit_code == ExitCode.BAD_INPUT
    _one_error_line(result.output, "does not exist")
    assert not (tmp_path / "x.mcpkg").exists()

    data = bytearray(bundle_path.read_bytes())
    offset, length = _member_data_offset(bundle_path, "model.onnx")
    data[offset + 7] ^= 0x01
    (tmp_path / "bad.mcpkg").write_bytes(bytes(data))
    for args in (["predict", str(tmp_path / "bad.mcpkg"), "x"], ["inspect", str(tmp_path / "bad.mcpkg")]):
        result = _invoke(args)
        assert result.exit_code == ExitCode.BAD_INPUT
        _one_error_line(result.output, "model.onnx")

    result = _invoke(["predict", str(bundle_path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    _one_error_line(result.output, "no texts")


def test_cli_package_missing_dir_real_process(tmp_path):
    """The real entry point: exit status 2 and exactly one "error:" line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "mcompress.cli", "package", str(tmp_path / "nope"), "-o",
                           str(tmp_path / "x.mcpkg")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
    _one_error_line(proc.stderr, "does not exist")
    assert proc.stdout == ""
