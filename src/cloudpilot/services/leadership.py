"""Leadership: which server of a database runs the loops that act on clouds and leases.

Every server serves the API and matching; one of them — the leader — also runs the provisioning cycle (VM
monitor, cluster keeper, provisioner), the lease reaper and the image refresher (api/app.py asks
:attr:`Leadership.leading` before each tick). Two leaders would each start VMs for the same waiting jobs.

- :class:`AdvisoryLeadership` (PostgreSQL): a session advisory lock on a dedicated connection
  (store/leadership.py). Followers try to take it every ``poll_seconds``; the leader checks on the same
  connection that it still holds it and that the epoch is still its own, and stops leading at the first doubt.
  A taken lock comes with a new epoch, set on the store's fence (store/fence.py) so a deposed leader's
  writes that are still in flight are refused.
- :class:`SoleLeadership` (SQLite): the only server of its data directory (:func:`lock_data_dir`) leads.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import IO, Protocol

import psycopg

from cloudpilot.store.database import Database
from cloudpilot.store.leadership import AdvisoryLock

log = logging.getLogger("cloudpilot.leadership")

POLL_SECONDS = 2.0  # a follower takes over within this (plus the time PostgreSQL needs to drop a dead session)


class Change(StrEnum):
    GAINED = "gained"
    LOST = "lost"


class Leadership(Protocol):
    poll_seconds: float

    @property
    def leading(self) -> bool: ...

    def poll(self, now: float, on_gain: Callable[[float], None]) -> Change | None:
        """Take or check leadership. ``on_gain(now)`` runs once leadership is taken and before
        :attr:`leading` turns true (the reaper's ``resume``), so no loop ticks before it."""
        ...

    def release(self) -> None: ...


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class SoleLeadership:
    """The one server of a SQLite data directory: it leads from its first poll on."""

    poll_seconds = POLL_SECONDS

    def __init__(self) -> None:
        self._leading = False

    @property
    def leading(self) -> bool:
        return self._leading

    def poll(self, now: float, on_gain: Callable[[float], None]) -> Change | None:
        if self._leading:
            return None
        on_gain(now)
        self._leading = True
        return Change.GAINED

    def release(self) -> None:
        self._leading = False


class AdvisoryLeadership:
    """Leadership by PostgreSQL advisory lock, with the epoch on ``db.fence``."""

    def __init__(self, db: Database, poll_seconds: float = POLL_SECONDS, holder: str | None = None) -> None:
        self.db = db
        self.poll_seconds = poll_seconds
        self.holder = holder or holder_name()
        self._lock = AdvisoryLock(db.url, self.holder)
        self._epoch: int | None = None  # set while leading

    @property
    def leading(self) -> bool:
        return self._epoch is not None

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def poll(self, now: float, on_gain: Callable[[float], None]) -> Change | None:
        if self._epoch is not None:
            if self._lock.still_held(self._epoch):
                return None
            log.error("leadership lost (epoch %d): this server stops its loops; another server takes over", self._epoch)
            self._epoch = None  # the fence keeps the old epoch: writes still in flight are refused
            self._lock.release()
            return Change.LOST
        try:
            epoch = self._lock.try_acquire(now)
        except psycopg.Error as exc:
            log.warning("cannot try for leadership: %s", exc)
            return None
        if epoch is None:
            return None
        self.db.fence.epoch = epoch
        try:
            on_gain(now)
        except BaseException:
            self._lock.release()  # not ready to lead: let another server (or the next poll) take it
            raise
        self._epoch = epoch
        log.info("this server leads (epoch %d, %s): it runs the provisioner, VM monitor, reaper and images",
                 epoch, self.holder)  # fmt: skip
        return Change.GAINED

    def release(self) -> None:
        if self._epoch is not None:
            log.info("leadership released (epoch %d)", self._epoch)
        self._epoch = None
        self._lock.release()


def leadership_for(db: Database) -> Leadership:
    return AdvisoryLeadership(db) if db.is_postgres else SoleLeadership()


class DataDirInUse(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """Hold an exclusive lock on ``<data_dir>/server.lock`` for the life of the process (keep the returned file
    open). Raises :class:`DataDirInUse` when another server holds it: SQLite has one writer and no leadership
    across processes, so two servers on one data directory would both start VMs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = (data_dir / "server.lock").open("ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise DataDirInUse(
            f"another cloudpilot server already runs on {data_dir}: one server per SQLite data directory. "
            "To run several servers (or --workers), give them one PostgreSQL database "
            "(database_url: postgresql+psycopg://..., docs/deployment.md)"
        ) from exc
    return handle
