"""Errors of building and reading user-data.

    ContextError
    ├── InvalidContext       a PilotContext or UserDataPart value that cannot go into user-data
    ├── UserDataTooLarge     the user-data exceeds what clouds accept (MAX_USER_DATA_BYTES)
    └── InvalidUserData      user-data that is neither #cloud-config nor MIME multipart with a cloud-config part

Messages never contain the pilot token.
"""

from __future__ import annotations


class ContextError(Exception):
    """Root of this package's errors."""


class InvalidContext(ContextError, ValueError):
    """A value that cannot be put into user-data; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class UserDataTooLarge(ContextError):
    """The generated user-data is larger than clouds accept."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"the user-data is {size} bytes, more than the {limit}-byte limit of clouds; "
            "make the site or VO parts smaller"
        )
        self.size = size
        self.limit = limit


class InvalidUserData(ContextError, ValueError):
    """User-data this package cannot read back."""
