"""End to end with image lists: real server, a real HTTP server publishing the signed list, local clouds whose
VMs boot from their user-data and run real pilots. A job requiring an image runs only on a VM of that image;
an expired image is never booted; revoking an image drains its VM gracefully."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.domain.images import iso
from tests.helpers.images import LOCAL_IMAGES, Endorser, FileServer, image_entry, image_list
from tests.helpers.pilots import wait_final, wait_for
from tests.helpers.server import RunningServer, ServerFactory

PY = sys.executable


def config(**clouds: dict) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "images": LOCAL_IMAGES,
            "policy": {"idle_seconds": 4, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 4, "lost_after_seconds": 20},
            "lease": {"seconds": 10, "heartbeat_seconds": 1, "reaper_interval_seconds": 0.5},
        }
    )


def local(images: dict[str, str], max_vms: int = 2) -> dict:
    return {"driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 1024}}, "max_vms": max_vms,
            "start_rate_per_minute": 60, "boot_seconds": 0.2, "endorsed_images": images}  # fmt: skip


def publish_and_subscribe(server: RunningServer, files: FileServer, expired: tuple[str, ...] = ()) -> httpx.Client:
    endorser = Endorser()
    entries = []
    for name in ("el9-a", "el9-b", "el9-old"):
        extra = {"dc:date:expires": iso(time.time() - 60)} if name in expired else {}
        entries.append(image_entry(name, name.encode() * 100, files.url(f"/{name}.raw"), **extra))
    url = files.publish("/lhcb.json", image_list(entries), endorser)
    root = server.client(server.token(Role.ADMIN, "root"))
    answer = root.post("/api/v1/images/subscriptions", json={"url": url, "endorser_key": endorser.public_pem})
    assert answer.status_code == 201, answer.text
    return root


def job(image: str | None, seconds: float = 0.5) -> dict[str, Any]:
    requirements: dict[str, Any] = {"wall_seconds": 120}
    if image is not None:
        requirements["image"] = image
    code = f"import time; time.sleep({seconds}); print('ok')"
    return {"executable": PY, "arguments": ["-c", code], "requirements": requirements}


def vm_of(server: RunningServer, root: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """The VM whose pilot ran the job."""
    vm_id = server.services.pilots.pilots.get(job["pilot_id"]).vm_id
    return root.get(f"/api/v1/vms/{vm_id}").json()


def test_a_job_requiring_an_image_runs_only_on_a_vm_of_that_image(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    server = make_server(
        config(**{"cloud-a": local({"el9-a": "img-a"}), "cloud-b": local({"el9-b": "img-b", "el9-old": "img-old"})})
    )
    root = publish_and_subscribe(server, file_server, expired=("el9-old",))
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    jobs = [job("el9-a"), job("el9-b"), job("el9-a"), job("el9-b"), job(None)]
    ids = user.post("/api/v1/jobs", json=jobs).json()["ids"]
    (old_id,) = user.post("/api/v1/jobs", json=job("el9-old")).json()["ids"]
    done = wait_final(user, ids, timeout=180)
    assert {j["state"] for j in done.values()} == {"done"}
    for job_id, wanted in zip(ids, ["el9-a", "el9-b", "el9-a", "el9-b", None], strict=True):
        vm = vm_of(server, root, done[job_id])
        if wanted == "el9-a":
            assert (vm["cloud"], vm["image"]) == ("cloud-a", "img-a"), (job_id, vm)
        elif wanted == "el9-b":
            assert (vm["cloud"], vm["image"]) == ("cloud-b", "img-b"), (job_id, vm)
        else:
            assert vm["image"] in ("img-a", "img-b")  # endorsed images only, even for a job that names none
    # The expired image was never booted, and the job requiring it says why it waits.
    seen = root.get("/api/v1/vms").json()["vms"]
    assert seen and all(vm["image"] in ("img-a", "img-b") for vm in seen)
    waiting = user.get(f"/api/v1/jobs/{old_id}").json()
    assert waiting["state"] == "waiting" and "image el9-old is expired" in waiting["blocked_reason"]
    assert user.post(f"/api/v1/jobs/{old_id}/kill").status_code == 200


def test_revoking_an_image_drains_its_vm_gracefully(make_server: ServerFactory, file_server: FileServer) -> None:
    server = make_server(config(**{"cloud-a": local({"el9-a": "img-a"}, max_vms=1)}))
    root = publish_and_subscribe(server, file_server)
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    (job_id,) = user.post("/api/v1/jobs", json=job("el9-a", seconds=8)).json()["ids"]
    wait_for(lambda: user.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running", timeout=90, what="job runs")
    (vm,) = root.get("/api/v1/vms").json()["vms"]
    answer = root.post("/api/v1/images/el9-a/revoke", json={"reason": "CVE-2026-0042"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["drained"] == [vm["id"]]
    assert root.get(f"/api/v1/vms/{vm['id']}").json()["state"] == "draining"
    # A job requiring the revoked image now waits, and says why.
    (later,) = user.post("/api/v1/jobs", json=job("el9-a")).json()["ids"]
    assert "image el9-a is revoked" in user.get(f"/api/v1/jobs/{later}").json()["blocked_reason"]
    # The running job finishes: draining takes no work away, it only gives no new work.
    finished = wait_final(user, [job_id], timeout=120)[job_id]
    assert finished["state"] == "done" and finished["attempts"] == 1
    wait_for(
        lambda: root.get(f"/api/v1/vms/{vm['id']}").json()["state"] in ("halted", "destroyed"),
        timeout=90,
        what="the drained VM halted",
    )
    history = root.get(f"/api/v1/vms/{vm['id']}").json()["history"]
    assert any("image el9-a revoked by root: CVE-2026-0042" in h["reason"] for h in history)
    time.sleep(3)  # a few provisioning cycles: nothing new boots from the revoked image
    assert [v["id"] for v in root.get("/api/v1/vms").json()["vms"]] == [vm["id"]]
    assert user.get(f"/api/v1/jobs/{later}").json()["state"] == "waiting"
