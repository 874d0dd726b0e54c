"""The client SDK and the user commands, end to end against a real server running in a thread."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner

from cloudpilot.api.app import create_app
from cloudpilot.cli.demo import example_dir
from cloudpilot.cli.main import app
from cloudpilot.client import (
    CloudpilotClient,
    Forbidden,
    InvalidRequest,
    JobFileError,
    NotFound,
    ServerUnavailable,
    UnsafeArchive,
    load_job_file,
)
from cloudpilot.client.sandbox import extract_safely
from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.container import Services
from cloudpilot.services.tokens import issue_token


@dataclass
class LiveServer:
    url: str
    services: Services
    admin: str
    alice: str
    bob: str
    pilot: str

    def client(self, token: str | None = None) -> CloudpilotClient:
        return CloudpilotClient(self.url, token or self.alice, timeout=10)

    def env(self, token: str | None = None) -> dict[str, str]:
        return {"CLOUDPILOT_URL": self.url, "CLOUDPILOT_TOKEN": token or self.alice}

    def sandbox_members(self, sandbox_id: str) -> dict[str, bytes]:
        data = b"".join(self.services.sandbox_store.open(sandbox_id))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    services = Services.build(ServerConfig(), tmp_path / "data")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # bound here and handed over, so no other process can take the port meanwhile
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(services), log_level="warning", access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    now = time.time()
    tokens = services.tokens
    yield LiveServer(
        url=f"http://127.0.0.1:{port}",
        services=services,
        admin=issue_token(tokens, Role.ADMIN, "root", now).token,
        alice=issue_token(tokens, Role.USER, "alice", now, vo="physics").token,
        bob=issue_token(tokens, Role.USER, "bob", now, vo="physics").token,
        pilot=issue_token(tokens, Role.PILOT, "pilots", now, vo="physics").token,
    )
    uv.should_exit = True
    thread.join(10)
    sock.close()
    services.close()


runner = CliRunner()


def cli(args: list[str], env: dict[str, str]) -> Any:
    return runner.invoke(app, args, env=env)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- submit ---------------------------------------------------------------------------------------------------


def test_submit_yaml_uploads_input_files_once_and_sets_the_sandbox(live: LiveServer, tmp_path: Path) -> None:
    write(tmp_path / "work/mc.py", "print('hi')\n")
    write(tmp_path / "work/data/params.txt", "42\n")
    job_file = write(
        tmp_path / "work/job.yaml",
        "name: mc\nexecutable: python3\narguments: [mc.py]\ninput_files: [mc.py, data/params.txt]\n",
    )
    first = cli(["submit", str(job_file)], live.env())
    again = cli(["submit", str(job_file)], live.env())
    assert first.exit_code == 0, first.output
    assert again.exit_code == 0, again.output
    (id1,), (id2,) = [[int(x) for x in r.stdout.split()] for r in (first, again)]
    with live.client() as client:
        job1, job2 = client.job(id1), client.job(id2)
    sandbox = job1["spec"]["input_sandbox"]
    assert sandbox.startswith("sha256:")
    assert job2["spec"]["input_sandbox"] == sandbox  # same files, same bytes, same content id
    assert live.sandbox_members(sandbox) == {"mc.py": b"print('hi')\n", "data/params.txt": b"42\n"}


def test_a_list_uploads_one_sandbox_per_distinct_set_of_input_files(live: LiveServer, tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "a")
    write(tmp_path / "b.txt", "b")
    jobs = [
        {"name": "one", "executable": "cat", "input_files": ["a.txt"]},
        {"name": "two", "executable": "cat", "input_files": ["b.txt", "a.txt"]},
        {"name": "three", "executable": "cat", "input_files": ["a.txt"]},
        {"name": "four", "executable": "true"},
    ]
    with live.client() as client:
        ids = client.submit(jobs, base_dir=tmp_path)
        found = [client.job(i) for i in ids]
    assert [j["name"] for j in found] == ["one", "two", "three", "four"]
    sandboxes = [j["spec"]["input_sandbox"] for j in found]
    assert sandboxes[0] == sandboxes[2] != sandboxes[1]
    assert sandboxes[3] is None
    assert set(live.sandbox_members(sandboxes[1])) == {"a.txt", "b.txt"}
    assert jobs[0] == {"name": "one", "executable": "cat", "input_files": ["a.txt"]}  # the caller's dicts untouched


def test_parametric_submission_gives_n_ids_in_order(live: LiveServer, tmp_path: Path) -> None:
    write(tmp_path / "mc.py", "pass\n")
    job_file = write(
        tmp_path / "param.json",
        json.dumps(
            {
                "job": {
                    "name": "mc-{n}",
                    "executable": "python3",
                    "arguments": ["mc.py", "{n}"],
                    "input_files": ["mc.py"],
                },
                "parameter_start": 10,
                "parameter_count": 5,
                "parameter_step": 2,
            }
        ),
    )
    result = cli(["submit", str(job_file)], live.env())
    assert result.exit_code == 0, result.output
    ids = [int(x) for x in result.stdout.split()]
    assert len(ids) == 5 and ids == sorted(ids)
    with live.client() as client:
        found = [client.job(i) for i in ids]
    assert [j["name"] for j in found] == ["mc-10", "mc-12", "mc-14", "mc-16", "mc-18"]
    assert len({j["spec"]["input_sandbox"] for j in found}) == 1


def test_parametric_input_files_with_n_get_one_sandbox_each(live: LiveServer, tmp_path: Path) -> None:
    for n in range(3):
        write(tmp_path / f"in/{n}.dat", f"data {n}")
    document = {"job": {"name": "p{n}", "executable": "cat", "input_files": ["in/{n}.dat"]}, "parameter_count": 3}
    with live.client() as client:
        ids = client.submit(document, base_dir=tmp_path)
        found = [client.job(i) for i in ids]
    assert [j["name"] for j in found] == ["p0", "p1", "p2"]
    for n, job in enumerate(found):
        assert job["spec"]["input_files"] == [f"in/{n}.dat"]
        assert live.sandbox_members(job["spec"]["input_sandbox"]) == {f"in/{n}.dat": f"data {n}".encode()}


def test_a_missing_input_file_is_named_and_nothing_is_sent(live: LiveServer, tmp_path: Path) -> None:
    write(tmp_path / "present.txt", "x")
    job_file = write(
        tmp_path / "jobs.yaml",
        "- {executable: cat, input_files: [present.txt]}\n- {executable: cat, input_files: [missing.txt]}\n",
    )
    result = cli(["submit", str(job_file)], live.env())
    assert result.exit_code == 1
    assert result.stderr.startswith("error: input file 'missing.txt' not found")
    assert "Traceback" not in result.output
    with live.client() as client:
        assert client.jobs() == []
    sandbox_dir = live.services.config.sandbox_dir_for(live.services.data_dir)
    assert not [p for p in sandbox_dir.rglob("*") if p.is_file()]


def test_an_invalid_job_is_refused_before_anything_is_sent(live: LiveServer, tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "a")
    with live.client() as client, pytest.raises(InvalidRequest) as caught:
        client.submit([{"executable": "x", "input_files": ["a.txt"], "requirements": {"cores": 0}}], tmp_path)
    assert caught.value.field == "[0].requirements.cores"
    assert "greater than or equal to 1" in caught.value.message
    with live.client() as client, pytest.raises(InvalidRequest, match="needs parameter_count"):
        client.submit({"job": {"executable": "x"}, "parameter_step": 2}, tmp_path)
    with live.client() as client:
        assert client.jobs() == []


def test_job_file_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    bad_yaml = write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(JobFileError, match=r"job file .*bad\.yaml is not valid YAML: .* line \d+"):
        load_job_file(bad_yaml)
    bad_json = write(tmp_path / "bad.json", '{"name": }')
    with pytest.raises(JobFileError, match=r"bad\.json is not valid JSON: Expecting value at line 1, column 10"):
        load_job_file(bad_json)
    with pytest.raises(JobFileError, match=r"cannot read job file .*nope\.yaml: No such file"):
        load_job_file(tmp_path / "nope.yaml")
    with pytest.raises(JobFileError, match=r"empty\.yml is empty"):
        load_job_file(write(tmp_path / "empty.yml", "# nothing\n"))
    with pytest.raises(JobFileError, match=r"must hold a job, a list of jobs or a parametric job, not a str"):
        load_job_file(write(tmp_path / "scalar.job", "hello"))
    assert load_job_file(write(tmp_path / "noext", "executable: true\n")) == {"executable": True}
    assert load_job_file(write(tmp_path / "j.txt", '[{"executable": "x"}]')) == [{"executable": "x"}]


# -- jobs, job, kill, wait ------------------------------------------------------------------------------------


def test_jobs_job_kill_and_wait_commands(live: LiveServer, tmp_path: Path) -> None:
    job_file = write(
        tmp_path / "jobs.json",
        json.dumps([{"name": "first", "executable": "true"}, {"name": "second", "executable": "true"}]),
    )
    ids = [int(x) for x in cli(["submit", str(job_file)], live.env()).stdout.split()]

    listed = cli(["jobs", "--json"], live.env())
    assert listed.exit_code == 0, listed.output
    assert [(j["id"], j["name"], j["state"]) for j in json.loads(listed.stdout)] == [
        (ids[0], "first", "waiting"),
        (ids[1], "second", "waiting"),
    ]
    table = cli(["jobs"], live.env())
    assert table.exit_code == 0 and "first" in table.stdout and "waiting" in table.stdout

    killed = cli(["kill", str(ids[0])], live.env())
    assert killed.exit_code == 0 and killed.stdout.strip() == f"job {ids[0]} is killed"
    again = cli(["kill", str(ids[0])], live.env())
    assert again.exit_code == 1 and again.stderr.startswith("error: ") and "killed" in again.stderr

    only_killed = json.loads(cli(["jobs", "--state", "killed", "--json"], live.env()).stdout)
    assert [j["id"] for j in only_killed] == [ids[0]]
    bad_state = cli(["jobs", "--state", "sleeping"], live.env())
    assert bad_state.exit_code == 2

    details = json.loads(cli(["job", str(ids[0]), "--json"], live.env()).stdout)
    assert [(e["from_state"], e["to_state"]) for e in details["history"]][-1] == ("waiting", "killed")
    shown = cli(["job", str(ids[0])], live.env())
    assert shown.exit_code == 0 and "history" in shown.stdout and "killed by alice" in shown.stdout

    waited = cli(["wait", str(ids[0])], live.env())
    assert waited.exit_code == 1 and waited.stdout.splitlines() == ["done: 0", "failed: 0", "killed: 1"]
    timed_out = cli(["wait", str(ids[1]), "--timeout", "0.3", "--poll", "0.1"], live.env())
    assert timed_out.exit_code == 1 and "error: 1 jobs are not final after 0.3 s" in timed_out.stderr
    assert "waiting: 1" in timed_out.stdout


def test_wait_pages_through_many_jobs(live: LiveServer) -> None:
    with live.client() as client:
        ids = client.submit({"job": {"executable": "true"}, "parameter_count": 30}, Path("."))
        for job_id in ids:
            client.kill(job_id)
        seen: list[dict[str, int]] = []
        counts = client.wait(ids, poll=0.1, timeout=5, on_progress=seen.append)
    assert counts["killed"] == 30 and sum(counts.values()) == 30
    assert seen[-1] == counts


def test_output_is_downloaded_and_extracted(live: LiveServer, tmp_path: Path) -> None:
    with live.client() as client:
        (job_id,) = client.submit({"name": "out", "executable": "true", "output_files": ["*.out"]}, tmp_path)
    run_as_pilot(live, job_id, {"result.out": b"3.14159\n", "job.log": b"ran\n"})
    result = cli(["output", str(job_id), "--dest", str(tmp_path / "got")], live.env())
    assert result.exit_code == 0, result.output
    assert sorted(Path(p).name for p in result.stdout.split()) == ["job.log", "result.out"]
    assert (tmp_path / "got/result.out").read_bytes() == b"3.14159\n"
    assert cli(["wait", str(job_id)], live.env()).exit_code == 0


def run_as_pilot(live: LiveServer, job_id: int, outputs: dict[str, bytes]) -> None:
    """Play the pilot's side of the contract over HTTP: register, match, upload the outputs, report done."""
    with httpx.Client(base_url=live.url + "/api/v1", headers={"Authorization": f"Bearer {live.pilot}"}) as http:
        registered = http.post("/pilots", json={"cores": 1}).json()
        pilot_id = registered["id"]
        http.headers["Authorization"] = f"Bearer {registered['session_token']}"  # pilot calls need the session
        matched = http.post("/pilots/match", json={"pilot_id": pilot_id, "cores": 1}).json()
        assert matched["job"]["id"] == job_id
        lease = matched["lease"]["token"]
        assert http.post(f"/jobs/{job_id}/report", json={"lease_token": lease, "state": "running"}).is_success
        put = http.put(f"/jobs/{job_id}/output", params={"lease_token": lease}, content=targz(outputs))
        assert put.is_success, put.text
        done = http.post(f"/jobs/{job_id}/report", json={"lease_token": lease, "state": "done", "exit_code": 0})
        assert done.json()["state"] == "done"


def targz(files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("files", "links", "why"),
    [
        ({"/etc/evil": b"x"}, {}, "absolute"),
        ({"../evil": b"x"}, {}, "'..'"),
        ({"a/../../evil": b"x"}, {}, "'..'"),
        ({}, {"escape": "../../outside"}, "points outside"),
        ({}, {"abs": "/etc/passwd"}, "points outside"),
    ],
)
def test_unsafe_output_archives_are_refused(
    tmp_path: Path, files: dict[str, bytes], links: dict[str, str], why: str
) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match=why):
        extract_safely(io.BytesIO(targz({"fine.txt": b"ok", **files}, links)), dest)
    assert not (dest / "fine.txt").exists()  # every member is checked before the first is written


def test_links_inside_dest_are_extracted(tmp_path: Path) -> None:
    written = extract_safely(io.BytesIO(targz({"sub/f.txt": b"ok"}, {"link": "sub/f.txt"})), tmp_path / "d")
    assert written == [tmp_path / "d/sub/f.txt"]
    assert (tmp_path / "d/link").read_bytes() == b"ok"


# -- errors ---------------------------------------------------------------------------------------------------


def test_a_wrong_token_gives_the_401_message(live: LiveServer) -> None:
    result = cli(["jobs"], live.env("cp_0123456789abcdef_not-the-secret"))
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: invalid token: unknown, wrong, expired or revoked"
    malformed = cli(["jobs"], live.env("letmein"))
    assert malformed.exit_code == 1 and "malformed token" in malformed.stderr


def test_another_users_job_gives_the_403_message(live: LiveServer) -> None:
    with live.client(live.alice) as alice:
        (job_id,) = alice.submit({"executable": "true"}, Path("."))
    for args in (["job", str(job_id)], ["kill", str(job_id)]):
        result = cli(args, live.env(live.bob))
        assert result.exit_code == 1
        assert result.stderr.strip() == (
            f"error: job {job_id} belongs to another user; you can only see and kill your own jobs"
        )
    with live.client(live.bob) as bob, pytest.raises(Forbidden) as caught:
        bob.kill(job_id)
    assert (caught.value.status, caught.value.code) == (403, "forbidden")
    with live.client(live.alice) as alice:
        assert alice.job(job_id)["state"] == "waiting"


def test_missing_settings_and_unreachable_servers_are_plain_errors(tmp_path: Path) -> None:
    no_url = cli(["jobs"], {"CLOUDPILOT_URL": "", "CLOUDPILOT_TOKEN": "t"})
    assert no_url.exit_code == 2 and no_url.stderr.startswith("error: no server given")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound but not listening: connection refused
        result = cli(["jobs"], {"CLOUDPILOT_URL": closed, "CLOUDPILOT_TOKEN": "t"})
        assert result.exit_code == 1 and result.stderr.startswith(
            f"error: cannot reach the server at {closed} (GET /api/v1/jobs): "
        )
        with CloudpilotClient(closed, "t") as client, pytest.raises(ServerUnavailable) as caught:
            client.health()
    assert caught.value.retryable and caught.value.status is None


def test_answers_that_are_not_cloudpilot_errors_still_say_what_happened() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/health"):
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path.endswith("/summary"):
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(404)

    with CloudpilotClient("http://lb.example", "t", transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(ServerUnavailable) as bad_gateway:
            client.health()
        with pytest.raises(NotFound) as not_found:
            client.jobs()
        with pytest.raises(ServerUnavailable, match=r"did not answer GET /api/v1/jobs/summary within 30 s"):
            client.summary()
    assert bad_gateway.value.message == (
        "GET http://lb.example/api/v1/health answered HTTP 502 Bad Gateway: <html>bad gateway</html>"
    )
    assert not_found.value.message.endswith("answered HTTP 404 Not Found (is the server URL right?)")
    assert not_found.value.code is None


def test_admins_create_tokens_through_the_api(live: LiveServer) -> None:
    with live.client(live.admin) as admin:
        token = admin.create_token("user", "carol", vo="physics")
        assert admin.health()["status"] == "ok"
    with live.client(token) as carol:
        assert carol.summary()["waiting"] == 0
    with live.client(live.alice) as alice, pytest.raises(Forbidden, match="needs an admin token"):
        alice.create_token("user", "mallory", vo="physics")


# -- pilot and demo -------------------------------------------------------------------------------------------


def test_pilot_passes_every_argument_through(monkeypatch: pytest.MonkeyPatch) -> None:
    received: list[list[str] | None] = []

    def fake_main(argv: list[str] | None) -> int:
        received.append(argv)
        return 3

    # The command imports the pilot lazily, so a stand-in module is what it finds.
    monkeypatch.setitem(sys.modules, "cloudpilot.pilot.cli", types.SimpleNamespace(main=fake_main))
    argv = ["--server", "http://x:1", "--token", "t", "--cores", "2", "--idle-timeout=5", "--unknown", "--help"]
    result = cli(["pilot", *argv], {})
    assert result.exit_code == 3, result.output
    assert received == [argv]


def _pilot_installed() -> bool:
    try:
        return importlib.util.find_spec("cloudpilot.pilot.__main__") is not None
    except ModuleNotFoundError:
        return False


MC_STAND_IN = """\
import random, sys
n = int(sys.argv[1])
rng = random.Random(n)
hits = sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(20000))
open(f"mc-{n}.out", "w").write(f"{hits} 20000\\n")
"""


@pytest.mark.skipif(not _pilot_installed(), reason="the pilot (cloudpilot.pilot) is not there yet")
@pytest.mark.timeout(150)
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """VMs of two local clouds boot for the jobs, run them and are destroyed; the plot is a PNG."""
    args = [sys.executable, "-m", "cloudpilot.cli.main", "demo", "--jobs", "20", "--timeout", "110"]
    if example_dir() is None:
        write(tmp_path / "mc.py", MC_STAND_IN)
        job = {"name": "mc-{n}", "executable": "python3", "arguments": ["mc.py", "{n}"], "input_files": ["mc.py"]}
        job["output_files"] = ["*.out"]
        write(tmp_path / "job.yaml", json.dumps({"job": job, "parameter_count": 1}))
        args += ["--job-file", str(tmp_path / "job.yaml")]
    env = {**os.environ, "TMPDIR": str(tmp_path), "COLUMNS": "200"}  # the demo's directory lands in tmp_path
    result = subprocess.run(args, capture_output=True, text=True, timeout=140, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "jobs done" in result.stdout and "20 of 20" in result.stdout
    assert "VMs on local-a" in result.stdout and "VMs on local-b" in result.stdout
    assert "every VM destroyed" in result.stdout
    (plot_line,) = [line for line in result.stdout.splitlines() if line.startswith("plot: ")]
    plot = Path(plot_line.removeprefix("plot: ").strip())
    assert plot.is_relative_to(tmp_path) and plot.suffix == ".png"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in plot.parent.iterdir()] == [plot.name]  # the rest of the demo's directory is removed
    leftovers = [p for p in Path("/proc").glob("[0-9]*") if str(tmp_path) in _cmdline(p)]
    assert leftovers == [], "a VM process of the demo outlived it"


def _cmdline(proc_dir: Path) -> str:
    try:
        return (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
