"""How the pilot talks to the server: the :class:`Transport` port and its HTTP adapter over ``http.client``
(kept-alive connections, pilot/connections.py; ``urllib`` when a proxy is configured).

Every method maps the server's answers onto the pilot's error classes, so the agent never sees HTTP:
no connection, a timeout or a 5xx is :class:`ServerUnreachable` (retry later), a 409 on a call about a job is
:class:`LeaseLost` (drop the job), any other 4xx is :class:`RequestRejected`, a TLS certificate that does not
verify is :class:`UntrustedServer` (fatal).
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any, Protocol

from cloudpilot.pilot.connections import ConnectionPool
from cloudpilot.pilot.errors import LeaseLost, ProtocolError, RequestRejected, ServerUnreachable, UntrustedServer

API = "/api/v1"
RETRYABLE_4XX = frozenset({408, 425, 429})  # the server asks to try again later
USER_AGENT = "cloudpilot-pilot/1"

# Fields of a final report that servers before them refuse with a 422 (docs/rest-api.md, the report).
REPORT_EXTENSIONS = frozenset({"output", "next", "ran_seconds"})


class Transport(Protocol):
    """The calls a pilot makes (``docs/rest-api.md``, section Pilots). Bodies are the documented JSON objects.

    ``report_extensions``: whether final reports may carry :data:`REPORT_EXTENSIONS`; a pilot that finds its server
    refusing them (a 422) sets it to ``False`` and goes back to upload-then-report.
    """

    report_extensions: bool

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        """``POST /pilots``: ``{"id", "lease_seconds", "heartbeat_seconds"}``."""
        ...

    def match(self, offer: dict[str, Any]) -> dict[str, Any] | None:
        """``POST /pilots/match`` (a long poll of ``offer["wait_seconds"]``): ``None`` (no job), else
        ``{"job", "lease", "shutdowntime"?}`` or ``{"halt": {"code", "reason"}}``."""
        ...

    def download_input(self, job_id: int, lease_token: int, dest: Path) -> None:
        """``GET /jobs/{id}/input``: write the input sandbox (a gzipped tar) to ``dest``."""
        ...

    def heartbeat(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /jobs/{id}/heartbeat``: ``{"lease_expires_at", "action", "shutdowntime"?}``."""
        ...

    def upload_output(self, job_id: int, lease_token: int, archive: Path) -> dict[str, Any]:
        """``PUT /jobs/{id}/output``: send the output sandbox read from ``archive``."""
        ...

    def upload_events(self, job_id: int, lease_token: int, first: int, last: int, archive: Path) -> dict[str, Any]:
        """``PUT /jobs/{id}/events?first=F&last=L``: the outputs of events F..L (a gzipped tar);
        ``{"events_done": L + 1}``. A 409 if the lease is lost or F is not the next event the server expects."""
        ...

    def report(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /jobs/{id}/report``: the job's new ``{"state"}``. A final report may carry the job's small
        output inline (``output``) and an offer for the slot it frees (``next``); the answer then has ``next``:
        a match answer (``{"job", "lease"}`` or ``{"halt"}``), or ``null`` (servers that predate it: absent)."""
        ...

    def halt(self, pilot_id: str, code: int, message: str) -> None:
        """``POST /pilots/{id}/halt``: the pilot's last word."""
        ...


class HttpTransport:
    """:class:`Transport` over HTTP(S); the token goes in a bearer header and nowhere else.

    ``timeout`` bounds each blocking socket operation; a long poll gets ``wait_seconds`` on top of it.
    Calls reuse kept-alive connections (:class:`~cloudpilot.pilot.connections.ConnectionPool`). Proxies come
    from the usual ``*_proxy`` environment variables: when one applies to the server, calls go through
    ``urllib`` (which knows proxies), one connection each.
    """

    def __init__(
        self, server: str, token: str, *, timeout: float = 60.0, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        parsed = urllib.parse.urlsplit(server)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"the server URL must be http(s)://host[:port][/prefix], not {server!r}")
        self.base = server.rstrip("/") + API
        # Messages name the URL tried, without any user:password@ a proxy setup may have put in it.
        shown = parsed._replace(netloc=parsed.netloc.rpartition("@")[2])
        self._shown_base = urllib.parse.urlunsplit(shown).rstrip("/") + API
        self._auth = f"Bearer {token.strip()}"
        self.timeout = timeout
        self.report_extensions = True
        handlers: list[urllib.request.BaseHandler] = []
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)
        self._prefix = parsed.path.rstrip("/") + API
        host = parsed.hostname or ""
        proxied = parsed.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host)
        self._pool = None if proxied else ConnectionPool(parsed.scheme, host, parsed.port, ssl_context)

    def __repr__(self) -> str:  # never shows the token
        return f"HttpTransport({self.base!r})"

    # --- the calls ------------------------------------------------------------------------------------------

    def register(self, info: dict[str, Any]) -> dict[str, Any]:
        answer = self._json("POST", "/pilots", info)
        session = answer.pop("session_token", None)
        if isinstance(session, str) and session:
            # Every later call goes with the session bound to this pilot; the registration token is forgotten.
            self._auth = f"Bearer {session.strip()}"
        return answer

    def match(self, offer: dict[str, Any]) -> dict[str, Any] | None:
        wait = float(offer.get("wait_seconds") or 0)
        status, body = self._call("POST", "/pilots/match", data=_dump(offer), timeout=self.timeout + wait)
        return None if status == 204 or not body else _load(body, "/pilots/match")

    def download_input(self, job_id: int, lease_token: int, dest: Path) -> None:
        path = f"/jobs/{job_id}/input?lease_token={lease_token}"
        with dest.open("wb") as out:
            self._call("GET", path, sink=out, job_call=True)

    def heartbeat(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/heartbeat", body, job_call=True)

    def upload_output(self, job_id: int, lease_token: int, archive: Path) -> dict[str, Any]:
        return self._put_file(f"/jobs/{job_id}/output?lease_token={lease_token}", archive)

    def upload_events(self, job_id: int, lease_token: int, first: int, last: int, archive: Path) -> dict[str, Any]:
        query = urllib.parse.urlencode({"lease_token": lease_token, "first": first, "last": last})
        return self._put_file(f"/jobs/{job_id}/events?{query}", archive)

    def report(self, job_id: int, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/report", body, job_call=True)

    def halt(self, pilot_id: str, code: int, message: str) -> None:
        quoted = urllib.parse.quote(pilot_id, safe="")
        self._call("POST", f"/pilots/{quoted}/halt", data=_dump({"code": code, "message": message}), timeout=10)

    # --- plumbing -------------------------------------------------------------------------------------------

    def _json(self, method: str, path: str, doc: dict[str, Any], *, job_call: bool = False) -> dict[str, Any]:
        _, body = self._call(method, path, data=_dump(doc), job_call=job_call)
        return _load(body, path) if body else {}

    def _put_file(self, path: str, archive: Path) -> dict[str, Any]:
        with archive.open("rb") as data:
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(archive.stat().st_size)}
            _, body = self._call("PUT", path, data=data, headers=headers, job_call=True)
        return _load(body, path) if body else {}

    def _call(
        self,
        method: str,
        path: str,
        *,
        data: bytes | IO[bytes] | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
        sink: IO[bytes] | None = None,
        job_call: bool = False,
    ) -> tuple[int, bytes]:
        """One request; the answer's status and body (or the body copied into ``sink``)."""
        all_headers = {"Authorization": self._auth, "Accept": "application/json", "User-Agent": USER_AGENT}
        if isinstance(data, bytes):
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        what = f"{method} {self._shown_base}{path.split('?')[0]}"  # the whole URL: a wrong --server shows itself
        try:
            if self._pool is None:
                return self._call_urllib(method, path, data, all_headers, timeout or self.timeout, sink, what, job_call)
            if data is None and method in ("POST", "PUT"):
                all_headers["Content-Length"] = "0"
            answer = self._pool.request(
                method, self._prefix + path, data=data, headers=all_headers, timeout=timeout or self.timeout, sink=sink
            )
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            verify = exc if isinstance(exc, ssl.SSLCertVerificationError) else reason
            if isinstance(verify, ssl.SSLCertVerificationError):
                raise UntrustedServer(
                    f"{what}: the server's TLS certificate is not trusted (certificate verify failed: "
                    f"{verify.verify_message or verify}); "
                    "give the pilot the CA that signed it with --ca-file"
                ) from exc
            raise ServerUnreachable(f"{what}: {type(exc).__name__}: {reason}") from exc
        if answer.status >= 400:
            raise _error_for(what, answer.status, answer.reason, answer.body, job_call)
        return answer.status, answer.body

    def _call_urllib(
        self,
        method: str,
        path: str,
        data: bytes | IO[bytes] | None,
        headers: dict[str, str],
        timeout: float,
        sink: IO[bytes] | None,
        what: str,
        job_call: bool,
    ) -> tuple[int, bytes]:
        request = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                if sink is not None:
                    shutil.copyfileobj(answer, sink, 1 << 20)
                    return answer.status, b""
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            try:
                body = exc.read() or b""
            except (OSError, http.client.HTTPException):
                body = b""
            raise _error_for(what, exc.code, str(exc.reason), body, job_call) from exc


def _error_for(what: str, status: int, reason: str, body: bytes, job_call: bool) -> Exception:
    code, message = None, reason
    try:
        detail = json.loads(body or b"{}").get("error") or {}
        code, message = detail.get("code"), detail.get("message") or message
    except (ValueError, AttributeError):
        pass
    text = f"{what}: {status} {code or ''} {message}".replace("  ", " ")
    if status >= 500 or status in RETRYABLE_4XX:
        return ServerUnreachable(text, status=status, code=code)
    if status == 409 and job_call:
        return LeaseLost(text, status=status, code=code)
    return RequestRejected(text, status=status, code=code)


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _load(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise ProtocolError(f"{what}: the answer is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{what}: the answer is not a JSON object")
    return doc
