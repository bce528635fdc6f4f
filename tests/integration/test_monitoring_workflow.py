"""End to end with real processes, from settlements to a refusal at the desk.

One centre and two hospitals' agents. An operator publishes a frequent-visits rule (the sample's
``mon_frequent_visits``: more than 4 visits in 7 days) as a signed rules bundle. The HIS posts
settlements: person P1 makes 5 visits, 3 at hospital A and 2 at hospital B (neither hospital sees
more than 3); person P2 makes 5 at A; person P3 makes 4 (at the limit, not over it). The agents
upload them; the centre's incremental background screen turns P1's and P2's bursts into one
suspicion each, and a full screen started through the monitoring API finds the same two facts
again without making new ones. Supervisor li then takes P1 through the monitoring API (confirm,
case, evidence note, blacklist the person) and P2 through the CLI (the same steps, blacklisting
P2's card). Each blacklist decision publishes a signed bundle; both agents apply it and refuse the
next settlement of P1 (person) and P2's card with 403 ``blacklisted``, writing nothing, while P3
still settles. An operator of another area sees none of it; the audit log holds every step.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import example_settlement

from .harness import Agent, Central, http, wait_until

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
HOSPITAL_A, HOSPITAL_B = "H37021100001", "H37021200002"
AREA, OTHER_AREA = "370200", "110100"
RULE = "mon_frequent_visits"
P1, P2, P3 = "37020000000000000101", "37020000000000000102", "37020000000000000103"
CARDS = {P1: "A00000101", P2: "A00000102", P3: "A00000103"}


def _rules_file(tmp_path: Path) -> Path:
    """The sample's frequent-visits rule alone: no other rule can flag these settlements."""
    doc = json.loads((SAMPLES / "monitoring_rules.json").read_text())
    (rule,) = [r for r in doc["rules"] if r["id"] == RULE]
    assert rule["params"] == {"max_visits": 4, "days": 7} and rule["moments"] == ["post"]
    assert (rule["med_types"], rule["weight"]) == (["11"], 50)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({**doc, "rules": [rule]}))
    return path


def _body(psn_no: str, hospital: str, his_setl_no: str) -> dict:
    body = example_settlement(his_setl_no)
    body["fixmedins_code"] = hospital
    body["psn"] = {**body["psn"], "psn_no": psn_no, "card_sn": CARDS[psn_no]}
    body["mdtrt"] = {**body["mdtrt"], "mdtrt_id": f"MDT-{his_setl_no}"}
    return body


class Monitor:
    """One operator's bearer token on the centre's ``/v1/monitor`` API."""

    def __init__(self, central: Central, token: str) -> None:
        self.url, self.token = central.url + "/v1/monitor", token

    def get(self, path: str) -> tuple[int, Any]:
        return http("GET", self.url + path, token=self.token)

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        return http("POST", self.url + path, body, self.token)

    def ok(self, method: str, path: str, body: dict | None = None, status: int = 200) -> Any:
        code, answer = self.get(path) if method == "GET" else self.post(path, body or {})
        assert code == status, (method, path, code, answer)
        return answer


def _agent_db_holds(agent: Agent, his_setl_no: str) -> bool:
    with sqlite3.connect(f"file:{agent.home / 'agent.db'}?mode=ro", uri=True) as conn:
        return (
            conn.execute("SELECT 1 FROM settlements WHERE his_setl_no = ?", (his_setl_no,)).fetchone()
            is not None
        )


def test_settlements_screened_into_suspicions_become_blacklists_the_agents_enforce(tmp_path):
    central = Central(tmp_path / "central")
    central.proc.start()
    agents: list[Agent] = []
    try:
        central.cli("rules", "publish", str(_rules_file(tmp_path)), "--area", AREA)  # maker, then checker
        token = central.add_operator("li", "--area", AREA, "--role", "supervisor")
        other = central.add_operator("wang", "--area", OTHER_AREA)
        second = central.add_operator("zhao", "--area", AREA, "--role", "supervisor")
        assert token.startswith("yop_") and other.startswith("yop_")
        li, wang, zhao = Monitor(central, token), Monitor(central, other), Monitor(central, second)
        for hospital in (HOSPITAL_A, HOSPITAL_B):
            agent = Agent(tmp_path / hospital, central.url, hospital, central.enroll_token(hospital))
            agent.proc.start()
            agents.append(agent)
        a, b = agents
        code_of = {a.agent_id: HOSPITAL_A, b.agent_id: HOSPITAL_B}

        # -- the HIS posts real settlements at both hospitals ------------------------------------------
        visits = [(P1, a)] * 3 + [(P1, b)] * 2 + [(P2, a)] * 5 + [(P3, a)] * 4
        setl_ids: dict[str, set[str]] = {P1: set(), P2: set(), P3: set()}
        for n, (psn_no, agent) in enumerate(visits):
            status, answer = agent.settle(_body(psn_no, code_of[agent.agent_id], f"MON-{n}"))
            assert status == 201, answer
            setl_ids[psn_no].add(answer["setl_id"])
        for agent in agents:
            wait_until(agent.drained, timeout=30, what="the agent's outbox reaching the centre")
        assert len(central.settlements()) == len(visits)

        # -- the centre's background screen turns the two bursts into two suspicions ----------------------
        def queue() -> list[dict]:
            return li.ok("GET", "/suspicions?status=all")

        def screened() -> int:
            return sum(r["settlements"] for r in li.ok("GET", "/runs") if r["kind"] == "incremental")

        wait_until(lambda: screened() == len(visits), timeout=30, what="the incremental screen covering all")
        assert {r["kind"] for r in li.ok("GET", "/runs")} == {"incremental"}
        found = queue()
        by_person = {s["psn_no"]: s for s in found}
        assert set(by_person) == {P1, P2}, found  # P3's 4 visits are at the limit, not over it
        for psn_no, s in by_person.items():
            assert (s["rule_id"], s["template"], s["object_type"], s["object_id"]) == (
                RULE, "frequent_visits", "person", psn_no
            )  # fmt: skip
            assert (s["status"], s["area"], s["times_found"]) == ("new", AREA, 1)
            assert s["evidence"][0] == {"value": 5, "threshold": 4, "days": 7}
            assert len(s["evidence"]) == 5  # the 4 other visits, each with its date and hospital
            (setl_id,) = s["setl_ids"]
            assert setl_id in setl_ids[psn_no]
            assert s["amount_fen"] == 5120  # the visit's cost: 51.20 yuan
        s1, s2 = by_person[P1], by_person[P2]
        hospitals_seen = {e["fixmedins_code"] for e in s1["evidence"][1:]} | {s1["fixmedins_code"]}
        assert hospitals_seen == {HOSPITAL_A, HOSPITAL_B}
        assert "visit 5 in 7 days at 2 hospitals" in s1["message"]
        assert "hospitals" not in s2["message"]
        # score: the rule's weight 50 raised by 25 % over the threshold → 62.5 → 63, yellow
        assert [(s["score"], s["severity"]) for s in (s1, s2)] == [(63, "yellow")] * 2

        # -- a full screen through the API finds the same facts again, no new suspicion ---------------
        today = date.today()
        started = li.ok(
            "POST",
            "/screen",
            {"from": (today - timedelta(days=1)).isoformat(), "to": (today + timedelta(days=1)).isoformat()},
            status=202,
        )
        assert started["status"] == "started"

        def full_run() -> dict | None:
            return next((r for r in li.ok("GET", "/runs") if r["kind"] == "full" and r["finished_at"]), None)

        full = wait_until(full_run, timeout=30, what="the full screen")
        assert (full["settlements"], full["new_suspicions"]) == (len(visits), 0)
        again = {s["psn_no"]: s for s in queue()}
        assert set(again) == {P1, P2}
        assert [again[p]["id"] for p in (P1, P2)] == [s1["id"], s2["id"]]
        assert [again[p]["times_found"] for p in (P1, P2)] == [2, 2]

        # -- another area's operator sees nothing ------------------------------------------------------
        assert wang.ok("GET", "/suspicions?status=all") == []
        assert wang.get(f"/suspicions/{s1['id']}")[0] == 404
        assert central.cli_as(other, "suspicions", "list", "--json").strip() == ""

        # -- P1 through the monitoring API ------------------------------------------------------------
        shown = li.ok("GET", f"/suspicions/{s1['id']}")
        assert shown["reviews"] == [] and shown["status"] == "new"
        reviewed = li.ok(
            "POST",
            f"/suspicions/{s1['id']}/review",
            {"outcome": "confirm", "reason": "five visits at two hospitals, one prescription each"},
        )
        assert reviewed["status"] == "confirmed" and reviewed["review"]["outcome"] == "confirm"
        code, answer = li.post(
            f"/suspicions/{s1['id']}/review", {"outcome": "dismiss", "reason": "changed mind"}
        )
        assert (code, answer["error"]["code"]) == (409, "workflow_state")  # reviewed once
        assert [s["id"] for s in li.ok("GET", "/suspicions")] == [s2["id"]]  # the queue: P2 still new
        case = li.ok("POST", "/cases", {"suspicions": [s1["id"]], "title": "card lending"}, status=201)
        assert (case["area"], case["status"]) == (AREA, "open")
        assert li.ok("GET", f"/suspicions/{s1['id']}")["status"] == "in_case"
        li.ok("POST", f"/cases/{case['id']}/notes", {"text": "pharmacy confirms", "kind": "evidence",
                                                    "detail": {"visits": 5}}, status=201)  # fmt: skip
        blacklist_p1 = {"kind": "blacklist", "target_type": "person", "target_id": P1,
                        "reason": "insurance card lent to others"}  # fmt: skip
        code, answer = li.post(f"/cases/{case['id']}/decisions", blacklist_p1)
        assert (code, answer["error"]["code"]) == (403, "self_approval_forbidden")  # li confirmed it
        d1 = zhao.ok("POST", f"/cases/{case['id']}/decisions", blacklist_p1, status=201)  # a second person
        assert (d1["status"], d1["bundle_area"]) == ("effective", AREA) and d1["bundle_seq"] >= 1
        shown = li.ok("GET", f"/cases/{case['id']}")
        assert shown["status"] == "decided" and [s["status"] for s in shown["suspicions"]] == ["decided"]
        assert "evidence" in [n["kind"] for n in shown["notes"]]
        assert [d["id"] for d in shown["decisions"]] == [d1["id"]]

        # -- P2 through the CLI: the card is blacklisted --------------------------------------------------
        listed = [
            json.loads(x)
            for x in central.cli_as(token, "suspicions", "list", "--json").splitlines()
        ]
        assert [s["id"] for s in listed] == [s2["id"]]
        central.cli_as(token, "suspicions", "review", str(s2["id"]), "confirm", "--reason",
                       "five visits in a day")  # fmt: skip
        case2 = json.loads(central.cli_as(token, "cases", "open", str(s2["id"]), "--title", "card shared",
                                          "--json"))  # fmt: skip
        assert (case2["area"], case2["status"]) == (AREA, "open")
        central.cli_as(token, "cases", "note", str(case2["id"]), "family member used it", "--evidence")
        d2 = json.loads(central.cli_as(
            second, "decisions", "make", str(case2["id"]), "--kind", "blacklist", "--target-type", "card",
            "--target-id", CARDS[P2], "--reason", "card used by a family member", "--json",
        ))  # fmt: skip
        assert (d2["status"], d2["bundle_area"]) == ("effective", AREA)
        assert d2["bundle_seq"] > d1["bundle_seq"]  # a second signed bundle
        shown = json.loads(central.cli_as(token, "cases", "show", str(case2["id"]), "--json"))
        assert shown["status"] == "decided" and [s["status"] for s in shown["suspicions"]] == ["decided"]
        quality = {(q["rule_id"], q["rule_version"]): q for q in li.ok("GET", "/rules/quality")}
        q = quality[(RULE, 1)]
        assert (q["found"], q["reviewed"], q["confirmed"], q["pending"]) == (2, 2, 2, 0)

        # -- both agents apply the signed bundle and refuse at the desk -----------------------------------
        for agent in agents:
            wait_until(
                lambda agent=agent: agent.status()["policy"]["bundles"].get("blacklist", {}).get("seq", 0)
                >= d2["bundle_seq"],
                timeout=30, what="the agent applying the blacklist bundle",
            )  # fmt: skip
        refusals = [(a, P1, "person", "insurance card lent to others"),
                    (b, P1, "person", "insurance card lent to others"),  # the other hospital too
                    (a, P2, "card", "card used by a family member")]  # fmt: skip
        for n, (agent, psn_no, list_type, reason) in enumerate(refusals):
            before = agent.status()["outbox"]["last_seq"]
            his_setl_no = f"MON-REFUSED-{n}"
            status, answer = agent.settle(_body(psn_no, code_of[agent.agent_id], his_setl_no))
            err = answer["error"]
            assert (status, err["code"], err["list_type"]) == (403, "blacklisted", list_type), answer
            assert err["reason"] == reason
            assert err["list_version"] == d2["bundle_seq"]
            assert psn_no not in err["message"] and CARDS[psn_no] not in err["message"]
            # no settlement written; a refusal for the card itself is chained as the card's event
            assert agent.status()["outbox"]["last_seq"] == before + (list_type == "card")
            assert not _agent_db_holds(agent, his_setl_no)
        assert _agent_db_holds(a, "MON-0") and _agent_db_holds(b, "MON-3")  # the check can see a settlement
        before = a.status()["outbox"]["last_seq"]
        status, answer = a.settle(_body(P3, HOSPITAL_A, "MON-P3-AFTER"))
        assert status == 201, answer  # the lists name P1 and P2's card, nobody else
        assert a.status()["outbox"]["last_seq"] == before + 1
        wait_until(a.drained, timeout=30, what="P3's settlement reaching the centre")
        held = central.settlements()
        assert len(held) == len(visits) + 1 and answer["setl_id"] in {s["setl_id"] for s in held}

        # -- the audit log tells the story -------------------------------------------------------------
        audit = [json.loads(x) for x in central.cli("audit", "--json", "--limit", "50").splitlines()]
        mine = [r["action"] for r in audit if r["operator"] == "li"]
        for action in ("suspicion.confirm", "case.open", "case.evidence"):
            assert mine.count(action) == 2, (action, mine)
        theirs = [r["action"] for r in audit if r["operator"] == "zhao"]  # the second person decided both
        for action in ("decision.make", "blacklist.add", "decision.publish"):
            assert theirs.count(action) == 2, (action, theirs)
        for row in audit:
            if row["action"] == "decision.make":
                assert P1 not in json.dumps(row) and CARDS[P2] not in json.dumps(row)
        assert "rules.publish" in [r["action"] for r in audit if r["operator"] == "maker"]
        assert "change.approve" in [r["action"] for r in audit if r["operator"] == "checker"]
    finally:
        for agent in agents:
            agent.proc.stop()
        central.proc.stop()
