"""Endorsers' keys and detached Ed25519 signatures of image lists (``cryptography``).

Keys: the private key is a PEM PKCS#8 file (written 0600), the public key a PEM SubjectPublicKeyInfo file; a
public key may also be given as the base64 of its 32 raw bytes. An endorser is identified by the fingerprint
of its public key, ``SHA256:`` followed by the unpadded base64 of the SHA-256 of the raw key (as OpenSSH
prints them).

A signature file (``LIST.json.sig``) is a small JSON object::

    {"format": "cloudpilot-signature/1", "alg": "ed25519", "key": "SHA256:…", "signature": "<base64>"}

``signature`` is the Ed25519 signature of :func:`cloudpilot.domain.images.signed_message` of the list; ``key``
names the key that made it, so a verifier tells "signed by a key I do not trust" from "a broken signature".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from cloudpilot.domain.images import signed_message
from cloudpilot.images.errors import ImageListRefused, KeyFileError, Refusal

SIGNATURE_FORMAT = "cloudpilot-signature/1"
ALG = "ed25519"
MAX_SIGNATURE_BYTES = 4096


# --- keys -------------------------------------------------------------------------------------------------------


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey) -> str:
    digest = hashlib.sha256(raw_public_key(key)).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def write_keypair(prefix: Path, force: bool = False) -> tuple[Path, Path, str]:
    """Write ``PREFIX.key`` (private, mode 0600) and ``PREFIX.pub``; return both paths and the fingerprint."""
    key_path, pub_path = Path(f"{prefix}.key"), Path(f"{prefix}.pub")
    for path in (key_path, pub_path):
        if path.exists() and not force:
            raise KeyFileError(f"{path} exists; remove it or pass --force")
    key = generate_key()
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fd = os.open(key_path, flags, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(private_key_pem(key))
        os.chmod(key_path, 0o600)
        pub_path.write_text(public_key_pem(key.public_key()))
    except OSError as exc:
        raise KeyFileError(f"cannot write the key pair {prefix}: {exc.strerror}") from exc
    return key_path, pub_path, fingerprint(key.public_key())


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read the key {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} is not an Ed25519 key")
    return key


def parse_public_key(text: str | bytes) -> Ed25519PublicKey:
    """A PEM public key, or the base64 of the 32 raw bytes of one."""
    data = text.encode() if isinstance(text, str) else text
    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as exc:
            raise KeyFileError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(data.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError("not a PEM public key nor the base64 of 32 raw bytes") from exc
    if len(raw) != 32:
        raise KeyFileError(f"a raw Ed25519 public key has 32 bytes, not {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key(path_or_text: str | Path) -> Ed25519PublicKey:
    """A public key from a file (PEM or raw base64), or given inline as such text."""
    path = Path(path_or_text)
    try:
        is_file = path.is_file()
    except OSError:  # a long inline key is not a file name
        is_file = False
    if is_file:
        try:
            return parse_public_key(path.read_bytes())
        except KeyFileError as exc:
            raise KeyFileError(f"{path}: {exc}") from exc
    return parse_public_key(str(path_or_text))


# --- signatures -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    key: str  # fingerprint of the signing key
    value: bytes


def sign_document(doc: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The signature file's content for the list ``doc``."""
    body = {
        "format": SIGNATURE_FORMAT,
        "alg": ALG,
        "key": fingerprint(key.public_key()),
        "signature": base64.b64encode(key.sign(signed_message(doc))).decode(),
    }
    return (json.dumps(body, indent=2) + "\n").encode()


def parse_signature(data: bytes | None) -> Signature:
    if data is None or not data.strip():
        raise ImageListRefused(Refusal.MISSING_SIGNATURE, "the list has no signature", "signature")
    try:
        if len(data) > MAX_SIGNATURE_BYTES:
            raise ValueError("too large")
        body = json.loads(data)
        if not isinstance(body, dict) or body.get("format") != SIGNATURE_FORMAT:
            raise ValueError(f"not a {SIGNATURE_FORMAT} document")
        if body.get("alg") != ALG:
            raise ValueError(f"algorithm {body.get('alg')!r} is not {ALG}")
        value = base64.b64decode(str(body["signature"]), validate=True)
        key = str(body["key"])
    except (ValueError, KeyError, binascii.Error) as exc:
        raise ImageListRefused(Refusal.BAD_SIGNATURE, f"malformed signature file: {exc}", "signature") from exc
    return Signature(key, value)


def check_trusted(signature: Signature, trusted: Mapping[str, Ed25519PublicKey]) -> Ed25519PublicKey:
    """The trusted key that made ``signature``, or ``endorser not trusted``."""
    key = trusted.get(signature.key)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none"
        raise ImageListRefused(
            Refusal.UNTRUSTED_ENDORSER,
            f"the list is signed by key {signature.key}, which is not trusted here (trusted: {known})",
            "endorser",
        )
    return key


def verify_signature(doc: Mapping[str, Any], signature: Signature, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """Check ``signature`` over ``doc`` with the trusted key it names; return that key's fingerprint."""
    key = check_trusted(signature, trusted)
    try:
        key.verify(signature.value, signed_message(doc))
    except InvalidSignature as exc:
        raise ImageListRefused(
            Refusal.BAD_SIGNATURE,
            f"the signature does not match the list's content (key {signature.key}): the list was changed after "
            "it was signed, or the signature belongs to another list",
            "signature",
        ) from exc
    return signature.key
