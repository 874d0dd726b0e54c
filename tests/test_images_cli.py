"""``cloudpilot image keygen|sign|verify`` (an endorser's tools, offline) and ``subscribe|list|revoke`` with
``cloudpilot clouds`` and ``cloudpilot job`` against a real server; lists and images served over real HTTP."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cloudpilot.cli.main import app
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.images import LOCAL_IMAGES, FileServer, image_entry, image_list
from tests.helpers.server import ServerFactory

runner = CliRunner()
IMAGE = b"el9 for lhcb\n" * 200


def run(args: list[str], url: str = "", token: str = "") -> Any:
    env = {"COLUMNS": "250", "CLOUDPILOT_URL": url, "CLOUDPILOT_TOKEN": token}
    return runner.invoke(app, args, env=env)


def endorse(tmp_path: Path, files: FileServer, name: str = "endorser", **list_kw: Any) -> tuple[Path, Path, Path]:
    """A key pair made with keygen, a list file signed with sign; returns (list, key, pub)."""
    result = run(["image", "keygen", "--out", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    files.files["/el9.raw"] = IMAGE
    lst = tmp_path / f"{name}-list.json"
    lst.write_text(json.dumps(image_list([image_entry("el9-a", IMAGE, files.url("/el9.raw"))], **list_kw), indent=1))
    result = run(["image", "sign", str(lst), "--key", str(tmp_path / f"{name}.key")])
    assert result.exit_code == 0, result.output
    return lst, tmp_path / f"{name}.key", tmp_path / f"{name}.pub"


def test_keygen_sign_verify_and_each_refusal(tmp_path: Path, file_server: FileServer) -> None:
    lst, key, pub = endorse(tmp_path, file_server)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and "BEGIN PUBLIC KEY" in pub.read_text()
    assert run(["image", "keygen", "--out", str(tmp_path / "endorser")]).exit_code == 1  # never overwrites a key
    ok = run(["image", "verify", str(lst), "--endorser", str(pub), "--fetch"])
    assert ok.exit_code == 0, ok.output
    assert (
        "image el9-a: 2600 bytes, sha512 matches" in ok.output and "verified: list lhcb-images version 1" in ok.output
    )
    # The list published over HTTP verifies the same way.
    file_server.files["/l.json"], file_server.files["/l.json.sig"] = lst.read_bytes(), Path(f"{lst}.sig").read_bytes()
    assert run(["image", "verify", file_server.url("/l.json"), "--endorser", str(pub)]).exit_code == 0

    def refused(args: list[str]) -> str:
        result = run(["image", "verify", *args])
        assert result.exit_code == 1, result.output
        return result.output

    _, _, other = endorse(tmp_path, file_server, name="other")
    assert "refused (endorser not trusted)" in refused([str(lst), "--endorser", str(other)])
    assert "refused (version not newer)" in refused([str(lst), "--endorser", str(pub), "--held-version", "2"])
    data = lst.read_bytes()
    at = data.index(b"el9-a")
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(data[:at] + b"E" + data[at + 1 :])
    sig = str(lst) + ".sig"
    assert "refused (bad signature)" in refused([str(tampered), "--endorser", str(pub), "--signature", sig])
    assert "refused (missing signature)" in refused([str(tampered), "--endorser", str(pub)])
    file_server.files["/el9.raw"] = IMAGE[:-1] + b"!"
    assert "refused (image does not match)" in refused([str(lst), "--endorser", str(pub), "--fetch"])
    expired, expired_key, _ = endorse(tmp_path, file_server, name="late", expires_in=-10)
    assert "refused (expired)" in refused([str(expired), "--endorser", str(tmp_path / "late.pub")])
    assert expired_key.exists()


def test_subscribe_list_revoke_clouds_and_job_through_the_cli(
    tmp_path: Path, make_server: ServerFactory, file_server: FileServer
) -> None:
    local = {
        "driver": "local",
        "flavors": {"f": {"cores": 1, "memory_mb": 1024}},
        "endorsed_images": {"el9-a": "img-a"},
    }
    cfg = {"clouds": {"a": local}, "images": LOCAL_IMAGES, "provisioner": {"interval_seconds": 1}}
    server = make_server(ServerConfig.model_validate(cfg))
    admin, user = server.token(Role.ADMIN, "root"), server.token(Role.USER, "alice", vo="lhcb")
    lst, _, pub = endorse(tmp_path, file_server)
    file_server.files["/l.json"], file_server.files["/l.json.sig"] = lst.read_bytes(), Path(f"{lst}.sig").read_bytes()
    _, _, stranger = endorse(tmp_path, file_server, name="stranger")
    result = run(["image", "subscribe", file_server.url("/l.json"), "--endorser", str(stranger)], server.url, admin)
    assert result.exit_code == 1 and "refused (endorser not trusted)" in result.output
    result = run(["image", "subscribe", file_server.url("/l.json"), "--endorser", str(pub)], server.url, admin)
    assert result.exit_code == 0, result.output
    assert "subscription 1: list lhcb-images version 1" in result.output
    listed = run(["image", "list"], server.url, user)
    assert listed.exit_code == 0 and "el9-a" in listed.output and "endorsed" in listed.output
    result = run(["image", "revoke", "el9-a", "--reason", "bad kernel"], server.url, admin)
    assert result.exit_code == 0 and "image el9-a revoked; 0 VM(s) draining" in result.output
    clouds = run(["clouds"], server.url, admin)
    assert "revoked: revoked by root" in clouds.output and "bad kernel" in clouds.output
    job = {"executable": sys.executable, "arguments": ["-c", "pass"], "requirements": {"image": "el9-a"}}
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(job))
    submitted = run(["submit", str(spec)], server.url, user)
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.split()[0]  # a warning (no cloud boots el9-a yet) goes to stderr
    time.sleep(1)
    shown = run(["job", job_id], server.url, user)
    assert "no VM can be booted for it: image el9-a is revoked" in shown.output
    assert json.loads(run(["image", "list", "--json"], server.url, admin).output)["images"][0]["state"] == "revoked"
