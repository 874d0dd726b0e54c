"""Token checks with a short cache, so the matcher's hot path does not hit the tokens table every call."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import NoReturn

from cloudpilot.domain.auth import Principal, Role
from cloudpilot.services.errors import Forbidden, Unauthenticated
from cloudpilot.store.errors import TokenReused
from cloudpilot.store.tokens import TokenRepository, parse_token

CACHE_SECONDS = 5.0  # a revoked token stops working within this long (an expired one at once: see below)
REUSED = "this VM's registration token was already exchanged for a pilot session: it registers one pilot only"


class Authenticator:
    """``on_reuse(vm_id, now)`` records a VM registration token presented again (a security event)."""

    def __init__(self, tokens: TokenRepository, on_reuse: Callable[[str, float], None] | None = None) -> None:
        self.tokens = tokens
        self.on_reuse = on_reuse
        self.on_revoke: Callable[[], None] | None = None  # set when other server processes must hear of it
        self._cache: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def authenticate(self, header: str | None, now: float) -> Principal:
        if not header:
            raise Unauthenticated("missing token: send 'Authorization: Bearer <token>'")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("malformed Authorization header: expected 'Bearer <token>'")
        token = token.strip()
        with self._lock:
            hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        if parse_token(token) is None:
            raise Unauthenticated("malformed token: cloudpilot tokens look like cp_<id>_<secret>")
        try:
            principal = self.tokens.authenticate(token, now)
        except TokenReused as exc:
            self.reused(exc.vm_id, now)
        if principal is None:
            raise Unauthenticated("invalid token: unknown, wrong, expired or revoked")
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            # Never cached past its expiry: a token stops working at expires_at to the second, cache or not.
            until = now + CACHE_SECONDS
            if principal.expires_at is not None:
                until = min(until, principal.expires_at)
            self._cache[token] = (principal, until)
        return principal

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def revoked(self) -> None:
        """A token was revoked: forget every cached principal here, and (``on_revoke``) in the other server
        processes of the database, which hear of it within milliseconds (services/container.py)."""
        self.forget()
        if self.on_revoke is not None:
            self.on_revoke()

    def evict(self, token_id: str) -> None:
        """Drop the cached principal of one token (a VM token just exchanged for a session)."""
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if v[0].token_id != token_id}

    def reused(self, vm_id: str, now: float) -> NoReturn:
        """A VM's used registration token came back: record it on the VM, then refuse (401)."""
        if self.on_reuse is not None:
            self.on_reuse(vm_id, now)
        raise Unauthenticated(REUSED)


def require(principal: Principal, *roles: Role) -> None:
    """Raise :class:`Forbidden` unless the principal has one of ``roles`` (admins pass everywhere)."""
    if principal.is_admin or principal.role in roles:
        return
    allowed = " or ".join(r.value for r in roles)
    article = "an" if allowed.startswith("admin") else "a"  # roles: admin, user, pilot, site
    raise Forbidden(f"this call needs {article} {allowed} token; yours is a {principal.role.value} token")
