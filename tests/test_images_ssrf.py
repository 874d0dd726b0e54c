"""No SSRF: what an admin or a site admin can make the server fetch (images.* in docs/configuration.md)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from cloudpilot.config import ServerConfig
from cloudpilot.domain.auth import Role
from tests.helpers.images import Endorser, FileServer, image_list
from tests.helpers.server import RunningServer, ServerFactory, free_port


def start(make_server: ServerFactory, **images: Any) -> tuple[RunningServer, httpx.Client]:
    server = make_server(ServerConfig.model_validate({"images": images}))
    return server, server.client(server.token(Role.ADMIN, "root"))


def subscribe(client: httpx.Client, url: str) -> httpx.Response:
    return client.post("/api/v1/images/subscriptions", json={"url": url, "endorser_key": Endorser().public_pem})


def refused(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "url"
    return str(response.json()["error"]["message"])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield s.getsockname()[1]


def test_http_is_refused_unless_allowed(make_server: ServerFactory, file_server: FileServer) -> None:
    _, root = start(make_server)
    url = file_server.publish("/l.json", image_list([]), Endorser())
    assert "only https:// URLs (images.allow_http: true allows http://)" in refused(subscribe(root, url))
    assert file_server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/l.json",
        "https://localhost:8443/l.json",
        "https://[::1]/l.json",
        "https://10.1.2.3/l.json",
        "https://192.168.0.1/l.json",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/l.json",
        "https://224.0.0.1/l.json",
        "https://0.0.0.0/l.json",
        "https://[::ffff:127.0.0.1]/l.json",
    ],
)
def test_internal_destinations_are_refused_before_any_connection(make_server: ServerFactory, url: str) -> None:
    _, root = start(make_server)
    message = refused(subscribe(root, url))
    assert "resolves to a loopback, private, link-local or multicast address" in message
    assert "images.allowed_hosts" in message


def test_loopback_needs_allowed_hosts_even_over_allowed_http(
    make_server: ServerFactory, file_server: FileServer
) -> None:
    url = file_server.publish("/l.json", image_list([]), Endorser())
    _, root = start(make_server, allow_http=True)
    assert "images.allowed_hosts" in refused(subscribe(root, url))
    assert file_server.requests == []
    _, root = start(make_server, allow_http=True, allowed_hosts=["127.0.0.1"])
    endorser = Endorser()
    url = file_server.publish("/l.json", image_list([]), endorser)
    r = root.post("/api/v1/images/subscriptions", json={"url": url, "endorser_key": endorser.public_pem})
    assert r.status_code == 201, r.text


def test_redirects_stay_on_their_host(make_server: ServerFactory, file_server: FileServer) -> None:
    endorser = Endorser()
    port = file_server.httpd.server_address[1]
    file_server.publish("/real.json", image_list([]), endorser)
    file_server.redirects["/same.json"] = "/real.json"
    file_server.redirects["/same.json.sig"] = "/real.json.sig"
    file_server.redirects["/away.json"] = f"http://localhost:{port}/real.json"
    _, root = start(make_server, allow_http=True, allowed_hosts=["127.0.0.1", "localhost"])
    ok = root.post(
        "/api/v1/images/subscriptions", json={"url": file_server.url("/same.json"), "endorser_key": endorser.public_pem}
    )
    assert ok.status_code == 201, ok.text
    file_server.requests.clear()
    message = refused(subscribe(root, file_server.url("/away.json")))
    assert "redirects to another host (localhost); not followed" in message
    assert file_server.requests == ["/away.json"]  # the other host was never asked


def test_errors_do_not_tell_an_open_port_from_a_closed_one(make_server: ServerFactory, silent_port: int) -> None:
    _, root = start(make_server, allow_http=True, allowed_hosts=["127.0.0.1"], fetch_timeout_seconds=1.5)
    closed = free_port()
    messages = []
    for port in (closed, silent_port):
        url = f"http://127.0.0.1:{port}/l.json"
        messages.append(refused(subscribe(root, url)).replace(url, "URL"))
    assert messages[0] == messages[1] == "cannot fetch URL: no answer (connection failed or timed out)"


def test_a_hanging_fetch_does_not_hold_the_server(make_server: ServerFactory, silent_port: int) -> None:
    server, root = start(make_server, allow_http=True, allowed_hosts=["127.0.0.1"], fetch_timeout_seconds=3)
    done: list[httpx.Response] = []
    fetch = threading.Thread(target=lambda: done.append(subscribe(root, f"http://127.0.0.1:{silent_port}/l.json")))
    fetch.start()
    time.sleep(0.5)
    with httpx.Client(base_url=server.url) as other:
        started = time.perf_counter()
        assert other.get("/api/v1/health").status_code == 200
        assert time.perf_counter() - started < 0.5
    fetch.join(timeout=10)
    assert done and done[0].status_code == 422


def test_lists_larger_than_the_cap_are_refused(make_server: ServerFactory, file_server: FileServer) -> None:
    file_server.files["/big.json"] = b" " * 5000
    _, root = start(make_server, allow_http=True, allowed_hosts=["127.0.0.1"], max_list_bytes=4096)
    assert "more than 4096 bytes" in refused(subscribe(root, file_server.url("/big.json")))
