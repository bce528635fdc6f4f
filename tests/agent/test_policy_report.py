"""The update loop against a small centre on loopback: change signal, TUF over HTTP, signed reports.

The centre here is a tiny aiohttp app: the repository as static files, a long-poll change signal that
can be made to fail (the agent backs off and retries), and the report endpoint, which verifies each
report with the agent's enrolment key (``protocol.wire.verify_report``).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.policy import PolicyClient
from agent.policy_store import PolicyStore
from protocol.batch import KeyPair
from protocol.wire import POLICY_CHANGES_PATH, POLICY_REPORT_PATH, PolicyReport, decode_report, verify_report
from tests.agent.tufrepo import Repo, card


class Centre:
    def __init__(self, repo: Repo, agent_key: KeyPair) -> None:
        self.repo = repo
        self.public = agent_key.public_bytes
        self.reports: list[PolicyReport] = []
        self.change_calls = 0
        self.fail_changes = 0
        app = web.Application()
        app.router.add_get(POLICY_CHANGES_PATH, self.changes)
        app.router.add_post(POLICY_REPORT_PATH, self.report)
        app.router.add_static("/tuf/", repo.base / "tuf")
        self.server = TestServer(app)

    def version(self) -> int:
        return self.repo.timestamp.signed.version

    async def changes(self, request: web.Request) -> web.Response:
        self.change_calls += 1
        if self.fail_changes > 0:
            self.fail_changes -= 1
            return web.Response(status=503)
        have = int(request.query.get("have", "0"))
        for _ in range(50):  # the real centre holds ~30 s; 1 s is enough here
            if self.version() > have:
                break
            await asyncio.sleep(0.02)
        return web.json_response({"timestamp_version": self.version()})

    async def report(self, request: web.Request) -> web.Response:
        assert request.headers["Content-Type"] == "application/msgpack"
        report = decode_report(await request.read())
        verify_report(report, self.public)  # raises if not signed by the agent's key
        self.reports.append(report)
        return web.json_response({"ok": True})

    async def wait_report(self, predicate, timeout: float = 10.0) -> PolicyReport:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in reversed(self.reports):
                if predicate(r):
                    return r
            await asyncio.sleep(0.02)
        raise AssertionError(f"no such report; got {[(r.versions, r.problems) for r in self.reports]}")


def _client(agent_config, store: PolicyStore, key: KeyPair, url: str, **settings) -> PolicyClient:
    agent_config.central_url = url
    agent_config.backoff_initial_s = 0.05
    agent_config.backoff_max_s = 0.2
    for name, value in settings.items():
        setattr(agent_config, name, value)
    return PolicyClient(agent_config, store, key=key)


def test_change_signal_update_and_signed_reports(repo, agent_config, store):
    key = KeyPair.generate()
    repo.blacklist(1, [card("C1")])
    repo.publish()

    async def main() -> None:
        centre = Centre(repo, key)
        await centre.server.start_server()
        client = _client(
            agent_config, store, key, str(centre.server.make_url("")).rstrip("/"), policy_poll_s=60
        )
        task = asyncio.create_task(client.run())
        try:
            first = await centre.wait_report(lambda r: r.versions.get("blacklist") == 1)
            assert first.agent_id == "H1-01" and first.problems == [] and first.at.endswith("+00:00")
            assert first.versions == {
                "root": 1,
                "timestamp": 2,
                "snapshot": 2,
                "targets": 2,
                "blacklist": 1,
                "rules": 0,
                "policy": 0,
                "catalogue": 0,
                "keys": 0,
                "cards": 0,
            }
            # The signal fails twice (backoff, retry), then an operator blacklists a card.
            centre.fail_changes = 2
            calls = centre.change_calls
            for _ in range(250):
                if centre.change_calls >= calls + 3 and centre.fail_changes == 0:
                    break
                await asyncio.sleep(0.02)
            assert centre.change_calls >= calls + 3  # two refused polls, retried, a third one waiting
            repo.blacklist(2, [card("C9")], base=1)
            published = time.monotonic()
            repo.publish()
            await centre.wait_report(lambda r: r.versions.get("blacklist") == 2)
            assert store.is_blacklisted(card_sn="C9") is not None
            assert time.monotonic() - published < 5
            # A forged update: refused, and the report carries the codes.
            repo.blacklist(3, [card("C10")], base=2)
            repo.publish()
            repo.tamper_signature("timestamp.json")
            bad = await centre.wait_report(lambda r: "tuf_signature_invalid" in r.problems)
            assert "policy_update_refused" in bad.problems and bad.versions["blacklist"] == 2
            assert store.is_blacklisted(card_sn="C10") is None
            status = client.status()
            assert status["report"]["sent"] >= 3 and status["report"]["last_error"] is None
        finally:
            client.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await centre.server.close()

    asyncio.run(main())


def test_without_a_change_signal_the_agent_still_updates_every_poll(repo, agent_config, store):
    key = KeyPair.generate()
    repo.blacklist(1, [card("C1")])
    repo.publish()

    async def main() -> None:
        centre = Centre(repo, key)
        centre.fail_changes = 10**9  # an older centre, or a proxy eating the long poll
        await centre.server.start_server()
        client = _client(
            agent_config, store, key, str(centre.server.make_url("")).rstrip("/"), policy_poll_s=0.3
        )
        task = asyncio.create_task(client.run())
        try:
            await centre.wait_report(lambda r: r.versions.get("blacklist") == 1)
            repo.blacklist(2, [card("C9")], base=1)
            repo.publish()
            await centre.wait_report(lambda r: r.versions.get("blacklist") == 2, timeout=5)
            assert store.is_blacklisted(card_sn="C9") is not None
        finally:
            client.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await centre.server.close()

    asyncio.run(main())
