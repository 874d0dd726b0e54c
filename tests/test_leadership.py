"""Leadership on PostgreSQL (advisory lock, epoch fencing), one server per SQLite data directory, the upgrade
lock, and signals between server processes (LISTEN/NOTIFY)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cloudpilot.domain.vms import VM, VMState
from cloudpilot.services.leadership import AdvisoryLeadership, Change, DataDirInUse, SoleLeadership, lock_data_dir
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Fenced
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.leadership import libpq_url
from cloudpilot.store.migrations import LATEST, current_version, upgrade
from cloudpilot.store.pubsub import PgSignals
from cloudpilot.store.vms import VMRepository
from tests.helpers.scale_out import fresh_database

NOW = 1_000.0


def vm(vm_id: str) -> VM:
    return VM(vm_id, "c1", "lhcb", "small", 1, 2048, VMState.REQUESTED, NOW, NOW)


@pytest.fixture
def fresh_pg(pg_url: str) -> Iterator[str]:
    """An empty database of its own (the tests here take locks and migrate from nothing)."""
    with fresh_database(pg_url) as url:
        yield url


@pytest.fixture
def pg(fresh_pg: str) -> Iterator[Database]:
    db = Database(fresh_pg)
    upgrade(db)
    yield db
    db.dispose()


def kill_leader_connection(url: str) -> None:
    """What a network cut or a PostgreSQL restart does to the leader's dedicated connection."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        killed = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        ).fetchall()
        # pg_terminate_backend only signals the backend: its locks go when it has exited, a moment later.
        deadline = time.monotonic() + 10
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", ([pid for pid, _ in killed],)
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "the leader's connection did not end"
            time.sleep(0.02)


def test_one_leader_and_a_deposed_leaders_writes_are_refused(pg: Database) -> None:
    other = Database(pg.url)  # the second server's own store (and fence)
    a, b = AdvisoryLeadership(pg, holder="a"), AdvisoryLeadership(other, holder="b")
    gained: list[str] = []
    try:
        assert a.poll(NOW, lambda now: gained.append("a")) is Change.GAINED
        assert b.poll(NOW, lambda now: gained.append("b")) is None
        assert a.leading and not b.leading and gained == ["a"]
        assert a.poll(NOW, lambda now: gained.append("a")) is None  # still held: nothing happens
        VMRepository(pg).create(vm("vm-a1"), "started by a")

        kill_leader_connection(pg.url)
        assert b.poll(NOW, lambda now: gained.append("b")) is Change.GAINED
        assert a.epoch is not None and b.epoch == a.epoch + 1
        # a has not noticed yet: what only a leader writes is refused by the store.
        with pytest.raises(Fenced):
            VMRepository(pg).create(vm("vm-a2"), "started by a deposed leader")
        with pytest.raises(Fenced):
            VMRepository(pg).check_fence()  # before destroying an instance
        with pytest.raises(Fenced):
            JobRepository(pg).expire_leases(NOW)
        assert a.poll(NOW, lambda now: None) is Change.LOST and not a.leading
        VMRepository(other).create(vm("vm-b1"), "started by b")  # the new leader's writes go through
        ids = {v.id for v in VMRepository(pg).list()}
        assert "vm-a1" in ids and "vm-b1" in ids and "vm-a2" not in ids
    finally:
        a.release()
        b.release()
        other.dispose()


def test_a_released_lock_is_taken_at_the_next_poll(pg: Database) -> None:
    a, b = AdvisoryLeadership(pg, holder="a"), AdvisoryLeadership(pg, holder="b")
    try:
        assert a.poll(NOW, lambda now: None) is Change.GAINED
        a.release()  # a server stopping (a killed one: PostgreSQL drops its session)
        assert b.poll(NOW, lambda now: None) is Change.GAINED
    finally:
        a.release()
        b.release()


def test_a_failed_take_over_leaves_the_lock_to_others(pg: Database) -> None:
    a, b = AdvisoryLeadership(pg, holder="a"), AdvisoryLeadership(pg, holder="b")

    def broken(now: float) -> None:
        raise RuntimeError("cannot resume leases")

    try:
        with pytest.raises(RuntimeError):
            a.poll(NOW, broken)
        assert not a.leading
        assert b.poll(NOW, lambda now: None) is Change.GAINED
    finally:
        a.release()
        b.release()


def test_sqlite_one_server_per_data_directory(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path)
    try:
        with pytest.raises(DataDirInUse, match="PostgreSQL"):
            lock_data_dir(tmp_path)
    finally:
        held.close()
    lock_data_dir(tmp_path).close()  # free again once the first server is gone
    sole = SoleLeadership()
    resumed: list[float] = []
    assert sole.poll(NOW, resumed.append) is Change.GAINED and sole.leading and resumed == [NOW]
    assert sole.poll(NOW, resumed.append) is None


def test_concurrent_upgrades_serialize(fresh_pg: str) -> None:
    """Servers started together on an empty database: one migrates, the others wait and find it done."""
    errors: list[BaseException] = []
    applied: list[list[int]] = []

    def start() -> None:
        db = Database(fresh_pg)
        try:
            applied.append(upgrade(db))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=start) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(map(len, applied))[:2] == [0, 0] and max(applied, key=len)[-1] == LATEST
    db = Database(fresh_pg)
    assert current_version(db) == LATEST
    db.dispose()


def test_signals_reach_the_other_process_within_100_ms(pg_url: str) -> None:
    heard: list[tuple[str, float]] = []
    arrived = threading.Event()

    def on_signal(payload: str) -> None:
        heard.append((payload, time.perf_counter()))
        arrived.set()

    a = PgSignals(pg_url, "a", {"cloudpilot_test": lambda payload: None})
    b = PgSignals(pg_url, "b", {"cloudpilot_test": on_signal})
    a.start()
    b.start()
    try:
        assert a.wait_listening(10) and b.wait_listening(10)
        sent = time.perf_counter()
        a.send("cloudpilot_test", "x")
        assert arrived.wait(2)
        assert heard[0][0] == "x" and heard[0][1] - sent < 0.1
        arrived.clear()
        b.send("cloudpilot_test", "own")  # a process does not hear itself
        assert not arrived.wait(0.3)
    finally:
        a.stop()
        b.stop()
