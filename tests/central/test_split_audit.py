"""The centre recomputes each settlement's split with the policy it published and flags differences."""

from __future__ import annotations

import json
from pathlib import Path

from central.intake.ingest import Ingestor
from central.monitoring.split_audit import audit_splits
from protocol.benefit import BillLine, SplitInput, YearToDate, compute_split, load_policy

from .conftest import ACTOR, AREA, enrol, settlement

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


def _with_split(rec, policy, ytd=None):
    lines = tuple(BillLine(x.feedetl_sn, x.det_item_fee_sumamt, None) for x in rec.feedetl)
    bill = SplitInput(insutype="310", psn_type="11", hosp_lv="0", med_type=rec.mdtrt.med_type, lines=lines)
    split = compute_split(policy, bill, ytd or YearToDate(0, 0, 0, 0, 0), year=int(rec.setl_time[:4]))
    for name, value in split.amounts().items():
        setattr(rec, name, value)
    return rec


def test_a_split_that_differs_from_the_recomputation_is_flagged_once(store, repo, signers, policy):
    doc = json.loads((SAMPLES / "policy.json").read_text()) | {"area": AREA}
    policy.publish_document(ACTOR, signers, "policy", doc)
    benefits = load_policy(doc)
    chain = enrol(store)
    good = _with_split(settlement("S-GOOD", split=None), benefits)
    bad = _with_split(settlement("S-BAD", split=None, psn_no="P0000000002"), benefits)
    bad.fund_pay_sumamt, bad.hifp_pay, bad.psn_cash_pay = (
        bad.fund_pay_sumamt + 100,
        bad.hifp_pay + 100,
        bad.psn_cash_pay - 100,
    )  # fmt: skip  (still adds up: only the recomputation can tell)
    chain.append(good)
    chain.append(bad)
    assert not Ingestor(store).ingest(chain.batch(1, 2)).rejected
    counts = audit_splits(store, repo)
    assert counts == {"checked": 2, "flagged": 1, "skipped": 0}
    flags = store.read(lambda c: c.execute("SELECT setl_id, differences FROM split_flags").fetchall())
    assert [f[0] for f in flags] == ["S-BAD"]
    assert {d["field"] for d in json.loads(flags[0][1])} >= {"fund_pay_sumamt", "hifp_pay"}
    assert audit_splits(store, repo) == {"checked": 0, "flagged": 0, "skipped": 0}  # each audited once


def test_the_cli_checks_and_lists(config, store, repo, signers, policy, capsys):
    from central.cli import main

    doc = json.loads((SAMPLES / "policy.json").read_text()) | {"area": AREA}
    policy.publish_document(ACTOR, signers, "policy", doc)
    chain = enrol(store)
    bad = _with_split(settlement("S-CLI", split=None), load_policy(doc))
    bad.hifp_pay, bad.fund_pay_sumamt, bad.psn_cash_pay = (
        bad.hifp_pay + 1,
        bad.fund_pay_sumamt + 1,
        bad.psn_cash_pay - 1,
    )
    chain.append(bad)
    Ingestor(store).ingest(chain.batch(1, 1))
    assert main(["--home", str(config.home), "splits", "check"]) == 0
    assert "checked 1, flagged 1" in capsys.readouterr().out
    assert main(["--home", str(config.home), "splits", "list"]) == 0
    assert "S-CLI" in capsys.readouterr().out
