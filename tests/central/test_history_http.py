"""``GET /v1/persons/{psn_no}/history`` over real HTTP, signed with enrolled agents' real keys."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, date, datetime, timedelta

import pytest
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Response

from central.api import RedactingAccessLogger
from central.intake.enrol import revoke_agent
from central.intake.history import LINE_FIELDS, person_history
from central.intake.hospitals import set_hospital
from central.intake.ingest import Ingestor
from central.storage.store import SqliteStore
from protocol.batch import KeyPair
from protocol.benefit import is_inpatient
from protocol.records import Settlement
from protocol.wire import (
    PERSON_HISTORY_PATH,
    PROTOCOL_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    decode_ack,
    sign_request,
)

from .conftest import ACTOR, HOSPITAL, Chain, Reply, Server, enrol, reversal, rows, settlement

OTHER = "H11010100002"
PSN = "P0000000001"


def _today() -> date:
    return datetime.now().astimezone().date()  # the centre's "today": the host's local date


def _path(psn_no: str = PSN, query: str = "") -> str:
    return PERSON_HISTORY_PATH.format(psn_no=psn_no) + query


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def get(
    server: Server,
    chain: Chain,
    path: str,
    *,
    at: str | None = None,
    key: KeyPair | None = None,
    agent_id: str | None = None,
    signed_path: str | None = None,
) -> Reply:
    """What an agent sends: the three signed headers over GET, the exact path+query and the time."""
    headers = sign_request(
        key or chain.key, agent_id or chain.agent_id, "GET", signed_path or path, at or _now()
    )
    return server.request("GET", path, headers={**headers, PROTOCOL_HEADER: "1"})


def _code(reply: Reply) -> str:
    return reply.json()["error"]["code"]  # type: ignore[index]


def visit(
    setl_id: str,
    day: date,
    *,
    psn_no: str = PSN,
    hospital: str = HOSPITAL,
    med_type: str = "11",
    hifmi: int = 0,
    hifob: int = 0,
) -> Settlement:
    s = settlement(setl_id, hospital=hospital, psn_no=psn_no, setl_time=f"{day.isoformat()}T10:00:00+08:00")
    s.mdtrt.med_type = med_type
    s.mdtrt.begntime = f"{(day - timedelta(days=2)).isoformat()}T08:00:00+08:00"
    s.mdtrt.dr_codg, s.mdtrt.dept_codg = "D001", "A03"
    s.feedetl[0].days = 5
    if hifmi or hifob:
        s.hifp_pay, s.hifmi_pay, s.hifob_pay = s.fund_pay_sumamt - hifmi - hifob, hifmi, hifob  # type: ignore[operator]
    return s


def upload(server: Server, chain: Chain, *records) -> None:
    first = len(chain.entries) + 1
    for r in records:
        chain.append(r)
    ack = decode_ack(server.post_batch(chain.batch(first, len(chain.entries))).body)
    assert ack.code == "stored" and ack.rejected == []


@pytest.fixture
def other(server: Server) -> Chain:
    return enrol(server.store, OTHER)


# -- the answer ----------------------------------------------------------------------------------


def test_a_signed_request_gets_the_cross_hospital_history(server: Server, agent: Chain, other: Chain) -> None:
    today = _today()
    set_hospital(server.store, ACTOR, OTHER, "3")
    upload(server, agent, visit("A1", today - timedelta(days=10)), visit("A2", today - timedelta(days=100)))
    upload(
        server, other,
        visit("B1", today - timedelta(days=3), hospital=OTHER),
        visit("X1", today, psn_no="P0000000002", hospital=OTHER),
    )  # fmt: skip
    reply = get(server, agent, _path())
    assert reply.status == 200 and reply.headers[PROTOCOL_HEADER] == "1"
    assert reply.headers["Cache-Control"] == "no-store"
    body = reply.json()
    assert isinstance(body, dict)
    assert list(body) == ["psn_no", "days", "as_of", "lines", "ytd"]
    assert (body["psn_no"], body["days"]) == (PSN, 90)  # default window
    assert abs(datetime.fromisoformat(body["as_of"]) - datetime.now(UTC)) < timedelta(seconds=30)
    lines = body["lines"]
    assert [(ln["setl_id"], ln["feedetl_sn"]) for ln in lines] == [
        ("A1", "A1-0"),
        ("A1", "A1-1"),
        ("B1", "B1-0"),
        ("B1", "B1-1"),
    ]  # fmt: skip  oldest first, in bill order; A2 is 100 days old, X1 another person
    assert all(list(ln) == list(LINE_FIELDS) for ln in lines)
    assert lines[2] == {
        "setl_id": "B1", "setl_date": (today - timedelta(days=3)).isoformat(),
        "begn_date": (today - timedelta(days=5)).isoformat(), "fixmedins_code": OTHER, "med_type": "11",
        "dise_codg": "J06.900", "dr_codg": "D001", "dept_codg": "A03", "hosp_lv": "3", "feedetl_sn": "B1-0",
        "med_list_codg": "XA01AAA00", "list_type": "101", "cnt": 2, "pric_fen": 1250, "amount_fen": 2500,
        "days": 5,
    }  # fmt: skip
    assert lines[0]["hosp_lv"] is None  # the centre does not know HOSPITAL's grade
    wider = get(server, agent, _path(query="?days=120")).json()
    assert wider["days"] == 120 and {ln["setl_id"] for ln in wider["lines"]} == {"A1", "A2", "B1"}  # type: ignore[index]


def test_a_reversed_settlement_is_not_in_the_history(server: Server, agent: Chain) -> None:
    today = _today()
    s1, s2 = visit("S1", today), visit("S2", today)
    upload(server, agent, s1, s2)
    upload(server, agent, reversal(s1, "R1", setl_time=f"{today}T11:00:00+08:00"))
    body = get(server, agent, _path(query="?days=1")).json()
    assert {ln["setl_id"] for ln in body["lines"]} == {"S2"}  # type: ignore[index]


def test_an_unknown_person_gets_an_empty_answer(server: Server, agent: Chain) -> None:
    body = get(server, agent, _path("P9999")).json()
    assert body["lines"] == [] and body["ytd"] == {  # type: ignore[index]
        "year": _today().year, "medfee_sumamt": 0, "fund_pay_sumamt": 0, "hifmi_pay": 0, "admissions": 0,
        "hifp_pay": 0, "hifob_pay": 0, "by_med_type": {},
    }  # fmt: skip


def test_year_to_date_totals_across_hospitals(server: Server, agent: Chain, other: Chain) -> None:
    today = _today()
    jan1 = date(today.year, 1, 1)
    earlier = max(jan1, today - timedelta(days=200))
    # Each settlement: total 5120, fund 3000 (of which hifmi as given), account 1000, cash 1120.
    kept_out = visit("R0", today)
    no_split = visit("A5", today, med_type="22")
    no_split.fund_pay_sumamt = no_split.hifp_pay = no_split.acct_pay = no_split.psn_cash_pay = None
    upload(
        server, agent,
        visit("A1", today, med_type="21", hifmi=500),  # an admission
        visit("A2", earlier, med_type="2101", hifmi=200),  # an admission (a local subtype of 21)
        visit("A3", earlier),  # outpatient
        visit("A4", today, med_type="52", hifob=300),  # an admission (maternity)
        no_split,  # an admission (22) whose split is not computed: its total counts, no fund share
        kept_out,
        visit("OLD", jan1 - timedelta(days=1), med_type="21", hifmi=999),  # last year
        visit("P2", today, psn_no="P0000000002", med_type="21", hifmi=999),  # another person
    )  # fmt: skip
    upload(server, agent, reversal(kept_out, "R0-REV"))  # reversed: not counted
    upload(server, other, visit("B1", today, hospital=OTHER, med_type="14", hifmi=100))
    ytd = get(server, agent, _path(query="?days=1")).json()["ytd"]  # type: ignore[index]
    by_type = ytd.pop("by_med_type")
    assert sum(t["medfee_sumamt"] for t in by_type.values()) == 6 * 5120
    b1 = {"medfee_sumamt": 5120, "hifp_pay": 2900, "large_amount_paid": 100, "settlements": 1}
    assert by_type["14"] == b1
    assert sorted(by_type) == ["11", "14", "21", "2101", "22", "52"]
    assert ytd == {
        "year": today.year,
        "medfee_sumamt": 6 * 5120,  # A1-A5 and B1 (at another hospital)
        "fund_pay_sumamt": 5 * 3000,  # A5 has none
        "hifmi_pay": 500 + 200 + 100,
        "admissions": 4,  # A1 (21), A2 (2101), A4 (52), A5 (22)
        "hifp_pay": 2500 + 2800 + 3000 + 2700 + 2900,  # each fund share less its other parts
        "hifob_pay": 300,
    }


def test_admissions_are_counted_as_the_benefit_split_counts_them(store, chain: Chain) -> None:
    today = date(2026, 6, 30)
    med_types = ["11", "14", "21", "2101", "22", "24", "28", "41", "51", "52", "9901", "2"]
    for i, med_type in enumerate(med_types):
        chain.append(visit(f"T{i}", today, med_type=med_type))
    assert Ingestor(store).ingest(chain.batch(1, len(med_types))).rejected == []
    ytd = store.read(lambda c: person_history(c, PSN, 1, today)).ytd
    assert ytd["admissions"] == sum(map(is_inpatient, med_types)) == 7


def test_days_window_is_inclusive_of_today_minus_days(store, chain: Chain) -> None:
    today = date(2026, 6, 30)
    chain.append(visit("EDGE", today - timedelta(days=30)))
    chain.append(visit("OUT", today - timedelta(days=31)))
    chain.append(visit("FUTURE", today + timedelta(days=1)))  # a hospital clock ahead: still shown
    Ingestor(store).ingest(chain.batch(1, 3))
    history = store.read(lambda c: person_history(c, PSN, 30, today))
    assert {ln["setl_id"] for ln in history.lines} == {"EDGE", "FUTURE"}


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "?days=0",
        "?days=367",
        "?days=abc",
        "?days=%2B5",
        "?days=",
        "?days=1.5",
        "?days=30&days=60",
        "?days=1000",
    ],
)
def test_days_out_of_bounds_is_refused(server: Server, agent: Chain, query: str) -> None:
    reply = get(server, agent, _path(query=query))
    assert reply.status == 400 and _code(reply) == "decode_malformed"


@pytest.mark.parametrize("days", ["1", "366"])
def test_days_at_the_bounds_is_answered(server: Server, agent: Chain, days: str) -> None:
    reply = get(server, agent, _path(query=f"?days={days}"))
    assert reply.status == 200 and reply.json()["days"] == int(days)  # type: ignore[index]


@pytest.mark.parametrize("psn_no", ["P%20X", "P" * 65, "%E5%BC%A0"])
def test_a_malformed_psn_no_is_refused(server: Server, agent: Chain, psn_no: str) -> None:
    reply = get(server, agent, _path(psn_no))
    assert reply.status == 400 and _code(reply) == "decode_malformed"


def test_an_unsigned_request_is_refused(server: Server, agent: Chain) -> None:
    reply = server.request("GET", _path())
    assert reply.status == 401 and _code(reply) == "request_unsigned"
    headers = sign_request(agent.key, agent.agent_id, "GET", _path(), _now())
    del headers[TIME_HEADER]
    reply = server.request("GET", _path(), headers=headers)
    assert reply.status == 401 and _code(reply) == "request_unsigned"


def test_an_unknown_agent_is_refused(server: Server) -> None:
    stranger = Chain("H11010100001-99", KeyPair.generate())
    reply = get(server, stranger, _path())
    assert reply.status == 403 and _code(reply) == "agent_unknown"


def test_a_revoked_agent_is_refused(server: Server, agent: Chain) -> None:
    revoke_agent(server.store, agent.agent_id)
    reply = get(server, agent, _path())
    assert reply.status == 403 and _code(reply) == "agent_revoked"


def test_a_bad_signature_is_refused_and_recorded(server: Server, agent: Chain) -> None:
    cases = [
        get(server, agent, _path(), key=KeyPair.generate()),  # another key
        get(server, agent, _path(query="?days=366"), signed_path=_path(query="?days=30")),  # query changed
        get(server, agent, _path("P0000000002"), signed_path=_path()),  # another person
    ]
    headers = sign_request(agent.key, agent.agent_id, "GET", _path(), _now())
    cases.append(server.request("GET", _path(), headers={**headers, SIGNATURE_HEADER: "not hex"}))
    for reply in cases:
        assert reply.status == 422 and _code(reply) == "signature_invalid"
    events = rows(server.store, "SELECT agent_id, code, remote, repeats FROM security_events")
    logged = rows(server.store, "SELECT count(*) FROM person_access_log")[0][0]
    assert events == [(agent.agent_id, "signature_invalid", "127.0.0.1", 3)]  # folded: one source, one code
    assert logged == 0


def test_a_signature_made_for_another_time_is_refused(server: Server, agent: Chain) -> None:
    headers = sign_request(agent.key, agent.agent_id, "GET", _path(), _now())
    headers[TIME_HEADER] = (datetime.now(UTC) + timedelta(seconds=1)).isoformat(timespec="seconds")
    reply = server.request("GET", _path(), headers=headers)
    assert reply.status == 422 and _code(reply) == "signature_invalid"


@pytest.mark.parametrize("offset_s", [-301, 301, -86_400 * 365])
def test_a_stale_or_future_time_is_refused(server: Server, agent: Chain, offset_s: int) -> None:
    at = (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="seconds")
    reply = get(server, agent, _path(), at=at)
    assert reply.status == 401 and _code(reply) == "request_stale"
    assert rows(server.store, "SELECT count(*) FROM person_access_log")[0][0] == 0


def test_a_time_within_the_skew_is_answered(server: Server, agent: Chain) -> None:
    at = (datetime.now(UTC) - timedelta(seconds=280)).astimezone().isoformat()  # any offset, sub-seconds
    assert get(server, agent, _path(), at=at).status == 200


@pytest.mark.parametrize("at", ["yesterday", "2026-11-25T10:00:00"])  # not a time; no UTC offset
def test_a_malformed_time_is_refused(server: Server, agent: Chain, at: str) -> None:
    reply = get(server, agent, _path(), at=at)
    assert reply.status == 400 and _code(reply) == "decode_malformed"


def test_head_and_post_are_not_answered(server: Server, agent: Chain) -> None:
    headers = sign_request(agent.key, agent.agent_id, "POST", _path(), _now())
    assert server.request("POST", _path(), b"", headers=headers).status == 405
    headers = sign_request(agent.key, agent.agent_id, "HEAD", _path(), _now())
    assert server.request("HEAD", _path(), headers=headers).status == 405


# -- the access log and the logs -----------------------------------------------------------------


def test_every_answered_lookup_is_in_the_access_log_without_the_psn_no(
    server: Server, agent: Chain, other: Chain
) -> None:
    upload(server, agent, visit("A1", _today()))
    get(server, agent, _path(query="?days=30"))
    get(server, other, _path("P0000000002"))
    get(server, agent, _path(query="?days=0"))  # refused: not logged
    logged = rows(
        server.store,
        "SELECT at, agent_id, fixmedins_code, psn_hash, days, rows FROM person_access_log ORDER BY id",
    )
    stored = rows(server.store, "SELECT * FROM person_access_log")  # every column of every row
    digest = hashlib.sha256(PSN.encode()).hexdigest()
    assert [r[1:] for r in logged] == [
        (agent.agent_id, HOSPITAL, digest, 30, 2),
        (other.agent_id, OTHER, hashlib.sha256(b"P0000000002").hexdigest(), 90, 0),
    ]
    assert all(abs(datetime.fromisoformat(r[0]) - datetime.now(UTC)) < timedelta(seconds=30) for r in logged)
    assert len(stored) == 2 and not any("P000000000" in repr(row) for row in stored)


def test_logs_never_name_the_person(server: Server, agent: Chain, caplog: pytest.LogCaptureFixture) -> None:
    upload(server, agent, visit("A1", _today()))
    with caplog.at_level(logging.DEBUG):
        assert get(server, agent, _path()).status == 200
        get(server, agent, _path(), key=KeyPair.generate())
        get(server, agent, _path(), at="2020-01-01T00:00:00+00:00")
        get(server, agent, _path(query="?days=999"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "history" in text and PSN not in text


def test_the_servers_access_log_hides_the_psn_no(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.access")
    request = make_mocked_request("GET", _path(query="?days=30"))
    with caplog.at_level(logging.INFO, logger="test.access"):
        RedactingAccessLogger(logger, "").log(request, Response(status=200), 0.004)
        RedactingAccessLogger(logger, "").log(make_mocked_request("GET", "/v1/health"), Response(), 0.001)
    lines = [r.getMessage() for r in caplog.records]
    assert PSN not in lines[0] and '"GET /v1/persons/-/history" 200' in lines[0]
    assert '"GET /v1/health" 200' in lines[1]


# -- a person with a long history among many -------------------------------------------------------


def test_a_person_with_hundreds_of_lines_gets_them_all_by_the_index(server: Server, agent: Chain) -> None:
    """300 lines of the person among 20,000 of others; the query walks the (psn_no, setl_date) index.

    How long the lookup takes is measured by ``benchmarks/history_lookup.py``, not here.
    """
    today = _today()
    records = [visit(f"M{i:03d}", today - timedelta(days=i % 80)) for i in range(150)]
    records += [visit(f"N{i:05d}", today - timedelta(days=i % 80), psn_no=f"Q{i:09d}") for i in range(10_000)]
    for i in range(0, len(records), 1000):
        upload(server, agent, *records[i : i + 1000])
    if isinstance(server.store, SqliteStore):
        sql = "EXPLAIN QUERY PLAN SELECT * FROM hist_lines WHERE psn_no = ? AND setl_date >= ?"
        plan = " ".join(r[3] for r in rows(server.store, sql, (PSN, "x")))
        assert "USING INDEX hist_lines_psn_no_setl_date" in plan
    else:  # PostgreSQL plans by its statistics; the index the lookup needs is there
        indexes = rows(server.store, "SELECT indexdef FROM pg_indexes WHERE tablename = 'hist_lines'")
        assert any("(psn_no NULLS FIRST, setl_date NULLS FIRST)" in r[0] for r in indexes), indexes
    reply = get(server, agent, _path())
    assert reply.status == 200
    lines = reply.json()["lines"]  # type: ignore[index]
    assert len(lines) == 300 and {ln["setl_id"] for ln in lines} == {f"M{i:03d}" for i in range(150)}
