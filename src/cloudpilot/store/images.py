"""Image lists the server subscribes to, the images they endorse, and the site's revocations (migration 4).

A subscription holds at most one list: the last one that passed verification, stored as its canonical JSON
with its signature, so what the server acts on can be verified again at any time. Its images have one row
each; a newer version of the list updates them in the same transaction and marks those it dropped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from cloudpilot.domain.images import HeldImage, ImageList, parse_image_entry
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.schema import image_revocations, image_subscriptions, images


@dataclass(frozen=True, slots=True)
class Subscription:
    id: int
    url: str
    signature_url: str
    endorser_key: str
    endorser_fingerprint: str
    endorser_name: str | None
    refresh_seconds: float
    created_at: float
    created_by: str
    list_identifier: str | None = None
    version: str | None = None
    document: str | None = None
    signature: str | None = None
    expires_at: float | None = None
    fetched_at: float | None = None
    checked_at: float | None = None
    last_error: str | None = None

    def public(self) -> dict[str, Any]:
        """What the API shows (the held document is left out: ``GET .../list`` has it)."""
        fields = {k: getattr(self, k) for k in self.__slots__ if k not in ("document", "signature", "endorser_key")}
        return {**fields, "endorser_key": self.endorser_key.strip()}


@dataclass(frozen=True, slots=True)
class HeldList:
    """A list verified and ready to be stored: its canonical document, signature and parsed form."""

    image_list: ImageList
    entries: dict[str, dict[str, Any]]  # identifier -> its hv:image object
    canonical: str
    signature: str


class ImageRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    # --- subscriptions ----------------------------------------------------------------------------------

    def subscribe(self, values: Mapping[str, Any], held: HeldList, now: float) -> Subscription:
        """Store a new subscription with its first list, in one transaction."""
        with self.db.write() as conn:
            sub_id = conn.execute(insert(image_subscriptions).values(**values).returning(image_subscriptions.c.id))
            new_id = int(sub_id.scalar_one())
            self._hold(conn, new_id, held, now)
            return self._subscription(conn, new_id)

    def hold(self, sub_id: int, held: HeldList, now: float) -> Subscription:
        """Replace the subscription's list by a newer verified one."""
        with self.db.write() as conn:
            self._subscription(conn, sub_id)
            self._hold(conn, sub_id, held, now)
            return self._subscription(conn, sub_id)

    def record_attempt(self, sub_id: int, now: float, error: str | None) -> Subscription:
        """A refresh that changed nothing (``error``: why it was refused or failed, None: the same list)."""
        with self.db.write() as conn:
            conn.execute(
                update(image_subscriptions)
                .where(image_subscriptions.c.id == sub_id)
                .values(checked_at=now, last_error=error[:2000] if error else None)
            )
            return self._subscription(conn, sub_id)

    def unsubscribe(self, sub_id: int) -> Subscription:
        """Forget the subscription and its images (their VMs keep running; nothing new boots from them)."""
        with self.db.write() as conn:
            sub = self._subscription(conn, sub_id)
            conn.execute(delete(images).where(images.c.subscription_id == sub_id))
            conn.execute(delete(image_subscriptions).where(image_subscriptions.c.id == sub_id))
            return sub

    def get(self, sub_id: int) -> Subscription:
        with self.db.read() as conn:
            return self._subscription(conn, sub_id)

    def subscriptions(self) -> list[Subscription]:
        with self.db.read() as conn:
            rows = conn.execute(select(image_subscriptions).order_by(image_subscriptions.c.id)).mappings()
            return [_subscription_from_row(r) for r in rows]

    def count_subscriptions(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).select_from(image_subscriptions)).scalar_one())

    def owners(self, identifiers: list[str]) -> dict[str, int]:
        """The subscription each of these image identifiers belongs to, if any."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(images.c.identifier, images.c.subscription_id).where(images.c.identifier.in_(identifiers))
            )
            return {identifier: int(sub_id) for identifier, sub_id in rows}

    # --- images -----------------------------------------------------------------------------------------

    def held_images(self) -> list[HeldImage]:
        """Every image of every held list, with the site's revocations (identifiers revoked but in no list too)."""
        with self.db.read() as conn:
            rows = conn.execute(select(images).order_by(images.c.identifier)).mappings().all()
            revoked = {r["identifier"]: r for r in conn.execute(select(image_revocations)).mappings()}
        found = []
        for row in rows:
            entry = parse_image_entry(json.loads(row["entry"]))
            rev = revoked.get(row["identifier"])
            found.append(
                HeldImage(
                    identifier=row["identifier"],
                    subscription_id=int(row["subscription_id"]),
                    list_identifier=row["list_identifier"],
                    list_version=row["list_version"],
                    expires_at=row["expires_at"],
                    tags=entry.tags,
                    listed=bool(row["listed"]),
                    revoked_at=rev["revoked_at"] if rev else None,
                    revoked_by=rev["revoked_by"] if rev else None,
                    revoke_reason=rev["reason"] if rev else None,
                    rejected_reason=row["rejected_reason"],
                    local_path=row["local_path"],
                    title=entry.title,
                )
            )
        return found

    def entry(self, identifier: str) -> dict[str, Any]:
        """The image's ``hv:image`` object as its list has it."""
        with self.db.read() as conn:
            row = conn.execute(select(images.c.entry).where(images.c.identifier == identifier)).first()
        if row is None:
            raise NotFound(f"image {identifier} is in no image list this server holds")
        return dict(json.loads(row[0]))

    def revocations(self) -> dict[str, tuple[float, str, str]]:
        with self.db.read() as conn:
            rows = conn.execute(select(image_revocations))
            return {r.identifier: (r.revoked_at, r.revoked_by, r.reason) for r in rows}

    def set_verified_file(self, identifier: str, path: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(images)
                .where(images.c.identifier == identifier)
                .values(local_path=path, rejected_reason=None, updated_at=now)
            )

    def set_rejected(self, identifier: str, reason: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(images)
                .where(images.c.identifier == identifier)
                .values(rejected_reason=reason[:2000], local_path=None, updated_at=now)
            )

    def revoke(self, identifier: str, now: float, by: str, reason: str) -> None:
        with self.db.write() as conn:
            known = conn.execute(
                select(image_revocations.c.identifier).where(image_revocations.c.identifier == identifier)
            ).first()
            if known is not None:
                raise Conflict(f"image {identifier} is already revoked")
            conn.execute(
                insert(image_revocations).values(identifier=identifier, revoked_at=now, revoked_by=by, reason=reason)
            )

    def reinstate(self, identifier: str) -> None:
        with self.db.write() as conn:
            result = conn.execute(delete(image_revocations).where(image_revocations.c.identifier == identifier))
            if result.rowcount != 1:
                raise Conflict(f"image {identifier} is not revoked")

    # --- internals --------------------------------------------------------------------------------------

    @staticmethod
    def _subscription(conn: Connection, sub_id: int) -> Subscription:
        row = conn.execute(select(image_subscriptions).where(image_subscriptions.c.id == sub_id)).mappings().first()
        if row is None:
            raise NotFound(f"image list subscription {sub_id} does not exist")
        return _subscription_from_row(row)

    @staticmethod
    def _hold(conn: Connection, sub_id: int, held: HeldList, now: float) -> None:
        lst = held.image_list
        conn.execute(
            update(image_subscriptions)
            .where(image_subscriptions.c.id == sub_id)
            .values(
                list_identifier=lst.identifier,
                version=lst.version,
                document=held.canonical,
                signature=held.signature,
                expires_at=lst.expires_at,
                fetched_at=now,
                checked_at=now,
                last_error=None,
            )
        )
        current = {
            r.identifier: r
            for r in conn.execute(
                select(images.c.identifier, images.c.entry, images.c.local_path, images.c.rejected_reason).where(
                    images.c.subscription_id == sub_id
                )
            )
        }
        for image in lst.images:
            entry = json.dumps(held.entries[image.identifier], sort_keys=True)
            expires = min(lst.expires_at, image.expires_at) if image.expires_at is not None else lst.expires_at
            values: dict[str, Any] = {
                "list_identifier": lst.identifier,
                "list_version": lst.version,
                "entry": entry,
                "expires_at": expires,
                "listed": True,
                "updated_at": now,
            }
            old = current.get(image.identifier)
            if old is None:
                conn.execute(insert(images).values(identifier=image.identifier, subscription_id=sub_id, **values))
                continue
            old_image = parse_image_entry(json.loads(old.entry))
            if (old_image.sha512, old_image.size, old_image.uri) != (image.sha512, image.size, image.uri):
                values.update(local_path=None, rejected_reason=None)  # another file: fetched and checked anew
            conn.execute(update(images).where(images.c.identifier == image.identifier).values(**values))
        dropped = set(current) - {i.identifier for i in lst.images}
        if dropped:
            conn.execute(
                update(images)
                .where(images.c.identifier.in_(sorted(dropped)))
                .values(listed=False, list_version=lst.version, updated_at=now)
            )


def _subscription_from_row(row: Mapping[str, Any]) -> Subscription:
    return Subscription(**{name: row[name] for name in Subscription.__slots__})
