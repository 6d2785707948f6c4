"""The fault suite's quicker cases (issue #7), each a smaller run of the same case `python -m loadtest.faults`
runs at full size. Every case starts its own durable redis-server, database and `examhub serve` processes;
the checker (loadtest/faults/checker.py) compares what each simulated student was told with what Redis and,
after submit and flush, PostgreSQL hold. Sizes are chosen so the whole module takes about three minutes."""

from __future__ import annotations

import pytest

from loadtest.faults import cases
from loadtest.faults.cases import Result

pytestmark = pytest.mark.timeout(180)


def assert_clean(result: Result) -> None:
    """0 acknowledged answers lost, 0 duplicates, 0 phantoms, 0 refused writes stored, and the case's own checks."""
    detail = result.as_dict()
    assert result.reports, detail
    for report in result.reports:
        assert report.acked > 0, detail  # the case did exercise something
        assert (report.lost, report.phantom, report.refused_stored, report.duplicated, report.missing_attempts) == (
            0, 0, 0, 0, 0), detail  # fmt: skip
    assert {r.where for r in result.reports} == {"redis", "postgres"}, detail
    assert result.failures == [], detail


async def test_kill_9_of_hub_processes_loses_nothing() -> None:
    """Two hubs, each killed in turn and restarted: nothing lost, and the students, back at once on the other hub
    within the dead one's lease, are drops, not second devices (its alive channel is silent)."""
    result = await cases.hub_kill(students=30, kills=3, gap_s=1.5, resume_p99_max_s=None)  # timing: the runner
    assert_clean(result)  # includes: second_devices == 0, some ledger drops
    assert result.figures["resumes"] >= 3
    assert result.figures["second_devices"] == 0 and result.figures["ledger_drops"] > 0


async def test_kill_9_of_one_of_serve_workers_processes_loses_nothing_and_flags_no_one() -> None:
    """`serve --workers 2`: the parent replaces a killed hub process and ends its lease, so its students are drops
    in their time ledgers, not second devices (the case checks both; without the lease's release every one of
    them is a second device: 243 of 243 in a run at 100 students)."""
    result = await cases.worker_kill(students=30, kills=3, gap_s=1.5, resume_p99_max_s=None)
    assert_clean(result)  # includes: second_devices == 0, some ledger drops, every kill replaced
    assert result.figures["resumes"] >= 3
    assert result.figures["second_devices"] == 0 and result.figures["ledger_drops"] > 0


async def test_kill_9_of_a_lone_hub_restarted_on_its_port_loses_nothing_and_flags_no_one() -> None:
    """A single `examhub serve`, killed and started again on its port (as a container's restart policy does): the
    new process ends the dead one's lease (server/succession.py), so its students are drops in their time ledgers,
    not second devices (the case checks both, and that every restart ended a lease)."""
    result = await cases.hub_restart(students=30, kills=3, gap_s=1.5, resume_p99_max_s=None)
    assert_clean(result)
    assert result.figures["resumes"] >= 3
    assert result.figures["second_devices"] == 0 and result.figures["ledger_drops"] > 0


async def test_crash_points_before_and_after_the_redis_write_and_after_the_ack() -> None:
    result = await cases.crash_points(students=15, after=25)
    assert_clean(result)  # includes: each of the three points was reached (exit 137)
    assert len(result.reports) == 6
    # after_write: the answer that reached Redis but never got its ack is found stored on resume (last_seq)
    assert result.figures["after_write_settled_by_resume"] >= 1


async def test_kill_9_of_redis_acknowledges_nothing_while_down_and_recovers() -> None:
    result = await cases.redis_kill(students=30, down_s=3)
    assert_clean(result)
    assert result.figures["acks_while_down"] == 0
    assert result.figures["unavailable_frames"] > 0 and result.figures["closes_4503"] > 0
    assert result.figures["acks_after_restart"] > 0


async def test_redis_hung_gives_no_false_acknowledgement() -> None:
    result = await cases.redis_hang(students=30, hang_s=6)  # longer than the hub's 5 s Redis timeout
    assert_clean(result)
    assert result.figures["acks_while_hung"] == 0
    assert result.figures["acks_after"] > 0


async def test_postgres_down_grows_the_outbox_which_drains_exactly_once() -> None:
    result = await cases.pg_down(students=20, down_s=8)
    assert_clean(result)
    assert result.figures["outbox_peak"] >= result.figures["submitted_while_down"] > 0


async def test_flusher_dying_between_commit_and_ack_duplicates_nothing() -> None:
    result = await cases.flusher_crash(students=20)
    assert_clean(result)
    assert result.figures["committed_before_crash"] > 0 and result.figures["pending_after_crash"] > 0


async def test_proxy_blackhole_reset_and_latency() -> None:
    result = await cases.proxy_faults(students=20, heartbeat_s=2, notice_slack_s=1.0)
    assert_clean(result)
    assert result.figures["noticed"] == 20  # every dead connection noticed (within 1.5 heartbeats + slack)
    assert result.figures["reset"] > 0 and result.figures["resumes"] >= 20


async def test_second_connection_fences_the_first_and_refuses_its_late_writes() -> None:
    result = await cases.fencing(students=10, late=3)
    assert_clean(result)
    assert result.figures["late_writes"] >= 10 and result.figures["late_acked"] == 0
    assert result.figures["fenced_told"] == 10


async def test_a_proctor_who_never_reads_is_cut_off() -> None:
    result = await cases.slow_proctor(students=200, interval_s=0.2, phase_s=4, send_queue=8, cutoff_timeout_s=90)
    assert_clean(result)
    assert result.figures["close_code"] == 4500
    assert result.figures["cut_off_after_s"] is not None
    # bounded: the hub does not keep what the proctor does not read (8 frames, then it drops the feed)
    assert result.figures["hub_rss_peak_mb"] - result.figures["hub_rss_before_mb"] < 100
