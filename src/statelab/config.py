"""Typed settings: the profile, where each kind of state lives, URLs, secrets, limits.

Settings are built once in ``main()`` or by a test and passed to ``create_app`` —
never at import time. Every field also reads from ``STATELAB_<NAME>``.
"""

from __future__ import annotations

import ipaddress
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from statelab.keyring import secret_problem
from statelab.redisurl import parse_redis_url


class Profile(StrEnum):
    stateful = "stateful"
    stateless = "stateless"
    token = "token"


#: Every state kind and the placements it accepts; the first is the stateful one.
PLACEMENTS: dict[str, tuple[str, ...]] = {
    "session": ("memory", "redis", "jwt", "db", "jwt-pure"),
    "cart": ("memory", "redis", "client", "db"),
    "ledger": ("memory", "db", "replicated"),
    "chat": ("memory", "redis"),
    "files": ("disk", "objects"),
    "jobs": ("inprocess", "queue"),
    "ratelimit": ("memory", "redis"),
    "cache": ("memory", "redis"),
    "timers": ("inprocess", "scheduler"),
}

PROFILES: dict[Profile, dict[str, str]] = {
    Profile.stateful: {
        "session": "memory",
        "cart": "memory",
        "ledger": "memory",
        "chat": "memory",
        "files": "disk",
        "jobs": "inprocess",
        "ratelimit": "memory",
        "cache": "memory",
        "timers": "inprocess",
    },
    Profile.stateless: {
        "session": "redis",
        "cart": "redis",
        "ledger": "db",
        "chat": "redis",
        "files": "objects",
        "jobs": "queue",
        "ratelimit": "redis",
        "cache": "redis",
        "timers": "scheduler",
    },
    Profile.token: {
        "session": "jwt",
        "cart": "client",
        "ledger": "db",
        "chat": "redis",
        "files": "objects",
        "jobs": "queue",
        "ratelimit": "redis",
        "cache": "redis",
        "timers": "scheduler",
    },
}

#: Placements that cannot work without a Redis server.
NEEDS_REDIS: frozenset[tuple[str, str]] = frozenset(
    {
        ("session", "redis"),
        ("session", "jwt"),  # the deny-list that makes logout-all possible
        ("cart", "redis"),
        ("chat", "redis"),
        ("jobs", "queue"),
        ("ratelimit", "redis"),
        ("ledger", "replicated"),  # the replication log is a Redis Stream
        ("cache", "redis"),
        ("timers", "scheduler"),  # its schedule and runs go through the job queue
    }
)

#: Placements that only work beside another one: (kind, placement) -> (kind, placement).
REQUIRES: dict[tuple[str, str], tuple[str, str]] = {
    # The schedule is kept in the job queue and run by ``statelab worker``.
    ("timers", "scheduler"): ("jobs", "queue"),
}


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one."""


def parse_place(values: list[str] | None) -> dict[str, str]:
    """Parse ``--place KIND=PLACEMENT`` options into a mapping, naming what is wrong."""
    result: dict[str, str] = {}
    for raw in values or []:
        kind, sep, placement = raw.partition("=")
        kind, placement = kind.strip(), placement.strip()
        if not sep or kind not in PLACEMENTS:
            known = ", ".join(PLACEMENTS)
            raise ConfigError(f"--place {raw!r}: expected KIND=PLACEMENT with KIND one of {known}")
        if placement not in PLACEMENTS[kind]:
            allowed = "|".join(PLACEMENTS[kind])
            raise ConfigError(f"--place {raw!r}: {kind} placement must be one of {allowed}")
        result[kind] = placement
    return result


def resolve_placements(profile: Profile, place: dict[str, str]) -> dict[str, str]:
    """The profile's placements with the ``--place`` overrides applied.

    A profile's default that an override makes impossible (``REQUIRES``) gives way to
    the kind's stateful placement: ``--profile stateless --place jobs=inprocess`` has
    no worker to run a schedule, so its timers run in-process. A placement asked for
    explicitly never gives way (``placement_conflict`` names it)."""
    placements = {**PROFILES[profile], **place}
    for (kind, placement), (other, needed) in REQUIRES.items():
        if kind not in place and placements[kind] == placement and placements[other] != needed:
            placements[kind] = PLACEMENTS[kind][0]
    return placements


def placement_conflict(placements: dict[str, str]) -> str | None:
    """What is impossible about a full set of placements (``REQUIRES``), naming the
    option to change; None when it can run."""
    for (kind, placement), (other, needed) in REQUIRES.items():
        if placements.get(kind) == placement and placements.get(other) != needed:
            return (
                f"--place {kind}={placement} needs {other}={needed} "
                f"(this set has {other}={placements.get(other)}): "
                f"add --place {other}={needed} or choose another {kind} placement"
            )
    return None


def database_url_async(url: str) -> str:
    """Turn the plain URL a user types into one with an asyncio driver."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"--database-url {url!r}: expected sqlite:///PATH or postgresql://...")
    base = scheme.split("+", 1)[0]
    if base == "sqlite":
        return f"sqlite+aiosqlite://{rest}"
    if base in ("postgresql", "postgres"):
        return f"postgresql+asyncpg://{rest}"
    raise ConfigError(f"--database-url {url!r}: only sqlite and postgresql are supported")


class Settings(BaseSettings):
    """Everything one replica needs to know. Built once and passed down."""

    model_config = SettingsConfigDict(env_prefix="STATELAB_", extra="ignore", frozen=True)

    profile: Profile = Profile.stateless
    # STATELAB_PLACE as the CLI reads it: space-separated KIND=PLACEMENT, not JSON.
    place: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    replica_id: str = "r1"
    host: str = "127.0.0.1"
    port: int = 8000
    # The load balancers allowed to name the client in X-Forwarded-For/-Proto:
    # addresses or networks, comma-separated in STATELAB_TRUSTED_PROXIES. The
    # per-address rate limits count that client address, so any other peer must
    # not be able to choose its own.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"]
    )
    redis_url: str | None = None
    # Replicas every Redis write made by a script or transaction (carts, sessions)
    # must reach before it is acknowledged (WAIT); 0: asynchronous replication, which
    # can lose acknowledged writes when a replica is promoted (state/redislink.py).
    redis_wait_replicas: int = Field(default=0, ge=0, le=10)
    redis_wait_timeout_ms: int = Field(default=1000, ge=1, le=60_000)
    database_url: str = "sqlite:///statelab.db"
    data_dir: Path = Path("data")
    object_store_url: str | None = None

    # Secrets: a random one per process (the development key) is only usable with
    # a single replica; a cluster passes one shared value. Weak ones are refused
    # (the rule: statelab.keyring). Every key is derived from it, one per purpose.
    secret_key: str = Field(default_factory=lambda: secrets.token_hex(32))
    jwt_keys: dict[str, str] = Field(default_factory=dict)
    jwt_active_kid: str = "k1"
    jwt_issuer: str = "statelab"
    jwt_audience: str = "statelab-shop"
    jwt_ttl_seconds: int = 900
    # session=jwt-pure: nothing can revoke a pure token before it expires, so its
    # lifetime is the longest a stolen or logged-out token stays usable: kept short.
    jwt_pure_ttl_seconds: int = Field(default=300, ge=1, le=24 * 3600)

    session_idle_seconds: int = 1800
    session_absolute_seconds: int = 12 * 3600
    cookie_secure: Literal["auto", "always", "never"] = "auto"

    login_limit_per_account: int = 10
    login_limit_per_address: int = 30
    login_window_seconds: int = 60
    # Each registration costs a password hash (argon2: memory and CPU), so a client
    # address gets a few per window, on every replica together (ratelimit=redis).
    register_limit_per_address: int = Field(default=20, ge=1)
    register_window_seconds: int = Field(default=3600, ge=1)

    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 10 * 1024 * 1024
    max_cart_lines: int = 30
    max_line_quantity: int = 50
    max_client_cart_bytes: int = 3000
    max_message_chars: int = 2000
    # How long a money move's Idempotency-Key is remembered (then swept); the memory
    # ledger also forgets the oldest keys beyond its bound.
    idempotency_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    max_memory_idempotency_keys: int = Field(default=100_000, ge=1)
    # Bounds of what a replica keeps in memory (placements memory), so a flood of
    # visitors or logins cannot grow it without limit; what gives way first is
    # documented in state/cart.py, state/session.py and state/ratelimit.py.
    max_memory_carts: int = Field(default=100_000, ge=1)
    max_memory_sessions: int = Field(default=100_000, ge=1)
    max_sessions_per_user: int = Field(default=50, ge=1)
    max_rate_windows: int = Field(default=100_000, ge=1)
    max_verified_tokens: int = Field(default=50_000, ge=1)
    # Largest image decoded for a thumbnail, in pixels (width x height): decoding
    # holds up to 4 bytes a pixel, so 24 megapixels (a 6000x4000 photo) ~ 96 MB.
    max_image_pixels: int = Field(default=24_000_000, ge=1)
    graceful_timeout_seconds: float = 10.0
    drain_seconds: float = 1.0
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19 * 1024
    chat_presence_ttl_seconds: float = 30.0
    chat_typing_ttl_seconds: float = 6.0
    chat_rooms_per_user: int = 50
    chat_frames_per_second: float = 10.0
    chat_frame_burst: int = 30
    chat_send_queue_frames: int = 500
    # Sockets one user may hold on one replica; the next is closed with 1008.
    chat_sockets_per_user: int = Field(default=10, ge=1)
    # How often a socket re-checks that its session or token was not revoked
    # (besides closing at its expiry time): at least every minute.
    chat_session_check_seconds: float = Field(default=30.0, gt=0, le=60)
    # How often a replica compares its sockets' cursors with each room's newest message:
    # a live frame lost on the way (a publish into a failing-over Redis) still arrives.
    chat_catch_up_seconds: float = Field(default=2.0, gt=0, le=60)
    # Jobs: a queued job whose heartbeat is silent this long is redelivered; one
    # running longer than the timeout is cancelled and retried. The hold makes
    # each job pause half-way (lab and tests use it to kill a process mid-job).
    job_heartbeat_seconds: int = 5
    job_timeout_seconds: int = 120
    job_hold_seconds: float = 0.0
    # Periodic work (timers placement): the sales summary, the sweep of expired SQL
    # sessions and carts and of old idempotency keys run once per period, at its start.
    timer_period_seconds: int = Field(default=60, ge=1, le=24 * 3600)
    # The menu cache (cache placement): how old a replica's own copy may get before
    # it is reloaded (memory), or the shared copy's TTL, a backstop (redis).
    cache_ttl_seconds: float = Field(default=30.0, gt=0, le=24 * 3600)

    @field_validator("secret_key")
    @classmethod
    def _strong_secret(cls, value: str) -> str:
        problem = secret_problem(value)
        if problem is not None:
            raise ValueError(f"STATELAB_SECRET_KEY {problem}")
        return value

    @field_validator("jwt_keys")
    @classmethod
    def _strong_jwt_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for kid, key in value.items():
            problem = secret_problem(key)
            if problem is not None:
                raise ValueError(f"jwt key {kid!r} {problem}")
        return value

    @field_validator("place", mode="before")
    @classmethod
    def _split_place(cls, value: Any) -> Any:
        if isinstance(value, str):  # STATELAB_PLACE="cart=client session=jwt"
            return parse_place(value.split())
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):  # STATELAB_TRUSTED_PROXIES=10.0.0.5,10.1.0.0/16
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_addresses(cls, value: list[str]) -> list[str]:
        # uvicorn would take a malformed entry for a literal and silently trust nothing.
        try:
            return [
                str(ipaddress.ip_network(v) if "/" in v else ipaddress.ip_address(v)) for v in value
            ]
        except ValueError as exc:
            hint = "give addresses or networks such as 10.0.0.0/8"
            raise ValueError(f"{exc} ({hint})") from None

    @field_validator("redis_url")
    @classmethod
    def _known_redis_url(cls, value: str | None) -> str | None:
        if value is not None:
            parse_redis_url(value)  # one server, Sentinel or Cluster: statelab.redisurl
        return value

    @model_validator(mode="after")
    def _check_placements(self) -> Self:
        for kind, placement in self.place.items():
            if kind not in PLACEMENTS or placement not in PLACEMENTS[kind]:
                raise ValueError(f"place {kind}={placement} is not a known placement")
        conflict = placement_conflict(self.placements)
        if conflict is not None:
            raise ValueError(conflict)
        if self.redis_url is None:
            needy = [f"{k}={p}" for k, p in self.placements.items() if (k, p) in NEEDS_REDIS]
            if needy:
                raise ValueError(
                    f"--redis-url is required by {', '.join(needy)} "
                    f"(profile {self.profile.value}); give one or --place the kind elsewhere"
                )
        database_url_async(self.database_url)
        return self

    @property
    def placements(self) -> dict[str, str]:
        """The profile's placements with the ``--place`` overrides applied."""
        return resolve_placements(self.profile, self.place)

    def placement(self, kind: str) -> str:
        return self.placements[kind]

    @property
    def async_database_url(self) -> str:
        return database_url_async(self.database_url)

    @property
    def chat_max_frame_bytes(self) -> int:
        """The largest WebSocket frame a client may send: a ``send`` with the longest
        text, every character JSON-escaped (``\\uXXXX``, 6 bytes), or a ``resume`` of
        every room (an id of up to 32 characters and a sequence number, 64 bytes), plus
        1 KiB for the rest of the frame."""
        longest = max(self.max_message_chars * 6, self.chat_rooms_per_user * 64)
        return longest + 1024

    @property
    def development_secret(self) -> bool:
        """Whether the secret is this process's random development key (none was
        given): nothing it signs can be verified by another replica or a restart."""
        return "secret_key" not in self.model_fields_set


def build_settings(**values: Any) -> Settings:
    """Build settings from keyword values (``None`` means "not given") and the environment."""
    given = {k: v for k, v in values.items() if v is not None}
    try:
        return Settings(**given)
    except ValueError as exc:
        raise ConfigError(_first_error(exc)) from exc


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        return f"{where}: {first.get('msg', exc)}".removeprefix("settings: ").removeprefix(
            "Value error, "
        )
    return str(exc)
