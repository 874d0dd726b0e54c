"""Issuing tokens: the scope each role needs is checked here, for the API and the CLI alike."""

from __future__ import annotations

from cloudpilot.domain.auth import Role
from cloudpilot.services.errors import BadInput
from cloudpilot.store.tokens import IssuedToken, TokenRepository


def issue_token(
    tokens: TokenRepository,
    role: Role,
    name: str,
    now: float,
    *,
    vo: str | None = None,
    site: str | None = None,
    expires_at: float | None = None,
) -> IssuedToken:
    """A user token needs a VO; a site token needs a site; a pilot token without a VO serves every VO."""
    if role is Role.USER and not vo:
        raise BadInput("a user token needs a VO (--vo)", "vo")
    if role is Role.SITE and not site:
        raise BadInput("a site token needs a site (--site)", "site")
    if role in (Role.ADMIN, Role.USER, Role.PILOT) and site:
        raise BadInput(f"a {role.value} token is not scoped to a site", "site")
    if role in (Role.ADMIN, Role.SITE) and vo:
        raise BadInput(f"a {role.value} token is not scoped to a VO", "vo")
    if expires_at is not None and expires_at <= now:
        raise BadInput(f"expires_at {expires_at:.0f} is not in the future (now is {now:.0f})", "expires_at")
    return tokens.create(role, name, now, vo=vo, site=site, expires_at=expires_at)
