"""Three `cloudpilot server` processes behind a real HAProxy on one PostgreSQL database, a local cloud with
``max_vms: 3``: one leader runs the provisioner; when it is SIGKILLed mid-run another leads within 15 s, and
pilots talking to HAProxy carry on. Real processes throughout: servers, HAProxy, local VMs, pilots, payloads."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import func, select

from cloudpilot.domain.auth import Role
from cloudpilot.domain.vms import VMState
from cloudpilot.services.tokens import issue_token
from cloudpilot.store.database import Database
from cloudpilot.store.migrations import upgrade
from cloudpilot.store.schema import vms
from cloudpilot.store.tokens import TokenRepository
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.scale_out import fresh_database, haproxy
from tests.helpers.server import free_port, own_user_clouds
from tests.helpers.server_process import ServerProcess, ServerProcesses

pytestmark = pytest.mark.postgres

MAX_VMS = 3
LIVE = [s.value for s in (VMState.REQUESTED, VMState.BOOTING, VMState.RUNNING, VMState.DRAINING)]
# Each run of a job leaves a marker of its own (more markers than jobs: a job ran twice), then works a while.
MARK = "import os,sys,time,uuid; open(os.path.join(sys.argv[1], sys.argv[2]+'-'+uuid.uuid4().hex),'w').close(); time.sleep(float(sys.argv[3]))"  # noqa: E501


def job(markers: Path, name: str, seconds: float) -> dict:
    return {"name": name, "executable": sys.executable, "arguments": ["-c", MARK, str(markers), name, str(seconds)]}


class VMWatch:
    """Samples the live VMs of the database every 100 ms, in a thread, and keeps the peak."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.peak = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def live(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(select(func.count()).where(vms.c.state.in_(LIVE))).scalar_one())

    def undestroyed(self) -> int:
        """VMs not yet destroyed (a halted VM still has its instance until the VM monitor destroys it)."""
        with self.db.read() as conn:
            stmt = select(func.count()).where(vms.c.state != VMState.DESTROYED.value)
            return int(conn.execute(stmt).scalar_one())

    def failures(self) -> list[str]:
        stmt = select(vms.c.failure_reason).where(vms.c.failure_reason.is_not(None))
        with self.db.read() as conn:
            return list(conn.execute(stmt).scalars())

    def _run(self) -> None:
        while not self.stop.wait(0.1):
            self.peak = max(self.peak, self.live())

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.db.dispose()


def leaders(servers: list[ServerProcess]) -> list[ServerProcess]:
    found = []
    for server in servers:
        try:
            if httpx.get(f"{server.url}/api/v1/health", timeout=2).json().get("leader"):
                found.append(server)
        except httpx.TransportError:
            pass
    return found


def test_three_servers_behind_haproxy_one_leader_and_failover(
    pg_url: str, tmp_path: Path, server_processes: ServerProcesses
) -> None:
    with fresh_database(pg_url) as url:
        db = Database(url)
        upgrade(db)
        alice = issue_token(TokenRepository(db), Role.USER, "alice", time.time(), vo="lhcb").token
        db.dispose()
        ports = [free_port() for _ in range(3)]
        with haproxy(tmp_path, ports) as front:
            config = tmp_path / "server.yaml"
            cloud = {"driver": "local", "flavors": {"small": {"cores": 1, "memory_mb": 512}}, "max_vms": MAX_VMS,
                     "boot_seconds": 0.2}  # fmt: skip
            config.write_text(yaml.safe_dump({
                "database_url": url,
                "clouds": own_user_clouds({"local": cloud}),
                # VMs reach the servers through HAProxy: whichever server dies, their pilots carry on.
                "provisioner": {"interval_seconds": 1, "server_url": front.url, "pilot_idle_timeout_seconds": 4},
                "lease": {"seconds": 20, "heartbeat_seconds": 2, "reaper_interval_seconds": 1},
            }))  # fmt: skip
            data = tmp_path / "data"  # shared: the local cloud's VMs are this machine's, whoever leads
            servers = [server_processes.start(data, "--config", str(config), port=p) for p in ports]
            watch = VMWatch(url)
            markers = tmp_path / "markers"
            markers.mkdir()
            try:
                wait_for(lambda: len(leaders(servers)) == 1, timeout=15, what="one leader")
                # Jobs submitted through all three servers at the same moment.
                first: list[int] = []
                barrier = threading.Barrier(3)

                def submit(server: ServerProcess, n: int) -> None:
                    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {alice}"}) as c:
                        specs = [job(markers, f"a{n}-{k}", 3) for k in range(4)]
                        barrier.wait()
                        first.extend(c.post("/api/v1/jobs", json=specs).json()["ids"])

                threads = [threading.Thread(target=submit, args=(s, n)) for n, s in enumerate(servers)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert len(first) == 12
                user = httpx.Client(base_url=front.url, headers={"Authorization": f"Bearer {alice}"}, timeout=30)

                def running() -> int:
                    return sum(j["state"] == "running" for j in user.get("/api/v1/jobs").json()["jobs"])

                wait_for(lambda: running() >= 2, timeout=60, what="jobs to run")
                (leader,) = leaders(servers)
                leader.kill()  # mid-run: its VMs and their pilots stay, talking to HAProxy
                killed = time.time()
                rest = [s for s in servers if s is not leader]
                wait_for(lambda: len(leaders(rest)) == 1, timeout=15, what="a new leader within 15 s")
                failover = time.time() - killed
                print(f"FIGURE failover_seconds={failover:.1f} s")

                wait_final(user, first, timeout=120)
                # New work after the failover still boots VMs (the first ones have gone idle and halted).
                wait_for(lambda: watch.undestroyed() == 0, timeout=60, what="idle VMs stopped by the new leader")
                second = user.post("/api/v1/jobs", json=[job(markers, f"b-{k}", 1) for k in range(4)]).json()["ids"]
                done = wait_final(user, first + second, timeout=120)
                assert {j["state"] for j in done.values()} == {"done"}
                runs = sorted(p.name.split("-" + p.name.rsplit("-", 1)[1])[0] for p in markers.iterdir())
                expected = sorted([f"a{n}-{k}" for n in range(3) for k in range(4)] + [f"b-{k}" for k in range(4)])
                assert runs == expected, "a job ran more than once, or not at all"
                wait_for(lambda: watch.undestroyed() == 0, timeout=60, what="every VM destroyed at the end")
                assert not [p for p in (data / "clouds" / "local").glob("local-*") if p.is_dir()], "an instance left"
                print(f"FIGURE scale_out_peak_live_vms={watch.peak} VMs (max_vms {MAX_VMS})")
                assert watch.peak <= MAX_VMS, f"{watch.peak} live VMs at once on a cloud with max_vms {MAX_VMS}"
                failures = watch.failures()
                assert not failures, f"VMs failed (a quota refusal?): {failures}"
                for server in servers:
                    assert "QuotaExceeded" not in server.log() and "quota" not in server.log().lower()
                user.close()
            finally:
                watch.close()
                server_processes.stop_all()
