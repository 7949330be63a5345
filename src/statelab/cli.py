"""The statelab command line: parses options, sets up logging, calls one function."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

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
def demo() -> None:
    """Play Alice's journey across two replicas in the stateless and stateful profiles."""
    from statelab.lab.journey import run
    from statelab.lab.report import print_journey

    _logging("WARNING")
    print_journey(run())


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


def main() -> None:
    app()
