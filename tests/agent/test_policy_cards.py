"""The ``cards`` bundle at the agent: fetched through the real TUF client from a repository on loopback,
applied to ``policy.db`` (snapshot, deltas, withdrawals) in one transaction with the checks every kind
gets; a bad entry half-way leaves the held state whole; an old ``policy.db`` (schema 1) is upgraded; and a
bundle kind this agent does not know is skipped and reported, never a refusal of the update."""

from __future__ import annotations

import io
import sqlite3
import zlib
from pathlib import Path

import msgpack
import pytest

from agent.errors import BundleBaseMismatch, BundleInvalid, BundleNotNewer
from agent.policy import ALARM_REFUSED, CODE_KIND_UNKNOWN, PolicyClient
from agent.policy_store import SCHEMA_VERSION, PolicyStore
from protocol.bundles import BundleHeader, CardCorrection, CardNotice, CardsEntry, encode_cards
from tests.agent.tufrepo import AREA, Repo, card, now_iso

OLD, NEW, OTHER = "370200A000000001", "370200A000000002", "370200A000000003"
TODAY = 1796097600.0  # 2026-12-01 12:00 CST, a fixed "now" for the notices' dates
DAY = "2026-12-01"


def correction(old: str = OLD, new: str = NEW, fields: tuple[str, ...] = ("expires",)) -> CardsEntry:
    return CardsEntry(
        "+", "correction", old, correction=CardCorrection(old, new, fields, "replaced after loss")
    )


def notice(nid: str, card_sn: str = OTHER, start: str = "2026-11-20", end: str = "2026-12-31",
           fen: int | None = 5000, kind: str = "topup") -> CardsEntry:  # fmt: skip
    return CardsEntry("+", "notice", nid, notice=CardNotice(nid, card_sn, kind, fen, "subsidy", start, end))


def test_a_snapshot_then_deltas_with_withdrawals_are_applied(
    repo: Repo, client: PolicyClient, store: PolicyStore
):
    assert TODAY and store.card_notes(OLD, at=TODAY) == {"correction": None, "notices": []}
    repo.cards(1, [correction(), notice("N1"), notice("LATER", start="2027-01-01", end="2027-01-31"),
                   notice("MSG", fen=None, kind="message")])  # fmt: skip
    repo.publish()
    result = client.update()
    assert result.ok, result.refused
    assert [(a.kind, a.seq, a.base_seq, a.entries) for a in result.applied] == [("cards", 1, None, 4)]
    old = store.card_notes(OLD, at=TODAY)
    assert old["correction"] == {"card_sn": OLD, "replaced": True, "new_card_sn": NEW, "fields": ["expires"],
                                 "reason": "replaced after loss", "bundle_seq": 1}  # fmt: skip
    assert old["notices"] == []
    other = store.card_notes(OTHER, at=TODAY)
    assert other["correction"] is None
    # valid today only: LATER starts next month
    assert [(n["id"], n["type"], n["amount_fen"]) for n in other["notices"]] == [
        ("MSG", "message", None), ("N1", "topup", 5000)]  # fmt: skip
    assert client.status()["bundles"]["cards"]["seq"] == 1
    assert client.build_report().versions["cards"] == 1

    repo.cards(2, [CardsEntry("-", "correction", OLD), notice("N2", fen=100)], base=1)
    repo.cards(3, [CardsEntry("-", "notice", "N1"), correction(OTHER, "", ("psn_name", "brdy"))], base=2)
    repo.publish()
    result = client.update()
    assert result.ok and [(a.seq, a.base_seq) for a in result.applied] == [(2, 1), (3, 2)]
    assert store.card_correction(OLD) is None
    data_only = store.card_correction(OTHER)
    assert data_only is not None and not data_only.replaced and data_only.fields == ("psn_name", "brdy")
    assert [n["id"] for n in store.card_notes(OTHER, at=TODAY)["notices"]] == ["MSG", "N2"]
    assert store.held()["cards"]["entries"] == 4  # LATER, MSG, N2 and the correction of OTHER


def _raw_cards(header: BundleHeader, *objects: object) -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    return zlib.compress(b"".join(packer.pack(o) for o in (header.to_map(), *objects)))


def test_a_bad_entry_half_way_leaves_the_held_cards_whole(store: PolicyStore, tmp_path: Path):
    buf = io.BytesIO()
    encode_cards(buf, BundleHeader("cards", AREA, 1, None, now_iso()), [correction(), notice("N1")])
    (tmp_path / "one.bin").write_bytes(buf.getvalue())
    store.apply_file(tmp_path / "one.bin", area=AREA)
    before = store.card_notes(OTHER, at=TODAY), store.card_correction(OLD), store.held()["cards"]
    delta = BundleHeader("cards", AREA, 2, 1, now_iso())
    bad = ["+n", "N9", OTHER, "topup", 12.5, "float money", DAY, DAY]  # money that is not integer fen
    (tmp_path / "bad.bin").write_bytes(_raw_cards(delta, ["-c", OLD], ["-n", "N1"], bad))
    with pytest.raises(BundleInvalid, match="integer fen"):
        store.apply_file(tmp_path / "bad.bin", area=AREA)
    assert (store.card_notes(OTHER, at=TODAY), store.card_correction(OLD), store.held()["cards"]) == before
    (tmp_path / "date.bin").write_bytes(
        _raw_cards(delta, ["+n", "N9", OTHER, "message", None, "t", DAY, "soon"])
    )
    with pytest.raises(BundleInvalid, match="valid_to"):
        store.apply_file(tmp_path / "date.bin", area=AREA)
    stale = BundleHeader("cards", AREA, 1, None, now_iso())
    (tmp_path / "stale.bin").write_bytes(_raw_cards(stale))
    with pytest.raises(BundleNotNewer):
        store.apply_file(tmp_path / "stale.bin", area=AREA)
    wrong_base = BundleHeader("cards", AREA, 3, 2, now_iso())
    (tmp_path / "base.bin").write_bytes(_raw_cards(wrong_base, ["-c", OLD]))
    with pytest.raises(BundleBaseMismatch):
        store.apply_file(tmp_path / "base.bin", area=AREA)
    assert store.card_correction(OLD) is not None and store.held_seq("cards") == 1


def test_a_schema_1_policy_db_is_upgraded_with_its_blacklist_kept(tmp_path: Path):
    path = tmp_path / "policy.db"
    with PolicyStore(path) as s:
        s.apply_blacklist(BundleHeader("blacklist", AREA, 1, None, now_iso()), [card("C1")])
    conn = sqlite3.connect(path)
    conn.executescript(
        "DROP TABLE card_corrections; DROP TABLE card_notices; DROP TABLE catalogue_lists; "
        "PRAGMA user_version = 1;"
    )
    conn.close()
    with PolicyStore(path) as s:
        assert s.is_blacklisted(card_sn="C1") is not None and s.card_correction(OLD) is None
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3  # cards, then lists
    conn.close()


def test_an_unknown_bundle_kind_is_skipped_and_reported_not_refused(repo: Repo, client: PolicyClient,
                                                                    store: PolicyStore):  # fmt: skip
    future = BundleHeader("blacklist", AREA, 1, None, now_iso()).custom() | {"kind": "vaccinations"}
    repo.add_target(f"{AREA}/vaccinations/000000000001.full.bin", b"whatever a newer centre writes", future)
    repo.blacklist(1, [card("C1")])
    repo.cards(1, [correction()])
    repo.publish()
    result = client.update()
    assert result.ok and result.refused == [], [(e.code, e.message) for e in result.refused]
    assert result.skipped == ["vaccinations"]
    assert sorted(a.kind for a in result.applied) == ["blacklist", "cards"]  # the known kinds still apply
    assert store.is_blacklisted(card_sn="C1") is not None and store.card_correction(OLD) is not None
    status = client.status()
    assert status["last_attempt"]["result"] == "ok" and status["last_attempt"]["skipped"] == ["vaccinations"]
    assert ALARM_REFUSED not in {a["code"] for a in status["alarms"]}
    problem = store.problems(1)[0]
    assert problem["code"] == CODE_KIND_UNKNOWN and problem["kind"] == "vaccinations"
    assert "Upgrade the agent" in problem["message"]
    assert CODE_KIND_UNKNOWN in client.build_report().problems  # the centre hears of it
    again = client.update()  # the same skip does not add a problem every poll
    assert again.ok and again.skipped == ["vaccinations"]
    assert [p["code"] for p in store.problems(5)].count(CODE_KIND_UNKNOWN) == 1


def test_an_offline_site_applies_the_cards_bundle_from_an_export(
    repo: Repo, client: PolicyClient, store: PolicyStore, tmp_path: Path
):
    repo.cards(1, [correction(), notice("N1")])
    repo.publish()
    tar = repo.export(tmp_path / "cards.tar", kinds=["cards"])
    result = client.apply_export(tar)
    assert result.ok, [(e.code, e.message) for e in result.refused]
    assert store.card_correction(OLD) is not None and store.held_seq("cards") == 1
    repo.cards(2, [CardsEntry("-", "correction", OLD)], base=1)
    repo.publish()
    bad = client.apply_export(repo.export(tmp_path / "bad.tar", kinds=["cards"], tamper=True))
    assert not bad.ok and store.card_correction(OLD) is not None  # a tampered file changes nothing
    assert bad.refused[0].code == "tuf_target_mismatch" and store.held_seq("cards") == 1
