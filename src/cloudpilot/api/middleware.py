"""One ASGI middleware around every HTTP request: its request id, its metrics and its access-log line.

Pure ASGI rather than ``BaseHTTPMiddleware``, so streamed answers (pilot downloads, long polls) pass through
untouched. Metrics are labelled with the route's path template (``/api/v1/jobs/{job_id}``), never the raw path,
so their number stays bounded whatever URLs clients try; requests that match no route share ``unmatched``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudpilot.api.logs import ACCESS_LOGGER, REQUEST_ID
from cloudpilot.services import metrics

REQUEST_ID_HEADER = "x-request-id"
UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other counts as OTHER
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a caller's own id is kept only if it is this tame

access_log = logging.getLogger(ACCESS_LOGGER)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            given = value.decode("latin-1")
            if _CLIENT_ID.fullmatch(given):
                return given
    return uuid.uuid4().hex[:16]


class RequestMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        context = REQUEST_ID.set(request_id)
        status = 500  # what an exception that escapes the app becomes
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            # The router leaves the matched route in the scope.
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            metrics.observe_http(method, route, status, seconds)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %d %.1f ms",
                    method,
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 1),
                    },
                )
            REQUEST_ID.reset(context)
