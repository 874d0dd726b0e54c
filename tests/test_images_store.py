"""The image store (migration 4) on SQLite and PostgreSQL: a subscription holds one verified list, a newer
version replaces it in one transaction and marks what it dropped, revocations outlive lists, and task queues
are keyed by the image their jobs require."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import inspect

from cloudpilot.domain.images import ImageState, canonical_bytes, image_state, parse_image_list
from cloudpilot.domain.jobs import JobSpec, Requirements
from cloudpilot.store.database import Database
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.store.images import HeldList, ImageRepository
from cloudpilot.store.jobs import JobRepository
from cloudpilot.store.migrations import LATEST, current_version
from tests.helpers.images import image_entry, image_list

T0 = 1_800_000_000.0


def held(version: str, *names: str, content: bytes | None = None) -> HeldList:
    entries = [image_entry(n, content or n.encode(), f"http://127.0.0.1:9/{n}") for n in names]
    doc = image_list(entries, version=version)
    entries = {e["hv:image"]["dc:identifier"]: e["hv:image"] for e in doc["hv:imagelist"]["hv:images"]}
    return HeldList(parse_image_list(doc), entries, canonical_bytes(doc).decode(), "{}")


def subscription(repo: ImageRepository, version: str = "1", *names: str) -> int:
    values = {
        "url": "http://127.0.0.1:9/l.json",
        "signature_url": "http://127.0.0.1:9/l.json.sig",
        "endorser_key": "PEM",
        "endorser_fingerprint": "SHA256:x",
        "endorser_name": None,
        "refresh_seconds": 3600.0,
        "created_at": T0,
        "created_by": "root",
    }
    return repo.subscribe(values, held(version, *(names or ("a", "b"))), T0).id


def test_migration_4_adds_the_image_tables_and_the_task_queue_column(db: Database) -> None:
    assert current_version(db) == LATEST >= 4
    with db.read() as conn:
        tables = set(inspect(conn).get_table_names())
        columns = {c["name"] for c in inspect(conn).get_columns("task_queues")}
    assert {"image_subscriptions", "images", "image_revocations"} <= tables and "image" in columns


def test_a_newer_list_replaces_the_held_one_and_marks_dropped_images(db: Database) -> None:
    repo = ImageRepository(db)
    sub_id = subscription(repo, "1", "a", "b")
    assert {h.identifier: h.listed for h in repo.held_images()} == {"a": True, "b": True}
    repo.set_verified_file("a", "/data/images/a.raw", T0)
    sub = repo.hold(sub_id, held("2", "a", "c"), T0 + 10)
    assert sub.version == "2" and sub.fetched_at == T0 + 10 and sub.last_error is None
    images = {h.identifier: h for h in repo.held_images()}
    assert images["b"].listed is False and images["b"].list_version == "2"
    assert image_state(images["b"], T0)[0] is ImageState.UNENDORSED
    assert images["a"].local_path == "/data/images/a.raw"  # the same file: still verified
    assert images["c"].listed and repo.owners(["a", "c", "zz"]) == {"a": sub_id, "c": sub_id}
    assert repo.record_attempt(sub_id, T0 + 20, "refused (expired): …").last_error == "refused (expired): …"
    assert repo.get(sub_id).version == "2"


def test_another_file_for_an_image_must_be_fetched_and_checked_again(db: Database) -> None:
    repo = ImageRepository(db)
    sub_id = subscription(repo, "1", "a")
    repo.set_rejected("a", "sha512 mismatch", T0)
    assert repo.held_images()[0].rejected_reason == "sha512 mismatch"
    repo.hold(sub_id, held("2", "a"), T0 + 1)  # the same file in a new version: the verdict stays
    assert repo.held_images()[0].rejected_reason == "sha512 mismatch"
    repo.hold(sub_id, held("3", "a", content=b"new"), T0 + 2)
    (image,) = repo.held_images()
    assert repo.entry("a")["sl:checksum:sha512"] == hashlib.sha512(b"new").hexdigest()
    assert image.rejected_reason is None and image.local_path is None


def test_revocations_outlive_lists_and_unsubscribing_forgets_the_images(db: Database) -> None:
    repo = ImageRepository(db)
    sub_id = subscription(repo)
    repo.revoke("a", T0, "root", "CVE")
    with pytest.raises(Conflict):
        repo.revoke("a", T0, "root", "again")
    assert repo.held_images()[0].revoked_by == "root"
    repo.unsubscribe(sub_id)
    assert repo.held_images() == [] and repo.count_subscriptions() == 0
    assert repo.revocations()["a"][1:] == ("root", "CVE")
    repo.reinstate("a")
    with pytest.raises(Conflict):
        repo.reinstate("a")
    with pytest.raises(NotFound):
        repo.get(sub_id)


def test_jobs_requiring_an_image_get_their_own_task_queue(db: Database) -> None:
    jobs = JobRepository(db)
    specs = [JobSpec(executable="x"), JobSpec(executable="x", requirements=Requirements(image="el9-a"))]
    jobs.submit("lhcb", "alice", specs, T0, 3600)
    queues = {tq.image: tq for tq in jobs.waiting_task_queues()}
    assert set(queues) == {None, "el9-a"} and queues[None].id != queues["el9-a"].id
