"""An API that cannot be knocked over: each abusive request gets a 4xx at once and leaves nothing behind, on
SQLite and PostgreSQL (docs/rest-api.md, "Limits")."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import httpx
import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.server import RunningServer, ServerFactory

LIMITS = {"jobs": {"max_per_request": 10}, "server": {"max_body_bytes": 4096, "header_timeout_seconds": 1,
          "keep_alive_seconds": 1}}  # fmt: skip
JOB = {"executable": "/bin/true"}


@pytest.fixture
def server(make_server: ServerFactory, db_url: str) -> RunningServer:
    return make_server(ServerConfig.model_validate({"database_url": db_url, **LIMITS}))


@pytest.fixture
def user(server: RunningServer) -> httpx.Client:
    return server.client(server.token(Role.USER, "alice", vo="lhcb"))


def error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def no_jobs(user: httpx.Client) -> bool:
    return user.get("/api/v1/jobs").json()["jobs"] == []


def test_counts_are_checked_before_any_expansion(server: RunningServer, user: httpx.Client) -> None:
    started = time.perf_counter()
    huge = user.post("/api/v1/jobs", json={"job": JOB, "parameter_count": 1_000_000_000})
    assert "1000000000 jobs in one request; the limit is 10" in error(huge, 413)["message"]
    assert time.perf_counter() - started < 2
    assert error(user.post("/api/v1/jobs", json=[JOB] * 11), 413)["code"] == "too_large"
    beyond_64_bits = user.post("/api/v1/jobs", json={"job": JOB, "parameter_count": 10**30})
    assert error(beyond_64_bits, 422)["field"] == "parameter_count"
    assert user.post("/api/v1/jobs", json={"job": JOB, "parameter_count": 10}).status_code == 201


@pytest.mark.parametrize("job_id", [2**63, 2**63 - 1, 10**30, 0, -1])
def test_ids_beyond_any_row_are_not_found(user: httpx.Client, job_id: int) -> None:
    assert error(user.get(f"/api/v1/jobs/{job_id}"), 404)["code"] == "not_found"
    assert error(user.post(f"/api/v1/jobs/{job_id}/kill"), 404)["code"] == "not_found"


def test_integers_are_bounded(server: RunningServer, user: httpx.Client) -> None:
    assert error(user.get("/api/v1/jobs", params={"after_id": 10**30}), 400)["field"] == "after_id"
    for requirements in ({"memory_mb": 10**30}, {"wall_seconds": 2**63}, {"cores": 1e30}):
        assert error(user.post("/api/v1/jobs", json={**JOB, "requirements": requirements}), 422)
    pilot = server.client(server.token(Role.PILOT, "p", vo="lhcb"))
    r = pilot.post("/api/v1/pilots", json={"hostname": "h", "cores": 1e30})
    assert error(r, 422)["field"] == "cores"
    root = server.client(server.token(Role.ADMIN, "root"))
    assert error(root.post("/api/v1/tokens", json={"role": "user", "name": "x", "vo": "v", "expires_at": 1e300}), 422)
    assert no_jobs(user)


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b'{"executable": "/bin/true", "name": "a\\u0000b"}', "application/json", "name"),
        (b'{"executable": "/bin/true", "arguments": ["\\ud800"]}', "application/json", "arguments[0]"),
        (b'{"executable": "/bin/true", "environment": {"A\\u0000": "1"}}', "application/json", "environment.A\x00"),
        (b'[{"executable": "/bin/true", "name": "\\udc00x"}]', "application/json", "[0].name"),
        (b'executable: /bin/true\nname: "a\\0b"\n', "application/yaml", "name"),
        (b'executable: /bin/true\narguments: ["\\ud800"]\n', "application/yaml", "arguments[0]"),
    ],
)
def test_nul_and_lone_surrogates_are_refused(user: httpx.Client, body: bytes, content_type: str, field: str) -> None:
    r = user.post("/api/v1/jobs", content=body, headers={"content-type": content_type})
    found = error(r, 422)
    assert "NUL characters or unpaired surrogates" in found["message"]
    assert found["field"] == field
    assert no_jobs(user)


def test_escaped_backslashes_and_paired_surrogates_are_fine(user: httpx.Client) -> None:
    body = b'{"executable": "/bin/true", "name": "\\\\u0000 \\ud83d\\ude00"}'
    r = user.post("/api/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    assert user.get(f"/api/v1/jobs/{r.json()['ids'][0]}").json()["name"] == "\\u0000 \U0001f600"


def test_nul_in_the_url_is_refused(user: httpx.Client) -> None:
    assert "the URL" in error(user.get("/api/v1/jobs", params={"name": "a\x00"}), 422)["message"]
    assert error(user.get("/api/v1/images/a%00b"), 422)


def test_bodies_are_bounded_but_sandboxes_keep_their_own_limit(user: httpx.Client) -> None:
    big = {**JOB, "arguments": ["x" * 5000]}
    assert "server.max_body_bytes" in error(user.post("/api/v1/jobs", json=big), 413)["message"]
    chunked = user.post("/api/v1/jobs", content=iter([b"[", b" " * 5000, b"]"]))  # no Content-Length
    assert error(chunked, 413)["code"] == "too_large"
    r = user.post("/api/v1/sandboxes", content=b"\x1f\x8b" + b"0" * 8000)
    assert r.status_code in (201, 400), r.text  # judged by the sandbox store, not the body limit
    assert no_jobs(user)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_slow_request_heads_and_idle_connections_are_closed(server: RunningServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as silent:
        assert _closed_within(silent, 3)  # connected, sent nothing
    with socket.create_connection(("127.0.0.1", port)) as slow:
        slow.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
        assert _closed_within(slow, 3)
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in idle.recv(4096)
        assert _closed_within(idle, 3)  # keep-alive ends after server.keep_alive_seconds


def test_a_request_served_longer_than_the_head_timeout_still_gets_its_answer(server: RunningServer) -> None:
    """The head timeout bounds the arrival of a request's head, not the serving of the request: a long poll (or a
    large submission) that outlasts it is answered, on the connection it came on."""
    from tests.test_api import register

    pilot = server.client(server.token(Role.PILOT, vo="lhcb"))
    pilot_id = register(pilot)
    started = time.perf_counter()
    answer = pilot.post("/api/v1/pilots/match", json={"pilot_id": pilot_id, "wait_seconds": 2.5})
    assert answer.status_code == 204, answer.text  # no work: after the whole wait, not a closed connection at 1 s
    assert time.perf_counter() - started >= 2.4
    port = int(server.url.rsplit(":", 1)[1])
    body = f'{{"pilot_id": "{pilot_id}", "wait_seconds": 2}}'.encode()
    with socket.create_connection(("127.0.0.1", port)) as raw:  # head and body in one write: one read for both
        raw.sendall(b"POST /api/v1/pilots/match HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: " + pilot.headers["Authorization"].encode() + b"\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        raw.settimeout(10)
        assert raw.recv(4096).startswith(b"HTTP/1.1 204")


def test_an_oversized_request_head_gets_431_and_the_connection_is_closed(server: RunningServer) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    one_big = b"X-Pad: " + b"x" * 20_000 + b"\r\n"
    many_small = b"".join(b"X-Pad-%d: " % i + b"x" * 3_000 + b"\r\n" for i in range(8))
    for headers in (one_big, many_small):  # over server.max_header_bytes (16 KiB), either way
        with socket.create_connection(("127.0.0.1", port)) as big:
            big.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
            answer = big.recv(65536)
            assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
            assert b"server.max_header_bytes (16384 bytes)" in answer
            assert _closed_within(big, 3)
    with socket.create_connection(("127.0.0.1", port)) as fine:  # a head under the limit is served
        fine.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"x" * 8000 + b"\r\n\r\n")
        assert b"200 OK" in fine.recv(4096)


def test_token_expiry_is_exact_whatever_the_cache(server: RunningServer) -> None:
    root = server.client(server.token(Role.ADMIN, "root"))
    now = time.time()
    past = root.post("/api/v1/tokens", json={"role": "user", "name": "late", "vo": "lhcb", "expires_at": now - 1})
    assert "not in the future" in error(past, 422)["message"]
    expires = now + 1.5
    r = root.post("/api/v1/tokens", json={"role": "user", "name": "brief", "vo": "lhcb", "expires_at": expires})
    brief = server.client(r.json()["token"])
    assert brief.get("/api/v1/jobs").status_code == 200  # now cached
    time.sleep(max(0.0, expires - time.time()) + 0.05)
    assert error(brief.get("/api/v1/jobs"), 401)["code"] == "unauthenticated"


def test_yaml_aliases_are_refused(user: httpx.Client) -> None:
    body = b"- &j {executable: /bin/true, arguments: [a, b]}\n- *j\n"
    r = user.post("/api/v1/jobs", content=body, headers={"content-type": "application/yaml"})
    assert "aliases" in error(r, 422)["message"]


def test_a_user_cannot_spread_waiting_jobs_over_more_classes_than_allowed(
    make_server: ServerFactory, db_url: str
) -> None:
    # Each requirement class costs every provisioning cycle: one parametric job with {n} in a tag made 100,000.
    server = make_server(
        ServerConfig.model_validate({"database_url": db_url, "jobs": {"max_waiting_classes_per_user": 3}})
    )
    alice = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    bob = server.client(server.token(Role.USER, "bob", vo="lhcb"))

    def job(tag: str) -> dict:
        return {"executable": "/bin/true", "requirements": {"tags": [tag]}}

    first = alice.post("/api/v1/jobs", json=[job("a"), job("b"), job("c"), job("a")])
    assert first.status_code == 201
    for refused in (job("d"), {"job": job("t{n}"), "parameter_count": 100}, [job("a"), job("e")]):
        r = alice.post("/api/v1/jobs", json=refused)
        assert r.status_code == 409, r.text
        error = r.json()["error"]
        assert error["code"] == "too_many_classes" and "jobs.max_waiting_classes_per_user" in error["message"]
    assert alice.post("/api/v1/jobs", json=job("b")).status_code == 201  # a class already waiting: no new one
    assert [j["state"] for j in alice.get("/api/v1/jobs").json()["jobs"]] == ["waiting"] * 5  # nothing else stored
    assert bob.post("/api/v1/jobs", json=[job("x"), job("y"), job("z")]).status_code == 201  # per user
    killed = alice.post(f"/api/v1/jobs/{first.json()['ids'][2]}/kill")  # class c no longer waits
    assert killed.status_code == 200, killed.text
    assert alice.post("/api/v1/jobs", json=job("d")).status_code == 201


def test_concurrent_submissions_of_one_user_do_not_pass_the_class_limit_together(
    make_server: ServerFactory, db_url: str
) -> None:
    # On SQLite one writer orders them; on PostgreSQL each counts with its own jobs in, and would not see the
    # others' uncommitted ones unless they are ordered too.
    config = {"database_url": db_url, "jobs": {"max_waiting_classes_per_user": 4}}
    server = make_server(ServerConfig.model_validate(config))
    token = server.token(Role.USER, "alice", vo="lhcb")
    start = threading.Barrier(12)
    answers: list[int] = []

    def submit(i: int) -> None:
        with server.client(token) as alice:
            start.wait()
            job = {"executable": "/bin/true", "requirements": {"tags": [f"c{i}"]}}
            answers.append(alice.post("/api/v1/jobs", json=job).status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(answers) == [201] * 4 + [409] * 8, f"{answers.count(201)} accepted"
    assert len(server.client(token).get("/api/v1/jobs").json()["jobs"]) == 4
