"""Pilots: who asked for work, from where, and how they ended."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update

from cloudpilot.store.database import Database
from cloudpilot.store.errors import NotFound
from cloudpilot.store.schema import pilots


@dataclass(frozen=True, slots=True)
class PilotRecord:
    id: str
    token_id: str
    vo: str | None
    site: str | None
    cloud: str | None
    hostname: str | None
    cores: int
    memory_mb: int | None
    registered_at: float
    last_seen_at: float
    state: str
    shutdown_code: int | None
    shutdown_message: str | None
    vm_id: str | None = None


class PilotRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def register(self, record: PilotRecord) -> None:
        with self.db.write() as conn:
            conn.execute(pilots.insert().values(**_as_dict(record)))

    def get(self, pilot_id: str) -> PilotRecord:
        with self.db.read() as conn:
            row = conn.execute(select(pilots).where(pilots.c.id == pilot_id)).mappings().first()
        if row is None:
            raise NotFound(f"pilot {pilot_id} is not registered")
        return PilotRecord(**row)

    def hand_started_since(self, since: float) -> list[PilotRecord]:
        """Pilots not in one of our VMs (started by hand or by a site) seen since ``since``, newest first."""
        stmt = (
            select(pilots)
            .where(pilots.c.vm_id.is_(None), pilots.c.last_seen_at >= since)
            .order_by(pilots.c.last_seen_at.desc())
            .limit(1000)
        )
        with self.db.read() as conn:
            return [PilotRecord(**row) for row in conn.execute(stmt).mappings()]

    def ids_in_vm(self, vm_id: str) -> list[str]:
        with self.db.read() as conn:
            return list(conn.execute(select(pilots.c.id).where(pilots.c.vm_id == vm_id)).scalars())

    def seen(self, pilot_id: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(update(pilots).where(pilots.c.id == pilot_id).values(last_seen_at=now))

    def halt(self, pilot_id: str, code: int, message: str, now: float) -> None:
        with self.db.write() as conn:
            result = conn.execute(
                update(pilots)
                .where(pilots.c.id == pilot_id)
                .values(state="halted", shutdown_code=code, shutdown_message=message[:1000], last_seen_at=now)
            )
            if result.rowcount == 0:
                raise NotFound(f"pilot {pilot_id} is not registered")


def _as_dict(record: PilotRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}  # type: ignore[attr-defined]
