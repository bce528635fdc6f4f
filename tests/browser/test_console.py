"""The centre's console in Chromium, against a real centre and agent (``tests/integration/harness.py``).

One TLS centre with the sample's frequent-visits rule, one agent at hospital A; person P1 makes five
visits, which the centre's background screen turns into a suspicion. Reviewer ``rev`` logs in (a bad
token is refused first), filters the queue, confirms the suspicion and opens a case; supervisor
``sup`` (another operator: the one who decides is not the one who confirmed) blacklists P1 on the case
page; the agent applies the signed bundle and refuses P1's next settlement with 403 ``blacklisted``.
An operator of another area gets 404 for that suspicion; a POST without the CSRF token is refused;
the English switch relabels the page. Every page is screenshotted by ``shot()`` (which also fails on
any console error) and fits 1366 px.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from tests.conftest import example_settlement
from tests.integration.harness import Agent, Central, http, wait_until

from .conftest import VIEWPORT, shot, watch

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
HOSPITAL, AREA, OTHER_AREA = "H37021100001", "370200", "110100"
RULE = "mon_frequent_visits"
P1, CARD = "37020000000000000101", "A00000101"


def _body(his_setl_no: str) -> dict:
    body = example_settlement(his_setl_no)
    body["fixmedins_code"] = HOSPITAL
    body["psn"] = {**body["psn"], "psn_no": P1, "card_sn": CARD}
    body["mdtrt"] = {**body["mdtrt"], "mdtrt_id": f"MDT-{his_setl_no}"}
    return body


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("console")
    doc = json.loads((SAMPLES / "monitoring_rules.json").read_text())
    rules = tmp / "rules.json"
    rules.write_text(json.dumps({**doc, "rules": [r for r in doc["rules"] if r["id"] == RULE]}))
    central = Central(tmp / "central")
    central.proc.start()
    agent: Agent | None = None
    try:
        central.cli("rules", "publish", str(rules), "--area", AREA)  # proposed by maker, approved by checker
        central.cli("hospitals", "set", "--hospital", HOSPITAL, "--level", "3", "--name", "Qingdao No.1",
                    "--lat", "36.07", "--lon", "120.38")  # fmt: skip
        tokens = {
            "rev": central.cli("operators", "add", "rev", "--area", AREA).strip(),
            "sup": central.cli("operators", "add", "sup", "--area", AREA, "--role", "supervisor").strip(),
            "wang": central.cli("operators", "add", "wang", "--area", OTHER_AREA).strip(),
        }
        agent = Agent(tmp / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
        agent.proc.start()
        for n in range(5):
            status, answer = agent.settle(_body(f"WEB-{n}"))
            assert status == 201, answer
        wait_until(agent.drained, timeout=30, what="the outbox reaching the centre")

        def found() -> list[dict]:
            return http("GET", central.url + "/v1/monitor/suspicions", token=tokens["sup"])[1]

        (suspicion,) = wait_until(found, timeout=30, what="the background screen finding the burst")
        yield {"central": central, "agent": agent, "tokens": tokens, "suspicion": suspicion, "rules": rules}
    finally:
        if agent is not None:
            agent.proc.stop()
        central.proc.stop()


@pytest.fixture
def tls_context(browser: Browser) -> Iterator[BrowserContext]:
    """A context that trusts the test centre's own CA (the harness's certificate is not in Chromium's)."""
    ctx = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True, locale="zh-CN")
    try:
        yield ctx
    finally:
        ctx.close()


def _page(ctx: BrowserContext) -> Page:
    page = watch(ctx.new_page())
    page.on("dialog", lambda d: d.accept())
    return page


def _login(page: Page, url: str, token: str) -> None:
    page.goto(url + "/console/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_selector("#operator")


def _expected_refusal(page: Page, *statuses: int) -> None:
    """Chromium logs every 4xx page as a console error; drop exactly those the test asked for."""
    errors = page.console_errors  # type: ignore[attr-defined]
    reasons = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
    for status in statuses:
        errors.remove(
            "console.error: Failed to load resource: the server responded with a status of "
            f"{status} ({reasons[status]})"
        )


def _fits(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"{page.url} is {width} px wide"


def test_review_to_blacklist_the_agent_enforces(world: dict, tls_context: BrowserContext, browser: Browser):
    url, s = world["central"].url, world["suspicion"]
    page = _page(tls_context)
    page.goto(url + "/console/suspicions")
    assert "/console/login" in page.url  # no session: the login page
    shot(page, "console_login")
    page.fill("#token", "yop_not-a-token")
    page.click("#login")
    assert "yibao-central operators token" in page.inner_text("#login-error")
    _expected_refusal(page, 401)
    _login(page, url, world["tokens"]["rev"])
    cookie = next(c for c in tls_context.cookies() if c["name"] == "yc_session")
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert page.inner_text("#operator") == "rev"
    assert page.locator(f"#queue tr[data-id='{s['id']}']").count() == 1
    shot(page, "console_queue")
    _fits(page)

    # the filters narrow the queue: another rule finds nothing, the right object and amount find it
    page.fill("input[name=rule]", "no_such_rule")
    page.click("#filter")
    assert page.locator("#empty").count() == 1
    query = f"object_type=person&object_id={P1}&min_yuan=51.20&hospital={HOSPITAL}"
    page.goto(url + "/console/suspicions?" + query)
    assert page.locator("#queue tbody tr").count() == 1
    page.goto(url + "/console/suspicions?min_yuan=51.21")
    assert page.locator("#empty").count() == 1
    shot(page, "console_queue_filtered")

    # the reviewer confirms and opens a case; the decision form is not theirs
    page.goto(url + f"/console/suspicions/{s['id']}")
    shot(page, "console_suspicion")
    page.fill("#reason", "five visits in a week")
    page.click("#confirm")
    page.wait_for_selector("#open-case")
    assert page.inner_text("#status") == "已确认"
    page.fill("#case-title", "card lending")
    page.click("#open")
    page.wait_for_selector("#case-status")
    case_url = page.url
    assert page.inner_text("#case-status") == "open" and page.locator("#decide").count() == 0
    shot(page, "console_case_reviewer")
    page.goto(url + "/console/map")
    assert page.locator(f"circle.hospital[data-code='{HOSPITAL}']").get_attribute("data-light") == "yellow"
    shot(page, "console_map_open")

    # a different operator, the supervisor, decides: blacklist the person
    with_sup = browser.new_context(viewport=VIEWPORT, ignore_https_errors=True, locale="zh-CN")
    try:
        sup = _page(with_sup)
        _login(sup, url, world["tokens"]["sup"])
        sup.goto(case_url)
        sup.select_option("#decision-kind", "blacklist")
        sup.select_option("#target-type", "person")
        sup.fill("#target-id", P1)
        sup.fill("#decision-reason", "insurance card lent to others")
        sup.click("#decide-submit")
        sup.wait_for_selector("#decisions")
        assert sup.inner_text("#case-status") == "decided"
        assert "blacklist" in sup.inner_text("#decisions") and "effective" in sup.inner_text("#decisions")
        shot(sup, "console_case_decided")
        for name in ("fleet", "rules", "blacklists", "analysis", "map", "audit", "cases"):
            sup.goto(url + f"/console/{name}")
            shot(sup, f"console_{name}")
            _fits(sup)
        sup.goto(url + "/console/analysis")
        assert "51.20" in sup.inner_text("#ranking")  # the visits' cost, shown in yuan
        sup.goto(url + "/console/blacklists")
        assert P1 in sup.inner_text("#entries") and sup.locator("#bundles tbody tr").count() >= 1
        sup.goto(url + "/console/audit")
        assert "suspicion.confirm" in sup.inner_text("#audit")
        sup.goto(url + "/console/map")
        # the person's suspicion is decided now: nothing open, the hospital is grey
        assert sup.locator(f"circle.hospital[data-code='{HOSPITAL}']").get_attribute("data-light") == "none"

        # a candidate with the limit lowered to 3 visits, beside the rules in force: the same fact
        candidate = json.loads(world["rules"].read_text())
        candidate["rules"][0]["params"]["max_visits"] = 3
        sup.goto(url + "/console/rules")
        sup.fill("#backtest textarea[name=rules]", json.dumps(candidate))
        sup.click("#backtest button")
        sup.wait_for_selector("#backtest-report")
        report = sup.inner_text("#backtest-table")
        assert RULE in report
        shot(sup, "console_rules_backtest")
    finally:
        with_sup.close()

    # the agent applies the signed bundle and refuses the person at the desk, writing nothing
    agent = world["agent"]
    wait_until(lambda: agent.status()["policy"]["bundles"].get("blacklist", {}).get("seq", 0) >= 1,
               timeout=30, what="the agent applying the blacklist")  # fmt: skip
    before = agent.status()["outbox"]["last_seq"]
    status, answer = agent.settle(_body("WEB-REFUSED"))
    assert (status, answer["error"]["code"]) == (403, "blacklisted"), answer
    assert agent.status()["outbox"]["last_seq"] == before


def test_scope_csrf_and_english(world: dict, tls_context: BrowserContext):
    url, s = world["central"].url, world["suspicion"]
    page = _page(tls_context)
    _login(page, url, world["tokens"]["wang"])
    response = page.goto(url + f"/console/suspicions/{s['id']}")
    assert response is not None and response.status == 404
    assert page.locator("#error-message").count() == 1
    page.goto(url + "/console/suspicions?status=all")
    assert page.locator("#empty").count() == 1  # another area's queue holds nothing of 370200
    response = page.goto(url + f"/console/suspicions?area={AREA}")
    assert response is not None and response.status == 403
    _expected_refusal(page, 404, 403)

    # a POST without this session's CSRF token is refused and changes nothing
    answer = page.request.post(url + f"/console/suspicions/{s['id']}/review",
                               form={"outcome": "dismiss", "reason": "forged"})  # fmt: skip
    assert answer.status == 403 and "reload the page" in answer.text()
    answer = page.request.post(url + "/console/logout", form={})
    assert answer.status == 403
    headers = page.request.get(url + "/console/suspicions").headers
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-frame-options"] == "DENY"

    page.goto(url + "/console/suspicions")
    page.click("#lang")
    page.wait_for_selector("#operator")
    assert "Suspicions queue" in page.inner_text("h1")
    shot(page, "console_queue_en")
    page.click("#logout")
    page.wait_for_selector("#token")
    page.goto(url + "/console/suspicions")
    assert "/console/login" in page.url


def test_no_cdn_and_static_served(world: dict):
    """The page names only its own server's files (nothing fetched from elsewhere at run time)."""
    here = Path(__file__).resolve().parents[2] / "central" / "web" / "templates"
    for template in here.glob("*.html"):
        text = template.read_text()
        assert "http://" not in text and "https://" not in text, template
        assert "<script>" not in text and " style=" not in text, template
