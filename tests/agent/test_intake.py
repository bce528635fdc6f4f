"""HIS JSON → record: exact money, field-level errors, personal data dropped."""

from __future__ import annotations

import json

import pytest

from agent.intake import parse_settlement
from protocol.chain import encode_body
from protocol.errors import ValidationFailed


def _parse(data: dict) -> object:
    return parse_settlement(json.dumps(data).encode())


def _fields(exc: pytest.ExceptionInfo) -> set[str]:
    return {d["field"] for d in exc.value.details}


def test_example_parses_to_exact_fen(settlement):
    record, digest = _parse(settlement)
    assert record.medfee_sumamt == 5120
    assert [ln.det_item_fee_sumamt for ln in record.feedetl] == [3920, 1200]
    assert record.feedetl[0].pric == "19.6" and record.feedetl[0].cnt == "2"
    assert record.setl_id.startswith("H37021100001-") and record.setl_time
    assert len(digest) == 32


def test_json_numbers_are_exact_not_float(settlement):
    settlement["feedetl"][0]["pric"] = 0.1
    settlement["feedetl"][0]["cnt"] = 3
    settlement["feedetl"][0]["det_item_fee_sumamt"] = 0.3
    settlement["medfee_sumamt"] = 12.3
    body = json.dumps(settlement).encode()
    record, _ = parse_settlement(body)
    assert record.medfee_sumamt == 1230  # 0.1 * 3 + 12.00, exactly
    assert record.feedetl[0].pric == "0.1"


def test_same_content_same_digest_regardless_of_time(settlement):
    _, d1 = _parse(settlement)
    _, d2 = _parse(settlement)
    settlement["feedetl"][1]["medins_list_name"] = "other"
    _, d3 = _parse(settlement)
    assert d1 == d2 != d3


def test_malformed_json_is_a_field_error():
    with pytest.raises(ValidationFailed) as exc:
        parse_settlement(b'{"fixmedins_code": ')
    assert exc.value.code == "validation_failed" and exc.value.details


def test_unknown_field_is_named(settlement):
    settlement["mdtrt"]["bogus"] = 1
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert "bogus" in exc.value.details[0]["message"]
    assert exc.value.details[0]["field"] == "$.mdtrt"


def test_missing_field_is_named(settlement):
    del settlement["psn"]["psn_no"]
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert "psn_no" in exc.value.details[0]["message"]


def test_non_numeric_quantity(settlement):
    settlement["feedetl"][0]["cnt"] = "two"
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert exc.value.details[0]["field"] == "$.feedetl[0].cnt"


def test_negative_quantity_and_bad_totals_are_all_listed(settlement):
    settlement["feedetl"][0]["cnt"] = "-2"
    settlement["feedetl"][0]["det_item_fee_sumamt"] = "-39.20"
    settlement["medfee_sumamt"] = "99.99"
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert {"feedetl[0].cnt", "medfee_sumamt"} <= _fields(exc)


def test_line_total_must_be_cnt_times_price(settlement):
    settlement["feedetl"][0]["det_item_fee_sumamt"] = "39.21"
    settlement["medfee_sumamt"] = "51.21"
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert _fields(exc) == {"feedetl[0].det_item_fee_sumamt"}


def test_sub_fen_amount_refused(settlement):
    settlement["medfee_sumamt"] = "51.201"
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert "medfee_sumamt" in _fields(exc)


def test_split_must_add_up(settlement):
    settlement.update(fund_pay_sumamt="30.00", acct_pay="10.00", psn_cash_pay="11.00")
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert "psn_cash_pay" in _fields(exc)
    settlement["psn_cash_pay"] = "11.20"
    record, _ = _parse(settlement)
    assert (record.fund_pay_sumamt, record.acct_pay, record.psn_cash_pay) == (3000, 1000, 1120)


def test_wrong_hospital_refused(settlement):
    with pytest.raises(ValidationFailed) as exc:
        parse_settlement(json.dumps(settlement).encode(), fixmedins_code="H999")
    assert "fixmedins_code" in _fields(exc)


def test_id_number_and_name_are_dropped(settlement):
    settlement["psn"]["certno"] = "370211195804021234"
    settlement["psn"]["psn_name"] = "张三"
    record, _ = _parse(settlement)
    body = encode_body(record)
    assert b"370211195804021234" not in body
    assert "张三".encode() not in body


def test_naive_national_time_gets_local_offset(settlement):
    settlement["mdtrt"]["begntime"] = "2026-11-23 09:12:00"
    record, _ = _parse(settlement)
    assert record.mdtrt.begntime.startswith("2026-11-23T09:12:00")
    assert len(record.mdtrt.begntime) > len("2026-11-23T09:12:00")


@pytest.mark.parametrize("bad", ["Infinity", "NaN", "1E+400", "-0.01"])
def test_absurd_or_negative_total_is_a_field_error(settlement, bad):
    settlement["medfee_sumamt"] = bad
    with pytest.raises(ValidationFailed) as exc:
        _parse(settlement)
    assert "medfee_sumamt" in _fields(exc)
