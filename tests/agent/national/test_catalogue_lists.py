"""The national code lists of the catalogue bundle (1304, 1307-1311, 1313-1317) through the envelope
over real HTTP: bodies shaped as the national specification's examples, paging, ``ver``/``updt_time``,
a list not carried, 1316/1317 answering only this hospital's matches, a bundle with a bad row refused at
apply with the held one kept, and a schema 2 ``policy.db`` upgraded with its catalogue's lists."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
import pytest

import agent.policy_store as policy_store
from agent.errors import BundleInvalid, PolicyStoreFailed
from agent.policy_store import PolicyStore
from agent.store import Outbox
from protocol.bundles import BundleHeader
from tests.agent.test_national import CODE, SAMPLES, Client, run

CATALOGUE = json.loads((SAMPLES / "catalogue.json").read_text(encoding="utf-8"))
#: infno → the sample's section and the row's code field.
LISTS = {
    "1304": ("ethnic_drugs", "med_list_codg"),
    "1307": ("diseases", "diag_code"),
    "1308": ("operations", "oprn_oprt_code"),
    "1309": ("chronic_diseases", "opsp_dise_code"),
    "1310": ("disease_groups", "bydise_setl_list_code"),
    "1311": ("day_surgery", "daysrg_dise_list_code"),
    "1313": ("tumour_morphology", "tmor_cell_type_code"),
    "1314": ("tcm_diseases", "dise_type_code"),
    "1315": ("tcm_syndromes", "sds_type_code"),
    "1316": ("matches", "medins_list_codg"),
    "1317": ("matches", "medins_list_codg"),
}
BUNDLE_TIME = "2026-11-25T00:00:00Z"


def spec_body(**data: Any) -> dict[str, Any]:
    """The national example's input: every field present, most of them empty."""
    base = {
        "ver": "",
        "updt_time": "",
        "page_num": "1",
        "page_size": "100",
        "query_date": "",
        "vali_flag": "",
    }
    return {"data": base | data}


def expected(section: str, code: str) -> list[dict[str, Any]]:
    """The sample's rows of a list as the agent answers them: this hospital's only, in code order."""
    rows = [r for r in CATALOGUE[section] if r.get("fixmedins_code", CODE) == CODE]
    return sorted(rows, key=lambda r: r[code])


def test_every_list_downloads_as_published_with_the_bundle_version(tmp_path):
    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        for infno, (section, code) in LISTS.items():
            out = await c.ok(infno, spec_body(updt_time="2020-01-01 00:00:00"))
            want = expected(section, code)
            assert out["ver"] == "2" and out["recordCounts"] == len(want), (infno, out)
            assert out["pages"] == 1 and out["firstPage"] and out["lastPage"]
            assert [r[code] for r in out["data"]] == [r[code] for r in want], infno
            for row, published in zip(out["data"], want, strict=True):
                # the row as the centre published it, vali_flag filled in, and the bundle's ver and time
                assert row == {"vali_flag": "1"} | published | {"ver": "2", "updt_time": out["updt_time"]}
        # a retired code travels with vali_flag 0 so the HIS can retire it too
        out = await c.ok("1307", spec_body(diag_code="K29.500"))
        (row,) = out["data"]
        assert row["vali_flag"] == "0" and row["enddate"] == "2025-12-31"
        appendicitis = await c.ok("1307", spec_body(diag_code="K35.8"))
        assert appendicitis["recordCounts"] == 1 and appendicitis["data"][0]["diag_name"] == "急性阑尾炎"
        out = await c.ok("1308", spec_body(oprn_oprt_code="47.0901"))
        assert [r["oprn_oprt_name"] for r in out["data"]] == ["阑尾切除术"]
        out = await c.ok("1309", spec_body(opsp_dise_code="M00500"))
        assert out["data"][0]["opsp_dise_name"] == "高血压" and out["data"][0]["admdvs"] == "370200"
        out = await c.ok("1304", {"data": {"med_list_codg": "ZZ02AAM0021010100233"}})
        assert out["data"][0]["ethdrug_type"] == "蒙药"
        out = await c.ok("1307", spec_body(diag_code="A00.0"))
        assert out["recordCounts"] == 0 and out["data"] == []  # a code the list does not hold

    run(tmp_path, scenario)


def test_lists_are_paged_and_a_current_his_gets_no_rows(tmp_path):
    codes = [r["diag_code"] for r in expected("diseases", "diag_code")]

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        pages = [await c.ok("1307", spec_body(page_num=str(n), page_size=2)) for n in (1, 2, 3)]
        assert [p["pages"] for p in pages] == [3, 3, 3] and [p["recordCounts"] for p in pages] == [5, 5, 5]
        assert [r["diag_code"] for p in pages for r in p["data"]] == codes
        assert [(p["firstPage"], p["lastPage"]) for p in pages] == [
            (True, False),
            (False, False),
            (False, True),
        ]
        beyond = await c.ok("1307", spec_body(page_num=4, page_size=2))
        assert beyond["data"] == [] and beyond["lastPage"]
        for infno in LISTS:
            current = await c.ok(infno, spec_body(ver="2"))
            assert current["recordCounts"] == 0 and current["data"] == [] and current["ver"] == "2", infno
        later = await c.ok("1314", spec_body(updt_time="2099-01-01 00:00:00"))
        assert later["recordCounts"] == 0 and later["data"] == []
        older = await c.ok("1315", spec_body(ver="1"))
        assert older["recordCounts"] == 2  # another version: the whole list
        await c.error("1307", spec_body(page_size=5001), "input.data.page_size")
        await c.error("1307", spec_body(page_num=0), "input.data.page_num")

    run(tmp_path, scenario)


def test_1316_and_1317_answer_only_this_hospital_s_matches(tmp_path):
    others = [r for r in CATALOGUE["matches"] if r["fixmedins_code"] != CODE]
    assert others  # the sample carries another hospital's matches

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        await c.sign_in()
        for infno in ("1316", "1317"):
            out = await c.ok(
                infno,
                spec_body(
                    fixmedins_code=CODE, medins_list_codg="", hilist_code="", list_type="", insu_admdvs=""
                ),
            )
            assert {r["fixmedins_code"] for r in out["data"]} == {CODE} and out["recordCounts"] == 3
            assert "1000231" not in {r["medins_list_codg"] for r in out["data"]}
            (row,) = (await c.ok(infno, spec_body(medins_list_codg="YP-0002")))["data"]
            assert row["med_list_codg"] == "XA10BAE056A001010101953" and row["medins_list_name"]
            # another hospital's own code is not this hospital's: nothing
            assert (await c.ok(infno, spec_body(medins_list_codg="1000231")))["recordCounts"] == 0
            await c.error(
                infno, spec_body(fixmedins_code="H37021100002"), "input.data.fixmedins_code", f"{CODE} only"
            )

    run(tmp_path, scenario)


def test_a_list_the_bundle_does_not_carry_is_not_held(tmp_path):
    doc = copy.deepcopy(CATALOGUE)
    del doc["diseases"], doc["tcm_syndromes"]
    doc["matches"] = [r for r in doc["matches"] if r["fixmedins_code"] != CODE]

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        with PolicyStore(home / "policy.db") as store:
            store.apply_document(BundleHeader("catalogue", "370200", 2, None, BUNDLE_TIME), doc)
        await c.sign_in()
        await c.error("1307", spec_body(), "catalogue_not_held", "1307", "carries no diseases and diagnoses")
        await c.error("1315", spec_body(ver="2"), "catalogue_not_held", "1315")  # even when "current"
        for infno in ("1316", "1317"):
            await c.error(infno, spec_body(), "catalogue_not_held", f"for hospital {CODE}")
        assert (await c.ok("1308", spec_body()))["recordCounts"] == 3  # the lists it does carry still answer
        assert (await c.ok("1301", spec_body()))["recordCounts"] == 39  # and the items

    run(tmp_path, scenario, kinds=("rules", "policy"))


def test_an_old_catalogue_without_lists_answers_not_held_and_its_items(tmp_path):
    old = {
        k: v
        for k, v in CATALOGUE.items()
        if k in ("area", "format", "items", "exclusive_pairs", "interactions")
    }

    async def scenario(c: Client, outbox: Outbox, home: Path) -> None:
        with PolicyStore(home / "policy.db") as store:
            store.apply_document(BundleHeader("catalogue", "370200", 2, None, BUNDLE_TIME), old)
        await c.sign_in()
        for infno in LISTS:
            await c.error(infno, spec_body(), "catalogue_not_held", infno)
        assert (await c.ok("1305", spec_body()))["recordCounts"] == 33

    run(tmp_path, scenario, kinds=("rules", "policy"))


def test_a_newer_catalogue_replaces_the_lists_and_one_with_a_bad_row_changes_nothing(tmp_path):
    path = tmp_path / "policy.db"
    with PolicyStore(path) as store:
        store.apply_document(BundleHeader("catalogue", "370200", 1, None, BUNDLE_TIME), CATALOGUE)
        total, rows = store.catalogue_list("diseases", limit=10, offset=0)
        assert total == 5 and rows[0]["diag_code"] == "E11.9"
        # the document body keeps the items; the lists live in their own table
        assert (
            "diseases" not in store.document("catalogue") and len(store.document("catalogue")["items"]) == 79
        )

        bad = copy.deepcopy(CATALOGUE)
        bad["diseases"][2]["diag_code"] = "K35-8"
        bad["operations"].append(dict(bad["operations"][0]))
        with pytest.raises(BundleInvalid) as err:
            store.apply_document(BundleHeader("catalogue", "370200", 2, None, BUNDLE_TIME), bad)
        message = str(err.value)
        assert "diseases[2].diag_code: 'K35-8' is not an ICD-10 diagnosis code" in message
        assert "operations[3].oprn_oprt_code: '47.0901' repeats operations[0]" in message
        assert (
            store.held_seq("catalogue") == 1 and store.catalogue_list("diseases", limit=10, offset=0)[0] == 5
        )

        fewer = copy.deepcopy(CATALOGUE)
        fewer["diseases"] = fewer["diseases"][:1]
        del fewer["operations"]
        store.apply_document(BundleHeader("catalogue", "370200", 2, None, BUNDLE_TIME), fewer)
        assert store.catalogue_list("diseases", limit=10, offset=0)[0] == 1
        with pytest.raises(KeyError):
            store.catalogue_list("operations", limit=10, offset=0)


def _schema_2_file(path: Path, body: dict[str, Any]) -> None:
    conn = sqlite3.connect(path)
    for script in (policy_store._SCHEMA, policy_store._SCHEMA_2):
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO bundle_state VALUES ('catalogue', 4, ?, 't', 0, NULL)", (BUNDLE_TIME,))
    conn.execute("INSERT INTO documents VALUES ('catalogue', ?)", (msgpack.packb(body, use_bin_type=True),))
    conn.commit()
    conn.close()


def test_a_schema_2_policy_db_moves_its_catalogue_lists_into_their_table(tmp_path):
    path = tmp_path / "policy.db"
    _schema_2_file(path, CATALOGUE)  # an older agent stored whatever catalogue body it was sent
    with PolicyStore(path) as store:
        assert store._reader.execute("PRAGMA user_version").fetchone() == (3,)
        assert store.catalogue_list("tcm_diseases", limit=10, offset=0)[0] == 2
        assert store.catalogue_list("matches", hospital=CODE, limit=10, offset=0)[0] == 3
        body = store.document("catalogue")
        assert not set(body) & set(policy_store.LISTS) and len(body["items"]) == 79


def test_a_failed_upgrade_leaves_the_schema_2_file(tmp_path, monkeypatch):
    path = tmp_path / "policy.db"
    _schema_2_file(path, CATALOGUE)

    def broken(conn: sqlite3.Connection, lists: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(policy_store, "_write_lists", broken)
    with pytest.raises(PolicyStoreFailed, match="disk I/O error"):
        PolicyStore(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='catalogue_lists'").fetchall() == []
    conn.close()
