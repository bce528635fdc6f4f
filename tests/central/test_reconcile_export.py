"""Reconciliation totals and chain proofs, and the JSON-lines export, on a real database."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from io import StringIO

from central.cli import main
from central.intake.export import export_settlements
from central.intake.heartbeats import record_heartbeat
from central.intake.ingest import Ingestor
from central.intake.reconcile import reconcile
from central.storage.store import Store

from .conftest import HOSPITAL, Chain, enrol, reversal, rows, settlement
from .test_heartbeats import beat


def _fill(store: Store, chain: Chain) -> None:
    first = settlement("S1")
    chain.append(first)
    chain.append(settlement("S2"))
    chain.append(reversal(first, "R1"))
    chain.append(settlement("BAD", split=(1, 1, 1)))
    chain.append(settlement("S3", setl_time="2026-11-25T08:00:00+08:00", split=None))
    Ingestor(store).ingest(chain.batch(1, 5))


def test_reconcile_totals_per_day_gross_and_net(store: Store, chain: Chain) -> None:
    _fill(store, chain)
    result = reconcile(store, HOSPITAL, date(2026, 11, 23), date(2026, 11, 25))
    days = {d.day: d for d in result.days}
    assert list(days) == ["2026-11-23", "2026-11-24", "2026-11-25"]
    assert (days["2026-11-23"].settlements, days["2026-11-23"].net["medfee"]) == (0, 0)
    d24 = days["2026-11-24"]
    assert (d24.settlements, d24.reversals) == (2, 1)
    assert d24.gross == {"medfee": 10240, "fund": 6000, "acct": 2000, "cash": 2240}
    assert d24.net == {"medfee": 5120, "fund": 3000, "acct": 1000, "cash": 1120}
    assert days["2026-11-25"].net == {"medfee": 5120, "fund": 0, "acct": 0, "cash": 0}
    [agent] = result.agents
    assert (agent.agent_id, agent.acked_seq, agent.complete, agent.verified) == (
        chain.agent_id,
        5,
        True,
        True,
    )
    assert (agent.rejected, agent.lost, agent.security_events, agent.problem) == (1, 0, 0, None)
    # What arrived verifies, but no heartbeat says the agent sent everything: not provably complete.
    assert result.chain_ok and agent.last_upload is not None
    assert not result.ok and agent.state == "silent" and result.exit_code == 3
    js = result.to_json()
    assert js["chain_ok"] is True and js["ok"] is False and js["days"][1]["net"]["medfee"] == "51.20"
    assert js["agents"][0]["last_upload"] == agent.last_upload and js["agents"][0]["state"] == "silent"


def test_reconcile_finds_a_corrupted_raw_row(store: Store, chain: Chain, config, capsys) -> None:
    _fill(store, chain)
    [(raw,)] = rows(store, "SELECT raw FROM records WHERE agent_id = ? AND seq = 2", (chain.agent_id,))
    raw = bytes(raw)
    flipped = raw[:-5] + bytes([raw[-5] ^ 1]) + raw[-4:]
    store.write(
        lambda c: c.execute(
            "UPDATE records SET raw = ? WHERE agent_id = ? AND seq = 2", (flipped, chain.agent_id)
        )
    )
    [agent] = reconcile(store, HOSPITAL, date(2026, 11, 24), date(2026, 11, 24)).agents
    assert not agent.verified and "seq 2" in agent.problem
    argv = ["--home", str(config.home), "reconcile", "--hospital", HOSPITAL, "--from", "2026-11-24"]
    assert main([*argv, "--to", "2026-11-24"]) == 2
    out = capsys.readouterr().out
    assert "NOT verified" in out and "seq 2" in out
    assert main([*argv, "--to", "2026-11-24", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["agents"][0]["verified"] is False


def test_reconcile_finds_a_missing_record(store: Store, chain: Chain, config) -> None:
    _fill(store, chain)
    store.write(lambda c: c.execute("DELETE FROM records WHERE agent_id = ? AND seq = 3", (chain.agent_id,)))
    [agent] = reconcile(store, HOSPITAL, date(2026, 11, 24), date(2026, 11, 24)).agents
    assert (agent.complete, agent.verified) == (False, False) and "seq 3 is missing" in agent.problem


def test_reconcile_exit_0_when_verified_and_counts_security_events(
    store: Store, chain: Chain, config, capsys
) -> None:
    _fill(store, chain)
    other = enrol(store, "H22222222222")
    other.extend(1)
    Ingestor(store).ingest(other.batch(1, 1))
    argv = ["--home", str(config.home), "reconcile", "--hospital", HOSPITAL, "--from", "2026-11-01", "--to"]
    assert main([*argv, "2026-11-30"]) == 3  # verified, but nothing proves the agent sent all it had
    out = capsys.readouterr().out
    assert "NOT provably complete" in out and "no heartbeat ever" in out
    record_heartbeat(store, beat(chain, acked=5, at=datetime.now(UTC)))
    assert main([*argv, "2026-11-30"]) == 0
    out = capsys.readouterr().out
    assert "RESULT: complete and verified" in out and "complete up to " in out
    assert chain.agent_id in out and other.agent_id not in out
    assert main([*argv, "2026-10-01"]) == 1  # --from after --to
    assert "after" in capsys.readouterr().err


def test_export_writes_json_lines_in_yuan_without_personal_data(store: Store, chain: Chain) -> None:
    _fill(store, chain)
    out = StringIO()
    assert export_settlements(store, out) == 4
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["setl_id"] for r in rows] == ["S1", "S2", "R1", "S3"]
    assert rows[0] == {
        "setl_id": "S1",
        "agent_id": chain.agent_id,
        "seq": 1,
        "kind": "setl",
        "his_setl_no": "HIS-S1",
        "fixmedins_code": HOSPITAL,
        "setl_time": "2026-11-24T10:00:00+08:00",
        "medfee_sumamt": "51.20",
        "fund_pay_sumamt": "30.00",
        "acct_pay": "10.00",
        "psn_cash_pay": "11.20",
        "orig_setl_id": None,
        "mdtrt_cert_type": None,
        "import_id": None,  # uploaded by the agent, not brought by a bulk import
    }
    assert rows[2]["medfee_sumamt"] == "-51.20" and rows[2]["orig_setl_id"] == "S1"
    assert rows[3]["fund_pay_sumamt"] is None
    assert "P0000000001" not in out.getvalue()
    filtered = StringIO()
    assert export_settlements(store, filtered, hospital="H00000000000") == 0
