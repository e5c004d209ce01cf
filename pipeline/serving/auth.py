"""Bearer-token authorization of the admin routes: one shared token, compared in constant time."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from common.errors import HttpError


class BearerAuth:
    """``Authorization: Bearer <token>``. Without a token configured the admin API is off (403), so an app
    deployed without one cannot be reconfigured by anyone who reaches its port."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    def check(self, request: Request) -> None:
        """Return if ``request`` carries the token; else 403 (admin API off) or 401 (missing or wrong token)."""
        if self._expected is None:
            raise HttpError(403, "admin API disabled: set STREAMSCORE_ADMIN_TOKEN or admin_token in the config")
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise HttpError(401, "admin API needs Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
