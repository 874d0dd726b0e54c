"""Credentials kept out of the YAML: a ``driver_args``/``driver_kwargs`` value ``{env: NAME}`` or ``{file: PATH}``.

They are resolved when the cloud's driver is built (server start, services/cloud_drivers.py), so a missing
variable or unreadable file stops the server with a message that names the cloud, the key and the variable or
file, never a value. The
resolved values stay in the driver (whose error messages redact them) and are not written back into the
configuration. A file's content is taken without its surrounding whitespace (secret files end in a newline).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudpilot.config.clouds import SECRET_SOURCES


class SecretUnavailable(ValueError):
    """A referenced variable is unset or empty, or a referenced file unreadable or empty (the message says which)."""


def is_reference(value: object) -> bool:
    """``{env: NAME}`` or ``{file: PATH}`` (the configuration model has checked the shape)."""
    return isinstance(value, Mapping) and len(value) == 1 and next(iter(value)) in SECRET_SOURCES


def resolve_secrets(
    section: str, values: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """``values`` with every reference replaced by the secret it names; :class:`SecretUnavailable` otherwise."""
    env = os.environ if environ is None else environ
    return {
        key: _resolve(f"{section}.{key}", value, env) if is_reference(value) else value for key, value in values.items()
    }


def _resolve(where: str, reference: Mapping[str, str], environ: Mapping[str, str]) -> str:
    [(source, name)] = reference.items()
    if source == "env":
        if name not in environ:
            raise SecretUnavailable(f"{where}: environment variable {name} is not set")
        value = environ[name].strip()
        if not value:
            raise SecretUnavailable(f"{where}: environment variable {name} is empty")
        return value
    path = Path(name).expanduser()
    try:
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not UTF-8 text"
        raise SecretUnavailable(f"{where}: cannot read {path}: {reason}") from None
    if not value:
        raise SecretUnavailable(f"{where}: {path} is empty")
    return value
