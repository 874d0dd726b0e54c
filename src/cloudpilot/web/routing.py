"""How a page request is authenticated and how errors become pages: the session cookie, CSRF checks on every
form, and the services' exceptions mapped to the same statuses the REST API uses (docs/dashboard.md)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute

from cloudpilot.domain.auth import Principal
from cloudpilot.domain.errors import IllegalTransition, InvalidJobSpec, StaleLease
from cloudpilot.services.container import Services
from cloudpilot.services.errors import BadInput, Forbidden, TooMany, Unauthenticated
from cloudpilot.store.errors import Conflict, NotFound
from cloudpilot.web.render import render
from cloudpilot.web.sessions import COOKIE, SessionStore, WebSession

MAX_FORM_BYTES = 64 << 10

STATUS = [
    (Forbidden, 403),
    (NotFound, 404),
    ((Conflict, IllegalTransition, StaleLease), 409),
    (TooMany, 413),
    ((BadInput, InvalidJobSpec), 422),
    (RequestValidationError, 400),
]


class NotLoggedIn(Exception):
    """No session, an expired one, or its token no longer valid: to the login page."""


class CsrfRefused(Exception):
    """A form without this session's CSRF token."""


class WebRoute(APIRoute):
    """Routes whose errors are pages (or, for the live fragments, a status the poller understands)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except (NotLoggedIn, Unauthenticated):
                if request.query_params.get("fragment") == "1":
                    return Response(status_code=401)  # the poller reloads: the page then goes to the login
                return RedirectResponse("/ui/login", 303)
            except CsrfRefused:
                message = "this form is missing its security token (or it is stale): reload the page and try again"
                return render(request, "error.html", 403, status=403, message=message)
            except Exception as exc:
                for kinds, status in STATUS:
                    if isinstance(exc, kinds):
                        message = _message(exc)
                        return render(request, "error.html", status, status=status, message=message)
                raise

        return guarded


def _message(exc: Exception) -> str:
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0]
        return f"{'.'.join(str(p) for p in first.get('loc', ())[1:])}: {first['msg']}"
    return str(exc)


def services_of(request: Request) -> Services:
    return request.app.state.services


def sessions_of(request: Request) -> SessionStore:
    return request.app.state.web_sessions


def current_session(request: Request) -> WebSession:
    services = services_of(request)
    now = services.clock.now()
    session = sessions_of(request).get(request.cookies.get(COOKIE), now)
    if session is None:
        raise NotLoggedIn
    try:
        principal = services.auth.authenticate(f"Bearer {session.token}", now)
    except Unauthenticated:
        sessions_of(request).drop(session.id)  # revoked or expired: the session goes with it
        raise NotLoggedIn from None
    request.state.principal = principal
    request.state.csrf = session.csrf
    return session


def current_principal(request: Request, _session: Annotated[WebSession, Depends(current_session)]) -> Principal:
    return request.state.principal


async def read_form(request: Request) -> dict[str, str]:
    """The urlencoded form of a POST (first value of each field)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadInput(f"the form is larger than {MAX_FORM_BYTES} bytes")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: v[0] for k, v in fields.items()}


async def checked_form(request: Request, session: Annotated[WebSession, Depends(current_session)]) -> dict[str, str]:
    """The form of a POST whose hidden ``csrf`` field holds this session's token; :class:`CsrfRefused` if not."""
    form = await read_form(request)
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise CsrfRefused
    return form


PrincipalDep = Annotated[Principal, Depends(current_principal)]
ServicesDep = Annotated[Services, Depends(services_of)]
FormDep = Annotated[dict[str, str], Depends(checked_form)]
