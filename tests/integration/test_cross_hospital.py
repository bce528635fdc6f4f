"""End to end: a drug dispensed at hospital A shows up in the doctor's prompt at hospital B.

Real processes: one centre, two agents. The operator publishes the sample rules and catalogue
(signed bundles); hospital A settles omeprazole for 14 days; hospital B's doctor proposes the
same drug and is warned, with the evidence naming hospital A and the date."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import example_settlement

from .harness import Agent, Central, http, wait_until

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
OMEPRAZOLE = "XA02BCA211A010010102134"
HOSPITAL_A, HOSPITAL_B = "H37021100001", "H37021200002"


def test_a_duplicate_from_another_hospital_is_prompted(tmp_path):
    central = Central(tmp_path / "central")
    central.proc.start()
    agents = []
    try:
        for kind, verb in (("rules", "publish"), ("catalogue", "import")):
            central.cli(kind, verb, str(SAMPLES / f"{kind}.json"), "--area", "370200")
        for name, hospital in (("a", HOSPITAL_A), ("b", HOSPITAL_B)):
            agent = Agent(tmp_path / name, central.url, hospital, central.enroll_token(hospital), hosp_lv="3")
            agent.proc.start()
            agents.append(agent)
        a, b = agents
        for agent in agents:
            wait_until(lambda a=agent: (a.status()["policy"]["bundles"].get("rules") or {}).get("seq"),
                       timeout=30, what="the agent applying the rules bundle")  # fmt: skip
        body = example_settlement("XH-1")
        body["feedetl"] = [{"feedetl_sn": "1", "list_type": "101", "med_list_codg": OMEPRAZOLE,
                            "medins_list_name": "omeprazole 20mg x 14", "cnt": "1", "pric": "6.90",
                            "det_item_fee_sumamt": "6.90", "days": 14}]  # fmt: skip
        body["medfee_sumamt"] = "6.90"
        for name in ("fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay"):
            body.pop(name, None)
        status, answer = a.settle(body)
        assert status == 201, answer
        wait_until(a.drained, timeout=30, what="hospital A's settlement reaching the centre")
        psn = body["psn"]
        request = {
            "psn": {"psn_no": psn["psn_no"], "gend": psn["gend"], "brdy": psn["brdy"]},
            "mdtrt": {"med_type": "11", "dise_codg": "K21.9", "begntime": "2026-11-25T10:00:00+08:00"},
            "lines": [{"feedetl_sn": "1", "med_list_codg": OMEPRAZOLE, "cnt": "1", "pric": "6.90", "days": 14,
                       "list_type": "101"}],
        }  # fmt: skip
        status, prompts = http("POST", b.url + "/v1/checks/prescription", request, b.token)
        assert status == 200, prompts
        assert prompts["cross_hospital"] is True and prompts["local_only"] is False
        dup = [p for p in prompts["prompts"] if p["rule_id"] == "dup_med_same_drug"]
        assert dup, json.dumps(prompts)[:2000]
        assert dup[0]["evidence"][0]["fixmedins_code"] == HOSPITAL_A
        status, meds = http("GET", b.url + f"/v1/persons/{psn['psn_no']}/medications?days=30", token=b.token)
        assert status == 200 and meds["medications"][0]["fixmedins_code"] == HOSPITAL_A
        access = central.cli("access-log", "--psn-no", psn["psn_no"])
        assert b.agent_id in access
    finally:
        for agent in agents:
            agent.proc.stop()
        central.proc.stop()
