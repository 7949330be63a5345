"""Who is logged in: the session placements.

- ``memory``: a dict in this replica. Another replica does not know the session;
  a restart forgets it. That is the point of the stateful placement. It is
  bounded (see ``MemorySessions``).
- ``redis``: an opaque 128-bit id in a cookie, the session in a Redis hash.
- ``jwt``: a signed token the client carries. Nothing is looked up to trust it,
  but logout and logout-all need a shared deny-list, which lives in Redis.
- ``db``: an opaque id in a cookie, the session a row of one SQL table
  (``sessions``): the semantics of ``redis`` (idle and absolute expiry, a device
  list, logout-all) on the database the shop already has. Expired rows are
  deleted by the periodic sweep (``state/timers.py``, ``sweep_sessions``).
- ``jwt-pure``: a signed token and nothing else. No store is asked on any request
  (signature and expiry only), so nothing can end a token before it expires:
  logout only deletes the client's copy and logout-all revokes nothing. That is
  why its lifetime is its own, short setting (``jwt_pure_ttl_seconds``, 5 minutes
  by default): the longest a logged-out or stolen token stays usable.

Every store says how long a credential may still be accepted after ``revoke`` or
``revoke_all`` (``revocation_lag``): 0 where the store ends it at once.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt
from sqlalchemy import Row, Subquery, delete, insert, select, true, update
from sqlalchemy.ext.asyncio import AsyncEngine

from statelab.db import models
from statelab.db.engine import READ_ONLY, writing
from statelab.domain.errors import Unavailable
from statelab.state import keys
from statelab.state.errors import store_guard
from statelab.state.reads import Read, local, read_one
from statelab.state.redislink import RedisLink, pairs

CredentialKind = Literal["cookie", "bearer"]


@dataclass(frozen=True, slots=True)
class Session:
    """An authenticated device of a user."""

    sid: str
    user_id: int
    username: str
    csrf_token: str
    created_at: float
    expires_at: float
    user_agent: str = ""


@dataclass(frozen=True, slots=True)
class Issued:
    """A fresh session and the credential that proves it (cookie value or JWT)."""

    session: Session
    credential: str


@dataclass(frozen=True, slots=True)
class Lifetimes:
    idle: int
    absolute: int


class SessionStore(Protocol):
    """Where sessions live. Every placement answers the same questions."""

    name: str
    credential: CredentialKind
    #: Seconds a credential may still be accepted after ``revoke``/``revoke_all``.
    revocation_lag: int

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued: ...

    async def resolve(self, credential: str) -> Session | None:
        """The live session behind a credential, or None; renews the idle timeout."""
        ...

    def reading(self, credential: str) -> Read[Session | None]:
        """``resolve`` as a ``Read``, to send with other stores' reads."""
        ...

    def claimed_user(self, credential: str) -> int | None:
        """The user a credential says it belongs to, before any store is asked (a
        session id names its user, a token carries it): lets the cart be read in the
        same round trip as the session. Only a resolved session proves it."""
        ...

    async def revoke(self, session: Session) -> None: ...

    async def revoke_all(self, user_id: int) -> int:
        """End every session of the user everywhere; returns how many there were."""
        ...

    async def list_for_user(self, user_id: int) -> list[Session]: ...


async def _nobody() -> None:
    """The answer of a read that needs no store: no session."""


def new_session_id() -> str:
    """128 bits from the OS CSPRNG, URL-safe."""
    return secrets.token_urlsafe(16)


def _new_session(
    user_id: int, username: str, user_agent: str, life: Lifetimes, now: float | None = None
) -> Session:
    now = time.time() if now is None else now
    return Session(
        sid=keys.owned_id(user_id, new_session_id()),  # its user's hash tag: state/keys.py
        user_id=user_id,
        username=username,
        csrf_token=secrets.token_urlsafe(24),
        created_at=now,
        expires_at=now + life.absolute,
        user_agent=user_agent[:200],
    )


class MemorySessions:
    """Sessions in a dict of this process: fast, and gone with the replica.

    Memory is bounded. A session past its idle timeout or absolute lifetime is
    forgotten when it is looked up, and each login first forgets the least recently
    used sessions that have gone idle, so dead sessions never pile up. A user holds
    at most ``per_user`` sessions: a further login ends that user's least recently
    used one (a device limit), so one account cannot fill the replica. At most
    ``max_sessions`` are held; when all of them are live, a new login is refused
    with ``Unavailable`` (503, Retry-After) rather than ending anybody's live session.
    """

    name = "memory"
    credential: CredentialKind = "cookie"
    revocation_lag = 0

    def __init__(
        self,
        life: Lifetimes,
        max_sessions: int,
        per_user: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._life = life
        self._clock = clock
        self._max = max_sessions
        self._per_user = per_user
        # sid -> (session, idle deadline), least recently used first: every use
        # moves a session to the end, so idle-expired ones gather at the front.
        self._sessions: OrderedDict[str, tuple[Session, float]] = OrderedDict()
        self._by_user: dict[int, set[str]] = {}

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued:
        now = self._clock()
        self._sweep(now)
        self._limit_user(user_id)
        if len(self._sessions) >= self._max:
            wait = int(next(iter(self._sessions.values()))[1] - now) + 1
            raise Unavailable(
                f"this replica holds as many live sessions as it may ({self._max}); "
                "try again later",
                retry_after=wait,
            )
        session = _new_session(user_id, username, user_agent, self._life)
        self._sessions[session.sid] = (session, now + self._life.idle)
        self._by_user.setdefault(user_id, set()).add(session.sid)
        return Issued(session, session.sid)

    async def resolve(self, credential: str) -> Session | None:
        now = self._clock()
        session = self._live(credential, now)
        if session is not None:
            self._sessions[credential] = (session, now + self._life.idle)
            self._sessions.move_to_end(credential)
        return session

    def reading(self, credential: str) -> Read[Session | None]:
        return local(lambda: self.resolve(credential))

    def claimed_user(self, credential: str) -> int | None:
        return keys.owner_of(credential)

    async def revoke(self, session: Session) -> None:
        self._forget(session)

    async def revoke_all(self, user_id: int) -> int:
        sids = self._by_user.pop(user_id, set())
        for sid in sids:
            self._sessions.pop(sid, None)
        return len(sids)

    async def list_for_user(self, user_id: int) -> list[Session]:
        now = self._clock()  # listing is no use of the other devices: nothing is renewed
        live = [self._live(sid, now) for sid in list(self._by_user.get(user_id, ()))]
        return sorted((s for s in live if s is not None), key=lambda s: s.created_at)

    def _live(self, sid: str, now: float) -> Session | None:
        """The session if it is live; an expired one is forgotten."""
        entry = self._sessions.get(sid)
        if entry is None:
            return None
        session, idle_deadline = entry
        if now >= idle_deadline or now >= session.expires_at:
            self._forget(session)
            return None
        return session

    def _sweep(self, now: float) -> None:
        """Forget the idle-expired sessions at the front (amortised O(1) a login)."""
        while self._sessions:
            session, idle_deadline = next(iter(self._sessions.values()))
            if now < idle_deadline and now < session.expires_at:
                return
            self._forget(session)

    def _limit_user(self, user_id: int) -> None:
        """Make room for one more session of the user: end their least recently used."""
        sids = self._by_user.get(user_id, set())
        while len(sids) >= self._per_user:
            idlest = min(sids, key=lambda sid: self._sessions[sid][1])
            self._forget(self._sessions[idlest][0])

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.sid, None)
        sids = self._by_user.get(session.user_id)
        if sids is not None:
            sids.discard(session.sid)
            if not sids:  # no empty set left behind per user who ever logged in
                del self._by_user[session.user_id]

    def __len__(self) -> int:
        return len(self._sessions)


def _to_hash(session: Session) -> list[str]:
    """HSET's field/value arguments for a session."""
    return [
        *("uid", str(session.user_id)),
        *("user", session.username),
        *("csrf", session.csrf_token),
        *("created", repr(session.created_at)),
        *("expires", repr(session.expires_at)),
        *("ua", session.user_agent),
        *("touched", repr(session.created_at)),
    ]


def _from_hash(sid: str, raw: dict[str, str]) -> Session | None:
    try:
        return Session(
            sid=sid,
            user_id=int(raw["uid"]),
            username=raw["user"],
            csrf_token=raw["csrf"],
            created_at=float(raw["created"]),
            expires_at=float(raw["expires"]),
            user_agent=raw.get("ua", ""),
        )
    except (KeyError, ValueError):
        return None


async def _store_session(
    redis: RedisLink, key: str, index: str, session: Session, ttl: int, index_ttl: int
) -> None:
    """The session's hash (expiring after ``ttl``) and its entry in the user's index,
    from which expired entries are pruned; one transaction."""
    with store_guard("redis"):
        await redis.batch(
            [
                ("HSET", key, *_to_hash(session)),
                ("EXPIRE", key, ttl),
                ("ZADD", index, repr(session.expires_at), session.sid),
                ("ZREMRANGEBYSCORE", index, "-inf", repr(time.time())),
                ("EXPIRE", index, index_ttl),
            ],
            transaction=True,
        )


async def _load_sessions(
    redis: RedisLink, ids: list[str], key: Callable[[str], str]
) -> list[Session]:
    """The sessions stored under ``key(id)`` for each id, oldest first; one round trip."""
    raws = await redis.batch([("HGETALL", key(sid)) for sid in ids]) if ids else []
    found = [_from_hash(sid, pairs(raw)) for sid, raw in zip(ids, raws, strict=True) if raw]
    return sorted((s for s in found if s is not None), key=lambda s: s.created_at)


class RedisSessions:
    """Sessions in Redis hashes: any replica resolves any session in one round trip."""

    name = "redis"
    credential: CredentialKind = "cookie"
    revocation_lag = 0

    def __init__(self, redis: RedisLink, life: Lifetimes) -> None:
        self._redis = redis
        self._life = life

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued:
        session = _new_session(user_id, username, user_agent, self._life)
        await _store_session(
            self._redis,
            keys.session(session.sid),
            keys.user_sessions(user_id),
            session,
            ttl=self._life.idle,
            index_ttl=self._life.absolute,
        )
        return Issued(session, session.sid)

    async def resolve(self, credential: str) -> Session | None:
        return await read_one(self._redis, self.reading(credential))

    def reading(self, credential: str) -> Read[Session | None]:
        """One HGETALL per request. The idle timeout is renewed only when a tenth of
        it has passed since the last renewal, so most requests cost one command and
        the effective idle timeout lies between 90% and 100% of the setting."""
        key = keys.session(credential)

        async def answer(replies: list[Any]) -> Session | None:
            return await self._live(credential, key, pairs(replies[0]))

        return Read([("HGETALL", key)], answer)

    async def _live(self, sid: str, key: str, raw: dict[str, str]) -> Session | None:
        session = _from_hash(sid, raw) if raw else None
        if session is None:
            return None
        now = time.time()
        if now >= session.expires_at:
            await self.revoke(session)
            return None
        if now - float(raw.get("touched", 0)) > self._life.idle / 10:
            with store_guard("redis"):
                await self._redis.batch(
                    [("EXPIRE", key, self._life.idle, "XX"), ("HSET", key, "touched", repr(now))]
                )
        return session

    def claimed_user(self, credential: str) -> int | None:
        return keys.owner_of(credential)

    async def revoke(self, session: Session) -> None:
        with store_guard("redis"):
            await self._redis.batch(
                [
                    ("DEL", keys.session(session.sid)),
                    ("ZREM", keys.user_sessions(session.user_id), session.sid),
                ],
                transaction=True,
            )

    async def revoke_all(self, user_id: int) -> int:
        index = keys.user_sessions(user_id)
        with store_guard("redis"):
            sids: list[str] = await self._redis.call("ZRANGE", index, 0, -1)
            deletes = [("DEL", keys.session(sid)) for sid in sids]
            results = await self._redis.batch([*deletes, ("DEL", index)], transaction=True)
        return sum(int(r) for r in results[:-1])

    async def list_for_user(self, user_id: int) -> list[Session]:
        with store_guard("redis"):
            sids = await self._redis.call("ZRANGE", keys.user_sessions(user_id), 0, -1)
            return await _load_sessions(self._redis, sids, keys.session)


@dataclass(frozen=True, slots=True)
class JwtConfig:
    keys: Mapping[str, bytes]  # kid -> HMAC key; more than one during a key rotation
    active_kid: str
    issuer: str
    audience: str
    ttl: int
    verified_cache: int = 50_000  # tokens remembered as verified (see JwtCodec.decode)


#: The only algorithm accepted. Never read the algorithm from the token itself.
JWT_ALGORITHMS = ["HS256"]
_REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti"]
_LEEWAY = 5  # seconds of clock skew tolerated between replicas


def _session_of_claims(claims: dict[str, Any]) -> Session | None:
    try:
        return Session(
            sid=str(claims["jti"]),
            user_id=int(claims["sub"]),
            username=str(claims.get("name", "")),
            csrf_token=str(claims.get("csrf", "")),
            created_at=float(claims.get("auth_time", claims["iat"])),
            expires_at=float(claims["exp"]),
        )
    except (TypeError, ValueError):
        return None


class JwtCodec:
    """Signs sessions into tokens and verifies tokens back into sessions (HS256,
    a ``kid`` per key, every claim required); no store is involved."""

    def __init__(self, config: JwtConfig) -> None:
        if config.active_kid not in config.keys:
            raise ValueError(f"jwt active kid {config.active_kid!r} has no key")
        self.config = config
        # token -> its verified claims and the session they describe (None if none)
        self._verified: dict[str, tuple[dict[str, Any], Session | None]] = {}

    def new_session(self, user_id: int, username: str, user_agent: str) -> Session:
        """A session that lives as long as its token."""
        life = Lifetimes(idle=self.config.ttl, absolute=self.config.ttl)
        return _new_session(user_id, username, user_agent, life)

    def sign(self, session: Session) -> str:
        cfg = self.config
        claims = {
            "sub": str(session.user_id),
            "name": session.username,
            "jti": session.sid,
            "csrf": session.csrf_token,
            "iat": int(session.created_at),
            "auth_time": session.created_at,
            "exp": int(session.expires_at),
            "iss": cfg.issuer,
            "aud": cfg.audience,
        }
        return jwt.encode(
            claims, cfg.keys[cfg.active_kid], algorithm="HS256", headers={"kid": cfg.active_kid}
        )

    def session(self, token: str) -> Session | None:
        """The session a valid token carries; None if any check fails."""
        verified = self._verified_entry(token)
        return verified[1] if verified is not None else None

    def decode(self, token: str) -> dict[str, Any] | None:
        """Verify signature, algorithm, issuer, audience and expiry; None if any fails."""
        verified = self._verified_entry(token)
        return verified[0] if verified is not None else None

    def _verified_entry(self, token: str) -> tuple[dict[str, Any], Session | None] | None:
        """A token's claims and session, verified. A token verified once is remembered
        (bounded) with them: the same bytes under the same keys verify the same way,
        so only expiry is checked again. Verifying costs ~200 µs in PyJWT, more than
        the rest of a cart request."""
        verified = self._verified.get(token)
        if verified is not None:
            if float(verified[0]["exp"]) + _LEEWAY > time.time():
                return verified
            del self._verified[token]
            return None
        claims = self._verify(token)
        if claims is None:
            return None
        if len(self._verified) >= self.config.verified_cache:
            # The oldest: tokens share one lifetime, so it is the nearest to expiry.
            del self._verified[next(iter(self._verified))]
        verified = self._verified[token] = (claims, _session_of_claims(claims))
        return verified

    def _verify(self, token: str) -> dict[str, Any] | None:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.config.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                return None
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=JWT_ALGORITHMS,
                audience=self.config.audience,
                issuer=self.config.issuer,
                options={"require": _REQUIRED_CLAIMS},
                leeway=_LEEWAY,
            )
        except jwt.PyJWTError:
            return None
        return claims


class JwtSessions:
    """Identity in a signed token. Revocation needs Redis again: a deny-list."""

    name = "jwt"
    credential: CredentialKind = "bearer"
    revocation_lag = 0

    def __init__(self, redis: RedisLink, config: JwtConfig) -> None:
        self._codec = JwtCodec(config)
        self._redis = redis
        self._config = config

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued:
        session = self._codec.new_session(user_id, username, user_agent)
        token = self._codec.sign(session)
        await self._record(session)
        return Issued(session, token)

    async def _record(self, session: Session) -> None:
        ttl = self._config.ttl
        index = keys.user_tokens(session.user_id)
        await _store_session(self._redis, keys.token(session.sid), index, session, ttl, ttl)

    def decode(self, token: str) -> dict[str, Any] | None:
        """The verified claims of a token (``JwtCodec.decode``)."""
        return self._codec.decode(token)

    async def resolve(self, credential: str) -> Session | None:
        return await read_one(self._redis, self.reading(credential))

    def reading(self, credential: str) -> Read[Session | None]:
        """The signature and expiry here (``JwtCodec``), then one MGET of the
        deny-list: the token's own entry (logout) and its user's cutoff (logout-all)."""
        session = self._codec.session(credential)
        if session is None:
            return local(_nobody)

        async def answer(replies: list[Any]) -> Session | None:
            denied, cutoff = replies[0]
            if denied is not None or (cutoff is not None and session.created_at <= float(cutoff)):
                return None
            return session

        deny = ("MGET", keys.denied_token(session.sid), keys.denied_before(session.user_id))
        return Read([deny], answer)

    def claimed_user(self, credential: str) -> int | None:
        session = self._codec.session(credential)
        return session.user_id if session is not None else None

    async def revoke(self, session: Session) -> None:
        ttl = max(1, int(session.expires_at - time.time()) + _LEEWAY)
        with store_guard("redis"):
            await self._redis.batch(
                [
                    ("SET", keys.denied_token(session.sid), "1", "EX", ttl),
                    ("ZREM", keys.user_tokens(session.user_id), session.sid),
                    ("DEL", keys.token(session.sid)),
                ],
                transaction=True,
            )

    async def revoke_all(self, user_id: int) -> int:
        index = keys.user_tokens(user_id)
        with store_guard("redis"):
            jtis: list[str] = await self._redis.call(
                "ZRANGEBYSCORE", index, repr(time.time()), "+inf"
            )
            cutoff = (
                "SET",
                keys.denied_before(user_id),
                repr(time.time()),
                "EX",
                self._config.ttl + _LEEWAY,
            )
            deletes = [("DEL", keys.token(jti)) for jti in jtis]
            await self._redis.batch([cutoff, *deletes, ("DEL", index)], transaction=True)
        return len(jtis)

    async def list_for_user(self, user_id: int) -> list[Session]:
        index = keys.user_tokens(user_id)
        with store_guard("redis"):
            jtis = await self._redis.call("ZRANGEBYSCORE", index, repr(time.time()), "+inf")
            return await _load_sessions(self._redis, jtis, keys.token)


class PureJwtSessions:
    """Identity in a signed token and nothing else: no store on any request.

    ``resolve`` checks the signature and the expiry, in this process. Nothing is
    recorded when a token is issued, so there is no device list (``list_for_user``
    is empty) and nothing to revoke: ``revoke`` and ``revoke_all`` end no token; a
    token already issued is accepted until it expires (``revocation_lag``: its
    lifetime plus the clock-skew leeway)."""

    name = "jwt-pure"
    credential: CredentialKind = "bearer"

    def __init__(self, config: JwtConfig) -> None:
        self._codec = JwtCodec(config)
        self.revocation_lag = config.ttl + _LEEWAY

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued:
        session = self._codec.new_session(user_id, username, user_agent)
        return Issued(session, self._codec.sign(session))

    async def resolve(self, credential: str) -> Session | None:
        return self._codec.session(credential)

    def reading(self, credential: str) -> Read[Session | None]:
        return local(lambda: self.resolve(credential))

    def claimed_user(self, credential: str) -> int | None:
        session = self._codec.session(credential)
        return session.user_id if session is not None else None

    async def revoke(self, session: Session) -> None:
        """Nothing to do: the token stays valid until it expires (the client's copy
        is deleted by the caller)."""

    async def revoke_all(self, user_id: int) -> int:
        """Nothing can be revoked: no token of the user was recorded anywhere."""
        return 0

    async def list_for_user(self, user_id: int) -> list[Session]:
        """Nothing is recorded, so no device is known."""
        return []


# ------------------------------------------------------------------------------ db

_T = models.LoginSession
#: The columns a lookup reads, in ``Session``'s order, then the two deadlines.
_COLUMNS = (
    _T.sid,
    _T.user_id,
    _T.username,
    _T.csrf_token,
    _T.created_at,
    _T.expires_at,
    _T.user_agent,
    _T.live_until,
    _T.touched_at,
)


def _session_of(row: Row[*tuple[Any, ...]]) -> Session:
    return Session(
        sid=row.sid,
        user_id=row.user_id,
        username=row.username,
        csrf_token=row.csrf_token,
        created_at=row.created_at,
        expires_at=row.expires_at,
        user_agent=row.user_agent,
    )


#: The shape of the ids ``_new_session`` makes (``<user id>.<URL-safe random>``, see
#: ``keys.owned_id``); anything else is no session id and is refused before a query
#: (a cookie's bytes are the client's to choose; the column holds 64 characters).
_SESSION_ID = re.compile(r"[A-Za-z0-9_.-]{16,64}")


class SqlSessions:
    """Sessions as rows of one SQL table, with the semantics of ``RedisSessions``.

    A request costs one primary-key read, outside any transaction (on SQLite it
    waits for no writer: ``READ_ONLY``); the idle deadline is renewed (one UPDATE)
    only when a tenth of the idle timeout has passed since the last renewal, so the
    effective idle timeout lies between 90% and 100% of the setting. A row past its
    deadline is never answered; the periodic sweep deletes it (``sweep_sessions``)."""

    name = "db"
    credential: CredentialKind = "cookie"
    revocation_lag = 0

    def __init__(
        self, engine: AsyncEngine, life: Lifetimes, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self._life = life
        self._clock = clock

    async def issue(self, user_id: int, username: str, user_agent: str) -> Issued:
        session = _new_session(user_id, username, user_agent, self._life, self._clock())
        now = session.created_at
        row = {
            "sid": session.sid,
            "user_id": user_id,
            "username": username,
            "csrf_token": session.csrf_token,
            "user_agent": session.user_agent,
            "created_at": now,
            "expires_at": session.expires_at,
            "live_until": min(now + self._life.idle, session.expires_at),
            "touched_at": now,
        }
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await conn.execute(insert(_T).values(row))
        return Issued(session, session.sid)

    async def resolve(self, credential: str) -> Session | None:
        session, _ = await self.resolve_beside(credential, None)
        return session

    async def resolve_beside(
        self, credential: str, beside: Subquery | None
    ) -> tuple[Session | None, list[Row[*tuple[Any, ...]]]]:
        """``resolve``, with the rows of ``beside`` read by the same statement (each
        row of the answer is the session's, joined to one of them; none if they have
        none): one query where two stores share the database. No session: no rows."""
        if not _SESSION_ID.fullmatch(credential):
            return None, []
        query = select(*_COLUMNS).where(_T.sid == credential)
        if beside is not None:
            query = query.add_columns(*beside.c).outerjoin(beside, true())
        with store_guard("database"):
            async with self._engine.connect() as conn:
                await conn.execution_options(**READ_ONLY)
                rows: list[Row[*tuple[Any, ...]]] = list(await conn.execute(query))
        now = self._clock()
        if not rows or now >= rows[0].live_until:
            return None, []
        row = rows[0]
        if now - row.touched_at > self._life.idle / 10:
            await self._renew(credential, min(now + self._life.idle, row.expires_at), now)
        return _session_of(row), rows

    def reading(self, credential: str) -> Read[Session | None]:
        return local(lambda: self.resolve(credential))

    def claimed_user(self, credential: str) -> int | None:
        return keys.owner_of(credential)

    async def _renew(self, sid: str, live_until: float, now: float) -> None:
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await conn.execute(
                    update(_T)
                    .where(_T.sid == sid, _T.live_until > now)
                    .values(live_until=live_until, touched_at=now)
                )

    async def revoke(self, session: Session) -> None:
        with store_guard("database"):
            async with writing(self._engine) as conn:
                await conn.execute(delete(_T).where(_T.sid == session.sid))

    async def revoke_all(self, user_id: int) -> int:
        with store_guard("database"):
            async with writing(self._engine) as conn:
                ended = await conn.execute(
                    delete(_T).where(_T.user_id == user_id).returning(_T.live_until)
                )
                deadlines = list(ended.scalars())
        now = self._clock()
        return sum(1 for deadline in deadlines if deadline > now)  # the live ones

    async def list_for_user(self, user_id: int) -> list[Session]:
        with store_guard("database"):
            async with self._engine.connect() as conn:
                await conn.execution_options(**READ_ONLY)
                rows = await conn.execute(
                    select(*_COLUMNS)
                    .where(_T.user_id == user_id, _T.live_until > self._clock())
                    .order_by(_T.created_at)
                )
                return [_session_of(row) for row in rows]


async def sweep_sessions(engine: AsyncEngine, now: float) -> int:
    """Delete the SQL sessions past their deadline; returns how many."""
    with store_guard("database"):
        async with writing(engine) as conn:
            result = await conn.execute(delete(_T).where(_T.live_until <= now))
    return int(result.rowcount)
