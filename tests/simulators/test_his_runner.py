"""The HIS runner against a stand-in agent over real loopback HTTP.

The stand-in (``standin.py``) is not the agent: it implements the same HIS API contract
with faults chosen per settlement, so these tests can state exactly what the runner must
count: a lost answer retried into ``duplicate`` is one acknowledgement, a 503 is retried
with the very same bytes, a 400 is final, and nothing is counted twice.
"""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal

import pytest

from simulators.cli import main
from simulators.his import run_his

from .standin import TOKEN, StandInAgent, fault_of, serial, serve, serving_in_thread


def run(coro):
    return asyncio.run(coro)


def test_faults_are_retried_with_the_same_body_and_counted_once():
    # Answers are withheld well past the client's timeout, which is itself far above a normal
    # answer's time on a loaded machine, so only the chosen faults cause retries.
    agent = StandInAgent(hang_s=1.5)
    records: list[dict] = []

    async def scenario():
        server = await serve(agent)
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

    # Paced evenly over the duration rather than sent in a burst.
    arrivals = sorted(agent.first_seen.values())
    assert arrivals[-1] - arrivals[0] >= 0.8 * 99 / 200
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
    # 200 requests of 20 ms, 4 at a time, cannot go faster than 200/s: the schedule slips.
    assert summary.rate_achieved < 220


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
    agent = StandInAgent()

    async def scenario():
        server = await serve(agent)
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        try:
            return await run_his(
                str(server.make_url("")),
                TOKEN,
                rate=50,
                duration=None,
                stop=stop,
                timeout=0.2,
                retry_backoff=0.01,
                reversal_share=0,
            )
        finally:
            await asyncio.sleep(0.2)
            await server.close()

    summary = run(scenario())
    assert summary.planned is None
    assert 10 <= summary.sent <= 20
    assert summary.acknowledged + sum(summary.refused.values()) + summary.errors == summary.sent
    assert summary.elapsed_s < 2


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
