"""Every Redis key statelab writes, with its lifetime and why.

Key names are part of the data format: the ``v1`` segment changes when a value's
shape does, so a rolling deploy never reads a value written in another shape.
"""

from __future__ import annotations

PREFIX = "statelab:v1:"


def session(sid: str) -> str:
    """HASH of one server-side session. TTL: the idle timeout, renewed on use."""
    return f"{PREFIX}session:{sid}"


def user_sessions(user_id: int) -> str:
    """ZSET sid -> absolute expiry of a user's sessions, for the devices list and
    logout-all. TTL: the absolute session lifetime, renewed at each login."""
    return f"{PREFIX}user-sessions:{user_id}"


def token(jti: str) -> str:
    """HASH describing one issued JWT (device, issue time) for the devices list.
    TTL: the token's own expiry; the token itself is never stored."""
    return f"{PREFIX}token:{jti}"


def user_tokens(user_id: int) -> str:
    """ZSET jti -> expiry of a user's issued JWTs. TTL: the token lifetime."""
    return f"{PREFIX}user-tokens:{user_id}"


def denied_token(jti: str) -> str:
    """A revoked JWT id (logout). TTL: until the token would expire anyway."""
    return f"{PREFIX}deny:jti:{jti}"


def denied_before(user_id: int) -> str:
    """Time (float seconds) before which every JWT of the user is revoked
    (logout-all). TTL: the token lifetime, after which no older token is valid."""
    return f"{PREFIX}deny:user:{user_id}"


def cart(owner: str) -> str:
    """HASH menu item id -> quantity. TTL: the session's absolute lifetime, renewed
    on every write, so abandoned anonymous carts go away by themselves."""
    return f"{PREFIX}cart:{owner}"


def rate(scope: str, subject: str) -> str:
    """Counter of attempts in the current fixed window. TTL: the window."""
    return f"{PREFIX}rate:{scope}:{subject}"


def chat_where(user_id: int) -> str:
    """ZSET replica id -> expiry (unix ms) of the replicas holding a socket of the
    user: the presence registry. Each replica refreshes its entries every third of
    the presence TTL; a killed replica's entry is past its score within the TTL and
    dropped on the next write. Key TTL: the presence TTL, renewed by every write."""
    return f"{PREFIX}chat:where:{user_id}"


def chat_online() -> str:
    """ZSET ``"<user_id>:<username>"`` -> latest expiry (unix ms) over the user's
    replicas: who is online. A member past its score is swept (and announced as
    offline) by whichever replica sweeps first. Key TTL: the presence TTL, renewed
    by every heartbeat, so it vanishes when every replica is gone."""
    return f"{PREFIX}chat:online"


def chat_typing(room_id: str) -> str:
    """ZSET username -> expiry (unix ms) of who is typing in a room. Entries past
    their score are ignored and trimmed on the next write. Key TTL: the typing TTL,
    renewed by each typing frame, so an idle room keeps nothing."""
    return f"{PREFIX}chat:typing:{room_id}"


def chat_room_channel(room_id: str) -> str:
    """Pub/sub channel of a room's live events (messages, typing, presence). Not
    stored, so no TTL: only replicas with a socket in the room subscribe."""
    return f"{PREFIX}chat:room:{room_id}"


def chat_replica_channel(replica_id: str) -> str:
    """Pub/sub channel of events for users on one replica (close their sockets,
    read marks from another device). Not stored, so no TTL."""
    return f"{PREFIX}chat:replica:{replica_id}"


def job_queue() -> str:
    """Name of the saq job queue. saq derives its own keys from it:
    ``saq:<name>:queued`` / ``:active`` (LISTs of job ids), ``:incomplete``,
    ``:schedule``, ``:stats``, ``:sweep`` and ``saq:job:<name>:<job key>`` (one
    record per job, kept ``JobPolicy.ttl`` after it finishes so that enqueueing
    the same key again is ignored). Queued jobs have no TTL: they wait for a worker."""
    return f"{PREFIX}jobs"


def worker_alive(worker_id: str) -> str:
    """JSON ``{"pid", "started", "jobs"}`` of a running ``statelab worker``: its
    readiness. TTL: three heartbeat periods, refreshed every period, so a killed
    worker's key goes away by itself."""
    return f"{PREFIX}worker:{worker_id}"


def menu() -> str:
    """HASH ``version`` (the menu's version, see ``state/menu.py``) and ``items`` (JSON)
    of the shared menu cache (``cache=redis``): replaced by the replica that changes a
    price, and only ever by a newer version. TTL: ``cache_ttl_seconds``, a backstop
    should a replacement ever fail."""
    return f"{PREFIX}menu"
