"""The console's parts that need no browser: session expiry, labels, money text, escaping in charts."""

from __future__ import annotations

import pytest

from central.web import auth, charts, i18n
from central.web.routes import _safe_next, yuan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_when_idle_and_at_its_maximum_age():
    clock = Clock()
    sessions = auth.Sessions(clock)
    s = sessions.create("yop_token", "li")
    assert s.id != s.csrf and len(s.id) >= 40
    clock.now += auth.IDLE_S - 1
    assert sessions.get(s.id) is s  # used: the idle time starts again
    clock.now += auth.IDLE_S + 1
    assert sessions.get(s.id) is None and len(sessions) == 0  # idle too long: gone
    s = sessions.create("yop_token", "li")
    for _ in range(auth.MAX_AGE_S // (auth.IDLE_S - 1) + 1):
        clock.now += auth.IDLE_S - 1
        sessions.get(s.id)
    assert sessions.get(s.id) is None  # used all along, but older than the maximum
    assert sessions.get(None) is None and sessions.get("unknown") is None
    t = sessions.create("yop_other", "wang")
    sessions.drop(t.id)
    assert sessions.get(t.id) is None


def test_labels_exist_in_both_languages_and_unknown_keys_fail():
    zh, en = i18n.translator("zh"), i18n.translator("en")
    assert zh("login") == "登录" and en("login") == "Log in"
    assert all(len(pair) == 2 and all(pair) for pair in i18n.MESSAGES.values())
    with pytest.raises(KeyError):
        zh("no_such_label")


def test_money_is_shown_exactly_from_fen():
    assert [yuan(v) for v in (0, 5, 5120, 123456789, -250)] == [
        "0.00", "0.05", "51.20", "1,234,567.89", "-2.50"
    ]  # fmt: skip
    assert yuan(None) == ""


def test_only_console_paths_are_followed_after_login():
    assert _safe_next("/console/cases/3") == "/console/cases/3"
    for bad in ("https://evil.example/", "//evil.example/console/", "/v1/agents", None, "/console/\\x"):
        assert _safe_next(bad) == "/console/suspicions"


def test_chart_labels_are_escaped():
    evil = "<script>alert(1)</script>"
    for svg in (
        charts.bar_chart([(evil, 2.0)], label=evil),
        charts.line_chart(["11-01", "11-02"], {evil: [1.0, 2.0]}, label=evil),
        charts.risk_map([{"fixmedins_code": "H1", "name": evil, "lat": 36.0, "lon": 120.3, "open": 2,
                          "light": "red"}], label=evil),
    ):
        assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert charts.bar_chart([]) == "" and charts.risk_map([{"fixmedins_code": "H1", "lat": None}]) == ""
    assert 'data-light="red"' in charts.risk_map(
        [{"fixmedins_code": "H1", "lat": 36.0, "lon": 120.3, "open": 1, "light": "red"}]
    )
