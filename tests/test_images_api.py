"""``/api/v1/images`` against a real server, with lists, signatures and image files served by a real HTTP server
on 127.0.0.1: subscriptions verified (refusals say why and store nothing), refreshes that never downgrade,
states and why, revocation, what ``/clouds`` and a waiting job say, and images fetched and checked."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from cloudpilot.domain.images import iso
from tests.helpers.images import DN, LOCAL_IMAGES, Endorser, FileServer, image_entry, image_list
from tests.helpers.server import RunningServer, ServerFactory

CONTENT = {name: f"image {name}\n".encode() * 64 for name in ("el9-a", "el9-b", "el9-old")}


def config(**clouds: dict) -> ServerConfig:
    return ServerConfig.model_validate(
        {
            "clouds": clouds,
            "images": LOCAL_IMAGES,
            "policy": {"idle_seconds": 30, "min_work_seconds_per_core": 0},
            "provisioner": {"interval_seconds": 0.5, "pilot_idle_timeout_seconds": 10},
        }
    )


def local(**kw: object) -> dict:
    return {"driver": "local", "flavors": {"f": {"cores": 1, "memory_mb": 1024}}, "max_vms": 2,
            "start_rate_per_minute": 60, **kw}  # fmt: skip


def entries(files: FileServer, *names: str, **extra: Any) -> list[dict[str, Any]]:
    found = []
    for name in names:
        files.files[f"/img/{name}.raw"] = CONTENT[name]
        found.append(image_entry(name, CONTENT[name], files.url(f"/img/{name}.raw"), **extra.get(name, {})))
    return found


def admin(server: RunningServer) -> httpx.Client:
    return server.client(server.token(Role.ADMIN, "root"))


def subscribe(client: httpx.Client, url: str, endorser: Endorser, **kw: object) -> httpx.Response:
    return client.post("/api/v1/images/subscriptions", json={"url": url, "endorser_key": endorser.public_pem, **kw})


def states(client: httpx.Client) -> dict[str, tuple[str, str]]:
    return {i["identifier"]: (i["state"], i["why"]) for i in client.get("/api/v1/images").json()["images"]}


def error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    return response.json()["error"]


def test_subscribe_verifies_and_holds_the_list(make_server: ServerFactory, file_server: FileServer) -> None:
    server = make_server(config(a=local(endorsed_images={"el9-a": "img-a", "el9-old": "img-old", "el9-x": "img-x"})))
    endorser, root = Endorser(), admin(server)
    old = {"el9-old": {"dc:date:expires": iso(time.time() - 60)}}  # this image's own endorsement ended
    url = file_server.publish("/lhcb.json", image_list(entries(file_server, "el9-a", "el9-old", **old), "2"), endorser)
    r = subscribe(root, url, endorser, endorser_name=DN)
    assert r.status_code == 201, r.text
    sub = r.json()
    assert (sub["list_identifier"], sub["version"], sub["endorser_fingerprint"]) == (
        "lhcb-images",
        "2",
        endorser.fingerprint,
    )
    found = states(root)
    assert found["el9-a"][0] == "endorsed" and found["el9-old"][0] == "expired"
    assert found["el9-x"] == ("unendorsed", "in no image list this server holds")  # mapped, but endorsed by nobody
    image = root.get("/api/v1/images/el9-a").json()
    assert image["tags"] == ["arch:x86_64", "os:el9", "osversion:9.3"]
    assert image["clouds"] == {"a": {"image_id": "img-a", "bootable": True}}
    assert image["entry"]["sl:checksum:sha512"] == hashlib.sha512(CONTENT["el9-a"]).hexdigest()
    (cloud,) = root.get("/api/v1/clouds").json()["clouds"]
    assert cloud["images"]["bootable"] == {"el9-a": "img-a"}
    assert cloud["images"]["refused"]["el9-old"].startswith("expired: endorsement expired at")
    # The held list is what was verified: its canonical JSON and the signature, to be checked again by anyone.
    held = root.get(f"/api/v1/images/subscriptions/{sub['id']}/list").json()
    assert '"hv:version":"2"' in held["list"] and endorser.fingerprint in held["signature"]
    # The same URL twice is refused.
    assert "already subscribed" in error(subscribe(root, url, endorser))["message"]


def test_a_refused_subscription_says_why_and_stores_nothing(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    server = make_server(config())
    trusted, other, root = Endorser(), Endorser(), admin(server)
    doc = image_list(entries(file_server, "el9-a"))
    cases = {
        "endorser not trusted": file_server.publish("/other.json", doc, other),
        "missing signature": file_server.publish("/unsigned.json", doc, None),
        "expired": file_server.publish(
            "/expired.json", image_list(entries(file_server, "el9-a"), expires_in=-1), trusted
        ),
    }
    url = file_server.publish("/tampered.json", doc, trusted)
    data = file_server.files["/tampered.json"]
    at = data.index(b"el9-a")
    file_server.files["/tampered.json"] = data[:at] + b"E" + data[at + 1 :]  # one byte, after signing
    cases["bad signature"] = url
    for reason, list_url in cases.items():
        err = error(subscribe(root, list_url, trusted))
        assert f"refused ({reason})" in err["message"], (reason, err)
    err = error(subscribe(root, file_server.publish("/named.json", doc, trusted), trusted, endorser_name="/CN=other"))
    assert "endorser not trusted" in err["message"] and err["field"] == "hv:endorser"
    assert root.get("/api/v1/images/subscriptions").json()["subscriptions"] == []
    assert root.get("/api/v1/images").json() == {"enforced": False, "images": []}
    # Users may look, not subscribe.
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    assert subscribe(user, cases["bad signature"], trusted).status_code == 403
    assert user.get("/api/v1/images").status_code == 200


def test_a_refresh_never_downgrades_and_a_new_version_replaces_the_list(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    server = make_server(config(a=local(endorsed_images={"el9-a": "img-a", "el9-b": "img-b"})))
    endorser, root = Endorser(), admin(server)
    url = file_server.publish("/lhcb.json", image_list(entries(file_server, "el9-a", "el9-b"), "2"), endorser)
    sub = subscribe(root, url, endorser).json()
    refresh = f"/api/v1/images/subscriptions/{sub['id']}/refresh"
    assert root.post(refresh).json()["changed"] is False  # the same list again
    file_server.publish("/lhcb.json", image_list(entries(file_server, "el9-a"), "1"), endorser)  # an older one
    err = error(root.post(refresh))
    assert "refused (version not newer)" in err["message"] and err["field"] == "hv:version"
    (held,) = root.get("/api/v1/images/subscriptions").json()["subscriptions"]
    assert held["version"] == "2" and "lower than version 2" in held["last_error"]
    assert states(root)["el9-b"][0] == "endorsed"  # nothing held changed
    # Version 3 drops el9-b: it is no longer endorsed.
    file_server.publish("/lhcb.json", image_list(entries(file_server, "el9-a"), "3"), endorser)
    answer = root.post(refresh).json()
    assert answer["changed"] is True and answer["version"] == "3" and answer["last_error"] is None
    assert states(root)["el9-b"] == ("unendorsed", "no longer in list lhcb-images (version 3)")
    # Another endorser's list at the same place is refused too.
    file_server.publish("/lhcb.json", image_list(entries(file_server, "el9-a", "el9-b"), "4"), Endorser())
    assert "endorser not trusted" in error(root.post(refresh))["message"]
    assert states(root)["el9-b"][0] == "unendorsed"


def test_revoke_and_reinstate(make_server: ServerFactory, file_server: FileServer) -> None:
    server = make_server(config(a=local(endorsed_images={"el9-a": "img-a"})))
    endorser, root = Endorser(), admin(server)
    assert subscribe(
        root, file_server.publish("/l.json", image_list(entries(file_server, "el9-a")), endorser), endorser
    )
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    assert user.post("/api/v1/images/el9-a/revoke", json={"reason": "x"}).status_code == 403
    site = server.client(server.token(Role.SITE, "siteadmin", site="a"))
    answer = site.post("/api/v1/images/el9-a/revoke", json={"reason": "CVE-2026-0001"}).json()
    assert answer["state"] == "revoked" and answer["drained"] == []
    assert "revoked by siteadmin" in answer["why"] and "CVE-2026-0001" in answer["why"]
    (cloud,) = root.get("/api/v1/clouds").json()["clouds"]
    assert cloud["images"]["bootable"] == {} and cloud["images"]["refused"]["el9-a"].startswith("revoked")
    assert site.post("/api/v1/images/el9-a/revoke", json={}).status_code == 409
    assert root.post("/api/v1/images/el9-a/reinstate").json()["state"] == "endorsed"
    assert root.post("/api/v1/images/nope/revoke", json={}).status_code == 404


def test_an_expired_image_is_never_booted_and_the_job_and_cloud_say_why(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    server = make_server(config(a=local(endorsed_images={"el9-a": "img-a", "el9-old": "img-old"})))
    endorser, root = Endorser(), admin(server)
    # The list expires in a few seconds: endorsed now, expired by the time the job waits.
    doc = image_list(entries(file_server, "el9-a", "el9-old"), expires_in=3)
    assert subscribe(root, file_server.publish("/l.json", doc, endorser), endorser).status_code == 201
    deadline = time.time() + 30
    while states(root)["el9-old"][0] != "expired":
        assert time.time() < deadline, "the list did not expire"
        time.sleep(0.2)
    user = server.client(server.token(Role.USER, "alice", vo="lhcb"))
    job = {"executable": sys.executable, "arguments": ["-c", "pass"], "requirements": {"image": "el9-old"}}
    (job_id,) = user.post("/api/v1/jobs", json=job).json()["ids"]
    time.sleep(4)  # several provisioning cycles
    assert root.get("/api/v1/vms").json()["vms"] == []
    found = user.get(f"/api/v1/jobs/{job_id}").json()
    assert found["state"] == "waiting"
    assert found["blocked_reason"].startswith("no VM can be booted for it: image el9-old is expired")
    assert "a: expired: endorsement expired at" in found["blocked_reason"]
    (cloud,) = root.get("/api/v1/clouds").json()["clouds"]
    assert cloud["images"]["bootable"] == {} and cloud["images"]["refused"]["el9-old"].startswith("expired")
    # An image nobody maps: the job says so too.
    job["requirements"] = {"image": "el7-ancient"}
    (other,) = user.post("/api/v1/jobs", json=job).json()["ids"]
    reason = user.get(f"/api/v1/jobs/{other}").json()["blocked_reason"]
    assert "image el7-ancient is unendorsed" in reason and "a: maps no image el7-ancient" in reason


def test_a_local_cloud_registers_images_it_fetched_and_verified(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    server = make_server(config(reg=local(register_images=True)))
    endorser, root = Endorser(), admin(server)
    images = entries(file_server, "el9-a", "el9-b")
    file_server.files["/img/el9-b.raw"] = CONTENT["el9-b"][:-1] + b"?"  # the served file is not the endorsed one
    assert subscribe(root, file_server.publish("/l.json", image_list(images), endorser), endorser).status_code == 201
    good, bad = root.get("/api/v1/images/el9-a").json(), root.get("/api/v1/images/el9-b").json()
    assert good["state"] == "endorsed" and Path(good["verified_file"]).read_bytes() == CONTENT["el9-a"]
    assert bad["state"] == "rejected" and "image does not match" in bad["why"] and "sha512" in bad["why"]
    assert bad["verified_file"] is None
    (cloud,) = root.get("/api/v1/clouds").json()["clouds"]
    assert cloud["images"]["bootable"] == {"el9-a": good["verified_file"]}
    assert cloud["images"]["refused"]["el9-b"].startswith("rejected")
