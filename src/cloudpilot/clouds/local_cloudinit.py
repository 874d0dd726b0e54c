"""The cloud-init subset a ``local`` VM boots from: ``write_files``, ``runcmd`` and ``power_state``.

User-data is either a ``#cloud-config`` YAML document or a MIME multipart message whose ``text/cloud-config``
parts are merged the way cloud-init merges them: by default a later part replaces keys (lists included), and a
part's ``Merge-Type`` header may ask for ``list(append)`` and ``dict(no_replace)``, which is how cloudpilot's own
builder adds a site's part without losing its ``runcmd``. Everything else (shell-script parts, other cloud-config
modules) is ignored and only *named* in the boot notes, so the path from user-data to a running pilot is
exercised exactly as far as cloudpilot's own user-data needs it, and no further.

User-data carries credentials, so :class:`UserDataError` messages name the offending entry by its position,
never by its content.

This module parses on its own rather than importing ``cloudpilot.context``: ``clouds`` may only import
``domain`` (see the layer table in DESIGN.md), and a VM must not trust the builder that produced its user-data.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import gzip
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CLOUD_CONFIG_HEADER = "#cloud-config"
DEFAULT_FILE_MODE = 0o644
_LIST_KEYS = ("write_files", "runcmd")


class UserDataError(Exception):
    """The user-data cannot be applied; the message never quotes it."""


@dataclass(frozen=True, slots=True)
class FileToWrite:
    target: Path  # already re-rooted under the VM root
    data: bytes
    mode: int
    append: bool = False


@dataclass(frozen=True, slots=True)
class BootPlan:
    files: list[FileToWrite] = field(default_factory=list)
    runcmd: list[list[str]] = field(default_factory=list)  # argv lists; a string entry became ["sh", "-c", it]
    power_off: bool = False
    notes: list[str] = field(default_factory=list)  # what was ignored, by name only


def parse_user_data(user_data: str) -> tuple[dict[str, Any], list[str]]:
    """The merged cloud-config of ``user_data`` and notes on the parts that were ignored."""
    head = user_data.lstrip()[:200].lower()
    if head.startswith(("content-type:", "mime-version:")):
        return _parse_multipart(user_data)
    if user_data.lstrip().startswith(CLOUD_CONFIG_HEADER):
        return _load_yaml(user_data, "user-data"), []
    if not user_data.strip():
        return {}, []
    return {}, ["user-data is not #cloud-config: ignored"]


def _parse_multipart(user_data: str) -> tuple[dict[str, Any], list[str]]:
    message = email.message_from_string(user_data, policy=email.policy.compat32)
    merged: dict[str, Any] = {}
    notes: list[str] = []
    for index, part in enumerate(p for p in message.walk() if not p.is_multipart()):
        payload = part.get_payload(decode=True)  # undoes base64 / quoted-printable transfer encodings
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload.decode(charset, errors="replace") if isinstance(payload, bytes) else ""
        except LookupError:  # a charset Python does not know
            text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
        ctype = part.get_content_type()
        if ctype == "text/cloud-config" or text.lstrip().startswith(CLOUD_CONFIG_HEADER):
            _merge(merged, _load_yaml(text, f"MIME part {index}"), str(part.get("Merge-Type", "")))
        else:
            notes.append(f"MIME part {index} of type {ctype}: ignored")
    return merged, notes


def _load_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # The YAML error would quote the offending line; keep only its position.
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserDataError(f"{where} is not valid YAML{at}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise UserDataError(f"{where} is not a YAML mapping")
    return doc


def _merge(into: dict[str, Any], part: dict[str, Any], merge_type: str) -> None:
    """Top-level keys only, which is all the subset needs; lists per ``list(append)``, others per ``no_replace``."""
    spec = merge_type.replace(" ", "").lower()
    append_lists = "list(append" in spec or "list(prepend" in spec
    keep_existing = "no_replace" in spec
    for key, value in part.items():
        old = into.get(key)
        if append_lists and isinstance(old, list) and isinstance(value, list):
            into[key] = [*value, *old] if "list(prepend" in spec else [*old, *value]
        elif key not in into or not keep_existing:
            into[key] = value


def plan_boot(user_data: str, vm_root: Path) -> BootPlan:
    """Check the whole user-data and work out what booting it does, before anything is written or run."""
    config, notes = parse_user_data(user_data)
    ignored = sorted(str(k) for k in config if k not in (*_LIST_KEYS, "power_state"))
    if ignored:
        notes.append(f"cloud-config keys ignored by the local cloud: {', '.join(ignored)}")
    files = [_plan_file(i, entry, vm_root) for i, entry in enumerate(_as_list(config, "write_files"))]
    runcmd = [_argv(i, entry) for i, entry in enumerate(_as_list(config, "runcmd"))]
    return BootPlan(files=files, runcmd=runcmd, power_off=config.get("power_state") is not None, notes=notes)


def _as_list(config: dict[str, Any], key: str) -> list[Any]:
    value = config.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise UserDataError(f"{key} is not a list")
    return value


def _argv(index: int, entry: Any) -> list[str]:
    if isinstance(entry, str):
        return ["sh", "-c", entry]
    if isinstance(entry, list) and entry and all(isinstance(a, str | int | float) for a in entry):
        return [str(a) for a in entry]
    raise UserDataError(f"runcmd entry {index} is neither a string nor a list of arguments")


def _plan_file(index: int, entry: Any, vm_root: Path) -> FileToWrite:
    where = f"write_files entry {index}"
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"].strip("/"):
        raise UserDataError(f"{where} has no file path")
    return FileToWrite(
        target=_reroot(entry["path"], vm_root, where),
        data=_decode(entry.get("content", ""), str(entry.get("encoding") or "text/plain").lower(), where),
        mode=_mode(entry.get("permissions"), where),
        append=bool(entry.get("append", False)),
    )


def _reroot(path: str, vm_root: Path, where: str) -> Path:
    """``path`` as seen from inside the VM, placed under ``vm_root``; ``..`` anywhere is refused outright."""
    if ".." in path.split("/"):
        raise UserDataError(f"{where}: the path may not contain '..'")
    relative = posixpath.normpath("/" + path).lstrip("/")
    target = vm_root / relative
    # A symlink on the way could still lead outside; compare where the path really ends up.
    root = vm_root.resolve()
    if not target.resolve().is_relative_to(root) or target.resolve() == root:
        raise UserDataError(f"{where}: the path leaves the VM root")
    return target


def _decode(content: Any, encoding: str, where: str) -> bytes:
    raw = content if isinstance(content, bytes) else str(content).encode()
    try:
        if encoding in ("text/plain", ""):
            return raw
        if encoding in ("b64", "base64"):
            return base64.b64decode(raw, validate=False)
        if encoding in ("gz", "gzip"):
            return gzip.decompress(raw)
        if encoding in ("gz+b64", "gz+base64", "gzip+b64", "gzip+base64"):
            return gzip.decompress(base64.b64decode(raw, validate=False))
    except (binascii.Error, OSError, EOFError) as exc:
        raise UserDataError(f"{where}: content is not valid {encoding}") from exc
    raise UserDataError(f"{where}: unknown encoding")


def _mode(permissions: Any, where: str) -> int:
    if permissions is None:
        return DEFAULT_FILE_MODE
    if isinstance(permissions, int):  # YAML 1.1 reads an unquoted 0600 as the octal number already
        mode = permissions
    else:
        text = str(permissions).strip().lower().removeprefix("0o")
        try:
            mode = int(text, 8)
        except ValueError:
            raise UserDataError(f"{where}: permissions are not an octal mode") from None
    if not 0 <= mode <= 0o7777:
        raise UserDataError(f"{where}: permissions are not a file mode")
    return mode
