"""``storage:``: where sandboxes live — local disk (the embedded default) or an S3 bucket shared by servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloudpilot.config.secrets import is_reference

# {env: NAME} or {file: PATH}, as in clouds' driver_args (config/secrets.py); resolved at server start.
SecretReference = dict[str, str]

_S3_KEYS = (
    "endpoint",
    "bucket",
    "region",
    "prefix",
    "create_bucket",
    "access_key",
    "secret_key",
    "addressing_style",
    "multipart_part_bytes",
    "connect_timeout_seconds",
    "read_timeout_seconds",
    "max_connections",
)


class StorageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "s3"] = Field(
        "local", description="local: files under path (one server); s3: a bucket every server of a database shares."
    )
    max_sandbox_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Largest input or output sandbox.")
    path: Path | None = Field(None, description="kind local: where sandboxes are kept; default DATA_DIR/sandboxes.")
    endpoint: str | None = Field(
        None, description="kind s3: URL of the S3 service (Ceph RGW, MinIO, …); default AWS S3 of the region."
    )
    bucket: str | None = Field(None, min_length=3, max_length=63, description="kind s3: the bucket (required).")
    region: str | None = Field(None, description="kind s3: region for signing; default boto3's (AWS_REGION, …).")
    prefix: str = Field("sandboxes/", max_length=512, description="kind s3: key prefix of every object written.")
    create_bucket: bool = Field(False, description="kind s3: create the bucket at start when it does not exist.")
    access_key: SecretReference | None = Field(
        None, description="kind s3: {env: NAME} or {file: PATH} of the access key; unset: boto3's standard chain."
    )
    secret_key: SecretReference | None = Field(
        None, description="kind s3: {env: NAME} or {file: PATH} of the secret key; unset: boto3's standard chain."
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="kind s3: bucket in the path or in the host name; path for most non-AWS stores."
    )
    multipart_part_bytes: int = Field(
        8 << 20,
        ge=5 << 20,
        le=5 << 30,
        description="kind s3: larger sandboxes go up in parts of this size; one part per upload is held in memory.",
    )
    connect_timeout_seconds: float = Field(5.0, gt=0, le=300, description="kind s3: connection timeout.")
    read_timeout_seconds: float = Field(60.0, gt=0, le=3600, description="kind s3: wait for an answer's bytes.")
    max_connections: int = Field(32, ge=1, le=1000, description="kind s3: pooled connections to the endpoint.")

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_folder(cls, value: str) -> str:
        value = value.lstrip("/")
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("access_key", "secret_key", mode="before")
    @classmethod
    def _a_reference_not_a_secret(cls, value: Any) -> Any:
        # A key written into the YAML would end up in backups, tickets and version control: refer to it instead.
        if value is not None and not (is_reference(value) and isinstance(next(iter(value.values())), str)):
            raise ValueError(
                'give {env: NAME} or {file: PATH} (docs/configuration.md, "Secrets out of the YAML"), not the key'
            )
        return value

    @model_validator(mode="after")
    def _keys_of_kind(self) -> StorageConfig:
        given = self.model_fields_set
        if self.kind == "local":
            s3_only = [k for k in _S3_KEYS if k in given]
            if s3_only:
                raise ValueError(f"{', '.join(s3_only)}: only for kind: s3 (kind is local)")
            return self
        if "path" in given:
            raise ValueError("path: only for kind: local (sandboxes of kind s3 live in the bucket)")
        if self.bucket is None:
            raise ValueError("bucket: required for kind: s3")
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError(
                "access_key and secret_key: give both, or neither (boto3's standard chain: AWS_ACCESS_KEY_ID, "
                "~/.aws/credentials, an instance role)"
            )
        return self
