"""``GET /metrics`` through real servers: who may read it, what it counts, and several processes adding up.

Counters live for the whole test process, so tests compare a scrape after with a scrape before."""

from __future__ import annotations

import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.tokens import TokenRepository
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.scale_out import fresh_database
from tests.helpers.server import RunningServer, ServerFactory
from tests.helpers.server_process import ServerProcesses

PY = sys.executable


def scrape(server: RunningServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of one scrape, by name and labels."""
    r = server.client(server.token(Role.ADMIN, "root")).get("/metrics")
    assert r.status_code == 200, r.text
    return parse(r.text)


def parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def at(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there (a counter not yet counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_need_an_admin_token_unless_public(make_server: ServerFactory) -> None:
    server = make_server()
    anonymous = server.client(None).get("/metrics")
    assert anonymous.status_code == 401
    assert server.client(server.token(Role.USER, "alice", vo="atlas")).get("/metrics").status_code == 403
    admin = server.client(server.token(Role.ADMIN, "root")).get("/metrics")
    assert admin.status_code == 200
    assert admin.headers["content-type"].startswith("text/plain; version=")
    assert "# TYPE cloudpilot_jobs gauge" in admin.text

    public = make_server(ServerConfig.model_validate({"metrics": {"public": True}}))
    assert public.client(None).get("/metrics").status_code == 200


def test_jobs_matches_leases_pilots_and_requests_are_counted(make_server: ServerFactory) -> None:
    server = make_server(ServerConfig.model_validate({"lease": {"seconds": 3, "reaper_interval_seconds": 0.2}}))
    before = scrape(server)
    user = server.client(server.token(Role.USER, "alice", vo="atlas"))
    ids = user.post("/api/v1/jobs", json={"job": {"executable": "/bin/true"}, "parameter_count": 3}).json()["ids"]
    pilot = server.client(server.token(Role.PILOT, "p", vo="atlas"))
    registered = pilot.post("/api/v1/pilots", json={"cores": 1}).json()
    pilot_id, pilot = registered["id"], server.client(registered["session_token"])  # pilot calls need the session
    job = pilot.post("/api/v1/pilots/match", json={"pilot_id": pilot_id}).json()["job"]
    for job_id in ids[:2]:
        assert user.get(f"/api/v1/jobs/{job_id}").status_code == 200
    assert user.get("/no/such/path").status_code == 404

    after = scrape(server)
    assert at(after, "cloudpilot_jobs", vo="atlas", state="waiting") == 2
    assert at(after, "cloudpilot_jobs", vo="atlas", state="matched") == 1
    assert at(after, "cloudpilot_jobs", vo="atlas", state="done") == 0  # every state is there, zeros too
    assert at(after, "cloudpilot_waiting_classes", vo="atlas") == 1  # three jobs of one class
    assert at(after, "cloudpilot_pilots_active", vo="atlas") == 1  # a hand-started pilot holding a job

    def delta(name: str, **labels: str) -> float:
        return at(after, name, **labels) - at(before, name, **labels)

    assert delta("cloudpilot_jobs_submitted_total", vo="atlas") == 3
    assert delta("cloudpilot_matches_total", vo="atlas") == 1
    assert delta("cloudpilot_match_seconds_count", outcome="job") == 1
    # HTTP requests by route template, never by raw path: two job ids, one series.
    route = {"method": "GET", "route": "/api/v1/jobs/{job_id}"}
    assert delta("cloudpilot_http_requests_total", **route, status="200") == 2
    assert delta("cloudpilot_http_request_seconds_count", **route) == 2
    assert delta("cloudpilot_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert not [labels for _, labels in after if ("route", f"/api/v1/jobs/{ids[0]}") in labels]

    # The pilot goes silent: its lease expires and the job goes back to the queue.
    wait_for(lambda: user.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "waiting", timeout=30, what="requeue")
    later = scrape(server)
    assert at(later, "cloudpilot_lease_expiries_total") - at(before, "cloudpilot_lease_expiries_total") == 1
    requeued = "cloudpilot_jobs_requeued_total"
    assert at(later, requeued, cause="lease_expired") - at(before, requeued, cause="lease_expired") == 1
    assert at(later, "cloudpilot_jobs", vo="atlas", state="waiting") == 3
    assert at(later, "cloudpilot_pilots_active", vo="atlas") == 1  # holds nothing now, but registered lately


def _local(**kw: object) -> dict:
    return {"driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 1024}}, "max_vms": 1,
            "start_rate_per_minute": 60, "boot_seconds": 0.2, **kw}  # fmt: skip


def test_vms_boots_failures_back_off_and_cycles_are_measured(make_server: ServerFactory) -> None:
    config = ServerConfig.model_validate(
        {
            # The broken cloud is the cheapest, so it is tried first, fails and backs off.
            "clouds": {"broken": _local(fail_share=1.0), "good": _local(price_per_core_hour=1.0)},
            "policy": {"idle_seconds": 60, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 60},
        }
    )
    server = make_server(config)
    before = scrape(server)
    user = server.client(server.token(Role.USER, "alice", vo="atlas"))
    job = {"executable": PY, "arguments": ["-c", "print('ok')"], "requirements": {"wall_seconds": 60}}
    ids = user.post("/api/v1/jobs", json=job).json()["ids"]
    assert wait_final(user, ids, timeout=120)[ids[0]]["state"] == "done"  # type: ignore[arg-type]

    after = scrape(server)
    assert at(after, "cloudpilot_vms", cloud="good", state="running") == 1  # idles for a minute
    assert at(after, "cloudpilot_vms", cloud="broken", state="running") == 0
    assert at(after, "cloudpilot_pilots_active", vo="atlas") == 1
    assert at(after, "cloudpilot_vm_boot_seconds_count", cloud="good") - at(
        before, "cloudpilot_vm_boot_seconds_count", cloud="good"
    ) == 1
    failures = sum(
        value for (name, labels), value in after.items()
        if name == "cloudpilot_vm_boot_failures_total" and ("cloud", "broken") in labels
    )  # fmt: skip
    assert failures >= 1
    assert 0 < at(after, "cloudpilot_cloud_backoff_seconds", cloud="broken") <= 1800
    assert at(after, "cloudpilot_cloud_backoff_seconds", cloud="good") == 0
    for histogram in ("cloudpilot_provisioning_cycle_seconds_count", "cloudpilot_provisioning_decide_seconds_count"):
        assert at(after, histogram) > at(before, histogram)


@pytest.mark.postgres
def test_counters_of_several_server_processes_add_up(server_processes: ServerProcesses, tmp_path, pg_url) -> None:  # type: ignore[no-untyped-def]
    """Two real server processes on one store (PostgreSQL: one server per SQLite data directory) and one
    PROMETHEUS_MULTIPROC_DIR (as behind a load balancer): either answers a scrape with what both counted, and with
    the store's gauges."""
    shared = tmp_path / "prometheus"
    shared.mkdir()
    with fresh_database(pg_url) as url:
        config = tmp_path / "server.yaml"
        config.write_text(f"database_url: {url}\n")
        db = Database(url)
        upgrade(db)
        now = time.time()
        admin = issue_token(TokenRepository(db), Role.ADMIN, "root", now).token
        user = issue_token(TokenRepository(db), Role.USER, "alice", now, vo="atlas").token
        db.dispose()
        env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
        servers = [
            server_processes.start(tmp_path / f"data{i}", "--config", str(config), env=env) for i in range(2)
        ]
        _scrape_both(servers, admin, user)
        server_processes.stop_all()


def _scrape_both(servers: list, admin: str, user: str) -> None:  # type: ignore[type-arg]
    for n, server in enumerate(servers, start=1):  # 1 job through the first, 2 through the second
        body = {"job": {"executable": "/bin/true"}, "parameter_count": n}
        r = httpx.post(f"{server.url}/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {user}"})
        assert r.status_code == 201, r.text
    for server in servers:
        r = httpx.get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200, r.text
        samples = parse(r.text)
        assert at(samples, "cloudpilot_jobs_submitted_total", vo="atlas") == 3
        assert at(samples, "cloudpilot_http_requests_total", method="POST", route="/api/v1/jobs", status="201") == 2
        assert at(samples, "cloudpilot_jobs", vo="atlas", state="waiting") == 3
