"""The lab dashboard: one page on the control API's port that shows the cluster
live and drives it.

The page (``GET /``) polls the control API itself (``/status`` once a second,
``/events?since=``) and draws requests per second per replica from the growth of
HAProxy's response counters; its buttons call the same routes the CLI does
(kill, start, drain, add, rolling restart, Redis restart). Nothing is served
from elsewhere: the script and stylesheet come from ``/dashboard/static``.

``ControlGuard`` protects the whole control app, not just the page, because the
page makes every route reachable from a browser:

- without a token, only loopback clients naming a loopback ``Host`` get in (a
  web page elsewhere cannot use DNS rebinding to reach the API);
- with a token (for a control API bound beyond loopback), every request must
  carry it: ``Authorization: Bearer``, or the cookie that ``/?token=`` sets;
- a state-changing request whose ``Origin`` is another site is refused, so a
  page on the web cannot kill a replica through the visitor's browser.
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["ControlGuard", "install", "router"]

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TOKEN_COOKIE = "statelab_dashboard"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

#: The page loads nothing from elsewhere and may only talk to this origin.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}

router = APIRouter(include_in_schema=False)


def _static_version() -> str:
    stamps = [int(p.stat().st_mtime) for p in STATIC_DIR.iterdir() if p.is_file()]
    return format(max(stamps, default=0), "x")


TEMPLATES.env.globals["static_version"] = _static_version()


@router.get("/")
async def dashboard(request: Request) -> Response:
    """The dashboard page; its first picture of the cluster is rendered in."""
    cluster = request.app.state.cluster
    status: dict[str, Any] = cluster.status()
    context = {
        "status": status,
        "sticky": bool(cluster.options.sticky),
        # Inside <script type="application/json">: "</" must not end the element.
        "initial": orjson.dumps(status).decode().replace("</", "<\\/"),
    }
    return TEMPLATES.TemplateResponse(request, "dashboard.html", context, headers=PAGE_HEADERS)


def install(app: FastAPI, *, token: str | None = None) -> None:
    """Serve the dashboard from ``app`` (the control API) and guard the whole app."""
    app.include_router(router)
    app.mount("/dashboard/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_middleware(ControlGuard, token=token)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port) is this machine."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8001`` -> ``127.0.0.1``; ``[::1]:8001`` -> ``::1``."""
    return urlsplit(f"//{host_header}").hostname or ""


class ControlGuard:
    """Who may use the control API and its dashboard (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None = None) -> None:
        if token is not None and len(token) < 16:
            raise ValueError("a control API token must be at least 16 characters")
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        offered = parse_qs(scope.get("query_string", b"").decode()).get("token", [None])[0]
        if self.token is not None and scope["path"] == "/" and offered is not None:
            await self._remember(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> Response | None:
        host = _host_name(headers.get("host", ""))
        client = (scope.get("client") or ("", 0))[0]
        if self.token is None:
            if not (is_loopback(client) and is_loopback(host)):
                return _error(403, "the control API answers loopback clients only")
        elif not self._authorized(scope, headers):
            return _error(401, "send the control token (Authorization: Bearer TOKEN)")
        if scope["method"] in UNSAFE and _cross_site(headers):
            return _error(403, "cross-site requests to the control API are refused")
        return None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        assert self.token is not None
        expected = self.token.encode()
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected):
            return True
        cookie = SimpleCookie(headers.get("cookie", "")).get(TOKEN_COOKIE)
        if cookie is not None and hmac.compare_digest(cookie.value.encode(), expected):
            return True
        offered = parse_qs(scope.get("query_string", b"").decode()).get("token", [""])[0]
        return scope["path"] == "/" and hmac.compare_digest(offered.encode(), expected)

    async def _remember(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/?token=T`` once: a cookie keeps it, and the URL loses it."""
        assert self.token is not None
        response = RedirectResponse("/", 303, PAGE_HEADERS)
        response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/")
        await response(scope, receive, send)


def _cross_site(headers: dict[str, str]) -> bool:
    if headers.get("sec-fetch-site") == "cross-site":
        return True
    origin = headers.get("origin")
    if origin is None:
        return False  # not a browser (the CLI), or a same-origin GET
    return urlsplit(origin).netloc.lower() != headers.get("host", "").lower()


def _error(status: int, message: str) -> Response:
    # The control API's own error shape.
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")
