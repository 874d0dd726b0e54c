"""Schema migrations: an ordered list of steps, each applied once and recorded in ``schema_migrations``.

A new schema change is a new function appended to ``MIGRATIONS``; steps already applied are never edited.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, inspect, select

from cloudpilot.store import schema
from cloudpilot.store.database import Database

# PostgreSQL advisory lock held by ``upgrade`` (the bytes of "cpmigrat"): one server migrates at a time.
UPGRADE_LOCK_KEY = int.from_bytes(b"cpmigrat", "big", signed=True)


def _initial(conn: Connection) -> None:
    tables = [
        schema.tokens,
        schema.task_queues,
        schema.jobs,
        schema.job_events,
        schema.pilots,
        schema.usage,
        schema.sandboxes,
    ]
    schema.metadata.create_all(conn, tables=tables)


def _add_column(conn: Connection, table: str, column: str, ddl_type: str) -> None:
    """ADD COLUMN unless present: a database created at version 1 by this code already has it."""
    if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
        conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {ddl_type}")


def _vms(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.vms, schema.vm_events])
    _add_column(conn, "tokens", "vm_id", "VARCHAR(64)")
    _add_column(conn, "pilots", "vm_id", "VARCHAR(64)")


def _site_control(conn: Connection) -> None:
    tables = [
        schema.site_shutdowns,
        schema.site_vo_switches,
        schema.cloud_capacity,
        schema.event_chunks,
        schema.vm_usage,
        schema.job_usage,
    ]
    schema.metadata.create_all(conn, tables=tables)
    _add_column(conn, "jobs", "events_done", "INTEGER NOT NULL DEFAULT 0")
    for column, ddl in [
        ("site", "VARCHAR(100)"),
        ("image", "VARCHAR(200)"),
        ("hs06", "FLOAT"),
        ("shutdown_deadline", "FLOAT"),
        ("permission", "TEXT"),
    ]:
        _add_column(conn, "vms", column, ddl)


def _image_lists(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.image_subscriptions, schema.images, schema.image_revocations])
    _add_column(conn, "task_queues", "image", "VARCHAR(200)")


def _clusters(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.clusters, schema.cluster_services, schema.cluster_instances])
    _add_column(conn, "vms", "cluster_id", "BIGINT")
    _add_column(conn, "vms", "cluster_service", "VARCHAR(100)")
    schema.ix_vms_cluster.create(conn, checkfirst=True)


def _waiting_reasons(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.waiting_reasons])


def _pilot_sessions(conn: Connection) -> None:
    for column, ddl in [
        ("pilot_id", "VARCHAR(64)"),
        ("parent_id", "VARCHAR(32)"),
        ("used_at", "FLOAT"),
        ("renew_until", "FLOAT"),
    ]:
        _add_column(conn, "tokens", column, ddl)


def _job_log_tails(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.job_log_tails])


def _leadership(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.leadership])
    if conn.execute(select(schema.leadership.c.id)).first() is None:
        conn.execute(schema.leadership.insert().values(id=1, epoch=0, holder="", since=0.0))


def _sandbox_content(conn: Connection) -> None:
    _add_column(conn, "sandboxes", "content", "BYTEA" if conn.dialect.name == "postgresql" else "BLOB")


def _owner_classes(conn: Connection) -> None:
    schema.ix_task_queues_owner.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial task queue, jobs, tokens, pilots, usage, sandboxes", _initial),
    (2, "VMs and their history; tokens and pilots bound to a VM", _vms),
    (3, "site control (shutdowns, VO switches, capacity), event chunks, accounting records", _site_control),
    (4, "image lists: subscriptions, held images, revocations; the image a task queue requires", _image_lists),
    (5, "clusters of services; the cluster and service of a VM", _clusters),
    (6, "why each task queue's jobs wait, as the provisioner explained it", _waiting_reasons),
    (7, "pilot sessions: tokens bound to one pilot; one-time VM registration tokens", _pilot_sessions),
    (8, "the latest tail of each job's job.log, sent with its pilot's heartbeats", _job_log_tails),
    (9, "leadership: the epoch of the server that runs the loops (fences a deposed leader's writes)", _leadership),
    (10, "small sandboxes' bytes in the database (outputs inline with a final report)", _sandbox_content),
    (11, "task queues by VO and owner: a user's waiting classes counted at each submission", _owner_classes),
]

LATEST = max(version for version, _, _ in MIGRATIONS)  # steps may be added out of order


def current_version(db: Database) -> int:
    with db.read() as conn:
        if not inspect(conn).has_table("schema_migrations"):
            return 0
        versions = conn.execute(select(schema.schema_migrations.c.version)).scalars().all()
        return max(versions, default=0)


def upgrade(db: Database, target: int = LATEST) -> list[int]:
    """Apply every migration above the current version up to ``target``; return the versions applied."""
    applied: list[int] = []
    with db.write() as conn:
        if db.is_postgres:
            # Servers started together: one migrates, the others wait here, then find nothing left to do.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({UPGRADE_LOCK_KEY})")
        schema.metadata.create_all(conn, tables=[schema.schema_migrations])
        done = set(conn.execute(select(schema.schema_migrations.c.version)).scalars())
        for version, name, step in MIGRATIONS:
            if version in done or version > target:
                continue
            step(conn)
            conn.execute(schema.schema_migrations.insert().values(version=version, name=name, applied_at=time.time()))
            applied.append(version)
    return applied
