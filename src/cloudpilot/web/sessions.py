"""Browser sessions: a random id in an HttpOnly cookie stands for the token the user logged in with, which never
leaves the server again. Each session has its own CSRF token, checked on every form.

Sessions live in this process's memory: behind a load balancer with several API processes, route a browser to one
process (sticky sessions) or it has to log in again on another. A restart logs everyone out.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

from cloudpilot.domain.auth import Principal

COOKIE = "cloudpilot_session"
LOGIN_COOKIE = "cloudpilot_login"  # the CSRF token of the login form, before there is a session
MAX_SECONDS = 8 * 3600.0  # a session ends after this long, or with its token if that comes first
MAX_SESSIONS = 10_000


@dataclass(frozen=True, slots=True)
class WebSession:
    id: str
    token: str
    csrf: str
    expires_at: float


class SessionStore:
    def __init__(self, max_seconds: float = MAX_SECONDS) -> None:
        self.max_seconds = max_seconds
        self._sessions: dict[str, WebSession] = {}
        self._lock = threading.Lock()

    def create(self, token: str, principal: Principal, now: float) -> WebSession:
        expires = now + self.max_seconds
        if principal.expires_at is not None:
            expires = min(expires, principal.expires_at)
        session = WebSession(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), expires)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None, now: float) -> WebSession | None:
        if not session_id:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires_at <= now:
                del self._sessions[session_id]
                return None
        return session

    def drop(self, session_id: str | None) -> None:
        with self._lock:
            self._sessions.pop(session_id or "", None)
