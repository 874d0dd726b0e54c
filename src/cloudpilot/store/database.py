"""The engine and its transactions: SQLite in WAL mode with one writer, or PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from cloudpilot.store.fastpath import StatementCache
from cloudpilot.store.fence import EpochFence


class Database:
    """Owns the engine. ``read()`` and ``write()`` each give one transaction.

    On SQLite, writes in this process are serialised by a lock and open with ``BEGIN IMMEDIATE``, so two
    writers never both read and then fail to upgrade their lock; other processes (the CLI) wait on
    ``busy_timeout``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgres = url.startswith("postgresql")
        self._write_lock = threading.Lock()
        self._hot: Any = None  # hot_write()'s connection, made on first use
        self.engine = _make_engine(url)
        # The hot path's statements, compiled once (store/fastpath.py).
        self.statements = StatementCache(self.engine)
        # The leader's epoch: the writes only a leader makes check it (store/fence.py, services/leadership.py).
        self.fence = EpochFence()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self) -> Iterator[Connection]:
        if not self.is_sqlite:
            with self.engine.connect() as conn, conn.begin():
                yield conn
            return
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(cloudpilot_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def hot_write(self) -> Iterator[Any]:
        """SQLite only: the matcher's write transaction (a claim and its history row), on a DB-API connection
        kept for it. The same ``BEGIN IMMEDIATE`` under the same lock as :meth:`write`, without SQLAlchemy's
        per-transaction work (pool checkout and its events, a Connection, the begin event), which cost as much
        as the claim's own statement."""
        with self._write_lock:
            conn = self._hot
            if conn is None:
                conn = self._hot = self.engine.raw_connection()  # PRAGMAs set by the connect event
            driver = conn.driver_connection
            driver.execute("BEGIN IMMEDIATE")
            try:
                yield driver
                driver.execute("COMMIT")
            except BaseException:
                if driver.in_transaction:
                    driver.rollback()
                raise

    def dispose(self) -> None:
        with self._write_lock:
            if self._hot is not None:
                self._hot.close()
                self._hot = None
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        # No pre-ping: it would add a round trip to every match; recycled connections cover server restarts.
        return create_engine(url, pool_size=20, max_overflow=20, pool_recycle=1800)
    if url in ("sqlite://", "sqlite:///:memory:"):
        raise ValueError("an in-memory SQLite database cannot be shared; give a file path")
    path = url.removeprefix("sqlite:///")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=20, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        # Take transaction control from the driver so BEGIN can be IMMEDIATE for writers.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("cloudpilot_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
