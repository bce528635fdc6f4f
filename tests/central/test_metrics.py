"""The centre's ``/metrics``: real batches, a published bundle and a screening run, then ``curl`` and
prometheus-client's parser.

The app is ``create_app``'s, given the test's own ``CentralMetrics``, on a loopback port. The page
must follow what was ingested, published and screened, answer only an operator's token (narrowed to the
operator's areas), and hold no personal data.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from central.api import REPO_KEY
from central.cli import init_home
from central.config import CentralConfig
from central.intake.hospitals import set_hospital
from central.metrics import CentralMetrics
from central.monitoring.screening import screen
from central.operators import add_operator
from central.policy.bundles import Policy
from central.policy.tuf_repo import TufRepository
from tests.metrics_page import curl, samples, value

from .conftest import ACTOR, AREA, HOSPITAL, Server, enrol, settlement, start_server

#: Personal data in what the centre holds: none of it may appear anywhere on the page.
PSN_NO = "11010000000007654321"
ASKED_PSN_NO = "11010000000001111111"
BLOCKED_CARD = "B55667788"
OTHER_AREA = "120100"

CATALOGUE = {
    "area": AREA,
    "format": 1,
    "items": [
        {"code": "XA01AAA00", "name": "test drug A", "list_type": "101", "class": "A"},
        {"code": "XA01AAA01", "name": "test drug B", "list_type": "101", "class": "A"},
    ],
}
RULES = {
    "area": AREA,
    "format": 1,
    "rules": [
        {
            "id": "visits",
            "version": 1,
            "template": "frequent_visits",
            "severity": "warn",
            "mode": "enforce",
            "action": "prompt",
            "moments": ["post"],
            "params": {"max_visits": 1, "days": 30},
        }
    ],
}


@pytest.fixture
def served(config: CentralConfig) -> Iterator[tuple[Server, CentralMetrics]]:
    metrics = CentralMetrics()
    server, stop = start_server(config, metrics=metrics)
    try:
        yield server, metrics
    finally:
        stop()


def test_page_follows_ingest_publishing_and_screening_and_names_no_person(served, config, signers) -> None:
    server, _metrics = served
    _, token = add_operator(server.store, ACTOR, "prometheus", area=AREA)
    chain = enrol(server.store)
    for i in range(3):
        chain.append(settlement(f"S{i}", psn_no=PSN_NO, setl_time=f"2026-11-2{i}T10:00:00+08:00"))
    assert server.post_batch(chain.batch(1, 3)).status == 200
    again = server.post_batch(chain.batch(1, 3))
    assert again.status == 200 and again.msgpack()["code"] == "duplicate"
    assert server.post_batch(chain.batch(1, 3)[:-9]).status == 400  # cut short: not a batch
    assert server.request("GET", f"/v1/persons/{ASKED_PSN_NO}/history?days=30").status == 401  # unsigned
    assert server.request("GET", f"/v1/no-such-route/{ASKED_PSN_NO}").status == 404

    policy = Policy(server.store, TufRepository.open(config), config)
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id=BLOCKED_CARD, reason="lost", area=AREA)
    set_hospital(server.store, ACTOR, HOSPITAL, "0")
    policy.publish_document(ACTOR, signers, "catalogue", CATALOGUE)
    policy.publish_document(ACTOR, signers, "rules", RULES)
    summary = screen(server.store, "2026-11-01", "2026-11-30", repo=server.app[REPO_KEY], workers=1)
    assert summary["settlements"] == 3 and summary["hits"] >= 1

    status, text = curl(server.url + "/metrics", token)
    assert status == 200
    page = samples(text)
    agent = chain.agent_id
    assert value(page, "yibao_central_ingest_records_total", outcome="stored") == 3
    assert value(page, "yibao_central_ingest_records_total", outcome="duplicate") == 3
    assert value(page, "yibao_central_ingest_batches_total", code="stored") == 1
    assert value(page, "yibao_central_ingest_batches_total", code="duplicate") == 1
    assert value(page, "yibao_central_ingest_batches_total", code="decode_malformed") == 1
    assert value(page, "yibao_central_ingest_duration_seconds_count") == 3
    assert value(page, "yibao_central_agent_acked_seq", agent_id=agent) == 3
    assert value(page, "yibao_central_records_held") == 3
    assert value(page, "yibao_central_agent_last_seen_timestamp_seconds", agent_id=agent) > 0
    assert value(page, "yibao_central_agent_revoked", agent_id=agent) == 0
    assert value(page, "yibao_central_agent_bundles_behind", agent_id=agent, kind="blacklist") == 1
    assert value(page, "yibao_central_agent_bundles_behind", agent_id=agent, kind="rules") == 1
    requests = "yibao_central_http_requests_total"
    assert value(page, requests, method="POST", route="/v1/batches", status="200") == 2
    assert value(page, requests, method="POST", route="/v1/batches", status="400") == 1
    history = "/v1/persons/{psn_no}/history"
    assert value(page, requests, method="GET", route=history, status="401") == 1
    assert value(page, requests, method="GET", route="unmatched", status="404") == 1
    assert value(page, "yibao_central_http_request_duration_seconds_count", method="GET", route=history) == 1
    assert value(page, "yibao_central_bundle_seq", area=AREA, kind="blacklist") == 1
    assert value(page, "yibao_central_bundle_seq", area=AREA, kind="rules") == 1
    assert value(page, "yibao_central_bundle_age_seconds", area=AREA, kind="blacklist") >= 0
    versions = server.app[REPO_KEY].versions()
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert value(page, "yibao_central_tuf_version", role=role) == versions[role]
        assert value(page, "yibao_central_tuf_expires_timestamp_seconds", role=role) > 0
    assert value(page, "yibao_central_screen_runs_total", kind="full") == 1
    assert value(page, "yibao_central_screen_last_settlements", kind="full") == 3
    assert value(page, "yibao_central_screen_last_hits", kind="full") == summary["hits"]
    assert value(page, "yibao_central_screen_last_duration_seconds", kind="full") >= 0
    assert value(page, "yibao_central_screen_last_finished_timestamp_seconds", kind="full") > 0
    assert value(page, "yibao_central_screen_backlog_settlements") in (0, 3)  # the background screen may run
    for personal in (PSN_NO, ASKED_PSN_NO, BLOCKED_CARD):
        assert personal not in text


def test_page_answers_an_operator_token_only_and_only_their_areas(served) -> None:
    server, _metrics = served
    _, token = add_operator(server.store, ACTOR, "prometheus", area=AREA)
    _, elsewhere = add_operator(server.store, ACTOR, "elsewhere", area=OTHER_AREA)
    chain = enrol(server.store)
    chain.append(settlement("S1", psn_no=PSN_NO))
    assert server.post_batch(chain.batch(1, 1)).status == 200
    for bad in (None, "", "yop_not-a-token"):
        status, text = curl(server.url + "/metrics", bad)
        assert status == 401
        assert '"operator_token_invalid"' in text and "yibao_central" not in text
        assert chain.agent_id not in text and PSN_NO not in text
    status, text = curl(server.url + "/metrics", elsewhere)
    assert status == 200
    page = samples(text)
    assert value(page, "yibao_central_agent_acked_seq", agent_id=chain.agent_id) is None
    assert chain.agent_id not in text  # another area's agent is not named
    assert value(page, "yibao_central_ingest_batches_total", code="stored") == 1  # centre-wide counts are
    status, text = curl(server.url + "/metrics", token)
    page = samples(text)
    assert value(page, "yibao_central_agent_acked_seq", agent_id=chain.agent_id) == 1
    assert value(page, "yibao_central_http_requests_total", method="GET", route="/metrics", status="401") == 3


def test_open_access_serves_anyone_and_two_centres_do_not_clash(config, tmp_path) -> None:
    other = CentralConfig(home=tmp_path / "other", listen="127.0.0.1:0", insecure_dev=True)
    init_home(other)
    first, stop_first = start_server(config, metrics=CentralMetrics(open_access=True))
    second, stop_second = start_server(other, metrics=CentralMetrics(open_access=True))
    try:
        chain = enrol(first.store)
        chain.append(settlement("S1", psn_no=PSN_NO))
        assert first.post_batch(chain.batch(1, 1)).status == 200
        status, text = curl(first.url + "/metrics", None)
        assert status == 200
        assert value(samples(text), "yibao_central_ingest_records_total", outcome="stored") == 1
        status, text = curl(second.url + "/metrics", None)
        assert status == 200
        assert value(samples(text), "yibao_central_ingest_records_total", outcome="stored") is None
    finally:
        stop_first()
        stop_second()


def test_codes_only_in_labels_and_a_failing_source_is_counted(store) -> None:
    metrics = CentralMetrics()
    metrics.observe_ingest(2, 0.05, "stored", rejected=1)
    metrics.observe_ingest(0, 0.01, f"refused for {PSN_NO}")

    class Broken:
        def root_md(self) -> None:
            raise OSError("the repository is gone")

    text = metrics.exposition(store, Broken(), None).decode()  # type: ignore[arg-type]
    page = samples(text)
    assert value(page, "yibao_central_ingest_batches_total", code="other") == 1
    assert value(page, "yibao_central_ingest_records_total", outcome="rejected") == 1
    assert value(page, "yibao_central_metrics_collect_errors_total", source="tuf") == 1
    assert value(page, "yibao_central_screen_runs_total", kind="full") == 0  # the other sources still read
    assert PSN_NO not in text
