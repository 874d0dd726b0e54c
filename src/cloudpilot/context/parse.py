"""Reading user-data back: the cloud-config mapping of a ``#cloud-config`` or of our MIME multipart."""

from __future__ import annotations

import email
from typing import Any

import yaml

from cloudpilot.context.errors import InvalidUserData

CLOUD_CONFIG_HEADER = "#cloud-config"
CLOUD_CONFIG_TYPE = "text/cloud-config"


def parse_cloud_config(user_data: str) -> dict[str, Any]:
    """The cloud-config mapping of ``user_data``.

    For MIME multipart this is the first ``text/cloud-config`` part (ours, as :func:`build_user_data` puts it
    first); other parts, cloud-config ones included, are not merged in: cloud-init does that on a real VM.
    Raises :class:`InvalidUserData` for anything else.
    """
    if user_data.startswith(CLOUD_CONFIG_HEADER):
        return _load(user_data, "the user-data")
    # cloud-init's own test for MIME: a MIME-Version header near the start.
    if "mime-version:" in user_data[:4096].lower():
        message = email.message_from_string(user_data)
        for part in message.walk():
            if part.get_content_type() == CLOUD_CONFIG_TYPE:
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    raise InvalidUserData("the text/cloud-config part has no content")
                try:
                    text = payload.decode(part.get_content_charset() or "utf-8")
                except (LookupError, UnicodeDecodeError) as exc:
                    raise InvalidUserData(f"the text/cloud-config part cannot be decoded: {exc}") from exc
                return _load(text, "the text/cloud-config part")
        raise InvalidUserData("the MIME user-data has no text/cloud-config part")
    raise InvalidUserData(f"the user-data is neither {CLOUD_CONFIG_HEADER} nor MIME multipart")


def _load(text: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidUserData(f"{what} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidUserData(f"{what} is a YAML {type(data).__name__}, not a mapping")
    return data
