"""What the manifests give each statelab container builds valid settings, the
Sentinel URL names the sentinels the manifests run, and a real replica started
with a rendered environment answers the probes the manifests ask."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydantic import ValidationError

from statelab.cluster.servers import PortedProcess
from statelab.config import Settings, database_url_async
from tests.deploy.render import (
    OVERLAYS,
    POD_NAME,
    command_of,
    containers,
    environment,
    label,
    named,
    of_kind,
    pod_spec,
    render,
    settings_from,
    statelab_containers,
)
from tests.support import answers_ok, sqlite_database

overlays = pytest.mark.parametrize("overlay", OVERLAYS)


@overlays
def test_every_statelab_container_builds_its_settings(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(overlay)
    for workload, container in statelab_containers(objects):
        env = environment(objects, container)
        if command_of(container) == "migrate":
            database_url_async(env["STATELAB_DATABASE_URL"])  # all that migrate reads
            continue
        settings = settings_from(env, monkeypatch)
        assert not settings.development_secret, label(workload)
        if command_of(container) == "serve":
            assert settings.replica_id == POD_NAME
            assert settings.host == "0.0.0.0", "reached from other pods"


def test_placements_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"STATELAB_PROFILE": "stateless", "STATELAB_REDIS_URL": "redis://r:6379/0"}
    overridden = settings_from({**env, "STATELAB_PLACE": "cart=client session=jwt"}, monkeypatch)
    assert overridden.placements["cart"] == "client"
    assert overridden.placements["session"] == "jwt"
    assert overridden.placements["ledger"] == "db"
    assert settings_from({**env, "STATELAB_PLACE": ""}, monkeypatch).place == {}


def test_a_wrong_placement_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATELAB_PLACE", "cart=nowhere")
    with pytest.raises(ValidationError, match="cart placement must be one of"):
        Settings(redis_url="redis://r:6379/0")


def test_the_sentinel_url_names_the_sentinels_that_run() -> None:
    objects = render("stateless")
    config = named(objects, "ConfigMap", "statelab-config")["data"]
    url = urlsplit(config["STATELAB_REDIS_URL"])
    assert url.scheme == "redis+sentinel"
    redis = named(objects, "StatefulSet", "statelab-redis")
    nodes = named(objects, "Service", redis["spec"]["serviceName"])
    assert nodes["spec"]["clusterIP"] == "None", "pods get DNS names from a headless Service"
    ports = {p["name"]: p["containerPort"] for c in containers(redis) for p in c.get("ports", [])}
    pods = {
        f"{redis['metadata']['name']}-{i}.{nodes['metadata']['name']}:{ports['sentinel']}"
        for i in range(redis["spec"]["replicas"])
    }
    assert set(url.netloc.split(",")) == pods
    script = named(objects, "ConfigMap", "statelab-redis")["data"]["configure.sh"]
    monitored = re.findall(r"sentinel monitor (\S+) ", script)
    assert monitored == [url.path.strip("/").split("/")[0]]


def test_the_stateful_overlay_serves_its_probes(tmp_path: Path) -> None:
    """A real replica, started the way the stateful overlay starts one (its
    arguments and environment), answers the probe paths with 200. Only what
    exists in the pod alone is swapped: the database and the data folder."""
    objects = render("stateful")
    shop = named(objects, "Deployment", "statelab-shop")
    (container,) = pod_spec(shop)["containers"]
    env = environment(objects, container)
    env["STATELAB_DATABASE_URL"] = sqlite_database(tmp_path / "db")
    env["STATELAB_DATA_DIR"] = str(tmp_path / "data")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("STATELAB_")}
    probes = [container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")]

    replica = PortedProcess(
        "k8s-shop",
        tmp_path,
        lambda port: [
            *(sys.executable, "-m", "statelab"),
            *container["args"],
            *("--port", str(port), "--host", "127.0.0.1"),
        ],
        env={**inherited, **env},
        ready=lambda port: answers_ok(f"http://127.0.0.1:{port}{probes[0]}"),
    )
    with replica:
        replica.wait_ready(timeout=30)
        for path in probes:
            answer = httpx.get(f"http://127.0.0.1:{replica.port}{path}", timeout=5)
            assert answer.status_code == 200, f"{path}: {answer.text}"
        assert answer.headers["x-served-by"] == POD_NAME


def test_no_overlay_ships_a_stateful_set_without_a_headless_service() -> None:
    for overlay in OVERLAYS:
        objects = render(overlay)
        for stateful_set in of_kind(objects, "StatefulSet"):
            service = named(objects, "Service", stateful_set["spec"]["serviceName"])
            assert service["spec"].get("clusterIP") == "None", label(stateful_set)
