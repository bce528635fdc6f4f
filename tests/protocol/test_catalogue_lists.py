"""The national code lists of the catalogue document: each row checked, every problem named by its row,
an old document without lists still loading, and the size limits."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from protocol.catalogue_lists import LISTS, MAX_LIST_ROWS, check_lists
from protocol.document import Checker
from protocol.errors import KnowledgeInvalid
from protocol.rules import load_knowledge

SAMPLE = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "samples" / "catalogue.json").read_text(encoding="utf-8")
)


def problems(**sections: Any) -> list[str]:
    doc = copy.deepcopy(SAMPLE) | sections
    with pytest.raises(KnowledgeInvalid) as err:
        load_knowledge(doc)
    return err.value.problems


def test_the_sample_carries_every_list_and_an_old_document_still_loads():
    knowledge = load_knowledge(SAMPLE)
    assert set(knowledge.lists) == set(LISTS)
    (appendicitis,) = [r for r in knowledge.lists["diseases"] if r["diag_code"] == "K35.8"]
    assert appendicitis["diag_name"] == "急性阑尾炎" and appendicitis["vali_flag"] == "1"  # the default
    old = {k: v for k, v in SAMPLE.items() if k not in LISTS}
    assert load_knowledge(old).lists == {} and len(load_knowledge(old).items) == 79


def test_code_shapes_are_checked_per_list():
    assert problems(
        diseases=[{"diag_code": "k35.8", "diag_name": "急性阑尾炎"}],
        operations=[{"oprn_oprt_code": "470901", "oprn_oprt_name": "阑尾切除术"}],
        chronic_diseases=[{"opsp_dise_code": "M005", "opsp_dise_name": "高血压"}],
        tumour_morphology=[{"tmor_cell_type_code": "8140/3", "tmor_cell_type": "腺癌"}],
        tcm_diseases=[{"dise_type_code": "a04.01", "dise_type_name": "胸痹心痛病"}],
        matches=[
            {
                "fixmedins_code": "H3702",
                "medins_list_codg": "YP 1",
                "medins_list_name": "x",
                "med_list_codg": "X1",
                "list_type": "999",
            }
        ],
    ) == [
        "diseases[0].diag_code: 'k35.8' is not an ICD-10 diagnosis code like K35.8 or I10.x00",
        "operations[0].oprn_oprt_code: '470901' is not an ICD-9-CM-3 operation code like 47.0901",
        "chronic_diseases[0].opsp_dise_code: 'M005' is not a chronic or special disease code like M00500 "
        "(a letter and 5 digits)",
        "tumour_morphology[0].tmor_cell_type_code: '8140/3' is not an ICD-O-3 morphology code like M8140/3",
        "tcm_diseases[0].dise_type_code: 'a04.01' is not a TCM disease code like A04.01.03",
        "matches[0].fixmedins_code: 'H3702' is not an institution code like H37021100001",
        "matches[0].list_type: '999' is not one of 101, 102, 103, 104, 201, 301",
        "matches[0].med_list_codg: 'X1' must be 6-50 letters and digits (the national code)",
        "matches[0].medins_list_codg: 'YP 1' must be 1-150 of A-Z, a-z, 0-9, '.', '_', '-' (the hospital's "
        "own item code)",
    ]


def test_duplicates_dates_flags_and_unknown_fields_name_their_row():
    diseases = copy.deepcopy(SAMPLE["diseases"])
    diseases[3]["diag_code"] = diseases[0]["diag_code"]
    diseases[1] |= {"begndate": "2026-02-30", "vali_flag": "Y"}
    diseases[2] |= {"begndate": "2026-03-01", "enddate": "2026-01-01", "diag_nmae": "typo"}
    found = problems(diseases=diseases)
    assert found == [
        "diseases[1].begndate: '2026-02-30' is not a real date",
        "diseases[1].vali_flag: 'Y' is not one of 0, 1",
        "diseases[2].diag_nmae: is not a known field",
        "diseases[2].enddate: 2026-01-01 is before begndate 2026-03-01",
        "diseases[3].diag_code: 'K35.8' repeats diseases[0]",
    ], found
    found = problems(diseases=[{"diag_code": "J06.9", "diag_name": "x", "begndate": "2026-03-01",
                                "enddate": "2026-01-01"}])  # fmt: skip
    assert found == ["diseases[0].enddate: 2026-01-01 is before begndate 2026-03-01"]
    assert problems(operations=[{"oprn_oprt_code": "47.0901"}]) == [
        "operations[0].oprn_oprt_name: is required"
    ]
    assert problems(day_surgery=[]) == [
        "day_surgery: must hold at least one row (leave the section out when the bundle has none)"
    ]
    assert problems(tcm_syndromes={"sds_type_code": "B04.01"}) == [
        "tcm_syndromes: must be a list, found an object"
    ]


def test_a_hospital_may_match_the_same_code_again_only_from_another_date():
    row = dict(SAMPLE["matches"][0])
    again = dict(row, med_list_codg="XA10AEG067B002010183413")
    assert problems(matches=[row, again]) == [
        "matches[1].medins_list_codg: hospital H37021100001's code 'YP-0001' from 2026-01-01 "
        "repeats matches[0]"
    ]
    later = dict(again, begndate="2026-06-01")
    other_hospital = dict(row, fixmedins_code="H37021100002")
    knowledge = load_knowledge(copy.deepcopy(SAMPLE) | {"matches": [row, later, other_hospital]})
    assert len(knowledge.lists["matches"]) == 3


def test_a_list_longer_than_its_limit_is_refused_before_its_rows_are_read():
    c = Checker()
    assert check_lists(c, {"diseases": [None] * (MAX_LIST_ROWS + 1)}) == {}
    assert c.problems == [f"diseases: holds {MAX_LIST_ROWS + 1} entries; at most {MAX_LIST_ROWS}"]
