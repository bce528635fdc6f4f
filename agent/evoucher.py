"""E-vouchers at the desk: scanned QR text → a verified ``Identity``, each voucher accepted once.

``protocol.evoucher.verify_voucher`` proves the voucher is well formed, signed by an issuer
this agent trusts and inside its validity window. What it cannot know is whether the same code
was already shown here: a screenshot of a phone would otherwise identify the person again and
again. So every accepted voucher's nonce goes into a small ledger of its own
(``HOME/evoucher.db``), inserted atomically *before* the identity is returned; a second use is
refused with ``evoucher_replayed``. The centre repeats the check across hospitals when the
settlement arrives.

The ledger is its own SQLite file (WAL, ``synchronous=FULL``) rather than a table in the outbox,
so that scanning never waits behind the outbox writer's group commits and the outbox's
migrations stay about settlements. It holds nothing personal: the nonce, the issuer key id, the
voucher's expiry and when it was used. Rows are pruned 90 days after the voucher expired: long
enough for the settlement at the end of an inpatient stay to name the voucher scanned at
admission (``seen``).

A voucher whose nonce was recorded but whose answer never reached the HIS (a dropped
connection) is spent: the patient refreshes the code, which costs a second, whereas accepting
it twice would defeat the ledger.

Safe to call from the event loop or from worker threads: the verification is pure and the one
ledger connection is guarded by a lock.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol.errors import VoucherError, VoucherReplayed
from protocol.evoucher import DEFAULT_SKEW_S, VoucherClaims, load_issuers, verify_voucher

from .config import AgentConfig
from .errors import ConfigError, VoucherLedgerFailed, VoucherRejected
from .identity import CERT_TYPE_EVOUCHER, Identity

__all__ = ["PRUNE_AFTER_S", "NonceLedger", "VoucherVerifier", "open_verifier"]

log = logging.getLogger("yibao.agent.evoucher")

#: Ledger rows are kept this long after their voucher expired: a settlement names the nonce it was
#: identified by, and an inpatient stay can end weeks after the voucher was scanned at admission.
PRUNE_AFTER_S = 90 * 24 * 3600
#: Pruning runs at most this often (seconds), from inside ``record``.
PRUNE_EVERY_S = 600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS used_nonces (
    nonce      TEXT PRIMARY KEY,
    kid        TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS used_nonces_expires ON used_nonces (expires_at);
PRAGMA user_version = 1;
"""


class NonceLedger:
    """Nonces of accepted vouchers; ``record`` either inserts (first use) or raises ``VoucherReplayed``."""

    def __init__(self, path: Path | str, *, prune_after_s: float = PRUNE_AFTER_S) -> None:
        self.path = Path(path)
        self.prune_after_s = prune_after_s
        self._lock = threading.Lock()
        self._last_prune = float("-inf")
        conn = None
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version <= 1:
                conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise VoucherLedgerFailed(
                f"cannot open the e-voucher ledger {self.path}: {exc}; check the agent's disk and the "
                "file's permissions"
            ) from exc
        if version > 1:
            conn.close()
            raise ConfigError(
                f"the e-voucher ledger {self.path} was written by a newer agent (schema {version}); "
                "run that version, or move the file aside (replay protection restarts empty)"
            )
        self._conn = conn

    def record(self, claims: VoucherClaims, now: float) -> None:
        """Spend the voucher's nonce: one atomic, fsynced INSERT; a nonce seen before is a replay."""
        try:
            with self._lock:
                if time.monotonic() - self._last_prune >= PRUNE_EVERY_S:
                    self._prune_locked(now)
                inserted = self._conn.execute(
                    "INSERT INTO used_nonces (nonce, kid, expires_at, used_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (nonce) DO NOTHING",
                    (claims.nonce, claims.kid, claims.expires_at, int(now)),
                ).rowcount
                if inserted == 1:
                    return
                row = self._conn.execute(
                    "SELECT used_at FROM used_nonces WHERE nonce = ?", (claims.nonce,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise VoucherLedgerFailed(
                f"cannot record the e-voucher in the ledger {self.path}: {exc}; the voucher was not "
                "accepted. Check the agent's disk (free space, permissions); meanwhile use the "
                "social-security card"
            ) from exc
        ago = f" {max(0, int(now) - row[0])} s ago" if row else ""
        raise VoucherReplayed(
            f"this e-voucher was already used{ago}; each code identifies a person once: ask the "
            "patient to refresh the code in the app and scan the new code"
        )

    def seen(self, nonce: str) -> bool:
        """Whether this agent accepted a voucher with this nonce (a settlement may then name it)."""
        with self._lock:
            return (
                self._conn.execute("SELECT 1 FROM used_nonces WHERE nonce = ?", (nonce,)).fetchone()
                is not None
            )

    def prune(self, now: float) -> int:
        """Delete rows of vouchers expired more than ``prune_after_s`` ago; returns how many."""
        with self._lock:
            return self._prune_locked(now)

    def _prune_locked(self, now: float) -> int:
        self._last_prune = time.monotonic()
        cur = self._conn.execute(
            "DELETE FROM used_nonces WHERE expires_at < ?", (int(now - self.prune_after_s),)
        )
        return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT count(*) FROM used_nonces").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class VoucherVerifier:
    """Scanned text → ``Identity`` (method ``evoucher``), or a ``VoucherRejected`` the HIS can show."""

    def __init__(
        self,
        issuers: Mapping[str, Ed25519PublicKey],
        ledger: NonceLedger,
        *,
        skew_s: float = DEFAULT_SKEW_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if skew_s < 0:
            raise ConfigError("evoucher_skew_s must not be negative")
        self.issuers = dict(issuers)
        self.issuers_source = "agent.json"
        self.ledger = ledger
        self.skew_s = skew_s
        self.clock = clock

    def set_issuers(self, issuers: Mapping[str, Ed25519PublicKey], *, source: str = "keys bundle") -> None:
        """Replace the trusted issuer keys at runtime (the signed ``keys`` bundle replaces agent.json's).

        The dict is swapped in one assignment, so a scan in another thread sees the old or the new set,
        never a mix.
        """
        self.issuers = dict(issuers)
        self.issuers_source = source
        log.info(
            "e-voucher issuer keys now from the %s: %s", source, ", ".join(sorted(self.issuers)) or "none"
        )

    def verify(self, text: str, *, now: float | None = None) -> Identity:
        """Verify signature and times, spend the nonce, and return who the voucher names.

        Refusals raise ``VoucherRejected`` carrying the protocol's code (``evoucher_malformed``,
        ``evoucher_bad_signature``, ``evoucher_unknown_issuer``, ``evoucher_expired``,
        ``evoucher_not_yet_valid``, ``evoucher_replayed``…); a ledger that cannot be written
        raises ``VoucherLedgerFailed`` (503). Nothing personal is logged.
        """
        now = self.clock() if now is None else now
        try:
            claims = verify_voucher(text, self.issuers, now, self.skew_s)
            self.ledger.record(claims, now)
        except VoucherError as exc:
            log.info("e-voucher refused: %s", exc.code)
            raise VoucherRejected.from_protocol(exc) from None
        return Identity(
            method="evoucher",
            mdtrt_cert_type=CERT_TYPE_EVOUCHER,
            psn_no=claims.psn_no,
            insuplc_admdvs=claims.insuplc_admdvs,
            mdtrt_cert_no=claims.nonce,
            issued=claims.issued_iso,
            expires=claims.expires_iso,
            authenticated=True,
            issuer_kid=claims.kid,
        )

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> VoucherVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_verifier(config: AgentConfig, *, clock: Callable[[], float] = time.time) -> VoucherVerifier:
    """The verifier the agent serves with: issuer keys from ``agent.json``, ledger in ``HOME``.

    A bad issuer key is a ``ConfigError`` at start (naming the key id), not a surprise at the
    desk. No issuer keys at all is allowed: every voucher is then refused as
    ``evoucher_unknown_issuer`` with a message telling the operator to configure them.
    """
    try:
        issuers = load_issuers(config.evoucher_issuers)
    except ValueError as exc:
        raise ConfigError(f"{config.config_path}: {exc}") from None
    if config.evoucher_skew_s < 0:
        raise ConfigError(f"{config.config_path}: evoucher_skew_s must not be negative")
    if not issuers:
        log.warning(
            "no e-voucher issuer keys configured: every e-voucher will be refused until "
            "'evoucher_issuers' is set in %s",
            config.config_path,
        )
    ledger = NonceLedger(config.evoucher_db_path)
    return VoucherVerifier(issuers, ledger, skew_s=config.evoucher_skew_s, clock=clock)
