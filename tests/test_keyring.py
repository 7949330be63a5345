"""Secrets: the strength rule, refusals that say how to make one, a key per purpose."""

from __future__ import annotations

import math
import secrets

import pytest

from statelab.config import ConfigError, build_settings
from statelab.keyring import MAKE_SECRET, Keys, derive, estimated_bits, secret_problem

STRONG = "9c1f0e6a4b7d2853e0af61c4d9b28e7f5a3c6d1e0b9f8a7c6d5e4f3a2b1c0d9e"


@pytest.mark.parametrize(
    "weak",
    [
        "changeme",
        "0123456789abcdef",  # 16 characters: the old minimum
        secrets.token_hex(16),  # 32 hex characters: 128 bits
        "s" * 32,
        "a" * 64,
        "abcd1234" * 8,  # 64 characters, one piece repeated
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabcdefghij",
        "correct horse battery staple",
    ],
    ids=["placeholder", "16", "hex16", "s32", "a64", "period", "one-char-heavy", "phrase"],
)
def test_weak_secrets_are_refused_with_how_to_make_one(weak: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_settings(profile="stateful", secret_key=weak)
    message = str(caught.value)
    assert "STATELAB_SECRET_KEY" in message
    assert MAKE_SECRET in message and "token_hex(32)" in message
    assert weak not in message  # a refusal never repeats the secret


def test_the_suggested_secrets_always_pass() -> None:
    for _ in range(2000):
        assert secret_problem(secrets.token_hex(32)) is None
        assert secret_problem(secrets.token_urlsafe(48)) is None
    assert build_settings(profile="stateful", secret_key=STRONG).secret_key == STRONG


def test_the_estimate_counts_character_classes() -> None:
    assert estimated_bits("a" * 10) == pytest.approx(10 * math.log2(26))
    assert estimated_bits("aB3" * 10) == pytest.approx(30 * math.log2(26 + 26 + 10))
    assert estimated_bits("a-") == pytest.approx(2 * math.log2(26 + 33))
    assert estimated_bits("é" * 4) == pytest.approx(4 * math.log2(33))  # not ASCII: "other"
    problem = secret_problem("abcdefghijklmnopqrstuvwxyz012345")
    assert problem is not None and "165 bits" in problem


def test_jwt_keys_must_be_strong_each() -> None:
    with pytest.raises(ConfigError, match="jwt key 'k2'"):
        build_settings(profile="stateful", jwt_keys={"k1": STRONG, "k2": "x" * 40})
    ok = build_settings(profile="stateful", jwt_keys={"k1": STRONG, "k2": secrets.token_hex(32)})
    assert set(ok.jwt_keys) == {"k1", "k2"}


def test_the_development_secret_is_strong_and_known_for_what_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STATELAB_SECRET_KEY", raising=False)
    dev = build_settings(profile="stateful")
    assert dev.development_secret
    assert secret_problem(dev.secret_key) is None
    assert build_settings(profile="stateful").secret_key != dev.secret_key  # per process
    assert not build_settings(profile="stateful", secret_key=STRONG).development_secret
    monkeypatch.setenv("STATELAB_SECRET_KEY", STRONG)
    assert not build_settings(profile="stateful").development_secret


def test_one_independent_key_per_purpose() -> None:
    keys = Keys.derive(STRONG, {}, "k1")
    derived = [keys.jwt["k1"], keys.cart, keys.csrf, keys.file_ids]
    assert len(set(derived)) == 4 and all(len(k) == 32 for k in derived)
    assert STRONG.encode() not in derived
    assert Keys.derive(STRONG, {}, "k1") == keys  # the same secret: the same keys
    other = Keys.derive(secrets.token_hex(32), {}, "k1")
    assert {other.cart, other.csrf, other.file_ids}.isdisjoint(derived)
    assert derive(STRONG, "cart") == keys.cart
    assert STRONG not in repr(keys) and keys.cart.hex() not in repr(keys)


def test_explicit_jwt_keys_are_used_as_given() -> None:
    given = {"k1": secrets.token_hex(32), "k2": secrets.token_hex(32)}
    keys = Keys.derive(STRONG, given, "k2")
    assert dict(keys.jwt) == {kid: key.encode() for kid, key in given.items()}
    assert keys.cart == derive(STRONG, "cart")  # the other purposes still come from the secret
