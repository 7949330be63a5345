"""The shop in the browser: server-rendered pages over the same stores as the JSON API.

Each page is rendered from the stores on the replica that serves it, so a reload
shows exactly what that replica knows (the point of the lab: after a replica dies,
a stateless deployment still knows Alice, a stateful one forgot her). Actions on a
page are plain JavaScript ``fetch`` calls to the JSON API under ``/api`` with the
``X-CSRF-Token`` header, so there is one implementation of every rule and every
error message. Pages never take form posts of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from statelab.config import Settings
from statelab.domain.errors import RateLimited, StatelabError, Unavailable
from statelab.domain.shop import CartLines, price
from statelab.state import Stores
from statelab.web.deps import Caller, CallerDep, StoresDep, anon_csrf_token, cart_ref
from statelab.web.problems import status_of

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")

#: Pages are personal and must be re-read from the replica on every reload; they
#: load nothing from elsewhere (no CDN), which the policy makes a rule.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
}

#: The navigation, in order: (path, label, needs a logged-in user).
NAV: tuple[tuple[str, str, bool], ...] = (
    ("/menu", "Menu", False),
    ("/cart", "Cart", False),
    ("/orders", "Orders", True),
    ("/account", "Account", True),
    ("/chat", "Chat", True),
    ("/photos", "Photos", True),
)


def _static_version() -> str:
    """Changes when a static file changes, so browsers never run stale scripts."""
    stamps = [int(p.stat().st_mtime) for p in STATIC_DIR.iterdir() if p.is_file()]
    return format(max(stamps, default=0), "x")


TEMPLATES.env.globals["static_version"] = _static_version()


class PageRoute(APIRoute):
    """A route whose domain errors become an HTML page instead of problem+json:
    a person reading a page should get a page (with the replica badge) back."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except StatelabError as exc:
                return _error_page(request, exc)

        return handle


router = APIRouter(include_in_schema=False, route_class=PageRoute)


def _error_page(request: Request, exc: StatelabError) -> Response:
    status, _ = status_of(exc)
    settings: Settings = request.app.state.settings
    headers = dict(PAGE_HEADERS)
    if isinstance(exc, RateLimited | Unavailable):
        headers["Retry-After"] = str(exc.retry_after)
    context = {
        **_chrome(request, settings, None, "", 0, ""),
        "title": exc.title,
        "detail": exc.detail,
        "status": status,
    }
    return TEMPLATES.TemplateResponse(request, "error.html", context, status, headers)


def _chrome(
    request: Request,
    settings: Settings,
    username: str | None,
    csrf: str,
    cart_count: int,
    page: str,
) -> dict[str, Any]:
    """What every page shows: who served it, the profile, who is logged in."""
    placements: Mapping[str, str] = settings.placements
    return {
        "replica": settings.replica_id,
        "profile": settings.profile.value,
        "overrides": dict(settings.place),
        "placements": placements,
        "username": username,
        "csrf": csrf,
        "cart_count": cart_count,
        "page": page,
        "nav": [(path, label) for path, label, private in NAV if username or not private],
        "path": request.url.path,
    }


async def _cart_lines(request: Request, stores: Stores, caller: Caller) -> CartLines:
    """The caller's cart; a visitor who never wrote has none (and gets no id here)."""
    if caller.session is None and caller.anon_id is None:
        return {}
    return await stores.carts.get(cart_ref(request, caller))


async def _render(
    request: Request,
    stores: Stores,
    caller: Caller,
    page: str,
    template: str,
    *,
    lines: CartLines | None = None,
    **context: Any,
) -> Response:
    if lines is None:
        lines = await _cart_lines(request, stores, caller)
    csrf = ""
    if caller.session is not None:
        csrf = caller.session.csrf_token
    elif caller.anon_id is not None:
        csrf = anon_csrf_token(stores.keys.csrf, caller.anon_id)
    username = caller.session.username if caller.session is not None else None
    chrome = _chrome(request, stores.settings, username, csrf, sum(lines.values()), page)
    full = {**chrome, "cart_lines": lines, **context}
    return TEMPLATES.TemplateResponse(request, template, full, headers=PAGE_HEADERS)


def _login_first(request: Request) -> Response:
    """Send an anonymous visitor to the login page, and back here afterwards."""
    target = request.url.path
    if request.url.query:
        target += "?" + request.url.query
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", 303, PAGE_HEADERS)


def safe_next(value: str | None) -> str:
    """Only local paths: ``next`` must never send a user to another site.

    A browser resolving a URL drops tabs and newlines anywhere and control characters
    at its ends, and reads a backslash as a slash, so ``/\t/evil.example`` becomes
    ``//evil.example``: another host. Accept a path only when it, and its decoded form
    too (in case something decodes it once more), starts with exactly one ``/`` and
    holds no backslash and nothing unprintable."""
    if not value or not all(_local_path(v) for v in (value, unquote(value))):
        return "/menu"
    return value


def _local_path(path: str) -> bool:
    # isprintable() is False for control, format and separator characters (not space).
    return (
        path.startswith("/")
        and not path.startswith("//")
        and "\\" not in path
        and path.isprintable()
        and path == path.strip()
    )


def money(cents: int) -> str:
    """Integer cents as the page shows them."""
    sign = "-" if cents < 0 else ""
    whole, rest = divmod(abs(cents), 100)
    return f"{sign}€{whole}.{rest:02d}"


TEMPLATES.env.filters["money"] = money


@router.get("/")
async def home(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    """Where state lives in this deployment, and the way into the shop."""
    return await _render(request, stores, caller, "home", "home.html")


@router.get("/menu")
async def menu_page(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    kinds: dict[str, list[Any]] = {}
    for item in (await stores.menu.cached()).items:
        kinds.setdefault(item.kind, []).append(item)
    return await _render(request, stores, caller, "menu", "menu.html", kinds=kinds)


@router.get("/cart")
async def cart_page(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    lines = await _cart_lines(request, stores, caller)
    priced = price(lines, await stores.menu.cached())
    return await _render(request, stores, caller, "cart", "cart.html", lines=lines, cart=priced)


@router.get("/login")
async def login_page(
    request: Request, stores: StoresDep, caller: CallerDep, next: str | None = None
) -> Response:
    return await _render(
        request, stores, caller, "login", "login.html", next=safe_next(next), mode="login"
    )


@router.get("/register")
async def register_page(
    request: Request, stores: StoresDep, caller: CallerDep, next: str | None = None
) -> Response:
    return await _render(
        request, stores, caller, "register", "login.html", next=safe_next(next), mode="register"
    )


@router.get("/orders")
async def orders_page(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    if caller.session is None:
        return _login_first(request)
    found = await stores.ledger.orders(caller.session.user_id)
    return await _render(request, stores, caller, "orders", "orders.html", orders=found)


@router.get("/account")
async def account_page(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    session = caller.session
    if session is None:
        return _login_first(request)
    balance = await stores.ledger.balance(session.user_id)
    devices = await stores.sessions.list_for_user(session.user_id)
    return await _render(
        request,
        stores,
        caller,
        "account",
        "account.html",
        balance=balance,
        devices=[(d, d.sid == session.sid) for d in devices],
        session_placement=stores.sessions.name,
    )


@router.get("/chat")
async def chat_page(
    request: Request, stores: StoresDep, caller: CallerDep, room: str | None = None
) -> Response:
    """Rooms, online list, typing and unread counts; the socket is opened by chat.js."""
    if caller.session is None:
        return _login_first(request)
    return await _render(
        request,
        stores,
        caller,
        "chat",
        "chat.html",
        room=room if room and len(room) <= 32 else None,
        max_chars=stores.settings.max_message_chars,
    )


@router.get("/photos")
async def photos_page(request: Request, stores: StoresDep, caller: CallerDep) -> Response:
    """Your photos and their thumbnails; uploads go to ``/api/files`` from app.js."""
    session = caller.session
    if session is None:
        return _login_first(request)
    found = await stores.files.list(session.user_id)
    limit = stores.settings.max_upload_bytes
    return await _render(
        request,
        stores,
        caller,
        "photos",
        "photos.html",
        photos=[f for f in found if f.purpose == "photo"],
        max_bytes=limit,
        max_mb=round(limit / 2**20, 1),
        files_placement=stores.files.name,
        jobs_placement=stores.settings.placement("jobs"),
    )


def install(app: FastAPI) -> None:
    """Add the pages and their static files (``/static``) to a replica's app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
