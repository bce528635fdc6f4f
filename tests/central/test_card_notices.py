"""Card corrections and notices at the centre (the ``cards`` bundle): proposed by one policy operator,
approved by another, published through the signed TUF path (a real client fetches and decodes them),
deltas and snapshots, withdrawals, the audit log; every refusal (bad input, self-approval, a withdrawal of
what is not held, a base that moved) changes nothing. The CLI does the same through real processes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from central.errors import CardEntryUnknown, ChangeBaseMoved, DocumentInvalid, SelfApproval
from central.operators import Operator
from central.policy import changes
from central.policy.bundles import Policy
from central.policy.card_notices import yuan_to_fen
from central.storage.store import Store
from protocol.bundles import CardCorrection, CardNotice, CardsEntry, iter_cards

from . import test_changes
from .conftest import AREA, Server, tuf_client
from .test_changes import _cli, _requests

OLD, NEW, OTHER = "110100A000000001", "110100A000000002", "110100A000000003"


#: Two policy operators, as the maker-checker suite makes them (its fixtures, used here as they are).
maker = test_changes.maker
checker = test_changes.checker


def replaced(old: str = OLD, new: str = NEW, reason: str = "replaced after loss") -> list[CardsEntry]:
    c = CardCorrection(old, new, ("expires",), reason)
    return [CardsEntry("+", "correction", old, correction=c)]


def notice(nid: str = "TOPUP-1", fen: int | None = 20000, **kw: str) -> list[CardsEntry]:
    n = CardNotice(nid, OTHER, kw.get("type", "topup"), fen, "200 yuan from the district subsidy",
                   kw.get("valid_from", "2026-12-01"), kw.get("valid_to", "2027-01-31"))  # fmt: skip
    return [CardsEntry("+", "notice", nid, notice=n)]


def _state(store: Store) -> tuple:
    def read(c: sqlite3.Connection) -> tuple:
        return tuple(
            c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("card_corrections", "card_notices", "bundles", "change_requests", "audit_log")
        )

    return store.read(read)


def _publish(store: Store, policy: Policy, maker: Operator, checker: Operator, entries: list[CardsEntry],
             action: str, signers: list) -> object:  # fmt: skip
    change, published = changes.propose_cards(store, policy, maker, entries, action=action, area=AREA)
    assert published is None and change["status"] == "pending" and change["kind"] == "cards"
    _, published = changes.approve(store, policy, checker, change["id"], change["digest"], signers, "checked")
    assert published is not None
    return published


def test_the_cards_tables_come_from_migration_17(store: Store) -> None:
    def read(c: sqlite3.Connection) -> tuple:
        name = c.execute("SELECT name FROM _migrations WHERE version = 17").fetchone()
        return name, c.execute("SELECT count(*) FROM card_corrections").fetchone()

    name, held = store.read(read)
    assert tuple(name) == ("_m017_card_notices",) and tuple(held) == (0,)


def test_a_correction_is_proposed_approved_by_another_and_fetched_by_a_tuf_client(
    server: Server, store: Store, policy: Policy, signers, maker, checker, tmp_path
) -> None:
    change, published = changes.propose_cards(store, policy, maker, replaced(), action="cards.correct",
                                              area=AREA, why="card office letter 12")  # fmt: skip
    assert published is None and f"+ correction {OLD}: replaced by {NEW}" in changes.describe(change)
    assert policy.cards_list(AREA) == {"corrections": [], "notices": []}  # nothing reaches agents yet
    before = _state(store)
    with pytest.raises(SelfApproval):
        changes.approve(store, policy, maker, change["id"], change["digest"], signers)
    assert _state(store) == before

    done, published = changes.approve(store, policy, checker, change["id"], change["digest"], signers, "ok")
    assert published is not None and (published.kind, published.seq, published.full) == ("cards", 1, True)
    assert done["status"] == "published" and done["bundle_seq"] == 1
    (held,) = policy.cards_list(AREA)["corrections"]
    assert (held["card_sn"], held["new_card_sn"], held["fields"], held["added_seq"]) == (
        OLD,
        NEW,
        ["expires"],
        1,
    )

    client = tuf_client(server.url, policy.repo.root_md(1).to_bytes(), tmp_path / "client")
    client.refresh()
    info = client.get_targetinfo(published.target)
    assert info is not None and info.custom["kind"] == "cards" and info.custom["base_seq"] is None
    with open(client.download_target(info), "rb") as f:
        header, entries = iter_cards(f)
        assert (header.kind, header.area, header.seq) == ("cards", AREA, 1)
        assert list(entries) == replaced()
    audit = {r["action"]: r for r in policy.audit_log(20)}
    assert audit["change.propose"]["operator"] == "maker"
    assert (
        audit["cards.correct"]["operator"] == "maker"
        and "approved by checker" in audit["cards.correct"]["reason"]
    )
    assert audit["cards.correct"]["kind"] == "cards" and audit["cards.correct"]["seq"] == 1
    assert audit["change.approve"]["operator"] == "checker"


def test_notices_and_withdrawals_travel_as_deltas_then_a_snapshot(
    store: Store, policy: Policy, signers, maker, checker
) -> None:
    first = _publish(store, policy, maker, checker, replaced(), "cards.correct", signers)
    second = _publish(store, policy, maker, checker, notice(), "cards.notify", signers)
    withdraw = [CardsEntry("-", "correction", OLD)]
    third = _publish(store, policy, maker, checker, withdraw, "cards.withdraw", signers)
    shapes = [(p.seq, p.base_seq) for p in (first, second, third)]  # type: ignore[attr-defined]
    # the list is tiny, so each change exceeds a quarter of the last full: every bundle is a snapshot,
    # which holds only what the area holds now
    assert shapes == [(1, None), (2, None), (3, None)]
    held = policy.cards_list(AREA)
    assert held["corrections"] == [] and [n["id"] for n in held["notices"]] == ["TOPUP-1"]
    assert held["notices"][0]["amount_fen"] == 20000

    # with a larger area list, a change is a delta on the previous bundle
    many = [e for i in range(10) for e in notice(f"N{i}")]
    _publish(store, policy, maker, checker, many, "cards.notify", signers)
    fourth = _publish(
        store, policy, maker, checker, [CardsEntry("-", "notice", "N3")], "cards.withdraw", signers
    )
    assert (fourth.seq, fourth.base_seq) == (5, 4)  # type: ignore[attr-defined]
    path = policy.repo.targets_dir / policy.bundles(AREA, "cards")[-1]["path"]
    with open(path, "rb") as f:
        header, entries = iter_cards(f)
        assert header.base_seq == 4 and [(e.op, e.key) for e in entries] == [("-", "N3")]


def test_bad_input_and_unknown_withdrawals_change_nothing(
    store: Store, policy: Policy, signers, maker
) -> None:
    before = _state(store)  # change_requests and audit_log included
    with pytest.raises(DocumentInvalid, match="--valid-to: before valid_from"):
        changes.propose_cards(store, policy, maker, notice(valid_from="2026-12-31", valid_to="2026-12-01"),
                              action="cards.notify", area=AREA)  # fmt: skip
    with pytest.raises(DocumentInvalid, match="--amount: a topup needs an amount in integer fen"):
        changes.propose_cards(store, policy, maker, notice(fen=None), action="cards.notify", area=AREA)
    with pytest.raises(DocumentInvalid, match="--field: name the outdated fields"):
        bare = CardCorrection(OLD, "", (), "x")
        changes.propose_cards(store, policy, maker, [CardsEntry("+", "correction", OLD, correction=bare)],
                              action="cards.correct", area=AREA)  # fmt: skip
    with pytest.raises(CardEntryUnknown, match="holds no notice NOPE"):
        withdraw = [CardsEntry("-", "notice", "NOPE")]
        changes.propose_cards(store, policy, maker, withdraw, action="cards.withdraw",
                              area=AREA)  # fmt: skip
    for text in ("12.345", "-1", "ten", "1e3"):
        with pytest.raises(DocumentInvalid, match="--amount"):
            yuan_to_fen(text)
    assert yuan_to_fen("12.50") == 1250 and yuan_to_fen("0") == 0 and yuan_to_fen(None) is None
    assert _state(store) == before


def test_a_change_whose_card_moved_since_the_proposal_is_refused(
    store: Store, policy: Policy, signers, maker, checker
) -> None:
    stale, _ = changes.propose_cards(store, policy, maker, replaced(reason="first letter"),
                                     action="cards.correct", area=AREA)  # fmt: skip
    _publish(
        store, policy, maker, checker, replaced(new=OTHER, reason="second letter"), "cards.correct", signers
    )
    before = _state(store)
    with pytest.raises(ChangeBaseMoved):
        changes.approve(store, policy, checker, stale["id"], stale["digest"], signers)
    assert _state(store) == before
    assert policy.cards_list(AREA)["corrections"][0]["new_card_sn"] == OTHER


def test_the_cli_proposes_corrections_notices_and_withdrawals(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _cli(home, "init", "--area", AREA)
    assert init.returncode == 0, init.stderr
    (line,) = [x for x in init.stdout.splitlines() if x.startswith("operator token of the first admin")]
    admin = line.rsplit(": ", 1)[1]
    maker = _cli(home, "operators", "add", "maker", "--role", "policy", token=admin).stdout.strip()
    checker = _cli(home, "operators", "add", "checker", "--role", "policy", token=admin).stdout.strip()
    correct = ("cards", "correct", "--card-sn", OLD, "--new-card-sn", NEW, "--field", "expires",
               "--reason", "replaced after loss")  # fmt: skip

    assert _cli(home, *correct).returncode == 4  # no operator token
    assert _cli(home, *correct, token=admin).returncode == 4  # not a policy operator
    bad_field = _cli(
        home, "cards", "correct", "--card-sn", OLD, "--field", "shoe", "--reason", "x", token=maker
    )
    assert bad_field.returncode == 2 and "invalid choice: 'shoe'" in bad_field.stderr
    bad_amount = _cli(home, "cards", "notify", "--id", "T1", "--card-sn", OTHER, "--type", "topup",
                      "--amount",
                      "1.005", "--text", "t", "--valid-from", "2026-12-01", "--valid-to", "2026-12-31",
                      token=maker)  # fmt: skip
    assert bad_amount.returncode == 1 and "--amount" in bad_amount.stderr
    bad_date = _cli(home, "cards", "notify", "--id", "T1", "--card-sn", OTHER, "--type", "message",
                    "--text", "t",
                    "--valid-from", "2026-12-01", "--valid-to", "soon", token=maker)  # fmt: skip
    assert bad_date.returncode == 1 and "--valid-to: a date like" in bad_date.stderr
    unknown = _cli(home, "cards", "withdraw", "--notice", "T1", token=maker)
    assert unknown.returncode == 1 and "holds no notice T1" in unknown.stderr
    assert _requests(home) == 0

    proposed = _cli(home, *correct, token=maker)
    assert proposed.returncode == 0, proposed.stderr
    assert proposed.stdout.startswith(f"change 1 [pending] cards.correct area {AREA}")
    digest = json.loads(_cli(home, "changes", "show", "1", "--json").stdout)["digest"]
    assert _cli(home, "changes", "approve", "1", "--digest", digest, token=maker).returncode == 1
    assert _cli(home, "cards", "list").stdout == ""
    approved = _cli(home, "changes", "approve", "1", "--digest", digest, token=checker)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{AREA} cards seq 1 (full, 1 entry) published as timestamp v2"

    notify = _cli(home, "cards", "notify", "--id", "T1", "--card-sn", OTHER, "--type", "topup", "--amount",
                  "200.00", "--text", "district subsidy", "--valid-from", "2026-12-01", "--valid-to",
                  "2027-01-31", token=maker)  # fmt: skip
    assert notify.returncode == 0, notify.stderr
    digest = json.loads(_cli(home, "changes", "show", "2", "--json").stdout)["digest"]
    assert _cli(home, "changes", "approve", "2", "--digest", digest, token=checker).returncode == 0
    listed = json.loads(_cli(home, "cards", "list", "--json").stdout)
    assert [c["card_sn"] for c in listed["corrections"]] == [OLD]
    assert [(n["id"], n["amount_fen"], n["type"]) for n in listed["notices"]] == [("T1", 20000, "topup")]
    text = _cli(home, "cards", "list").stdout
    assert f"correction {OLD}: replaced by {NEW}" in text and "topup 200.00 yuan" in text

    withdraw = _cli(home, "cards", "withdraw", "--correction", OLD, token=maker)
    assert withdraw.returncode == 0, withdraw.stderr
    digest = json.loads(_cli(home, "changes", "show", "3", "--json").stdout)["digest"]
    assert _cli(home, "changes", "approve", "3", "--digest", digest, token=checker).returncode == 0
    assert OLD not in _cli(home, "cards", "list").stdout
    audit = _cli(home, "audit", "--json").stdout
    actions = [json.loads(x)["action"] for x in audit.splitlines()]
    assert {"cards.correct", "cards.notify", "cards.withdraw"} <= set(actions)
