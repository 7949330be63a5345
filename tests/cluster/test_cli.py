"""``statelab up`` and ``statelab cluster`` fail with one clear line."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from statelab.cli import app
from statelab.cluster.servers import MissingBinary, RedisServer

runner = CliRunner()


def test_cluster_commands_without_a_cluster(tmp_path: Path) -> None:
    result = runner.invoke(app, ["cluster", "status", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "no cluster found in" in result.output
    assert "statelab up" in result.output


def test_cluster_commands_when_the_supervisor_is_gone(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text('{"control_url": "http://127.0.0.1:9"}')
    result = runner.invoke(app, ["cluster", "kill", "r2", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "does not answer" in result.output


def test_up_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["up", "--port", str(port), "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.output
    assert not (tmp_path / "cluster.json").exists()


def test_up_refuses_a_control_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = ["up", "--port", "0", "--control-port", str(port), "--run-dir", str(tmp_path)]
        result = runner.invoke(app, argv)
    assert result.exit_code == 2
    assert f"port {port} on 127.0.0.1 is already in use (wanted for the control API)" in (
        result.output
    )
    assert not (tmp_path / "cluster.json").exists()


def test_up_rejects_a_bad_placement(tmp_path: Path) -> None:
    result = runner.invoke(app, ["up", "--place", "cart=nowhere", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "cart placement must be one of" in result.output


def test_a_missing_binary_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingBinary, match="apt-get install redis-server"):
        RedisServer(tmp_path)
