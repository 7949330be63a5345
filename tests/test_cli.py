"""The CLI, through Typer's runner and as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from statelab.cli import app
from statelab.cluster.servers import PortedProcess

runner = CliRunner()
STATELAB = [sys.executable, "-m", "statelab"]


def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    result = runner.invoke(app, ["migrate", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "database at revision" in result.output
    again = runner.invoke(app, ["migrate", "--database-url", url])
    assert again.exit_code == 0


def test_bad_options_fail_with_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["serve", "--profile", "stateful", "--place", "cart=redis", "--port", "1"]
    )
    assert result.exit_code == 2
    assert "--redis-url is required by cart=redis" in result.output
    bad_url = runner.invoke(app, ["migrate", "--database-url", "mysql://x@y/z"])
    assert bad_url.exit_code == 2
    assert "only sqlite and postgresql" in bad_url.output


def test_serve_refuses_an_unmigrated_database(tmp_path: Path, closed_port: int) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    proc = subprocess.run(
        [
            *STATELAB,
            "serve",
            "--profile",
            "stateful",
            "--port",
            str(closed_port),  # never bound: the check comes first
            "--database-url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "run `statelab migrate --database-url" in proc.stderr


class EnvironmentReplica(PortedProcess):
    """``statelab serve`` told everything, its port too, through the environment."""

    def __init__(self, run_dir: Path, settings: dict[str, str]) -> None:
        super().__init__("serve", run_dir, [*STATELAB, "serve"], ready=self._answers)
        self.settings = settings

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.settings, "STATELAB_PORT": str(self.port)}

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


def test_serve_runs_a_replica_from_environment(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.db'}"
    assert runner.invoke(app, ["migrate", "--database-url", url]).exit_code == 0
    settings = {
        "STATELAB_PROFILE": "stateful",
        "STATELAB_REPLICA_ID": "r9",
        "STATELAB_DATABASE_URL": url,
        "STATELAB_SECRET_KEY": "4e01a55b7eea18de5ff0f66b6605ec8ceab9d6e672a413c5fb9d8770a7eb5b12",
        "STATELAB_DATA_DIR": str(tmp_path / "data"),
    }
    proc = EnvironmentReplica(tmp_path, settings)
    proc.start()
    try:
        proc.wait_ready(30)
        r = httpx.get(f"http://{proc.address}/healthz", timeout=1)
        assert r.status_code == 200
        assert r.headers["X-Served-By"] == "r9"
        proc.kill(signal.SIGTERM)
        draining = httpx.get(f"http://{proc.address}/readyz", timeout=2)
        assert draining.status_code == 503, "SIGTERM turns /readyz to 503 at once"
        assert draining.json()["draining"] is True
        # uvicorn re-raises the signal after its graceful shutdown: exit by SIGTERM.
        assert proc.wait(timeout=20) in (0, -15)
    finally:
        proc.stop()
