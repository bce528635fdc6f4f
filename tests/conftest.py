"""Shared test helpers: the example settlement from shared/ and ways to vary it; and which tests may not
run at the same time as each other when ``make test`` spreads the suite over processes (pytest-xdist)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings


async def with_client(app: Any, token: str, scenario: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Serve ``app`` on a real loopback socket and run ``scenario(http, *args)`` with a client session that
    carries ``token`` as its bearer; the server closes whatever the scenario does."""
    import aiohttp
    from aiohttp.test_utils import TestServer

    server = TestServer(app)
    await server.start_server()
    try:
        async with aiohttp.ClientSession(
            base_url=str(server.make_url("/")), headers={"Authorization": f"Bearer {token}"}
        ) as http:
            await scenario(http, *args)
    finally:
        await server.close()


# No per-example deadline: speed is measured in benchmarks, and on a loaded two-core machine running the
# suite in parallel an example that takes 300 ms is not a defect (Hypothesis' 200 ms default made
# tests/protocol/test_chain_tamper.py fail under load).
settings.register_profile("yibao", deadline=None)
settings.load_profile("yibao")

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


#: Tests that use what only one process on the machine may use at a time, by group: the machine's one
#: ``pcscd`` (pcsc-lite has one fixed socket; ``simulators.pcscd`` also waits for it by a file lock, so a
#: test missing here waits rather than fails), the system's package database and units, and the
#: benchmarks' shared cache of generated centres (``$TMPDIR/yibao-bench-screen``). ``make test`` runs with
#: ``--dist loadscope`` and the scheduler below: each group's tests run in one worker, one after another;
#: other modules spread.
SERIAL_GROUPS = {
    "pcscd": (
        "tests/card/",
        "tests/browser/test_desk.py",
        "tests/integration/test_demo.py",
        "tests/benchmarks/test_smoke.py::test_benchmark_runs_at_smoke_size[card]",
    ),
    "system": ("tests/packaging/",),
    "bench-cache": ("tests/benchmarks/",),
}


def serial_group(nodeid: str) -> str | None:
    """The group whose tests must not overlap with each other that ``nodeid`` belongs to, if any (the
    first that names it: the card benchmark is a pcscd test before it is a benchmark)."""
    for group, prefixes in SERIAL_GROUPS.items():
        if any(nodeid.startswith(prefix) for prefix in prefixes):
            return group
    return None


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadscope`` with our scopes: a test's serial group, else its module (a module's tests stay
    in one worker, so its module-scoped fixtures — a generated centre, a Spark session — are built once).

    A scheduler of our own rather than ``xdist_group`` marks: pytest-xdist 3.8 renames a marked test's id
    through an attribute pytest 9.2 no longer reads, so the marks group nothing there."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SerialGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return serial_group(nodeid) or nodeid.split("::", 1)[0]

    return SerialGroupScheduling(config, log)
