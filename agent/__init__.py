"""The edge agent: beside each hospital's HIS, it settles durably and uploads forever.

Modules: ``intake`` (HIS JSON → validated record), ``store`` (the outbox: one writer,
group commit, hash chain, quarantine, dead letters), ``uploader`` (signed batches with
retry), ``api`` (HIS-facing HTTP), ``enrol`` (identity and registration), ``service``
(wiring), ``config``, ``errors``, ``cli``.
"""

__all__: list[str] = []
