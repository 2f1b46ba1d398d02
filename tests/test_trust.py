"""Signed bundles and provenance: `mcompress package --sign-key`, `mcompress sign`,
`load(..., trusted_keys=...)`, `--trusted-key`, `inspect --provenance`, `check --bundle`.

Keys are fresh EC P-256 pairs made with `cryptography`; every refusal is a BundleError (exit 2)
whose one line names its reason, and the reasons differ from one another."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mcompress import __version__
from mcompress.bundle.package import package_build, sign_bundle
from mcompress.cli import app
from mcompress.core.errors import ExitCode, InputError
from mcompress.core.hashing import json_digest
from mcompress.runtime import SIGNATURE, BundleError, load, open_bundle, read_bundle

pytest.importorskip("model_signing")

TEXTS = ["a gripping, funny film", "dull and far too long", ""]
# The distinct reasons, as the one-line messages say them.
UNSIGNED = "is unsigned"
BAD = "bad signature"
UNTRUSTED = "not in the trusted set"
SWAPPED = "not the one the signature covers"
MODIFIED = "was modified after signing"


def _keypair(directory: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("keys")
    return {name: _keypair(root, name) for name in ("fleet", "other")}


@pytest.fixture(scope="module")
def build(tiny_checkpoint, fast_recipe, tmp_path_factory) -> Path:
    from mcompress.pipeline.job import RunRequest, run

    out = tmp_path_factory.mktemp("trust") / "build"
    run(RunRequest(tiny_checkpoint, out=out, recipe_path=fast_recipe, overrides={"gates.max_drop": 100.0}))
    return out


@pytest.fixture(scope="module")
def signed(build, keys, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signed") / "tiny.mcpkg"
    package_build(build, out, sign_key=keys["fleet"][0])
    return out


@pytest.fixture(scope="module")
def newer_model(signed, tmp_path_factory) -> bytes:
    """A different, valid model of the same graph: one weight changed, as a newer build would be."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    with zipfile.ZipFile(signed) as zf:
        model = onnx.load_model_from_string(zf.read("model.onnx"))
    init = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) > 1)
    values = numpy_helper.to_array(init).copy()
    values.flat[0] += 1.0
    init.CopyFrom(numpy_helper.from_array(values, init.name))
    return model.SerializeToString()


def _members(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(dest: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for name in sorted(members):
            zf.writestr(name, members[name])
    return dest


def _refusal(bundle: Path, trusted: list[Path]) -> str:
    with pytest.raises(BundleError) as err:
        load(bundle, trusted_keys=trusted)
    line = err.value.one_line()
    assert "\n" not in line
    return line


def _with_model(members: dict[str, bytes], model: bytes, update_manifest: bool) -> dict[str, bytes]:
    import hashlib

    members = {**members, "model.onnx": model}
    if update_manifest:  # a consistent bundle of the newer model, under the old signature
        manifest = json.loads(members["manifest.json"])
        manifest["files"]["model.onnx"] = {"sha256": hashlib.sha256(model).hexdigest(), "bytes": len(model)}
        members["manifest.json"] = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    return members


# --- signing and verifying -----------------------------------------------------------------------


@pytest.mark.slow  # the module's build fixture (a pipeline run) falls on it
def test_signed_bundle_loads_with_its_key(build, signed, keys):
    fleet_pub, other_pub = keys["fleet"][1], keys["other"][1]
    unverified = load(signed)
    verified = load(signed, trusted_keys=[fleet_pub])
    assert verified.predict(TEXTS) == unverified.predict(TEXTS)
    assert verified.signer.path == fleet_pub and unverified.signer is None
    # a fleet mid-rotation trusts both keys; the one that signed is the one reported
    assert load(signed, trusted_keys=[other_pub, fleet_pub]).signer.path == fleet_pub
    contents = open_bundle(signed, trusted_keys=[fleet_pub])
    assert set(_members(signed)) == set(contents.members) | {"manifest.json", SIGNATURE}


def test_signature_is_model_signing_over_every_member(signed, keys, tmp_path):
    """The signature member is an ordinary model-signing signature: unpacked into a folder, the
    bundle verifies with the library's own folder verifier, and a changed file is refused."""
    from model_signing import verifying

    folder = tmp_path / "unpacked"
    folder.mkdir()
    members = _members(signed)
    for name, data in members.items():
        if name != SIGNATURE:
            (folder / name).write_bytes(data)
    (tmp_path / "bundle.sig").write_bytes(members[SIGNATURE])
    config = verifying.Config().use_elliptic_key_verifier(public_key=keys["fleet"][1])
    config.verify(folder, tmp_path / "bundle.sig")
    statement = json.loads(base64.b64decode(json.loads(members[SIGNATURE])["dsseEnvelope"]["payload"]))
    assert {r["name"] for r in statement["predicate"]["resources"]} == set(members) - {SIGNATURE}
    (folder / "labels.json").write_bytes(b'{"0": "x", "1": "y"}\n')
    with pytest.raises(ValueError, match="mismatch"):
        verifying.Config().use_elliptic_key_verifier(public_key=keys["fleet"][1]).verify(folder, tmp_path / "bundle.sig")


def test_tampering_any_byte_of_any_member_is_refused(signed, keys, tmp_path):
    members = _members(signed)
    trusted = [keys["fleet"][1]]
    for name, data in members.items():
        if name == SIGNATURE:
            continue
        for offset in (0, len(data) // 2, len(data) - 1):
            changed = bytearray(data)
            changed[offset] ^= 0x01
            line = _refusal(_zip(tmp_path / "t.mcpkg", {**members, name: bytes(changed)}), trusted)
            assert (SWAPPED if name == "model.onnx" else MODIFIED) in line and repr(name) in line, line
    # a member added after signing
    line = _refusal(_zip(tmp_path / "t.mcpkg", {**members, "extra.txt": b"x"}), trusted)
    assert "does not cover: extra.txt" in line


def test_flipped_byte_in_the_archive_is_refused_as_corrupt(signed, keys, tmp_path):
    """A byte flipped in place (the zip's CRC-32 no longer matches) is refused before any digest."""
    data = bytearray(signed.read_bytes())
    with zipfile.ZipFile(signed) as zf:
        info = zf.getinfo("tokenizer.json")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 100] ^= 0x01
    (tmp_path / "flip.mcpkg").write_bytes(bytes(data))
    assert "corrupt or was modified" in _refusal(tmp_path / "flip.mcpkg", [keys["fleet"][1]])


def test_resigned_with_another_key_is_refused(signed, keys, tmp_path):
    other = tmp_path / "other.mcpkg"
    sign_bundle(signed, keys["other"][0], other)
    line = _refusal(other, [keys["fleet"][1]])
    assert UNTRUSTED in line and "fleet.pub.pem" in line
    assert load(other, trusted_keys=[keys["other"][1]]).signer.path == keys["other"][1]
    # the members are the same bytes: only the signature changed
    assert {n: d for n, d in _members(other).items() if n != SIGNATURE} == \
           {n: d for n, d in _members(signed).items() if n != SIGNATURE}


def test_stripped_signature_is_refused_when_keys_are_required(signed, keys, tmp_path):
    members = _members(signed)
    stripped = _zip(tmp_path / "stripped.mcpkg", {n: d for n, d in members.items() if n != SIGNATURE})
    assert UNSIGNED in _refusal(stripped, [keys["fleet"][1]])
    assert load(stripped).predict(TEXTS)  # without trusted keys, loading is as before


def test_bad_signature_is_refused(signed, keys, tmp_path):
    members = _members(signed)
    envelope = json.loads(members[SIGNATURE])
    sig = bytearray(base64.b64decode(envelope["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 0x01
    envelope["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    forged = _zip(tmp_path / "forged.mcpkg", {**members, SIGNATURE: json.dumps(envelope).encode()})
    assert BAD in _refusal(forged, [keys["fleet"][1]]) and "does not verify" in _refusal(forged, [keys["fleet"][1]])
    # a statement edited to name another digest, the old signature kept
    envelope = json.loads(members[SIGNATURE])
    statement = json.loads(base64.b64decode(envelope["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][0]["digest"] = "0" * 64
    envelope["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    edited = _zip(tmp_path / "edited.mcpkg", {**members, SIGNATURE: json.dumps(envelope).encode()})
    assert BAD in _refusal(edited, [keys["fleet"][1]])
    garbage = _zip(tmp_path / "garbage.mcpkg", {**members, SIGNATURE: b"not json"})
    assert "not a readable Sigstore bundle" in _refusal(garbage, [keys["fleet"][1]])


@pytest.mark.parametrize("update_manifest", [False, True], ids=["old-manifest", "consistent-new-manifest"])
def test_replayed_signature_with_a_newer_model_is_refused(signed, keys, newer_model, tmp_path, update_manifest):
    replay = _zip(tmp_path / "replay.mcpkg", _with_model(_members(signed), newer_model, update_manifest))
    line = _refusal(replay, [keys["fleet"][1]])
    assert SWAPPED in line and "replayed" in line, line
    if update_manifest:  # internally consistent: only the signature tells
        assert load(replay).predict(TEXTS)


def test_refusal_reasons_are_distinct(signed, keys, newer_model, tmp_path):
    members = _members(signed)
    envelope = json.loads(members[SIGNATURE])
    envelope["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(b"\0" * 70).decode()
    cases = {
        UNSIGNED: {n: d for n, d in members.items() if n != SIGNATURE},
        BAD: {**members, SIGNATURE: json.dumps(envelope).encode()},
        SWAPPED: _with_model(members, newer_model, False),
        MODIFIED: {**members, "vocab.txt": members["vocab.txt"] + b"x\n"},
    }
    other = tmp_path / "other.mcpkg"
    sign_bundle(signed, keys["other"][0], other)
    lines = {UNTRUSTED: _refusal(other, [keys["fleet"][1]])}
    lines.update({reason: _refusal(_zip(tmp_path / f"{i}.mcpkg", m), [keys["fleet"][1]])
                  for i, (reason, m) in enumerate(cases.items())})
    reasons = [UNSIGNED, BAD, UNTRUSTED, SWAPPED, MODIFIED]
    for reason, line in lines.items():
        assert [r for r in reasons if r in line] == [reason], line


def test_unusable_trusted_keys_are_input_errors(signed, keys, tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load(signed, trusted_keys=[tmp_path / "missing.pem"])
    with pytest.raises(InputError, match="not a PEM EC public key"):
        load(signed, trusted_keys=[keys["fleet"][0]])  # the private key file
    with pytest.raises(InputError, match="list is empty"):
        load(signed, trusted_keys=[])
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pub = tmp_path / "rsa.pub.pem"
    rsa_pub.write_bytes(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(InputError, match="not a PEM EC public key"):
        load(signed, trusted_keys=[rsa_pub])


# --- provenance ----------------------------------------------------------------------------------


def test_provenance_records_what_produced_the_build(build, signed, tiny_checkpoint):
    from mcompress.calibration.datasets import load_labelled_texts
    from mcompress.core.checkpoint import inspect_checkpoint

    report = json.loads((build / "report.json").read_text())
    statement = report["provenance"]
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://slsa.dev/provenance/v1"
    assert statement["subject"] == [{"name": "model.onnx", "digest": {"sha256": report["artifact"]["files"]["model.onnx"]["sha256"]}}]
    definition, run_details = statement["predicate"]["buildDefinition"], statement["predicate"]["runDetails"]
    deps = {d["name"]: d for d in definition["resolvedDependencies"]}
    ckpt = inspect_checkpoint(tiny_checkpoint)
    label2id = ckpt.label2id
    splits = tiny_checkpoint / "splits"
    # digests recomputed from the inputs themselves, not copied from the report
    assert deps["checkpoint"]["digest"]["sha256"] == ckpt.content_hash
    assert deps["eval data"]["digest"]["sha256"] == load_labelled_texts(splits, label2id, split="test").content_hash()
    assert deps["selection data"]["digest"]["sha256"] == load_labelled_texts(splits, label2id, split="validation").content_hash()
    assert deps["calibration data"]["digest"]["sha256"] == load_labelled_texts(splits, label2id, split="train", require_labels=False).content_hash()
    assert deps["recipe"]["digest"]["sha256"] == json_digest(report["recipe"])
    assert definition["externalParameters"] == {"target": "onnx-cpu", "recipe": report["recipe"]}
    assert definition["internalParameters"]["passes"] == [{"name": p["name"], "cache_key": p["cache_key"]} for p in report["passes"]]
    assert all(p["cache_key"] for p in definition["internalParameters"]["passes"])
    assert run_details["builder"]["version"]["mcompress"] == __version__
    assert run_details["builder"]["version"]["onnxruntime"] == report["versions"]["onnxruntime"]
    gates = {b["name"]: b["annotations"] for b in run_details["byproducts"]}
    for gate in report["gates"]:
        assert gates[gate["name"]] == {k: gate[k] for k in ("name", "passed", "value", "threshold", "unit") if k in gate}
    assert gates["verdict"]["passed"] == report["passed"]
    manifest, _ = read_bundle(signed)
    assert manifest["provenance"] == statement


def test_inspect_provenance_and_signature_lines(build, signed, keys, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(signed), "--provenance"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads((build / "report.json").read_text())["provenance"]
    assert "signed (not verified" in runner.invoke(app, ["inspect", str(signed)]).stdout
    verified = runner.invoke(app, ["inspect", str(signed), "--trusted-key", str(keys["fleet"][1])])
    assert verified.exit_code == 0 and "verified: signed by trusted key" in verified.stdout
    unsigned = tmp_path / "unsigned.mcpkg"
    package_build(build, unsigned)
    assert "signature unsigned" in runner.invoke(app, ["inspect", str(unsigned)]).stdout
    refused = runner.invoke(app, ["inspect", str(unsigned), "--trusted-key", str(keys["fleet"][1])])
    assert refused.exit_code == ExitCode.BAD_INPUT and UNSIGNED in refused.output


def test_check_bundle_catches_a_bundle_that_is_not_the_gated_build(build, signed, keys, newer_model, tmp_path):
    runner = CliRunner()
    report = str(build / "report.json")
    ok = runner.invoke(app, ["check", report, "--bundle", str(signed), "--trusted-key", str(keys["fleet"][1])])
    assert ok.exit_code == 0, ok.output
    assert "bundle model is the gated build's | pass" in ok.stdout and "bundle provenance | pass" in ok.stdout
    members = _members(signed)
    del members[SIGNATURE]
    other_model = _zip(tmp_path / "other-model.mcpkg", _with_model(members, newer_model, True))
    result = runner.invoke(app, ["check", report, "--bundle", str(other_model)])
    assert result.exit_code == ExitCode.GATE_FAILED, result.output
    assert "check failed: bundle model is the gated build's: differs: model.onnx" in result.output
    manifest = json.loads(members["manifest.json"])
    manifest["gates"][0]["value"] = -1.0
    other_verdicts = _zip(tmp_path / "verdicts.mcpkg", {**members, "manifest.json": json.dumps(manifest).encode()})
    result = runner.invoke(app, ["check", report, "--bundle", str(other_verdicts)])
    assert result.exit_code == ExitCode.GATE_FAILED and "check failed: bundle gate verdicts" in result.output
    # the same bundle with a signature check: refused as unsigned (exit 2), not compared
    result = runner.invoke(app, ["check", report, "--bundle", str(other_verdicts), "--trusted-key", str(keys["fleet"][1])])
    assert result.exit_code == ExitCode.BAD_INPUT and UNSIGNED in result.output


# --- command line and dependencies ---------------------------------------------------------------


def test_cli_package_sign_predict(build, keys, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.mcpkg"
    result = runner.invoke(app, ["package", str(build), "-o", str(out), "--sign-key", str(keys["other"][0])])
    assert result.exit_code == 0 and "signed with other.pem" in result.output, result.output
    refused = runner.invoke(app, ["predict", str(out), "great", "--trusted-key", str(keys["fleet"][1])])
    assert refused.exit_code == ExitCode.BAD_INPUT and UNTRUSTED in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    before = out.read_bytes()
    in_place = runner.invoke(app, ["sign", str(out), "--key", str(keys["fleet"][0]), "-o", str(out)])
    assert in_place.exit_code == ExitCode.BAD_INPUT and "never modified" in in_place.output
    resigned = tmp_path / "cli.fleet.mcpkg"
    result = runner.invoke(app, ["sign", str(out), "--key", str(keys["fleet"][0]), "-o", str(resigned)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == before  # the input bundle is untouched
    out = resigned
    result = runner.invoke(app, ["predict", str(out), "great", "--trusted-key", str(keys["other"][1]),
                                 "--trusted-key", str(keys["fleet"][1])])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[0])["text"] == "great"
    bad_key = runner.invoke(app, ["sign", str(out), "--key", str(keys["fleet"][1]), "-o", str(tmp_path / "x.mcpkg")])
    assert bad_key.exit_code == ExitCode.BAD_INPUT and "not an unencrypted PEM EC private key" in bad_key.output


_VERIFY_SCRIPT = """
import json, sys
BLOCKED = {"torch", "transformers", "typer", "rich"}
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {name}")
sys.meta_path.insert(0, Blocker())
from mcompress.runtime import load
keys = sys.argv[2:] or None
bundle = load(sys.argv[1], trusted_keys=keys)
bundle.predict(["fine"])
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & {"model_signing", "pydantic", "torch", "transformers"})))
"""


@pytest.mark.slow  # two fresh interpreters, one importing model-signing
def test_verification_needs_no_torch_and_model_signing_only_with_keys(signed, keys):
    def imported(*args) -> list[str]:
        proc = subprocess.run([sys.executable, "-c", _VERIFY_SCRIPT, str(signed), *map(str, args)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert imported() == []  # a signed bundle loads as before without keys: model-signing is not imported
    assert "model_signing" in imported(keys["fleet"][1])


@pytest.mark.slow
def test_serve_with_trusted_keys_serves_the_signed_bundle_and_refuses_others_before_binding(signed, keys, build,
                                                                                            tmp_path):
    """A real `mcompress serve` process: the fleet-signed bundle is served; an unsigned one and one
    trusted under another key exit 2 with one line, before the port is bound."""
    import subprocess

    import httpx

    from serving import MCOMPRESS, free_port, port_is_bound, running

    with running(signed, tmp_path / "served.log", "--trusted-key", str(keys["fleet"][1])) as server:
        answer = httpx.post(f"{server.url}/v1/predict", json={"texts": ["great"]}, timeout=60)
        assert answer.status_code == 200 and len(answer.json()["predictions"]) == 1
    unsigned = tmp_path / "unsigned.mcpkg"
    package_build(build, unsigned)
    for bundle, key, reason in ((unsigned, "fleet", UNSIGNED), (signed, "other", UNTRUSTED)):
        port = free_port()
        proc = subprocess.run([MCOMPRESS, "serve", str(bundle), "--port", str(port), "--trusted-key", str(keys[key][1])],
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == ExitCode.BAD_INPUT, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and reason in lines[0], proc.stderr
        assert not port_is_bound(port)
