"""``yibao-central hospitals set/list`` (audited) and ``access-log``."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from central.cli import main
from central.intake.history import answer_history
from central.intake.ingest import Ingestor
from central.storage.store import Store
from protocol.wire import PERSON_HISTORY_PATH, sign_request

from .conftest import HOSPITAL, Chain, settlement


def _home(config) -> list[str]:
    return ["--home", str(config.home)]


def test_hospitals_set_records_the_grade_audits_it_and_updates_held_lines(
    config, store: Store, chain: Chain, capsys: pytest.CaptureFixture, act_as
) -> None:
    chain.extend(2)
    act_as("alice")
    Ingestor(store).ingest(chain.batch(1, 2))
    args = [*_home(config), "hospitals", "set", "--hospital", HOSPITAL, "--level", "3",
            "--name", "City No. 1", "--admdvs", "110101",
            "--reason", "grade from the registry"]  # fmt: skip
    assert main(args) == 0
    assert "4 history lines updated" in capsys.readouterr().err
    assert main([*_home(config), "hospitals", "list", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert {k: row[k] for k in ("fixmedins_code", "hosp_lv", "name", "admdvs")} == {
        "fixmedins_code": HOSPITAL, "hosp_lv": "3", "name": "City No. 1", "admdvs": "110101",
    }  # fmt: skip
    assert store.read(lambda c: c.execute("SELECT DISTINCT hosp_lv FROM hist_lines").fetchall()) == [("3",)]

    # A change of grade keeps the name and admdvs, and says what it was before.
    act_as("bob")
    assert (
        main(
            [*_home(config), "hospitals", "set", "--hospital", HOSPITAL, "--level", "2"]
        )
        == 0
    )
    assert main([*_home(config), "hospitals", "list"]) == 0
    assert "level 2  110101  City No. 1" in capsys.readouterr().out
    assert main([*_home(config), "audit", "--json"]) == 0
    audits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    audits = [a for a in audits if a["action"] == "hospital.set"]
    assert [(a["operator"], a["action"], a["reason"]) for a in audits[:2]] == [
        ("bob", "hospital.set", ""), ("alice", "hospital.set", "grade from the registry"),
    ]  # fmt: skip
    assert audits[0]["detail"] == {
        "hospital": HOSPITAL, "hosp_lv": "2", "previous_hosp_lv": "3", "name": "City No. 1",
        "admdvs": "110101", "lines_updated": 4,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--hospital", "bad code", "--level", "1"], "hospital code"),
     (["--hospital", HOSPITAL, "--level", "1", "--admdvs", "1101"], "6-digit"),
     (["--hospital", HOSPITAL, "--level", "1", "--name", " "], "--name")],
)  # fmt: skip
def test_hospitals_set_refuses_bad_input_and_changes_nothing(
    config, store: Store, capsys: pytest.CaptureFixture, extra: list[str], message: str, act_as
) -> None:
    act_as()
    audited = store.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0])
    assert main([*_home(config), "hospitals", "set", *extra]) == 1
    assert message in capsys.readouterr().err
    assert store.read(lambda c: c.execute("SELECT count(*) FROM hospitals").fetchone()[0]) == 0
    assert store.read(lambda c: c.execute("SELECT count(*) FROM audit_log").fetchone()[0]) == audited


def test_hospitals_set_level_must_be_a_grade(config, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*_home(config), "hospitals", "set", "--hospital", HOSPITAL, "--level", "4"])
    assert exit_.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_access_log_finds_lookups_by_person_without_holding_the_number(
    config, store: Store, chain: Chain, capsys: pytest.CaptureFixture
) -> None:
    chain.append(settlement("S1", setl_time=datetime.now(UTC).isoformat(timespec="seconds")))
    Ingestor(store).ingest(chain.batch(1, 1))
    path = PERSON_HISTORY_PATH.format(psn_no="P0000000001") + "?days=7"
    headers = sign_request(chain.key, chain.agent_id, "GET", path, datetime.now(UTC).isoformat())
    answer_history(store, method="GET", path_qs=path, headers=headers, psn_no="P0000000001", days=["7"])
    assert main([*_home(config), "access-log", "--psn-no", "P0000000001", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert {k: row[k] for k in ("agent_id", "fixmedins_code", "psn_hash", "days", "rows")} == {
        "agent_id": chain.agent_id, "fixmedins_code": HOSPITAL,
        "psn_hash": hashlib.sha256(b"P0000000001").hexdigest(), "days": 7, "rows": 2,
    }  # fmt: skip
    assert main([*_home(config), "access-log", "--psn-no", "P0000000002"]) == 0
    assert capsys.readouterr().out == ""
    assert main([*_home(config), "access-log", "--agent", chain.agent_id]) == 0
    out = capsys.readouterr().out
    assert "7 days" in out and "P0000000001" not in out
