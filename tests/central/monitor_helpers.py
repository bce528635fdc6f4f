"""Shared by the monitoring tests: findings, suspicions recorded through ``record_findings``, operators."""

from __future__ import annotations

from central.monitoring.suspicions import Finding, record_findings
from central.operators import Operator, add_operator
from central.policy.bundles import Actor
from central.storage.store import Store
from protocol.rules import Hit

AREA = "110100"  # HOSPITAL's area in tests/central/conftest.py
OTHER = "370200"
HOSPITAL = "H11010100001"
OTHER_HOSPITAL = "H37021100001"
ADMIN = Actor("admin", "setting up")


def hit(
    rule_id: str = "R-DUP",
    *,
    version: int = 1,
    lines: tuple[str, ...] = ("1",),
    mode: str = "enforce",
    evidence: tuple[dict, ...] = ({"value": 10, "threshold": 10},),
    psn_no: str = "P0000000001",
    setl_id: str = "S1",
) -> Hit:
    return Hit(
        rule_id=rule_id, rule_version=version, template="duplicate_medication", severity="warn", mode=mode,
        action="prompt", overridable=True, message="Drug X overlaps by 10 days.", lines=lines,
        evidence=evidence, psn_no=psn_no, setl_id=setl_id,
    )  # fmt: skip


def finding(
    h: Hit | None = None,
    *,
    area: str = AREA,
    hospital: str | None = None,
    setl_ids: tuple[str, ...] = ("S1",),
    amount_fen: int = 5120,
    weight: int = 60,
    object_type: str = "person",
    object_id: str = "P0000000001",
) -> Finding:
    if hospital is None:
        hospital = HOSPITAL if area == AREA else OTHER_HOSPITAL
    return Finding(
        hit=h or hit(), object_type=object_type, object_id=object_id, area=area, fixmedins_code=hospital,
        setl_ids=setl_ids, amount_fen=amount_fen, weight=weight,
    )  # fmt: skip


def suspect(store: Store, *findings: Finding) -> list[int]:
    """Record findings; returns the ids of their suspicions, in order."""
    from central.monitoring.suspicions import fact_key

    store.write(lambda c: record_findings(c, findings, run_id=None, at="2026-11-24T10:00:00+00:00"))
    keys = [fact_key(f) for f in findings]
    return store.read(
        lambda c: [
            c.execute("SELECT id FROM suspicions WHERE fact_key = ?", (k,)).fetchone()[0] for k in keys
        ]
    )


def operator(
    store: Store, name: str, area: str = AREA, *, manage: tuple[str, ...] = (), role: str = "supervisor"
) -> tuple[Operator, str]:
    return add_operator(store, ADMIN, name, area=area, manage=manage, role=role)
