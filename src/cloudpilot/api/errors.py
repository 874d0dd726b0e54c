"""Every error leaves the API as ``{"error": {"code", "message", "field"}}`` with one status per cause."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudpilot.api.responses import error_body, json_response
from cloudpilot.domain.errors import IllegalTransition, InvalidJobSpec, StaleLease
from cloudpilot.services.errors import BadInput, Forbidden, TooMany, Unauthenticated
from cloudpilot.storage.base import StorageError, StorageUnavailable, TooLarge
from cloudpilot.store.errors import Conflict, NotFound, TooManyClasses


def field_of(loc: tuple[int | str, ...] | list[int | str], prefix: str = "") -> str | None:
    """``("body", "requirements", "cores")`` -> ``requirements.cores``; list indexes as ``[3]``."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    text = prefix
    for p in parts:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return text or None


def validation_error(exc: ValidationError | RequestValidationError, prefix: str = "") -> Response:
    """422 for a body that breaks the schema; 400 for a bad query or path value."""
    first = exc.errors()[0]
    loc = tuple(first.get("loc", ()))
    field = field_of(loc, prefix)
    message = f"{field}: {first['msg']}" if field else str(first["msg"])
    if loc and loc[0] in ("query", "path"):
        return json_response(error_body("bad_request", message, field), 400)
    return json_response(error_body("invalid", message, field), 422)


def install_error_handlers(app: FastAPI) -> None:
    def handler(status: int, code: str, message: str | None = None):  # type: ignore[no-untyped-def]
        async def handle(_request: Request, exc: Exception) -> Response:
            return json_response(error_body(code, message or str(exc), getattr(exc, "field", None)), status)

        return handle

    app.add_exception_handler(Unauthenticated, handler(401, "unauthenticated"))
    app.add_exception_handler(Forbidden, handler(403, "forbidden"))
    app.add_exception_handler(NotFound, handler(404, "not_found"))
    app.add_exception_handler(StaleLease, handler(409, "lease_conflict"))
    app.add_exception_handler(Conflict, handler(409, "conflict"))
    app.add_exception_handler(TooManyClasses, handler(409, "too_many_classes"))
    app.add_exception_handler(IllegalTransition, handler(409, "conflict"))
    app.add_exception_handler(TooLarge, handler(413, "too_large"))
    app.add_exception_handler(TooMany, handler(413, "too_large"))
    app.add_exception_handler(BadInput, handler(422, "invalid"))
    app.add_exception_handler(InvalidJobSpec, handler(422, "invalid"))
    app.add_exception_handler(StorageError, handler(400, "bad_request"))
    app.add_exception_handler(StorageUnavailable, handler(503, "storage_unavailable"))  # the object store's fault
    # A safety net under the bounds of every model (api/params.py): a value the database cannot hold (a NUL
    # on PostgreSQL, an integer past 64 bits) is the caller's 422, not a 500; the transaction rolled back.
    app.add_exception_handler(DataError, handler(422, "invalid", "a value is out of range or cannot be stored"))
    app.add_exception_handler(OverflowError, handler(422, "invalid", "a number is out of range"))

    async def on_validation(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        return validation_error(exc)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(ValidationError, on_validation)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:  # only routing raises these: the path is no endpoint (a wrong URL or prefix)
            message = f"no endpoint {request.method} {request.url.path} on this server: is the server URL right?"
            return json_response(error_body("no_endpoint", message), 404)
        code = {405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return json_response(error_body(code, str(exc.detail)), exc.status_code)

    app.add_exception_handler(StarletteHTTPException, on_http)
