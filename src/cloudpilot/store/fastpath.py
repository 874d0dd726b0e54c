"""Statements compiled once and run on the DB-API cursor, for the matcher's hot path.

SQLAlchemy's per-execution work (cache key, execution context, result wrapping) costs more than SQLite's
own work for a one-row UPDATE; the claim runs hundreds of times a second, so it skips that layer. The
statement is still written in SQLAlchemy Core and compiled for the engine's dialect, inside a transaction
opened by :class:`~cloudpilot.store.database.Database`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.sql import ClauseElement


class CompiledStatement:
    def __init__(self, stmt: ClauseElement, engine: Engine) -> None:
        compiled = stmt.compile(dialect=engine.dialect)
        self.sql = str(compiled)
        self._defaults = dict(compiled.params)
        self._positions = compiled.positiontup  # None for named parameter styles (psycopg)

    def _params(self, params: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        merged = {**self._defaults, **params}
        if self._positions:
            return tuple(merged[name] for name in self._positions)
        return merged

    def first(self, conn: Connection | Any, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The first row, in ``conn``'s transaction (a SQLAlchemy Connection, or a DB-API one)."""
        cursor = _cursor(conn)
        try:
            cursor.execute(self.sql, self._params(params))
            row = cursor.fetchone()
            if row is None:
                return None
            return dict(zip([d[0] for d in cursor.description], row, strict=True))
        finally:
            cursor.close()

    def run(self, conn: Connection | Any, params: Mapping[str, Any]) -> int:
        """Execute; the number of rows it changed."""
        cursor = _cursor(conn)
        try:
            cursor.execute(self.sql, self._params(params))
            return int(cursor.rowcount)
        finally:
            cursor.close()


def _cursor(conn: Connection | Any) -> Any:
    if isinstance(conn, Connection):
        return conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    return conn.cursor()


class StatementCache:
    """Statements compiled once, by key, for one engine: a statement whose shape varies (the columns an UPDATE
    sets) gets one entry per shape, and there are few."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._compiled: dict[Hashable, CompiledStatement] = {}

    def __call__(self, key: Hashable, build: Callable[[], ClauseElement]) -> CompiledStatement:
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = CompiledStatement(build(), self._engine)
        return found
