"""The control API's client: what ``statelab cluster ...`` and the lab use to drive a
cluster started by ``statelab up``. It imports neither the server nor FastAPI."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import httpx

from statelab.cluster.runfolder import ClusterError, ClusterNotFound, read_state

__all__ = ["ClusterError", "ClusterNotFound", "ControlClient", "format_status", "read_state"]


class ControlClient:
    """Talks to the control API of the cluster running from ``run_dir``."""

    def __init__(self, run_dir: Path = Path("run"), timeout: float = 180.0) -> None:
        self.run_dir = run_dir
        state = read_state(run_dir)
        if state is None:
            raise ClusterNotFound(
                f"no cluster found in {run_dir}/ (start one with `statelab up`, "
                "or pass the --run-dir it uses)",
                404,
            )
        self.state = state
        self.base_url: str = state["control_url"]
        self.timeout = timeout

    def _call(self, method: str, path: str, **params: str) -> Any:
        try:
            response = httpx.request(
                method, self.base_url + path, params=params or None, timeout=self.timeout
            )
        except httpx.TransportError as exc:
            raise ClusterNotFound(
                f"the cluster in {self.run_dir}/ does not answer at {self.base_url} "
                f"(is `statelab up` still running?): {exc}",
                503,
            ) from exc
        if response.is_error:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise ClusterError(str(message), response.status_code)
        return response.json()

    def _dict(self, method: str, path: str, **params: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call(method, path, **params)
        return result

    def status(self) -> dict[str, Any]:
        return self._dict("GET", "/status")

    def events(self, since: float = 0.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/events", since=str(since))
        return result

    def redis_stats(self) -> dict[str, Any]:
        return self._dict("GET", "/redis/stats")

    def kill(self, target: str, sig: Literal["KILL", "TERM"] = "KILL") -> dict[str, Any]:
        return self._dict("POST", f"/replicas/{target}/kill", signal=sig)

    def start(self, target: str) -> dict[str, Any]:
        return self._dict("POST", f"/replicas/{target}/start")

    def drain(self, rid: str) -> dict[str, Any]:
        return self._dict("POST", f"/replicas/{rid}/drain")

    def add(self) -> dict[str, Any]:
        return self._dict("POST", "/replicas")

    def remove(self, rid: str) -> dict[str, Any]:
        return self._dict("DELETE", f"/replicas/{rid}")

    def rolling_restart(self) -> dict[str, Any]:
        return self._dict("POST", "/rolling-restart")

    def restart_redis(self, mode: Literal["kill", "clean"] = "kill") -> dict[str, Any]:
        return self._dict("POST", "/redis/restart", mode=mode)

    def set_redis_delay(self, ms: float) -> dict[str, Any]:
        return self._dict("POST", "/redis/delay", ms=str(ms))

    def limit_memory(self, rid: str, headroom: int) -> dict[str, Any]:
        return self._dict("POST", f"/replicas/{rid}/memory-limit", headroom=str(headroom))

    def grant_admin(self, username: str) -> dict[str, Any]:
        return self._dict("POST", "/admins", username=username)


def format_status(status: dict[str, Any]) -> str:
    """A plain-text table of ``status`` for people."""
    lines = [
        f"profile {status['profile']}   balance {status.get('balance', '-')}   "
        f"shop {status['shop_url']}   control {status['control_url']}",
        "placements " + " ".join(f"{k}={p}" for k, p in status.get("placements", {}).items()),
        f"{'ID':<6}{'STATE':<10}{'PID':>8}{'PORT':>7}{'REQUESTS':>10}{'SESSIONS':>10}  HAPROXY",
    ]
    for r in status["replicas"]:
        pid = r["pid"] if r["pid"] is not None else "-"
        lines.append(
            f"{r['id']:<6}{r['state']:<10}{pid:>8}{r['port']:>7}"
            f"{r['requests']:>10}{r['sessions']:>10}  {r['lb_status'] or '-'}"
        )
    for name in ("redis", "haproxy"):
        proc = status.get(name)
        if proc:
            pid = proc["pid"] if proc["pid"] is not None else "-"
            lines.append(f"{name:<16}{proc['state']:<6}{pid:>8}")
    redis = status.get("redis") or {}
    if redis.get("topology", "single") != "single":
        lines += _redis_lines(redis)
    for worker in status.get("workers", []):
        lines.append(f"{worker['name']:<16}{worker['state']:<6}{worker['pid'] or '-':>8}")
    return "\n".join(lines)


def _redis_lines(redis: dict[str, Any]) -> list[str]:
    """Each Redis process of a Sentinel or Cluster topology, with its role."""
    lines = [f"  {redis['topology']} {redis['url']}"]
    for proc in redis.get("processes", []):
        pid = proc["pid"] if proc["pid"] is not None else "-"
        slots = f"  {proc['slots']} slots" if proc.get("slots") else ""
        lines.append(
            f"  {proc['name']:<14}{proc['state']:<6}{pid:>8}  {proc.get('role', '')}{slots}"
        )
    return lines
