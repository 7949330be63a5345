"""The claims the lab tests and their judges: one judge per claim.

A judge reads named metrics from the runs the claim lists (CLAIMS.md), compares
them with the claim's criterion and returns a ``Judgement``: the verdict, the
numbers it compared (``reason``), a plain-words account of what happened
(``story``) and the ids of the runs it read. Where a run it needs is missing the
verdict is ``not measured`` — never a guess, never a constant. Every comparison
has a control: the same scenario with only the knob under test changed.

Like Jepsen's checkers, each judge reads the history independently and keeps its
evidence; ``judge_all`` keeps each result under its claim's id.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from statelab.lab.framework import Run, Runs

Verdict = Literal["confirmed", "refuted", "partly true", "not measured"]
VERDICTS: tuple[Verdict, ...] = ("confirmed", "refuted", "partly true", "not measured")


@dataclass
class Judgement:
    verdict: Verdict
    reason: str
    story: str = ""
    runs: list[str] = field(default_factory=list)


class NotMeasured(Exception):
    """A run the judge needs is missing (or its number is within its noise)."""


class _Reader:
    """Hands a judge its runs and remembers which it read."""

    def __init__(self, runs: Runs) -> None:
        self._runs = runs
        self.read: list[str] = []

    def need(self, scenario: str, label: str) -> Run:
        run = self._runs.get(scenario, label)
        if run is None:
            raise NotMeasured(f"needs the {scenario}/{label} run")
        self.read.append(run.id)
        return run

    def maybe(self, scenario: str, label: str) -> Run | None:
        run = self._runs.get(scenario, label)
        if run is not None:
            self.read.append(run.id)
        return run

    def all(self, scenario: str) -> list[Run]:
        found = self._runs.of(scenario)
        self.read.extend(r.id for r in found)
        return found


JudgeFn = Callable[[_Reader], Judgement]


@dataclass(frozen=True)
class Claim:
    id: str
    text: str
    criterion: str
    judge: JudgeFn

    def verdict(self, runs: Runs) -> Judgement:
        reader = _Reader(runs)
        try:
            found = self.judge(reader)
        except NotMeasured as exc:
            return Judgement("not measured", str(exc), runs=sorted(set(reader.read)))
        found.runs = sorted(set(reader.read))
        return found


def _tri(holds: bool, fails: bool) -> Verdict:
    """confirmed when every part holds, refuted when none does, else partly true."""
    if holds:
        return "confirmed"
    return "refuted" if fails else "partly true"


def _m(run: Run, key: str) -> Any:
    return run.metrics[key]


# --------------------------------------------------------------------------- C1


def judge_c1(r: _Reader) -> Judgement:
    rr = r.need("sticky-skew", "roundrobin")
    crash = r.need("pizza", "stateless")
    sizes = _m(rr, "sizes")
    worst = max(s["median"] for s in sizes)
    even = worst <= 1.1
    survived = bool(_m(crash, "session_survived"))
    reason = (
        f"round-robin busiest/mean at most {worst} (criterion <= 1.1); after "
        f"{_m(crash, 'replica_killed')} died, {_m(crash, 'served_after_kill')} "
        f"{'served the same session' if survived else 'did not know the session'}"
    )
    story = (
        f"With Redis sessions and round-robin balancing, every population's requests were "
        f"spread within {round((worst - 1) * 100)} % of an even share. When the replica "
        f"serving Alice ({_m(crash, 'replica_killed')}) was killed, her next request landed on "
        f"{_m(crash, 'served_after_kill')}, which "
        + ("knew her session from the shared store." if survived else "did not know her.")
    )
    return Judgement(_tri(even and survived, not even and not survived), reason, story)


# --------------------------------------------------------------------------- C2


def _lost_something(run: Run) -> bool:
    return not _m(run, "session_survived") or _m(run, "items_lost") > 0


def judge_c2(r: _Reader) -> Judgement:
    mem = r.need("pizza", "stateful")
    shared = [run for run in (r.maybe("pizza", "stateless"), r.maybe("pizza", "token")) if run]
    if not shared:
        raise NotMeasured("needs a pizza run with shared placements (stateless or token)")
    roll_mem, roll_shared = (
        r.maybe("rolling-deploy", "stateful"),
        r.maybe("rolling-deploy", "stateless"),
    )
    mem_lost = _lost_something(mem) or bool(
        roll_mem and (_m(roll_mem, "sessions_lost") or _m(roll_mem, "items_lost"))
    )
    shared_lost = [run.id for run in shared if _lost_something(run)]
    if roll_shared and (_m(roll_shared, "sessions_lost") or _m(roll_shared, "items_lost")):
        shared_lost.append(roll_shared.id)
    reason = f"memory: {_pizza_loss(mem)}; " + "; ".join(
        f"{run.variant.label}: {_pizza_loss(run)}" for run in shared
    )
    if roll_mem and roll_shared:
        reason += (
            f"; rolling deploy: memory lost {_m(roll_mem, 'sessions_lost')} sessions and "
            f"{_m(roll_mem, 'items_lost')} items, shared {_m(roll_shared, 'sessions_lost')} and "
            f"{_m(roll_shared, 'items_lost')}"
        )
    story = (
        f"Alice had {_m(mem, 'items_acked')} items acknowledged when {_m(mem, 'replica_killed')} "
        f"was killed. In memory, {_m(mem, 'served_after_kill')} had never seen her session: "
        f"{_pizza_loss(mem)}. "
        + " ".join(
            f"With {run.variant.label} placements {_m(run, 'served_after_kill')} took over and "
            f"she {'kept' if _m(run, 'session_survived') else 'lost'} her session and lost "
            f"{_m(run, 'items_lost')} items."
            for run in shared
        )
    )
    return Judgement(_tri(mem_lost and not shared_lost, not mem_lost), reason, story)


def _pizza_loss(run: Run) -> str:
    return (
        f"session {'kept' if _m(run, 'session_survived') else 'lost'}, "
        f"{_m(run, 'items_lost')}/{_m(run, 'items_acked')} items lost"
    )


# --------------------------------------------------------------------------- C3


def judge_c3(r: _Reader) -> Judgement:
    sticky = r.need("sticky-skew", "sticky")
    rr = r.need("sticky-skew", "roundrobin")
    rr_by_size = {s["size"]: s for s in _m(rr, "sizes")}
    holds: list[int] = []
    fails: list[int] = []
    parts: list[str] = []
    for s in _m(sticky, "sizes"):
        other = rr_by_size.get(s["size"])
        if other is None:
            continue
        gap = round(s["median"] - other["median"], 2)
        (holds if gap >= 0.2 else fails).append(s["size"])
        parts.append(
            f"{s['size']} users: sticky median {s['median']} (range {s['low']}-{s['high']}), "
            f"round-robin {other['median']} ({other['low']}-{other['high']}), gap {gap}"
        )
    if not parts:
        raise NotMeasured("the sticky and round-robin runs share no population size")
    reason = "; ".join(parts) + " (criterion: sticky median exceeds round-robin's by >= 0.2)"
    where = f"holds at {_sizes(holds)}" if holds else "holds at no size"
    story = (
        f"HAProxy pinned each user to the replica it first landed on (its cookie) and every user "
        f"kept sending a Zipf-weighted share of the requests, with the same Redis session store "
        f"behind both policies. The claim {where}"
        + (f" and not at {_sizes(fails)}" if fails and holds else "")
        + ": with few users one heavy user decides a replica's load; with many, the law of "
        "large numbers evens the pinned shares out."
    )
    return Judgement(_tri(not fails, not holds), reason, story)


def _sizes(sizes: list[int]) -> str:
    return ", ".join(f"{n} users" for n in sizes)


# --------------------------------------------------------------------------- C4


def judge_c4(r: _Reader) -> Judgement:
    mem, shared = r.need("rolling-deploy", "stateful"), r.need("rolling-deploy", "stateless")

    def hurt(run: Run) -> int:
        return int(
            _m(run, "sessions_lost") + _m(run, "items_lost") + _m(run, "failed_requests") > 0
        )

    def said(run: Run) -> str:
        return (
            f"{_m(run, 'sessions_lost')} sessions and {_m(run, 'items_lost')} items lost, "
            f"{_m(run, 'failed_requests')} of {_m(run, 'requests')} requests failed"
        )

    reason = f"stateful: {said(mem)}; stateless: {said(shared)}"
    story = (
        "Every replica was drained, stopped with SIGTERM and started again, one at a time, while "
        f"shoppers kept browsing. Stateful: {said(mem)}. Stateless: {said(shared)}."
    )
    risky, safe = hurt(mem), not hurt(shared)
    return Judgement(_tri(bool(risky) and safe, not risky), reason, story)


# --------------------------------------------------------------------------- C5


def judge_c5(r: _Reader) -> Judgement:
    mem, shared = r.need("memory", "memory"), r.need("memory", "redis")
    per_login = _m(mem, "replica_bytes_per_session")
    baseline = _m(shared, "replica_bytes_per_session")
    per_redis = _m(shared, "redis_bytes_per_session")
    # A replica grows a little per login whatever holds the session (allocator
    # arenas, caches): the control's growth is subtracted.
    per_mem = per_login - baseline if per_login is not None and baseline is not None else None
    if per_mem is None or per_mem <= 0 or per_redis is None or per_redis <= 0:
        raise NotMeasured(
            "bytes per session within the noise at this size (replica "
            f"{per_login} B/login with memory sessions, {baseline} without; Redis {per_redis}); "
            "run with more sessions"
        )
    limit_mib = _m(mem, "limit_bytes") // 2**20
    capped = _m(mem, "outcome") in ("killed", "refused")
    flat = _m(shared, "outcome") == "held"
    reason = (
        f"memory placement in a {limit_mib} MiB cgroup: {_m(mem, 'outcome')} at "
        f"{_m(mem, 'sessions_at_cap')} sessions ({per_mem} B/session in the replica: "
        f"{per_login} B per login minus the control's {baseline}, "
        f"{_m(mem, 'sessions_alive_after')} sessions alive afterwards); redis placement: "
        f"{_m(shared, 'outcome')} after {_m(shared, 'sessions_made')} sessions, replica RSS "
        f"grew {_m(shared, 'replica_growth_bytes') // 2**20} MiB while Redis grew "
        f"{_m(shared, 'redis_growth_bytes') // 2**20} MiB ({per_redis} B/session)"
    )
    story = (
        f"One replica ran in a {limit_mib} MiB memory cgroup and users kept logging in. Holding "
        f"sessions itself, it was {_m(mem, 'outcome')} after {_m(mem, 'sessions_at_cap')} "
        f"sessions, and {_m(mem, 'sessions_alive_after')} of them survived. With sessions in Redis "
        f"the same replica {'stayed up' if flat else 'also hit the cap'} through "
        f"{_m(shared, 'sessions_made')} logins; the memory moved to Redis, which has to be sized "
        "(and sharded) instead."
    )
    return Judgement(_tri(capped and flat, not capped), reason, story)


# --------------------------------------------------------------------------- C6


def _level_verdicts(local: Run, shared: Run) -> list[tuple[str, bool, str]]:
    """For each load level: (name, 'slightly' holds, the numbers)."""
    base = {lv["share"]: lv for lv in _m(local, "levels")}
    found = []
    for lv in _m(shared, "levels"):
        b = base.get(lv["share"])
        if b is None or not b["p50_ms"] or not b["p99_ms"]:
            continue
        p50 = (lv["p50_ms"] - b["p50_ms"]) / b["p50_ms"]
        p99 = (lv["p99_ms"] - b["p99_ms"]) / b["p99_ms"]
        ok = p50 <= 0.10 and p99 <= 0.25
        name = f"{shared.variant.label} at {round(lv['share'] * 100)} % load" + (
            f" with {lv['delay_ms']} ms delay" if lv["delay_ms"] else ""
        )
        found.append(
            (
                name,
                ok,
                f"{name}: p50 {b['p50_ms']} -> {lv['p50_ms']} ms ({p50:+.0%}), "
                f"p99 {b['p99_ms']} -> {lv['p99_ms']} ms ({p99:+.0%})",
            )
        )
    return found


def judge_c6(r: _Reader) -> Judgement:
    local = r.need("latency", "stateful")
    shared = [run for run in r.all("latency") if run.variant.label != "stateful"]
    if not shared:
        raise NotMeasured("needs a latency run with a shared store")
    levels = [lv for run in shared for lv in _level_verdicts(local, run)]
    if not levels:
        raise NotMeasured("the latency runs share no load level")
    holds = [name for name, ok, _ in levels if ok]
    fails = [name for name, ok, _ in levels if not ok]
    trips = "; ".join(
        f"{run.variant.label}: {_m(run, 'redis_commands_per_request')} Redis commands and "
        f"{_m(run, 'sql_statements_per_request')} SQL statements per request"
        for run in [local, *shared]
    )
    reason = (
        "; ".join(text for _, _, text in levels)
        + f". {trips}. Criterion: p50 +<= 10 % and p99 +<= 25 % over local at the same load"
    )
    story = (
        f"The stateful profile saturated at {_m(local, 'saturation_rps')} requests/s; each "
        "configuration was then loaded at a quarter, a half and three quarters of that, and "
        "the delayed one also through a TCP proxy that holds each packet between the replicas "
        "and Redis for 0.25 or 1 ms each way (this kernel has no netem). "
        + (f"'Slightly' holds at {', '.join(holds)}. " if holds else "'Slightly' holds nowhere. ")
        + (f"It does not at {', '.join(fails)}." if fails else "")
    )
    return Judgement(_tri(not fails, not holds), reason, story)


# --------------------------------------------------------------------------- C7


def judge_c7(r: _Reader) -> Judgement:
    sticky, shared = r.need("scale-out", "stateful"), r.need("scale-out", "stateless")
    share, fair = _m(shared, "share_first_5s"), _m(shared, "fair_share")
    fast = abs(share - fair) <= 0.2 * fair
    moved = _m(sticky, "regulars_on_new_replica")
    reason = (
        f"round-robin: the new replica took {share:.0%} of requests in its first 5 s (fair "
        f"{fair:.0%}, criterion within 20 %); sticky: {moved} existing users moved, "
        f"{_m(sticky, 'newcomers_on_new_replica')} new users went there"
    )
    story = (
        f"A replica was added under load. With a shared store it served its first request "
        f"{_m(shared, 'seconds_to_first_request')} s after it was ready and took {share:.0%} of "
        f"the traffic at once. With sticky sessions none of the {_m(sticky, 'regulars')} existing "
        f"users moved ({moved} did); only newcomers were sent to it."
    )
    return Judgement(_tri(fast and moved == 0, not fast and moved > 0), reason, story)


# --------------------------------------------------------------------------- C8


def judge_c8(r: _Reader) -> Judgement:
    mem, db = r.need("atm", "stateful"), r.need("atm", "stateless")
    split = _m(mem, "distinct_answers") > 1 or _m(mem, "violations") > 0
    one = _m(db, "distinct_answers") == 1 and _m(db, "violations") == 0
    reason = (
        f"per-replica: {_m(mem, 'distinct_answers')} different balances for one account, "
        f"{_m(mem, 'violations')} conservation violations; database: "
        f"{_m(db, 'distinct_answers')} answer, {_m(db, 'violations')} violations"
    )
    story = (
        "One customer topped up and withdrew through one replica and asked every replica for "
        f"the balance. Per-replica ledgers answered {_answers(mem)}; "
        f"the shared database answered {_answers(db)}, "
        f"and kept every account exact through {_m(db, 'acknowledged_operations')} operations "
        "while replicas were killed."
    )
    return Judgement(_tri(split and one, not split), reason, story)


def _answers(run: Run) -> str:
    seen = _m(run, "balances_seen").values()
    return ", ".join(sorted({str(v) for v in seen}))


# --------------------------------------------------------------------------- C9


_CHAT_CHECKS = ("presence_correct", "typing_correct", "unread_correct")


def judge_c9(r: _Reader) -> Judgement:
    mem, shared = r.need("chat", "stateful"), r.need("chat", "stateless")

    def wrong(run: Run) -> list[str]:
        bad = [c.removesuffix("_correct") for c in _CHAT_CHECKS if not _m(run, c)]
        if _m(run, "lost"):
            bad.append(f"{_m(run, 'lost')} deliveries lost")
        if _m(run, "duplicates"):
            bad.append(f"{_m(run, 'duplicates')} duplicates")
        return bad

    mem_wrong, shared_wrong = wrong(mem), wrong(shared)
    reason = (
        f"memory: {', '.join(mem_wrong) or 'nothing wrong'}; redis: "
        f"{', '.join(shared_wrong) or 'nothing wrong'} (0 lost, 0 duplicated, presence, typing "
        "and unread correct across replicas after a kill)"
    )
    story = (
        f"{_m(shared, 'users')} users on {len(_m(shared, 'replicas_used'))} replicas talked in "
        f"one room; {_m(shared, 'replica_killed')} was killed mid-conversation. With shared "
        f"stores {_m(shared, 'reconnects')} sockets reconnected (longest "
        f"{_m(shared, 'max_reconnect_s')} s) and caught up; "
        + (f"in memory: {', '.join(mem_wrong)}." if mem_wrong else "in memory nothing went wrong.")
    )
    return Judgement(_tri(bool(mem_wrong) and not shared_wrong, not mem_wrong), reason, story)


# -------------------------------------------------------------------------- C10


def judge_c10(r: _Reader) -> Judgement:
    pure, deny, opaque = (
        r.need("revocation", "jwt-pure"),
        r.need("revocation", "jwt"),
        r.need("revocation", "redis"),
    )
    no_lookup = _m(pure, "lookups_per_request") == 0
    pure_leaks = _m(pure, "accepted_after_logout_all") > 0
    deny_holds = _m(deny, "accepted_after_logout_all") == 0
    opaque_holds = _m(opaque, "accepted_after_logout_all") == 0
    reason = (
        f"store lookups per authenticated request: jwt-pure {_m(pure, 'lookups_per_request')}, "
        f"jwt {_m(deny, 'lookups_per_request')}, redis {_m(opaque, 'lookups_per_request')}; "
        f"after logout-all the old credential still got through "
        f"{_m(pure, 'accepted_after_logout_all')} times (jwt-pure, token lifetime "
        f"{_m(pure, 'token_lifetime_s')} s), {_m(deny, 'accepted_after_logout_all')} (jwt with "
        f"deny-list), {_m(opaque, 'accepted_after_logout_all')} (redis sessions)"
    )
    story = (
        "A user logged in and then pressed 'log out everywhere'. A pure token needs no lookup "
        f"to be trusted ({_m(pure, 'lookups_per_request')} per request) — and so every replica "
        f"kept accepting it, {_m(pure, 'accepted_after_logout_all')} times over "
        f"{_m(pure, 'window_s')} s, until it expired. Adding a deny-list in Redis "
        f"({_m(deny, 'lookups_per_request')} lookups per request) stopped it at once: "
        "revocation is shared state again."
    )
    holds = no_lookup and pure_leaks and deny_holds and opaque_holds
    fails = not no_lookup and not deny_holds
    return Judgement(_tri(holds, fails), reason, story)


# -------------------------------------------------------------------------- C11


def judge_c11(r: _Reader) -> Judgement:
    disk, objects = r.need("uploads", "stateful"), r.need("uploads", "stateless")

    def said(run: Run) -> str:
        return (
            f"readable on {_m(run, 'readable_via_other_replicas')}/{_m(run, 'other_replicas')} "
            f"other replicas and {_m(run, 'readable_after_uploader_killed')}/"
            f"{_m(run, 'reads_after_kill')} times after the uploader died"
        )

    disk_fails = _m(disk, "readable_via_other_replicas") < _m(disk, "other_replicas") or _m(
        disk, "readable_after_uploader_killed"
    ) < _m(disk, "reads_after_kill")
    objects_ok = _m(objects, "readable_via_other_replicas") == _m(objects, "other_replicas") and _m(
        objects, "readable_after_uploader_killed"
    ) == _m(objects, "reads_after_kill")
    reason = f"disk: {said(disk)}; object store: {said(objects)}"
    story = (
        f"A photo uploaded through {_m(disk, 'uploaded_via')} and kept on its disk was "
        f"{said(disk)}; in the object store it was {said(objects)}."
    )
    return Judgement(_tri(disk_fails and objects_ok, not disk_fails), reason, story)


# -------------------------------------------------------------------------- C12


def judge_c12(r: _Reader) -> Judgement:
    inproc, queue = r.need("jobs", "stateful"), r.need("jobs", "stateless")
    lost_inproc, lost_queue = _m(inproc, "lost_jobs"), _m(queue, "lost_jobs")
    reason = (
        f"in-process: {lost_inproc}/{_m(inproc, 'orders')} receipts lost when the replica died; "
        f"queue: {lost_queue}/{_m(queue, 'orders')} lost after a replica and a worker died"
    )
    story = (
        f"{_m(inproc, 'orders')} orders were paid and their receipt jobs were mid-flight when the "
        f"replica that took them was killed. Run inside it, {lost_inproc} receipts never came; "
        f"through the queue, with a worker killed as well, {lost_queue} were lost and each receipt "
        "was made once."
    )
    return Judgement(_tri(lost_inproc > 0 and lost_queue == 0, lost_inproc == 0), reason, story)


# -------------------------------------------------------------------------- C13


def judge_c13(r: _Reader) -> Judgement:
    shared, synced = r.need("sync-vs-shared", "db"), r.need("sync-vs-shared", "replicated")
    faster_writes = _m(shared, "write_p50_ms") < _m(synced, "write_p50_ms")
    faster_reads = _m(shared, "read_p50_ms") < _m(synced, "read_p50_ms")

    def said(run: Run) -> str:
        return (
            f"write p50 {_m(run, 'write_p50_ms')} / p99 {_m(run, 'write_p99_ms')} ms, read p50 "
            f"{_m(run, 'read_p50_ms')} / p99 {_m(run, 'read_p99_ms')} ms"
        )

    reason = (
        f"one shared database: {said(shared)}; separate stores kept in sync: {said(synced)}, "
        f"copies stale for up to {_m(synced, 'staleness_max_ms')} ms (p50 "
        f"{_m(synced, 'staleness_p50_ms')} ms); both gave {_m(shared, 'distinct_answers')} and "
        f"{_m(synced, 'distinct_answers')} answer(s) with {_m(shared, 'violations')} and "
        f"{_m(synced, 'violations')} violations"
    )
    story = (
        "The same bank workload ran against one shared SQL ledger and against per-replica "
        "ledgers that apply one ordered replication log. The shared database was "
        f"{'faster' if faster_writes else 'slower'} to write and "
        f"{'faster' if faster_reads else 'slower'} to read: synchronised copies answer reads "
        "locally, but every write waits until the log has been applied, and a copy lags by up "
        f"to {_m(synced, 'staleness_max_ms')} ms."
    )
    return Judgement(
        _tri(faster_writes and faster_reads, not faster_writes and not faster_reads), reason, story
    )


# -------------------------------------------------------------------------- C14


def judge_c14(r: _Reader) -> Judgement:
    off = r.need("redis-restart", "aof-off")
    persistent = [r.need("redis-restart", "aof-everysec"), r.need("redis-restart", "aof-always")]
    crash = r.need("pizza", "stateless")
    failover = [run for run in r.all("redis-failover")]
    control_loses = _m(off, "items_lost") > 0 or _m(off, "sessions_lost") > 0
    kept = all(_m(run, "items_lost") == 0 for run in persistent)
    replica_crash_ok = _m(crash, "items_lost") == 0 and bool(_m(crash, "session_survived"))
    parts = [
        f"{run.variant.label}: {_m(run, 'items_lost')} of {_m(run, 'acknowledged_adds')} "
        f"acknowledged writes lost, {_m(run, 'sessions_lost')} sessions lost"
        for run in [off, *persistent]
    ]
    parts.append(f"replica crash (pizza/stateless): {_m(crash, 'items_lost')} items lost")
    for run in failover:
        parts.append(
            f"failover {run.variant.label}: {_m(run, 'acknowledged_lost')} of "
            f"{_m(run, 'acknowledged_writes')} acknowledged writes lost, "
            f"{_m(run, 'seconds_unwritable')} s without a writable primary"
        )
    reason = "; ".join(parts)
    if not failover:
        reason += "; replication not measured (no redis-failover run)"
    story = (
        "Redis was killed with SIGKILL under a steady write load. Without persistence (the "
        f"control) it came back empty: {_m(off, 'items_lost')} acknowledged cart items were gone. "
        "With an append-only file, every acknowledged write came back — Redis writes the AOF "
        "before it answers, so only a machine crash (not a process crash) tests fsync. "
        + " ".join(f"{run.variant.label}: {run.metrics.get('explanation', '')}" for run in failover)
    )
    holds = control_loses and kept and replica_crash_ok and bool(failover)
    fails = not kept or not replica_crash_ok
    return Judgement(_tri(holds, fails), reason, story)


# -------------------------------------------------------------------------- C15


def judge_c15(r: _Reader) -> Judgement:
    mem, shared = r.need("stale-cache", "memory"), r.need("stale-cache", "redis")
    reason = (
        f"per-replica caches: {_m(mem, 'stale_answers')} stale answers for up to "
        f"{_m(mem, 'stale_seconds')} s (TTL {_m(mem, 'ttl_s')} s); shared cache: "
        f"{_m(shared, 'stale_answers')} stale answers; checkouts charging a price not shown: "
        f"{_m(mem, 'silent_price_changes')} and {_m(shared, 'silent_price_changes')}"
    )
    story = (
        f"An admin changed a price through one replica; shoppers kept reading the menu and their "
        f"carts through every replica. Replicas with their own copy served the old price "
        f"{_m(mem, 'stale_answers')} times, for up to {_m(mem, 'stale_seconds')} s; the shared "
        f"cache, invalidated on write, {_m(shared, 'stale_answers')} times. "
        f"Checkout {_m(mem, 'checkout_rule')}."
    )
    stale = _m(mem, "stale_answers") > 0
    fresh = _m(shared, "stale_answers") == 0
    return Judgement(_tri(stale and fresh, not stale and not fresh), reason, story)


# -------------------------------------------------------------------------- C16


def judge_c16(r: _Reader) -> Judgement:
    inproc, sched = r.need("timers", "inprocess"), r.need("timers", "scheduler")
    n = _m(inproc, "replicas")
    every = all(count == n for count in _m(inproc, "runs_before_kill"))
    once = all(count == 1 for count in _m(sched, "runs_before_kill") + _m(sched, "runs_after_kill"))
    reason = (
        f"in-process timers on {n} replicas ran {_m(inproc, 'runs_before_kill')} times per period "
        f"(then {_m(inproc, 'runs_after_kill')} after a kill); the scheduler ran "
        f"{_m(sched, 'runs_before_kill')} and {_m(sched, 'runs_after_kill')} after a kill "
        "(criterion: N per period vs exactly 1)"
    )
    story = (
        f"A periodic job (a sales summary) was scheduled every {_m(inproc, 'period_s')} s. Inside "
        f"the web process every one of the {n} replicas ran it: each period got that many summary "
        "rows. Through the job queue one worker ran it once per period, also after a replica "
        "and a worker were killed."
    )
    return Judgement(_tri(every and once, not every and not once), reason, story)


# -------------------------------------------------------------------------- C17


def judge_c17(r: _Reader) -> Judgement:
    rr, sticky = r.need("no-sticky", "roundrobin"), r.need("no-sticky", "sticky")
    forgotten = _m(rr, "not_logged_in_answers")
    control = _m(sticky, "not_logged_in_answers")
    crashes = _m(rr, "crashes") + _m(sticky, "crashes")
    reason = (
        f"memory sessions, round-robin: {forgotten} of {_m(rr, 'requests')} requests answered "
        f"'not logged in' across {len(_m(rr, 'replicas_seen'))} replicas; sticky: {control} of "
        f"{_m(sticky, 'requests')}; {crashes} crashes"
    )
    story = (
        f"One user logged in and browsed. Nothing crashed. With round-robin balancing, "
        f"{forgotten} of her {_m(rr, 'requests')} requests reached a replica that had never heard "
        f"of her session; with sticky balancing, {control}."
    )
    return Judgement(
        _tri(forgotten > 0 and control == 0 and crashes == 0, forgotten == 0), reason, story
    )


# ------------------------------------------------------------------------ the table


CLAIMS: tuple[Claim, ...] = (
    Claim("C1", "With stateless replicas any instance can serve any request, and a load balancer "
          "can spread traffic evenly.",
          "confirmed if round-robin busiest/mean <= 1.1 and a session survives its replica's "
          "death on another replica", judge_c1),
    Claim("C2", "When a replica that holds sessions in memory crashes, those users lose their "
          "session and cart; with a shared store nothing is lost.",
          "confirmed if memory loses >= 1 acknowledged session/item and every shared placement "
          "loses 0", judge_c2),
    Claim("C3", "Sticky sessions make load uneven: heavy users pin one server while others idle.",
          "confirmed where the median busiest/mean under sticky exceeds round-robin's by >= 0.2 "
          "(same session store); the verdict names the population sizes where it holds",
          judge_c3),
    Claim("C4", "Sticky/stateful services have no graceful failover and make rolling deploys "
          "risky.",
          "confirmed if the stateful run loses sessions/items or fails requests and the stateless "
          "run loses and fails none", judge_c4),
    Claim("C5", "In-process sessions put a hard cap on scale: RAM fills up.",
          "confirmed if the memory-placement replica reaches its memory limit (killed or "
          "refusing) at a measured session count while the shared placement's replica stays up",
          judge_c5),
    Claim("C6", 'Local state is faster; a shared store adds "slightly more latency".',
          '"slightly" = p50 +<= 10 % and p99 +<= 25 % over local at the same load; the verdict '
          "names the loads and delays where it holds", judge_c6),
    Claim("C7", "With a shared store, adding a server needs no migration: it serves at once. "
          "With sticky sessions a new server only gets new users.",
          "confirmed if the new replica's share under round-robin is within 20 % of fair within "
          "5 s, and under sticky no existing user moves", judge_c7),
    Claim("C8", "Per-server state gives different answers on different servers (the ATM); a "
          "central database gives one answer.",
          "confirmed if per-replica gives > 1 answer or any conservation violation and the "
          "database gives 1 answer and 0 violations", judge_c8),
    Claim("C9", "A chat can scale out when presence, unread counts and routing live in shared "
          "stores and a queue; users reconnect to any server.",
          "confirmed if the shared placement loses 0 messages, duplicates 0, and presence, typing "
          "and unread counts are correct across replicas after a kill, while memory gets at "
          "least one of them wrong", judge_c9),
    Claim("C10", "Signed tokens (JWT) need no store lookup to authenticate — but revoking them "
          "needs shared state again.",
          "pure tokens make 0 store lookups per request and survive logout-all on other replicas "
          "until they expire; with the deny-list (and opaque sessions) logout-all holds at once",
          judge_c10),
    Claim("C11", "Uploaded files belong in object storage, not on a server's disk.",
          "confirmed if disk files are unreadable from other replicas or after the uploader dies "
          "and objects are readable everywhere", judge_c11),
    Claim("C12", "Background jobs belong in a queue worker, not inside the web process.",
          "confirmed if in-process loses >= 1 acknowledged job when its replica dies and the "
          "queue loses 0 after a replica and a worker die", judge_c12),
    Claim("C13", "A shared database centralises data and can reduce latency compared with "
          "synchronising separate stores. (Contested.)",
          "compare write and read p50/p99 of both designs under the same load, plus the "
          "staleness of the synchronised copies: confirmed if the shared database is faster at "
          "both, refuted if slower at both", judge_c13),
    Claim("C14", "A stateless replica can crash without losing data; state stores must then "
          "protect the data (persistence, replication).",
          "confirmed only if the control run (no persistence) loses data, the persistent runs "
          "lose 0 acknowledged writes on a process kill, a replica crash loses nothing, and the "
          "failover run's loss is measured and explained", judge_c14),
    Claim("C15", "A cache kept inside each server serves stale data once another server changes "
          "it; a shared cache does not.",
          "confirmed if per-replica caches serve >= 1 stale answer after a change on another "
          "replica and the shared cache serves 0", judge_c15),
    Claim("C16", "Timers and scheduled work inside the web process run once per replica (or not "
          "at all when it dies); a scheduler outside it runs each once.",
          "confirmed if in-process timers fire N times per period for N replicas and the "
          "scheduler exactly once per period, also across a kill", judge_c16),
    Claim("C17", "Without stickiness, state in one server's memory is simply not there when the "
          "next request lands elsewhere (\"Server 2 has never heard of you\").",
          "confirmed if requests of one logged-in user see 'not logged in' on other replicas with "
          "no crash at all, and the sticky control sees none", judge_c17),
)  # fmt: skip

CLAIMS_BY_ID = {c.id: c for c in CLAIMS}


def judge_all(runs: Runs, claims: Iterable[Claim] = CLAIMS) -> dict[str, Judgement]:
    """Every claim's judgement over ``runs``, by claim id."""
    return {c.id: c.verdict(runs) for c in claims}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2) if values else 0.0
