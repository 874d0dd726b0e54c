"""The S3 store beyond the shared contract: multipart for large sandboxes, and clear errors at server start.

Against moto's S3 server as a real process (tests/helpers/moto_s3.py).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from cloudpilot.config import ConfigError, ServerConfig, load_config
from cloudpilot.domain.auth import Role
from cloudpilot.services.sandbox_storage import build_sandbox_store
from cloudpilot.storage.base import StorageConfigError, StorageUnavailable
from cloudpilot.storage.s3 import S3SandboxStore
from cloudpilot.storage.s3_connect import S3Settings, s3_client
from tests.helpers.archives import tar_gz
from tests.helpers.moto_s3 import MotoS3
from tests.helpers.server import ServerFactory, free_port

MiB = 1 << 20


def s3_store(moto_s3: MotoS3, tmp_path: Path, **storage: object) -> Any:
    config = ServerConfig.model_validate({"storage": moto_s3.storage(storage.pop("bucket", None) or "", **storage)})
    return build_sandbox_store(config, tmp_path)


def calls_of(store: S3SandboxStore) -> list[str]:
    """The S3 operations the store's client makes from now on (botocore's own event hooks, no patching)."""
    calls: list[str] = []
    store.client.meta.events.register("before-call.s3", lambda model, **_: calls.append(model.name))
    return calls


def test_small_sandboxes_are_one_put_and_large_ones_go_up_in_parts(
    moto_s3: MotoS3, s3_keys: dict[str, str], tmp_path: Path
) -> None:
    store = s3_store(moto_s3, tmp_path, bucket=moto_s3.new_bucket(), multipart_part_bytes=5 * MiB)
    assert isinstance(store, S3SandboxStore)
    calls = calls_of(store)
    store.put([b"small"])
    assert [c for c in calls if c not in ("HeadObject",)] == ["PutObject"]
    calls.clear()
    data = os.urandom(11 * MiB)
    sandbox_id, _ = store.put(data[i : i + MiB] for i in range(0, len(data), MiB))
    assert calls.count("UploadPart") == 3  # 5 + 5 + 1 MiB, one part in memory at a time
    assert {"CreateMultipartUpload", "CompleteMultipartUpload", "CopyObject", "DeleteObject"} <= set(calls)
    assert "PutObject" not in calls
    assert b"".join(store.open(sandbox_id)) == data
    calls.clear()
    store.put([data])  # stored already: the parts are dropped, nothing copied
    assert "CopyObject" not in calls and "AbortMultipartUpload" in calls


def test_keys_are_the_sha256_under_the_prefix(moto_s3: MotoS3, s3_keys: dict[str, str], tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket()
    store = s3_store(moto_s3, tmp_path, bucket=bucket, prefix="/site-a/sandboxes")
    sandbox_id, _ = store.put([b"hello"])
    digest = sandbox_id.removeprefix("sha256:")
    keys = [o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == [f"site-a/sandboxes/{digest[:2]}/{digest}"]  # the start-up probe left nothing either


def test_a_missing_bucket_stops_the_server_and_says_what_to_do(
    moto_s3: MotoS3, s3_keys: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(StorageConfigError) as refused:
        s3_store(moto_s3, tmp_path, bucket="no-such-bucket-here")
    message = str(refused.value)
    assert "storage.bucket 'no-such-bucket-here' does not exist" in message
    assert moto_s3.endpoint in message and "storage.create_bucket: true" in message


def test_create_bucket_creates_it(moto_s3: MotoS3, s3_keys: dict[str, str], tmp_path: Path) -> None:
    store = s3_store(moto_s3, tmp_path, bucket="created-at-start", create_bucket=True)
    sandbox_id, _ = store.put([b"x"])
    assert store.exists(sandbox_id)
    s3_store(moto_s3, tmp_path, bucket="created-at-start", create_bucket=True)  # a second server: no error


def test_an_unreachable_endpoint_stops_the_server_and_names_it(s3_keys: dict[str, str], tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    storage = {
        "kind": "s3",
        "endpoint": endpoint,
        "bucket": "sandboxes",
        "access_key": {"env": "CLOUDPILOT_TEST_S3_ACCESS"},
        "secret_key": {"env": "CLOUDPILOT_TEST_S3_SECRET"},
        "connect_timeout_seconds": 1,
    }
    with pytest.raises(StorageConfigError, match=rf"storage\.endpoint {re.escape(endpoint)} is unreachable"):
        build_sandbox_store(ServerConfig.model_validate({"storage": storage}), tmp_path)


def test_an_unset_credential_variable_is_named(moto_s3: MotoS3, tmp_path: Path) -> None:
    storage = moto_s3.storage("sandboxes", access_key={"env": "CLOUDPILOT_TEST_NO_SUCH_VARIABLE"})
    with pytest.raises(StorageConfigError, match=r"storage\.access_key: environment variable CLOUDPILOT_TEST_NO_SUCH"):
        build_sandbox_store(ServerConfig.model_validate({"storage": storage}), tmp_path)


def test_credentials_from_files(moto_s3: MotoS3, tmp_path: Path) -> None:
    (tmp_path / "access").write_text("AKIAFROMFILE\n")
    (tmp_path / "secret").write_text("secret-from-file\n")
    bucket = moto_s3.new_bucket()
    store = s3_store(
        moto_s3,
        tmp_path,
        bucket=bucket,
        access_key={"file": str(tmp_path / "access")},
        secret_key={"file": str(tmp_path / "secret")},
    )
    credentials = store.client._request_signer._credentials  # what boto3 signs with
    assert (credentials.access_key, credentials.secret_key) == ("AKIAFROMFILE", "secret-from-file")


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({"kind": "s3"}, "bucket: required for kind: s3"),
        ({"bucket": "bbb"}, "bucket: only for kind: s3"),
        ({"kind": "s3", "bucket": "bbb", "path": "/srv"}, "path: only for kind: local"),
        ({"kind": "s3", "bucket": "bbb", "access_key": "AKIALITERAL", "secret_key": {"env": "S"}}, "not the key"),
        ({"kind": "s3", "bucket": "bbb", "access_key": {"env": "A"}}, "give both, or neither"),
        ({"kind": "s3", "bucket": "bbb", "multipart_part_bytes": 1024}, "multipart_part_bytes"),
    ],
)
def test_storage_keys_are_checked_when_the_configuration_is_loaded(
    tmp_path: Path, storage: dict[str, object], expected: str
) -> None:
    import yaml

    path = tmp_path / "server.yaml"
    path.write_text(yaml.safe_dump({"storage": storage}))
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_a_failing_store_is_unavailable_not_the_callers_fault() -> None:
    settings = S3Settings("sandboxes", f"http://127.0.0.1:{free_port()}", "us-east-1", "AKIA", "s", "path", 0.5)
    store = S3SandboxStore(s3_client(settings), "sandboxes", "", 10 * MiB)
    sandbox_id = "sha256:" + "0" * 64
    with pytest.raises(StorageUnavailable, match="sandbox storage failed to read a sandbox"):
        store.open(sandbox_id)
    with pytest.raises(StorageUnavailable):
        store.exists(sandbox_id)
    with pytest.raises(StorageUnavailable):
        store.put([b"x"])


def test_a_submission_looks_each_sandbox_up_once(
    moto_s3: MotoS3, s3_keys: dict[str, str], make_server: ServerFactory
) -> None:
    server = make_server(ServerConfig.model_validate({"storage": moto_s3.storage(moto_s3.new_bucket())}))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    sandbox = user.post("/api/v1/sandboxes", content=tar_gz({"in.txt": b"x"})).json()["id"]
    calls = calls_of(server.services.sandbox_store.store)  # the S3 store behind the database's small sandboxes
    job = {"executable": "/bin/true", "input_sandbox": sandbox}
    r = user.post("/api/v1/jobs", json={"job": job, "parameter_count": 1000})
    assert r.status_code == 201, r.text
    assert calls.count("HeadObject") == 1  # not 1000 requests to S3
    missing = "sha256:" + "f" * 64
    r = user.post("/api/v1/jobs", json={"executable": "/bin/true", "input_sandbox": missing})
    assert r.status_code == 422 and "was never uploaded" in r.json()["error"]["message"]
