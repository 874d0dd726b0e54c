"""The pilot over real HTTP: the urllib transport's error mapping, and whole runs against a real server."""

from __future__ import annotations

import io
import json
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudpilot.domain.auth import Role
from cloudpilot.pilot.cli import main
from cloudpilot.pilot.errors import LeaseLost, RequestRejected, ServerUnreachable
from cloudpilot.pilot.transport import HttpTransport
from tests.helpers.archives import tar_gz
from tests.helpers.server import RunningServer, free_port, this_user

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "montecarlo"


class Stub(BaseHTTPRequestHandler):
    """Answers by path: ``/api/v1/jobs/<status>/report`` gives that status; it remembers the last request."""

    seen: list[dict] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Stub.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        parts = self.path.split("/")
        status = int(parts[4]) if len(parts) > 4 and parts[4].isdigit() else 200
        if self.path.endswith("/pilots/match"):
            status = 204
        self.send_response(status)
        payload = b""
        if status >= 400:
            payload = json.dumps({"error": {"code": "some_code", "message": f"status {status}"}}).encode()
        elif status == 200:
            payload = b'{"state": "running"}'
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_transport_maps_answers_onto_errors(stub: str) -> None:
    t = HttpTransport(stub, "s3cret-token\n")
    assert "s3cret" not in repr(t)
    assert t.report(200, {"lease_token": 1, "state": "running"}) == {"state": "running"}
    assert Stub.seen[-1]["auth"] == "Bearer s3cret-token"
    assert json.loads(Stub.seen[-1]["body"]) == {"lease_token": 1, "state": "running"}
    assert t.match({"pilot_id": "p", "wait_seconds": 0}) is None
    with pytest.raises(LeaseLost) as lost:
        t.report(409, {})
    assert lost.value.status == 409 and lost.value.code == "some_code"
    with pytest.raises(RequestRejected):
        t.report(403, {})
    with pytest.raises(ServerUnreachable):
        t.report(503, {})
    with pytest.raises(ServerUnreachable):
        t.report(429, {})
    with pytest.raises(RequestRejected):  # a 409 about the pilot itself is no lost lease
        t.halt("409", 300, "x")


def test_http_transport_unreachable_server() -> None:
    t = HttpTransport(f"http://127.0.0.1:{free_port()}", "tok")
    with pytest.raises(ServerUnreachable):
        t.register({})
    with pytest.raises(ValueError):
        HttpTransport("ftp://example.org", "tok")


def test_main_usage_errors_and_unreachable_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLOUDPILOT_TOKEN", raising=False)
    assert main(["--server", "http://127.0.0.1:1"]) == 2
    assert main(["--token", "x"]) == 2
    argv = ["--server", f"http://127.0.0.1:{free_port()}", "--give-up-seconds", "0", "--workdir", str(tmp_path)]
    monkeypatch.setenv("CLOUDPILOT_TOKEN", "from-env")
    assert main(argv) == 1
    assert (tmp_path / "shutdown_message").read_text().startswith("700 ")


def test_the_pilot_runs_the_montecarlo_example_against_a_real_server(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    sandbox = user.post("/api/v1/sandboxes", content=tar_gz({"mc.py": (EXAMPLE / "mc.py").read_bytes()})).json()
    job = {
        "name": "mc-{n}",
        "executable": sys.executable,
        "arguments": ["mc.py", "{n}", "200"],
        "input_files": ["mc.py"],
        "input_sandbox": sandbox["id"],
        "output_files": ["result-*.json"],
        "requirements": {"cores": 1, "wall_seconds": 60},
    }
    r = user.post("/api/v1/jobs", json={"job": job, "parameter_start": 0, "parameter_count": 3})
    assert r.status_code == 201, r.text
    ids = r.json()["ids"]
    token = server.token(Role.PILOT, "pilot", vo="lhcb")
    workdir = tmp_path / "pilot"
    # As root the payload user defaults to nobody, who cannot run the suite's interpreter (under /root).
    argv = ["--server", server.url, "--token", token, "--cores", "2", "--idle-timeout", "1", "--workdir", str(workdir),
            "--payload-user", this_user()]  # fmt: skip
    assert main([*argv, "--wait-seconds", "1", "--tags", "x,y", "--site", "here"]) == 0

    err = capsys.readouterr().err
    assert err.strip().endswith("200 Intended work completed ok")
    assert token not in err
    for n, job_id in enumerate(ids):
        got = user.get(f"/api/v1/jobs/{job_id}").json()
        assert got["state"] == "done", got
        assert got["progress"] in (None, "200/200 events")
        out = user.get(f"/api/v1/jobs/{job_id}/output").content
        with tarfile.open(fileobj=io.BytesIO(out)) as tar:
            assert sorted(tar.getnames()) == ["job.log", f"result-{n}.json"]
            result = json.load(tar.extractfile(f"result-{n}.json"))  # type: ignore[arg-type]
        assert result["events"] == 200 and 2.5 < result["pi_estimate"] < 3.8
    assert (workdir / "shutdown_message").read_text() == "200 Intended work completed ok\n"
