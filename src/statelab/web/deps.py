"""Request dependencies: the stores, who is calling, CSRF, carts, idempotency keys.

Routes take these through ``Annotated`` aliases (``StoresDep``, ``CallerDep``,
``UserDep``, ``IdemDep``, ``ShopperDep``) so each route reads as what it needs.

FastAPI spends ~15 µs on each dependency it solves, as much as a whole store read,
so none of these depends on another but for ``UserDep``: each finds the stores on
the app itself (``stores_of``). The cart routes, the hot path of the shop, take one
dependency (``ShopperDep``) that reads the session, the cart and the menu in one
round trip.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Literal

import orjson
from fastapi import Depends, Request, Response
from starlette.requests import HTTPConnection

from statelab.domain.errors import Forbidden, MalformedRequest, NotAuthenticated
from statelab.domain.shop import CartLines, Menu
from statelab.state import Stores
from statelab.state.cart import CartRef
from statelab.state.ledger import Idempotency
from statelab.state.session import Session

SESSION_COOKIE = "statelab_session"
TOKEN_COOKIE = "statelab_token"
ANON_COOKIE = "statelab_anon"
CART_COOKIE = "statelab_cart"
CSRF_HEADER = "X-CSRF-Token"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def stores_of(conn: HTTPConnection) -> Stores:
    """The replica's stores (opened by the app's lifespan)."""
    stores: Stores = conn.app.state.stores
    return stores


async def get_stores(request: Request) -> Stores:
    return stores_of(request)


StoresDep = Annotated[Stores, Depends(get_stores)]


#: Through which credential a caller is known.
Via = Literal["cookie", "bearer", "none"]


@dataclass
class Caller:
    """Who sent the request, and through which credential."""

    session: Session | None
    via: Via
    anon_id: str | None
    new_anon: bool = False
    cookies_out: dict[str, str | None] = field(default_factory=dict)

    @property
    def cart_owner(self) -> str:
        if self.session is not None:
            return user_cart(self.session.user_id)
        if self.anon_id is None:  # first anonymous write: a new visitor
            self.anon_id, self.new_anon = secrets.token_urlsafe(16), True
        return anon_cart(self.anon_id)


def user_cart(user_id: int) -> str:
    """The cart owner of a logged-in user."""
    return f"u:{user_id}"


def anon_cart(anon_id: str) -> str:
    """The cart owner of an anonymous visitor (the id in their cookie)."""
    return f"a:{anon_id}"


def anon_csrf_token(key: bytes, anon_id: str) -> str:
    """CSRF token of an anonymous visitor, derived so no server has to keep it; ``key``
    is the CSRF purpose's key (``stores.keys.csrf``)."""
    mac = hmac.new(key, f"csrf:{anon_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def _bearer(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _credential(request: HTTPConnection, stores: Stores) -> tuple[str | None, Via]:
    """The credential sent, and how: a bearer token first where sessions are tokens."""
    if stores.sessions.credential == "bearer":
        token = _bearer(request)
        if token is not None:
            return token, "bearer"
        cookie = request.cookies.get(TOKEN_COOKIE)
    else:
        cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, "cookie") if cookie else (None, "none")


def _caller(request: HTTPConnection, session: Session | None, via: Via) -> Caller:
    # A cookie that proves nobody counts as no cookie; a bearer token never does (it
    # cannot be forged into a cross-site request, so no CSRF check applies to it).
    if session is None and via == "cookie":
        via = "none"
    return Caller(session, via, request.cookies.get(ANON_COOKIE) or None)


async def _resolve(request: HTTPConnection, stores: Stores) -> Caller:
    credential, via = _credential(request, stores)
    session = await stores.sessions.resolve(credential) if credential else None
    return _caller(request, session, via)


async def resolve_caller(conn: HTTPConnection, stores: Stores) -> Caller:
    """Who opened a connection that is not a plain request (a WebSocket): the same
    cookie and bearer rules as for HTTP. CSRF does not apply; the Origin check does."""
    return await _resolve(conn, stores)


def _check_csrf(request: Request, stores: Stores, caller: Caller) -> None:
    """Cookie-authenticated writes must echo a token a cross-site page cannot read."""
    if request.method not in UNSAFE or caller.via == "bearer":
        return
    if caller.session is not None:
        expected = caller.session.csrf_token
    elif caller.anon_id is not None:
        expected = anon_csrf_token(stores.keys.csrf, caller.anon_id)
    else:
        return  # no cookie identifies the caller: nothing a forged request could use
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise Forbidden(f"missing or wrong {CSRF_HEADER} header for a cookie-authenticated write")


async def get_caller(request: Request) -> Caller:
    stores = stores_of(request)
    caller = await _resolve(request, stores)
    _check_csrf(request, stores, caller)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_caller_unchecked(request: Request) -> Caller:
    """The caller without the CSRF check: only for login, which uses no cookie's
    authority (JSON-only bodies already keep cross-site forms out)."""
    return await _resolve(request, stores_of(request))


UncheckedCallerDep = Annotated[Caller, Depends(get_caller_unchecked)]


async def get_user(caller: CallerDep) -> Session:
    if caller.session is None:
        raise NotAuthenticated("log in first: no valid session or token was sent")
    return caller.session


UserDep = Annotated[Session, Depends(get_user)]


def cart_ref(request: Request, caller: Caller) -> CartRef:
    return CartRef(owner=caller.cart_owner, carried=request.cookies.get(CART_COOKIE))


@dataclass(slots=True)
class Shopper:
    """A request of the cart routes: who is calling, whose cart, and what was read
    in the same round trip as the session: the menu, and on GET the cart's lines
    (a write gets the cart back from its store instead)."""

    request: Request
    stores: Stores
    caller: Caller
    menu: Menu
    lines: CartLines | None = None
    ref: CartRef | None = None  # None: none named yet (a visitor with no id, reading)

    def cart(self) -> CartRef:
        """The caller's cart, for a write: a new visitor gets an anonymous id here."""
        if self.ref is None:
            self.ref = cart_ref(self.request, self.caller)
        return self.ref


async def get_shopper(request: Request) -> Shopper:
    """Resolve the caller and read the menu, and on GET the cart, in one round trip.

    The cart read with the session is the one of the user the credential names
    (``claimed_user``), which only the session proves: should it prove nobody (an
    expired session, a forged id), that read is dropped and the right cart read after."""
    stores = stores_of(request)
    credential, via = _credential(request, stores)
    reading = request.method == "GET"
    ahead = _cart_ahead(request, stores, credential) if reading else None
    session, lines, menu = await stores.look_up(credential, ahead)
    caller = _caller(request, session, via)
    _check_csrf(request, stores, caller)
    shopper = Shopper(request, stores, caller, menu)
    if not reading:
        return shopper
    if caller.session is None and caller.anon_id is None:
        shopper.lines = {}  # a visitor who never wrote has no cart (and gets no id)
        return shopper
    ref = shopper.cart()
    shopper.lines = lines if ahead is not None and ahead.owner == ref.owner else None
    if shopper.lines is None:
        shopper.lines = await stores.carts.get(ref)
    return shopper


def _cart_ahead(request: Request, stores: Stores, credential: str | None) -> CartRef | None:
    """The cart to read with the session: the claimed user's, else the anonymous
    visitor's, else none."""
    claimed = stores.sessions.claimed_user(credential) if credential else None
    anon = request.cookies.get(ANON_COOKIE) or None
    owner = user_cart(claimed) if claimed is not None else anon_cart(anon) if anon else None
    return CartRef(owner, request.cookies.get(CART_COOKIE)) if owner else None


ShopperDep = Annotated[Shopper, Depends(get_shopper)]


def cookie_secure(request: Request, stores: Stores) -> bool:
    mode = stores.settings.cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def set_cookie(
    request: Request, response: Response, stores: Stores, name: str, value: str | None, max_age: int
) -> None:
    """Every cookie we set: HttpOnly, SameSite=Lax, Secure when served over TLS."""
    secure = cookie_secure(request, stores)
    if value is None:
        response.delete_cookie(name, path="/", secure=secure, httponly=True, samesite="lax")
        return
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax"
    )


def finish_cart(
    request: Request, response: Response, stores: Stores, caller: Caller, ref: CartRef
) -> None:
    """Write back what the client carries: its anonymous id and a client-side cart."""
    life = stores.settings.session_absolute_seconds
    if caller.new_anon and caller.anon_id is not None:
        set_cookie(request, response, stores, ANON_COOKIE, caller.anon_id, life)
    if ref.changed:
        set_cookie(request, response, stores, CART_COOKIE, ref.carried, life)


async def get_idempotency(request: Request) -> Idempotency:
    """The Idempotency-Key header and a fingerprint of the request it came with."""
    key = request.headers.get("idempotency-key")
    if key is None:
        raise MalformedRequest("this request moves money: send an Idempotency-Key header")
    if not 1 <= len(key) <= 200 or not key.isascii() or not key.isprintable():
        raise MalformedRequest("Idempotency-Key must be 1-200 printable ASCII characters")
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(_canonical(await request.body()))
    return Idempotency(key, digest.hexdigest())


def _canonical(body: bytes) -> bytes:
    """The body with key order and whitespace normalised, so equal JSON matches."""
    try:
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        return body


IdemDep = Annotated[Idempotency, Depends(get_idempotency)]
