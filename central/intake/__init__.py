"""What comes in: agent enrolment, signed batches stored exactly once (``ingest``, with ``lines`` and
``visits`` built in its read phase), signed statements (``statements``, ``heartbeats``, ``reports``),
``resync``, ``reconcile``, a person's cross-hospital ``history``, reference data (``hospitals``,
``deaths``), hospitals' monthly ``declarations``, ``bulk_import`` of history and its ``cli``, ``export``.
"""
