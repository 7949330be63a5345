"""A shop customer as the lab plays one: an HTTP client with a cookie jar that
logs every request's outcome, so failures can be lined up with the cluster's
events afterwards."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

PASSWORD = "lab-password-123"


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float  # wall-clock seconds, comparable with the supervisor's event times
    method: str
    path: str
    status: int  # 0: no HTTP answer at all (connection refused or reset, timeout)
    served_by: str
    ms: float

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Log:
    """Every request the lab made in one scenario run."""

    outcomes: list[Outcome] = field(default_factory=list)

    def statuses(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[str(o.status)] = counts.get(str(o.status), 0) + 1
        return counts

    def served_by(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for o in self.outcomes:
            if o.served_by:
                counts[o.served_by] = counts.get(o.served_by, 0) + 1
        return counts

    def failed(self) -> int:
        return sum(1 for o in self.outcomes if o.status == 0 or o.status >= 500)

    def as_json(self, limit: int = 4000) -> list[list[Any]]:
        """Compact rows ``[t, status, served_by, ms]`` for the report's timeline."""
        step = max(1, len(self.outcomes) // limit)
        return [
            [round(o.at, 3), o.status, o.served_by, round(o.ms, 2)] for o in self.outcomes[::step]
        ]


class Shopper:
    """One customer with one browser-like cookie jar."""

    def __init__(self, base_url: str, name: str, log: Log, timeout: float = 10.0) -> None:
        self.name = name
        self.log = log
        self.client = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.auth: dict[str, str] = {}
        self.last_served_by = ""
        self.last_status = 0

    async def close(self) -> None:
        await self.client.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        """One request; None when no HTTP answer came back (it is logged as status 0)."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        started, at = time.perf_counter(), time.time()
        try:
            response = await self.client.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError:
            self.log.outcomes.append(Outcome(at, method, path, 0, "", _ms(started)))
            self.last_status = 0
            return None
        self.last_status = response.status_code
        self.last_served_by = response.headers.get("X-Served-By", "")
        self.log.outcomes.append(
            Outcome(at, method, path, response.status_code, self.last_served_by, _ms(started))
        )
        return response

    async def register_and_login(self) -> bool:
        creds = {"username": self.name, "password": PASSWORD}
        await self.request("POST", "/api/auth/register", json=creds)
        return await self.login()

    async def login(self) -> bool:
        creds = {"username": self.name, "password": PASSWORD}
        r = await self.request("POST", "/api/auth/login", json=creds)
        if r is None or r.status_code != 200:
            return False
        body = r.json()
        if "access_token" in body:
            self.auth = {"Authorization": f"Bearer {body['access_token']}"}
        else:
            self.auth = {"X-CSRF-Token": body["csrf_token"]}
        return True

    async def logged_in(self) -> bool:
        r = await self.request("GET", "/api/auth/me")
        return r is not None and r.status_code == 200

    async def add(self, item_id: int, quantity: int = 1) -> bool:
        r = await self.request(
            "POST", "/api/cart/items", json={"item_id": item_id, "quantity": quantity}
        )
        return r is not None and r.status_code == 200

    async def cart(self) -> dict[int, int] | None:
        r = await self.request("GET", "/api/cart")
        if r is None or r.status_code != 200:
            return None
        return {line["item_id"]: line["quantity"] for line in r.json()["items"]}

    async def money(self, path: str, key: str | None = None, **body: int) -> httpx.Response | None:
        """A money move with an Idempotency-Key (a fresh one unless given)."""
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return await self.request("POST", path, json=body or None, headers=headers)

    async def checkout(self, key: str | None = None) -> httpx.Response | None:
        """Pay the cart at the total the shop just showed (it refuses, 409, if a price
        changed since)."""
        cart = await self.request("GET", "/api/cart")
        total = (
            int(cart.json()["total_cents"]) if cart is not None and cart.status_code == 200 else 0
        )
        return await self.money("/api/checkout", key, expected_total_cents=total)

    async def balance(self) -> int | None:
        r = await self.request("GET", "/api/account")
        return int(r.json()["balance_cents"]) if r is not None and r.status_code == 200 else None


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
