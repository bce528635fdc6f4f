"""Agents' signed policy reports: what each agent runs, and how far behind the centre it is.

Rules:

1. A report is stored only when it verifies with the agent's enrolment key
   (``protocol.wire.verify_report``); an unknown or revoked agent is refused, a bad signature is
   refused and recorded as a security event.
2. Only the newest report (by its ``at``) is kept per agent; an older one replayed later is
   accepted (it is genuine) but does not overwrite the newer one, unless the held one claims a
   time in the future (an agent clock since corrected must not freeze its view).
3. "Behind" is, per bundle kind, the centre's newest seq for the agent's pooling area minus the
   seq the agent reports (0 when it never reported one), never below 0.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from datetime import datetime
from typing import Any

from central.errors import (
    MalformedRequest,
)
from central.policy.bundles import newest_seqs
from central.storage.store import AgentRow, Store, agent_summary, list_agents, now_iso
from protocol.bundles import KINDS
from protocol.wire import REPORT_CODEC, PolicyReport

from .heartbeats import held_heartbeats
from .statements import newer_than_held, verified_statement

__all__ = ["MAX_REPORT_BYTES", "agent_views", "record_report"]

log = logging.getLogger(__name__)

MAX_REPORT_BYTES = 64 * 1024
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _check(report: PolicyReport) -> None:
    try:
        datetime.fromisoformat(report.at)
    except ValueError:
        raise MalformedRequest("the report's 'at' is not an ISO-8601 time") from None
    if len(report.versions) > 32 or not all(
        _NAME.match(k) and type(v) is int and 0 <= v < 2**53 for k, v in report.versions.items()
    ):
        raise MalformedRequest("versions must map up to 32 lower-case names to non-negative integers")
    if len(report.problems) > 64 or not all(_CODE.match(p) for p in report.problems):
        raise MalformedRequest("problems must be up to 64 codes of 1-64 letters, digits, '_', '.', ':', '-'")


def record_report(
    store: Store, data: bytes, *, remote: str | None = None, peer_agent: str | None = None
) -> bool:
    """Verify and store an agent's report; True when it is now the agent's newest.

    ``peer_agent``: the agent id of the TLS client certificate; a report of another agent is refused.
    """
    report, _ = verified_statement(
        store, data, REPORT_CODEC, max_bytes=MAX_REPORT_BYTES, check=_check, remote=remote,
        peer_agent=peer_agent,
    )  # fmt: skip

    def tx(conn: sqlite3.Connection) -> bool:
        held = conn.execute(
            "SELECT reported_at FROM agent_reports WHERE agent_id = ?", (report.agent_id,)
        ).fetchone()
        if not newer_than_held(held[0] if held else None, report.at):
            return False
        conn.execute(
            "INSERT INTO agent_reports (agent_id, reported_at, received_at, versions, problems) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (agent_id) DO UPDATE SET reported_at = excluded.reported_at, "
            "received_at = excluded.received_at, versions = excluded.versions, problems = excluded.problems",
            (
                report.agent_id, report.at, now_iso(), json.dumps(dict(sorted(report.versions.items()))),
                json.dumps(list(report.problems)),
            ),
        )  # fmt: skip
        return True

    return store.write(tx)


def agent_views(conn: sqlite3.Connection, hospital: str | None = None) -> list[dict[str, Any]]:
    """``GET /v1/agents``: each agent's summary, pooling area, last report, per-kind lag, and its newest
    heartbeat with how many records the centre lacks (``silent``: none for ``SILENT_AFTER_S``)."""
    newest = newest_seqs(conn)
    reports = {
        r[0]: r[1:]
        for r in conn.execute(
            "SELECT agent_id, reported_at, received_at, versions, problems FROM agent_reports"
        )
    }
    areas = dict(conn.execute("SELECT agent_id, pooling_area FROM agents"))
    beats = held_heartbeats(conn)
    views = []
    agent: AgentRow
    for agent in list_agents(conn, hospital):
        view = agent_summary(agent)
        area = areas.get(agent.agent_id)
        view["pooling_area"] = area
        held = reports.get(agent.agent_id)
        versions: dict[str, int] = json.loads(held[2]) if held else {}
        view["policy"] = (
            {
                "reported_at": held[0],
                "received_at": held[1],
                "versions": versions,
                "problems": json.loads(held[3]),
            }
            if held
            else None
        )
        view["behind"] = {
            kind: max(0, newest.get((area, kind), 0) - versions.get(kind, 0)) if area else None
            for kind in KINDS
        }
        hb = beats.get(agent.agent_id)
        view["heartbeat"] = (
            {
                "at": hb.at,
                "received_at": hb.received_at,
                "last_seq": hb.last_seq,
                "records_behind": max(0, hb.last_seq - agent.acked_seq),
                "oldest_pending_s": hb.oldest_pending_s,
                "silent": hb.silent(),
            }
            if hb
            else None
        )
        views.append(view)
    return views
