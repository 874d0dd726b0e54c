"""The store, the same tests on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
from sqlalchemy import inspect

from cloudpilot.domain.auth import Role
from cloudpilot.domain.errors import StaleLease
from cloudpilot.domain.jobs import JobSpec, JobState
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.jobs import COUNTED_TOGETHER, JobRepository
from cloudpilot.store.migrations import LATEST, current_version, upgrade
from cloudpilot.store.tokens import TokenRepository

NOW = 1_800_000_000.0
WALL = 3600


def spec(**kw: object) -> JobSpec:
    return JobSpec.model_validate({"executable": "echo", **kw})


def test_migrations_create_schema_once(db: Database) -> None:
    assert current_version(db) == LATEST
    assert upgrade(db) == []  # already there: nothing applied twice
    with db.read() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {"jobs", "job_events", "task_queues", "tokens", "pilots", "usage", "sandboxes"} <= tables


def test_submit_keeps_order_and_groups_task_queues(db: Database) -> None:
    repo = JobRepository(db)
    specs = [spec(name=f"j{i}", requirements={"cores": 1 + i % 2}) for i in range(6)]
    ids = repo.submit("lhcb", "alice", specs, NOW, WALL)
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert [repo.get(i).name for i in ids] == [f"j{i}" for i in range(6)]
    assert len(repo.waiting_task_queues()) == 2
    job = repo.get(ids[1])
    assert (job.state, job.cores, job.wall_seconds, job.attempts) == (JobState.WAITING, 2, WALL, 0)
    assert [(e.from_state, e.to_state) for e in repo.history(ids[1])] == [(None, JobState.WAITING)]


def test_a_single_job_is_stored_as_the_same_job_in_a_list_is(db: Database) -> None:
    """One job per submission takes statements compiled once; a list takes the bulk statements: same rows."""
    repo = JobRepository(db)
    one = spec(name="same", arguments=["a b"], requirements={"cores": 2, "tags": ["x"]}, priority=3)
    (alone,) = repo.submit("lhcb", "alice", [one], NOW, WALL)
    (again,) = repo.submit("lhcb", "alice", [one], NOW + 1, WALL)  # the class exists: it is found, not made
    listed = repo.submit("lhcb", "alice", [one, spec(name="other")], NOW + 2, WALL)[0]
    jobs = [repo.get(i) for i in (alone, again, listed)]
    classes = repo.waiting_task_queues()
    assert len(classes) == 2  # "same" (all three jobs) and "other"
    assert all(j.spec == one for j in jobs)
    assert {(j.state, j.cores, j.priority, j.attempts, j.events_done) for j in jobs} == {(JobState.WAITING, 2, 3, 0, 0)}
    for job_id, at in ((alone, NOW), (listed, NOW + 2)):
        (event,) = repo.history(job_id)
        assert (event.from_state, event.to_state, event.reason, event.at) == (None, JobState.WAITING, "submitted", at)
    (same,) = [tq for tq in classes if tq.cores == 2]
    claimed = repo.claim(same.id, "p1", NOW + 3, lease_seconds=90)
    assert claimed is not None and claimed.id == alone  # the oldest of its class first, as always


def test_claim_reports_and_history(db: Database) -> None:
    repo = JobRepository(db)
    (job_id,) = repo.submit("lhcb", "alice", [spec()], NOW, WALL)
    tq = repo.waiting_task_queues()[0]
    job = repo.claim(tq.id, "p1", NOW + 1, lease_seconds=90)
    assert job is not None and job.id == job_id and job.attempts == 1 and job.lease_expires_at == NOW + 91
    assert repo.claim(tq.id, "p2", NOW + 1, 90) is None  # the only job is taken
    repo.report(job_id, 1, JobState.RUNNING, NOW + 2)
    with pytest.raises(StaleLease):
        repo.report(job_id, 0, JobState.DONE, NOW + 3, exit_code=0)
    done = repo.report(job_id, 1, JobState.DONE, NOW + 10, exit_code=0)
    assert done.state is JobState.DONE and done.exit_code == 0
    history = repo.history(job_id)
    assert [e.to_state.value for e in history] == ["waiting", "matched", "running", "done"]
    assert "p1" in history[1].reason
    assert repo.usage()[("lhcb", "alice")][0] == pytest.approx(8.0)  # 8 s of one core while running


def test_expired_lease_requeues_then_fails_after_max_attempts(db: Database) -> None:
    repo = JobRepository(db)
    (job_id,) = repo.submit("lhcb", "alice", [spec(max_attempts=2)], NOW, WALL)
    tq_id = repo.waiting_task_queues()[0].id
    assert repo.claim(tq_id, "p1", NOW, 90) is not None
    assert repo.expire_leases(NOW + 89) == []
    (requeued,) = repo.expire_leases(NOW + 91)
    assert requeued.new_state is JobState.WAITING and "p1 lost" in requeued.reason
    job = repo.get(job_id)
    assert (job.state, job.attempts, job.pilot_id) == (JobState.WAITING, 1, None)
    second = repo.claim(tq_id, "p2", NOW + 100, 90)
    assert second is not None and second.attempts == 2
    with pytest.raises(StaleLease):  # the lost pilot's late report
        repo.report(job_id, 1, JobState.DONE, NOW + 101, exit_code=0)
    (failed,) = repo.expire_leases(NOW + 200)
    assert failed.new_state is JobState.FAILED
    job = repo.get(job_id)
    assert job.state is JobState.FAILED and "no attempts left (2/2)" in (job.failure_reason or "")


def test_heartbeat_renews_lease_and_records_progress(db: Database) -> None:
    repo = JobRepository(db)
    (job_id,) = repo.submit("lhcb", "alice", [spec()], NOW, WALL)
    repo.claim(repo.waiting_task_queues()[0].id, "p1", NOW, 90)
    beat = repo.heartbeat(job_id, 1, NOW + 80, 90, cpu_seconds=12.5, max_rss_bytes=1 << 20, progress="10/50")
    assert beat.lease_expires_at == NOW + 170
    assert repo.expire_leases(NOW + 100) == []
    job = repo.get(job_id)
    assert (job.cpu_seconds, job.max_rss_bytes, job.progress) == (12.5, 1 << 20, "10/50")


def test_kill_and_final_states(db: Database) -> None:
    repo = JobRepository(db)
    a, b = repo.submit("lhcb", "alice", [spec(), spec()], NOW, WALL)
    assert repo.kill(a, NOW, "killed by alice").state is JobState.KILLED
    with pytest.raises(Conflict, match="already killed"):
        repo.kill(a, NOW, "again")
    repo.claim(repo.waiting_task_queues()[0].id, "p1", NOW, 90)
    killed = repo.kill(b, NOW + 1, "killed by alice")
    assert killed.kill_requested
    # The pilot's next heartbeat sees the kill instead of an error.
    assert repo.heartbeat(b, 1, NOW + 2, 90).state is JobState.KILLED
    with pytest.raises(NotFound):
        repo.get(999_999)


def test_tokens_are_hashed_and_revocable(db: Database) -> None:
    tokens = TokenRepository(db)
    issued = tokens.create(Role.USER, "alice", NOW, vo="lhcb")
    assert tokens.authenticate(issued.token, NOW) == issued.principal
    with db.read() as conn:
        stored = conn.exec_driver_sql("SELECT secret_hash FROM tokens").scalar_one()
    assert issued.token.split("_", 2)[2] not in stored
    wrong = issued.token[:-1] + ("x" if issued.token[-1] != "x" else "y")
    assert tokens.authenticate(wrong, NOW) is None
    tokens.revoke(issued.id, NOW)
    assert tokens.authenticate(issued.token, NOW) is None


def _claim_all(url: str, tq_id: int, name: str, out: list[int]) -> None:
    db = Database(url)
    repo = JobRepository(db)
    while (job := repo.claim(tq_id, name, NOW, 90)) is not None:
        out.append(job.id)
    db.dispose()


def _claim_in_process(url: str, tq_id: int, name: str, queue: multiprocessing.Queue) -> None:
    got: list[int] = []
    _claim_all(url, tq_id, name, got)
    queue.put(got)


def test_concurrent_claims_never_hand_a_job_twice(db: Database, db_url: str) -> None:
    repo = JobRepository(db)
    ids = repo.submit("lhcb", "alice", [spec(name=f"j{i}") for i in range(400)], NOW, WALL)
    tq_id = repo.waiting_task_queues()[0].id
    # Four processes (separate connections and locks) and four threads claim at once.
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_in_process, args=(db_url, tq_id, f"proc{i}", queue)) for i in range(4)]
    for p in procs:
        p.start()
    per_thread: list[list[int]] = [[] for _ in range(4)]
    threads = [threading.Thread(target=_claim_all, args=(db_url, tq_id, f"t{i}", per_thread[i])) for i in range(4)]
    for t in threads:
        t.start()
    claimed = [job for _ in procs for job in queue.get(timeout=120)]
    for t in threads:
        t.join()
    for p in procs:
        p.join()
    claimed += [job for got in per_thread for job in got]
    assert sorted(claimed) == sorted(ids)  # every job handed out exactly once
    assert repo.counts(None, None)["matched"] == 400


def test_a_vm_token_carries_its_vm(db: Database) -> None:
    tokens = TokenRepository(db)
    issued = tokens.create(Role.PILOT, "vm-1", NOW, vo="lhcb", expires_at=NOW + 60, vm_id="vm-1")
    assert tokens.authenticate(issued.token, NOW).vm_id == "vm-1"  # type: ignore[union-attr]
    assert tokens.authenticate(issued.token, NOW + 61) is None  # expires with the VM's lifetime
    assert tokens.revoke_for_vm("vm-1", NOW) == 1
    assert tokens.revoke_for_vm("vm-1", NOW) == 0


def test_waiting_counts_per_task_queue_exact_or_capped(db: Database) -> None:
    repo = JobRepository(db)
    repo.submit("lhcb", "alice", [spec()] * 7 + [spec(requirements={"cores": 2})] * 3, NOW, WALL)
    exact = sorted(n for _, n, _ in repo.waiting_per_task_queue())
    assert exact == [3, 7]
    assert sorted(n for _, n, _ in repo.waiting_per_task_queue(cap=5)) == [3, 5]


def test_waiting_classes_many_small_and_one_large(db: Database) -> None:
    # Many classes are read in one statement; one with more jobs than that statement counts is counted alone,
    # up to the caller's cap. Each says when its first waiting job in claim order was submitted.
    repo = JobRepository(db)
    small = [spec(requirements={"tags": [f"t{i}"]}) for i in range(200)]
    repo.submit("lhcb", "alice", small, NOW, WALL)
    large = repo.submit("lhcb", "bob", [spec(requirements={"cores": 4})] * (COUNTED_TOGETHER + 36), NOW + 1, WALL)
    repo.submit("lhcb", "bob", [spec(requirements={"cores": 4})], NOW + 2, WALL)
    repo.kill(large[0], NOW + 3, "gone")

    def counts(cap: object) -> dict[tuple[int, frozenset[str]], tuple[int, float]]:
        return {(c.task_queue.cores, c.task_queue.tags): (c.waiting, c.since) for c in repo.waiting_per_task_queue(cap)}

    exact = counts(None)
    assert len(exact) == 201 and exact[(1, frozenset({"t7"}))] == (1, NOW)
    assert exact[(4, frozenset())] == (COUNTED_TOGETHER + 36, NOW + 1)
    assert counts(COUNTED_TOGETHER + 20)[(4, frozenset())][0] == COUNTED_TOGETHER + 20
    assert counts(10)[(4, frozenset())][0] == 10 and counts(10)[(1, frozenset({"t7"}))][0] == 1
    assert counts(lambda tq: 1000 if tq.cores == 4 else 1)[(4, frozenset())][0] == COUNTED_TOGETHER + 36


def test_a_sandbox_held_in_the_database_keeps_its_bytes_exactly(db: Database) -> None:
    from cloudpilot.store.sandboxes import SandboxRepository, StoredSandbox, record_sandbox

    records = SandboxRepository(db)
    raw = bytes(range(256)) * 40  # every byte value, NULs included
    with db.write() as conn:
        record_sandbox(db, conn, StoredSandbox("sha256:" + "a" * 64, len(raw), "tok", content=raw), NOW)
        record_sandbox(db, conn, StoredSandbox("sha256:" + "b" * 64, 10, "tok"), NOW)  # its bytes in the store
        # Recorded again (the same bytes, content-addressed): the first record stays as it was.
        record_sandbox(db, conn, StoredSandbox("sha256:" + "b" * 64, 10, "tok", content=b"0123456789"), NOW)
    assert records.content("sha256:" + "a" * 64) == raw and records.holds("sha256:" + "a" * 64)
    assert records.content("sha256:" + "b" * 64) is None and not records.holds("sha256:" + "b" * 64)
    assert records.content("sha256:" + "c" * 64) is None and not records.exists("sha256:" + "c" * 64)


def test_a_failed_hot_write_leaves_nothing_and_the_next_one_works(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The matcher's SQLite transaction (Database.hot_write): an error inside rolls back all of it."""
    db = Database(f"sqlite:///{tmp_path}/db.sqlite")
    upgrade(db)
    repo = JobRepository(db)
    (job_id,) = repo.submit("lhcb", "alice", [spec()], NOW, WALL)
    with pytest.raises(RuntimeError), db.hot_write() as conn:
        conn.execute("UPDATE jobs SET state = 'matched', pilot_id = 'p1' WHERE id = ?", (job_id,))
        raise RuntimeError("the history insert failed")
    assert repo.get(job_id).state is JobState.WAITING
    (tq,) = repo.waiting_task_queues()
    assert repo.claim(tq.id, "p2", NOW, 90) is not None  # on the same connection, after that
    assert (repo.get(job_id).state, repo.get(job_id).pilot_id) == (JobState.MATCHED, "p2")
    db.dispose()
