"""Accounts and sessions: register, login, logout, devices, logout-all."""

from __future__ import annotations

import hashlib
import logging
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from statelab.domain.errors import LimitExceeded, NotAuthenticated
from statelab.state import Stores
from statelab.state.cart import CartRef
from statelab.state.session import Session
from statelab.web.deps import (
    ANON_COOKIE,
    CART_COOKIE,
    SESSION_COOKIE,
    TOKEN_COOKIE,
    Caller,
    CallerDep,
    StoresDep,
    UncheckedCallerDep,
    UserDep,
    anon_cart,
    anon_csrf_token,
    set_cookie,
    user_cart,
)
from statelab.web.params import Text
from statelab.web.problems import responses

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/auth", tags=["auth"])


class Credentials(BaseModel):
    username: Text = Field(min_length=1, max_length=100)
    password: Text = Field(min_length=1, max_length=200)


class Registered(BaseModel):
    user_id: int
    username: str


class LoggedIn(BaseModel):
    user_id: int
    username: str
    csrf_token: str
    access_token: str | None = None
    token_type: Literal["bearer"] | None = None
    expires_in: int | None = None


class Me(BaseModel):
    user_id: int
    username: str
    session_id: str
    created_at: float
    expires_at: float
    placement: str


class Device(BaseModel):
    id: str
    created_at: float
    expires_at: float
    user_agent: str
    current: bool


class Devices(BaseModel):
    sessions: list[Device]


class Revoked(BaseModel):
    revoked: int = Field(description="Sessions or tokens ended now, on every replica")
    immediate: bool = Field(
        description="false for session=jwt-pure: nothing records its tokens, so none can "
        "be ended early; each stays valid until it expires"
    )
    valid_for_up_to_seconds: int = Field(
        description="How long a credential issued before may still be accepted (0 if none)"
    )


class CsrfToken(BaseModel):
    csrf_token: str


def public_id(sid: str) -> str:
    """A device id that can be shown: the session id itself is a credential."""
    return hashlib.sha256(sid.encode()).hexdigest()[:16]


def client_address(request: Request) -> str:
    """The address the per-address limits count: the peer, or the client a trusted
    proxy names (uvicorn rewrites the peer only for ``trusted_proxies``)."""
    return request.client.host if request.client else "unknown"


@router.post("/register", status_code=201, responses=responses(409, 429))
async def register(body: Credentials, request: Request, stores: StoresDep) -> Registered:
    """Create an account. Each costs a password hash, so a client address gets
    ``register_limit_per_address`` attempts per window (429 + Retry-After beyond)."""
    settings = stores.settings
    await stores.ratelimit.hit(
        "register-address",
        client_address(request),
        settings.register_limit_per_address,
        settings.register_window_seconds,
    )
    user = await stores.users.register(body.username, body.password)
    return Registered(user_id=user.id, username=user.username)


@router.post("/login", response_model_exclude_none=True, responses=responses(401, 429))
async def login(
    body: Credentials,
    request: Request,
    response: Response,
    stores: StoresDep,
    caller: UncheckedCallerDep,
) -> LoggedIn:
    """Check the password, end any session the client came with (no fixation), issue
    a new one, and move the anonymous cart into the user's."""
    settings = stores.settings
    window = settings.login_window_seconds
    address = client_address(request)
    await stores.ratelimit.hit("login-address", address, settings.login_limit_per_address, window)
    name = body.username.strip().lower()
    await stores.ratelimit.hit("login-account", name, settings.login_limit_per_account, window)
    user = await stores.users.authenticate(body.username, body.password)
    if user is None:
        raise NotAuthenticated("invalid username or password")
    if caller.session is not None:
        await _end(request, stores, caller.session)
    issued = await stores.sessions.issue(
        user.id, user.username, request.headers.get("user-agent", "")
    )
    await _merge_anonymous_cart(request, response, stores, caller, issued.session)
    out = LoggedIn(user_id=user.id, username=user.username, csrf_token=issued.session.csrf_token)
    lifetime = int(issued.session.expires_at - issued.session.created_at)
    if stores.sessions.credential == "bearer":
        out.access_token, out.token_type, out.expires_in = issued.credential, "bearer", lifetime
        set_cookie(request, response, stores, TOKEN_COOKIE, issued.credential, lifetime)
    else:
        set_cookie(request, response, stores, SESSION_COOKIE, issued.credential, lifetime)
    return out


async def _merge_anonymous_cart(
    request: Request, response: Response, stores: Stores, caller: Caller, session: Session
) -> None:
    if caller.anon_id is None:
        return
    carried = request.cookies.get(CART_COOKIE)
    anon_ref = CartRef(owner=anon_cart(caller.anon_id), carried=carried)
    user_ref = CartRef(owner=user_cart(session.user_id), carried=carried)
    lines = await stores.carts.get(anon_ref)
    if lines:
        try:
            await stores.carts.add(user_ref, lines)
            await stores.carts.clear(anon_ref)
        except LimitExceeded:
            log.info("anonymous cart not merged: the user's cart is full")
    life = stores.settings.session_absolute_seconds
    if user_ref.changed:
        set_cookie(request, response, stores, CART_COOKIE, user_ref.carried, life)
    set_cookie(request, response, stores, ANON_COOKIE, None, 0)


async def _end(request: Request, stores: Stores, session: Session) -> None:
    """Revoke one session, then run the ``on_logout`` hooks (they close its sockets
    on every replica)."""
    await stores.sessions.revoke(session)
    for hook in getattr(request.app.state, "on_logout", []):
        await hook(session)


@router.post("/logout", status_code=204)
async def logout(request: Request, stores: StoresDep, user: UserDep) -> Response:
    """End this session (and its chat sockets, wherever they are)."""
    await _end(request, stores, user)
    response = Response(status_code=204)
    for name in (SESSION_COOKIE, TOKEN_COOKIE, CART_COOKIE):
        set_cookie(request, response, stores, name, None, 0)
    return response


@router.post("/logout-all")
async def logout_all(
    request: Request, response: Response, stores: StoresDep, user: UserDep
) -> Revoked:
    """Revoke every session or token of the user, on every replica that shares the
    store. A pure token (session=jwt-pure) cannot be revoked: the answer says so
    (``immediate: false``) and for how long one may still be accepted."""
    revoked = await stores.sessions.revoke_all(user.user_id)
    lag = stores.sessions.revocation_lag
    for name in (SESSION_COOKIE, TOKEN_COOKIE, CART_COOKIE):
        set_cookie(request, response, stores, name, None, 0)
    hooks = getattr(request.app.state, "on_logout_all", [])
    for hook in hooks:
        await hook(user.user_id)
    return Revoked(revoked=revoked, immediate=lag == 0, valid_for_up_to_seconds=lag)


@router.get("/me")
async def me(stores: StoresDep, user: UserDep) -> Me:
    return Me(
        user_id=user.user_id,
        username=user.username,
        session_id=public_id(user.sid),
        created_at=user.created_at,
        expires_at=user.expires_at,
        placement=stores.sessions.name,
    )


@router.get("/sessions")
async def sessions(stores: StoresDep, user: UserDep) -> Devices:
    """This user's logged-in devices. The caller's own is always among them, also
    where nothing records sessions (session=jwt-pure lists only that one)."""
    found = await stores.sessions.list_for_user(user.user_id)
    if all(s.sid != user.sid for s in found):
        found = [user, *found]
    return Devices(
        sessions=[
            Device(
                id=public_id(s.sid),
                created_at=s.created_at,
                expires_at=s.expires_at,
                user_agent=s.user_agent,
                current=s.sid == user.sid,
            )
            for s in found
        ]
    )


@router.get("/csrf")
async def csrf(
    request: Request, response: Response, stores: StoresDep, caller: CallerDep
) -> CsrfToken:
    """The token to send as ``X-CSRF-Token`` with cookie-authenticated writes."""
    if caller.session is not None:
        return CsrfToken(csrf_token=caller.session.csrf_token)
    caller.cart_owner  # noqa: B018 - gives a new visitor an anonymous id
    assert caller.anon_id is not None
    if caller.new_anon:
        life = stores.settings.session_absolute_seconds
        set_cookie(request, response, stores, ANON_COOKIE, caller.anon_id, life)
    return CsrfToken(csrf_token=anon_csrf_token(stores.keys.csrf, caller.anon_id))
