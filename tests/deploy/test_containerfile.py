"""The Containerfile, read as a builder reads it (no image is built here: no
container registry is reachable for its base image), and checked against the
manifests that run it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import pytest

from tests.deploy.render import ROOT, named, pod_spec, render, setting_envvars

CONTAINERFILE = ROOT / "Containerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    steps: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        return [args for op, args in self.steps if op == instruction]

    def last(self, instruction: str) -> str:
        found = self.all(instruction)
        assert found, f"stage {self.name or self.base} has no {instruction}"
        return found[-1]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    steps = []
    for line in joined.splitlines():
        if line.strip():
            op, _, args = line.strip().partition(" ")
            steps.append((op.upper(), " ".join(args.split())))
    return steps


def _stages() -> tuple[dict[str, str], list[Stage]]:
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for op, rest in _instructions(CONTAINERFILE.read_text()):
        if op == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif op == "FROM":
            base, _, name = rest.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
            stages.append(Stage(base, name or None))
        else:
            stages[-1].steps.append((op, rest))
    return args, stages


def _exec_form(args: str) -> list[str]:
    form = json.loads(args)
    assert isinstance(form, list), f"{args}: use the exec form (a JSON list)"
    return [str(a) for a in form]


def _env(stage: Stage) -> dict[str, str]:
    env = {}
    for args in stage.all("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    return env


def test_two_stages_on_a_slim_python() -> None:
    _, stages = _stages()
    assert len(stages) >= 2, "a build stage and a runtime stage"
    for stage in stages:
        assert re.fullmatch(
            r"(docker\.io/library/)?python:3\.1[1-9][\w.-]*-slim[\w.-]*", stage.base
        )


def test_the_runtime_stage_gets_the_installed_wheel_only() -> None:
    _, (*builds, runtime) = _stages()
    (build,) = [s for s in builds if s.name]
    runs = " ".join(build.all("RUN"))
    assert "pip wheel" in runs, "the package is built into a wheel"
    assert re.search(r"pip install \S*\.whl", runs), "and installed from it"
    copies = runtime.all("COPY")
    assert copies and all(c.startswith(f"--from={build.name} ") for c in copies)
    assert not re.search(r"pip|apt-get|gcc", " ".join(runtime.all("RUN")))


def test_it_runs_statelab_serve_as_the_user_the_pods_run_as() -> None:
    _, stages = _stages()
    runtime = stages[-1]
    command = _exec_form(runtime.last("ENTRYPOINT")) + _exec_form(runtime.last("CMD"))
    assert command == ["statelab", "serve"]
    user, _, group = runtime.last("USER").partition(":")
    assert user.isdigit() and int(user) != 0, "a numeric uid lets runAsNonRoot verify it"
    for overlay in ("stateless", "stateful"):
        shop = named(render(overlay), "Deployment", "statelab-shop")
        context = pod_spec(shop)["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(user), int(group))


def test_the_port_and_settings_match_the_manifests() -> None:
    _, stages = _stages()
    runtime = stages[-1]
    env = _env(runtime)
    assert {k for k in env if k.startswith("STATELAB_")} <= setting_envvars()
    assert runtime.last("EXPOSE") == env["STATELAB_PORT"]
    shop = named(render("stateless"), "Deployment", "statelab-shop")
    (container,) = pod_spec(shop)["containers"]
    assert [p["containerPort"] for p in container["ports"]] == [int(env["STATELAB_PORT"])]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["STATELAB_DATA_DIR"] in mounts, "the data folder is writable in the pod"


@pytest.mark.parametrize("source", ["pyproject.toml", "README.md", "src"])
def test_what_it_copies_exists_and_is_sent(source: str) -> None:
    _, stages = _stages()
    copied = " ".join(stages[0].all("COPY"))
    assert source in copied
    assert (ROOT / source).exists()
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is left out of the context"
