"""The web pages (docs/dashboard.md): another face of the API under ``/ui/``, server-rendered with Jinja2, calling
the same services as the REST routers. Every asset ships in this package and is served by the server itself."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cloudpilot.web.security import SecurityHeaders
from cloudpilot.web.sessions import SessionStore
from cloudpilot.web.views import router

STATIC_DIR = Path(__file__).parent / "static"


def install(app: FastAPI) -> None:
    """Mount the pages, their static files and their security headers on ``app``."""
    app.state.web_sessions = SessionStore()
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.add_middleware(SecurityHeaders)
