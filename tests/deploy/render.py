"""Rendering deploy/k8s and reading what Kubernetes would run from the result.

Every overlay is rendered with ``kubectl kustomize`` (no cluster: kustomize is
built into kubectl). What a container would see is worked out from the objects
alone: its environment with ConfigMap references resolved, Secret references
replaced by stand-ins, the pod's own name given by the downward API.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from statelab.cli import app as cli_app
from statelab.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())

#: The Kubernetes version the manifests are checked against (kubernetes-validate
#: bundles its schemas): the oldest one they are meant to run on.
KUBERNETES_VERSION = "1.32.0"
#: The name the manifests give the shop's image (the overlays set its registry and tag).
IMAGE = "statelab"
POD_NAME = "statelab-shop-5d8c7b9f6-x2x7q"

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl binary, or a test failure saying what is missing."""
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            "kubectl is not installed: tests/deploy render deploy/k8s with "
            "`kubectl kustomize` (kubectl 1.27 or newer, for kustomize components)",
            pytrace=False,
        )
    return found


@functools.cache
def render(overlay: str) -> tuple[Obj, ...]:
    """The objects ``kubectl kustomize deploy/k8s/overlays/<overlay>`` produces."""
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"kubectl kustomize overlays/{overlay} failed:\n{done.stderr}", pytrace=False)
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def of_kind(objects: tuple[Obj, ...], *kinds: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] in kinds]


def named(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    """The one object of ``kind`` called ``name`` (a generated name may carry a hash)."""
    found = [
        obj
        for obj in of_kind(objects, kind)
        if obj["metadata"]["name"] == name or obj["metadata"]["name"].startswith(f"{name}-")
    ]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} objects"
    return found[0]


def label(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def workloads(objects: tuple[Obj, ...]) -> list[Obj]:
    """Everything that runs pods."""
    return of_kind(objects, "Deployment", "StatefulSet", "Job")


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def statelab_containers(objects: tuple[Obj, ...]) -> Iterator[tuple[Obj, Obj]]:
    """(workload, container) for every container that runs the shop's image."""
    for workload in workloads(objects):
        for container in containers(workload):
            if container["image"].split("/")[-1].split(":")[0] == IMAGE:
                yield workload, container


def command_of(container: Obj) -> str:
    """The statelab subcommand a container runs (its ``args``; the image's default is serve)."""
    args = container.get("args") or ["serve"]
    return str(args[0])


def environment(objects: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """What the container's process finds in its environment, as the kubelet builds it:
    ``envFrom`` first, then ``env`` entries, which win. Secret values are stand-ins
    (``stand_in``), ``metadata.name`` is ``POD_NAME``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"only ConfigMaps are read whole: {source}"
        env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        value = _value(objects, entry)
        if value is not None:
            env[entry["name"]] = value
    return env


def _value(objects: tuple[Obj, ...], entry: Obj) -> str | None:
    if "value" in entry:
        return str(entry["value"])
    source = entry["valueFrom"]
    if "configMapKeyRef" in source:
        ref = source["configMapKeyRef"]
        return str(named(objects, "ConfigMap", ref["name"])["data"][ref["key"]])
    if "secretKeyRef" in source:
        ref = source["secretKeyRef"]
        return None if ref.get("optional") else stand_in(ref["name"], ref["key"])
    assert source["fieldRef"]["fieldPath"] == "metadata.name", entry
    return POD_NAME


#: What users put in the Secrets the manifests name (README, "Running on
#: Kubernetes"): a key missing here is one the README does not tell them to create.
SECRET_STAND_INS = {
    ("statelab-secret", "secret-key"): secrets.token_hex(32),
    ("statelab-secret", "postgres-password"): secrets.token_urlsafe(24),
    ("statelab-stores", "redis-url"): "redis://redis.example.com:6379/0",
    ("statelab-stores", "database-url"): "postgresql://statelab:pw@db.example.com:5432/statelab",
    ("statelab-stores", "object-store-url"): "s3://statelab-uploads",
}


def stand_in(secret: str, key: str) -> str:
    """A value like the one a user keeps under ``key`` of the Secret ``secret``."""
    assert (secret, key) in SECRET_STAND_INS, f"Secret {secret} key {key} is not documented"
    return SECRET_STAND_INS[(secret, key)]


@functools.cache
def cli_envvars(command: str) -> frozenset[str]:
    """The environment variables ``statelab <command>`` reads through its options."""
    group = typer.main.get_command(cli_app)
    sub = group.commands[command]  # type: ignore[attr-defined]
    names: set[str] = set()
    for param in sub.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return frozenset(names)


def setting_envvars() -> frozenset[str]:
    """``STATELAB_<FIELD>`` for every field of ``Settings``, as it is now."""
    return frozenset(f"STATELAB_{name.upper()}" for name in Settings.model_fields)


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings`` as a process with exactly ``env`` builds them (its STATELAB_*
    variables, nothing of ours)."""
    for name in [n for n in os.environ if n.startswith("STATELAB_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def shop_settings(overlay: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """What a replica of ``overlay`` runs with."""
    objects = render(overlay)
    shop = named(objects, "Deployment", "statelab-shop")
    return settings_from(environment(objects, pod_spec(shop)["containers"][0]), monkeypatch)
