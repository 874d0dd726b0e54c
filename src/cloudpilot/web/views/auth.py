"""Logging in with an existing token (a form POST; the token never appears in a URL) and out."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from cloudpilot.domain.auth import Role
from cloudpilot.services.errors import Unauthenticated
from cloudpilot.web.render import render
from cloudpilot.web.routing import FormDep, WebRoute, read_form, services_of, sessions_of
from cloudpilot.web.sessions import COOKIE, LOGIN_COOKIE

router = APIRouter(route_class=WebRoute)  # errors as pages (web/routing.py)
LOGIN_SECONDS = 1800  # the login form's CSRF cookie


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/ui", httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )  # fmt: skip


def _login_form(request: Request, status: int = 200, error: str = "") -> Response:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", status, login_csrf=token, error=error)
    _cookie(response, request, LOGIN_COOKIE, token, LOGIN_SECONDS)
    return response


@router.get("/login")
def login_page(request: Request) -> Response:
    return _login_form(request)


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not hmac.compare_digest(form.get("csrf", "").encode(), expected.encode()):
        return _login_form(request, 403, "The form was stale or incomplete: please try again.")
    services = services_of(request)
    now = services.clock.now()
    token = form.get("token", "").strip()
    try:
        principal = services.auth.authenticate(f"Bearer {token}", now)
    except Unauthenticated as exc:
        return _login_form(request, 401, str(exc))
    if principal.role is Role.PILOT:
        return _login_form(request, 403, "Pilot tokens cannot log in: use a user, site or admin token.")
    session = sessions_of(request).create(token, principal, now)
    response = RedirectResponse("/ui/", 303)
    _cookie(response, request, COOKIE, session.id, max(1, int(session.expires_at - now)))
    response.delete_cookie(LOGIN_COOKIE, path="/ui")
    return response


@router.post("/logout")
def logout(request: Request, _form: FormDep) -> Response:
    sessions_of(request).drop(request.cookies.get(COOKIE))
    response = RedirectResponse("/ui/login", 303)
    response.delete_cookie(COOKIE, path="/ui")
    return response
