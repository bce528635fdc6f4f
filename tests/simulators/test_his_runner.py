"""The HIS runner over real loopback HTTP: against a stand-in agent, and against the real one.

The stand-in (``standin.py``) is not the agent: it implements the same HIS API contract
with faults chosen per settlement, so these tests can state exactly what the runner must
count: a lost answer retried into ``duplicate`` is one acknowledgement, a 503 is retried
with the very same bytes, a 400 is final, and nothing is counted twice.

The last tests run the runner against the real ``yibao-agent serve`` and ``yibao-central
serve`` processes (``tests/integration/harness.py``), where the refusals are the agent's own:
503 ``outbox_full`` from a tiny outbox while the centre is down, 503 ``disk_nearly_full`` and
409 ``his_setl_no_conflict``. What the runner reports is checked against what the agent's
outbox and the centre hold.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import sqlite3
import time
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from simulators.cli import main
from simulators.his import CST, DEFAULT_HOSPITAL, make_population, run_his
from tests.integration.harness import Agent, Central, wait_until

from .standin import TOKEN, StandInAgent, fault_of, serial, serve, serving_in_thread


def run(coro):
    return asyncio.run(coro)


def test_faults_are_retried_with_the_same_body_and_counted_once():
    # Answers are withheld well past the client's timeout, which is itself far above a normal
    # answer's time on a loaded machine, so only the chosen faults cause retries.
    agent = StandInAgent(hang_s=1.5)
    records: list[dict] = []
    started: list[float] = []

    async def scenario():
        server = await serve(agent)
        started.append(asyncio.get_running_loop().time())
        try:
            return await run_his(
                str(server.make_url("")),
                TOKEN,
                rate=200,
                duration=0.5,
                seed=42,
                concurrency=16,
                reversal_share=0.1,
                timeout=1.0,
                retries=3,
                retry_backoff=0.01,
                on_record=records.append,
            )
        finally:
            await asyncio.sleep(0.6)  # let withheld answers finish before the server closes
            await server.close()

    summary = run(scenario())
    serials = range(1, 101)
    faults = [fault_of(n) for n in serials]
    count = {f: faults.count(f) for f in set(faults)}
    assert summary.planned == summary.sent == 100
    assert summary.errors == 0
    assert summary.refused == {"outbox_full": count["busy"], "validation_failed": count["invalid"]}
    assert summary.acknowledged == 100 - count["busy"] - count["invalid"] == len(agent.committed)
    assert summary.duplicates == count["lost_answer"] + count["drop"]
    assert summary.retried == count["lost_answer"] + count["drop"] + count["busy_once"] + count["busy"]

    # Every retry re-sent the very same bytes, and the number of attempts is the fault's.
    expected_attempts = {"lost_answer": 2, "drop": 2, "busy_once": 2, "busy": 4, "invalid": 1, None: 1}
    for his, sent in agent.bodies.items():
        assert len(set(sent)) == 1, his
        assert len(sent) == expected_attempts[fault_of(serial(his))], his
    assert summary.attempts == sum(len(b) for b in agent.bodies.values()) + agent.reversal_attempts

    # What the HIS believes acknowledged is exactly what the agent holds, once each.
    setl = [r for r in records if r["kind"] == "setl"]
    revs = [r for r in records if r["kind"] == "revs"]
    assert sorted(r["his_setl_no"] for r in setl) == sorted(agent.committed)
    assert {r["setl_id"] for r in setl} == {c["setl_id"] for c in agent.committed.values()}
    assert all(r["seq"] == agent.committed[r["his_setl_no"]]["seq"] for r in setl)
    held = sum(Decimal(c["medfee_sumamt"]) for c in agent.committed.values())
    assert summary.amount_acknowledged == held == sum(Decimal(r["medfee_sumamt"]) for r in setl)

    # Reversals: each acknowledged one recorded with its new id and a negative amount.
    assert summary.reversals_sent == summary.reversals_acknowledged == len(agent.reversals) == len(revs) > 0
    assert {r["setl_id"] for r in revs} == {r["setl_id"] for r in agent.reversals}
    assert all(Decimal(r["medfee_sumamt"]) < 0 for r in revs)
    assert summary.amount_reversed == -sum(Decimal(r["medfee_sumamt"]) for r in revs)
    assert summary.amount_net == held - summary.amount_reversed

    # Paced evenly over the duration rather than sent in a burst: settlement n is due n-1 slots of
    # 1/200 s after the run began and never reaches the agent sooner (1 ms for the clock's grain).
    # A loaded machine only makes arrivals later, so this cannot flake; a burst fails it.
    assert len(agent.first_seen) == 100
    early = {h: t for h, t in agent.first_seen.items() if t < started[0] + (serial(h) - 1) / 200 - 0.001}
    assert not early, early
    assert len(summary.latencies_ms) == summary.acknowledged
    assert summary.latency_ms(50) <= summary.latency_ms(99)


def test_concurrency_bounds_the_requests_in_flight():
    agent = StandInAgent(faults=False, delay_s=0.02)

    async def scenario():
        server = await serve(agent)
        try:
            return await run_his(
                str(server.make_url("")),
                TOKEN,
                rate=1000,
                duration=0.2,
                seed=1,
                concurrency=4,
                reversal_share=0,
            )
        finally:
            await server.close()

    summary = run(scenario())
    assert summary.acknowledged == summary.sent == 200
    assert 2 <= agent.max_in_flight <= 4
    # The schedule slips instead of piling requests onto the agent, and the summary says so. Each
    # request holds one of the 4 slots for at least the stand-in's 20 ms, so the run needs at least
    # 200 × 20 ms / 4 = 1 s whatever the machine (load only lengthens it): the achieved rate is at
    # most 200/s against the 1000/s asked for (1 % for the clock's grain). A runner that ignored the
    # bound would finish in tens of ms.
    assert summary.elapsed_s >= 200 * 0.02 / 4 * 0.99
    assert summary.rate_achieved == pytest.approx(summary.sent / summary.elapsed_s)
    assert summary.rate_achieved <= 4 / 0.02 / 0.99 < 1000


def test_an_unreachable_agent_gives_errors_after_retries_and_nothing_acknowledged():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = run(
        run_his(
            f"http://127.0.0.1:{port}", TOKEN, rate=100, duration=0.05, seed=3, retries=1, retry_backoff=0
        )
    )
    assert summary.sent == summary.errors == 5
    assert summary.attempts == 10
    assert summary.acknowledged == 0 and summary.amount_acknowledged == 0
    assert summary.to_json()["latency_p50_ms"] is None
    text = summary.format_text()
    assert "errors                      5" in text and "no answers" in text


def test_a_wrong_token_is_refused_and_not_retried():
    agent = StandInAgent()

    async def scenario():
        server = await serve(agent)
        try:
            return await run_his(str(server.make_url("")), "wrong", rate=100, duration=0.05, seed=3)
        finally:
            await server.close()

    summary = run(scenario())
    assert summary.refused == {"unauthorized": 5}
    assert summary.attempts == 5 and summary.acknowledged == 0


def test_without_a_duration_the_run_ends_when_stopped_and_accounts_for_everything_sent():
    # With faults: when the stop comes, lost answers and dropped connections are still being retried.
    agent = StandInAgent(hang_s=1.0)
    records: list[dict] = []

    async def scenario():
        server = await serve(agent)
        stop = asyncio.Event()

        def on_record(rec: dict) -> None:
            records.append(rec)
            if len(records) == 10:  # stopped by an event, not by a clock: the same on any machine
                stop.set()

        try:
            return await run_his(
                str(server.make_url("")),
                TOKEN,
                rate=50,
                duration=None,
                stop=stop,
                concurrency=4,
                timeout=0.5,
                retry_backoff=0.01,
                reversal_share=0,
                on_record=on_record,
            )
        finally:
            await asyncio.sleep(0.6)  # let withheld answers finish before the server closes
            await server.close()

    summary = run(scenario())
    assert summary.planned is None
    finished = summary.acknowledged + sum(summary.refused.values()) + summary.errors
    assert finished == summary.sent
    # It stopped. When the 10th acknowledgement came, what had been sent was the 9 acknowledged
    # before it, the refusals (errors) finished by then and at most 4 in flight; the slot the 10th
    # freed may carry one more. A runner that ignored the stop would never return.
    assert 10 <= summary.sent <= 9 + sum(summary.refused.values()) + summary.errors + 4 + 1
    # What was in flight at the stop was finished, not abandoned: every settlement the stand-in
    # committed (including those whose first answer was lost) was acknowledged, once.
    assert summary.acknowledged == len(records) == len(agent.committed)
    assert sorted(r["his_setl_no"] for r in records) == sorted(agent.committed)
    faults = [fault_of(n) for n in range(1, summary.sent + 1)]  # serials 1, 3, 5, 7, 9 are among them
    assert summary.errors == 0
    assert summary.duplicates == faults.count("drop") + faults.count("lost_answer") >= 2
    refused = {"outbox_full": faults.count("busy"), "validation_failed": faults.count("invalid")}
    assert summary.refused == refused


def test_run_his_refuses_a_run_that_could_never_end():
    with pytest.raises(ValueError):
        run(run_his("http://127.0.0.1:9", TOKEN, rate=1, duration=None))
    with pytest.raises(ValueError):
        run(run_his("http://127.0.0.1:9", TOKEN, rate=0, duration=1))


# --- the command line -------------------------------------------------------------------------


def test_cli_prints_a_json_summary_and_writes_acknowledged_records(tmp_path, capsys):
    token_file = tmp_path / "his.token"
    token_file.write_text(TOKEN + "\n")
    out = tmp_path / "acks.jsonl"
    agent = StandInAgent(faults=False)
    with serving_in_thread(agent) as url:
        status = main(
            [
                "his",
                "--agent",
                url,
                "--token-file",
                str(token_file),
                "--rate",
                "100",
                "--duration",
                "0.2",
                "--seed",
                "5",
                "--reversal-share",
                "0.2",
                "--out",
                str(out),
                "--json",
            ]
        )
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sent"] == summary["acknowledged"] == len(agent.committed) == 20
    assert summary["errors"] == 0 and summary["refused"] == {}
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == summary["acknowledged"] + summary["reversals_acknowledged"]
    assert {ln["kind"] for ln in lines} <= {"setl", "revs"}
    net = sum(Decimal(ln["medfee_sumamt"]) for ln in lines)
    assert str(net) == summary["amount_net"]
    assert set(lines[0]) >= {"his_setl_no", "setl_id", "seq", "kind", "medfee_sumamt"}


def test_cli_replays_the_same_traffic_for_the_same_seed(tmp_path, capsys):
    token_file = tmp_path / "his.token"
    token_file.write_text(TOKEN)
    agent = StandInAgent(faults=False)
    with serving_in_thread(agent) as url:
        args = [
            "his",
            "--agent",
            url,
            "--token-file",
            str(token_file),
            "--rate",
            "100",
            "--duration",
            "0.1",
            "--seed",
            "9",
            "--json",
        ]
        # The reversal share changes what happens after an answer, never the bodies sent.
        assert main([*args, "--reversal-share", "0.5"]) == 0
        first = json.loads(capsys.readouterr().out)
        assert main([*args, "--reversal-share", "0"]) == 0
        second = json.loads(capsys.readouterr().out)
    assert first["acknowledged"] == 10 and first["duplicates"] == 0 and first["reversals_acknowledged"] > 0
    assert second["acknowledged"] == second["duplicates"] == 10 and second["refused"] == {}
    assert len(agent.committed) == 10


def test_cli_refuses_a_missing_or_empty_token_file(tmp_path, capsys):
    assert main(["his", "--agent", "http://127.0.0.1:9", "--token-file", str(tmp_path / "none")]) == 2
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert main(["his", "--agent", "http://127.0.0.1:9", "--token-file", str(empty)]) == 2
    assert "token file" in capsys.readouterr().err


# --- against the real agent and centre --------------------------------------------------------
#
# Real ``yibao-central serve`` and ``yibao-agent serve`` processes on loopback. Seeded runs: the
# same seed re-sends byte-identical bodies under the same his_setl_no (a HIS re-sending its day).

HOSPITAL = DEFAULT_HOSPITAL


@pytest.fixture
def central(tmp_path: Path):
    c = Central(tmp_path / "central")
    c.proc.start()
    yield c
    c.proc.stop()


@pytest.fixture
def agents():
    started: list[Agent] = []
    yield started
    for a in started:
        a.proc.stop()


def _real_agent(tmp_path: Path, central: Central, agents: list[Agent], **settings) -> Agent:
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL), **settings)
    agents.append(agent)
    return agent


def _same_day_ahead(seconds: float = 120) -> None:
    """A seeded body's his_setl_no carries today's date: keep two runs on the same day in CST."""
    now = datetime.now(CST)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if midnight - now < timedelta(seconds=seconds):
        time.sleep((midnight - now).total_seconds() + 1)


def _agent_holds(agent: Agent) -> tuple[dict[str, tuple[str, int]], list[tuple[int, str, str]]]:
    """The agent's own database: his_setl_no → (setl_id, seq), and the outbox as (seq, kind, setl_id)."""
    db = sqlite3.connect(agent.home / "agent.db")
    try:
        settled = {h: (i, q) for h, i, q in db.execute("SELECT his_setl_no, setl_id, seq FROM settlements")}
        outbox = db.execute("SELECT seq, kind, setl_id FROM outbox ORDER BY seq").fetchall()
    finally:
        db.close()
    return settled, outbox


def _alarm_codes(agent: Agent) -> set[str]:
    return {a["code"] for a in agent.status()["alarms"]}


def _his(agent: Agent, records: list[dict] | None = None, **kwargs):
    options = {"concurrency": 4, "reversal_share": 0, "retry_backoff": 0.01, "fixmedins_code": HOSPITAL}
    options.update(kwargs)
    on_record = records.append if records is not None else None
    return asyncio.run(run_his(agent.url, agent.token, on_record=on_record, **options))


def test_real_agent_full_outbox_is_retried_counted_and_resent_once_the_centre_drains_it(
    tmp_path, central, agents
):
    _same_day_ahead()
    agent = _real_agent(tmp_path, central, agents, outbox_max_records=8)
    central.proc.stop()  # nothing is acknowledged, so the outbox fills at 8 records
    agent.proc.start()

    first: list[dict] = []
    summary = _his(agent, first, rate=100, duration=0.12, seed=7, retries=2)
    # 12 planned; the agent took 8 and refused the other 4 with 503 outbox_full on every attempt.
    assert summary.planned == summary.sent == 12
    assert summary.acknowledged == len(first) == 8 and summary.duplicates == 0
    assert summary.refused == {"outbox_full": 4} and summary.errors == 0
    assert summary.retried == 4 and summary.attempts == 8 + 4 * 3  # a 503 is retried, twice here
    # Nothing dropped to make room, nothing written for a refusal: the outbox holds exactly the 8.
    settled, outbox = _agent_holds(agent)
    assert settled == {r["his_setl_no"]: (r["setl_id"], r["seq"]) for r in first}
    assert outbox == sorted((r["seq"], "setl", r["setl_id"]) for r in first)
    assert [seq for seq, _, _ in outbox] == list(range(1, 9))
    status = agent.status()
    assert status["outbox"]["pending"] == 8 and status["outbox"]["acked_seq"] == 0
    assert "outbox_full" in _alarm_codes(agent)

    central.proc.start()
    wait_until(agent.drained, 60, what="the outbox to drain once the centre is back")
    # The HIS re-sends its day: the 8 held come back as duplicates with their first answer, the 4
    # refused ones are taken now. Nothing is settled twice.
    second: list[dict] = []
    again = _his(agent, second, rate=100, duration=0.12, seed=7, retries=2)
    assert again.sent == again.acknowledged == 12 and again.refused == {} and again.errors == 0
    assert again.duplicates == 8 and again.attempts == 12 and again.retried == 0
    by_his = {r["his_setl_no"]: (r["setl_id"], r["seq"]) for r in second}
    assert all(by_his[r["his_setl_no"]] == (r["setl_id"], r["seq"]) for r in first)
    settled, outbox = _agent_holds(agent)
    assert settled == by_his and [seq for seq, _, _ in outbox] == list(range(1, 13))
    wait_until(agent.drained, 60, what="the outbox to drain")
    assert "outbox_full" not in _alarm_codes(agent)
    held = [r for r in central.settlements() if r["agent_id"] == agent.agent_id]
    assert Counter(r["his_setl_no"] for r in held) == Counter(set(by_his))  # each of the 12 once
    assert {r["setl_id"] for r in held} == {setl_id for setl_id, _ in by_his.values()}
    assert sum(Decimal(r["medfee_sumamt"]) for r in held) == again.amount_acknowledged


def test_real_agent_disk_nearly_full_is_retried_and_refused_with_nothing_written(tmp_path, central, agents):
    agent = _real_agent(tmp_path, central, agents, min_free_disk_bytes=2**62)  # more than any disk has
    agent.proc.start()
    summary = _his(agent, rate=100, duration=0.05, seed=3, retries=1)
    assert summary.sent == 5 and summary.refused == {"disk_nearly_full": 5}
    assert summary.acknowledged == 0 and summary.errors == 0 and summary.amount_acknowledged == 0
    assert summary.retried == 5 and summary.attempts == 10
    assert _agent_holds(agent) == ({}, [])
    assert agent.status()["outbox"]["last_seq"] == 0
    assert "disk_nearly_full" in _alarm_codes(agent)
    assert [r for r in central.settlements() if r["agent_id"] == agent.agent_id] == []


def test_real_agent_refuses_a_changed_body_under_a_held_number_and_the_first_stands(
    tmp_path, central, agents
):
    _same_day_ahead()
    agent = _real_agent(tmp_path, central, agents)
    agent.proc.start()
    first: list[dict] = []
    summary = _his(agent, first, rate=100, duration=0.1, seed=11, reversal_share=0.3)
    assert summary.acknowledged == 10 and summary.refused == {} and summary.errors == 0
    assert summary.reversals_sent == summary.reversals_acknowledged > 0
    first_setl = {r["his_setl_no"]: r["setl_id"] for r in first if r["kind"] == "setl"}
    first_revs = {r["setl_id"] for r in first if r["kind"] == "revs"}

    # The same seed with a rebuilt patient register: serials 1-10 come back under the same
    # his_setl_no with another person (a different body), 11-20 are new.
    other = make_population(random.Random("a rebuilt patient register"), 500)
    second: list[dict] = []
    again = _his(agent, second, rate=100, duration=0.2, seed=11, population=other, retries=3)
    assert again.sent == 20
    assert again.refused == {"his_setl_no_conflict": 10}  # final: a 409 is never retried
    assert again.attempts == 20 and again.retried == 0 and again.errors == 0
    assert again.acknowledged == 10 and again.duplicates == 0
    new = {r["his_setl_no"]: r["setl_id"] for r in second}
    assert not set(new) & set(first_setl)
    assert sorted(serial(h) for h in new) == list(range(11, 21))

    # The agent holds the first settlements, untouched, and the new ones; nothing else.
    settled, outbox = _agent_holds(agent)
    assert {h: i for h, (i, _) in settled.items()} == first_setl | new
    assert [seq for seq, _, _ in outbox] == list(range(1, 20 + len(first_revs) + 1))
    assert {i for _, kind, i in outbox if kind == "revs"} == first_revs
    wait_until(agent.drained, 60, what="the outbox to drain")
    held = [r for r in central.settlements() if r["agent_id"] == agent.agent_id]
    ids = Counter(r["setl_id"] for r in held)
    assert set(ids) == set(first_setl.values()) | set(new.values()) | first_revs
    assert set(ids.values()) == {1}  # each once
