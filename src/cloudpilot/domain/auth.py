"""Who is calling: roles and the scope a token carries."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Every cloudpilot token looks like this (``cp_<hex id>_<url-safe secret>``, minted in cloudpilot.store.tokens),
# so text leaving the process can be scrubbed of tokens it was never told about.
TOKEN_PATTERN = re.compile(r"cp_[0-9a-fA-F]+_[A-Za-z0-9_\-]+")


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"
    PILOT = "pilot"
    SITE = "site"


@dataclass(frozen=True, slots=True)
class Principal:
    """The identity behind a valid token: ``vo`` scopes users and pilots, ``site`` site admins, ``vm_id`` VM pilots."""

    token_id: str
    role: Role
    name: str
    vo: str | None = None
    site: str | None = None
    vm_id: str | None = None  # a pilot token minted for one VM
    pilot_id: str | None = None  # a pilot session: the one pilot this token acts for
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN
