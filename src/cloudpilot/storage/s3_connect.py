"""Connecting to an S3 bucket at server start, with one clear message per way it can fail."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cloudpilot.storage.base import StorageConfigError

_NO_BUCKET = {"404", "NoSuchBucket", "NotFound"}
_REFUSED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken"}


@dataclass(frozen=True)
class S3Settings:
    """What the client needs; credentials already resolved (None: boto3's standard chain)."""

    bucket: str
    endpoint: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    addressing_style: str = "auto"
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 60.0
    max_connections: int = 32

    @property
    def where(self) -> str:
        return self.endpoint or f"AWS S3 ({self.region or 'default region'})"


def s3_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=settings.region,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        retries={"max_attempts": 3, "mode": "standard"},
        # Downloads stream from uvicorn's thread pool (40 threads): fewer pooled connections would be
        # opened and thrown away again under load.
        max_pool_connections=settings.max_connections,
        s3={"addressing_style": settings.addressing_style},
        # boto3 >= 1.36 adds a CRC32 checksum to every upload unless told otherwise, which several
        # S3-compatible stores (Ceph RGW and MinIO releases of 2024 and before) refuse.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own: boto3's default session is shared module state and not thread-safe.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        config=config,
    )


def check_bucket(client: Any, settings: S3Settings, prefix: str, create: bool) -> None:
    """Raise :class:`StorageConfigError` unless the bucket exists (or was created) and takes a write."""
    bucket, where = settings.bucket, settings.where
    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError as exc:
        raise StorageConfigError(
            "no S3 credentials: set storage.access_key and storage.secret_key ({env: NAME} or {file: PATH}), or "
            "give boto3 its standard ones (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, ~/.aws/credentials, an "
            "instance role)"
        ) from exc
    except BotoCoreError as exc:
        raise StorageConfigError(f"storage.endpoint {where} is unreachable: {exc}") from exc
    except ClientError as exc:
        code = _code(exc)
        if code not in _NO_BUCKET:
            raise _refused(bucket, where, code, exc) from exc
        if not create:
            raise StorageConfigError(
                f"storage.bucket {bucket!r} does not exist at {where}: create it, or set storage.create_bucket: "
                "true to let the server create it"
            ) from exc
        _create(client, settings)
    _probe_write(client, bucket, prefix, where)


def _create(client: Any, settings: S3Settings) -> None:
    args: dict[str, Any] = {"Bucket": settings.bucket}
    if settings.region and settings.region != "us-east-1":  # S3 refuses us-east-1 as a LocationConstraint
        args["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    try:
        client.create_bucket(**args)
    except ClientError as exc:
        if _code(exc) not in ("BucketAlreadyOwnedByYou",):  # another server created it at the same moment
            raise StorageConfigError(
                f"storage.create_bucket: could not create bucket {settings.bucket!r} at {settings.where}: {exc}"
            ) from exc
    except BotoCoreError as exc:
        raise StorageConfigError(f"storage.endpoint {settings.where} is unreachable: {exc}") from exc


def _probe_write(client: Any, bucket: str, prefix: str, where: str) -> None:
    # Read-only credentials pass HeadBucket; finding out at the first pilot's output would be too late.
    key = f"{prefix}_uploads/probe-{uuid.uuid4().hex}"
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"")
        client.delete_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        raise _refused(bucket, where, _code(exc), exc, "write to") from exc
    except BotoCoreError as exc:
        raise StorageConfigError(f"storage.endpoint {where} is unreachable: {exc}") from exc


def _refused(bucket: str, where: str, code: str, exc: ClientError, action: str = "use") -> StorageConfigError:
    if code in _REFUSED:
        return StorageConfigError(
            f"S3 refused to let these credentials {action} storage.bucket {bucket!r} at {where} ({code}): check "
            "the key pair (storage.access_key and secret_key, or boto3's chain) and the bucket policy"
        )
    return StorageConfigError(f"storage.bucket {bucket!r} at {where}: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
