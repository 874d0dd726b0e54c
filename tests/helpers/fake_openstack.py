"""A fake OpenStack on 127.0.0.1: the few Keystone v3 and Nova calls Libcloud's OpenStack driver makes.

It fakes the far side of the real protocol (HTTP + JSON, the X-Auth-Token header, Nova's fault bodies), keeps
servers in memory, and records what it was sent, so tests drive the real Libcloud driver through our adapter.

    POST   /v3/auth/tokens                       Keystone v3 auth by ``password`` (scoped to a project) or
                                                 ``application_credential`` (id + secret; the credential
                                                 holds its project); 201 + X-Subject-Token + a catalog
                                                 naming the compute endpoint below (on this same server) in
                                                 each of ``regions``, and Keystone itself
    GET    /compute/v2.1/servers/detail          list
    POST   /compute/v2.1/servers                 create (user_data base64, metadata, imageRef, flavorRef)
    GET    /compute/v2.1/servers/{id}            show
    DELETE /compute/v2.1/servers/{id}            delete; 404 if unknown

Failure switches: ``password`` and ``app_credentials`` (others get 401), ``fail_next_create`` (status and
message of Nova's fault for the next POST /servers, e.g. 403 "Quota exceeded for instances").
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPUTE_PREFIX = "/compute/v2.1"
TENANT_ID = "0f0e0d0c0b0a09080706050403020100"

# Nova's fault bodies are {"<kind>": {"message": …, "code": …}}; the kind depends on the status.
_FAULT_KIND = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 413: "overLimit"}


@dataclass
class FakeServer:
    """One Nova server as the fake stores it; ``user_data`` is decoded from the request's base64."""

    id: str
    name: str
    image_id: str
    flavor_id: str
    metadata: dict[str, str]
    user_data: str | None
    key_name: str | None
    networks: list[dict[str, Any]]
    security_groups: list[dict[str, Any]]
    availability_zone: str | None
    status: str = "BUILD"
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))


class FakeOpenStack:
    """Keystone + Nova in one ``ThreadingHTTPServer``; ``start()`` picks a free port on 127.0.0.1."""

    def __init__(
        self,
        user: str = "demo",
        password: str = "demo-password",
        project: str = "physics",
        images: tuple[str, ...] = ("img-alma9",),
        flavors: tuple[str, ...] = ("m1.small", "m1.large"),
        app_credentials: dict[str, str] | None = None,
        regions: tuple[str, ...] = ("RegionOne",),
    ) -> None:
        self.user = user
        self.password = password
        self.project = project
        self.app_credentials = dict(app_credentials or {})  # id -> secret
        self.regions = regions
        self.auth_methods: list[str] = []  # the Keystone method of each token issued
        self.images = set(images)
        self.flavors = set(flavors)
        self.servers: dict[str, FakeServer] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) as received
        self.fail_next_create: tuple[int, str] | None = None
        self._tokens: set[str] = set()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeOpenStack:
        fake = self

        class Handler(_Handler):
            openstack = fake

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # --- Keystone ---

    def authenticate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        identity = (body.get("auth") or {}).get("identity") or {}
        methods = identity.get("methods") or []
        if methods == ["password"]:
            refusal = self._check_password(body)
        elif methods == ["application_credential"]:
            refusal = self._check_app_credential(identity.get("application_credential") or {})
        else:
            return 400, _fault(400, f"Unsupported auth methods {methods}"), {}
        if refusal is not None:
            unauthorized = {"code": refusal, "title": "Unauthorized", "message": "The request requires auth"}
            return refusal, {"error": unauthorized}, {}
        token = uuid.uuid4().hex
        with self._lock:
            self._tokens.add(token)
            self.auth_methods.append(methods[0])
        expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        token_body = {
            "token": {
                "methods": methods,
                "expires_at": expires,
                "catalog": self._catalog(),
                "roles": [{"id": "r1", "name": "member"}],
                "user": {"id": "u1", "name": self.user, "domain": {"id": "default", "name": "Default"}},
                "project": {"id": TENANT_ID, "name": self.project, "domain": {"id": "default", "name": "Default"}},
            }
        }
        return 201, token_body, {"X-Subject-Token": token}

    def _check_password(self, body: dict[str, Any]) -> int | None:
        """None if the user, password and project match; else the HTTP status of the refusal."""
        try:
            user = body["auth"]["identity"]["password"]["user"]
            project = body["auth"]["scope"]["project"]["name"]
        except (KeyError, TypeError):
            return 400
        ok = user.get("name") == self.user and user.get("password") == self.password and project == self.project
        return None if ok else 401

    def _check_app_credential(self, credential: dict[str, Any]) -> int | None:
        # An application credential is bound to its project: the request names no scope.
        secret = self.app_credentials.get(str(credential.get("id")))
        return None if secret is not None and credential.get("secret") == secret else 401

    def _catalog(self) -> list[dict[str, Any]]:
        def endpoints(url: str) -> list[dict[str, Any]]:
            return [
                {"id": f"{region}-{interface}", "interface": interface, "region": region, "region_id": region,
                 "url": url}
                for region in self.regions
                for interface in ("public", "internal")
            ]  # fmt: skip

        return [
            {"id": "s-nova", "type": "compute", "name": "nova", "endpoints": endpoints(self.url + COMPUTE_PREFIX)},
            {"id": "s-keystone", "type": "identity", "name": "keystone", "endpoints": endpoints(self.url + "/v3")},
        ]

    def token_valid(self, token: str | None) -> bool:
        with self._lock:
            return token in self._tokens

    # --- Nova ---

    def create_server(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = body.get("server") or {}
        with self._lock:
            failure, self.fail_next_create = self.fail_next_create, None
        if failure is not None:
            return failure[0], _fault(*failure)
        if request.get("imageRef") not in self.images:
            return 400, _fault(400, "Invalid imageRef provided.")
        if request.get("flavorRef") not in self.flavors:
            return 400, _fault(400, "Invalid flavorRef provided.")
        encoded = request.get("user_data")
        server = FakeServer(
            id=str(uuid.uuid4()),
            name=request.get("name", ""),
            image_id=request["imageRef"],
            flavor_id=request["flavorRef"],
            metadata={str(k): str(v) for k, v in (request.get("metadata") or {}).items()},
            user_data=base64.b64decode(encoded).decode() if encoded else None,
            key_name=request.get("key_name"),
            networks=list(request.get("networks") or []),
            security_groups=list(request.get("security_groups") or []),
            availability_zone=request.get("availability_zone"),
        )
        with self._lock:
            self.servers[server.id] = server
        return 202, {"server": {"id": server.id, "links": self._links(server), "adminPass": "not-used"}}

    def server_json(self, server: FakeServer) -> dict[str, Any]:
        return {
            "id": server.id,
            "name": server.name,
            "status": server.status,
            "tenant_id": TENANT_ID,
            "user_id": "u1",
            "hostId": "",
            "addresses": {},
            "image": {"id": server.image_id},
            "flavor": {"id": server.flavor_id},
            "metadata": dict(server.metadata),
            "key_name": server.key_name,
            "created": server.created,
            "updated": server.created,
            "links": self._links(server),
            "OS-EXT-AZ:availability_zone": server.availability_zone or "nova",
        }

    def _links(self, server: FakeServer) -> list[dict[str, str]]:
        return [{"rel": "self", "href": f"{self.url}{COMPUTE_PREFIX}/servers/{server.id}"}]


def _fault(status: int, message: str) -> dict[str, Any]:
    return {_FAULT_KIND.get(status, "computeFault"): {"message": message, "code": status}}


class _Handler(BaseHTTPRequestHandler):
    openstack: FakeOpenStack  # set on the per-fake subclass made by FakeOpenStack.start()

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.openstack
        path = self.path.split("?", 1)[0]
        fake.requests.append((method, path))
        body = self._read_json()
        if method == "POST" and path == "/v3/auth/tokens":
            status, payload, headers = fake.authenticate(body)
            return self._reply(status, payload, headers)
        if not path.startswith(COMPUTE_PREFIX + "/"):
            return self._reply(404, _fault(404, f"no such endpoint {path}"))
        if not fake.token_valid(self.headers.get("X-Auth-Token")):
            return self._reply(401, _fault(401, "The request you have made requires authentication."))
        parts = path[len(COMPUTE_PREFIX) + 1 :].split("/")
        if method == "GET" and parts == ["servers", "detail"]:
            with fake._lock:
                servers = [fake.server_json(s) for s in fake.servers.values()]
            return self._reply(200, {"servers": servers})
        if method == "POST" and parts == ["servers"]:
            return self._reply(*fake.create_server(body))
        if len(parts) == 2 and parts[0] == "servers" and method in ("GET", "DELETE"):
            with fake._lock:
                server = fake.servers.get(parts[1])
                if server is not None and method == "DELETE":
                    del fake.servers[server.id]
            if server is None:
                return self._reply(404, _fault(404, f"Instance {parts[1]} could not be found."))
            return self._reply(200, {"server": fake.server_json(server)}) if method == "GET" else self._reply(204)
        return self._reply(404, _fault(404, f"no such resource {method} {path}"))

    def _read_json(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _reply(self, status: int, payload: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode() if payload is not None else b""
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass
