"""``yibao-central catalogue import`` with the national code lists: the sample (every list) publishes;
a bad row is refused naming the row, and nothing is published or audited."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from central.cli import main
from central.policy.tuf_repo import TufRepository

from .conftest import set_settings

SAMPLE = Path(__file__).resolve().parents[2] / "docs" / "samples" / "catalogue.json"


def test_catalogue_lists_are_checked_at_import(config, tmp_path: Path, capsys, act_as) -> None:
    set_settings(config.home, approvals_required=1)  # one operator: this is about the checks
    act_as("alice", "policy")
    home = ["--home", str(config.home)]
    doc = json.loads(SAMPLE.read_text(encoding="utf-8"))
    bad = copy.deepcopy(doc)
    bad["diseases"][1]["diag_code"] = "I10 x00"
    bad["matches"][3]["begndate"] = "2026-13-01"
    bad["operations"].append(copy.deepcopy(bad["operations"][2]))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad, ensure_ascii=False), encoding="utf-8")
    before = TufRepository.open(config).versions()["timestamp"]
    assert main([*home, "catalogue", "import", str(path)]) == 1
    err = capsys.readouterr().err
    assert "nothing was published" in err and "3 problem" in err, err
    assert "diseases[1].diag_code: 'I10 x00' is not an ICD-10 diagnosis code" in err
    assert "matches[3].begndate: '2026-13-01' is not a real date" in err
    assert "operations[3].oprn_oprt_code: '13.4100' repeats operations[2]" in err
    assert TufRepository.open(config).versions()["timestamp"] == before
    assert main([*home, "audit", "--json"]) == 0
    actions = [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]
    assert "catalogue.import" not in actions

    assert main([*home, "catalogue", "import", str(SAMPLE)]) == 0
    assert "370200 catalogue seq 1 (full, " in capsys.readouterr().out
