"""The desk pages in Chromium, against a real centre, two real agents and a real card stack.

One TLS centre with the sample rules, catalogue and benefit policy for area 370200; agent A
(H37021100001) and agent B (H37021200002, which lets ``http://his.example:8080`` embed its desk) run as
processes through their console scripts; ``pcscd`` with the vpcd driver holds the PSAM and, when a test
inserts it, the patient's virtual card (``simulators.vcard``), read by the agents through PC/SC as a
physical reader would be. Person P1 was dispensed omeprazole at A; person P2 is on the blacklist.

- a cashier at A settles the HIS's bill through the card: no card first (the refusal), then the identity
  masked, the split in exact yuan, a double click on settle, the receipt; the outbox holds it once;
- a blacklisted person is refused on the page with the list's reason and nothing is settled;
- B's doctor sees the prompt for A's omeprazole with evidence naming A, and A in the recent medication;
  an override without a reason is refused, one with a reason is recorded, and the settlement B's cashier
  then makes carries it with the doctor's own code;
- sign-in failures (a bad token, the HIS token, a disabled user), the wrong role, a POST without the CSRF
  token, a cashier's override, the English labels, and the frame-ancestors header.

Every page is screenshotted by ``shot()``, which fails on any console error; pages fit 1366 px.
Run under ``flock /tmp/yibao-pcscd.lock`` (one pcscd per machine).
"""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page

from protocol.chain import decode_body, decode_entry
from simulators.pcscd import Pcscd
from simulators.vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for
from tests.integration.harness import BIN, Agent, Central, http, wait_until

from .conftest import VIEWPORT, shot, watch

SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"
AREA = "370200"
HOSPITAL_A, HOSPITAL_B = "H37021100001", "H37021200002"
P1, P2 = "370202198001011234", "370202199002022345"  # 18-character numbers: the cards' own
P3 = "370202198503033456"  # the card office replaced this person's card (the ``cards`` bundle)
NEW_CARD = "370202N000000009"
OMEPRAZOLE = "XA02BCA211A010010102134"
DOCTOR_CODE = "D370212000077"
EMBEDDER = "http://his.example:8080"


def _cli(agent: Agent, *args: str) -> str:
    out = subprocess.run([str(BIN / "yibao-agent"), "--home", str(agent.home), *args],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _bill(his_setl_no: str, psn_no: str, lines: list[dict], hospital: str, **mdtrt: str) -> dict:
    total = sum(Decimal(x["det_item_fee_sumamt"]) for x in lines)
    return {
        "fixmedins_code": hospital, "his_setl_no": his_setl_no, "opter": "C0007",
        "psn": {"psn_no": psn_no, "insutype": "310", "psn_type": "11", "gend": "1", "brdy": "1980-01-01"},
        "mdtrt": {"mdtrt_id": f"MDT-{his_setl_no}", "med_type": "11", "begntime": "2026-12-06T09:12:00+08:00",
                  "dise_codg": "K21.9", **mdtrt},
        "feedetl": lines, "medfee_sumamt": str(total),
    }  # fmt: skip


AMLODIPINE = {"feedetl_sn": "1", "list_type": "101", "med_list_codg": "XC08CAA077A001010100001",
              "medins_list_name": "amlodipine besylate tablets 5mg x 28", "cnt": "2", "pric": "19.60",
              "det_item_fee_sumamt": "39.20", "days": 28}  # fmt: skip
CONSULT = {"feedetl_sn": "2", "list_type": "201", "med_list_codg": "001102000010000",
           "medins_list_name": "general outpatient consultation", "cnt": "1", "pric": "12.00",
           "det_item_fee_sumamt": "12.00"}  # fmt: skip
OMEPRAZOLE_LINE = {"feedetl_sn": "1", "list_type": "101", "med_list_codg": OMEPRAZOLE,
                   "medins_list_name": "omeprazole 20mg x 14", "cnt": "1", "pric": "6.90",
                   "det_item_fee_sumamt": "6.90", "days": 14}  # fmt: skip


class Reader:
    """pcscd with the PSAM in its second slot; ``insert(psn_no)`` puts a patient's card in the first."""

    def __init__(self, pcscd: Pcscd) -> None:
        self.pcscd = pcscd
        self.slot: VpcdSlot | None = None

    def insert(self, psn_no: str, state: str = "valid") -> None:
        self.remove()
        self.slot = VpcdSlot(VirtualCard(card_for(psn_no, state=state), state=state),
                             port=self.pcscd.card_port).start()  # fmt: skip
        assert self.slot.wait_inserted(10)
        self.pcscd.wait_card(0)

    def remove(self) -> None:
        if self.slot is not None:
            self.slot.stop()
            self.slot = None
            self.pcscd.wait_card(0, present=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("desk")
    central = Central(tmp / "central")
    central.proc.start()
    agents: list[Agent] = []
    with Pcscd(log_path=tmp / "pcscd.log") as pcscd:
        psam = VpcdSlot(VirtualPsam(), port=pcscd.psam_port).start()
        try:
            assert psam.wait_inserted(10), "the PSAM did not reach pcscd's second vpcd slot"
            pcscd.wait_card(1)
            for kind, verb in (("rules", "publish"), ("catalogue", "import"), ("policy", "publish")):
                central.cli(kind, verb, str(SAMPLES / f"{kind}.json"), "--area", AREA)
            central.cli("blacklist", "add", "--type", "person", "--id", P2, "--reason", "insurance card lent",
                        "--area", AREA)  # fmt: skip
            central.cli("cards", "correct", "--card-sn", card_for(P3).card_sn, "--new-card-sn", NEW_CARD,
                        "--field", "expires", "--reason", "replaced after loss", "--area", AREA)  # fmt: skip
            central.cli("cards", "notify", "--id", "TOPUP-P1", "--card-sn", card_for(P1).card_sn, "--type",
                        "topup", "--amount", "88.50", "--text", "district subsidy credited", "--valid-from",
                        "2026-01-01", "--valid-to", "2099-12-31", "--area", AREA)  # fmt: skip
            for name, hospital, extra in (
                ("a", HOSPITAL_A, {}),
                ("b", HOSPITAL_B, {"desk_frame_ancestors": [EMBEDDER]}),
            ):
                agent = Agent(tmp / name, central.url, hospital, central.enroll_token(hospital), hosp_lv="3",
                              **extra)  # fmt: skip
                agent.proc.start()
                agents.append(agent)
            a, b = agents
            tokens = {
                "cashier_a": _cli(a, "users", "add", "--name", "li.na", "--role", "cashier"),
                "cashier_b": _cli(b, "users", "add", "--name", "zhou", "--role", "cashier"),
                "doctor_b": _cli(b, "users", "add", "--name", "dr.wang", "--role", "doctor",
                                 "--dr-codg", DOCTOR_CODE),
                "gone_b": _cli(b, "users", "add", "--name", "gone", "--role", "cashier"),
            }
            _cli(b, "users", "disable", "--name", "gone")
            kinds = ("rules", "catalogue", "policy", "blacklist", "cards")
            for agent in agents:
                wait_until(lambda g=agent: all((g.status()["policy"]["bundles"].get(k) or {}).get("seq")
                                               for k in kinds),
                           timeout=60, what="the agent applying its rules, catalogue, policy and blacklist")
            # P1 got omeprazole for 14 days at A (the HIS API): B's doctor must hear of it
            body = _bill("A-OME-1", P1, [OMEPRAZOLE_LINE], HOSPITAL_A)
            body["psn"]["insuplc_admdvs"] = P1[:6]  # the HIS API takes the whole person
            status, answer = a.settle(body)
            assert status == 201, answer
            wait_until(a.drained, timeout=30, what="hospital A's settlement reaching the centre")
            yield {"central": central, "a": a, "b": b, "tokens": tokens, "reader": Reader(pcscd)}
        finally:
            for agent in agents:
                agent.proc.stop()
            psam.stop()
            central.proc.stop()


def _post_bill(agent: Agent, body: dict) -> dict:
    status, answer = http("POST", agent.url + "/desk/api/bills", body, agent.token)
    assert status == 201, answer
    return answer


def _page(ctx: BrowserContext) -> Page:
    return watch(ctx.new_page())


def _sign_in(page: Page, url: str, token: str) -> None:
    """Open ``url``; the desk asks for the token first and then shows the page asked for."""
    page.goto(url)
    assert "/desk/login" in page.url
    page.fill("#token", token)
    page.click("#sign-in")
    page.wait_for_selector("#user")


def _expected_refusal(page: Page, *statuses: int) -> None:
    """Chromium logs every 4xx page as a console error; drop exactly those the test asked for."""
    errors = page.console_errors  # type: ignore[attr-defined]
    reasons = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
    for status in statuses:
        errors.remove("console.error: Failed to load resource: the server responded with a status of "
                      f"{status} ({reasons[status]})")  # fmt: skip


def _fits(page: Page) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= VIEWPORT["width"], f"{page.url} is {width} px wide"


def _settled(agent: Agent, his_setl_no: str) -> list[Any]:
    """The outbox's records of ``his_setl_no`` (read from the agent's own database, read-only)."""
    conn = sqlite3.connect(f"file:{agent.home / 'agent.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT record FROM outbox WHERE kind = 'setl' ORDER BY seq").fetchall()
        index = conn.execute(
            "SELECT count(*) FROM settlements WHERE his_setl_no = ?", (his_setl_no,)
        ).fetchone()
    finally:
        conn.close()
    records = [decode_body(decode_entry(bytes(r[0]))) for r in rows]
    found = [r for r in records if r.his_setl_no == his_setl_no]
    assert index[0] == len(found)
    return found


def test_cashier_settles_a_bill_through_the_virtual_card(world: dict, context: BrowserContext):
    a, reader = world["a"], world["reader"]
    # the HIS read a personal-account balance of 30.00 yuan; the year's outpatient deductible is not met
    bill = _post_bill(a, {**_bill("DESK-A-1", P1, [AMLODIPINE, CONSULT], HOSPITAL_A),
                          "acct_balance": "30.00"})
    page = _page(context)
    page.goto(a.url + bill["cashier_url"])
    shot(page, "desk_login")
    page.fill("#token", world["tokens"]["cashier_a"])
    page.click("#sign-in")
    page.wait_for_selector("#read-card")
    assert page.inner_text("#user") == "li.na" and page.inner_text("#bill-total") == "51.20"
    cookie = next(c for c in context.cookies() if c["name"] == "yd_session")
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/desk/")

    reader.remove()  # no card in the reader: the cashier is told what to do, nothing changes
    page.click("#read-card")
    page.wait_for_selector("#refusal")
    assert page.get_attribute("#refusal", "data-code") == "no_card" and "插入社保卡" in page.inner_text(
        "#refusal"
    )
    assert page.locator("#identity").count() == 0
    shot(page, "desk_cashier_no_card")

    reader.insert(P1)
    page.click("#read-card")
    page.wait_for_selector("#split")
    assert page.inner_text("#psn-id") == "3702**********1234"  # masked as a cashier's screen shows it
    name = page.inner_text("#psn-name")
    assert len(name) >= 2 and set(name[1:]) == {"*"}
    assert P1 not in page.content()
    amounts = {
        k: Decimal(page.inner_text(f"#{k}").replace(",", "")) for k in ("medfee", "fund", "acct", "cash")
    }
    assert page.locator("#not-computed").count() == 0  # the split came from the policy bundle
    assert amounts == {"medfee": Decimal("51.20"), "fund": Decimal("0.00"), "acct": Decimal("30.00"),
                       "cash": Decimal("21.20")}  # fmt: skip
    assert amounts["fund"] + amounts["acct"] + amounts["cash"] == amounts["medfee"]  # exact, from fen
    shot(page, "desk_cashier_preview")
    _fits(page)

    page.dblclick("#settle")  # a double click settles once
    page.wait_for_selector("#receipt")
    setl_id = page.inner_text("#setl-id")
    assert setl_id.startswith(HOSPITAL_A + "-")
    assert Decimal(page.inner_text("#r-cash")) == amounts["cash"]
    shot(page, "desk_cashier_receipt")
    # a second settle (a reload of the form, a retry) answers the receipt and settles nothing more
    csrf = page.get_attribute("input[name=csrf]", "value")
    again = page.request.post(a.url + bill["cashier_url"] + "/settle", form={"csrf": csrf or ""})
    assert again.status == 200 and setl_id in again.text()
    (record,) = _settled(a, "DESK-A-1")
    assert record.setl_id == setl_id and record.opter_name == "li.na" and record.mdtrt_cert_type == "03"
    assert record.psn.psn_no == P1 and record.medfee_sumamt == 5120
    assert (record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay) == (0, 3000, 2120)
    status, state = http("GET", a.url + f"/desk/api/bills/{bill['bill_id']}", token=a.token)
    assert status == 200 and state["settled"] and state["receipt"]["setl_id"] == setl_id
    reader.remove()


def test_a_blacklisted_person_is_refused_and_nothing_settled(world: dict, context: BrowserContext):
    a, reader = world["a"], world["reader"]
    bill = _post_bill(a, _bill("DESK-A-BL", P2, [CONSULT], HOSPITAL_A))
    page = _page(context)
    _sign_in(page, a.url + bill["cashier_url"], world["tokens"]["cashier_a"])
    reader.insert(P2)
    page.click("#read-card")
    page.wait_for_selector("#refusal")
    assert page.get_attribute("#refusal", "data-code") == "blacklisted"
    text = page.inner_text("#refusal")
    assert "医保待遇已暂停" in text and "insurance card lent" in text and "自费" in text
    assert page.locator("#settle").count() == 0 and page.locator("#receipt").count() == 0
    shot(page, "desk_cashier_blacklisted")
    # the settle action itself refuses too: nothing was previewed, nothing is settled
    csrf = page.get_attribute("input[name=csrf]", "value") or ""
    answer = page.request.post(a.url + bill["cashier_url"] + "/settle", form={"csrf": csrf})
    assert answer.status == 400
    assert _settled(a, "DESK-A-BL") == []
    page.click("#lang")
    page.wait_for_selector("#read-card")
    page.click("#read-card")
    page.wait_for_selector("#refusal")
    assert "benefits are suspended" in page.inner_text("#refusal")
    shot(page, "desk_cashier_blacklisted_en")
    assert _settled(a, "DESK-A-BL") == []
    reader.remove()


def test_a_replaced_card_is_shown_and_refused_and_a_notice_is_shown(world: dict, context: BrowserContext):
    """The ``cards`` bundle at the desk: the correction of the card just read ("card replaced", the new card
    to ask for) and its refusal with nothing settled; another card's top-up notice beside its identity."""
    a, reader = world["a"], world["reader"]
    bill = _post_bill(a, _bill("DESK-A-REPL", P3, [CONSULT], HOSPITAL_A))
    page = _page(context)
    _sign_in(page, a.url + bill["cashier_url"], world["tokens"]["cashier_a"])
    reader.insert(P3)
    page.click("#read-card")
    page.wait_for_selector("#card-correction")
    assert page.get_attribute("#card-correction", "data-replaced") == "true"
    box = page.inner_text("#card-correction")
    assert "此卡已换发新卡" in box and NEW_CARD in box and "replaced after loss" in box
    assert page.locator("#outdated-fields [data-field=expires]").inner_text() == "有效期"
    assert page.get_attribute("#refusal", "data-code") == "card_replaced"
    assert NEW_CARD in page.inner_text("#refusal") and "新卡" in page.inner_text("#refusal")
    assert page.locator("#settle").count() == 0 and page.locator("#split").count() == 0
    assert P3 not in page.content()
    shot(page, "desk_cashier_card_replaced")
    _fits(page)
    csrf = page.get_attribute("input[name=csrf]", "value") or ""
    answer = page.request.post(a.url + bill["cashier_url"] + "/settle", form={"csrf": csrf})
    assert answer.status == 400 and _settled(a, "DESK-A-REPL") == []
    page.click("#lang")
    page.wait_for_selector("#read-card")
    page.click("#read-card")
    page.wait_for_selector("#card-correction")
    assert "This card was replaced" in page.inner_text("#card-correction")
    assert "Do not settle with the old card" in page.inner_text("#refusal")
    shot(page, "desk_cashier_card_replaced_en")
    page.click("#lang")
    # the HIS API says the same: GET /v1/card carries the correction, the settlement is refused
    status, read = http("GET", a.url + "/v1/card", token=a.token)
    assert status == 200 and read["correction"]["replaced"] and read["correction"]["new_card_sn"] == NEW_CARD
    ident = read["identity"]
    body = _bill("DESK-A-REPL-HIS", P3, [CONSULT], HOSPITAL_A)
    body["psn"].update(card_sn=ident["card_sn"], insuplc_admdvs=ident["insuplc_admdvs"])
    body["mdtrt_cert_type"], body["mdtrt_cert_no"] = ident["mdtrt_cert_type"], ident["mdtrt_cert_no"]
    status, answer = a.settle(body)
    assert status == 403 and answer["error"]["code"] == "card_replaced", answer
    assert answer["error"]["new_card_sn"] == NEW_CARD and _settled(a, "DESK-A-REPL-HIS") == []
    reader.remove()

    other = _post_bill(a, _bill("DESK-A-NOTICE", P1, [CONSULT], HOSPITAL_A))
    page.goto(a.url + other["cashier_url"])
    reader.insert(P1)
    page.click("#read-card")
    page.wait_for_selector("#split")
    assert page.locator("#card-correction").count() == 0
    item = page.locator("#card-notices li[data-notice=TOPUP-P1]")
    assert item.get_attribute("data-type") == "topup"
    text = item.inner_text()
    assert "充值" in text and "88.50" in text and "district subsidy" in text
    shot(page, "desk_cashier_card_notice")
    reader.remove()


def test_doctor_sees_the_other_hospitals_drug_and_overrides_with_a_reason(world: dict, browser: Browser):
    b, reader = world["b"], world["reader"]
    bill = _post_bill(b, _bill("DESK-B-1", P1, [OMEPRAZOLE_LINE], HOSPITAL_B, dr_codg=DOCTOR_CODE))
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = _page(ctx)
        _sign_in(page, b.url + bill["doctor_url"], world["tokens"]["doctor_b"])
        prompt = page.locator("article.prompt[data-rule='dup_med_same_drug']")
        assert prompt.count() == 1
        assert prompt.locator("td.hospital").first.get_attribute("data-hospital") == HOSPITAL_A
        assert "外院" in prompt.inner_text()
        assert page.locator(f"#medications td.hospital[data-hospital='{HOSPITAL_A}']").count() >= 1
        assert page.locator("#cross-hospital").count() == 1
        shot(page, "desk_doctor_prompt")
        _fits(page)

        prompt.locator("button.override-submit").click()  # no reason: refused, nothing recorded
        page.wait_for_selector("#refusal")
        assert page.get_attribute("#refusal", "data-code") == "desk_override_invalid"
        assert "理由" in page.inner_text("#refusal") and page.locator(".overridden").count() == 0
        shot(page, "desk_doctor_override_refused")
        prompt = page.locator("article.prompt[data-rule='dup_med_same_drug']")
        prompt.locator("input[name=reason]").fill("previous supply lost, patient confirmed")
        prompt.locator("button.override-submit").click()
        page.wait_for_selector(".overridden")
        assert "previous supply lost" in page.inner_text(".overridden") and DOCTOR_CODE in page.inner_text(
            ".overridden"
        )
        shot(page, "desk_doctor_overridden")
    finally:
        ctx.close()

    # B's cashier settles the visit: the record carries the override in the doctor's own name
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = _page(ctx)
        _sign_in(page, b.url + bill["cashier_url"], world["tokens"]["cashier_b"])
        reader.insert(P1)
        page.click("#read-card")
        page.wait_for_selector("#settle")
        assert "previous supply lost" in page.inner_text("#overrides")
        page.click("#settle")
        page.wait_for_selector("#receipt")
        shot(page, "desk_cashier_b_receipt")
    finally:
        ctx.close()
        reader.remove()
    (record,) = _settled(b, "DESK-B-1")
    assert [(o.rule_id, o.dr_codg, o.reason) for o in record.overrides] == [
        ("dup_med_same_drug", DOCTOR_CODE, "previous supply lost, patient confirmed")
    ]
    assert record.opter_name == "zhou"  # the cashier settled it; the override is the doctor's
    _status, state = http("GET", b.url + f"/desk/api/bills/{bill['bill_id']}", token=b.token)
    assert state["overrides"][0]["dr_codg"] == DOCTOR_CODE


def test_sign_in_roles_csrf_english_and_framing(world: dict, browser: Browser):
    a, b = world["a"], world["b"]
    bill = _post_bill(b, _bill("DESK-B-2", P1, [CONSULT], HOSPITAL_B))
    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = _page(ctx)
        page.goto(b.url + bill["cashier_url"])
        for token, code_text in (("ybu_not-a-token", "令牌无效"), (b.token, "HIS 系统令牌不能用于登录"),
                                 (world["tokens"]["gone_b"], "账号已停用")):  # fmt: skip
            page.fill("#token", token)
            page.click("#sign-in")
            page.wait_for_selector("#login-error")
            assert code_text in page.inner_text("#login-error"), page.inner_text("#login-error")
            assert page.locator("#user").count() == 0
        _expected_refusal(page, 401, 401, 401)
        shot(page, "desk_login_refused")

        # a doctor on the cashier's page: refused with who may use it
        page.fill("#token", world["tokens"]["doctor_b"])
        page.click("#sign-in")
        page.wait_for_selector("#error-message")
        assert page.get_attribute("#error-message", "data-code") == "role_forbidden"
        assert "收费员" in page.inner_text("#error-message")
        _expected_refusal(page, 403)
        shot(page, "desk_wrong_role")
    finally:
        ctx.close()

    ctx = browser.new_context(viewport=VIEWPORT, locale="zh-CN")
    try:
        page = _page(ctx)
        _sign_in(page, b.url + bill["cashier_url"], world["tokens"]["cashier_b"])
        # a POST without the session's CSRF token, or from another origin, is refused and does nothing
        answer = page.request.post(b.url + bill["cashier_url"] + "/card", form={"csrf": "forged"})
        assert answer.status == 403 and "刷新页面" in answer.text()
        csrf = page.get_attribute("input[name=csrf]", "value") or ""
        answer = page.request.post(b.url + bill["cashier_url"] + "/settle", form={"csrf": csrf},
                                   headers={"Origin": "http://evil.example"})  # fmt: skip
        assert answer.status == 403 and "origin_forbidden" in answer.text()
        # a cashier cannot override: the doctor's action refuses the cashier's session
        form = {"csrf": csrf, "rule_id": "dup_med_same_drug", "reason": "mine"}
        answer = page.request.post(b.url + bill["doctor_url"] + "/override", form=form)
        assert answer.status == 403 and "role_forbidden" in answer.text()
        assert _settled(b, "DESK-B-2") == []

        headers = page.request.get(b.url + bill["cashier_url"]).headers
        assert f"frame-ancestors 'self' {EMBEDDER};" in headers["content-security-policy"]
        assert "x-frame-options" not in headers
        headers = page.request.get(a.url + "/desk/login").headers
        assert "frame-ancestors 'self';" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "SAMEORIGIN"

        page.goto(b.url + bill["cashier_url"])
        page.click("#lang")
        page.wait_for_selector("#read-card")
        assert page.inner_text("h1").startswith("Cashier") and page.inner_text("#read-card") == "Read card"
        shot(page, "desk_cashier_en")
        page.goto(b.url + "/desk/cashier")
        assert "New bill" in page.inner_text("main")
        page.fill("input[name=dise_codg]", "J06.9")
        page.fill("input[name=code0]", CONSULT["med_list_codg"])
        page.fill("input[name=name0]", "consultation")
        page.fill("input[name=type0]", "201")
        page.fill("input[name=cnt0]", "1")
        page.fill("input[name=pric0]", "12.00")
        page.click("#create-bill")
        page.wait_for_selector("#read-card")
        assert page.inner_text("#bill-total") == "12.00"
        shot(page, "desk_cashier_walk_in_en")
        page.click("#logout")
        page.wait_for_selector("#token")
        page.goto(b.url + bill["cashier_url"])
        assert "/desk/login" in page.url
    finally:
        ctx.close()

    # the HIS's bill API takes the HIS token only, and checks the bill
    status, answer = http("POST", b.url + "/desk/api/bills", _bill("X", P1, [CONSULT], HOSPITAL_B),
                          world["tokens"]["cashier_b"])  # fmt: skip
    assert status == 401
    bad = _bill("DESK-B-BAD", P1, [{**CONSULT, "det_item_fee_sumamt": "12.001"}], HOSPITAL_B)
    status, answer = http("POST", b.url + "/desk/api/bills", bad, b.token)
    assert status == 400 and answer["error"]["code"] == "validation_failed"
    status, answer = http("POST", b.url + "/desk/api/bills", {**bad, "psn": {"certno": "1"}}, b.token)
    assert status == 400 and answer["error"]["details"][0]["field"] == "psn.certno"


def test_a_lost_card_reported_at_the_desk_becomes_a_pending_change(world: dict, context: BrowserContext):
    """The cashier's lost-card form chains a ``lost`` card log; it reaches the centre signed, and there it is
    a pending blacklist change of the card made by ``desk:AGENT_ID``; the agent's ``blacklist_applied`` log
    of the bundle it holds is at the centre too (the replacement gate counts it)."""
    a, central = world["a"], world["central"]
    page = _page(context)
    page.goto(a.url + "/desk/cashier")
    page.fill("#token", world["tokens"]["cashier_a"])
    page.click("#sign-in")
    page.wait_for_selector("#lost-card")
    page.fill("#lost-card input[name=card_sn]", "3702 bad")  # not a card identification code
    page.fill("#lost-card input[name=reason]", "lost on the bus")
    page.click("#report-lost")
    page.wait_for_selector("#refusal")
    assert page.get_attribute("#refusal", "data-code") == "validation_failed"
    page.fill("#lost-card input[name=card_sn]", "370200D15600000999")
    page.fill("#lost-card input[name=reason]", "lost on the bus")
    page.click("#report-lost")
    page.wait_for_selector(".flash.ok[data-code=lost_reported]")
    shot(page, "desk_cashier_lost_card")
    wait_until(a.drained, timeout=30, what="the lost-card log reaching the centre")
    conn = sqlite3.connect(f"file:{central.home / 'central.db'}?mode=ro", uri=True)
    try:
        logs = conn.execute("SELECT agent_id, event, card_sn, opter, change_id FROM card_logs").fetchall()
        lost = [r for r in logs if r[1] == "lost"]
        assert [(r[2], r[3]) for r in lost] == [("370200D15600000999", "li.na")]  # the bad report never went
        change = conn.execute("SELECT status, maker, kind, area FROM change_requests WHERE id = ?",
                              (lost[0][4],)).fetchone()  # fmt: skip
        assert change == ("pending", f"desk:{lost[0][0]}", "blacklist", AREA)
        applied = {r[0] for r in logs if r[1] == "blacklist_applied"}
        assert lost[0][0] in applied
    finally:
        conn.close()
