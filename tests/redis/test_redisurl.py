"""The Redis URL forms the settings accept, and what a wrong one is told."""

from __future__ import annotations

import pytest

from statelab.config import ConfigError, build_settings
from statelab.redisurl import RedisAddress, parse_redis_url, redacted


def test_each_form_is_parsed() -> None:
    assert parse_redis_url("redis://:pw@10.0.0.5:6380/2") == RedisAddress(
        "single", (("10.0.0.5", 6380),), None, 2, None, "pw"
    )
    assert parse_redis_url("redis+sentinel://s1:26379,s2,[::1]:26380/shop/1") == RedisAddress(
        "sentinel", (("s1", 26379), ("s2", 26379), ("::1", 26380)), "shop", 1
    )
    assert parse_redis_url("redis+cluster://u:p%40ss@n1:7000,n2:7001") == RedisAddress(
        "cluster", (("n1", 7000), ("n2", 7001)), None, 0, "u", "p@ss"
    )


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://h:1", "expected redis://"),
        ("rediss://h:1", "expected redis://"),
        ("redis+sentinel://s1:26379", "name the primary"),
        ("redis+cluster://n1:7000/3", "only database 0"),
        ("redis://a:1,b:2/0", "one host only"),
        ("redis://h:port/0", "is not host"),
        ("redis://h:1/zero", "database is a number"),
    ],
)
def test_a_wrong_url_is_refused_saying_why(url: str, said: str) -> None:
    with pytest.raises(ValueError, match=said):
        parse_redis_url(url)
    with pytest.raises(ConfigError, match=said):
        build_settings(redis_url=url)


def test_settings_take_sentinel_and_cluster_urls() -> None:
    for url in ("redis+sentinel://a:1,b:2/statelab/0", "redis+cluster://a:1,b:2"):
        assert build_settings(redis_url=url).redis_url == url


def test_a_password_is_never_shown() -> None:
    assert redacted("redis+cluster://u:secret@n1:1,n2:2") == "redis+cluster://u:***@n1:1,n2:2"
    assert redacted("redis://secret@h:1/0") == "redis://***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(ValueError) as refused:
        parse_redis_url("redis+sentinel://u:secret@h:1")
    assert "secret" not in str(refused.value)
