"""Verifying an image list and its images: every check, in the order that names the right cause.

1. a signature is there (``missing signature``) and well formed (``bad signature``);
2. the key that made it is trusted (``endorser not trusted``);
3. the list is a JSON document (``invalid image list``) and the signature covers it (``bad signature``);
4. the list has the HEPiX fields (``invalid image list``), the endorser named by ``hv:endorser`` is the one
   expected, if any (``endorser not trusted``), and it is the list subscribed to (``another list``);
5. it has not expired (``expired``);
6. its ``hv:version`` is above the one held, or equal with the same content (``version not newer``).
An image file is checked against its entry: ``hv:size`` and ``sl:checksum:sha512`` (``image does not match``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from cloudpilot.domain.images import (
    ImageList,
    ImageListInvalid,
    ListedImage,
    canonical_bytes,
    iso,
    parse_document,
    parse_image_list,
    version_key,
)
from cloudpilot.images.errors import ImageListRefused, Refusal
from cloudpilot.images.signing import check_trusted, fingerprint, parse_signature, verify_signature

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class VerifiedList:
    image_list: ImageList
    document: dict[str, Any]
    canonical: bytes  # the canonical JSON of the document (what the server stores)
    endorser_key: str  # fingerprint of the key that signed it


def trusted_keys(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    return {fingerprint(k): k for k in keys}


def verify_list(
    data: bytes,
    signature: bytes | None,
    trusted: Mapping[str, Ed25519PublicKey],
    now: float,
    *,
    endorser_name: str | None = None,
    list_identifier: str | None = None,
    held_version: str | None = None,
    held_canonical: bytes | None = None,
) -> VerifiedList:
    """Verify a list file's bytes and its detached signature, or raise :class:`ImageListRefused`.

    ``trusted``: fingerprint -> key of the endorsers trusted for this list. ``endorser_name``: the
    ``hv:endorser`` DN expected, if any. ``list_identifier``, ``held_version``, ``held_canonical``: the list
    already held (a refresh must bring the same list, and a newer version of it or the very same content)."""
    sig = parse_signature(signature)
    check_trusted(sig, trusted)
    try:
        doc = parse_document(data)
    except ImageListInvalid as exc:
        raise ImageListRefused(Refusal.INVALID, str(exc), exc.field) from exc
    key = verify_signature(doc, sig, trusted)
    try:
        image_list = parse_image_list(doc)
    except ImageListInvalid as exc:
        raise ImageListRefused(Refusal.INVALID, str(exc), exc.field) from exc
    if endorser_name is not None and image_list.endorser != endorser_name:
        raise ImageListRefused(
            Refusal.UNTRUSTED_ENDORSER,
            f"hv:endorser is {image_list.endorser!r}, not the endorser {endorser_name!r} trusted for this list",
            "hv:endorser",
        )
    if list_identifier is not None and image_list.identifier != list_identifier:
        raise ImageListRefused(
            Refusal.OTHER_LIST,
            f"this is list {image_list.identifier}, not the list {list_identifier} subscribed to",
            "dc:identifier",
        )
    if now >= image_list.expires_at:
        raise ImageListRefused(
            Refusal.EXPIRED,
            f"list {image_list.identifier} version {image_list.version} expired at {iso(image_list.expires_at)}",
            "dc:date:expires",
        )
    canonical = canonical_bytes(doc)
    if held_version is not None:
        held = version_key(held_version)
        if image_list.version_key < held:
            raise ImageListRefused(
                Refusal.DOWNGRADE,
                f"hv:version {image_list.version} is lower than version {held_version} already held",
                "hv:version",
            )
        if image_list.version_key == held and held_canonical is not None and canonical != held_canonical:
            raise ImageListRefused(
                Refusal.DOWNGRADE,
                f"the content changed but hv:version is still {image_list.version}: a new list needs a new version",
                "hv:version",
            )
    return VerifiedList(image_list, doc, canonical, key)


def verify_image_stream(image: ListedImage, stream: BinaryIO) -> int:
    """Read an image file to its end and check it against its list entry; return its size."""
    digest = hashlib.sha512()
    size = 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > image.size:
            raise mismatch(image, f"it is larger than hv:size {image.size} bytes")
        digest.update(chunk)
    check_image(image, size, digest.hexdigest())
    return size


def verify_image_file(image: ListedImage, path: Path) -> int:
    with path.open("rb") as stream:
        return verify_image_stream(image, stream)


def check_image(image: ListedImage, size: int, sha512: str) -> None:
    if size != image.size:
        raise mismatch(image, f"{size} bytes fetched, hv:size says {image.size}")
    if sha512 != image.sha512:
        raise mismatch(image, f"sha512 {sha512[:16]}… fetched, sl:checksum:sha512 says {image.sha512[:16]}…")


def mismatch(image: ListedImage, what: str) -> ImageListRefused:
    field = "hv:size" if "hv:size" in what else "sl:checksum:sha512"
    return ImageListRefused(Refusal.IMAGE_MISMATCH, f"image {image.identifier} ({image.uri}): {what}", field)
