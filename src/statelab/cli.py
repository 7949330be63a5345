"""The statelab command line: parses options, sets up logging, calls one function."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from statelab.config import (
    ConfigError,
    Profile,
    Settings,
    build_settings,
    database_url_async,
    parse_place,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)

ProfileOpt = Annotated[
    Profile | None, typer.Option(help="Named set of placements.", envvar="STATELAB_PROFILE")
]
PlaceOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--place",
        help="Override one placement: KIND=PLACEMENT (repeatable).",
        envvar="STATELAB_PLACE",
    ),
]
RedisOpt = Annotated[
    str | None, typer.Option(help="redis://host:port/db", envvar="STATELAB_REDIS_URL")
]
DatabaseOpt = Annotated[
    str | None,
    typer.Option(
        help="sqlite:///PATH or postgresql://user@host:port/db", envvar="STATELAB_DATABASE_URL"
    ),
]


BalanceOpt = Annotated[
    str | None,
    typer.Option(help="roundrobin or sticky [default: sticky for stateful, else roundrobin]."),
]
PersistenceOpt = Annotated[
    str, typer.Option(help="Redis persistence: off, everysec or always (an append-only file).")
]
DelayProxyOpt = Annotated[
    bool, typer.Option(help="A delaying TCP proxy between the replicas and Redis (lab).")
]
RedisTopologyOpt = Annotated[
    str,
    typer.Option(
        "--redis",
        help="single (one server), sentinel (a primary, 2 replicas, 3 sentinels) or cluster "
        "(3 primaries with a replica each).",
    ),
]
RedisWaitOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=2,
        help="Replicas each Redis write must reach before it is acknowledged (WAIT; also "
        "min-replicas-to-write). With --redis sentinel or cluster.",
    ),
]


def fail(message: str) -> typer.Exit:
    """Print one clear line on stderr and return the exit to raise."""
    typer.echo(f"statelab: {message}", err=True)
    return typer.Exit(code=2)


def _settings(**values: object) -> Settings:
    place = values.pop("place", None)
    try:
        overrides = parse_place(place) if isinstance(place, list) else None
        return build_settings(place=overrides if overrides is not None else {}, **values)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def _logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )


@app.command()
def serve(
    profile: ProfileOpt = None,
    port: Annotated[int | None, typer.Option(envvar="STATELAB_PORT")] = None,
    replica_id: Annotated[str | None, typer.Option(envvar="STATELAB_REPLICA_ID")] = None,
    host: Annotated[str | None, typer.Option(envvar="STATELAB_HOST")] = None,
    redis_url: RedisOpt = None,
    database_url: DatabaseOpt = None,
    place: PlaceOpt = None,
) -> None:
    """Run one replica of the shop (one ASGI server process)."""
    from statelab.web.server import NotMigrated, run_replica

    _logging()
    settings = _settings(
        profile=profile,
        port=port,
        replica_id=replica_id,
        host=host,
        redis_url=redis_url,
        database_url=database_url,
        place=place,
    )
    try:
        run_replica(settings)
    except NotMigrated as exc:
        raise fail(str(exc)) from exc


@app.command()
def demo(
    scenarios: Annotated[str | None, typer.Option(help="Comma-separated scenario names.")] = None,
    variants: Annotated[
        str | None, typer.Option(help="Comma-separated variant labels (e.g. stateful,aof-off).")
    ] = None,
    profiles: Annotated[
        str | None, typer.Option(help="Only variants of these profiles (comma-separated).")
    ] = None,
    json_path: Annotated[
        Path, typer.Option("--json", help="Where to write the JSON report.")
    ] = Path("report.json"),
    html_path: Annotated[
        Path, typer.Option("--html", help="Where to write the HTML report.")
    ] = Path("report.html"),
    quick: Annotated[bool, typer.Option(help="Smaller workloads (a few minutes).")] = False,
    stories: Annotated[bool, typer.Option(help="Print each verdict's account too.")] = False,
) -> None:
    """Run the lab: every scenario in every variant of its plan, a verdict per claim."""
    from statelab.lab.demo import run_demo
    from statelab.lab.framework import UnknownName
    from statelab.lab.report import write_reports
    from statelab.lab.report.terminal import print_report

    _logging("WARNING")
    try:
        report = run_demo(
            _names(scenarios), _names(variants), _names(profiles), quick=quick, say=_say
        )
    except UnknownName as exc:
        raise fail(str(exc)) from exc
    print_report(report, stories=stories)
    write_reports(report, json_path, html_path)
    typer.echo(f"reports: {json_path} {html_path}")
    if not report.ok:
        raise typer.Exit(code=1)


def _say(line: str) -> None:
    typer.echo(line)
    sys.stdout.flush()


@app.command()
def scenario(
    name: Annotated[str, typer.Argument(help="pizza, atm, sticky-skew, ... (see `demo`)")],
    profile: ProfileOpt = None,
    place: PlaceOpt = None,
    balance: BalanceOpt = None,
    redis_persistence: Annotated[
        str | None, typer.Option(help="Redis persistence: off, everysec or always.")
    ] = None,
    redis_delay_proxy: DelayProxyOpt = False,
    redis: Annotated[
        str | None, typer.Option("--redis", help="single, sentinel or cluster (see `up`).")
    ] = None,
    redis_wait: Annotated[
        int | None, typer.Option(min=0, max=2, help="--redis-wait of `up`.")
    ] = None,
    replicas: Annotated[int | None, typer.Option(min=1, help="Replicas [default: 3].")] = None,
    knob: Annotated[
        list[str] | None,
        typer.Option("--set", help="A scenario knob: NAME=VALUE (repeatable)."),
    ] = None,
    variants: Annotated[
        str | None, typer.Option(help="Without configuration flags: only these variants.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json")] = None,
    html_path: Annotated[Path | None, typer.Option("--html")] = None,
    quick: Annotated[bool, typer.Option(help="A smaller workload.")] = False,
) -> None:
    """Run one scenario: its whole plan (controls included), or — with any of
    --profile, --place, --balance, --redis-..., --replicas, --set — once, in exactly
    that configuration."""
    from statelab.lab.demo import plan, play
    from statelab.lab.demo import scenario as find
    from statelab.lab.framework import UnknownName, Variant, parse_knobs
    from statelab.lab.report import write_reports
    from statelab.lab.report.terminal import print_report

    _logging("WARNING")
    options: list[str] = []
    if redis_persistence:
        options += ["--redis-persistence", redis_persistence]
    if redis_delay_proxy:
        options.append("--redis-delay-proxy")
    if redis:
        options += ["--redis", redis]
    if redis_wait is not None:
        options += ["--redis-wait", str(redis_wait)]
    try:
        chosen = find(name)
        knobs = parse_knobs(chosen, knob or [])
        custom = profile or place or balance or options or knobs or replicas
        if custom:
            variant = Variant(
                "custom",
                (profile or Profile.stateless).value,
                place=parse_place(place),
                balance=_balance(balance),
                options=tuple(options),
                knobs=knobs,
                replicas=replicas or 3,
            )
            runs = [(chosen, variant)]
        else:
            runs = plan([name], _names(variants), None, quick)
        report = play(runs, quick, say=_say)
    except (UnknownName, ConfigError) as exc:
        raise fail(str(exc)) from exc
    print_report(report, stories=True)
    for run in report.runs:
        typer.echo(json.dumps({"run": run.id, **run.metrics}, default=str))
    write_reports(report, json_path, html_path)
    if not report.ok:
        raise typer.Exit(code=1)


def _balance(value: str | None) -> Literal["roundrobin", "sticky"] | None:
    if value is None:
        return None
    if value not in ("roundrobin", "sticky"):
        raise ConfigError(f"--balance {value!r}: expected roundrobin or sticky")
    return value  # type: ignore[return-value]


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def bench(
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results here.")
    ] = None,
    workload: Annotated[
        Literal["cart", "read", "chat"],
        typer.Option(help="cart: 4 reads per add; read: GET /api/cart; chat: messages."),
    ] = "cart",
    seconds: Annotated[
        float, typer.Option(min=1, help="Measured seconds per server and round.")
    ] = 4,
    rounds: Annotated[
        int, typer.Option(min=1, help="Rounds; servers take turns, the median is reported.")
    ] = 3,
    connections: Annotated[int, typer.Option(min=1, help="Concurrent connections (users).")] = 32,
    max_replicas: Annotated[
        int, typer.Option(min=0, help="Scale-out curve up to this many replicas (0: skip it).")
    ] = 4,
    columns: Annotated[
        str | None,
        typer.Option(help="Only these columns (comma-separated: stateful,stateless,...)."),
    ] = None,
    database: Annotated[
        Literal["sqlite", "postgres"], typer.Option(help="The columns' (and chat's) SQL.")
    ] = "sqlite",
    rooms: Annotated[
        int, typer.Option(min=1, help="Chat rooms the chat workload spreads over.")
    ] = 1,
    rate: Annotated[
        float,
        typer.Option(min=1, help="Messages per second the chat workload offers (open loop)."),
    ] = 600.0,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print Markdown tables (for the README).")
    ] = False,
) -> None:
    """CPU per request, requests/s and latency of one replica per profile, each pinned
    to its own core, beside a bare Starlette and a minimal FastAPI server; ratios to
    stateful and to the FastAPI floor; a scale-out curve behind HAProxy."""
    from statelab.cluster.servers import ServerError
    from statelab.lab.bench import PROFILES, BenchError, run, to_markdown
    from statelab.lab.report.terminal import print_bench

    _logging("WARNING")
    try:
        result = run(
            profiles=tuple(_names(columns) or PROFILES),
            seconds=seconds,
            connections=connections,
            users=connections,
            max_replicas=max_replicas,
            rounds=rounds,
            workload=workload,
            database=database,
            rooms=rooms,
            rate=rate,
        )
    except (BenchError, ServerError) as exc:
        raise fail(str(exc)) from exc
    if markdown:
        typer.echo(to_markdown(result), nl=False)
    else:
        print_bench(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")


@app.command()
def migrate(database_url: DatabaseOpt = None) -> None:
    """Create or upgrade the database schema to the newest revision."""
    from statelab.db.migrate import upgrade

    _logging("WARNING")
    url = database_url or Settings.model_fields["database_url"].default
    try:
        database_url_async(url)
    except ConfigError as exc:
        raise fail(str(exc)) from exc
    revision = upgrade(url)
    typer.echo(f"database at revision {revision}")


@app.command()
def worker(
    worker_id: Annotated[str, typer.Option(envvar="STATELAB_WORKER_ID")] = "w1",
    profile: ProfileOpt = None,
    redis_url: RedisOpt = None,
    database_url: DatabaseOpt = None,
    place: PlaceOpt = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64)] = 4,
) -> None:
    """Run one job-queue worker (jobs=queue) until SIGTERM; logs go to stderr."""
    from statelab.db.migrate import NotMigrated
    from statelab.worker import run_worker

    _logging()
    settings = _settings(
        profile=profile, redis_url=redis_url, database_url=database_url, place=place
    )
    try:
        run_worker(settings, worker_id, concurrency)
    except (NotMigrated, ConfigError) as exc:
        raise fail(str(exc)) from exc


# -- roles: `statelab admin grant|revoke` ---------------------------------------------

admin_app = typer.Typer(
    no_args_is_help=True, help="Grant or revoke the admin role (changes prices in the shop)."
)
app.add_typer(admin_app, name="admin")


def _set_role(username: str, database_url: str | None, *, admin: bool) -> None:
    from statelab.db.migrate import NotMigrated, check_migrated
    from statelab.domain.errors import StatelabError
    from statelab.state.users import change_role

    _logging("WARNING")
    url = database_url or Settings.model_fields["database_url"].default
    try:
        database_url_async(url)
        asyncio.run(check_migrated(url))
        user = asyncio.run(change_role(url, username, admin=admin))
    except (ConfigError, NotMigrated, StatelabError) as exc:
        raise fail(str(exc)) from exc
    typer.echo(f"{user.username} is {'now' if admin else 'no longer'} an admin")


@admin_app.command("grant")
def admin_grant(username: str, database_url: DatabaseOpt = None) -> None:
    """Give an account the admin role; it holds from the account's next request."""
    _set_role(username, database_url, admin=True)


@admin_app.command("revoke")
def admin_revoke(username: str, database_url: DatabaseOpt = None) -> None:
    """Take the admin role away; admin routes refuse the account from its next request."""
    _set_role(username, database_url, admin=False)


# -- the cluster: `statelab up` and `statelab cluster ...` ------------------------------

RunDirOpt = Annotated[
    Path,
    typer.Option(help="The cluster's run folder (state, logs, data).", envvar="STATELAB_RUN_DIR"),
]


@app.command()
def up(
    profile: ProfileOpt = None,
    replicas: Annotated[int, typer.Option(min=1, help="How many replicas (r1..rN).")] = 3,
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="Port of the shop (HAProxy) on 127.0.0.1; 0: choose one."
        ),
    ] = 8000,
    control_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Port of the control API; 0: choose one [default: --port + 1, or 0].",
        ),
    ] = None,
    database: Annotated[
        str, typer.Option(help="sqlite, postgres (a throwaway server) or a database URL.")
    ] = "sqlite",
    place: PlaceOpt = None,
    run_dir: RunDirOpt = Path("run"),
    self_heal: Annotated[bool, typer.Option(help="Restart replicas that die.")] = False,
    fresh: Annotated[bool, typer.Option(help="Wipe data left by a previous run.")] = False,
    workers: Annotated[
        int | None, typer.Option(min=0, help="Job workers [default: 1 if jobs=queue, else 0].")
    ] = None,
    balance: BalanceOpt = None,
    redis_persistence: PersistenceOpt = "everysec",
    redis_delay_proxy: DelayProxyOpt = False,
    redis: RedisTopologyOpt = "single",
    redis_wait: RedisWaitOpt = 0,
) -> None:
    """Run the shop as N replicas behind HAProxy, with Redis and a database, until Ctrl-C.

    With --port 0 (and --control-port 0) free ports are chosen; the banner and
    run/cluster.json name them once the control API answers."""
    from statelab.cluster.runfolder import ClusterError
    from statelab.cluster.servers import ServerError
    from statelab.cluster.supervisor import ClusterOptions
    from statelab.cluster.up import run_cluster

    _logging("WARNING")
    try:
        options = ClusterOptions(
            profile=profile or Profile.stateless,
            replicas=replicas,
            port=port,
            control_port=control_port,
            database=database,
            place=parse_place(place),
            run_dir=run_dir,
            self_heal=self_heal,
            fresh=fresh,
            workers=workers,
            balance=_balance(balance),
            redis_persistence=redis_persistence,
            redis_delay_proxy=redis_delay_proxy,
            redis_topology=redis,
            redis_wait=redis_wait,
        )
        if database not in ("sqlite", "postgres", "postgresql"):
            database_url_async(database)
        run_cluster(options, say=typer.echo)
    except (ConfigError, ClusterError, ServerError) as exc:
        raise fail(str(exc)) from exc


cluster_app = typer.Typer(
    no_args_is_help=True, help="Drive a running cluster (started by `statelab up`)."
)
app.add_typer(cluster_app, name="cluster")


def _control(run_dir: Path, call: str, *args: str) -> Any:
    from statelab.cluster.client import ClusterError, ControlClient

    try:
        return getattr(ControlClient(run_dir), call)(*args)
    except ClusterError as exc:
        raise fail(str(exc)) from exc


def _show(result: object) -> None:
    typer.echo(json.dumps(result, indent=2))


@cluster_app.command("status")
def cluster_status(
    run_dir: RunDirOpt = Path("run"),
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every process, its pid and state as HAProxy sees it, requests and sessions."""
    from statelab.cluster.client import format_status

    status = _control(run_dir, "status")
    typer.echo(json.dumps(status, indent=2) if as_json else format_status(status))


@cluster_app.command("kill")
def cluster_kill(
    replica: str,
    run_dir: RunDirOpt = Path("run"),
    signal: Annotated[str, typer.Option(help="KILL (a crash) or TERM (graceful).")] = "KILL",
) -> None:
    """Kill a replica: SIGKILL unless --signal TERM."""
    name = signal.upper().removeprefix("SIG")
    if name not in ("KILL", "TERM"):
        raise fail("--signal must be KILL or TERM")
    _show(_control(run_dir, "kill", replica, name))


@cluster_app.command("start")
def cluster_start(replica: str, run_dir: RunDirOpt = Path("run")) -> None:
    """Start a replica again (same port) and put it back in rotation."""
    _show(_control(run_dir, "start", replica))


@cluster_app.command("add")
def cluster_add(run_dir: RunDirOpt = Path("run")) -> None:
    """Add one replica; HAProxy starts sending it requests without a reload."""
    _show(_control(run_dir, "add"))


@cluster_app.command("remove")
def cluster_remove(replica: str, run_dir: RunDirOpt = Path("run")) -> None:
    """Drain a replica, stop it gracefully and take it out of the load balancer."""
    _show(_control(run_dir, "remove", replica))


@cluster_app.command("drain")
def cluster_drain(replica: str, run_dir: RunDirOpt = Path("run")) -> None:
    """No new requests for a replica; in-flight ones finish (`start` undoes it)."""
    _show(_control(run_dir, "drain", replica))


@cluster_app.command("rolling-restart")
def cluster_rolling_restart(run_dir: RunDirOpt = Path("run")) -> None:
    """Restart every replica, one at a time, each drained first."""
    _show(_control(run_dir, "rolling_restart"))


@cluster_app.command("restart-redis")
def cluster_restart_redis(
    run_dir: RunDirOpt = Path("run"),
    clean: Annotated[bool, typer.Option(help="SIGTERM (AOF flushed) instead of kill -9.")] = False,
) -> None:
    """Restart Redis on the same port and data: kill -9 unless --clean."""
    _show(_control(run_dir, "restart_redis", "clean" if clean else "kill"))


def main() -> None:
    app()
