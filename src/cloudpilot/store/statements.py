"""Statement builders shared by the repositories: the dialect's INSERT … ON CONFLICT, a plain INSERT of named
columns, and the history row every job move writes (compiled once per engine through
:class:`~cloudpilot.store.fastpath.StatementCache`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, Table, bindparam, insert

from cloudpilot.store.schema import job_events

JOB_EVENT_COLUMNS = ("job_id", "at", "from_state", "to_state", "reason")


def upsert(conn: Connection):  # type: ignore[no-untyped-def]
    """The dialect's INSERT that knows ON CONFLICT (SQLite and PostgreSQL both do)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


def insert_of(table: Table, columns: Iterable[str]) -> Any:
    """``INSERT INTO table (columns…)`` with one parameter per column, named after it."""
    return insert(table).values({c: bindparam(c) for c in columns})


def job_event_insert() -> Any:
    """A job's history row (a move from one state to another, and why)."""
    return insert_of(job_events, JOB_EVENT_COLUMNS)
