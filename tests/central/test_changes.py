"""Maker-checker on a real home: change requests proposed, approved by a second operator, published
through the signed TUF path (a real client fetches them), and every refusal changing nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from central.config import CentralConfig
from central.errors import (
    ChangeBaseMoved,
    ChangeDigestMismatch,
    ChangeState,
    DocumentInvalid,
    RoleForbidden,
    SelfApproval,
)
from central.monitoring.review import make_decision, open_case, review_suspicion
from central.operators import Operator, add_operator
from central.policy import changes
from central.policy.bundles import Policy
from central.policy.tuf_repo import TufRepository
from central.storage.store import Store
from protocol.bundles import iter_blacklist

from .conftest import ACTOR, AREA, HOSPITAL, Server, tuf_client
from .monitor_helpers import finding, hit, suspect

BIN = Path(sys.executable).parent / "yibao-central"
SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


def _op(store: Store, name: str, role: str = "policy", area: str | None = None) -> Operator:
    return add_operator(store, ACTOR, name, area=area, role=role)[0]


@pytest.fixture
def maker(store: Store) -> Operator:
    return _op(store, "maker")


@pytest.fixture
def checker(store: Store) -> Operator:
    return _op(store, "checker")


def _state(store: Store) -> tuple:
    """What a refused approval must leave as it was."""

    def read(c: sqlite3.Connection) -> tuple:
        return tuple(
            c.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
            for t in ("blacklist", "bundles", "change_requests", "change_approvals", "audit_log")
        )

    return store.read(read)


def test_the_maker_proposes_a_second_operator_publishes(
    server: Server, store: Store, policy: Policy, signers, maker, checker, tmp_path
) -> None:
    change, published = changes.propose_blacklist_add(
        store, policy, maker, list_type="card", entry_id="C0001", reason="reported lost", area=AREA,
        source="hotline", why="the holder called",
    )  # fmt: skip
    assert published is None and change["status"] == "pending" and len(change["digest"]) == 64
    assert policy.blacklist_list(AREA) == [] and policy.bundles() == []  # nothing reaches agents yet
    before = _state(store)
    with pytest.raises(SelfApproval, match="another policy operator"):
        changes.approve(store, policy, maker, change["id"], change["digest"], signers)
    assert _state(store) == before

    done, published = changes.approve(store, policy, checker, change["id"], change["digest"], signers, "ok")
    assert published is not None and (published.area, published.kind, published.seq) == (AREA, "blacklist", 1)
    assert done["status"] == "published" and done["decided_by"] == "checker" and done["bundle_seq"] == 1
    assert [a["operator"] for a in done["approvals"]] == ["checker"]
    assert [(e["id"], e["reason"], e["source"]) for e in policy.blacklist_list(AREA)] == [
        ("C0001", "reported lost", "hotline")
    ]
    # the agents' TUF client verifies and fetches exactly what was proposed
    client = tuf_client(server.url, policy.repo.root_md(1).to_bytes(), tmp_path / "client")
    client.refresh()
    info = client.get_targetinfo(published.target)
    assert info is not None
    with open(client.download_target(info), "rb") as f:
        header, entries = iter_blacklist(f)
        assert header.seq == 1
        assert [(e.op, e.id, e.reason) for e in entries] == [("+", "C0001", "reported lost")]
    audit = {r["action"]: r for r in policy.audit_log(20)}
    assert audit["change.propose"]["operator"] == "maker"
    published_by = audit["blacklist.add"]
    assert published_by["operator"] == "maker" and "approved by checker" in published_by["reason"]
    assert audit["change.approve"]["operator"] == "checker"
    with pytest.raises(ChangeState, match="published"):  # once
        changes.approve(store, policy, _op(store, "third"), change["id"], change["digest"], signers)


def test_a_rejected_change_is_never_published(store: Store, policy: Policy, signers, maker, checker) -> None:
    change, _ = changes.propose_document(store, policy, maker, "rules", SAMPLES / "rules.json")
    rejected = changes.reject(store, checker, change["id"], "threshold too low")
    assert (rejected["status"], rejected["decided_by"]) == ("rejected", "checker")
    with pytest.raises(ChangeState, match="rejected"):
        changes.approve(store, policy, checker, change["id"], change["digest"], signers)
    with pytest.raises(ChangeState):
        changes.reject(store, maker, change["id"], "again")
    assert policy.bundles() == []
    assert "change.reject" in [r["action"] for r in policy.audit_log(10)]


def test_a_digest_other_than_the_requests_is_refused(
    store: Store, policy: Policy, signers, maker, checker
) -> None:
    change, _ = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                              reason="lost", area=AREA)  # fmt: skip
    before = _state(store)
    with pytest.raises(ChangeDigestMismatch, match=change["digest"]):
        changes.approve(store, policy, checker, change["id"], "0" * 64, signers)
    assert _state(store) == before


def test_a_change_whose_base_moved_is_refused(store: Store, policy: Policy, signers, maker, checker) -> None:
    first, _ = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                             reason="lost", area=AREA)  # fmt: skip
    second, _ = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                              reason="stolen", area=AREA)  # fmt: skip
    changes.approve(store, policy, checker, second["id"], second["digest"], signers)
    before = _state(store)
    with pytest.raises(ChangeBaseMoved):  # the entry it was proposed against was replaced since
        changes.approve(store, policy, checker, first["id"], first["digest"], signers)
    assert _state(store) == before
    assert [e["reason"] for e in policy.blacklist_list(AREA)] == ["stolen"]
    # documents: a newer document of the kind and area published since
    old, _ = changes.propose_document(store, policy, maker, "policy", SAMPLES / "policy.json")
    new, _ = changes.propose_document(store, policy, maker, "policy", SAMPLES / "policy.json")
    changes.approve(store, policy, checker, new["id"], new["digest"], signers)
    with pytest.raises(ChangeBaseMoved):
        changes.approve(store, policy, checker, old["id"], old["digest"], signers)
    assert [b["seq"] for b in policy.bundles("370200", "policy")] == [1]


def test_remove_and_import_go_through_changes(
    store: Store, policy: Policy, signers, maker, checker, tmp_path
) -> None:
    with pytest.raises(DocumentInvalid, match="holds no card"):  # refused at once, nothing recorded
        changes.propose_blacklist_remove(store, policy, maker, list_type="card", entry_id="C9", area=AREA)
    assert store.read(lambda c: c.execute("SELECT count(*) FROM change_requests").fetchone()[0]) == 0
    csv = tmp_path / "list.csv"
    csv.write_text("list_type,id,reason,source,effective_at\n"
                   "card,C1,lost,hotline,\nperson,P1,fraud,case 7,\n")  # fmt: skip
    imp, _ = changes.propose_blacklist_import(store, policy, maker, csv, area=AREA)
    shown = store.read(lambda c: changes.get_change(c, imp["id"]))
    assert shown["entries"] == 2 and [e["id"] for e in shown["entries_shown"]] == ["C1", "P1"]
    changes.approve(store, policy, checker, imp["id"], imp["digest"], signers)
    assert sorted(e["id"] for e in policy.blacklist_list(AREA)) == ["C1", "P1"]
    rm, _ = changes.propose_blacklist_remove(store, policy, maker, list_type="card", entry_id="C1", area=AREA)
    _, published = changes.approve(store, policy, checker, rm["id"], rm["digest"], signers)
    assert published is not None and published.seq == 2
    assert [e["id"] for e in policy.blacklist_list(AREA)] == ["P1"]


def test_only_policy_operators_propose_and_approve(store: Store, policy: Policy, signers, maker) -> None:
    reviewer = _op(store, "rev", role="reviewer,supervisor", area=AREA)
    admin = _op(store, "root", role="admin")
    for who in (reviewer, admin):
        with pytest.raises(RoleForbidden, match="policy"):
            changes.propose_blacklist_add(store, policy, who, list_type="card", entry_id="C1", reason="x",
                                          area=AREA)  # fmt: skip
    change, _ = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                              reason="x", area=AREA)  # fmt: skip
    before = _state(store)
    for who in (reviewer, admin):
        with pytest.raises(RoleForbidden):
            changes.approve(store, policy, who, change["id"], change["digest"], signers)
    assert _state(store) == before


def test_more_approvals_when_configured(store: Store, config: CentralConfig, signers, maker, checker) -> None:
    policy = Policy(store, TufRepository.open(config), dataclasses.replace(config, approvals_required=3))
    change, _ = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                              reason="x", area=AREA)  # fmt: skip
    done, published = changes.approve(store, policy, checker, change["id"], change["digest"], signers)
    assert published is None and done["status"] == "pending" and len(done["approvals"]) == 1
    with pytest.raises(ChangeState, match="already"):
        changes.approve(store, policy, checker, change["id"], change["digest"], signers)
    done, published = changes.approve(store, policy, _op(store, "third"), change["id"], change["digest"],
                                      signers)  # fmt: skip
    assert published is not None and done["status"] == "published" and len(done["approvals"]) == 2


def test_one_approval_required_publishes_at_the_makers_word(
    store: Store, config: CentralConfig, signers, maker
) -> None:
    policy = Policy(store, TufRepository.open(config), dataclasses.replace(config, approvals_required=1))
    change, published = changes.propose_blacklist_add(store, policy, maker, list_type="card", entry_id="C1",
                                                      reason="x", area=AREA, signers=signers)  # fmt: skip
    assert published is not None and published.seq == 1
    assert (change["status"], change["decided_by"]) == ("published", "maker")


def test_a_blacklist_decision_needs_a_second_person(store: Store, policy: Policy, signers) -> None:
    first = _op(store, "sup1", role="supervisor", area=AREA)
    second = _op(store, "sup2", role="supervisor", area=AREA)
    (s,) = suspect(store, finding(hit("R-CARD")))
    review_suspicion(store, first, s, "confirm", "the card was used twice at once")
    case = open_case(store, first, [s], "card shared")
    kw = {"kind": "blacklist", "target_type": "card", "target_id": "CARD01", "reason": "shared card",
          "policy": policy, "signers": signers}  # fmt: skip
    with pytest.raises(SelfApproval, match="another supervisor"):
        make_decision(store, first, case["id"], **kw)
    assert policy.blacklist_list(AREA) == []
    with pytest.raises(SelfApproval):
        make_decision(store, first, case["id"], **{**kw, "kind": "suspension", "target_type": "doctor",
                                                    "target_id": "D1", "until": "2099-01-01"})  # fmt: skip
    warning = make_decision(store, first, case["id"], kind="warning", target_type="hospital",
                            target_id=HOSPITAL, reason="a warning is not enforced by agents")  # fmt: skip
    assert warning["status"] == "effective"
    decided = make_decision(store, second, case["id"], **kw)
    assert decided["status"] == "effective" and [e["id"] for e in policy.blacklist_list(AREA)] == ["CARD01"]


# -- the CLI, end to end through subprocesses ----------------------------------------------------------


def _cli(home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "YIBAO_OPERATOR_TOKEN"}
    if token is not None:
        env["YIBAO_OPERATOR_TOKEN"] = token
    return subprocess.run([str(BIN), "--home", str(home), *args], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip


def _requests(home: Path) -> int:
    with sqlite3.connect(home / "central.db") as c:
        return c.execute("SELECT count(*) FROM change_requests").fetchone()[0]


def test_the_cli_proposes_and_another_operator_approves(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _cli(home, "init", "--area", AREA)
    assert init.returncode == 0, init.stderr
    (line,) = [x for x in init.stdout.splitlines() if x.startswith("operator token of the first admin")]
    admin = line.rsplit(": ", 1)[1]
    assert admin.startswith("yop_") and "shown once" in init.stderr
    assert "first administrator" not in _cli(home, "init").stdout  # only while the centre has no operator
    maker = _cli(home, "operators", "add", "maker", "--role", "policy", token=admin).stdout.strip()
    checker = _cli(home, "operators", "add", "checker", "--role", "policy", token=admin).stdout.strip()
    add = ("blacklist", "add", "--type", "card", "--id", "C0001", "--reason", "reported lost")

    no_token = _cli(home, *add)
    assert no_token.returncode == 4 and "YIBAO_OPERATOR_TOKEN" in no_token.stderr
    unknown = _cli(home, *add, token="yop_not-a-token")
    assert unknown.returncode == 4 and "not valid" in unknown.stderr
    wrong_role = _cli(home, *add, token=admin)
    assert wrong_role.returncode == 4 and "only a policy operator" in wrong_role.stderr
    not_admin = _cli(home, "operators", "add", "x", "--role", "policy", token=maker)
    assert not_admin.returncode == 4
    assert _requests(home) == 0

    proposed = _cli(home, *add, token=maker)
    assert proposed.returncode == 0, proposed.stderr
    assert proposed.stdout.startswith("change 1 [pending] blacklist.add area " + AREA)
    assert "changes approve 1 --digest" in proposed.stderr
    digest = json.loads(_cli(home, "changes", "show", "1", "--json").stdout)["digest"]
    assert digest in proposed.stdout
    own = _cli(home, "changes", "approve", "1", "--digest", digest, token=maker)
    assert own.returncode == 1 and "may not approve" in own.stderr
    assert _cli(home, "blacklist", "list").stdout == ""

    approved = _cli(home, "changes", "approve", "1", "--digest", digest, token=checker)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == f"{AREA} blacklist seq 1 (full, 1 entry) published as timestamp v2"
    assert "C0001" in _cli(home, "blacklist", "list").stdout

    # a disabled operator's token stops working at once
    assert _cli(home, "operators", "disable", "checker", token=admin).returncode == 0
    again = _cli(home, "blacklist", "remove", "--type", "card", "--id", "C0001", token=checker)
    assert again.returncode == 4 and "disabled" in again.stderr
    assert _requests(home) == 1

    # approvals_required = 1 in the home's settings file: published at once, and said so
    (home / "central.json").write_text(json.dumps({"approvals_required": 1}))
    alone = _cli(home, "blacklist", "remove", "--type", "card", "--id", "C0001", token=maker)
    assert alone.returncode == 0, alone.stderr
    assert "blacklist seq 2" in alone.stdout and "maker-checker is off" in alone.stderr
    assert _cli(home, "blacklist", "list").stdout == ""
