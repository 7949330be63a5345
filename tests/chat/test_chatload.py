"""The chat workload of the bench, run for real at a low rate: two replicas, Redis,
SQLite; and its generator against the echo server."""

from __future__ import annotations

from typing import Any, cast

from websockets.asyncio.client import ClientConnection

from statelab.lab.chatload import Setup, Socket, echo_capacity, measure, pairs, sequence_faults


def test_pairs_give_every_room_a_sender_and_every_sender_a_room() -> None:
    for senders, rooms in ((16, 1), (4, 50), (3, 7)):
        chosen = pairs(senders, rooms)
        assert {s for s, _ in chosen} == set(range(senders))
        assert {r for _, r in chosen} == set(range(rooms))


def _heard(frames: dict[str, list[tuple[int, str]]], acks: list[str]) -> Setup:
    receiver = Socket(cast(ClientConnection, None))
    receiver.received = {
        room: [(seq, cmid, 0.0) for seq, cmid in got] for room, got in frames.items()
    }
    sender = Socket(cast(ClientConnection, None))
    sender.acks = {cmid: (0.0, 0) for cmid in acks}
    return Setup([sender], [0], [receiver], list(frames))


def test_sequence_faults_count_holes_repeats_and_acked_messages_never_delivered() -> None:
    clean: dict[str, Any] = {"a": [(1, "m0"), (2, "m1")], "b": [(1, "m2")]}
    assert sequence_faults(_heard(clean, ["m0", "m1", "m2"])) == (0, 0)
    hole = {"a": [(1, "m0"), (3, "m2")]}  # 2 is missing
    assert sequence_faults(_heard(hole, ["m0", "m2"])) == (1, 0)
    repeat = {"a": [(1, "m0"), (1, "m0"), (2, "m1")]}
    assert sequence_faults(_heard(repeat, ["m0", "m1"])) == (0, 1)
    assert sequence_faults(_heard(clean, ["m0", "m1", "m2", "m3"])) == (1, 0)  # m3 lost


def test_a_short_run_on_two_replicas_is_clean_and_measured(redis_url: str) -> None:
    result = measure("sqlite", 1.5, 2, rate=100, senders=4, redis_url=redis_url)
    assert result["sent"] == 250  # one second of warm-up, then 1.5 s, at 100 a second
    assert result["acked"] == result["sent"] and result["errors"] == 0
    assert (result["gaps"], result["duplicates"]) == (0, 0)
    assert result["offered_per_second"] == 100.0 and result["msgs_per_second"] > 0
    assert 0 < result["ack_p50_ms"] <= result["ack_p99_ms"]
    assert 0 < result["delivery_p50_ms"] <= result["delivery_p99_ms"]
    assert result["replica_cpu_us_per_message"] > 0 and result["generator_cpu_us_per_message"] > 0
    assert result["sql_statements_per_message"] > 0


def test_the_generator_alone_against_the_echo_server() -> None:
    result = echo_capacity(rate=300, seconds=1.0, rooms=3, senders=4)
    assert result["acked"] == result["sent"] == 600
    assert (result["gaps"], result["duplicates"], result["errors"]) == (0, 0, 0)
    assert result["generator_cpu_us_per_message"] > 0
    assert result["sql_statements_per_message"] == 0  # no replica, no SQL
