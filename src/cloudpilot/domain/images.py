"""Image lists in the HEPiX format: their parsed form, the exact bytes an endorser signs, versions, the tags an
image provides, and which images a cloud may boot now (docs/images.md). Pure: no I/O, no cryptography.

An image list is a JSON document ``{"hv:imagelist": {...}}``. What is signed is not the file as it lies on
disk but :func:`signed_message`: the prefix ``b"cloudpilot image list v1\\n"`` followed by the *canonical* JSON
of the parsed document (keys sorted, no insignificant whitespace, UTF-8, integers only). A list may thus be
re-indented by a mirror without breaking its signature, while every character of every value is covered; and
what is verified is exactly what is used (duplicate keys, which parsers resolve differently, are refused).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cloudpilot.domain.errors import DomainError
from cloudpilot.domain.times import iso

SIGNED_PREFIX = b"cloudpilot image list v1\n"
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]{0,199}")
SHA512_HEX = re.compile(r"[0-9a-f]{128}")
VERSION = re.compile(r"[0-9]+(\.[0-9]+)*")
REQUIRED_IMAGE_FIELDS = (
    "dc:identifier",
    "dc:title",
    "hv:uri",
    "hv:size",
    "sl:checksum:sha512",
    "sl:os",
    "sl:osversion",
    "sl:arch",
    "hv:format",
)


class ImageListInvalid(DomainError):
    """A document that is not a usable image list; ``field`` names the culprit (``hv:images[2].hv:size``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


# --- the document and its signed bytes --------------------------------------------------------------------------


def parse_document(data: bytes) -> dict[str, Any]:
    """The JSON object of a list file. Refused: invalid UTF-8 or JSON, duplicate keys, non-integer numbers (their
    text form is not canonical), anything but an object at the top."""
    try:
        text = data.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_float=_no_float, parse_constant=_no_float)
    except UnicodeDecodeError as exc:
        raise ImageListInvalid(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise ImageListInvalid(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(doc, dict):
        raise ImageListInvalid('the document must be a JSON object {"hv:imagelist": {...}}')
    return doc


def canonical_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical JSON of ``doc``: keys sorted, ``,``/``:`` separators without spaces, UTF-8 without escapes
    beyond those JSON requires. For documents of objects, arrays, strings, integers, booleans and null this is
    one byte string per document."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def signed_message(doc: Mapping[str, Any]) -> bytes:
    """Exactly the bytes an endorser's Ed25519 signature covers."""
    return SIGNED_PREFIX + canonical_bytes(doc)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise ImageListInvalid(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _no_float(text: str) -> Any:
    raise ImageListInvalid(f"the number {text} is not an integer (image lists hold integers only)")


# --- the parsed list --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListedImage:
    """One ``hv:image`` of a list."""

    identifier: str
    title: str
    uri: str
    size: int
    sha512: str
    os: str
    osversion: str
    arch: str
    format: str
    version: str | None = None
    expires_at: float | None = None  # an image's own dc:date:expires, if it has one
    tags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ImageList:
    identifier: str
    version: str
    created_at: float
    expires_at: float
    endorser: str  # the DN or name of hv:endorser
    images: tuple[ListedImage, ...]
    title: str = ""

    @property
    def version_key(self) -> tuple[int, ...]:
        return version_key(self.version)


def version_key(version: str) -> tuple[int, ...]:
    """``"1.10"`` -> ``(1, 10)``: versions compare number by number."""
    if not VERSION.fullmatch(version):
        raise ImageListInvalid(f"{version!r} is not a version (dotted numbers, e.g. 3 or 1.2)", "hv:version")
    return tuple(int(p) for p in version.split("."))


def parse_image_list(doc: Mapping[str, Any]) -> ImageList:
    """Check the HEPiX fields cloudpilot uses and return the list. Unknown fields are kept (they are signed) but
    not interpreted."""
    body = doc.get("hv:imagelist")
    if not isinstance(body, dict):
        raise ImageListInvalid("missing or not an object", "hv:imagelist")
    identifier = _identifier(body.get("dc:identifier"), "dc:identifier")
    version_value = body.get("hv:version")
    if isinstance(version_value, int) and not isinstance(version_value, bool):
        version_value = str(version_value)
    if not isinstance(version_value, str):
        raise ImageListInvalid('missing (a version such as "3" or "1.2")', "hv:version")
    version_key(version_value)
    created = _date(body.get("dc:date:created"), "dc:date:created")
    expires = _date(body.get("dc:date:expires"), "dc:date:expires")
    if expires <= created:
        raise ImageListInvalid("the list expires before it was created", "dc:date:expires")
    endorser = endorser_name(body.get("hv:endorser"))
    entries = body.get("hv:images")
    if not isinstance(entries, list):
        raise ImageListInvalid("missing or not a list", "hv:images")
    images: list[ListedImage] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"hv:images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("hv:image"), dict):
            raise ImageListInvalid('each entry must be {"hv:image": {...}}', where)
        image = parse_image_entry(entry["hv:image"], f"{where}.hv:image")
        if image.identifier in seen:
            raise ImageListInvalid(f"image {image.identifier} is listed twice", f"{where}.hv:image.dc:identifier")
        seen.add(image.identifier)
        images.append(image)
    title = body.get("dc:title")
    return ImageList(
        identifier=identifier,
        version=version_value,
        created_at=created,
        expires_at=expires,
        endorser=endorser,
        images=tuple(images),
        title=title if isinstance(title, str) else "",
    )


def endorser_name(value: Any) -> str:
    """The endorser's DN or name: ``hv:endorser`` as a string, or HEPiX's ``{"hv:x509": {"hv:dn": ...}}``."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        x509 = value.get("hv:x509")
        if isinstance(x509, dict):
            for key in ("hv:dn", "dc:creator"):
                if isinstance(x509.get(key), str) and x509[key].strip():
                    return x509[key].strip()
    raise ImageListInvalid('missing: a name or {"hv:x509": {"hv:dn": ...}}', "hv:endorser")


def parse_image_entry(raw: Mapping[str, Any], where: str = "hv:image") -> ListedImage:
    """One ``hv:image`` object of a list."""
    for key in REQUIRED_IMAGE_FIELDS:
        if key not in raw:
            raise ImageListInvalid("missing", f"{where}.{key}")
    strings = {}
    for key in ("dc:title", "hv:uri", "sl:os", "sl:osversion", "sl:arch", "hv:format"):
        value = raw[key]
        if not isinstance(value, str) or not value.strip():
            raise ImageListInvalid("must be a non-empty string", f"{where}.{key}")
        strings[key] = value.strip()
    if not re.fullmatch(r"https?://\S+", strings["hv:uri"]):
        raise ImageListInvalid("must be an http:// or https:// URL", f"{where}.hv:uri")
    size = raw["hv:size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageListInvalid("must be a number of bytes (an integer, at least 0)", f"{where}.hv:size")
    sha512 = raw["sl:checksum:sha512"]
    if not isinstance(sha512, str) or not SHA512_HEX.fullmatch(sha512.lower()):
        raise ImageListInvalid("must be 128 hexadecimal digits", f"{where}.sl:checksum:sha512")
    version = raw.get("hv:version")
    extra = raw.get("cloudpilot:tags", [])
    if not isinstance(extra, list) or not all(isinstance(t, str) and _tag(t) for t in extra):
        raise ImageListInvalid("must be a list of tags (no commas)", f"{where}.cloudpilot:tags")
    expires = _date(raw["dc:date:expires"], f"{where}.dc:date:expires") if "dc:date:expires" in raw else None
    return ListedImage(
        identifier=_identifier(raw["dc:identifier"], f"{where}.dc:identifier"),
        title=strings["dc:title"],
        uri=strings["hv:uri"],
        size=size,
        sha512=sha512.lower(),
        os=strings["sl:os"],
        osversion=strings["sl:osversion"],
        arch=strings["sl:arch"],
        format=strings["hv:format"],
        version=str(version) if isinstance(version, str | int) and not isinstance(version, bool) else None,
        expires_at=expires,
        tags=image_tags(strings["sl:os"], strings["sl:osversion"], strings["sl:arch"], extra),
    )


def _identifier(value: Any, where: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ImageListInvalid(
            "must be an identifier: letters, digits and . _ : @ + - (at most 200, starting with a letter or digit)",
            where,
        )
    return value


def _date(value: Any, where: str) -> float:
    if not isinstance(value, str):
        raise ImageListInvalid("missing (an ISO 8601 time such as 2026-12-01T00:00:00Z)", where)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ImageListInvalid(f"{value!r} is not an ISO 8601 time", where) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# --- tags -------------------------------------------------------------------------------------------------------


def _tag(text: str) -> str:
    """A tag of free text: lower case, whitespace as ``-``, no commas (pilots pass tags comma-separated)."""
    return re.sub(r"\s+", "-", text.strip().lower()).replace(",", "")


def image_tags(os: str, osversion: str, arch: str, extra: list[str] | tuple[str, ...] = ()) -> frozenset[str]:
    """The tags a VM of the image offers to jobs' ``requirements.tags``: ``os:<sl:os>``, ``osversion:<sl:osversion>``,
    ``arch:<sl:arch>`` (lower case, spaces as ``-``) and the image's ``cloudpilot:tags``."""
    tags = {f"os:{_tag(os)}", f"osversion:{_tag(osversion)}", f"arch:{_tag(arch)}"}
    tags.update(_tag(t) for t in extra if _tag(t))
    return frozenset(tags)


# --- what the site holds, and what may boot ---------------------------------------------------------------------


class ImageState(StrEnum):
    ENDORSED = "endorsed"  # in a held, verified list that has not expired, and not revoked: may boot
    EXPIRED = "expired"  # its list (or the image itself) is past dc:date:expires
    REVOKED = "revoked"  # revoked by an admin or site admin of this server
    UNENDORSED = "unendorsed"  # in no list held now (never, or withdrawn by a newer version, or unsubscribed)
    REJECTED = "rejected"  # the file fetched does not match the list's hv:size / sl:checksum:sha512


@dataclass(frozen=True, slots=True)
class HeldImage:
    """An image of a list this server holds, with what happened to it here."""

    identifier: str
    subscription_id: int
    list_identifier: str
    list_version: str
    expires_at: float  # the earlier of its list's and its own dc:date:expires
    tags: frozenset[str] = frozenset()
    listed: bool = True  # False: a newer version of its list no longer has it
    revoked_at: float | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    rejected_reason: str | None = None
    local_path: str | None = None  # the verified file, once fetched (clouds with register_images)
    title: str = ""


def image_state(held: HeldImage | None, now: float) -> tuple[ImageState, str]:
    """The image's state at ``now`` and why, in words for an operator or a user."""
    if held is None:
        return ImageState.UNENDORSED, "in no image list this server holds"
    if held.revoked_at is not None:
        why = f"revoked by {held.revoked_by or 'an admin'} at {iso(held.revoked_at)}"
        return ImageState.REVOKED, why + (f": {held.revoke_reason}" if held.revoke_reason else "")
    if held.rejected_reason is not None:
        return ImageState.REJECTED, held.rejected_reason
    if not held.listed:
        return ImageState.UNENDORSED, f"no longer in list {held.list_identifier} (version {held.list_version})"
    if now >= held.expires_at:
        return ImageState.EXPIRED, f"endorsement expired at {iso(held.expires_at)} (list {held.list_identifier})"
    return ImageState.ENDORSED, f"endorsed by list {held.list_identifier} version {held.list_version}"


@dataclass(frozen=True, slots=True)
class ImageCatalog:
    """Every image the server holds. ``enforced``: only endorsed images may boot (docs/images.md, "The rule")."""

    enforced: bool
    images: dict[str, HeldImage] = field(default_factory=dict)

    def state(self, identifier: str, now: float) -> tuple[ImageState, str]:
        return image_state(self.images.get(identifier), now)


NOT_ENFORCED = ImageCatalog(enforced=False)


@dataclass(frozen=True, slots=True)
class CloudImages:
    """What one cloud can boot now. Empty when no image list is in force (the plain per-VO ``images`` apply)."""

    enforced: bool = False
    mapping: dict[str, str] = field(default_factory=dict)  # endorsed identifier -> the cloud's image id
    bootable: dict[str, frozenset[str]] = field(default_factory=dict)  # identifiers endorsed now -> their tags
    tags: dict[str, frozenset[str]] = field(default_factory=dict)  # every mapped identifier -> its tags
    refused: dict[str, str] = field(default_factory=dict)  # identifier (or a VO's image) -> why it may not boot
    vo_images: dict[str, str | None] = field(default_factory=dict)  # VO ('*') -> identifier; None: not endorsed

    def identifier_of(self, image_id: str | None) -> str | None:
        """The endorsed identifier a VM booted from the cloud's ``image_id`` runs, if any."""
        if image_id is None:
            return None
        for identifier, mapped in self.mapping.items():
            if mapped == image_id:
                return identifier
        return None


def cloud_images(
    catalog: ImageCatalog,
    now: float,
    endorsed_images: Mapping[str, str],
    vo_images: Mapping[str, str],
    register_images: bool = False,
) -> CloudImages:
    """Which endorsed images a cloud maps (``endorsed_images`` of its configuration, and the verified files of
    held images when it registers them itself), which of them may boot at ``now``, and what its per-VO
    ``images`` mean when image lists are in force: a VO's image must be an endorsed identifier, or the cloud
    image id an endorsed identifier maps to; anything else is refused."""
    if not catalog.enforced:
        return CloudImages()
    mapping: dict[str, str] = {}
    refused: dict[str, str] = {}
    if register_images:
        for identifier, held in catalog.images.items():
            if held.local_path is not None:
                mapping[identifier] = held.local_path
            elif identifier not in endorsed_images:
                state, why = image_state(held, now)
                if state is ImageState.ENDORSED:
                    refused[identifier] = "pending: its file is not fetched and verified yet"
                else:
                    refused[identifier] = f"{state.value}: {why}"
    mapping.update(endorsed_images)
    bootable: dict[str, frozenset[str]] = {}
    tags: dict[str, frozenset[str]] = {}
    for identifier in sorted(mapping):
        held = catalog.images.get(identifier)
        tags[identifier] = held.tags if held is not None else frozenset()
        state, why = image_state(held, now)
        if state is ImageState.ENDORSED:
            bootable[identifier] = tags[identifier]
        else:
            refused[identifier] = f"{state.value}: {why}"
    reverse = {image_id: identifier for identifier, image_id in mapping.items()}
    defaults: dict[str, str | None] = {}
    for vo, image in vo_images.items():
        identifier = image if image in mapping else reverse.get(image)
        defaults[vo] = identifier
        if identifier is None:
            who = "other VOs" if vo == "*" else f"VO {vo}"
            refused[image] = f"unendorsed: image {image} of {who} is no endorsed image of this cloud"
    return CloudImages(True, mapping, bootable, tags, refused, defaults)
