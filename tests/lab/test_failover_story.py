"""The redis-failover scenario's sentence: built from its numbers, and for WAIT
compared with the asynchronous run of the same session."""

from __future__ import annotations

from statelab.lab.framework import Run, Variant
from statelab.lab.scenarios.persistence import FailoverMetrics, _explain


def metrics(**changed: object) -> FailoverMetrics:
    base = FailoverMetrics(
        topology="sentinel", wait_replicas=0, killed="redis-1", users=12,
        acknowledged_writes=412, acknowledged_lost=3, applied_unacknowledged=0,
        seconds_unwritable=2.5, writes_during_outage=0, users_affected=12,
        failed_requests=40, answers_503=40, answers_503_without_retry_after=0, answers_500=0,
        no_answer=0, write_p50_ms=4.0, write_p99_ms=9.0, chat_acknowledged=30, chat_lost=0,
        chat_duplicates=0, explanation="",
    )  # fmt: skip
    return FailoverMetrics(**{**base, **changed})  # type: ignore[typeddict-item]


def test_asynchronous_replication_says_what_it_lost() -> None:
    said = _explain(metrics(), None)
    assert "lost 3 of 412 acknowledged cart adds" in said and "2.5 s" in said
    assert "lost 0 deliveries of 30 acknowledged messages" in said


def test_wait_is_compared_with_the_asynchronous_run() -> None:
    control = Run("redis-failover", Variant("async"), ("C14",), {}, "", {}, dict(metrics()))
    said = _explain(metrics(wait_replicas=1, acknowledged_lost=0, write_p50_ms=4.4), control)
    assert "With WAIT 1" in said and "0 of 412" in said
    assert "0.4 ms longer at p50" in said and "where 3 of 412 were lost" in said


def test_a_cluster_says_who_kept_writing() -> None:
    said = _explain(metrics(topology="cluster", users_affected=7, writes_during_outage=90), None)
    assert "7 of 12 users saw errors" in said and "acknowledged 90 writes meanwhile" in said
