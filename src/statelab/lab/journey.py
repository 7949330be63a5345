"""Alice's short journey across two replicas, played as a client would.

Two real ``statelab serve`` processes share one Redis and one SQLite file. Alice
logs in and fills her cart through replica r1; her next requests land on r2.
With shared stores r2 knows her; with the stateful profile it does not.
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from statelab.cluster.servers import ManagedProcess, RedisServer, free_port
from statelab.db.migrate import upgrade

PASSWORD = "alice-likes-pizza"


@dataclass
class Step:
    replica: str
    action: str
    outcome: str


@dataclass
class JourneyResult:
    profile: str
    steps: list[Step] = field(default_factory=list)
    session_survived: bool = False
    cart_seen_on_r2: int = 0
    balance_seen_on_r2: int = 0


def _replica(
    run_dir: Path, profile: str, rid: str, env: dict[str, str]
) -> tuple[ManagedProcess, int]:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "statelab",
        "serve",
        "--profile",
        profile,
        "--port",
        str(port),
        "--replica-id",
        rid,
    ]

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=0.5).status_code == 200
        except httpx.TransportError:
            return False

    proc = ManagedProcess(f"{profile}-{rid}", run_dir, argv, env={**os.environ, **env}, ready=ready)
    return proc, port


@contextmanager
def _deployment(run_dir: Path, profile: str, redis_url: str) -> Iterator[dict[str, str]]:
    """Two replicas of ``profile``; yields replica id -> base URL."""
    database = f"sqlite:///{run_dir / f'{profile}.db'}"
    upgrade(database)
    env = {
        "STATELAB_REDIS_URL": redis_url,
        "STATELAB_DATABASE_URL": database,
        "STATELAB_SECRET_KEY": secrets.token_urlsafe(32),
    }
    with ExitStack() as stack:
        urls = {}
        for rid in ("r1", "r2"):
            data = {**env, "STATELAB_DATA_DIR": str(run_dir / rid)}
            replica, port = _replica(run_dir, profile, rid, data)
            stack.enter_context(replica)
            urls[rid] = f"http://127.0.0.1:{port}"
        yield urls


def _auth(login: httpx.Response) -> dict[str, str]:
    body = login.json()
    if "access_token" in body:
        return {"Authorization": f"Bearer {body['access_token']}"}
    return {"X-CSRF-Token": body["csrf_token"]}


def play(profile: str, urls: dict[str, str]) -> JourneyResult:
    """Register and shop through r1, then continue through r2 with the same cookies."""
    result = JourneyResult(profile)
    with httpx.Client(timeout=10) as alice:
        r1, r2 = urls["r1"], urls["r2"]
        creds = {"username": "alice", "password": PASSWORD}
        alice.post(f"{r1}/api/auth/register", json=creds)
        login = alice.post(f"{r1}/api/auth/login", json=creds)
        headers = _auth(login)
        result.steps.append(Step("r1", "log in", str(login.status_code)))
        cart = alice.post(
            f"{r1}/api/cart/items", json={"item_id": 1, "quantity": 1}, headers=headers
        )
        result.steps.append(
            Step("r1", "add a Margherita", f"cart total {cart.json()['total_cents']}")
        )
        top = alice.post(
            f"{r1}/api/account/top-up",
            json={"amount_cents": 2000},
            headers={**headers, "Idempotency-Key": secrets.token_hex(8)},
        )
        result.steps.append(Step("r1", "top up 20.00", f"balance {top.json()['balance_cents']}"))

        me = alice.get(f"{r2}/api/auth/me", headers=headers)
        result.session_survived = me.status_code == 200
        result.steps.append(Step(me.headers["X-Served-By"], "who am I?", _who(me)))
        seen = alice.get(f"{r2}/api/cart", headers=headers).json()
        result.cart_seen_on_r2 = sum(line["quantity"] for line in seen["items"])
        result.steps.append(Step("r2", "read the cart", f"{result.cart_seen_on_r2} item(s)"))
        if result.session_survived:
            balance = alice.get(f"{r2}/api/account", headers=headers).json()["balance_cents"]
            result.balance_seen_on_r2 = balance
            result.steps.append(Step("r2", "read the balance", f"balance {balance}"))
    return result


def _who(me: httpx.Response) -> str:
    return f"alice (session {me.json()['placement']})" if me.status_code == 200 else "401: unknown"


def run(profiles: tuple[str, ...] = ("stateless", "stateful")) -> list[JourneyResult]:
    """Start Redis and two replicas per profile, play the journey, stop everything."""
    results = []
    with tempfile.TemporaryDirectory(prefix="statelab-journey-") as tmp:
        run_dir = Path(tmp)
        with RedisServer(run_dir / "redis") as redis:
            for profile in profiles:
                with _deployment(run_dir, profile, redis.url) as urls:
                    results.append(play(profile, urls))
    return results
