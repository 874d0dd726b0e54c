"""End to end: two `cloudpilot server` processes on one PostgreSQL database share sandboxes through S3.

A user uploads an input sandbox and submits through server B; a real pilot talks only to server A, fetches the
input and uploads the output (one small file and one large enough for a multipart upload) through A; the user
downloads the output through B. moto's S3 server runs as a process of its own (tests/helpers/moto_s3.py).
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import yaml

from cloudpilot.domain.auth import Role
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.tokens import TokenRepository
from tests.helpers.archives import tar_gz
from tests.helpers.moto_s3 import KEY_ENV, MotoS3
from tests.helpers.pilots import PilotProcesses, wait_final
from tests.helpers.server_process import CLI, ServerProcesses

MiB = 1 << 20
PAYLOAD = """
import os, sys
text = open("in.txt").read()
open("out.txt", "w").write(text.upper())
with open("big.bin", "wb") as f:  # random: gzip keeps it at 7 MiB, past one 5 MiB part
    f.write(os.urandom(7 * 1024 * 1024))
"""


def token(db_url: str, role: Role, name: str, vo: str) -> str:
    db = Database(db_url)
    try:
        return issue_token(TokenRepository(db), role, name, time.time(), vo=vo).token
    finally:
        db.dispose()


def members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_output_uploaded_through_one_server_is_downloaded_through_another(
    db_url: str, moto_s3: MotoS3, server_processes: ServerProcesses, pilots: PilotProcesses, tmp_path: Path
) -> None:
    bucket = moto_s3.new_bucket()
    config = tmp_path / "server.yaml"
    storage = moto_s3.storage(bucket, multipart_part_bytes=5 * MiB)
    config.write_text(yaml.safe_dump({"database_url": db_url, "storage": storage}))
    a = server_processes.start(tmp_path / "a", "--config", str(config), env=KEY_ENV)
    b = server_processes.start(tmp_path / "b", "--config", str(config), env=KEY_ENV)
    user_token = token(db_url, Role.USER, "alice", "lhcb")
    with httpx.Client(base_url=b.url, headers={"Authorization": f"Bearer {user_token}"}, timeout=60) as user:
        r = user.post("/api/v1/sandboxes", content=tar_gz({"in.txt": b"shared sandboxes"}))
        assert r.status_code == 201, r.text
        job = {
            "executable": sys.executable,
            "arguments": ["-c", PAYLOAD],
            "input_sandbox": r.json()["id"],
            "output_files": ["out.txt", "big.bin"],
        }
        r = user.post("/api/v1/jobs", json=job)
        assert r.status_code in (200, 201), r.text
        [job_id] = r.json()["ids"]

        pilot = pilots.start(a.url, token(db_url, Role.PILOT, "pilot-lhcb", "lhcb"), idle_timeout=3)
        [done] = wait_final(user, [job_id], timeout=120).values()
        assert done["state"] == "done", pilots.log(pilot)

        r = user.get(f"/api/v1/jobs/{job_id}/output")
        assert r.status_code == 200, r.text
    files = members(r.content)
    assert files["out.txt"] == b"SHARED SANDBOXES"
    assert len(files["big.bin"]) == 7 * MiB
    assert pilot.wait(timeout=30) == 0

    # The output is in the bucket under its SHA-256, and no server kept sandboxes on its own disk.
    digest = hashlib.sha256(r.content).hexdigest()
    keys = {o["Key"] for o in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"sandboxes/{digest[:2]}/{digest}" in keys
    assert not any(k.startswith("sandboxes/_uploads/") for k in keys)  # no staging object left
    assert not moto_s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    for data_dir in (tmp_path / "a", tmp_path / "b"):
        assert not (data_dir / "sandboxes").exists()


def test_a_server_with_a_missing_bucket_does_not_start(moto_s3: MotoS3, tmp_path: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(yaml.safe_dump({"storage": moto_s3.storage("no-such-bucket")}))
    done = subprocess.run(
        [*CLI, "server", "--data-dir", str(tmp_path / "data"), "--config", str(config)],
        env={**KEY_ENV, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "storage.bucket 'no-such-bucket' does not exist" in done.stderr
    assert "storage.create_bucket: true" in done.stderr
    assert "Traceback" not in done.stderr
