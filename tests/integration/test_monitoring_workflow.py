"""End to end with real processes: a suspicion about a person who settled at a hospital is reviewed,
gathered into a case and decided as a blacklist entry through the CLI; the agent then refuses that
person's next settlement with 403 ``blacklisted``."""

from __future__ import annotations

import json

from central.store import Store
from central.suspicions import Finding, record_findings
from protocol.rules import Hit
from tests.conftest import example_settlement

from .harness import Agent, Central, wait_until

HOSPITAL = "H37021100001"
AREA = "370200"


def _finding(psn_no: str, setl_id: str, amount_fen: int) -> Finding:
    hit = Hit(
        rule_id="FREQ-VISITS", rule_version=1, template="frequent_visits", severity="warn", mode="enforce",
        action="prompt", overridable=True, message="This is visit 9 in 30 days; the limit is 4.", lines=(),
        evidence=({"value": 9, "threshold": 4, "days": 30},), psn_no=psn_no, setl_id=setl_id,
    )  # fmt: skip
    return Finding(hit=hit, object_type="person", object_id=psn_no, area=AREA, fixmedins_code=HOSPITAL,
                   setl_ids=(setl_id,), amount_fen=amount_fen, weight=60)  # fmt: skip


def test_a_confirmed_suspicion_becomes_a_blacklist_the_agent_enforces(tmp_path):
    central = Central(tmp_path / "central")
    central.proc.start()
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
    agent.proc.start()
    try:
        body = example_settlement("MON-0")
        psn_no = body["psn"]["psn_no"] if "psn" in body else body["psn_no"]
        status, answer = agent.settle(body)
        assert status == 201, answer
        held = wait_until(lambda: central.settlements(), timeout=30, what="the settlement at the centre")
        (row,) = held
        setl_id = row["setl_id"]

        # the screening engine's hand-off: findings recorded in a write transaction of the centre's db
        with Store(central.home / "central.db") as store:
            found = [_finding(psn_no, setl_id, 5120)]
            counts = store.write(
                lambda c: record_findings(c, found, run_id=None, at="2026-11-24T10:00:00+00:00")
            )
        assert counts == {"new": 1, "again": 0}

        token = central.cli("operators", "add", "li", "--area", AREA, "--role", "supervisor").strip()
        assert token.startswith("yop_")
        central.cli("operators", "add", "wang", "--area", "110100")
        assert central.cli("suspicions", "list", "--operator", "wang", "--json").strip() == ""
        queue = [
            json.loads(x)
            for x in central.cli("suspicions", "list", "--operator", "li", "--json").splitlines()
        ]
        assert [(s["rule_id"], s["severity"], s["setl_ids"]) for s in queue] == [
            ("FREQ-VISITS", "red", [setl_id])
        ]
        sid = str(queue[0]["id"])
        central.cli("suspicions", "review", sid, "confirm", "--reason", "nine visits, one prescription each",
                    "--operator", "li")  # fmt: skip
        case = json.loads(
            central.cli("cases", "open", sid, "--title", "card lending", "--operator", "li", "--json")
        )
        assert case["area"] == AREA and case["status"] == "open"
        central.cli("cases", "note", str(case["id"]), "pharmacy confirms", "--evidence", "--operator", "li")
        decision = json.loads(central.cli(
            "decisions", "make", str(case["id"]), "--kind", "blacklist", "--target-type", "person",
            "--target-id", psn_no, "--reason", "insurance card lent to others", "--operator", "li", "--json",
        ))  # fmt: skip
        assert decision["status"] == "effective" and decision["bundle_area"] == AREA

        attempt = iter(range(1, 10_000))

        def refused() -> dict | None:
            code, answer = agent.settle(example_settlement(f"MON-{next(attempt)}"))
            return answer if code == 403 else None

        answer = wait_until(refused, timeout=30, what="the agent refusing the blacklisted person")
        err = answer["error"]
        assert (err["code"], err["list_type"], err["reason"]) == (
            "blacklisted",
            "person",
            "insurance card lent to others",
        )
        assert psn_no not in err["message"]

        # the audit log tells the story, and the case shows the decision
        actions = [
            json.loads(x)["action"] for x in central.cli("audit", "--json", "--limit", "20").splitlines()
        ]
        for action in ("suspicion.confirm", "case.open", "case.evidence", "decision.make", "blacklist.add",
                       "decision.publish"):  # fmt: skip
            assert action in actions
        shown = json.loads(central.cli("cases", "show", str(case["id"]), "--operator", "li", "--json"))
        assert shown["status"] == "decided" and [s["status"] for s in shown["suspicions"]] == ["decided"]
    finally:
        agent.proc.stop()
        central.proc.stop()
