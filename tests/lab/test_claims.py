"""Every judge, fed synthetic runs on both sides of its criterion: the verdict must
flip (a constant judge fails here), and a missing run must give "not measured"."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from statelab.lab.claims import CLAIMS, CLAIMS_BY_ID, VERDICTS, judge_all
from statelab.lab.framework import Run, Runs, Variant


def _run(scenario: str, label: str, **metrics: Any) -> Run:
    return Run(scenario, Variant(label), (), {}, "", {"held": True}, metrics)


def pizza(survived: bool, lost: int, label: str) -> Run:
    return _run("pizza", label, session_survived=survived, items_lost=lost, items_acked=2,
                replica_killed="r1", served_after_kill="r2")  # fmt: skip


def rolling(label: str, sessions: int, items: int, failed: int) -> Run:
    return _run("rolling-deploy", label, sessions_lost=sessions, items_lost=items,
                failed_requests=failed, requests=100)  # fmt: skip


def skew(label: str, medians: dict[int, float]) -> Run:
    sizes = [{"size": n, "median": m, "low": m - 0.05, "high": m + 0.05, "populations": 10}
             for n, m in medians.items()]  # fmt: skip
    return _run("sticky-skew", label, sizes=sizes, cpu_seconds={"r1": 1.0})


def memory(label: str, outcome: str, per: int | None = 700) -> Run:
    return _run("memory", label, outcome=outcome, limit_bytes=200 * 2**20,
                sessions_at_cap=30_000 if outcome != "held" else None, sessions_made=45_000,
                sessions_alive_after=0, replica_bytes_per_session=per,
                redis_bytes_per_session=300, replica_growth_bytes=2**20,
                redis_growth_bytes=20 * 2**20, points=[])  # fmt: skip


def latency(label: str, p50: float, p99: float, delay: float = 0.0) -> Run:
    levels = [{"share": s, "delay_ms": delay, "p50_ms": p50, "p99_ms": p99}
              for s in (0.25, 0.5, 0.75)]  # fmt: skip
    return _run("latency", label, levels=levels, saturation_rps=2000,
                redis_commands_per_request=1.2, sql_statements_per_request=0.0)  # fmt: skip


def scale(label: str, share: float, moved: int) -> Run:
    return _run("scale-out", label, share_first_5s=share, fair_share=0.25,
                seconds_to_first_request=0.3, regulars_on_new_replica=moved, regulars=9,
                newcomers_on_new_replica=2)  # fmt: skip


def atm(label: str, answers: int, violations: int) -> Run:
    seen = {f"r{i}": 7000 + i for i in range(answers)}
    return _run("atm", label, distinct_answers=answers, violations=violations,
                balances_seen=seen, acknowledged_operations=200)  # fmt: skip


def chat(label: str, ok: bool, lost: int = 0) -> Run:
    return _run("chat", label, presence_correct=ok, typing_correct=ok, unread_correct=ok,
                lost=lost, duplicates=0, users=4, replicas_used=["r1", "r2"],
                replica_killed="r1", reconnects=2, max_reconnect_s=0.4)  # fmt: skip


def revocation(label: str, lookups: float, accepted: int) -> Run:
    return _run("revocation", label, lookups_per_request=lookups,
                accepted_after_logout_all=accepted, token_lifetime_s=300, window_s=5)  # fmt: skip


def uploads(label: str, readable: int) -> Run:
    return _run("uploads", label, uploaded_via="r1", readable_via_other_replicas=readable,
                other_replicas=2, readable_after_uploader_killed=readable + 1,
                reads_after_kill=3)  # fmt: skip


def jobs(label: str, lost: int) -> Run:
    return _run("jobs", label, lost_jobs=lost, orders=6)


def sync(label: str, write: float, read: float) -> Run:
    return _run("sync-vs-shared", label, write_p50_ms=write, write_p99_ms=write * 3,
                read_p50_ms=read, read_p99_ms=read * 3, staleness_max_ms=4.0,
                staleness_p50_ms=1.0, distinct_answers=1, violations=0)  # fmt: skip


def restart(label: str, lost: int) -> Run:
    return _run("redis-restart", label, items_lost=lost, sessions_lost=1 if lost else 0,
                acknowledged_adds=40)  # fmt: skip


def failover(label: str) -> Run:
    return _run(
        "redis-failover",
        label,
        acknowledged_lost=2,
        acknowledged_writes=300,
        seconds_unwritable=1.4,
        explanation="asynchronous replication lost 2 writes",
    )


def stale(label: str, answers: int) -> Run:
    return _run("stale-cache", label, stale_answers=answers, stale_seconds=2.9, ttl_s=3,
                silent_price_changes=0, checkout_rule="refused 1")  # fmt: skip


def timers(label: str, before: list[int], after: list[int]) -> Run:
    return _run("timers", label, replicas=3, runs_before_kill=before, runs_after_kill=after,
                period_s=2)  # fmt: skip


def nosticky(label: str, forgotten: int) -> Run:
    return _run("no-sticky", label, not_logged_in_answers=forgotten, requests=30,
                replicas_seen=["r1", "r2", "r3"], crashes=0)  # fmt: skip


#: For each claim: runs that meet its criterion, and a change that breaks it.
CASES: dict[str, tuple[list[Run], Callable[[list[Run]], None]]] = {}


def case(claim: str, runs: list[Run]) -> Callable[[Callable[[list[Run]], None]], None]:
    def register(breaker: Callable[[list[Run]], None]) -> None:
        CASES[claim] = (runs, breaker)

    return register


def _by(runs: list[Run], run_id: str) -> Run:
    return next(r for r in runs if r.id == run_id)


@case("C1", [skew("roundrobin", {12: 1.05, 120: 1.02}), pizza(True, 0, "stateless")])
def _(runs: list[Run]) -> None:
    _by(runs, "sticky-skew/roundrobin").metrics["sizes"][0]["median"] = 1.3
    _by(runs, "pizza/stateless").metrics["session_survived"] = False


@case("C2", [pizza(False, 2, "stateful"), pizza(True, 0, "stateless"), pizza(True, 0, "token")])
def _(runs: list[Run]) -> None:
    _by(runs, "pizza/stateful").metrics.update(session_survived=True, items_lost=0)


@case("C3", [skew("sticky", {12: 1.6, 120: 1.4}), skew("roundrobin", {12: 1.05, 120: 1.02})])
def _(runs: list[Run]) -> None:
    for s in _by(runs, "sticky-skew/sticky").metrics["sizes"]:
        s["median"] = 1.1


@case("C4", [rolling("stateful", 2, 3, 0), rolling("stateless", 0, 0, 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "rolling-deploy/stateful").metrics.update(sessions_lost=0, items_lost=0)


@case("C5", [memory("memory", "killed", per=3800), memory("redis", "held", per=1800)])
def _(runs: list[Run]) -> None:
    _by(runs, "memory/memory").metrics["outcome"] = "held"


@case("C6", [latency("stateful", 2.0, 8.0), latency("stateless", 2.1, 9.0)])
def _(runs: list[Run]) -> None:
    for lv in _by(runs, "latency/stateless").metrics["levels"]:
        lv.update(p50_ms=4.0, p99_ms=20.0)


@case("C7", [scale("stateless", 0.24, 0), scale("stateful", 0.1, 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "scale-out/stateless").metrics["share_first_5s"] = 0.05
    _by(runs, "scale-out/stateful").metrics["regulars_on_new_replica"] = 3


@case("C8", [atm("stateful", 3, 2), atm("stateless", 1, 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "atm/stateful").metrics.update(distinct_answers=1, violations=0)


@case("C9", [chat("stateful", False, lost=5), chat("stateless", True)])
def _(runs: list[Run]) -> None:
    _by(runs, "chat/stateful").metrics.update(
        presence_correct=True, typing_correct=True, unread_correct=True, lost=0
    )


@case("C10", [revocation("jwt-pure", 0, 40), revocation("jwt", 1, 0), revocation("redis", 1, 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "revocation/jwt-pure").metrics["lookups_per_request"] = 1.0
    _by(runs, "revocation/jwt").metrics["accepted_after_logout_all"] = 12


@case("C11", [uploads("stateful", 0), uploads("stateless", 2)])
def _(runs: list[Run]) -> None:
    _by(runs, "uploads/stateful").metrics.update(
        readable_via_other_replicas=2, readable_after_uploader_killed=3
    )


@case("C12", [jobs("stateful", 4), jobs("stateless", 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "jobs/stateful").metrics["lost_jobs"] = 0


@case("C13", [sync("db", 3.0, 1.0), sync("replicated", 6.0, 2.0)])
def _(runs: list[Run]) -> None:
    _by(runs, "sync-vs-shared/db").metrics.update(write_p50_ms=9.0, read_p50_ms=5.0)


@case("C14", [restart("aof-off", 30), restart("aof-everysec", 0), restart("aof-always", 0),
              pizza(True, 0, "stateless"), failover("async")])  # fmt: skip
def _(runs: list[Run]) -> None:
    _by(runs, "redis-restart/aof-everysec").metrics["items_lost"] = 5


@case("C15", [stale("memory", 12), stale("redis", 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "stale-cache/memory").metrics["stale_answers"] = 0


@case("C16", [timers("inprocess", [3, 3], [2, 2]), timers("scheduler", [1, 1], [1, 1])])
def _(runs: list[Run]) -> None:
    _by(runs, "timers/inprocess").metrics["runs_before_kill"] = [1, 1]
    _by(runs, "timers/scheduler").metrics["runs_after_kill"] = [0, 2]


@case("C17", [nosticky("roundrobin", 20), nosticky("sticky", 0)])
def _(runs: list[Run]) -> None:
    _by(runs, "no-sticky/roundrobin").metrics["not_logged_in_answers"] = 0


def test_every_claim_has_a_flip_case() -> None:
    assert set(CASES) == {c.id for c in CLAIMS}


@pytest.mark.parametrize("claim", sorted(CASES, key=lambda c: int(c[1:])))
def test_the_verdict_flips_across_the_criterion(claim: str) -> None:
    runs, breaker = CASES[claim]
    judge = CLAIMS_BY_ID[claim]
    meets = judge.verdict(Runs(runs))
    assert meets.verdict == "confirmed", meets.reason
    assert meets.reason and meets.story and meets.runs
    broken = copy.deepcopy(runs)
    breaker(broken)
    fails = judge.verdict(Runs(broken))
    assert fails.verdict in ("refuted", "partly true"), fails.reason
    assert fails.reason != meets.reason


@pytest.mark.parametrize("claim", sorted(CASES, key=lambda c: int(c[1:])))
def test_a_missing_run_is_not_measured(claim: str) -> None:
    runs, _ = CASES[claim]
    judge = CLAIMS_BY_ID[claim]
    assert judge.verdict(Runs(runs[1:])).verdict == "not measured"
    assert judge.verdict(Runs()).verdict == "not measured"


def test_noise_is_not_judged() -> None:
    runs = [memory("memory", "killed", per=1750), memory("redis", "held", per=1800)]
    assert CLAIMS_BY_ID["C5"].verdict(Runs(runs)).verdict == "not measured"


def test_judge_all_keeps_each_claim() -> None:
    found = judge_all(Runs())
    assert set(found) == {c.id for c in CLAIMS}
    assert all(j.verdict in VERDICTS for j in found.values())
