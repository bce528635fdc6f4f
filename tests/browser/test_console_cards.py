"""The console's cards page in Chromium, against a real centre and agents (``tests/integration/harness.py``).

One TLS centre for area 370200; agent A runs, agent B is enrolled but never started. A lost card is put
on the blacklist and the card office's correction (replaced by a new card) and a top-up notice go out in
the ``cards`` bundle, each proposed by one policy operator and approved by another. Agent A applies both
and chains its ``blacklist_applied`` log; the page shows the lost card's replacement gate "not yet", A
applied and logged, B waiting ("never reported"), and the correction and notice as the agents receive
them. The old card tried at A's desk is refused as replaced, and read at a third hospital's desk after
the loss: the page lists it first among the lost cards used after their loss and, asked for by number,
shows both events in the card's history. Once B is revoked the gate opens on the page. An operator of
another area sees none of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from central.intake.ingest import Ingestor
from central.storage.store import Store
from protocol.chain import encode_body
from protocol.records import CardLog
from tests.central.conftest import enrol
from tests.conftest import example_settlement
from tests.integration.harness import Agent, Central, http, wait_until

from .conftest import VIEWPORT, shot, watch

AREA, OTHER_AREA = "370200", "110100"
HOSPITAL_A, HOSPITAL_B, HOSPITAL_C = "H37021100001", "H37021200002", "H37021300003"
LOST, NEW = "370200L000000001", "370200L000000002"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console_cards")
    central = Central(tmp / "central")
    central.proc.start()
    a: Agent | None = None
    try:
        tokens = {
            "rev": central.cli("operators", "add", "rev", "--area", AREA).strip(),
            "wang": central.cli("operators", "add", "wang", "--area", OTHER_AREA).strip(),
        }
        a = Agent(tmp / "a", central.url, HOSPITAL_A, central.enroll_token(HOSPITAL_A))
        b = Agent(tmp / "b", central.url, HOSPITAL_B, central.enroll_token(HOSPITAL_B))  # never started
        central.cli(
            "blacklist", "add", "--type", "card", "--id", LOST, "--reason", "lost on the bus", "--area", AREA
        )
        central.cli("cards", "correct", "--card-sn", LOST, "--new-card-sn", NEW, "--field", "expires",
                    "--reason", "replaced after loss", "--area", AREA)  # fmt: skip
        central.cli("cards", "notify", "--id", "TOPUP-1", "--card-sn", NEW, "--type", "topup",
                    "--amount", "50",
                    "--text", "opening credit on the new card", "--valid-from", "2026-01-01",
                    "--valid-to", "2099-12-31", "--area", AREA)  # fmt: skip
        a.proc.start()

        def gate() -> dict:
            status, answer = http("GET", f"{central.url}/v1/monitor/cards/{LOST}/gate", token=tokens["rev"])
            assert status == 200, answer
            return answer

        wait_until(lambda: [d["agent_id"] for d in gate()["areas"][0]["done"]] == [a.agent_id], timeout=60,
                   what="agent A applying and logging the lost card's blacklist bundle")  # fmt: skip
        bundles = a.status()["policy"]["bundles"]
        assert bundles["cards"]["seq"] == 2 and bundles["cards"]["entries"] == 2
        # the old card is tried at A's desk: refused as replaced, and that refusal is the card's event
        tried = example_settlement("CARDS-TRIED")
        tried["psn"]["card_sn"] = LOST
        status, answer = a.settle(tried)
        assert status == 403 and answer["error"]["code"] == "card_replaced", answer
        wait_until(a.drained, timeout=30, what="the refusal's card log reaching the centre")
        # and read at a third hospital's desk after the loss: its signed chain goes through the centre's
        # own Ingestor into the served database (this agent has no reader and no process); it is then
        # revoked, so the gate does not wait for it
        with Store(central.home / "central.db") as store:
            c = enrol(store, HOSPITAL_C)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            used = CardLog(event="used", at=now, fixmedins_code=HOSPITAL_C, log_id="CU-1", opter="zhao.li",
                           card_sn=LOST)  # fmt: skip
            c.append_body("card", encode_body(used))
            assert Ingestor(store).ingest(c.batch(1, 1)).rejected == []
        central.cli("agents", "revoke", c.agent_id)
        yield {"central": central, "a": a, "b": b, "tokens": tokens}
    finally:
        if a is not None:
            a.proc.stop()
        central.proc.stop()


@pytest.fixture
def tls_context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True, locale="zh-CN")
    try:
        yield ctx
    finally:
        ctx.close()


def _login(page: Page, url: str, token: str) -> None:
    page.goto(url + "/console/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_selector("#operator")


def test_the_cards_page_shows_the_gate_per_lost_card_and_the_cards_bundle(
    world: dict, tls_context: BrowserContext
):
    url, a, b = world["central"].url, world["a"], world["b"]
    page = watch(tls_context.new_page())
    _login(page, url, world["tokens"]["rev"])
    page.click("nav >> text=补卡闸门")
    page.wait_for_selector("#gates")
    # first: the lost card read at C after its loss, a link to its history
    misused = page.locator(f"#misused tr[data-card='{LOST}']")
    assert HOSPITAL_C in misused.inner_text() and misused.locator("td").nth(2).inner_text() == "1"
    row = page.locator(f"#gates tr[data-card='{LOST}']")
    assert row.get_attribute("data-area") == AREA and row.get_attribute("data-allowed") == "false"
    text = row.inner_text()
    assert "1 / 2" in text and "尚不可补办" in text
    waiting = row.locator(".waiting")
    assert waiting.count() == 1 and waiting.get_attribute("data-agent") == b.agent_id
    assert "从未上报" in waiting.inner_text() and "无应用记录" in waiting.inner_text()
    assert a.agent_id not in text  # A applied and logged it: not waiting
    correction = page.locator(f"#corrections tr[data-card='{LOST}']").inner_text()
    assert NEW in correction and "expires" in correction and "replaced after loss" in correction
    notice = page.locator("#notices tr[data-notice='TOPUP-1']").inner_text()
    assert NEW in notice and "50.00" in notice and "topup" in notice and "2099-12-31" in notice
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"{page.url} is {width} px wide"
    shot(page, "console_cards_not_yet")

    page.fill("input[name=card_sn]", "370200L999999999")  # a card nobody lost: nothing, no error
    page.click("form[action$='/cards'] button")
    assert "没有记录" in page.locator("h2 + form + p").inner_text()

    world["central"].cli("agents", "revoke", b.agent_id)  # B no longer counts: the gate opens
    page.goto(url + f"/console/cards?card_sn={LOST}")
    row = page.locator(f"#gates tr[data-card='{LOST}']")
    assert row.get_attribute("data-allowed") == "true" and "可以补办" in row.inner_text()
    # one card asked for: its history too, the refusal at A after the card was blacklisted
    summary = page.locator("#history-summary")
    assert summary.get_attribute("data-refused-after") == "1"
    assert summary.get_attribute("data-used-after") == "1"
    refused, used = page.locator("#history tbody tr").all()
    assert refused.get_attribute("data-event") == "auth_failed"
    assert refused.get_attribute("data-code") == "card_replaced"
    assert refused.get_attribute("data-after-lost") == "true" and HOSPITAL_A in refused.inner_text()
    assert used.get_attribute("data-event") == "used" and HOSPITAL_C in used.inner_text()
    assert used.get_attribute("class") == "bad"
    page.click("#lang")
    page.wait_for_selector("text=Replacement")
    assert "allowed" in page.locator(f"#gates tr[data-card='{LOST}']").inner_text()
    shot(page, "console_cards_allowed")


def test_an_operator_of_another_area_sees_no_card_of_this_one(world: dict, tls_context: BrowserContext):
    page = watch(tls_context.new_page())
    _login(page, world["central"].url, world["tokens"]["wang"])
    page.goto(world["central"].url + "/console/cards")
    assert page.locator("#gates").count() == 0 and page.locator("#corrections").count() == 0
    assert page.locator("#misused").count() == 0
    assert LOST not in page.content() and NEW not in page.content()
    page.goto(world["central"].url + f"/console/cards?card_sn={LOST}")  # asked by number: still nothing
    assert page.locator("#history").count() == 0 and page.locator("#gates").count() == 0
    shot(page, "console_cards_other_area")
