"""Risk per object: several rules beat one, no rule carries the score, tiny providers are shrunk."""

from __future__ import annotations

import dataclasses
import json

import pytest

from central.monitoring.risk import RULE_CAP, WEIGHTS, by_category, object_risk
from central.monitoring.suspicions import record_findings
from central.storage.store import Store

from . import monitor_helpers as helpers
from .conftest import Server


def _visits(store: Store, hospital: str, n: int, fen: int, start: int = 0, area: str = helpers.AREA) -> None:
    rows = [(f"{hospital}-{i}", f"P{start + i:09d}", hospital, area, "2", "2026-11-24T10:00:00+08:00",
             "2026-11-24", "2026-11-24", "2026-11-24", "11", "J06.900", "J06.900", f"D-{hospital}", "A03.01",
             None, fen, 0, "1", "1970-01-01", "310", "11") for i in range(n)]  # fmt: skip
    store.write(lambda c: c.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", rows))


def _suspect(
    store: Store, hospital: str, rules: list[str], count: int, area: str = helpers.AREA, *, apart: bool = True
) -> None:
    """``count`` findings of each rule at the hospital; ``apart``: each rule on its own settlements (else
    every rule on the same ones)."""
    fs = []
    for n, rule in enumerate(rules):
        for j in range(count):
            i = j + (n * count if apart else 0)
            h = helpers.hit(rule, setl_id=f"{hospital}-{i}", psn_no=f"P{i:09d}")
            f = helpers.finding(h, hospital=hospital, object_id=f"P{i:09d}", setl_ids=(f"{hospital}-{i}",),
                                area=area)  # fmt: skip
            fs.append(dataclasses.replace(f, anchor_date="2026-11-24", category=f"cat-{rule}"))
    store.write(lambda c: record_findings(c, fs, run_id=1, at="t"))


def test_several_rules_outrank_one_and_no_rule_carries_the_score(store: Store) -> None:
    for h in ("H1", "H2", "H3"):
        _visits(store, h, 100, 10_000, start={"H1": 0, "H2": 1000, "H3": 2000}[h])
    _suspect(store, "H1", ["R-A"], 40)  # one rule, many findings
    _suspect(store, "H2", ["R-A", "R-B", "R-C"], 10)  # three rules, fewer findings each
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    order = [r.object_id for r in rows]
    assert order.index("H2") < order.index("H1") < order.index("H3")
    one = next(r for r in rows if r.object_id == "H1")
    assert one.parts["rules"] <= RULE_CAP
    # one rule alone, through the hospital or through its doctor, stays under its cap and the money
    assert one.score <= 100 * max(WEIGHTS["rules"] * RULE_CAP + WEIGHTS["money"], WEIGHTS["providers"] * 0.5)
    three = next(r for r in rows if r.object_id == "H2")
    assert three.parts["combination_bonus"] > 0 and len(three.rules) == 3
    assert {r["rule_id"] for r in three.rules} == {"R-A", "R-B", "R-C"}  # explained: which rules, how much
    # R-A is common at H1, so ten of it at H2 is no surprise; R-B and R-C are found nowhere else
    parts = {r["rule_id"]: r for r in three.rules}
    assert parts["R-A"]["part"] == 0 and parts["R-B"]["part"] > 0 and parts["R-B"]["expected"] < 10


def test_rules_finding_the_same_settlements_count_once(store: Store) -> None:
    """Three rules on the same ten settlements are one piece of evidence, not three: the weaker ones
    count only for settlements the strongest has not found (``new_share``)."""
    _visits(store, "H1", 100, 10_000)
    _visits(store, "H2", 100, 10_000, start=1000)
    for i in range(3, 9):  # peers without findings: the rules are rare
        _visits(store, f"H{i}", 100, 10_000, start=1000 * i)
    _suspect(store, "H1", ["R-A", "R-B", "R-C"], 10, apart=False)
    _suspect(store, "H2", ["R-A", "R-B", "R-C"], 10, apart=True)
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    same, apart = (next(r for r in rows if r.object_id == h) for h in ("H1", "H2"))
    assert sorted(r["new_share"] for r in same.rules) == [0.0, 0.0, 1.0]
    assert same.parts["combination_bonus"] == 0 and apart.parts["combination_bonus"] > 0
    assert apart.score > same.score
    assert same.at_stake_fen == 10 * 5120  # a settlement's money once, whatever rules found it


def test_an_indicator_finds_what_no_rule_does(store: Store) -> None:
    """Volume fraud under every rule: a hospital whose patients come back three times as often as its
    peers' is found by the visits-per-patient indicator alone, and the indicator says so."""
    for i in range(8):
        _visits(store, f"H{i}", 60, 10_000, start=1000 * i)
    rows = [(f"X-{i}", f"P{9000 + i % 20:09d}", "HX", helpers.AREA, "2", "2026-11-24T10:00:00+08:00",
             "2026-11-24", "2026-11-24", "2026-11-24", "11", "J06.900", "J06.900", "D-HX", "A03.01",
             None, 10_000, 0, "1", "1970-01-01", "310", "11") for i in range(60)]  # fmt: skip
    store.write(lambda c: c.executemany(f"INSERT INTO hist_visits VALUES ({','.join('?' * 21)})", rows))
    ranked = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    top = ranked[0]
    assert top.object_id == "HX" and not top.rules
    vpp = top.indicators["visits_per_patient"]
    assert vpp["value"] == 3.0 and vpp["peer_median"] == 1.0 and vpp["part"] > 0 and vpp["z"] > 2
    assert top.parts["indicators"] > 0 and all(r.score == 0 for r in ranked[1:])


def test_a_tiny_provider_is_shrunk_by_its_volume(store: Store) -> None:
    """The same rules finding a fifth of its visits: the provider with 200 visits ranks above the one
    with 3, whose score the volume shrink cuts (and whose one finding is little surprise)."""
    _visits(store, "BIG", 200, 10_000)
    _visits(store, "TINY", 3, 10_000, start=5000)
    _visits(store, "PEER", 200, 10_000, start=6000)
    _suspect(store, "BIG", ["R-A", "R-B"], 20)
    _suspect(store, "TINY", ["R-A"], 1)
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    assert rows[0].object_id == "BIG"
    tiny = next(r for r in rows if r.object_id == "TINY")
    assert tiny.parts["volume_shrink"] < 0.2 and tiny.score < rows[0].score / 4


def test_findings_by_category(store: Store) -> None:
    _visits(store, "H1", 10, 10_000)
    _suspect(store, "H1", ["R-A", "R-B"], 2)
    cats = store.read(lambda c: by_category(c, date_from="2026-11-01", date_to="2026-11-30"))
    assert {c["category"]: c["holding"] for c in cats} == {"cat-R-A": 2, "cat-R-B": 2}


def _district(store: Store) -> None:
    """Two hospitals of the operator's area (H1 with findings of two rules) and one of another area."""
    _visits(store, "H1", 100, 10_000)
    _visits(store, "H2", 100, 10_000, start=1000)
    _visits(store, "HX", 100, 10_000, start=2000, area=helpers.OTHER)
    _suspect(store, "H1", ["R-A", "R-B"], 10)
    _suspect(store, "HX", ["R-A", "R-B", "R-C"], 30, area=helpers.OTHER)


def _get(server: Server, token: str, query: str) -> tuple[int, dict]:
    reply = server.request("GET", "/v1/monitor" + query, headers={"Authorization": f"Bearer {token}"})
    return reply.status, reply.json()


def test_risk_over_http_in_the_operators_scope(server: Server) -> None:
    _district(server.store)
    _, token = helpers.operator(server.store, "rev", role="reviewer")
    window = "from=2026-11-01&to=2026-11-30"
    status, body = _get(server, token, f"/risk?by=hospital&{window}")
    assert status == 200 and body["by"] == "hospital"
    rows = body["results"]
    assert [r["object_id"] for r in rows] == ["H1", "H2"]  # HX is another area's: not listed
    top = rows[0]
    assert top["rank"] == 1 and top["score"] > rows[1]["score"]
    assert {r["rule_id"] for r in top["rules"]} == {"R-A", "R-B"}  # explained: which rules, how much
    assert set(top["parts"]) >= {"rules", "money", "indicators", "combination_bonus", "volume_shrink"}
    assert top["at_stake_fen"] == 20 * 5120 and top["total_fen"] == 100 * 10_000
    status, body = _get(server, token, f"/risk?by=person&{window}&limit=3")
    assert status == 200 and len(body["results"]) == 3
    status, body = _get(server, token, f"/categories?{window}")
    assert status == 200 and {c["category"] for c in body["categories"]} == {"cat-R-A", "cat-R-B"}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("/risk?by=ward&from=2026-11-01&to=2026-11-30", 400, "input_invalid"),
        ("/risk?by=hospital&from=2026-12-01&to=2026-11-30", 400, "input_invalid"),
        ("/risk?by=hospital&from=2026-11-01&to=2026-11-30&min_visits=-1", 400, "input_invalid"),
        ("/risk?by=hospital&from=2026-11-01&to=2026-11-30&limit=100000", 400, "input_invalid"),
        (f"/risk?by=hospital&from=2026-11-01&to=2026-11-30&area={helpers.OTHER}", 403, "area_forbidden"),
        (f"/categories?from=2026-11-01&to=2026-11-30&area={helpers.OTHER}", 403, "area_forbidden"),
    ],
)
def test_risk_refuses_bad_queries_clearly(server: Server, query: str, status: int, code: str) -> None:
    _district(server.store)
    _, token = helpers.operator(server.store, "rev", role="reviewer")
    got, body = _get(server, token, query)
    assert (got, body["error"]["code"]) == (status, code)
    assert body["error"]["message"]  # says what to do
    if "by=ward" in query:
        assert "person, doctor, department, hospital" in body["error"]["message"]


def test_risk_without_a_token_is_refused(server: Server) -> None:
    _district(server.store)
    reply = server.request("GET", "/v1/monitor/risk?by=hospital&from=2026-11-01&to=2026-11-30")
    assert reply.status == 401


def test_the_cli_lists_risk_and_categories(config, store: Store, act_as, capsys) -> None:
    from central.cli import main

    _district(store)
    act_as("rev", "reviewer", area=helpers.AREA)
    base = ["--home", str(config.home), "risk", "--from", "2026-11-01", "--to", "2026-11-30"]
    assert main([*base, "--by", "hospital"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out] == ["H1", "H2"]
    assert "top rules R-A×10, R-B×10" in out[0] and "combination +" in out[0]
    assert main([*base, "--by", "doctor", "--json", "--limit", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 1 and rows[0]["object_type"] == "doctor" and rows[0]["rank"] == 1
    assert main([*base, "--categories", "--json"]) == 0
    cats = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {c["category"]: c["holding"] for c in cats} == {"cat-R-A": 10, "cat-R-B": 10}
    assert main([*base, "--area", helpers.OTHER]) != 0
    assert "does not manage pooling area" in capsys.readouterr().err
    assert main([*base, "--min-visits", "-3"]) != 0
    assert "--min-visits" in capsys.readouterr().err


def test_surprise_is_the_poisson_tail() -> None:
    """-log10 P(X >= k): exact for small counts, finite for large ones, nothing when k is not above E."""
    import math

    from central.monitoring.risk import _surprise

    assert _surprise(1, 0.001) == pytest.approx(-math.log10(1 - math.exp(-0.001)), rel=1e-9)
    tail = 1 - sum(math.exp(-2.0) * 2.0**i / math.factorial(i) for i in range(6))
    assert _surprise(6, 2.0) == pytest.approx(-math.log10(tail), rel=1e-6)
    assert _surprise(3, 3.0) == 0 and _surprise(0, 1.0) == 0 and _surprise(2, 0) == 0
    big = _surprise(5000, 1000.0)
    assert math.isfinite(big) and big > 1000


def test_a_bad_by_is_refused_by_the_library(store: Store) -> None:
    from central.errors import MonitorInputInvalid

    with pytest.raises(MonitorInputInvalid, match="person, doctor, department, hospital"):
        store.read(lambda c: object_risk(c, by="ward", date_from="2026-11-01", date_to="2026-11-30"))


def test_surprise_with_overdispersion_is_the_negative_binomial_tail() -> None:
    """With dispersion α the tail is the negative binomial's (variance μ + αμ²), exact against its pmf;
    the same excess is less surprising the more the rule's counts vary between objects anyway."""
    import math

    from central.monitoring.risk import _surprise

    mu, alpha, k = 4.0, 0.5, 12
    r = 1 / alpha
    p = r / (r + mu)

    def pmf(x: int) -> float:
        return math.exp(math.lgamma(x + r) - math.lgamma(r) - math.lgamma(x + 1) + r * math.log(p)
                        + x * math.log(1 - p))  # fmt: skip

    tail = 1 - sum(pmf(x) for x in range(k))
    assert _surprise(k, mu, alpha) == pytest.approx(-math.log10(tail), rel=1e-6)
    assert _surprise(k, mu, 0.0) == _surprise(k, mu) > _surprise(k, mu, 0.1) > _surprise(k, mu, alpha) > 0
    assert _surprise(3, 4.0, alpha) == 0


def test_dispersion_leaves_the_object_out_and_needs_enough_others() -> None:
    from central.monitoring.risk import MAX_DISPERSION, MIN_DISPERSION_OBJECTS, _dispersion

    def moments(pairs: list[tuple[int, float]]) -> tuple[float, float, int]:
        return sum((k - m) ** 2 - k for k, m in pairs), sum(m * m for _, m in pairs), len(pairs)

    even = [(5, 5.0)] * 20  # no more spread than chance: Poisson
    assert _dispersion(5, 5.0, moments(even)) == 0.0
    # the judged object's own 40 findings do not make the rule look dispersed
    assert _dispersion(40, 5.0, moments([*even, (40, 5.0)])) == 0.0
    uneven = [(0, 5.0), (10, 5.0)] * 10
    alpha = _dispersion(10, 5.0, moments(uneven))
    assert 0.5 < alpha <= MAX_DISPERSION
    few = uneven[:MIN_DISPERSION_OBJECTS]  # the judged one and too few others
    assert _dispersion(10, 5.0, moments(few)) == 0.0


def test_a_rule_that_varies_between_honest_objects_says_less(store: Store) -> None:
    """Twelve findings at H12 of a rule that fires about five times at every hospital stand out; the same
    twelve of a rule that fires ten times at half the hospitals and never at the others much less."""
    for i in range(1, 14):
        _visits(store, f"H{i}", 100, 10_000, start=1000 * i)
    for i in range(1, 12):
        _suspect(store, f"H{i}", ["R-EVEN"], 5)
        if i % 2:
            _suspect(store, f"H{i}", ["R-UNEVEN"], 10)
    _suspect(store, "H12", ["R-EVEN"], 12)
    _suspect(store, "H12", ["R-UNEVEN"], 12)
    _suspect(store, "H13", ["R-EVEN"], 10)
    rows = store.read(lambda c: object_risk(c, by="hospital", date_from="2026-11-01", date_to="2026-11-30"))
    h12 = next(r for r in rows if r.object_id == "H12")
    rules = {r["rule_id"]: r for r in h12.rules}
    assert rules["R-EVEN"]["expected"] == pytest.approx(rules["R-UNEVEN"]["expected"], rel=0.25)
    assert rules["R-EVEN"]["surprise"] > 1.5 * rules["R-UNEVEN"]["surprise"]
    assert rules["R-UNEVEN"]["dispersion"] > rules["R-EVEN"]["dispersion"] >= 0  # shown: why it says less
    assert rules["R-EVEN"]["part"] > rules["R-UNEVEN"]["part"]
    assert h12.rank == 1
    # the money behind a rule counts as much as the rule stands out: in full from MONEY_FULL_PART
    from central.monitoring.risk import MONEY_FULL_PART

    weight = min(1.0, rules["R-EVEN"]["part"] / MONEY_FULL_PART)
    assert h12.parts["money"] == pytest.approx(12 * 5120 * weight / h12.total_fen, rel=1e-3)
    barely = next(r for r in rows if r.object_id == "H13")  # ten where about five were expected
    part = barely.rules[0]["part"]
    assert 0 < part < MONEY_FULL_PART
    weighed = 10 * 5120 * part / MONEY_FULL_PART
    assert barely.parts["money"] == pytest.approx(weighed / barely.total_fen, rel=1e-3)
    assert barely.parts["money"] < 10 * 5120 / barely.total_fen
