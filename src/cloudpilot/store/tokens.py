"""Tokens: ``cp_<id>_<secret>``; only a hash of the secret is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import case, or_, select, update

from cloudpilot.domain.auth import Principal, Role
from cloudpilot.store.database import Database
from cloudpilot.store.errors import NotFound, TokenReused
from cloudpilot.store.schema import tokens

PREFIX = "cp"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """Split ``cp_<id>_<secret>``; ``None`` if the string is not shaped like one of ours."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What an admin may see of a token: everything but its secret (only a hash of which is stored)."""

    id: str
    role: str
    name: str
    vo: str | None
    site: str | None
    vm_id: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    pilot_id: str | None = None  # a pilot session: the pilot it acts for
    used_at: float | None = None  # a VM's registration token: when it registered its pilot


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    token: str
    principal: Principal


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        role: Role,
        name: str,
        now: float,
        vo: str | None = None,
        site: str | None = None,
        expires_at: float | None = None,
        vm_id: str | None = None,
        *,
        pilot_id: str | None = None,
        parent_id: str | None = None,
        renew_until: float | None = None,
    ) -> IssuedToken:
        """A new token; with ``pilot_id`` a pilot session (issued by :meth:`PilotSessions.open` only)."""
        token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        with self.db.write() as conn:
            conn.execute(
                tokens.insert().values(
                    id=token_id,
                    secret_hash=_hash(secret),
                    role=role.value,
                    name=name,
                    vo=vo,
                    site=site,
                    created_at=now,
                    expires_at=expires_at,
                    vm_id=vm_id,
                    pilot_id=pilot_id,
                    parent_id=parent_id,
                    renew_until=renew_until,
                )
            )
        principal = Principal(
            token_id=token_id, role=role, name=name, vo=vo, site=site, vm_id=vm_id, pilot_id=pilot_id,
            expires_at=expires_at,
        )  # fmt: skip
        return IssuedToken(id=token_id, token=f"{PREFIX}_{token_id}_{secret}", principal=principal)

    def authenticate(self, token: str, now: float) -> Principal | None:
        """The principal behind ``token``, or ``None`` if it is unknown, wrong, expired or revoked.

        :class:`TokenReused` for a VM's registration token already exchanged for a session: it is dead, and
        its presentation is a security event the caller records."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        token_id, secret = parsed
        with self.db.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.id == token_id)).mappings().first()
        if row is None or not hmac.compare_digest(row["secret_hash"], _hash(secret)):
            return None
        if row["revoked_at"] is not None or (row["expires_at"] is not None and row["expires_at"] <= now):
            return None
        if row["used_at"] is not None:
            raise TokenReused(row["id"], row["vm_id"])
        return Principal(
            token_id=row["id"],
            role=Role(row["role"]),
            name=row["name"],
            vo=row["vo"],
            site=row["site"],
            vm_id=row["vm_id"],
            pilot_id=row["pilot_id"],
            expires_at=row["expires_at"],
        )

    def consume(self, token_id: str, now: float) -> bool:
        """Mark a VM's registration token used, once: whether this call was the one that did."""
        with self.db.write() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.id == token_id, tokens.c.used_at.is_(None), tokens.c.vm_id.is_not(None))
                .values(used_at=now)
            )
            return result.rowcount == 1

    def renew(self, token_id: str, expires_at: float) -> None:
        """Push a session's expiry to ``expires_at``, never past its ``renew_until``."""
        capped = case(
            (tokens.c.renew_until.is_not(None) & (tokens.c.renew_until < expires_at), tokens.c.renew_until),
            else_=expires_at,
        )
        with self.db.write() as conn:
            conn.execute(
                update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None)).values(expires_at=capped)
            )

    def revoke_for_pilot(self, pilot_id: str, now: float) -> int:
        """Revoke the session(s) of a pilot (it halted); returns how many."""
        with self.db.write() as conn:
            result = conn.execute(
                update(tokens)
                .where(tokens.c.pilot_id == pilot_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            return result.rowcount

    def list(self, now: float, role: Role | None = None, include_inactive: bool = False) -> list[TokenInfo]:
        """Tokens oldest first; without ``include_inactive`` only those neither revoked nor expired at ``now``."""
        columns = [tokens.c[name] for name in TokenInfo.__dataclass_fields__]
        stmt = select(*columns).order_by(tokens.c.created_at, tokens.c.id)
        if role is not None:
            stmt = stmt.where(tokens.c.role == role.value)
        if not include_inactive:
            stmt = stmt.where(
                tokens.c.revoked_at.is_(None), or_(tokens.c.expires_at.is_(None), tokens.c.expires_at > now)
            )
        with self.db.read() as conn:
            return [TokenInfo(**row) for row in conn.execute(stmt).mappings()]

    def revoke(self, token_id: str, now: float) -> None:
        """Revoke a token and the pilot sessions it opened."""
        with self.db.write() as conn:
            result = conn.execute(
                update(tokens).where(tokens.c.id == token_id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
            )
            if result.rowcount == 0:
                raise NotFound(f"no active token {token_id}")
            sessions = update(tokens).where(tokens.c.parent_id == token_id, tokens.c.revoked_at.is_(None))
            conn.execute(sessions.values(revoked_at=now))

    def revoke_for_vm(self, vm_id: str, now: float) -> int:
        """Revoke every token minted for a VM (it is being destroyed); returns how many."""
        with self.db.write() as conn:
            result = conn.execute(
                update(tokens).where(tokens.c.vm_id == vm_id, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
            )
            return result.rowcount
