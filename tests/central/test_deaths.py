"""Dates of death: a CSV imported whole or not at all, audited without person numbers; coordinates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from central.cli import main
from central.errors import ConfigInvalid
from central.intake.deaths import DeathsInvalid, import_deaths
from central.intake.hospitals import set_hospital
from central.storage.store import Store

from .conftest import ACTOR, HOSPITAL


def _held(store: Store) -> list[tuple]:
    return store.read(
        lambda c: c.execute("SELECT psn_no, death_date, source FROM deaths ORDER BY 1").fetchall()
    )


def _audit(store: Store) -> list[tuple]:
    return store.read(lambda c: c.execute("SELECT action, detail FROM audit_log ORDER BY id").fetchall())


def test_a_good_file_is_imported_and_audited_without_person_numbers(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "deaths.csv"
    f.write_text("psn_no,death_date,source\nP0000000001,2025-03-14,civil registry\nP0000000002,2025-04-01\n")
    counts = import_deaths(store, ACTOR, f)
    assert counts == {"file": "deaths.csv", "rows": 2, "new": 2, "updated": 0, "held": 2}
    assert _held(store) == [("P0000000001", "2025-03-14", "civil registry"),
                            ("P0000000002", "2025-04-01", "file deaths.csv")]  # fmt: skip
    f.write_text("P0000000002,2025-04-02,correction\n")  # the registry corrects itself
    assert import_deaths(store, ACTOR, f)["updated"] == 1
    assert _held(store)[1] == ("P0000000002", "2025-04-02", "correction")
    actions = _audit(store)
    assert [a for a, _ in actions] == ["deaths.import", "deaths.import"]
    assert all("P000000000" not in detail for _, detail in actions)


def test_a_bad_file_is_refused_whole_with_every_problem_by_line(store: Store, tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(
        "P0000000001,2025-03-14\n"
        "P0000000002,2025-02-30\n"  # no such day
        "P 3,2025-01-01\n"  # not a person number
        "P0000000004,2999-01-01\n"  # in the future
        "P0000000001,2025-03-15\n"  # repeats line 1
        "P0000000005\n"  # a column short
    )
    with pytest.raises(DeathsInvalid) as err:
        import_deaths(store, ACTOR, f)
    problems = err.value.problems
    assert [p.split(",")[0].split(":")[0] for p in problems] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
    ]
    assert "nothing was imported" in err.value.message and "P0000000001" not in err.value.message
    assert _held(store) == [] and _audit(store) == []


def test_the_cli_imports_lists_and_counts(config, store: Store, tmp_path: Path, capsys, act_as) -> None:
    act_as()
    f = tmp_path / "d.csv"
    f.write_text("P0000000001,2025-03-14\n")
    home = ["--home", str(config.home)]
    assert main([*home, "deaths", "import", str(f)]) == 0
    assert main([*home, "deaths", "list", "--count"]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert main([*home, "deaths", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["death_date"] == "2025-03-14"
    f.write_text("nonsense\n")
    assert main([*home, "deaths", "import", str(f)]) == 1
    assert "line 1" in capsys.readouterr().err


def test_hospital_coordinates_are_kept_with_their_plane_kilometres(store: Store) -> None:
    held = set_hospital(store, ACTOR, HOSPITAL, "2", lat=36.07, lon=120.38)
    assert held["x_km"] == pytest.approx(120.38 * 111.32 * math.cos(math.radians(36.07)))
    assert held["y_km"] == pytest.approx(36.07 * 110.574)
    again = set_hospital(store, ACTOR, HOSPITAL, None, name="renamed")  # grade and place kept
    assert (again["hosp_lv"], again["lat"], again["name"]) == ("2", 36.07, "renamed")
    for lat, lon in ((91.0, 120.0), (36.0, 181.0), (36.0, None), (float("nan"), 1.0)):
        with pytest.raises(ConfigInvalid):
            set_hospital(store, ACTOR, HOSPITAL, "2", lat=lat, lon=lon)
    with pytest.raises(ConfigInvalid):
        set_hospital(store, ACTOR, "H11010100077", None)  # a new hospital needs its grade
