"""Load from ``wrk``: logged-in users replaying the cart workload, closed-loop to find
saturation or paced to hold a rate.

``wrk`` (C, event-driven, from Debian) uses a fraction of the CPU a Python client
would, so the shop — not the load generator — is what saturates. A Lua script sends
the requests as logged-in users in turn, four cart reads for each item added (a
shop page's workload). Pacing: each connection waits ``pause_ms`` before
its next request, so ``connections / (pause + latency)`` requests per second are
offered; ``paced`` picks the connection count for a target rate from one short
calibration run. wrk has no open-loop mode (its fork wrk2 is not packaged), so a
slow answer delays that connection's next request: latency percentiles are
honest at moderate load and flattering at saturation.

The ``read`` workload is the cart page alone: ``GET /api/cart`` of users who each
have two lines in their cart (``login_users(..., cart=READ_CART)``).
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from statelab.cluster.servers import MissingBinary

WORKLOAD = "cart: 4 x GET /api/cart per POST /api/cart/items, one logged-in user per connection"
READ_WORKLOAD = "read: GET /api/cart of logged-in users with 2 lines in their cart"

Workload = Literal["cart", "read"]

#: The cart each user of the ``read`` workload has: a pizza and a drink.
READ_CART: dict[int, int] = {1: 1, 10: 1}

# Requests go out as the users in turn (wrk's Lua state is per thread, not per
# connection); 1 in ``add_every`` requests adds an item (0: none, the read workload).
# The done() callback prints the latency distribution for the report's CDF plots.
CART_LUA = r"""
local users = {}
local counter = 0
for line in io.lines("%(users)s") do users[#users + 1] = line end
function setup(thread) counter = counter + 1; thread:set("tid", counter) end
function init(args) n = 0 end
function delay() return %(pause)d end
function request()
  n = n + 1
  local me = users[(n + tid) %% #users + 1]
  local cookie, header = me:match("^(.-)\t(.*)$")
  local headers = {["Content-Type"] = "application/json"}
  if cookie ~= "" then headers["Cookie"] = cookie end
  local name, value = header:match("^(.-): (.*)$")
  headers[name] = value
  if %(add_every)d > 0 and n %% %(add_every)d == 0 then
    return wrk.format("POST", "/api/cart/items", headers, '{"item_id": 1, "quantity": 1}')
  end
  return wrk.format("GET", "/api/cart", headers)
end
function done(summary, latency, requests)
  io.write("CDF")
  for p = 2, 98, 2 do io.write(string.format(" %%.3f", latency:percentile(p) / 1000)) end
  -- wrk's percentile(100) answers 0: the slowest request is latency.max.
  io.write(string.format(" %%.3f\n", latency.max / 1000))
end
"""


# Weighted reads: each line of the users file is "weight<TAB>cookie"; every request
# goes out as a user drawn with probability proportional to its weight (seeded).
WEIGHTED_LUA = r"""
local cookies, cumulative, total = {}, {}, 0
for line in io.lines("%(users)s") do
  local weight, cookie = line:match("^([%%d.]+)\t(.*)$")
  total = total + tonumber(weight)
  cookies[#cookies + 1] = cookie
  cumulative[#cumulative + 1] = total
end
function init(args) math.randomseed(%(seed)d) end
function request()
  local x, lo, hi = math.random() * total, 1, #cumulative
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cumulative[mid] < x then lo = mid + 1 else hi = mid end
  end
  return wrk.format("GET", "/api/cart", {["Cookie"] = cookies[lo]})
end
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # answers that were not 2xx or 3xx, and socket errors (timeouts too)
    requests: int = 0
    cdf_ms: list[float] = field(default_factory=list)  # latency at 2, 4, ... 100 %
    non_2xx: int = 0  # of the errors, those that were answers


def _unit_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(output: str) -> WrkResult:
    """Requests/s, p50, p99, errors and the CDF from ``wrk --latency`` output."""
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise ValueError(f"not wrk output: {output[:200]!r}")
    pct = {
        p: _unit_ms(v, u)
        for p, v, u in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    }
    non_2xx = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    errors = non_2xx + (sum(int(n) for n in socket.groups()) if socket else 0)
    total = re.search(r"(\d+) requests in", output)
    cdf = re.search(r"^CDF((?: [\d.]+)+)$", output, re.M)
    return WrkResult(
        rps=float(found.group(1)),
        p50_ms=round(pct.get("50", 0.0), 3),
        p99_ms=round(pct.get("99", 0.0), 3),
        errors=errors,
        non_2xx=non_2xx,
        requests=int(total.group(1)) if total else 0,
        cdf_ms=[float(v) for v in cdf.group(1).split()] if cdf else [],
    )


def login_users(
    url: str,
    count: int,
    users_file: Path,
    prefix: str = "load",
    cart: Mapping[int, int] | None = None,
) -> None:
    """Register and log in ``count`` users through ``url``, each adding ``cart``
    (item id -> quantity) to its cart; write one credential line per user (cookies,
    including a load balancer's stickiness cookie and a cart kept by the client, a
    tab, and the header that authenticates writes)."""
    lines = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(count):
            creds = {"username": f"{prefix}{i:04d}", "password": "load-password-1"}
            client.cookies.clear()
            client.post("/api/auth/register", json=creds)
            r = client.post("/api/auth/login", json=creds)
            r.raise_for_status()
            body = r.json()
            token = body.get("access_token")
            name, value = (
                ("Authorization", f"Bearer {token}")
                if token
                else ("X-CSRF-Token", body["csrf_token"])
            )
            for item_id, quantity in (cart or {}).items():
                added = client.post(
                    "/api/cart/items",
                    json={"item_id": item_id, "quantity": quantity},
                    headers={name: value},
                )
                added.raise_for_status()
            # Read after the adds: a cart kept by the client comes back as a cookie. A
            # token goes as the header only, not also as the cookie that carries it.
            cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items() if v != token)
            lines.append(f"{cookie}\t{name}: {value}")
    users_file.write_text("\n".join(lines) + "\n")


def cart_of_first(url: str, users_file: Path) -> dict[int, int]:
    """The cart (item id -> quantity) the first user of ``users_file`` reads, sent
    exactly as wrk sends it: a check that the load reads what it is meant to."""
    cookie, header = users_file.read_text().splitlines()[0].split("\t")
    name, value = header.split(": ", 1)
    headers = {name: value} | ({"Cookie": cookie} if cookie else {})
    r = httpx.get(f"{url}/api/cart", headers=headers, timeout=10)
    r.raise_for_status()
    return {line["item_id"]: line["quantity"] for line in r.json()["items"]}


def _run_wrk(
    url: str, script: Path, connections: int, seconds: float, cpus: Collection[int] | None
) -> WrkResult:
    """wrk with one thread (it saturates a Python replica with room to spare) on
    ``cpus`` when given: set in the child before wrk starts, so every thread it
    creates inherits the mask."""
    binary = shutil.which("wrk")
    if binary is None:
        raise MissingBinary("wrk not found: install it with `apt-get install wrk`")
    duration = f"{max(1, round(seconds))}s"
    argv = [binary, "-t1", f"-c{connections}", f"-d{duration}", "--latency", "-s", str(script),
            url]  # fmt: skip
    pin = functools.partial(os.sched_setaffinity, 0, cpus) if cpus else None
    out = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + 60, check=True, preexec_fn=pin
    )
    return parse_wrk(out.stdout)


def wrk(
    url: str,
    users_file: Path,
    connections: int,
    seconds: float,
    pause_ms: int = 0,
    *,
    workload: Workload = "cart",
    cpus: Collection[int] | None = None,
) -> WrkResult:
    """One wrk run of the cart workload (or of the ``read`` workload), its load
    generator on ``cpus`` when given."""
    script = users_file.with_suffix(f".{workload}.{pause_ms}.lua")
    add_every = 5 if workload == "cart" else 0
    script.write_text(CART_LUA % {"users": users_file, "pause": pause_ms, "add_every": add_every})
    return _run_wrk(url, script, connections, seconds, cpus)


def weighted(url: str, users_file: Path, seed: int, connections: int, seconds: int) -> WrkResult:
    """Cart reads as users drawn by weight (``weight<TAB>cookie`` lines)."""
    script = users_file.with_suffix(".lua")
    script.write_text(WEIGHTED_LUA % {"users": users_file, "seed": seed})
    return _run_wrk(url, script, connections, seconds, None)


def paced(url: str, users_file: Path, rate: float, seconds: float) -> WrkResult:
    """The cart workload offered at about ``rate`` requests/s: a 1 s probe measures
    the latency at that pace, then the measured run uses the connection count that
    offers the rate. The result says what was achieved."""
    pause = max(5, math.ceil(10_000 / max(rate, 1.0)))  # >= 10 connections at any rate
    connections = max(1, round(rate * pause / 1000))
    probe = wrk(url, users_file, connections, 1, pause)
    latency = probe.p50_ms if probe.rps else 0.0
    connections = max(1, round(rate * (pause + latency) / 1000))
    return wrk(url, users_file, connections, seconds, pause)
