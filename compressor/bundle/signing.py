"""Bundle signatures with OpenSSF model-signing (``pip install 'mcompress[sign]'``).

What is signed: every member of the bundle but the signature itself (``manifest.json``, the model
files, the tokenizer files, ``labels.json``), each by its sha256, exactly as model-signing signs a
model folder with file serialization: an in-toto Statement (predicate
``https://model_signing/signature/v1.0``, one resource per file, subject = sha256 over the
resources' digests in name order) in a DSSE envelope, signed with an elliptic-curve private key
(P-256/384/521), stored as a Sigstore bundle (JSON) in the member ``signature.sigstore.json``. The
manifest lists every other member's sha256 and carries the build's provenance, so the signature
covers both; it also names each member's digest itself, so a model swapped under an old signature
fails even before the manifest is consulted. Unpacked into a folder, the members verify with
model-signing's own folder verifier (``model_signing.verifying``; a test checks it).

Verification never writes to disk: the signature is checked with model-signing's EC verifier (DSSE
over the statement, the key named by the bundle's public-key hint) and the statement's digests are
compared here with the digests of the members read from the zip. The refusals, each a distinct
one-line BundleError (exit 2): unsigned, an unreadable or bad signature, a key not in the trusted
set, the model not the one the signature covers (a swapped model, or a signature replayed from
another build), a member added, missing or modified after signing.

model-signing 1.1.1 exposes signing and verification of folders only; signing a list of in-memory
digests uses its ``_signing``/``_hashing`` modules (the same objects its folder API builds), which
is why the version is pinned.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from mcompress.bundle.runtime import SIGNATURE, BundleError
from mcompress.core.errors import InputError

HASH_ALGORITHM = "sha256"
_INSTALL_HINT = "pip install 'mcompress[sign]' (model-signing==1.1.1 and pyopenssl)."


class SignatureError(BundleError):
    """A bundle's signature is bad, untrusted or does not cover its members (exit 2)."""


def _model_signing():
    """model-signing's modules (imported here only: ~1.5 s, and only when a signature is made or
    checked)."""
    try:
        from model_signing import manifest
        from model_signing._hashing import hashing
        from model_signing._signing import sign_ec_key, sign_sigstore_pb, signing
    except ImportError as err:
        raise InputError(f"signing and verifying bundles needs model-signing ({err}).", _INSTALL_HINT) from None
    return manifest, hashing, sign_ec_key, sign_sigstore_pb, signing


def key_id(public_key) -> str:
    """The key's id as model-signing records it in a signature: sha256 of its PEM SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign_digests(digests: dict[str, str], private_key: Path, name: str = "bundle") -> bytes:
    """The Sigstore bundle (JSON bytes) that signs ``digests`` (member name -> sha256 hex) with the
    PEM EC private key at ``private_key``."""
    manifest, hashing, sign_ec_key, _, signing = _model_signing()
    from cryptography.exceptions import UnsupportedAlgorithm

    private_key = Path(private_key)
    try:
        signer = sign_ec_key.Signer(private_key)
    except FileNotFoundError:
        raise InputError(f"signing key {private_key} does not exist.",
                         "Create one: openssl ecparam -name prime256v1 -genkey -noout -out KEY.pem") from None
    except (ValueError, TypeError, AttributeError, OSError, UnsupportedAlgorithm) as err:  # AttributeError: not an EC key
        raise InputError(f"signing key {private_key} is not an unencrypted PEM EC private key (P-256/384/521): {err}",
                         "Create one: openssl ecparam -name prime256v1 -genkey -noout -out KEY.pem") from None
    serialization = manifest._FileSerialization(HASH_ALGORITHM, allow_symlinks=False, ignore_paths=[SIGNATURE])
    items = [manifest.FileManifestItem(path=pathlib.PurePosixPath(member),
                                       digest=hashing.Digest(HASH_ALGORITHM, bytes.fromhex(digest)))
             for member, digest in sorted(digests.items())]
    signature = signer.sign(signing.Payload(manifest.Manifest(name, items, serialization)))
    return signature.bundle.to_json().encode("utf-8")


@dataclass(frozen=True)
class TrustedKey:
    path: Path
    key_id: str
    verifier: object  # model_signing's sign_ec_key.Verifier


def load_trusted_keys(paths: Iterable[str | Path | TrustedKey]) -> list[TrustedKey]:
    """Each PEM EC public key as a verifier (a TrustedKey passes through, so a server loads its
    keys once); an InputError naming the first unusable one."""
    _, _, sign_ec_key, _, _ = _model_signing()
    from cryptography.exceptions import UnsupportedAlgorithm

    if isinstance(paths, (str, Path, TrustedKey)):  # one key given where a list is expected
        paths = [paths]
    keys = []
    for path in paths:
        if isinstance(path, TrustedKey):
            keys.append(path)
            continue
        path = Path(path)
        try:
            verifier = sign_ec_key.Verifier(path)
        except FileNotFoundError:
            raise InputError(f"trusted key {path} does not exist.", "Pass the signer's public key (PEM).") from None
        except (ValueError, TypeError, AttributeError, OSError, UnsupportedAlgorithm) as err:  # AttributeError: not EC
            raise InputError(f"trusted key {path} is not a PEM EC public key (P-256/384/521): {err}",
                             "Export it with: openssl ec -in KEY.pem -pubout -out KEY.pub.pem") from None
        keys.append(TrustedKey(path, key_id(verifier._public_key), verifier))
    if not keys:
        raise InputError("trusted keys were required but the list is empty.", "Pass at least one --trusted-key PUB.pem.")
    return keys


def signature_key_id(signature: bytes) -> str | None:
    """The key id a signature names (its verification material's public-key hint), without
    verifying anything; None when unreadable."""
    try:
        hint = json.loads(signature.decode("utf-8"))["verificationMaterial"]["publicKey"]["hint"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return hint if isinstance(hint, str) else None


def _parse(signature: bytes, where: str):
    """The Sigstore bundle, parsed as model-signing's Signature.read parses a file."""
    _, _, _, sign_sigstore_pb, _ = _model_signing()
    from sigstore_models.bundle import v1 as bundle_pb

    try:
        parsed = json.loads(signature.decode("utf-8"))
        material = parsed["verificationMaterial"]
        material.setdefault("tlogEntries", [])
        for field in ("rawBytes", "keyDetails"):
            material.get("publicKey", {}).pop(field, None)
        return sign_sigstore_pb.Signature(bundle_pb.Bundle.from_dict(parsed))
    except Exception as err:  # json, KeyError, pydantic/protobuf validation: all mean "not a signature"
        raise SignatureError(f"{where}: {SIGNATURE} is not a readable Sigstore bundle "
                             f"({type(err).__name__}); bad signature.") from None


def signed_digests(signature: bytes, keys: list[TrustedKey], where: str) -> tuple[dict[str, str], TrustedKey]:
    """Check the signature with the trusted key it names; return the signed digests (member name
    -> sha256 hex) and that key."""
    parsed = _parse(signature, where)
    hint = signature_key_id(signature)
    if not hint:
        raise SignatureError(f"{where}: {SIGNATURE} names no public key (no key hint); bad signature.",
                             "Re-sign it with `mcompress sign`.")
    key = next((k for k in keys if k.key_id == hint), None)
    if key is None:
        trusted = ", ".join(f"{k.path.name} {k.key_id[:12]}" for k in keys)
        raise SignatureError(f"{where} is signed by a key not in the trusted set (key sha256 {hint[:12]}…; "
                             f"trusted: {trusted}).", "Trust the signer's public key with --trusted-key, or re-sign.")
    try:
        signed = key.verifier.verify(parsed)
    except Exception as err:  # InvalidSignature, ValueError, KeyError...: whatever the library finds wrong, it is refused
        raise SignatureError(f"{where}: the signature does not verify with trusted key {key.path.name} "
                             f"({type(err).__name__}); bad signature.") from None
    try:
        digests = {d.identifier: (d.digest.algorithm, d.digest.digest_hex) for d in signed.resource_descriptors()}
    except Exception as err:  # a verified statement whose resources model-signing cannot order or name
        raise SignatureError(f"{where}: the signed statement lists unusable resources ({type(err).__name__}); "
                             "bad signature.") from None
    for identifier, (algorithm, _) in digests.items():
        if algorithm != HASH_ALGORITHM:
            raise SignatureError(f"{where}: the signature uses {algorithm}, not {HASH_ALGORITHM} file digests; "
                                 "bad signature.")
    return {identifier: digest for identifier, (_, digest) in digests.items()}, key


def check_members(signed: dict[str, str], actual: dict[str, str], model_files: list[str], where: str) -> None:
    """The members are exactly the signed ones with the signed digests; the model first, so a
    swapped model or a replayed signature is named as such."""
    for name in model_files:
        if name in signed and actual.get(name) != signed[name]:
            raise SignatureError(f"{where}: the model {name!r} is not the one the signature covers (signed sha256 "
                                 f"{signed[name][:16]}…, bundle {str(actual.get(name))[:16]}…); refusing a swapped "
                                 "model or a signature replayed from another build.")
    unsigned = sorted(set(actual) - set(signed))
    if unsigned:
        raise SignatureError(f"{where} has members the signature does not cover: {', '.join(unsigned)}; "
                             "they were added after signing.")
    missing = sorted(set(signed) - set(actual))
    if missing:
        raise SignatureError(f"{where} lacks signed members: {', '.join(missing)}; they were removed after signing.")
    for name in sorted(signed):
        if actual[name] != signed[name]:
            raise SignatureError(f"{where}: member {name!r} was modified after signing (signed sha256 "
                                 f"{signed[name][:16]}…, content {actual[name][:16]}…).")
