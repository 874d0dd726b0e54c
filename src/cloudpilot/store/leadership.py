"""The PostgreSQL side of leadership: a session advisory lock on a dedicated connection, and the epoch.

The lock is held by the connection, not by a transaction: it lasts as long as the connection, and PostgreSQL
drops it when the connection dies (a killed server's socket closes at once; a machine that vanishes is noticed
by TCP keepalives, set short on this connection). Whoever takes the lock raises ``leadership.epoch`` on the
same connection, so two leaders never share an epoch (store/fence.py refuses the old one's writes).
"""

from __future__ import annotations

import contextlib
import logging

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("cloudpilot.leadership")

# One lock per database (advisory locks are per database): the bytes of "cloudpil" as a signed 64-bit key.
LOCK_KEY = int.from_bytes(b"cloudpil", "big", signed=True)
# Server-side keepalives (seconds): a leader whose machine vanished loses the lock in about 5 + 2 * 3 = 11 s.
KEEPALIVE = {"tcp_keepalives_idle": 5, "tcp_keepalives_interval": 2, "tcp_keepalives_count": 3}

# A new epoch for the new leader (an upsert: migration 9 inserts the row, but a wiped table must not stop leading).
TAKE_OVER = (
    "INSERT INTO leadership (id, epoch, holder, since) VALUES (1, 1, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET epoch = leadership.epoch + 1, holder = EXCLUDED.holder, since = EXCLUDED.since "
    "RETURNING epoch"
)


def libpq_url(url: str) -> str:
    """The psycopg connection string of a SQLAlchemy URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def dedicated_connection(url: str, name: str) -> psycopg.Connection:
    """An autocommit connection of its own, with short keepalives both ways and a statement timeout."""
    conn = psycopg.connect(
        libpq_url(url),
        autocommit=True,
        connect_timeout=5,
        application_name=name,
        keepalives=1,
        keepalives_idle=KEEPALIVE["tcp_keepalives_idle"],
        keepalives_interval=KEEPALIVE["tcp_keepalives_interval"],
        keepalives_count=KEEPALIVE["tcp_keepalives_count"],
    )
    for setting, value in {**KEEPALIVE, "statement_timeout": 5000}.items():
        conn.execute(f"SET {setting} = {int(value)}")
    return conn


class AdvisoryLock:
    """``try_acquire`` the leader's lock (and a new epoch); ``still_held`` checks it on the same connection."""

    def __init__(self, url: str, holder: str) -> None:
        self.url = url
        self.holder = holder
        self._conn: psycopg.Connection | None = None

    def try_acquire(self, now: float) -> int | None:
        """The new epoch if this process now holds the lock, else ``None`` (another server leads).
        Raises ``psycopg.Error`` when the database cannot be reached."""
        if self._conn is None or self._conn.closed:
            self._conn = dedicated_connection(self.url, "cloudpilot-leadership")
        conn = self._conn
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
            if not got or not got[0]:
                return None
            with conn.transaction():
                row = conn.execute(TAKE_OVER, (self.holder, now)).fetchone()
            assert row is not None  # an upsert with RETURNING always returns its row
            return int(row[0])
        except BaseException:
            self.release()  # a half-taken lock must not stay held by a live connection
            raise

    def still_held(self, epoch: int) -> bool:
        """The connection is alive and the database's epoch is still ``epoch``; ``False`` at the first doubt."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            row = conn.execute("SELECT epoch FROM leadership WHERE id = 1").fetchone()
        except psycopg.Error as exc:
            log.error("the leadership connection failed: %s", exc)
            self.release()
            return False
        return row is not None and int(row[0]) == epoch

    def release(self) -> None:
        """Close the connection: PostgreSQL drops the lock with it."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):  # it is gone either way
                conn.close()
