"""One contract for every sandbox store: the same tests on local disk and on S3 (moto's server, a real process).

A store keeps sandboxes by SHA-256, refuses more than its limit while the bytes arrive and keeps nothing of a
refused or abandoned upload, stores the same bytes once, and streams them back in pieces.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudpilot.storage.base import SandboxNotStored, SandboxStore, StorageError, TooLarge
from cloudpilot.storage.local import LocalSandboxStore
from tests.helpers.moto_s3 import ACCESS_KEY, REGION, SECRET_KEY, MotoS3

MiB = 1 << 20
LIMIT = 12 * MiB
PART = 5 * MiB  # S3's smallest part: a 12 MiB sandbox goes up in three


@dataclass
class StoreUnderTest:
    store: SandboxStore
    kept: Callable[[], list[str]]  # everything the store holds: blobs, temporary files, staging objects, uploads


def _local(tmp_path: Path) -> StoreUnderTest:
    root = tmp_path / "sandboxes"
    store = LocalSandboxStore(root, LIMIT)
    return StoreUnderTest(store, lambda: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))


def _s3(moto_s3: MotoS3) -> StoreUnderTest:
    from cloudpilot.storage.s3 import S3SandboxStore
    from cloudpilot.storage.s3_connect import S3Settings, s3_client

    bucket = moto_s3.new_bucket()
    # The client the server builds (its checksum, retry and addressing settings), not the helper's.
    settings = S3Settings(bucket, moto_s3.endpoint, REGION, ACCESS_KEY, SECRET_KEY, addressing_style="path")
    client = s3_client(settings)
    store = S3SandboxStore(client, bucket, "sb/", LIMIT, part_bytes=PART)

    def kept() -> list[str]:
        objects = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
        uploads = [f"upload:{u['Key']}" for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
        return sorted(objects + uploads)

    return StoreUnderTest(store, kept)


@pytest.fixture(params=["local", "s3"])
def sut(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreUnderTest]:
    if request.param == "local":
        yield _local(tmp_path)
    else:
        yield _s3(request.getfixturevalue("moto_s3"))


def pieces(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read(store: SandboxStore, sandbox_id: str) -> bytes:
    return b"".join(store.open(sandbox_id))


def test_put_names_a_sandbox_by_its_sha256_and_gives_it_back(sut: StoreUnderTest) -> None:
    data = b"a small sandbox\n" * 100
    assert sut.store.put(pieces(data, 100)) == (sha(data), len(data))
    assert sut.store.exists(sha(data))
    assert read(sut.store, sha(data)) == data
    assert len(sut.kept()) == 1


def test_an_empty_sandbox_is_a_sandbox(sut: StoreUnderTest) -> None:
    assert sut.store.put([]) == (sha(b""), 0)
    assert read(sut.store, sha(b"")) == b""


def test_a_large_sandbox_round_trips_and_streams_back_in_pieces(sut: StoreUnderTest) -> None:
    data = os.urandom(LIMIT)  # exactly the limit: allowed; on S3 three parts
    sandbox_id, size = sut.store.put(pieces(data, MiB))
    assert (sandbox_id, size) == (sha(data), LIMIT)
    chunks = list(sut.store.open(sandbox_id))
    assert b"".join(chunks) == data
    assert len(chunks) > 1 and max(map(len, chunks)) <= MiB  # streamed: never the whole archive at once
    assert len(sut.kept()) == 1  # no temporary file, staging object or unfinished upload is left


def test_the_same_bytes_twice_are_stored_once(sut: StoreUnderTest) -> None:
    small, large = b"same" * 1000, os.urandom(PART + MiB)
    for data in (small, large):
        first = sut.store.put(pieces(data, MiB))
        second = sut.store.put(pieces(data, 7777))  # other piece boundaries, the same bytes
        assert first == second == (sha(data), len(data))
        assert read(sut.store, first[0]) == data
    assert len(sut.kept()) == 2


@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT + 3 * MiB])
def test_too_large_is_refused_as_it_arrives_and_nothing_is_kept(sut: StoreUnderTest, size: int) -> None:
    sent = 0

    def counted() -> Iterator[bytes]:
        nonlocal sent
        for chunk in pieces(b"x" * size, MiB):
            sent += len(chunk)
            yield chunk

    with pytest.raises(TooLarge) as refused:
        sut.store.put(counted())
    assert refused.value.limit == LIMIT
    assert sent <= LIMIT + MiB  # stopped at the piece that crossed the limit, not at the end
    assert sut.kept() == []


def test_an_abandoned_upload_leaves_nothing(sut: StoreUnderTest) -> None:
    writer = sut.store.writer()
    try:
        for chunk in pieces(os.urandom(PART * 2), MiB):  # on S3: two parts already sent
            writer.write(chunk)
    finally:
        writer.discard()  # the client went away: no commit
    assert sut.kept() == []


def test_discard_after_commit_keeps_the_sandbox(sut: StoreUnderTest) -> None:
    data = os.urandom(PART + 1)
    writer = sut.store.writer()
    try:
        writer.write(data)
        sandbox_id, _ = writer.commit()
    finally:
        writer.discard()
    assert read(sut.store, sandbox_id) == data
    assert len(sut.kept()) == 1


def test_a_missing_sandbox_fails_when_opened_not_when_read(sut: StoreUnderTest) -> None:
    missing = sha(b"never stored")
    assert not sut.store.exists(missing)
    with pytest.raises(SandboxNotStored):
        sut.store.open(missing)  # no iteration: an HTTP answer can still be a clean error


@pytest.mark.parametrize("bad", ["sha256:../../etc/passwd", "md5:abc", "sha256:" + "A" * 64, ""])
def test_what_is_not_a_sandbox_id_is_refused(sut: StoreUnderTest, bad: str) -> None:
    assert not sut.store.exists(bad)
    with pytest.raises(StorageError):
        sut.store.open(bad)
