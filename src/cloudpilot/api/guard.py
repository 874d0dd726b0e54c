"""What every request must respect before any router sees it: a bounded body (``server.max_body_bytes``) and
no text a store cannot hold faithfully — NUL characters (PostgreSQL refuses them, SQLite would store them) and
unpaired UTF-16 surrogates (no UTF-8 encoding exists for them).

Sandbox uploads stream to storage with their own limit (``storage.max_sandbox_bytes``) and are binary, so they
pass untouched. Pure ASGI, so streamed answers and long polls pass through as they are.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudpilot.api.responses import error_body

# Routes whose body is a sandbox streamed to storage (api/uploads.py).
_UPLOADS = re.compile(r"^/api/v1/(sandboxes|jobs/[^/]+/(output|events))/?$")
_NUL_IN_URL = re.compile(rb"%00|\x00")
BAD_TEXT = "text may not hold NUL characters or unpaired surrogates (\\u0000, \\ud800-\\udfff)"


def bad_text_field(value: Any, where: str = "") -> str | None:
    """Where in a parsed document (keys included) a string holds a NUL or a lone surrogate, else ``None``;
    the top level is ``""``."""
    if isinstance(value, str):
        return where if _bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            at = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and _bad(key):
                return at
            found = bad_text_field(item, at)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = bad_text_field(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _bad(text: str) -> bool:
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: a paired one decodes to one character beyond the BMP
        return True
    return False


def _json_bad_text(body: bytes) -> str | None:
    """``None`` when the JSON body is fine (or is no JSON: the router says so), else the field at fault."""
    try:
        data = json.loads(body)  # the stdlib keeps lone surrogates as they are; orjson would refuse them
    except (ValueError, RecursionError):
        return None
    return bad_text_field(data)


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _NUL_IN_URL.search(scope.get("raw_path") or b"") or _NUL_IN_URL.search(scope.get("query_string", b"")):
            await _answer(send, 422, error_body("invalid", f"the URL: {BAD_TEXT}"))
            return
        if _UPLOADS.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await _answer(send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        # Only a \u escape can put a NUL or a lone surrogate into JSON text: most bodies skip the parse.
        if b"\\u" in body:
            field = await run_in_threadpool(_json_bad_text, bytes(body))
            if field is not None:
                where = f"{field}: " if field else ""
                await _answer(send, 422, error_body("invalid", f"{where}{BAD_TEXT}", field or None))
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self) -> dict[str, Any]:
        return error_body(
            "too_large", f"the request body is larger than {self.max_body_bytes} bytes (server.max_body_bytes)"
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then whatever the client sends next (its disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send: Send, status: int, body: dict[str, Any]) -> None:
    data = orjson.dumps(body)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
