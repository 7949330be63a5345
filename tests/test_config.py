"""Settings: profiles, overrides, and refusals that name the option."""

from __future__ import annotations

import re

import pytest

from statelab.config import ConfigError, build_settings, database_url_async, parse_place


def test_profiles_and_overrides() -> None:
    s = build_settings(profile="token", redis_url="redis://127.0.0.1:1/0", place={"cart": "redis"})
    assert s.placements["session"] == "jwt"
    assert s.placements["cart"] == "redis"
    assert build_settings(profile="stateful").placements["ledger"] == "memory"


def test_impossible_combination_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--redis-url is required by cart=redis"):
        build_settings(profile="stateful", place={"cart": "redis"})


def test_place_parsing_names_what_is_wrong() -> None:
    assert parse_place(["cart=client", "ledger=db"]) == {"cart": "client", "ledger": "db"}
    with pytest.raises(ConfigError, match="KIND one of"):
        parse_place(["basket=memory"])
    expected = re.escape("cart placement must be one of memory|redis|client")
    with pytest.raises(ConfigError, match=expected):
        parse_place(["cart=disk"])


def test_database_urls_get_async_drivers() -> None:
    assert database_url_async("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert database_url_async("postgresql://u@h:5/d") == "postgresql+asyncpg://u@h:5/d"
    with pytest.raises(ConfigError):
        database_url_async("mysql://u@h/d")


def test_placeholder_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="secret_key"):
        build_settings(profile="stateful", secret_key="changeme")
