"""Sandboxes in an S3 bucket (AWS, Ceph RGW, MinIO, …) so that every server of a database sees them.

Keys are ``PREFIX<2 hex>/<sha256 hex>``, as files are named on local disk. The id of a sandbox is only known
once its last byte has arrived, and S3 cannot rename, so an upload goes:

* up to one part (``multipart_part_bytes``): kept in memory, then one ``PutObject`` under its final key;
* larger: a multipart upload to ``PREFIX_uploads/<uuid>`` while it arrives (one part in memory at a time),
  then a server-side copy to its final key and the staging object deleted.

A refused upload (too large, client gone) aborts its multipart upload, so nothing of it is kept. A crash
between the two steps can leave a staging object or an unfinished multipart upload: docs/deployment.md gives
the bucket lifecycle rule that clears them. A sandbox already stored is not written again (idempotent puts).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from cloudpilot.storage.base import (
    SandboxNotStored,
    StorageUnavailable,
    TooLarge,
    digest_of,
    put_through,
    sandbox_id_from,
    valid_sandbox_id,
)

DOWNLOAD_CHUNK = 1 << 18
MIN_PART_BYTES = 5 << 20  # S3's smallest part but the last
# A server-side copy of more than this is done in parts (S3 refuses a single CopyObject past 5 GiB).
COPY_PART_BYTES = 1 << 30
_MISSING = {"404", "NoSuchKey", "NotFound"}

log = logging.getLogger(__name__)


def missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in _MISSING


def unavailable(action: str, exc: Exception) -> StorageUnavailable:
    """What the API answers (503) for an S3 failure during a request; botocore's text names no secret."""
    return StorageUnavailable(f"sandbox storage failed to {action}: {exc}")


class S3SandboxWriter:
    """One upload: hashes and counts every byte, and sends a part whenever a whole one has arrived."""

    def __init__(self, store: S3SandboxStore) -> None:
        self._store = store
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self.size = 0
        self._staging_key = f"{store.prefix}_uploads/{uuid.uuid4().hex}"
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._staged = False  # the staging object exists (multipart completed) and must go

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._store.max_bytes:
            raise TooLarge(self._store.max_bytes)
        self._digest.update(chunk)
        self._buffer += chunk
        part = self._store.part_bytes
        while len(self._buffer) >= part:
            self._send_part(bytes(self._buffer[:part]))
            del self._buffer[:part]

    def _send_part(self, data: bytes) -> None:
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                self._upload_id = s3.create_multipart_upload(Bucket=bucket, Key=self._staging_key)["UploadId"]
            number = len(self._parts) + 1
            answer = s3.upload_part(
                Bucket=bucket, Key=self._staging_key, UploadId=self._upload_id, PartNumber=number, Body=data
            )
        except (BotoCoreError, ClientError) as exc:
            raise unavailable("store a sandbox part", exc) from exc
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self) -> tuple[str, int]:
        sandbox_id = sandbox_id_from(self._digest.hexdigest())
        key = self._store.key_of(sandbox_id)
        if self._store.exists(sandbox_id):
            return sandbox_id, self.size  # the same bytes are there; discard() drops what was staged
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                s3.put_object(Bucket=bucket, Key=key, Body=bytes(self._buffer))
                return sandbox_id, self.size
            if self._buffer:
                self._send_part(bytes(self._buffer))
                self._buffer.clear()
            s3.complete_multipart_upload(
                Bucket=bucket,
                Key=self._staging_key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._upload_id, self._staged = None, True
            self._store.copy(self._staging_key, key, self.size)
        except (BotoCoreError, ClientError) as exc:
            raise unavailable("store a sandbox", exc) from exc
        return sandbox_id, self.size

    def discard(self) -> None:
        """Drop what this upload left in the bucket (nothing after a small or repeated upload)."""
        s3, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is not None:
                s3.abort_multipart_upload(Bucket=bucket, Key=self._staging_key, UploadId=self._upload_id)
                self._upload_id = None
            if self._staged:
                s3.delete_object(Bucket=bucket, Key=self._staging_key)
                self._staged = False
        except (BotoCoreError, ClientError) as exc:
            # Called from ``finally``: raising would hide the error that got us here; the lifecycle rule of
            # docs/deployment.md clears what is left.
            log.warning("could not remove the staging object %s of a sandbox upload: %s", self._staging_key, exc)
        self._buffer.clear()


class S3SandboxStore:
    """The :class:`~cloudpilot.storage.base.SandboxStore` port over a boto3 S3 client (passed in, so tests and
    the wiring in services/sandbox_storage.py choose endpoint and credentials)."""

    def __init__(self, client: Any, bucket: str, prefix: str, max_bytes: int, part_bytes: int = 8 << 20) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's smallest part)")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.max_bytes = max_bytes
        self.part_bytes = part_bytes

    def key_of(self, sandbox_id: str) -> str:
        digest = digest_of(sandbox_id)
        return f"{self.prefix}{digest[:2]}/{digest}"

    def writer(self) -> S3SandboxWriter:
        return S3SandboxWriter(self)

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        return put_through(self.writer(), chunks)

    def open(self, sandbox_id: str) -> Iterator[bytes]:
        # GetObject here, so a missing sandbox is an error before an answer starts; the body then streams.
        key = self.key_of(sandbox_id)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if missing(exc):
                raise SandboxNotStored(sandbox_id) from None
            raise unavailable("read a sandbox", exc) from exc
        except BotoCoreError as exc:
            raise unavailable("read a sandbox", exc) from exc
        return _chunks(body)

    def exists(self, sandbox_id: str) -> bool:
        if not valid_sandbox_id(sandbox_id):
            return False
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key_of(sandbox_id))
        except ClientError as exc:
            if missing(exc):
                return False
            raise unavailable("look for a sandbox", exc) from exc
        except BotoCoreError as exc:
            raise unavailable("look for a sandbox", exc) from exc
        return True

    def copy(self, source_key: str, key: str, size: int) -> None:
        """Server-side copy (the bytes do not pass through this server); in parts past 1 GiB."""
        source = {"Bucket": self.bucket, "Key": source_key}
        if size <= COPY_PART_BYTES:
            self.client.copy_object(Bucket=self.bucket, Key=key, CopySource=source)
            return
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, COPY_PART_BYTES), start=1):
                end = min(start + COPY_PART_BYTES, size) - 1
                answer = self.client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(DOWNLOAD_CHUNK)
    except BotoCoreError as exc:  # the connection broke mid-answer: the client sees a cut-off body
        raise unavailable("stream a sandbox", exc) from exc
    finally:
        body.close()
