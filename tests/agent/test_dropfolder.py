"""The drop folder in-process: layouts, the stability rule, refusals, resume after a crash."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.api import settle_body
from agent.config import AgentConfig, load_config
from agent.dropfolder import DropFolder, csv_to_body, write_atomic
from agent.errors import ConfigError
from agent.intake import parse_settlement
from agent.policy_store import BlacklistHit
from agent.service import serve
from agent.store import Outbox
from protocol.errors import ValidationFailed
from tests.conftest import example_settlement

HOSPITAL = "H37021100001"

EXAMPLE_CSV = """\
# Yibao Edge settlement file, layout 1 (docs/DROPFOLDER.md)
field,value
fixmedins_code,H37021100001
his_setl_no,{his_setl_no}
psn.psn_no,37020000000001234567
psn.card_sn,A12345678
psn.insutype,310
psn.insuplc_admdvs,370211
psn.psn_type,11
psn.gend,1
psn.brdy,1958-04-02
mdtrt.mdtrt_id,MDT-20261123-000123
mdtrt.med_type,11
mdtrt.begntime,2026-11-23T09:12:00+08:00
mdtrt.endtime,2026-11-23T09:30:00+08:00
mdtrt.dise_codg,I10.x00
mdtrt.dise_name,essential hypertension
mdtrt.dept_codg,A03.01
mdtrt.dr_codg,D370211000123
medfee_sumamt,51.20
opter,C0007
opter_name,cashier 7

feedetl_sn,list_type,med_list_codg,medins_list_name,cnt,pric,det_item_fee_sumamt,days,dosage
1,101,XC08CAA077A001010100001,amlodipine besylate tablets 5mg x 28,2,19.60,39.20,28,5mg qd
2,201,001102000010000,general outpatient consultation,1,12.00,12.00,,
"""

Scenario = Callable[[DropFolder, Outbox, Path], Awaitable[None]]


def _run(
    tmp_path: Path,
    scenario: Scenario,
    *,
    stable_s: float = 0.0,
    workers: int = 4,
    policy: object = None,
    **outbox_kw,
) -> None:
    async def main() -> None:
        config = AgentConfig(home=tmp_path, agent_id="H1-01", fixmedins_code=HOSPITAL)
        outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01", **outbox_kw)
        settle = functools.partial(settle_body, config=config, outbox=outbox, policy=policy)
        root = tmp_path / "drop"
        folder = DropFolder(root, settle, stable_s=stable_s, poll_s=0.2, workers=workers)
        for d in folder.dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        task = asyncio.create_task(folder.run())
        try:
            await scenario(folder, outbox, root)
        finally:
            await folder.stop()
            await asyncio.wait_for(task, 5)  # run() returns once stopped
            outbox.close()

    asyncio.run(main())


async def _until(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _drop(root: Path, name: str, data: bytes) -> None:
    """The HIS side of the contract: write under a temporary name, then rename into inbox/."""
    tmp = root / "inbox" / (name + ".tmp")
    tmp.write_bytes(data)
    os.rename(tmp, root / "inbox" / name)


def _files(root: Path, d: str) -> list[str]:
    return sorted(p.name for p in (root / d).iterdir() if not p.name.startswith("."))


def _settled(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "agent.db") as db:
        return dict(db.execute("SELECT his_setl_no, setl_id FROM settlements"))


def test_json_and_csv_settle_into_results_and_done(tmp_path):
    async def scenario(folder, outbox, root):
        _drop(root, "a.json", b"\xef\xbb\xbf" + json.dumps(example_settlement("S-A")).encode())
        _drop(root, "b.csv", EXAMPLE_CSV.format(his_setl_no="S-B").encode())
        await _until(lambda: _files(root, "done") == ["a.json", "b.csv"], what="both done")
        assert (
            _files(root, "inbox") == []
            and _files(root, "processing") == []
            and _files(root, "rejected") == []
        )
        assert _files(root, "results") == ["a.json", "b.json"]
        a = json.loads((root / "results" / "a.json").read_text())
        b = json.loads((root / "results" / "b.json").read_text())
        assert a["duplicate"] is False and b["duplicate"] is False
        assert a["medfee_sumamt"] == b["medfee_sumamt"] == "51.20"
        assert {a["seq"], b["seq"]} == {1, 2} and outbox.last_seq == 2
        assert _settled(tmp_path) == {"S-A": a["setl_id"], "S-B": b["setl_id"]}
        # The CSV layout carries exactly the JSON body: the same settlement as CSV is a held one.
        _drop(root, "a-again.csv", EXAMPLE_CSV.format(his_setl_no="S-A").encode())
        await _until(lambda: (root / "done" / "a-again.csv").exists(), what="csv twin done")
        twin = json.loads((root / "results" / "a-again.json").read_text())
        assert twin["duplicate"] is True and twin["setl_id"] == a["setl_id"] and outbox.last_seq == 2

    _run(tmp_path, scenario)


def test_csv_layout_maps_to_the_api_body():
    body, lines = csv_to_body(EXAMPLE_CSV.format(his_setl_no="S-1").encode("utf-8-sig"))
    doc = json.loads(body)
    expected = example_settlement("S-1")
    assert doc == expected
    _record, digest = parse_settlement(body)
    assert digest == parse_settlement(json.dumps(expected).encode())[1]
    assert lines["psn.brdy"] == 11 and lines["feedetl[1]"] == 26
    # List fields by index, in any row order; a gap in the indices is named.
    with_overrides = EXAMPLE_CSV.format(his_setl_no="S-1").replace(
        "opter,C0007",
        "opter,C0007\noverrides[1].rule_id,R2\noverrides[0].rule_id,R1\noverrides[0].dr_codg,D1\n"
        "overrides[0].reason,because\noverrides[1].dr_codg,D2\noverrides[1].reason,again",
    )
    doc, lines = csv_to_body(with_overrides.encode())
    assert [o["rule_id"] for o in json.loads(doc)["overrides"]] == ["R1", "R2"]
    assert lines["overrides[1].reason"] == 27
    gap = EXAMPLE_CSV.format(his_setl_no="S-1").replace("opter,C0007", "opter,C0007\noverrides[1].rule_id,R2")
    with pytest.raises(ValidationFailed, match="layout"):
        csv_to_body(gap.encode())
    # GBK text from an older HIS is read too.
    gbk = EXAMPLE_CSV.format(his_setl_no="S-1").replace("cashier 7", "收费员七").encode("gbk")
    assert json.loads(csv_to_body(gbk)[0])["opter_name"] == "收费员七"


def test_csv_layout_problems_carry_lines():
    bad = EXAMPLE_CSV.format(his_setl_no="S-1").replace("psn.gend,1", "psn.gend,1\npsn.gend,2")
    bad = bad.replace("medfee_sumamt,51.20", "medfee_sumamt,51.20\nfeedetl[0].cnt,3")
    with pytest.raises(ValidationFailed) as err:
        csv_to_body(bad.encode())
    problems = {(d["field"], d["line"]) for d in err.value.details}
    assert ("psn.gend", 11) in problems and ("feedetl[0].cnt", 22) in problems
    with pytest.raises(ValidationFailed, match="layout"):
        csv_to_body(b"his_setl_no,1\n")
    with pytest.raises(ValidationFailed) as err:
        csv_to_body(b"field,value\nhis_setl_no,1\n")
    assert "feedetl_sn" in err.value.details[0]["message"]


def test_half_written_file_waits_until_it_is_complete(tmp_path):
    body = json.dumps(example_settlement("S-HALF")).encode()

    async def scenario(folder, outbox, root):
        # Written in place (against the contract): the stability wait keeps it in inbox/.
        path = root / "inbox" / "half.json"
        with open(path, "wb") as f:
            f.write(body[:40])
            f.flush()
            for _ in range(10):  # keeps writing a little for ~2 s, never pausing for 1 s
                await asyncio.sleep(0.2)
                assert _files(root, "inbox") == ["half.json"] and outbox.last_seq == 0
                os.utime(path)
            f.write(body[40:])
        # And a temporary name is never taken, however old it is.
        (root / "inbox" / "other.json.tmp").write_bytes(body[:10])
        await _until(lambda: _files(root, "done") == ["half.json"], what="complete file settled")
        assert json.loads((root / "results" / "half.json").read_text())["seq"] == 1
        await asyncio.sleep(0.6)
        assert _files(root, "inbox") == ["other.json.tmp"] and outbox.last_seq == 1

    _run(tmp_path, scenario, stable_s=1.0)


def test_malformed_files_are_rejected_with_reasons_and_nothing_settles(tmp_path):
    bad_field = example_settlement("S-BAD")
    bad_field["feedetl"][0]["cnt"] = "-1"
    bad_field["medfee_sumamt"] = "1.00"
    bad_csv = EXAMPLE_CSV.format(his_setl_no="S-BADCSV").replace("psn.brdy,1958-04-02", "psn.brdy,1958-13-40")
    bad_csv = bad_csv.replace(",2,19.60,39.20,", ",2,19.601234567,39.20,")
    files = {
        "fields.json": json.dumps(bad_field).encode(),
        "notjson.json": b'{"his_setl_no": "S-X", ',
        "layout.csv": b"field,value\nhis_setl_no,S-Y\n",
        "values.csv": bad_csv.encode(),
        "wrong.txt": b"hello",
        "other-hospital.json": json.dumps({**example_settlement("S-OTHER"), "fixmedins_code": "H1"}).encode(),
        # No doctor signs a file: an override needs the doctor's own token on the HIS API.
        "override.json": json.dumps(
            {
                **example_settlement("S-OVR"),
                "overrides": [{"rule_id": "R1", "dr_codg": "D1", "reason": "because"}],
            }
        ).encode(),
        "override.csv": EXAMPLE_CSV.format(his_setl_no="S-OVRCSV")
        .replace("opter,C0007", "opter,C0007\noverrides[0].rule_id,R1\noverrides[0].reason,because")
        .encode(),
    }

    async def scenario(folder, outbox, root):
        for name, data in files.items():
            _drop(root, name, data)
        expected = sorted([*files, *(f"{n}.error.json" for n in files)])
        await _until(lambda: _files(root, "rejected") == expected, what="all rejected")
        assert outbox.last_seq == 0 and _settled(tmp_path) == {}, "a rejected file settled something"
        assert _files(root, "done") == [] and _files(root, "processing") == []

        def error(name: str) -> dict:
            return json.loads((root / "rejected" / f"{name}.error.json").read_text())

        e = error("fields.json")
        assert e["status"] == 400 and e["file"] == "fields.json" and e["error"]["code"] == "validation_failed"
        assert {"feedetl[0].cnt", "medfee_sumamt"} <= {d["field"] for d in e["error"]["details"]}
        assert error("notjson.json")["error"]["code"] == "validation_failed"
        assert "feedetl_sn" in error("layout.csv")["error"]["details"][0]["message"]
        v = error("values.csv")["error"]["details"]
        assert {("psn.brdy", 11)} <= {(d["field"], d.get("line")) for d in v}
        assert any(d["field"].startswith("feedetl[0]") and d.get("line") == 25 for d in v), v
        assert error("wrong.txt")["error"]["details"][0]["message"].endswith(".json or .csv")
        assert error("other-hospital.json")["error"]["details"][0]["field"] == "fixmedins_code"
        for name in ("override.json", "override.csv"):
            refused = error(name)
            assert refused["status"] == 403 and refused["error"]["code"] == "override_needs_doctor"
            assert "drop-folder file cannot carry overrides" in refused["error"]["message"]
        # The answer in results/ is the body the API would have answered.
        assert json.loads((root / "results" / "fields.json").read_text()) == {"error": e["error"]}

    _run(tmp_path, scenario)


def test_file_left_in_processing_is_resumed_once(tmp_path):
    """A crash after the outbox commit but before the result: start-up settles it to the same answer."""
    root = tmp_path / "drop"
    outbox = Outbox(tmp_path / "agent.db", agent_id="H1-01")
    body = json.dumps(example_settlement("S-CRASH")).encode()
    record, digest = parse_settlement(body, fixmedins_code=HOSPITAL)
    first = outbox.append_settlement_sync(record, digest)
    outbox.close()
    (root / "processing").mkdir(parents=True)
    (root / "processing" / "crash.json").write_bytes(body)
    (root / "processing" / "never-started.json").write_bytes(json.dumps(example_settlement("S-NEW")).encode())
    (root / "results").mkdir()
    (root / "results" / ".crash.json.1-1.tmp").write_bytes(b'{"setl')  # a result write the crash cut

    async def scenario(folder, outbox, root):
        await _until(lambda: len(_files(root, "done")) == 2, what="both resumed")
        again = json.loads((root / "results" / "crash.json").read_text())
        assert again["duplicate"] is True
        assert (again["setl_id"], again["seq"], again["hash"]) == (first.setl_id, first.seq, first.hash.hex())
        assert outbox.last_seq == 2 and len(_settled(tmp_path)) == 2
        assert sorted(p.name for p in (root / "results").iterdir()) == ["crash.json", "never-started.json"]

    _run(tmp_path, scenario)


def test_transient_refusal_keeps_the_file_for_a_retry(tmp_path):
    async def scenario(folder, outbox, root):
        _drop(root, "one.json", json.dumps(example_settlement("S-1")).encode())
        await _until(lambda: _files(root, "done") == ["one.json"], what="first settled")
        _drop(root, "two.json", json.dumps(example_settlement("S-2")).encode())
        await _until(lambda: folder.counts["retried"] >= 1, what="a retry")
        assert _files(root, "processing") == ["two.json"] and _files(root, "rejected") == []
        outbox.max_records = 10  # the operator makes room
        await _until(lambda: _files(root, "done") == ["one.json", "two.json"], what="second settled")

    _run(tmp_path, scenario, max_records=1)


def test_order_of_arrival_with_one_worker(tmp_path):
    async def scenario(folder, outbox, root):
        await folder.stop()  # hold the workers while the files arrive
        base = time.time() - 100
        for i, name in enumerate(["c.json", "a.json", "b.json", "d.json"]):
            path = root / "inbox" / name
            path.write_bytes(json.dumps(example_settlement(f"S-{name[0]}")).encode())
            os.utime(path, (base + i, base + i))
        os.utime(root / "inbox" / "d.json", (base, base))  # same mtime as c: the name decides
        fresh = DropFolder(root, folder.settle, stable_s=0, poll_s=0.2, workers=1)
        task = asyncio.create_task(fresh.run())
        await _until(lambda: len(_files(root, "done")) == 4, what="all four")
        await fresh.stop()
        task.cancel()
        seqs = {n: json.loads((root / "results" / n).read_text())["seq"] for n in _files(root, "results")}
        assert sorted(seqs, key=seqs.get) == ["c.json", "d.json", "a.json", "b.json"]

    _run(tmp_path, scenario, workers=1)


def test_write_atomic_replaces_whole(tmp_path):
    target = tmp_path / "r.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_settings_and_an_unusable_folder_stop_the_start(tmp_path):
    (tmp_path / "agent.json").write_text(
        json.dumps({"dropfolder": "drop", "dropfolder_stable_ms": 250, "dropfolder_workers": 2})
    )
    config = load_config(tmp_path)
    assert config.dropfolder_path == tmp_path / "drop" and config.dropfolder_workers == 2
    assert AgentConfig(home=tmp_path).dropfolder_path is None  # off by default
    with pytest.raises(ConfigError, match="dropfolder_workers"):
        AgentConfig(home=tmp_path, dropfolder_workers=0).validate()
    (tmp_path / "a-file").write_text("")
    bad = AgentConfig(home=tmp_path, dropfolder="a-file/drop")
    with pytest.raises(ConfigError, match="cannot be used"):
        asyncio.run(serve(bad))


class _CardBlacklist:
    """A policy store whose blacklist holds the example's card (what ``settle_body`` asks)."""

    def is_blacklisted(self, *, card_sn: str | None, **_ids: object) -> BlacklistHit | None:
        if card_sn != "A12345678":
            return None
        return BlacklistHit("card", "reported stolen", "operator", 0, entry_seq=3, list_version=3)

    def card_correction(self, card_sn: str | None) -> None:
        return None  # no card replaced: only the blacklist refuses here


def test_refusals_beyond_validation_are_rejected_too(tmp_path):
    """403 blacklisted and 409 his_setl_no conflict: the API's bodies, nothing (more) settled; the
    blocked card's refusal is chained as a card log, as at the API."""

    async def scenario(folder, outbox, root):
        other_card = example_settlement("S-OK")
        other_card["psn"]["card_sn"] = "B0000001"
        _drop(root, "ok.json", json.dumps(other_card).encode())
        await _until(lambda: _files(root, "done") == ["ok.json"], what="first settled")
        _drop(root, "blocked.json", json.dumps(example_settlement("S-BLOCKED")).encode())
        changed = {**other_card, "opter": "C0099"}  # same his_setl_no, different content
        _drop(root, "changed.json", json.dumps(changed).encode())
        await _until(lambda: len(_files(root, "rejected")) == 4, what="both rejected")
        blocked = json.loads((root / "rejected" / "blocked.json.error.json").read_text())
        assert blocked["status"] == 403 and blocked["error"]["code"] == "blacklisted"
        assert blocked["error"]["list_version"] == 3 and "A12345678" not in json.dumps(blocked)
        conflict = json.loads((root / "rejected" / "changed.json.error.json").read_text())
        assert conflict["status"] == 409 and conflict["error"]["code"] == "his_setl_no_conflict"
        assert outbox.last_seq == 2 and list(_settled(tmp_path)) == ["S-OK"]  # seq 2: the card log

    _run(tmp_path, scenario, policy=_CardBlacklist())


def test_inbox_removed_by_hand_is_recreated_and_scanning_goes_on(tmp_path):
    async def scenario(folder, outbox, root):
        for p in (root / "inbox").iterdir():
            p.unlink()
        (root / "inbox").rmdir()
        await _until(lambda: (root / "inbox").is_dir(), what="inbox recreated")
        _drop(root, "late.json", json.dumps(example_settlement("S-LATE")).encode())
        await _until(lambda: _files(root, "done") == ["late.json"], what="settled by the periodic scan")

    _run(tmp_path, scenario)
