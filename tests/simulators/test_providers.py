"""The second labelled scenario: seeded, valid records, fraud at drawn intensities and labelled."""

from __future__ import annotations

from protocol.records import check_settlement
from simulators.providers import SCHEMES, generate_providers


def test_the_scenario_is_seeded_valid_and_labelled() -> None:
    a = generate_providers(3, hospitals=12, persons=300, days=20)
    b = generate_providers(3, hospitals=12, persons=300, days=20)
    assert [s.setl_id for _, s in a.records] == [s.setl_id for _, s in b.records]
    for _, s in a.records:
        check_settlement(s)  # raises when a record would be refused at ingest
    fraud = {h for h, bad in a.labels["hospital"].items() if bad}
    assert fraud == set(a.schemes) and len(fraud) >= 2
    assert all(set(sch) <= set(SCHEMES) for sch in a.schemes.values())
    assert any(a.labels["doctor"].values()) and any(a.labels["person"].values())
    times = [s.setl_time for _, s in a.records]
    assert times == sorted(times)
