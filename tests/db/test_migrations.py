"""Schema migrations on SQLite and PostgreSQL, with rows written by the older schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from statelab.db.engine import make_engine, sessionmaker
from statelab.db.migrate import current_revision, head_revision, upgrade
from statelab.domain.errors import InsufficientFunds
from statelab.state.ledger import Idempotency, Outcome, SqlLedger

#: Idempotency keys as revision 0002 stored them: (key, state, status code, body).
OLD_KEYS = [
    ("topped", "done", 200, '{"balance_cents": 500}'),
    ("paid", "done", 201, '{"id": 1, "total_cents": 1100, "balance_cents": 0}'),
    (
        "refused",
        "done",
        409,
        '{"error": "InsufficientFunds", "title": "Insufficient funds", "detail": "too little"}',
    ),
    ("crashed", "in_flight", None, None),
]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shop.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


async def _write_old_keys(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (id, username, password_hash) VALUES (1, 'old', '-')")
            )
            for key, state, status, body in OLD_KEYS:
                await conn.execute(
                    text(
                        "INSERT INTO idempotency_keys"
                        " (user_id, key, fingerprint, state, status_code, body, started_at)"
                        " VALUES (1, :key, 'f', :state, :status, :body, 1000)"
                    ),
                    {"key": key, "state": state, "status": status, "body": body},
                )
    finally:
        await engine.dispose()


async def _replays(url: str) -> dict[str, Outcome | None]:
    engine = make_engine(url)
    try:
        ledger = SqlLedger(sessionmaker(engine), key_ttl_seconds=3600)
        return {key: await ledger.replay(1, Idempotency(key, "f")) for key, *_ in OLD_KEYS}
    finally:
        await engine.dispose()


def test_0003_keeps_finished_keys_as_outcomes_and_forgets_unfinished_ones(
    database_url: str,
) -> None:
    upgrade(database_url, "0002")
    asyncio.run(_write_old_keys(database_url))
    assert upgrade(database_url) == head_revision()
    assert asyncio.run(current_revision(database_url)) == head_revision()

    replays = asyncio.run(_replays(database_url))
    topped, paid, refused = replays["topped"], replays["paid"], replays["refused"]
    assert topped is not None and (topped.kind, topped.body) == ("applied", {"balance_cents": 500})
    assert paid is not None and paid.kind == "created" and paid.body["id"] == 1
    assert refused is not None and refused.kind == "refused"
    assert isinstance(refused.refusal, InsufficientFunds)
    assert refused.refusal.detail == "too little"
    # It never committed an effect (the old schema wrote both together): a retry applies it.
    assert replays["crashed"] is None
