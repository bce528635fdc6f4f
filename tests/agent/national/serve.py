"""A real agent process serving the HIS API (and so the national envelope) on a port, for the tests
that kill it with SIGKILL mid-stay and start it again on the same home.

``python -m tests.agent.national.serve HOME PORT ISSUERS_JSON``: loads the sample rules, catalogue and
policy on the first start, prints ``ready`` once listening.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

from agent.api import create_app
from agent.checks import DeskChecks
from agent.config import AgentConfig
from agent.evoucher import open_verifier
from agent.policy_store import PolicyStore
from agent.store import Outbox
from protocol.bundles import BundleHeader

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "his-secret-token"
CODE = "H37021100001"


async def main(home: Path, port: int, issuers: dict[str, str]) -> None:
    config = AgentConfig(
        home=home, agent_id="H1-01", fixmedins_code=CODE, hosp_lv="3", evoucher_issuers=issuers,
        evoucher_skew_s=30,
    )  # fmt: skip
    outbox = Outbox(home / "agent.db", agent_id="H1-01", hosp_lv="3")
    store = PolicyStore(home / "policy.db")
    for seq, kind in enumerate(("rules", "catalogue", "policy"), start=1):
        if not store.held_seq(kind):
            doc = json.loads((ROOT / "docs" / "samples" / f"{kind}.json").read_text())
            store.apply_document(BundleHeader(kind, "370200", seq, None, "2026-11-25T00:00:00Z"), doc)
    desk = DeskChecks(home / "agent.db", store, None, hosp_lv="3")
    with open_verifier(config) as vouchers:
        app = create_app(config, outbox, None, TOKEN, vouchers=vouchers, policy=store, desk=desk)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])))
