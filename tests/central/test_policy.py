"""Blacklist state, deltas and full snapshots, documents, audit and export, on a real home."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import FetcherInterface, Updater

from central.config import CentralConfig
from central.errors import AreaRequired, BlacklistEntryUnknown, ConfigInvalid, DocumentInvalid, InternalError
from central.policy.bundles import Policy, live_targets
from central.policy.documents import load_json_document, validate_document
from central.policy.tuf_repo import TufRepository
from central.storage.store import Store
from protocol.bundles import iter_blacklist, read_document

from .conftest import ACTOR, AREA

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


@pytest.fixture
def small(store: Store, config: CentralConfig) -> Policy:
    """Full snapshots every 3 deltas or when deltas exceed half the last full."""
    return Policy(
        store, TufRepository.open(config), dataclasses.replace(config, full_every=3, full_ratio=0.5)
    )


def _entries(policy: Policy, target: str) -> list[tuple[str, ...]]:
    tf = policy.repo.targets_md().signed.targets[target]
    with open(policy.repo.target_path(tf), "rb") as f:
        header, entries = iter_blacklist(f)
        assert header.seq == tf.custom["seq"] and header.base_seq == tf.custom["base_seq"]
        return [(e.op, e.list_type, e.id) for e in entries]


def _csv(tmp_path: Path, rows: list[str], name: str = "bl.csv") -> Path:
    path = tmp_path / name
    path.write_text(
        "list_type,id,reason,source,effective_at\n" + "".join(r + "\n" for r in rows), encoding="utf-8"
    )
    return path


def _add(policy: Policy, signers, entry_id: str, list_type: str = "card"):
    return policy.blacklist_add(
        ACTOR, signers, list_type=list_type, entry_id=entry_id, reason="lost", area=AREA
    )


def test_deltas_until_the_full_snapshot_rule_says_otherwise(small: Policy, signers, tmp_path) -> None:
    first = _add(small, signers, "C00")
    assert first.full and first.entries == 1  # no full snapshot yet
    big = small.blacklist_import(
        ACTOR, signers, _csv(tmp_path, [f"card,C{i:02d},lost,," for i in range(1, 11)]), area=AREA
    )
    assert big.full and big.entries == 11  # 10 entries > half of the last full's 1
    deltas = [_add(small, signers, f"P{i}", "person") for i in range(3)]
    assert [(d.full, d.base_seq, d.entries) for d in deltas] == [(False, 2, 1), (False, 3, 1), (False, 4, 1)]
    after_three = _add(small, signers, "P3", "person")
    assert after_three.full and after_three.entries == 15  # full_every = 3 deltas
    removed = small.blacklist_remove(ACTOR, signers, list_type="card", entry_id="C00", area=AREA)
    assert not removed.full and removed.base_seq == 6
    assert _entries(small, removed.target) == [("-", "card", "C00")]
    seven = small.blacklist_import(
        ACTOR, signers, _csv(tmp_path, [f"employer,E{i}, suspended,tax," for i in range(6)]), area=AREA
    )
    assert not seven.full and seven.entries == 6  # 1 + 6 = 7 <= 7.5 (half of 15)
    tipping = _add(small, signers, "E9", "employer")
    assert tipping.full and tipping.entries == 21  # 1 + 6 + 1 = 8 > 7.5
    assert tipping.entries == len(small.blacklist_list(AREA))
    # the metadata lists only the newest full and the deltas after it
    listed = sorted(small.repo.targets_md().signed.targets)
    assert listed == [tipping.target]
    assert [b["seq"] for b in small.bundles(AREA, "blacklist")] == list(range(1, 10))


def test_a_delta_chain_is_listed_with_its_full(small: Policy, signers, tmp_path) -> None:
    small.blacklist_import(
        ACTOR, signers, _csv(tmp_path, [f"card,C{i},lost,," for i in range(10)]), area=AREA
    )
    d1 = _add(small, signers, "X1")
    d2 = small.blacklist_remove(ACTOR, signers, list_type="card", entry_id="C3", area=AREA)
    targets = small.repo.targets_md().signed.targets
    chain = sorted((t.custom["seq"], t.custom["base_seq"]) for t in targets.values())
    assert chain == [(1, None), (2, 1), (3, 2)]
    assert _entries(small, d1.target) == [("+", "card", "X1")] and _entries(small, d2.target) == [
        ("-", "card", "C3")
    ]
    assert sorted(targets) == sorted(small.store.read(live_targets))


def test_entries_keep_reason_source_and_effective_time(policy: Policy, signers) -> None:
    policy.blacklist_add(
        ACTOR, signers, list_type="employer", entry_id="91370200MA3C12345X", reason=" suspended ",
        source="tax bureau", effective_at="2026-12-01T08:00:00+08:00", area=AREA,
    )  # fmt: skip
    (row,) = policy.blacklist_list(AREA, "employer")
    assert row["reason"] == "suspended" and row["source"] == "tax bureau"
    assert row["effective_at"] == "2026-12-01T00:00:00+00:00" and row["added_seq"] == 1
    (target,) = policy.repo.targets_md().signed.targets.values()
    with open(policy.repo.target_path(target), "rb") as f:
        _, entries = iter_blacklist(f)
        (entry,) = list(entries)
    assert (entry.reason, entry.source, entry.effective_at) == (
        "suspended",
        "tax bureau",
        row["effective_at"],
    )


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"list_type": "car"}, "--list-type"),
        ({"entry_id": "has space"}, "--id"),
        ({"reason": "  "}, "--reason"),
        ({"effective_at": "2026-12-01T08:00:00"}, "no UTC offset"),
        ({"effective_at": "tomorrow"}, "not an ISO-8601"),
    ],
)
def test_a_bad_entry_is_refused_and_nothing_is_published(policy: Policy, signers, kwargs, problem) -> None:
    args = {"list_type": "card", "entry_id": "C1", "reason": "lost", "area": AREA, **kwargs}
    before = policy.repo.versions()
    with pytest.raises(DocumentInvalid, match=problem):
        policy.blacklist_add(ACTOR, signers, **args)
    assert policy.repo.versions() == before and policy.bundles() == [] and policy.audit_log() == []


def test_removing_an_entry_not_held_is_refused(policy: Policy, signers) -> None:
    _add(policy, signers, "C1")
    before = policy.repo.versions()
    with pytest.raises(BlacklistEntryUnknown, match="nothing was published"):
        policy.blacklist_remove(ACTOR, signers, list_type="person", entry_id="C1", area=AREA)
    assert policy.repo.versions() == before and len(policy.bundles()) == 1 and len(policy.audit_log()) == 1


def test_an_area_is_needed(store: Store, config: CentralConfig, policy: Policy, signers) -> None:
    with pytest.raises(AreaRequired, match="--area"):
        policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C1", reason="lost")
    with pytest.raises(DocumentInvalid, match="6-digit"):
        policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C1", reason="lost", area="3702")
    from central.policy.bundles import set_default_area

    set_default_area(store, "370200")
    assert _add(policy, signers, "C1").area == AREA  # explicit --area still wins
    assert policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C1", reason="r").area == "370200"


def test_csv_import_is_all_or_nothing_with_lines_and_columns(policy: Policy, signers, tmp_path) -> None:
    _add(policy, signers, "KEEP")
    before = (policy.repo.versions(), policy.bundles(), policy.audit_log(), policy.blacklist_list())
    bad = _csv(tmp_path, [
        "card,C1,lost,,",
        "pet,C2,lost,,",
        "card,C3,,,",
        "card,C4,lost,,2026-13-01T00:00:00+08:00",
        "card,C1,again,,",
        "card,C5,lost",
    ])  # fmt: skip
    with pytest.raises(DocumentInvalid) as err:
        policy.blacklist_import(ACTOR, signers, bad, area=AREA)
    problems = err.value.problems
    types = "card, person, employer, doctor, hospital"
    assert f"line 3, column list_type: 'pet' is not one of {types}" in problems
    assert "line 4, column reason: is required, up to 200 characters" in problems
    assert any(p.startswith("line 5, column effective_at:") for p in problems)
    assert "line 7: 3 columns, expected 5" in problems
    assert "nothing was published" in err.value.message
    assert (policy.repo.versions(), policy.bundles(), policy.audit_log(), policy.blacklist_list()) == before
    dup = _csv(tmp_path, ["card,C1,lost,,", "person,C1,x,,", "card,C1,again,,"], "dup.csv")
    with pytest.raises(DocumentInvalid, match="line 4, column id: repeats the card of line 2"):
        policy.blacklist_import(ACTOR, signers, dup, area=AREA)
    header = tmp_path / "h.csv"
    header.write_text("type,id\ncard,C1\n")
    with pytest.raises(
        DocumentInvalid, match="header must be exactly list_type,id,reason,source,effective_at"
    ):
        policy.blacklist_import(ACTOR, signers, header, area=AREA)
    with pytest.raises(DocumentInvalid, match="no entries"):
        policy.blacklist_import(ACTOR, signers, _csv(tmp_path, [], "empty.csv"), area=AREA)
    with pytest.raises(DocumentInvalid, match="cannot read"):
        policy.blacklist_import(ACTOR, signers, tmp_path / "missing.csv", area=AREA)
    assert (policy.repo.versions(), policy.bundles(), policy.audit_log(), policy.blacklist_list()) == before


def test_the_sample_csv_imports(policy: Policy, signers) -> None:
    published = policy.blacklist_import(ACTOR, signers, SAMPLES / "blacklist.csv", area=AREA)
    assert published.entries == 5
    (audit,) = policy.audit_log()
    assert audit["action"] == "blacklist.import" and audit["detail"] == {
        "area": AREA, "file": "blacklist.csv", "entries": 5,
    } and audit["operator"] == "tester" and audit["reason"] == ACTOR.reason  # fmt: skip
    assert audit["seq"] == 1 and audit["target"] == published.target


@pytest.mark.parametrize("kind", ["policy", "catalogue", "rules", "keys"])
def test_the_samples_validate_and_publish(policy: Policy, signers, kind: str) -> None:
    path = SAMPLES / f"{kind}.json"
    published = policy.publish_document_file(ACTOR, signers, kind, path, area="370200")
    assert published.area == "370200" and published.full and published.seq == 1
    (target,) = policy.repo.targets_md().signed.targets.values()
    with open(policy.repo.target_path(target), "rb") as f:
        header, body = read_document(f)
    original = json.loads(path.read_text())
    assert header.kind == kind and body == (
        original if kind != "keys" else {"evoucher_issuers": original["evoucher_issuers"]}
    )


def _policy_doc(**changes: object) -> dict:
    row = {"year": 2026, "insutype": "310", "psn_type": "11", "hosp_lv": "3", "deductible": 120000,
           "ceiling": 40000000, "fund_ratio": "0.85"}  # fmt: skip
    return {"area": AREA, "benefits": [{**row, **changes}]}


@pytest.mark.parametrize(
    ("doc", "problem"),
    [
        (_policy_doc(fund_ratio=0.85), 'benefits[0].fund_ratio: ratios are decimal strings: write "0.85"'),
        (_policy_doc(fund_ratio="1.2"), "benefits[0].fund_ratio: must be a decimal string"),
        (_policy_doc(deductible=1200.5), "benefits[0].deductible: 1200.5 has a fraction"),
        (_policy_doc(ceiling=100), "benefits[0].ceiling: 100 is below the deductible 120000"),
        (_policy_doc(hosp_lv="4"), "benefits[0].hosp_lv: '4' is not one of 0, 1, 2, 3"),
        (_policy_doc(color="red"), "benefits[0].color: is not a known field"),
        ({"area": AREA}, "benefits: is required"),
        ({"area": "37020", "benefits": _policy_doc()["benefits"]}, "area: '37020' must be a 6-digit"),
        ({"area": AREA, "benefits": _policy_doc()["benefits"] * 2}, "benefits[1]: repeats benefits[0]"),
    ],
)
def test_policy_documents_are_checked_field_by_field(doc, problem: str) -> None:
    with pytest.raises(DocumentInvalid) as err:
        validate_document("policy", doc)
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_every_problem_is_reported_at_once(tmp_path) -> None:
    doc = {"area": AREA, "items": [
        {"code": "X1", "name": "", "list_type": "999", "class": "D", "price_ceiling": {"5": 1, "1": "3"},
         "restrictions": {"gender": "3", "age_min": 30, "age_max": 20}},
        {"code": "XC08CAA077A001010100001", "name": "a", "list_type": "101", "class": "A"},
        {"code": "XC08CAA077A001010100001", "name": "b", "list_type": "101", "class": "A"},
    ]}  # fmt: skip
    with pytest.raises(DocumentInvalid) as err:
        validate_document("catalogue", doc, what="cat.json")
    assert err.value.problems == [
        "items[0].code: 'X1' must be 6-50 letters and digits",
        "items[0].name: must be 1-200 characters",
        "items[0].list_type: '999' is not one of 101, 102, 103, 104, 201, 301",
        "items[0].class: 'D' is not one of A, B, C",
        "items[0].price_ceiling.5: hospital level must be one of 0, 1, 2, 3",
        "items[0].price_ceiling.1: must be an integer of fen, found a string",
        "items[0].restrictions.gender: '3' is not one of 1, 2",
        "items[0].restrictions.age_max: 20 is below age_min 30",
        "items[2].code: 'XC08CAA077A001010100001' repeats items[1]",
    ]
    assert err.value.message.startswith("cat.json is not valid (9 problems); nothing was published:")
    rules = {"area": AREA, "format": 1, "rules": [{"id": "R 1", "version": 1, "template": "blacklisted",
             "severity": "block", "mode": "loud", "action": "refuse"}]}  # fmt: skip
    with pytest.raises(DocumentInvalid) as err:
        validate_document("rules", rules)
    assert len(err.value.problems) == 2  # both problems at once, with their paths
    assert err.value.problems[0].startswith("rules[0].id:") and err.value.problems[1].startswith(
        "rules[0].mode:"
    )
    path = tmp_path / "broken.json"
    path.write_text('{"area": "110100",\n "rules": [}')
    with pytest.raises(DocumentInvalid, match="line 2, column 12"):
        load_json_document(path)
    with pytest.raises(DocumentInvalid, match="the document is for 110100 but --area says 370200"):
        validate_document("rules", {"area": AREA, "format": 1, "rules": []}, area="370200")


def test_a_bad_document_publishes_nothing(policy: Policy, signers, tmp_path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(_policy_doc(fund_ratio=0.9)))
    before = policy.repo.versions()
    with pytest.raises(DocumentInvalid, match=r"policy\.json is not valid"):
        policy.publish_document_file(ACTOR, signers, "policy", path)
    assert policy.repo.versions() == before and policy.bundles() == [] and policy.audit_log() == []


class _TarFetcher(FetcherInterface):
    """What an offline site does: ``<base>/tuf/metadata/X`` → ``metadata/X``, targets alike."""

    def __init__(self, path: Path) -> None:
        with tarfile.open(path) as tar:
            self.members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.split("/tuf/", 1)[1]
        if name not in self.members:
            raise DownloadHTTPError(f"{name} not in the export", 404)
        return iter([self.members[name]])


def test_export_holds_what_an_offline_site_needs(policy: Policy, signers, tmp_path) -> None:
    policy.blacklist_import(ACTOR, signers, SAMPLES / "blacklist.csv", area=AREA)
    policy.publish_document_file(ACTOR, signers, "rules", SAMPLES / "rules.json", area="370200")
    policy.repo.rotate_root(signers[:2])
    out = tmp_path / "out" / "bl.tar"
    members = policy.export(out, "blacklist")
    v = policy.repo.versions()
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names == members
    assert names[:5] == [
        "metadata/1.root.json",
        "metadata/2.root.json",
        "metadata/timestamp.json",
        f"metadata/{v['snapshot']}.snapshot.json",
        f"metadata/{v['targets']}.targets.json",
    ]
    (target,) = names[5:]
    assert target.startswith(f"targets/{AREA}/blacklist/") and target.endswith(".000000000001.full.bin")
    assert len(policy.export(tmp_path / "all.tar", "all")) == 7
    (tmp_path / "m").mkdir()
    (tmp_path / "t").mkdir()
    updater = Updater(
        str(tmp_path / "m"), "http://offline/tuf/metadata/", str(tmp_path / "t"), "http://offline/tuf/targets/",
        fetcher=_TarFetcher(out), bootstrap=policy.repo.root_md(1).to_bytes(),
    )  # fmt: skip
    updater.refresh()
    info = updater.get_targetinfo(f"{AREA}/blacklist/000000000001.full.bin")
    with open(updater.download_target(info), "rb") as f:
        assert len(list(iter_blacklist(f)[1])) == 5
    with pytest.raises(ConfigInvalid, match="no catalogue bundle is published"):
        policy.export(tmp_path / "none.tar", "catalogue")
    with pytest.raises(ConfigInvalid, match="--kind"):
        policy.export(tmp_path / "none.tar", "bogus")
    assert not (tmp_path / "none.tar").exists()


def test_a_full_snapshot_killed_before_its_file_is_finished_by_the_next(
    policy: Policy, signers, monkeypatch
) -> None:
    _add(policy, signers, "C1")
    before = policy.repo.versions()
    real = TufRepository.write_target
    monkeypatch.setattr(TufRepository, "write_target", lambda *a, **k: (_ for _ in ()).throw(OSError("kill")))
    with pytest.raises(InternalError, match="seq 2 is recorded"):
        _add(policy, signers, "C2")  # 2 entries: a full snapshot, recorded but never written
    monkeypatch.setattr(TufRepository, "write_target", real)
    assert policy.repo.versions() == before
    assert policy.pending() == [f"{AREA}/blacklist/000000000002.full.bin"]
    assert [b["path"] for b in policy.bundles()][1] == ""
    third = _add(policy, signers, "C3")
    assert policy.pending() == [] and third.seq == 3
    rows = policy.bundles()
    assert [(r["seq"], r["entries"], r["path"] != "") for r in rows] == [
        (1, 1, True),
        (2, 2, True),
        (3, 3, True),
    ]
