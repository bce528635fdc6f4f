"""End to end with real processes: an operator blacklists a card, the agent refuses it, the
operator lifts it, the agent accepts again — and the centre sees which versions the agent runs."""

from __future__ import annotations

import json

from tests.conftest import example_settlement

from .harness import Agent, Central, wait_until

HOSPITAL = "H37021100001"
AREA = "370200"  # the pooling area the centre derives from the hospital code
CARD = "A12345678"  # the example settlement's card_sn


def test_operator_blacklists_a_card_and_lifts_it(tmp_path):
    central = Central(tmp_path / "central")
    central.proc.start()
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
    agent.proc.start()
    try:
        status, _ = agent.settle(example_settlement("E2E-0"))
        assert status == 201
        # maker-checker: maker proposes, nothing reaches the agent until checker approves the digest
        proposed = central.cli_as(central.maker_token, "blacklist", "add", "--type", "card", "--id", CARD,
                                  "--reason", "reported lost", "--area", AREA)  # fmt: skip
        assert "[pending]" in proposed and central.cli("blacklist", "list", "--area", AREA).strip() == ""
        central.approve(proposed)

        attempt = iter(range(1, 10_000))

        def refused() -> dict | None:
            # A fresh his_setl_no each time: a retry of one the agent already took is answered as
            # taken (idempotency), whatever was blacklisted since.
            code, body = agent.settle(example_settlement(f"E2E-{next(attempt)}"))
            return body if code == 403 else None

        body = wait_until(refused, timeout=30, what="the agent refusing the blacklisted card")
        err = body["error"]
        assert (err["code"], err["list_type"], err["reason"]) == ("blacklisted", "card", "reported lost")
        assert err["list_version"] >= 1 and CARD not in err["message"]
        # Applying a blacklist bundle chains a blacklist_applied card log just after the apply that
        # refuses the card (issue 18): wait until the outbox has it and stands still, then settle.
        seen: list[int] = []

        def settled_down() -> int | None:
            seen.append(agent.status()["outbox"]["last_seq"])
            return seen[-1] if len(seen) >= 10 and seen[-1] > 1 and len(set(seen[-10:])) == 1 else None

        last_seq = wait_until(settled_down, timeout=20, what="the agent chaining the blacklist_applied log")
        code, _ = agent.settle(example_settlement("E2E-REFUSED"))
        # refused: no settlement written; the refusal is chained as the card's event (agent.cardlog)
        assert code == 403 and agent.status()["outbox"]["last_seq"] == last_seq + 1
        wait_until(agent.drained, timeout=30, what="the refusal's card log reaching the centre")
        history = json.loads(central.cli("cards", "history", CARD, "--json"))
        assert history["refused_after_lost"] >= 2 and history["used_after_lost"] == 0, history
        assert {(e["event"], e["code"]) for e in history["events"]} == {("auth_failed", "blacklisted")}

        central.cli("blacklist", "remove", "--type", "card", "--id", CARD, "--reason", "card found",
                    "--area", AREA)  # fmt: skip
        wait_until(lambda: agent.settle(example_settlement(f"E2E-{next(attempt)}"))[0] == 201, timeout=30,
                   what="the agent accepting the card again")  # fmt: skip

        def reported() -> dict | None:
            rows = [json.loads(x) for x in central.cli("agents", "list", "--json").splitlines() if x.strip()]
            row = next(r for r in rows if r["agent_id"] == agent.agent_id)
            policy = row.get("policy") or {}
            return row if policy.get("versions", {}).get("blacklist", 0) >= 2 else None

        row = wait_until(reported, timeout=30, what="the agent reporting its blacklist version")
        assert row["behind"].get("blacklist") == 0
        audit = central.cli("audit", "--json")
        rows = [json.loads(x) for x in audit.splitlines()]
        approvals = [r for r in rows if r["action"] == "change.approve"]
        assert len(approvals) == 2 and {r["operator"] for r in approvals} == {"checker"}
        assert any(r["action"] == "blacklist.remove" and r["operator"] == "maker" for r in rows)
        assert "card found" in audit
        assert agent.status()["policy"]["bundles"]["blacklist"]["seq"] >= 2
    finally:
        agent.proc.stop()
        central.proc.stop()
