"""Build the sandbox store the configuration names (wiring: ``storage:`` in, a ``SandboxStore`` out), with the
small sandboxes the database holds in front of it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from cloudpilot.config import ServerConfig
from cloudpilot.config.secrets import SecretUnavailable, resolve_secrets
from cloudpilot.storage.base import SandboxSink, SandboxStore, StorageConfigError
from cloudpilot.storage.local import LocalSandboxStore
from cloudpilot.store.sandboxes import SandboxRepository


class SmallSandboxesInDatabase:
    """The sandbox store, with the sandboxes whose bytes the database holds (outputs that came inline with a final
    report, api/uploads.py) read from there: everything else goes to and comes from ``store``."""

    def __init__(self, store: SandboxStore, records: SandboxRepository) -> None:
        self.store = store
        self.records = records
        self.max_bytes = store.max_bytes

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        return self.store.put(chunks)

    def writer(self) -> SandboxSink:
        return self.store.writer()

    def open(self, sandbox_id: str) -> Iterator[bytes]:
        content = self.records.content(sandbox_id)
        return iter((content,)) if content is not None else self.store.open(sandbox_id)

    def exists(self, sandbox_id: str) -> bool:
        return self.records.holds(sandbox_id) or self.store.exists(sandbox_id)


def build_sandbox_store(config: ServerConfig, data_dir: Path) -> SandboxStore:
    """Local files by default; for ``kind: s3`` a bucket checked now, so a server with unusable storage does not
    start (:class:`StorageConfigError` says which key is wrong)."""
    storage = config.storage
    if storage.kind == "local":
        return LocalSandboxStore(config.sandbox_dir_for(data_dir), storage.max_sandbox_bytes)
    # boto3 is imported only by servers that use S3: the embedded default and the CLI do not pay for it.
    from cloudpilot.storage.s3 import S3SandboxStore
    from cloudpilot.storage.s3_connect import S3Settings, check_bucket, s3_client

    assert storage.bucket is not None  # StorageConfig requires it for kind s3
    references = {"access_key": storage.access_key, "secret_key": storage.secret_key}
    try:  # both None: boto3's standard chain (AWS_ACCESS_KEY_ID, ~/.aws/credentials, an instance role)
        keys = resolve_secrets("storage", {k: v for k, v in references.items() if v is not None})
    except SecretUnavailable as exc:
        raise StorageConfigError(str(exc)) from None
    settings = S3Settings(
        bucket=storage.bucket,
        endpoint=storage.endpoint,
        region=storage.region,
        access_key=keys.get("access_key"),
        secret_key=keys.get("secret_key"),
        addressing_style=storage.addressing_style,
        connect_timeout_seconds=storage.connect_timeout_seconds,
        read_timeout_seconds=storage.read_timeout_seconds,
        max_connections=storage.max_connections,
    )
    client = s3_client(settings)
    check_bucket(client, settings, storage.prefix, create=storage.create_bucket)
    return S3SandboxStore(
        client, storage.bucket, storage.prefix, storage.max_sandbox_bytes, part_bytes=storage.multipart_part_bytes
    )
