"""Shared fixtures: the store on SQLite and PostgreSQL, and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloudpilot.store.database import Database
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.schema import metadata

PG_ADMIN_URL = os.environ.get("CLOUDPILOT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytest_plugins = [
    "tests.helpers.server",
    "tests.helpers.server_process",
    "tests.helpers.pilots",
    "tests.helpers.images",
    "tests.helpers.moto_s3",
]


def _pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL.replace("+psycopg", ""), connect_timeout=3):
            return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A database of its own on the local PostgreSQL for this test session, dropped at the end."""
    if not _pg_available():
        if ON_CI:
            pytest.fail("PostgreSQL is not reachable on 127.0.0.1:5432, and on CI its tests must run")
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    name = f"cloudpilot_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("+psycopg", "")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _empty_tables(db: Database) -> None:
    with db.write() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name != "schema_migrations":
                conn.execute(table.delete())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The same test on SQLite (a file in tmp_path) and on PostgreSQL (emptied before each test)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cloudpilot.db'}"
        return
    url = request.getfixturevalue("pg_url")
    db = Database(url)
    upgrade(db)
    _empty_tables(db)
    db.dispose()
    yield url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    yield database
    database.dispose()
