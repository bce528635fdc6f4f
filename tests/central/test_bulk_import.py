"""Bulk import of historical settlements: formats, idempotency, resume after kill -9, rejects, screening.

Real SQLite, real files, and for the crash a real ``yibao-central import`` process killed with SIGKILL.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from central.errors import ImportInvalid
from central.intake.bulk_import import FLAT_COLUMNS, import_rejects, import_settlements, import_status
from central.intake.hospitals import set_hospital
from central.intake.reconcile import reconcile
from central.monitoring.screening import screen
from central.storage.store import Store, iter_settlements
from protocol.records import Reversal, Settlement

from .conftest import ACTOR, HOSPITAL, enrol, reversal, rows, settlement
from .test_screening import dispensing, ingest, published  # noqa: F401 - the fixture is used by name


def body(rec: Settlement | Reversal) -> dict[str, Any]:
    return msgspec.to_builtins(rec)


def write_jsonl(path: Path, records: list[Settlement | Reversal]) -> Path:
    path.write_text(
        "".join(json.dumps(body(r), ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )
    return path


def flat_rows(rec: Settlement | Reversal, *, yuan: bool = False) -> list[dict[str, Any]]:
    """The flat layout: one row per fee line, the settlement's columns repeated."""

    def money(v: int | None) -> Any:
        if v is None:
            return ""
        return f"{v // 100}.{v % 100:02d}" if yuan and v >= 0 else v

    b = body(rec)
    top = {k: v for k, v in b.items() if not isinstance(v, (dict, list))}
    for k in (
        "medfee_sumamt",
        "fund_pay_sumamt",
        "hifp_pay",
        "hifmi_pay",
        "hifob_pay",
        "acct_pay",
        "psn_cash_pay",
    ):
        if k in top:
            top[k] = money(top[k])
    if isinstance(rec, Reversal):
        return [top]
    top |= b["psn"] | b["mdtrt"]
    rows = []
    for line in b["feedetl"]:
        line = dict(line)
        for k in ("det_item_fee_sumamt", "fulamt_ownpay_amt", "preselfpay_amt"):
            if k in line and line[k] is not None:
                line[k] = money(line[k])
        rows.append(top | line)
    return rows


def write_csv(path: Path, records: list, *, yuan: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(FLAT_COLUMNS))
        w.writeheader()
        for rec in records:
            for row in flat_rows(rec, yuan=yuan):
                w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return path


def write_parquet(path: Path, records: list, *, row_group_size: int = 1000) -> Path:
    rows = [r for rec in records for r in flat_rows(rec)]
    columns = {c: [None if r.get(c) in (None, "") else r.get(c) for r in rows] for c in FLAT_COLUMNS}
    table = pa.table({c: pa.array([None if v is None else str(v) for v in vals], pa.string())
                      for c, vals in columns.items()})  # fmt: skip
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def held(store: Store) -> dict[str, tuple]:
    return dict(
        store.read(
            lambda c: [
                (r[0], r[1:])
                for r in c.execute(
                    "SELECT setl_id, agent_id, seq, import_id, setl_time, medfee_sumamt, psn_cash_pay "
                    "FROM settlements"
                )
            ]
        )
    )


def count(store: Store, table: str) -> int:
    return store.read(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


@pytest.fixture
def registered(store: Store) -> Store:
    set_hospital(store, ACTOR, HOSPITAL, "2")
    return store


HISTORY = [
    settlement("N2019-1", setl_time="2019-03-04T09:15:00+08:00"),
    settlement("N2019-2", setl_time="2019-03-05T16:40:00+08:00", psn_no="P0000000002"),
    settlement("N2020-1", setl_time="2020-12-31T23:59:00+08:00"),
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_each_format_stores_every_settlement_once_with_its_original_time(tmp_path, registered, fmt) -> None:
    store = registered
    writer = {"jsonl": write_jsonl, "csv": write_csv, "parquet": write_parquet}[fmt]
    path = writer(tmp_path / f"history.{fmt}", HISTORY)
    summary = import_settlements(store, path)
    assert (summary.status, summary.format, summary.settlements, summary.rejected) == ("done", fmt, 3, 0)
    rows = held(store)
    assert set(rows) == {"N2019-1", "N2019-2", "N2020-1"}
    # Not in any agent's chain; the import that brought it; the settlement's own time and money.
    assert rows["N2019-1"] == (None, None, summary.import_id, "2019-03-04T09:15:00+08:00", 5120, 1120)
    # The lines and visits screening reads, on the original dates.
    assert count(store, "hist_lines") == 6
    dates = store.read(lambda c: sorted(r[0] for r in c.execute("SELECT setl_date FROM hist_visits")))
    assert dates == ["2019-03-04", "2019-03-05", "2020-12-31"]
    assert count(store, "records") == 0  # nothing pretends to be an agent's chain entry


def test_csv_in_yuan_is_converted_exactly_and_a_sub_fen_amount_is_a_reject(tmp_path, registered) -> None:
    path = write_csv(tmp_path / "yuan.csv", HISTORY[:2], yuan=True)
    text = path.read_text(encoding="utf-8").splitlines()
    # Row 3 (the second settlement's first line) gets a third decimal place on its total.
    text[3] = text[3].replace(",51.20,", ",51.205,", 1)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    summary = import_settlements(registered, path, money="yuan")
    assert (summary.settlements, summary.rejected) == (1, 1)
    assert held(registered)["N2019-1"][4:] == (5120, 1120)
    (bad,) = registered.read(lambda c: list(import_rejects(c, summary.import_id)))
    assert (bad["row"], bad["setl_id"], bad["code"]) == (3, "N2019-2", "field_invalid")
    assert "medfee_sumamt" in bad["message"]


def test_the_same_file_twice_is_done_once_and_another_file_with_the_same_settlements_adds_nothing(
    tmp_path, registered
) -> None:
    store = registered
    first = import_settlements(store, write_jsonl(tmp_path / "a.jsonl", HISTORY))
    again = import_settlements(store, tmp_path / "a.jsonl")
    assert (again.import_id, again.status, again.settlements) == (first.import_id, "done", 3)
    other = import_settlements(store, write_csv(tmp_path / "b.csv", [*HISTORY, settlement("N2021-1")]))
    assert (other.settlements, other.already_held, other.rejected) == (1, 3, 0)
    assert count(store, "settlements") == 4
    assert count(store, "hist_lines") == 8  # no line twice


def test_a_settlement_an_agent_uploaded_is_the_agents_and_a_changed_one_is_a_duplicate(
    tmp_path, registered
) -> None:
    store = registered
    chain = enrol(store)
    ingest(store, chain, settlement("UP-1"))
    changed = settlement("N2019-1", setl_time="2019-03-04T09:15:00+08:00", psn_no="P0000000009")
    import_settlements(store, write_jsonl(tmp_path / "a.jsonl", HISTORY[:1]))
    summary = import_settlements(store, write_jsonl(tmp_path / "b.jsonl", [settlement("UP-1"), changed]))
    assert (summary.held_from_agent, summary.rejected, summary.settlements) == (1, 1, 0)
    assert summary.first_reject["code"] == "setl_duplicate"
    assert held(store)["UP-1"][:2] == (chain.agent_id, 1)  # still the agent's, untouched
    assert store.read(
        lambda c: c.execute("SELECT psn_no FROM settlements WHERE setl_id = 'N2019-1'").fetchone()
    ) == ("P0000000001",)


def test_bad_rows_are_named_with_row_and_field_and_the_rest_is_stored(tmp_path, registered) -> None:
    unknown = settlement("N-OTHER", hospital="H37021100001")
    no_sum = body(settlement("N-SUM"))
    no_sum["medfee_sumamt"] = 9999  # lines add up to 5120
    lines = [
        json.dumps(body(HISTORY[0])),
        "{not json",
        json.dumps(body(unknown)),
        json.dumps(no_sum),
        json.dumps({k: v for k, v in body(HISTORY[1]).items() if k != "psn"}),
        "",
        json.dumps(body(HISTORY[2])),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    summary = import_settlements(registered, path)
    assert (summary.settlements, summary.rejected, summary.rows_read) == (2, 4, 7)
    rejects = registered.read(lambda c: list(import_rejects(c, summary.import_id)))
    assert [(r["row"], r["code"]) for r in rejects] == [
        (2, "row_invalid"),
        (3, "hospital_unknown"),
        (4, "validation_failed"),
        (5, "field_invalid"),
    ]
    assert "hospitals import" in rejects[1]["message"]
    assert "medfee_sumamt" in rejects[2]["message"]
    assert "psn" in rejects[3]["message"]


def test_strict_stops_at_the_first_reject_with_nothing_of_its_chunk_stored(tmp_path, registered) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(body(HISTORY[0])) + "\n{oops\n", encoding="utf-8")
    with pytest.raises(ImportInvalid, match="row 2"):
        import_settlements(registered, path, strict=True)
    assert count(registered, "settlements") == 0
    (status,) = registered.read(import_status)
    assert (status["status"], status["rows_read"]) == ("running", 0)


def test_an_unknown_column_stops_the_import_before_anything_is_read(tmp_path, registered) -> None:
    path = write_csv(tmp_path / "h.csv", HISTORY)
    text = path.read_text(encoding="utf-8").replace("setl_time", "setl_tiem", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ImportInvalid, match=r"unknown column.*setl_tiem"):
        import_settlements(registered, path)
    assert count(registered, "settlements") == 0


def test_a_reversal_removes_its_settlements_lines_in_either_order(tmp_path, registered) -> None:
    s1, s2 = HISTORY[0], HISTORY[1]
    r1 = reversal(s1, "R-1", setl_time="2019-03-04T11:00:00+08:00")
    r2 = reversal(s2, "R-2", setl_time="2019-03-05T17:00:00+08:00")
    summary = import_settlements(registered, write_csv(tmp_path / "r.csv", [s1, r1, r2, s2]))
    assert (summary.settlements, summary.reversals, summary.rejected) == (2, 2, 0)
    assert count(registered, "hist_visits") == 0 and count(registered, "hist_lines") == 0


def test_imported_history_is_screened_with_what_agents_upload(tmp_path, store, repo, published) -> None:  # noqa: F811
    chain = enrol(store)
    # The same drug dispensed for 30 days, imported from before the agent ran, then settled at the desk.
    import_settlements(store, write_jsonl(tmp_path / "old.jsonl", [dispensing("OLD-1", "2026-10-20")]))
    ingest(store, chain, dispensing("NEW-1", "2026-11-01"))
    screen(store, "2026-10-01", "2026-11-30", repo=repo, workers=1)
    found = store.read(
        lambda c: c.execute(
            "SELECT setl_ids, evidence FROM suspicions WHERE rule_id = 'dup_same_drug'"
        ).fetchall()
    )
    # One fact: the desk's settlement overlaps the imported dispensing of 2026-10-20 (the evidence).
    assert [json.loads(setl_ids) for setl_ids, _ in found] == [["NEW-1"]]
    (earlier,) = json.loads(found[0][1])
    assert (earlier["setl_date"], earlier["supply_until"]) == ("2026-10-20", "2026-11-19")


def test_reconcile_counts_agents_apart_and_export_says_what_was_imported(tmp_path, registered) -> None:
    store = registered
    chain = enrol(store)
    ingest(store, chain, settlement("UP-1"))
    summary = import_settlements(store, write_jsonl(tmp_path / "a.jsonl", [settlement("IM-1")]))
    from datetime import date

    rec = reconcile(store, HOSPITAL, date(2026, 11, 24), date(2026, 11, 24))
    day = rec.days[0]
    assert (day.settlements, day.imported) == (1, 1)
    exported = store.read(lambda c: {r["setl_id"]: r for r in iter_settlements(c)})
    assert exported["IM-1"]["import_id"] == summary.import_id and exported["UP-1"]["import_id"] is None


def _big_file(path: Path, n: int) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            day = f"2025-{1 + i % 12:02d}-{1 + i % 28:02d}"
            rec = settlement(f"K{i:07d}", setl_time=f"{day}T10:00:00+08:00", psn_no=f"P{i % 5000:010d}")
            f.write(json.dumps(body(rec)) + "\n")
    return path


def test_an_import_killed_mid_file_resumes_where_it_stopped_with_nothing_lost_or_doubled(
    tmp_path, config, registered, act_as
) -> None:
    act_as()  # the process acts as the admin through $YIBAO_OPERATOR_TOKEN
    n = 12_000
    path = _big_file(tmp_path / "big.jsonl", n)
    cmd = [
        sys.executable,
        "-m",
        "central.cli",
        "--home",
        str(config.home),
        "import",
        "settlements",
        str(path),
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            row = rows(registered, "SELECT rows_read FROM imports")
            if row and row[0][0] >= 2000:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    [stopped] = rows(registered, "SELECT rows_read, status FROM imports")
    assert stopped[1] == "running" and 0 < stopped[0] < n
    held_then = count(registered, "settlements")
    assert held_then == stopped[0]  # the checkpoint and the rows are one transaction
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["resumed_from"] == stopped[0]
    assert (summary["settlements"], summary["rows_read"], summary["status"]) == (n, n, "done")
    assert count(registered, "settlements") == n
    assert count(registered, "hist_lines") == 2 * n
    assert count(registered, "hist_visits") == n


def _home(config) -> list[str]:
    return ["--home", str(config.home)]


def test_the_cli_imports_reports_rejects_and_status(tmp_path, config, registered, capsys, act_as) -> None:
    from central.cli import main

    act_as("li", "reviewer", area="110100")
    path0 = tmp_path / "refused.jsonl"
    path0.write_text(json.dumps(body(HISTORY[0])) + "\n", encoding="utf-8")
    assert main([*_home(config), "import", "settlements", str(path0)]) == 4  # a reviewer may not import
    assert "admin" in capsys.readouterr().err and count(registered, "settlements") == 0
    act_as("root", "admin")

    path = tmp_path / "h.jsonl"
    path.write_text(json.dumps(body(HISTORY[0])) + "\n{broken\n", encoding="utf-8")
    rejects = tmp_path / "rejects.jsonl"
    args = [
        *_home(config),
        "import",
        "settlements",
        str(path),
        "--rejects",
        str(rejects),
        "--reason",
        "2024 history",
    ]
    assert main(args) == 2  # imported, but not everything: the operator has rows to correct
    out = capsys.readouterr().out
    assert "1 settlements and 0 reversals stored" in out and "first reject: row 2: row_invalid" in out
    assert [json.loads(x)["row"] for x in rejects.read_text().splitlines()] == [2]
    assert main([*_home(config), "import", "status", "--json"]) == 0
    (status,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert (status["status"], status["settlements"], status["rejected"]) == ("done", 1, 1)
    audit = registered.read(lambda c: c.execute("SELECT operator, action FROM audit_log").fetchall())
    assert ("root", "import.settlements") in audit
    assert main([*_home(config), "import", "settlements", str(tmp_path / "x.xlsx")]) == 1
    assert "give --format" in capsys.readouterr().err


def test_hospitals_import_registers_all_or_none(tmp_path, config, store, capsys, act_as) -> None:
    from central.cli import main

    act_as()
    good = tmp_path / "hospitals.csv"
    good.write_text(
        "fixmedins_code,hosp_lv,name,admdvs,lat,lon\n"
        "H11010100001,3,City No. 1,110101,39.90,116.40\n"
        "H11010100002,1,,,,\n",
        encoding="utf-8",
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("fixmedins_code,hosp_lv\nH11010100003,2\nH11010100004,7\n", encoding="utf-8")
    assert main([*_home(config), "hospitals", "import", str(bad)]) == 1
    assert "bad.csv line 3" in capsys.readouterr().err
    assert count(store, "hospitals") == 0
    assert main([*_home(config), "hospitals", "import", str(good), "--reason", "registry"]) == 0
    rows = store.read(
        lambda c: c.execute("SELECT fixmedins_code, hosp_lv, x_km IS NOT NULL FROM hospitals").fetchall()
    )
    assert sorted(rows) == [("H11010100001", "3", 1), ("H11010100002", "1", 0)]


def test_enrolment_tokens_for_a_file_of_hospitals_go_to_a_private_file(
    tmp_path, config, store, capsys, act_as
) -> None:
    from central.cli import main
    from central.intake.enrol import enrol_agent
    from protocol.batch import KeyPair
    from protocol.wire import EnrollRequest

    act_as()
    hospitals = tmp_path / "hospitals.csv"
    hospitals.write_text("fixmedins_code\nH11010100001\nH11010100002\n", encoding="utf-8")
    out = tmp_path / "tokens.csv"
    assert main([*_home(config), "enroll-token", "--hospitals-file", str(hospitals), "--out", str(out)]) == 0
    assert "yb1_" not in capsys.readouterr().out  # the tokens go to the file only
    assert out.stat().st_mode & 0o777 == 0o600
    rows = list(csv.DictReader(out.open()))
    assert [r["fixmedins_code"] for r in rows] == ["H11010100001", "H11010100002"]
    key = KeyPair.generate()
    request = EnrollRequest(
        token=rows[1]["token"], fixmedins_code="H11010100002", public_key=key.public_bytes.hex()
    )
    response, _ = enrol_agent(store, request)
    assert response.agent_id
    # Never over a file of tokens already handed out.
    assert main([*_home(config), "enroll-token", "--hospitals-file", str(hospitals), "--out", str(out)]) == 1
    assert main([*_home(config), "enroll-token", "--hospitals-file", str(hospitals)]) == 1
    assert "--out" in capsys.readouterr().err
