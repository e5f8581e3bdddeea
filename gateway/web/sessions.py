"""Console sessions: a random id (the cookie) -> the token signed in with and a CSRF token.

The session map lives in the gateway's memory only, so a cookie never carries the token and
a restart (or a reload, which builds a new API server) signs everyone out. Keeping the token
itself, not a role, means every request still goes through the API's own token check: a
token revoked after sign-in stops working at once, and the role is always the token's
current one. The map is bounded (the oldest session goes first) and sessions expire.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_SESSIONS: Final = 1000
"""Sessions kept at once; signing in beyond this ends the oldest session."""
SESSION_TTL_S: Final = 12 * 3600.0
"""A session ends this long after sign-in (a working shift), whatever its use."""


@dataclass(frozen=True)
class Session:
    """One signed-in browser: the token it signed in with, its CSRF token, when it started."""

    id: str
    token: str
    csrf: str
    role: str
    created: float


class SessionStore:
    """The signed-in sessions of one API server (in memory, bounded, expiring)."""

    def __init__(self, now: Callable[[], float] = time.monotonic, ttl_s: float = SESSION_TTL_S,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self._now = now
        self._ttl_s = ttl_s
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str, role: str) -> Session:
        """A new session for ``token`` (already checked by the caller) with fresh random ids."""
        while len(self._sessions) >= self._max:
            self._sessions.popitem(last=False)
        session = Session(secrets.token_urlsafe(32), token, secrets.token_urlsafe(32), role, self._now())
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown, ended or expired)."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._now() - session.created > self._ttl_s:
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str | None) -> bool:
        """End a session (sign-out); whether there was one."""
        return session_id is not None and self._sessions.pop(session_id, None) is not None


def csrf_matches(session: Session, presented: str | None) -> bool:
    """Whether a request's CSRF header carries its session's CSRF token (constant time)."""
    if not presented:
        return False
    try:
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), session.csrf.encode())
    except UnicodeError:
        return False
