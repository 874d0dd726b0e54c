"""Pilot sessions: what a registration credential is exchanged for, and the only credential pilot calls accept.

A VM's token registers one pilot, once: the registration marks it used (atomically, so two racing
registrations cannot both win) and any later use is refused and recorded on the VM as a security event. A
hand-made pilot token (``token create --role pilot``) stays a reusable registration credential, but every
registration opens its own session. A session is bound to one pilot (and to the VM of its token), is stored
hashed like any token, expires (a sliding :data:`SESSION_SECONDS`, renewed while the pilot calls, never past
the registration token's own expiry) and is revoked when its pilot halts, its VM is destroyed, or its
registration token is revoked.
"""

from __future__ import annotations

import threading

from cloudpilot.domain.auth import Principal, Role
from cloudpilot.services.auth import Authenticator
from cloudpilot.services.errors import Forbidden
from cloudpilot.store.tokens import TokenRepository

# Long enough to outlast a server outage a pilot rides out (it retries for an hour by default); renewed when
# less than half is left, so an active pilot costs one write per half period.
SESSION_SECONDS = 24 * 3600.0
RENEW_EVERY_SECONDS = 600.0  # at most one renewal write per session this often (a capped one may not move)


class PilotSessions:
    def __init__(self, tokens: TokenRepository, auth: Authenticator) -> None:
        self.tokens = tokens
        self.auth = auth
        self._renewed: dict[str, float] = {}  # session token id -> when it was last renewed
        self._lock = threading.Lock()

    def open(self, principal: Principal, pilot_id: str, now: float) -> str:
        """Exchange ``principal``'s registration token for a session of ``pilot_id``; the session token."""
        if principal.pilot_id is not None:
            raise Forbidden("a pilot session cannot register another pilot: register with a pilot token")
        if principal.vm_id is not None:
            if not self.tokens.consume(principal.token_id, now):
                self.auth.reused(principal.vm_id, now)  # raced another registration, or came from the cache
            self.auth.evict(principal.token_id)
        cap = principal.expires_at
        expires = now + SESSION_SECONDS if cap is None else min(cap, now + SESSION_SECONDS)
        issued = self.tokens.create(
            Role.PILOT, f"session of pilot {pilot_id}", now, vo=principal.vo, expires_at=expires,
            vm_id=principal.vm_id, pilot_id=pilot_id, parent_id=principal.token_id, renew_until=cap,
        )  # fmt: skip
        return issued.token

    @staticmethod
    def pilot_of(principal: Principal) -> str:
        """The pilot a call acts for; :class:`Forbidden` unless it comes with a pilot session."""
        if principal.role is not Role.PILOT or principal.pilot_id is None:
            raise Forbidden(
                "pilot calls need the session token that registering answered (POST /api/v1/pilots, "
                f"'session_token'); yours is a {principal.role.value} token without a pilot session"
            )
        return principal.pilot_id

    def renew(self, principal: Principal, now: float) -> None:
        """Keep an active pilot's session alive (a write only when less than half its period is left)."""
        expires = principal.expires_at
        if principal.pilot_id is None or expires is None or expires - now >= SESSION_SECONDS / 2:
            return
        with self._lock:
            if now - self._renewed.get(principal.token_id, 0.0) < RENEW_EVERY_SECONDS:
                return
            self._renewed[principal.token_id] = now
            if len(self._renewed) > 10_000:
                self._renewed = {k: t for k, t in self._renewed.items() if now - t < RENEW_EVERY_SECONDS}
        self.tokens.renew(principal.token_id, now + SESSION_SECONDS)

    def close(self, pilot_id: str, now: float) -> None:
        """The pilot halted: its session dies now (not a cache period later)."""
        if self.tokens.revoke_for_pilot(pilot_id, now):
            self.auth.revoked()
