"""Image lists for tests: an endorser with its key, HEPiX documents, and a real HTTP server on 127.0.0.1 that
publishes lists, signatures and image files."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudpilot.domain.images import iso
from cloudpilot.images.signing import fingerprint, generate_key, public_key_pem, sign_document

DN = "/DC=ch/DC=cern/OU=LHCb/CN=LHCb image endorser"
# The test lists are served over http from 127.0.0.1, which a server refuses unless told (docs/images.md).
LOCAL_IMAGES = {"allow_http": True, "allowed_hosts": ["127.0.0.1"]}


@dataclass
class Endorser:
    key: Ed25519PrivateKey = field(default_factory=generate_key)

    @property
    def public_pem(self) -> str:
        return public_key_pem(self.key.public_key())

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.key.public_key())

    def sign(self, doc: dict[str, Any]) -> bytes:
        return sign_document(doc, self.key)


def image_entry(identifier: str, content: bytes, uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "hv:image": {
            "dc:identifier": identifier,
            "dc:title": f"{identifier} for tests",
            "hv:uri": uri,
            "hv:size": len(content),
            "sl:checksum:sha512": hashlib.sha512(content).hexdigest(),
            "sl:os": "el9",
            "sl:osversion": "9.3",
            "sl:arch": "x86_64",
            "hv:format": "raw",
            "hv:version": "1",
            **extra,
        }
    }


def image_list(
    images: list[dict[str, Any]],
    version: str = "1",
    identifier: str = "lhcb-images",
    expires_in: float = 3600,
    endorser: str = DN,
) -> dict[str, Any]:
    now = time.time()
    return {
        "hv:imagelist": {
            "dc:identifier": identifier,
            "dc:title": "LHCb images",
            "dc:date:created": iso(now - 60),
            "dc:date:expires": iso(now + expires_in),
            "hv:version": version,
            "hv:endorser": {"hv:x509": {"hv:dn": endorser, "dc:creator": "LHCb"}},
            "hv:uri": "http://127.0.0.1/lists/lhcb.json",
            "hv:images": images,
        }
    }


def dump(doc: dict[str, Any]) -> bytes:
    """A list file as an endorser would write it (indented)."""
    return (json.dumps(doc, indent=2) + "\n").encode()


class FileServer:
    """Serves ``files`` (path -> bytes) over HTTP on 127.0.0.1, ``redirects`` (path -> Location) with a 302;
    anything else is a 404."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.requests: list[str] = []
        files, requests, redirects = self.files, self.requests, self.redirects

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                if self.path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def publish(self, path: str, doc: dict[str, Any], endorser: Endorser | None) -> str:
        """Serve the list at ``path`` and, if ``endorser`` is given, its signature at ``path.sig``."""
        self.files[path] = dump(doc)
        if endorser is not None:
            self.files[path + ".sig"] = endorser.sign(doc)
        else:
            self.files.pop(path + ".sig", None)
        return self.url(path)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.stop()
