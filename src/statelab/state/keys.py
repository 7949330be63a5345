"""Every Redis key statelab writes, with its lifetime and why.

Key names are part of the data format: the ``v2`` segment changes when a value's
shape or a key's name does, so a rolling deploy never reads a value written in
another shape.

Hash tags (Redis Cluster): a cluster stores each key in one of 16384 hash slots,
chosen by the part of the name inside the first ``{...}``, and refuses a
transaction or script whose keys lie in more than one slot. Keys used together
therefore share a tag:

- ``{u<user id>}``: a user's sessions and their index, issued JWTs, their index
  and the deny-list entries checked together. A session id (and a JWT id) is
  ``<user id>.<random>`` (``owned_id``), so the key of a session found by its id
  alone lands in the slot of its user's index;
- ``{presence}``: the chat presence registry (every user's replicas, and who is
  online), written together by one script. One slot serves all presence: the
  price of updating "who is online" atomically;
- ``{<queue name>}``: every key of the job queue (saq derives them from the name);
- every other key is used alone, and spreads over the slots by its whole name.

Without a cluster the braces are just characters of the name.
"""

from __future__ import annotations

PREFIX = "statelab:v2:"


def owned_id(user_id: int, random: str) -> str:
    """A session or token id that carries its user's hash tag: ``<user id>.<random>``."""
    return f"{user_id}.{random}"


def user_tag(user_id: int) -> str:
    """The hash tag of everything of one user that is written together."""
    return f"{{u{user_id}}}"


def owner_of(owned: str) -> int | None:
    """The user id an ``owned_id`` names (as the client sent it: unverified), or None
    for an id of another form. Only ASCII digits of a 64-bit id: ``"²".isdigit()`` is
    true, and ``int`` refuses it, as it refuses thousands of digits."""
    owner, dot, _ = owned.partition(".")
    if dot and owner.isascii() and owner.isdigit() and len(owner) <= 19:
        return int(owner)
    return None


def _tag_of(owned: str) -> str:
    # An id not of the owned form (forged, or from before v2) gets a tag of its own:
    # it finds nothing, wherever it lands.
    owner = owner_of(owned)
    return user_tag(owner) if owner is not None else f"{{{owned}}}"


def session(sid: str) -> str:
    """HASH of one server-side session. TTL: the idle timeout, renewed on use."""
    return f"{PREFIX}{_tag_of(sid)}:session:{sid}"


def user_sessions(user_id: int) -> str:
    """ZSET sid -> absolute expiry of a user's sessions, for the devices list and
    logout-all. TTL: the absolute session lifetime, renewed at each login."""
    return f"{PREFIX}{user_tag(user_id)}:user-sessions"


def token(jti: str) -> str:
    """HASH describing one issued JWT (device, issue time) for the devices list.
    TTL: the token's own expiry; the token itself is never stored."""
    return f"{PREFIX}{_tag_of(jti)}:token:{jti}"


def user_tokens(user_id: int) -> str:
    """ZSET jti -> expiry of a user's issued JWTs. TTL: the token lifetime."""
    return f"{PREFIX}{user_tag(user_id)}:user-tokens"


def denied_token(jti: str) -> str:
    """A revoked JWT id (logout). TTL: until the token would expire anyway."""
    return f"{PREFIX}{_tag_of(jti)}:deny:jti:{jti}"


def denied_before(user_id: int) -> str:
    """Time (float seconds) before which every JWT of the user is revoked
    (logout-all). TTL: the token lifetime, after which no older token is valid."""
    return f"{PREFIX}{user_tag(user_id)}:deny:user"


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
    return f"{PREFIX}{{presence}}:chat:where:{user_id}"


def chat_online() -> str:
    """ZSET ``"<user_id>:<username>"`` -> latest expiry (unix ms) over the user's
    replicas: who is online. A member past its score is swept (and announced as
    offline) by whichever replica sweeps first. Key TTL: the presence TTL, renewed
    by every heartbeat, so it vanishes when every replica is gone."""
    return f"{PREFIX}{{presence}}:chat:online"


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
    """Name of the saq job queue, a hash tag as a whole. saq derives its keys from it:
    ``saq:<name>:queued`` / ``:active`` (LISTs of job ids), ``:incomplete``,
    ``:schedule``, ``:stats``, ``:sweep`` and ``saq:job:<name>:<job key>`` (one
    record per job, kept ``JobPolicy.ttl`` after it finishes so that enqueueing
    the same key again is ignored). Queued jobs have no TTL: they wait for a worker."""
    return f"{{{PREFIX}jobs}}"


def job_key(key: str) -> str:
    """A job's key as given to saq: saq names the job's abort flag after the key
    alone (``saq:abort:<key>``) and touches it in one script with the queue's keys,
    so the key carries the queue's hash tag too."""
    return f"{job_queue()}:{key}"


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


def ledger_log() -> str:
    """STREAM of the replicated ledger's commands (``ledger=replicated``), in the one
    order every replica applies them. Fields: ``cmd`` (the command as JSON) and
    ``prev`` (the id of the entry before, written by the appending script, so a copy
    notices a log that lost entries). No TTL and no trimming: it is the ledger itself,
    replayed from its first entry by every replica that starts
    (``state/replicated_ledger.py``). One key, so one slot in a cluster."""
    return f"{PREFIX}ledger:log"
