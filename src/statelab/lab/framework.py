"""What every lab scenario is made of: variants, a context, runs, and how one runs.

A **scenario** (one module in ``statelab.lab.scenarios``) plays a journey against a
running deployment as clients would, breaks something through the deployment's
control door, and measures. It runs once per **variant**: a configuration of the
deployment (profile, placement overrides, balancing, cluster options) plus the
scenario's own knobs. A scenario's *plan* lists the variants the demo runs — the
knob under test and its control, changing one thing at a time.

A **run** is one scenario in one variant: the invariants that must hold there (a
failed invariant fails the demo), the metrics the claim judges read (a finding,
not a failure, when a stateful placement loses something), and a timeline of
requests and cluster events for the report's plots.

Shape of a run id: ``<scenario>/<variant label>``, e.g. ``pizza/stateful`` or
``redis-restart/aof-off``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from statelab.lab.deployment import Deployment, LocalDeployment
from statelab.lab.shopper import Log, Shopper

Balance = Literal["roundrobin", "sticky"]

#: Placements that keep state inside one replica (or its disk): everything else is
#: shared by the replicas or carried by the client.
LOCAL_PLACEMENTS = frozenset({"memory", "disk", "inprocess"})

#: Menu items the journeys use (see ``statelab/domain/menu.json``).
PIZZA, DRINK, DESSERT = 1, 10, 20


@dataclass(frozen=True)
class Variant:
    """One configuration a scenario runs in: what the deployment is started with and
    the scenario's own knobs. ``label`` names it in run ids and reports."""

    label: str
    profile: str = "stateless"
    place: Mapping[str, str] = field(default_factory=dict)
    balance: Balance | None = None  # None: the profile's default
    options: tuple[
        str, ...
    ] = ()  # more ``statelab up`` options, e.g. ("--redis-persistence", "off")
    env: Mapping[str, str] = field(default_factory=dict)
    knobs: Mapping[str, Any] = field(default_factory=dict)
    replicas: int = 3

    def describe(self) -> str:
        """The configuration in words a reader can repeat on the command line."""
        parts = [f"--profile {self.profile}"]
        parts += [f"--place {k}={v}" for k, v in self.place.items()]
        if self.balance:
            parts.append(f"--balance {self.balance}")
        parts += list(self.options)
        parts += [f"--set {k}={v}" for k, v in self.knobs.items()]
        return " ".join(parts)


@dataclass
class Timeline:
    """Requests (``[t, status, served_by, ms]`` rows) and cluster events, in wall-clock
    seconds, for a timeline plot. ``t0`` is when the scenario began."""

    t0: float
    requests: list[list[Any]]
    events: list[dict[str, Any]]


@dataclass
class Played:
    """What a scenario's ``play`` returns."""

    invariants: dict[str, bool]
    metrics: dict[str, Any]
    timeline: Timeline | None = None


@dataclass
class Run:
    """One scenario in one variant, as measured."""

    scenario: str
    variant: Variant
    claims: tuple[str, ...]
    placements: dict[str, str]
    balance: str
    invariants: dict[str, bool]
    metrics: dict[str, Any]
    timeline: Timeline | None = None
    seconds: float = 0.0
    summary: str = ""  # the run in one line, with its telling numbers

    @property
    def id(self) -> str:
        return f"{self.scenario}/{self.variant.label}"

    @property
    def held(self) -> bool:
        return all(self.invariants.values())


class Runs:
    """The runs of one lab session, found by scenario and variant label."""

    def __init__(self, runs: Iterable[Run] = ()) -> None:
        self._runs: dict[str, Run] = {}
        for run in runs:
            self.add(run)

    def add(self, run: Run) -> None:
        self._runs[run.id] = run

    def get(self, scenario: str, label: str) -> Run | None:
        return self._runs.get(f"{scenario}/{label}")

    def of(self, scenario: str) -> list[Run]:
        return [r for r in self._runs.values() if r.scenario == scenario]

    def __iter__(self) -> Any:
        return iter(self._runs.values())

    def __len__(self) -> int:
        return len(self._runs)


@dataclass
class Context:
    """What a scenario's ``play`` gets: the deployment, its variant, and a request log."""

    deployment: Deployment
    variant: Variant
    quick: bool
    status: dict[str, Any]  # the deployment's status when the scenario began
    workdir: Path  # for the client side's files (wrk scripts, user lists)
    previous: Runs = field(default_factory=Runs)  # runs finished before this one
    log: Log = field(default_factory=Log)
    started: float = field(default_factory=time.time)

    @property
    def url(self) -> str:
        return self.deployment.shop_url

    @property
    def placements(self) -> dict[str, str]:
        return dict(self.status["placements"])

    def shopper(self, name: str, url: str | None = None) -> Shopper:
        return Shopper(url or self.url, name, self.log)

    def scale(self, quick: int, full: int) -> int:
        return quick if self.quick else full

    def knob(self, name: str, default: Any) -> Any:
        return self.variant.knobs.get(name, default)

    def local(self, kind: str) -> bool:
        """Whether state of ``kind`` lives inside one replica in this run."""
        return self.placements.get(kind) in LOCAL_PLACEMENTS

    async def timeline(self) -> Timeline:
        events = await self.deployment.events(self.started)
        return Timeline(
            t0=self.started,
            requests=self.log.as_json(),
            events=[
                {"t": e.get("ts", 0), "event": e.get("event", ""), "target": e.get("target", "")}
                for e in events
            ],
        )


@dataclass(frozen=True)
class Knob:
    """A setting of a scenario's own (``statelab scenario NAME --set name=value``)."""

    help: str
    parse: Callable[[str], Any] = int


@dataclass(frozen=True)
class Scenario:
    """A journey, what it can break, and the variants the demo plays it in."""

    name: str
    claims: tuple[str, ...]
    title: str
    plan: Callable[[bool], list[Variant]]  # quick -> the variants the demo runs
    play: Callable[[Context], Awaitable[Played]]
    summary: Callable[[dict[str, Any]], str]  # a run's metrics in one line
    knobs: Mapping[str, Knob] = field(default_factory=dict)


class UnknownName(ValueError):
    """A scenario, variant or knob name the lab does not know."""


def parse_knobs(scenario: Scenario, raw: list[str]) -> dict[str, Any]:
    """``--set name=value`` options for ``scenario``, parsed and checked."""
    knobs: dict[str, Any] = {}
    for item in raw:
        name, sep, value = item.partition("=")
        knob = scenario.knobs.get(name.strip())
        if not sep or knob is None:
            known = ", ".join(scenario.knobs) or "none"
            raise UnknownName(f"--set {item!r}: {scenario.name} knobs are: {known}")
        try:
            knobs[name.strip()] = knob.parse(value.strip())
        except ValueError as exc:
            raise UnknownName(f"--set {item!r}: {exc}") from exc
    return knobs


async def run_variant(
    scenario: Scenario, variant: Variant, run_root: Path, quick: bool, previous: Runs
) -> Run:
    """One scenario in one variant, in a deployment of its own."""
    run_dir = run_root / f"{scenario.name}-{variant.label}"
    began = time.monotonic()
    deployment = LocalDeployment(
        run_dir,
        variant.profile,
        replicas=variant.replicas,
        place=dict(variant.place),
        balance=variant.balance,
        options=variant.options,
        env=dict(variant.env),
    )
    workdir = run_root / f"{scenario.name}-{variant.label}-client"
    workdir.mkdir(parents=True, exist_ok=True)
    async with deployment:
        status = await deployment.status()
        ctx = Context(deployment, variant, quick, status, workdir, previous)
        played = await scenario.play(ctx)
        balance = str(status.get("balance", ""))
    return Run(
        scenario=scenario.name,
        variant=variant,
        claims=scenario.claims,
        placements=ctx.placements,
        balance=balance,
        invariants=played.invariants,
        metrics=played.metrics,
        timeline=played.timeline,
        seconds=round(time.monotonic() - began, 1),
        summary=scenario.summary(played.metrics),
    )


# -- small tools the scenarios share ------------------------------------------------------

_STORE_CALLS = re.compile(
    r'^statelab_store_calls_total\{[^}]*store="(\w+)"[^}]*\} ([\d.e+]+)$', re.M
)


async def store_calls(deployment: Deployment) -> dict[str, float]:
    """What every replica that is up has sent its stores so far (Redis commands over
    the request path, SQL statements), summed from their ``/metrics``."""
    from statelab.lab.deployment import replica_urls

    totals: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10) as client:
        for url in (await replica_urls(deployment)).values():
            try:
                text = (await client.get(f"{url}/metrics")).text
            except httpx.TransportError:
                continue
            for store, value in _STORE_CALLS.findall(text):
                totals[store] = totals.get(store, 0.0) + float(value)
    return totals


async def closing(*shoppers: Shopper) -> None:
    await asyncio.gather(*(s.close() for s in shoppers))


async def retrying(call: Callable[[], Awaitable[bool]], within: float) -> bool:
    """Try ``call`` until it succeeds or ``within`` seconds pass (a patient user)."""
    deadline = time.monotonic() + within
    while True:
        if await call():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of already sorted ``values`` (nearest rank); 0 if empty."""
    if not values:
        return 0.0
    index = min(len(values) - 1, round(p / 100 * (len(values) - 1)))
    return round(values[index], 2)


T = TypeVar("T")


def metrics_of(run: Run, shape: type[T]) -> T:
    """A run's metrics read as the scenario's ``TypedDict`` (a typo is a type error)."""
    return run.metrics  # type: ignore[return-value]
