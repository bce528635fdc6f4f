"""``JsonFormatter`` through a real ``logging`` handler: one parseable object per line, whatever is logged."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from protocol.logging_json import JsonFormatter


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter({"service": "agent"}))
    logger = logging.getLogger("yibao.test.logjson")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def test_each_record_is_one_object_on_one_line_with_its_extras(logged) -> None:
    logger, stream = logged
    logger.info("batch %d-%d stored", 1, 3, extra={"agent_id": "H1-01", "records": 3, "ok": True})
    logger.warning("two\nlines and 中文", extra={"code": "chain_broken"})
    first, second = lines(stream)
    assert first["message"] == "batch 1-3 stored" and first["level"] == "INFO"
    assert first["logger"] == "yibao.test.logjson" and first["service"] == "agent"
    assert (first["agent_id"], first["records"], first["ok"]) == ("H1-01", 3, True)
    assert datetime.fromisoformat(first["time"]).utcoffset().total_seconds() == 0
    assert second["message"] == "two\nlines and 中文" and second["code"] == "chain_broken"
    assert "exception" not in first


def test_an_exception_is_a_field_of_the_same_line(logged) -> None:
    logger, stream = logged
    try:
        raise ValueError("the record does not add up")
    except ValueError:
        logger.exception("ingest failed", extra={"seq": 7})
    (record,) = lines(stream)
    assert record["level"] == "ERROR" and record["seq"] == 7
    assert (
        record["exception"].startswith("Traceback")
        and "ValueError: the record does not add up" in (record["exception"])
    )


def test_extras_that_are_not_json_or_clash_with_a_fixed_field_are_kept(logged) -> None:
    logger, stream = logged
    logger.info("odd extras", extra={"level_hint": {1, 2}, "time": "noon", "when": datetime(2026, 1, 2)})
    (record,) = lines(stream)
    assert record["extra_time"] == "noon" and record["time"] != "noon"
    assert record["level_hint"] in ("{1, 2}", "{2, 1}") and record["when"] == "2026-01-02 00:00:00"


def test_stack_info_is_kept(logged) -> None:
    logger, stream = logged
    logger.debug("where am I", stack_info=True)
    (record,) = lines(stream)
    assert record["stack"].startswith("Stack (most recent call last)")
