"""Shared test helpers: the example settlement from shared/ and ways to vary it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT.parent / "shared" / "examples" / "settlement-outpatient.json"
_FALLBACK = {
    "fixmedins_code": "H37021100001",
    "his_setl_no": "HIS-20261123-000123",
    "psn": {
        "psn_no": "37020000000001234567",
        "card_sn": "A12345678",
        "insutype": "310",
        "insuplc_admdvs": "370211",
        "psn_type": "11",
        "gend": "1",
        "brdy": "1958-04-02",
    },
    "mdtrt": {
        "mdtrt_id": "MDT-20261123-000123",
        "med_type": "11",
        "begntime": "2026-11-23T09:12:00+08:00",
        "endtime": "2026-11-23T09:30:00+08:00",
        "dise_codg": "I10.x00",
        "dise_name": "essential hypertension",
        "dept_codg": "A03.01",
        "dr_codg": "D370211000123",
    },
    "feedetl": [
        {
            "feedetl_sn": "1",
            "list_type": "101",
            "med_list_codg": "XC08CAA077A001010100001",
            "medins_list_name": "amlodipine besylate tablets 5mg x 28",
            "cnt": "2",
            "pric": "19.60",
            "det_item_fee_sumamt": "39.20",
            "days": 28,
            "dosage": "5mg qd",
        },
        {
            "feedetl_sn": "2",
            "list_type": "201",
            "med_list_codg": "001102000010000",
            "medins_list_name": "general outpatient consultation",
            "cnt": "1",
            "pric": "12.00",
            "det_item_fee_sumamt": "12.00",
        },
    ],
    "medfee_sumamt": "51.20",
    "opter": "C0007",
    "opter_name": "cashier 7",
}


def example_settlement(his_setl_no: str | None = None) -> dict:
    """The shared example (or its copy here when shared/ is not beside the checkout)."""
    data = json.loads(EXAMPLE.read_text()) if EXAMPLE.exists() else json.loads(json.dumps(_FALLBACK))
    if his_setl_no:
        data["his_setl_no"] = his_setl_no
    return data


@pytest.fixture
def settlement() -> dict:
    return example_settlement()
