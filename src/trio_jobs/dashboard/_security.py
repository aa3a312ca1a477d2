"""Who may see the dashboard and who may act on it: basic auth, CSRF tokens, read-only mode.

- With ``TRIO_JOBS_DASHBOARD_PASSWORD`` set, :class:`BasicAuth` answers 401 to
  every request (pages, events, metrics, static files) that does not carry that
  password and the user ``TRIO_JOBS_DASHBOARD_USER`` (default ``admin``).
- Every action is a POST carrying the app's CSRF token, which only its own pages
  hold (a form field ``csrf_token`` or the header ``X-CSRF-Token``): a page on
  another site cannot forge one, even in a browser that sends the basic-auth
  credentials along.
- In read-only mode every action answers 403, token or not.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
from collections.abc import Mapping

import attrs
from starlette.types import ASGIApp, Receive, Scope, Send

#: The environment variables that turn basic auth on and name its user.
PASSWORD_ENV = "TRIO_JOBS_DASHBOARD_PASSWORD"
USER_ENV = "TRIO_JOBS_DASHBOARD_USER"
DEFAULT_USER = "admin"


@attrs.frozen
class Credentials:
    """The user and password basic auth requires."""

    user: str
    password: str = attrs.field(repr=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Credentials | None:
        """Read them from the environment; ``None`` when no password is set."""
        password = environ.get(PASSWORD_ENV)
        if not password:
            return None
        return cls(environ.get(USER_ENV) or DEFAULT_USER, password)

    def accept(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries these credentials."""
        if header is None:
            return False
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both compared, always: the time taken says nothing about which was wrong.
        user_ok = hmac.compare_digest(user.encode(), self.user.encode())
        password_ok = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and user_ok and password_ok


class BasicAuth:
    """ASGI middleware: every HTTP request must carry :class:`Credentials`."""

    def __init__(self, app: ASGIApp, credentials: Credentials) -> None:
        self._app = app
        self._credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        raw = headers.get(b"authorization")
        if self._credentials.accept(None if raw is None else raw.decode("latin-1")):
            await self._app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="trio_jobs", charset="UTF-8"'),
                    (b"content-type", b"text/plain; charset=utf-8"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"authentication required\n"})


def new_csrf_token() -> str:
    """A fresh random token for one app (its pages embed it in their forms)."""
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str, given: str | None) -> bool:
    """Whether ``given`` is the app's token (compared in constant time)."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
