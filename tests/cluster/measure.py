"""Measure a replica kill under load, per profile: how long until HAProxy marks the
replica down, and how many requests failed meanwhile.

    .venv/bin/python -m tests.cluster.measure --kills 5

For each profile: ``statelab up --replicas 3`` in a temporary folder, 32 logged-in
users driven by ``wrk`` (the ``statelab bench`` cart workload) through HAProxy, and
``--kills`` times: SIGKILL a replica, poll the control API every 10 ms until HAProxy
says it is down, start it again, wait until it is up. Failed requests are wrk's
socket errors plus non-2xx answers; in ``stateful`` the users pinned to a killed
replica lose their session, and their 401/403 answers count as failed too (the
separate line says how many users lost it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx

from statelab.lab.deployment import LocalDeployment
from statelab.lab.load import CART_LUA, login_users, parse_wrk


def _state(deployment: LocalDeployment, rid: str) -> str:
    for replica in deployment.control.status()["replicas"]:
        if replica["id"] == rid:
            return str(replica["state"])
    return "missing"


def _wait_state(deployment: LocalDeployment, rid: str, want: str, limit: float) -> float:
    start = time.monotonic()
    while _state(deployment, rid) != want:
        if time.monotonic() - start > limit:
            raise TimeoutError(f"{rid} not {want} after {limit} s")
        time.sleep(0.01)
    return time.monotonic() - start


def _sessions_alive(url: str, users_file: Path) -> int:
    alive = 0
    for line in users_file.read_text().splitlines():
        cookie, header = line.split("\t")
        name, value = header.split(": ", 1)
        headers = {name: value} | ({"Cookie": cookie} if cookie else {})
        if httpx.get(f"{url}/api/auth/me", headers=headers, timeout=5).status_code == 200:
            alive += 1
    return alive


def measure(profile: str, kills: int, root: Path) -> None:
    with LocalDeployment(root / profile, profile, replicas=3) as deployment:
        users_file, script = root / f"{profile}.users", root / f"{profile}.lua"
        login_users(deployment.shop_url, 32, users_file)
        script.write_text(CART_LUA % {"users": users_file, "pause": 0, "add_every": 5})
        seconds = 4 + kills * 6
        argv = ["wrk", "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script)]
        out: list[str] = []
        load = threading.Thread(
            target=lambda: out.append(
                subprocess.run(
                    [*argv, deployment.shop_url], capture_output=True, text=True, check=True
                ).stdout
            )
        )
        load.start()
        time.sleep(2)
        to_down = []
        for i in range(kills):
            rid = f"r{i % 3 + 1}"
            deployment.control.kill(rid, "KILL")
            to_down.append(_wait_state(deployment, rid, "down", 10))
            deployment.control.start(rid)
            _wait_state(deployment, rid, "up", 20)
            time.sleep(1)
        load.join()
        result = parse_wrk(out[0])
        alive = _sessions_alive(deployment.shop_url, users_file)
    print(
        f"{profile:9s} kill -> down: median {statistics.median(to_down):.2f} s, "
        f"max {max(to_down):.2f} s over {kills} kills; "
        f"requests {result.rps * seconds:.0f}, failed {result.errors}; "
        f"sessions alive after: {alive}/32"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--profiles", default="stateful,stateless,token")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="statelab-kill-") as tmp:
        for profile in args.profiles.split(","):
            measure(profile, args.kills, Path(tmp))


if __name__ == "__main__":
    main()
