"""Errors of image lists.

ImagesError
├── ImageListRefused   verification refused a list or an image; ``reason`` says which check, ``field`` where
├── FetchFailed        a list, its signature or an image file could not be fetched (retry later)
│   └── FetchRefused   the destination is not allowed (scheme, host, address, redirect): do not retry
└── KeyFileError       a key file that cannot be read or written
"""

from __future__ import annotations

from enum import StrEnum


class Refusal(StrEnum):
    MISSING_SIGNATURE = "missing signature"
    BAD_SIGNATURE = "bad signature"
    UNTRUSTED_ENDORSER = "endorser not trusted"
    INVALID = "invalid image list"
    OTHER_LIST = "another list"
    EXPIRED = "expired"
    DOWNGRADE = "version not newer"
    IMAGE_MISMATCH = "image does not match"
    CONFLICT = "image endorsed elsewhere"


class ImagesError(Exception):
    """Root of the image lists' errors."""


class ImageListRefused(ImagesError):
    def __init__(self, reason: Refusal, message: str, field: str | None = None) -> None:
        super().__init__(f"refused ({reason.value}): {message}")
        self.reason = reason
        self.field = field


class FetchFailed(ImagesError):
    pass


class FetchRefused(FetchFailed):
    pass


class KeyFileError(ImagesError):
    pass
