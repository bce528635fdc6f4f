"""The national platform's transaction envelope on the agent: ``POST /fsi/api/rsfComIfsService/callService``.

Most HIS products already speak the national medical-insurance platform's JSON envelope (one endpoint,
``infno`` choosing the transaction). Serving the same path lets such a HIS switch to the agent by
changing a host name. Each transaction is mapped onto what the agent already does, through the same
code paths as the REST API (``agent.intake`` validation, ``agent.checks`` rules and split, the durable
outbox), so the two doors can never disagree.

Behaviour that mirrors the platform:

- Transaction errors are HTTP 200 with ``infcode`` -1 and an ``err_msg`` naming the field and what is
  expected; nothing is written on any error (every write runs inside one savepoint in the outbox
  writer's transaction). Authentication is the agent's HIS bearer token (the ``errors`` middleware of
  ``agent.api``, HTTP 401): it guards the connection, not a transaction.
- 9001 sign-in gives a ``sign_no``; every other transaction needs a valid, unexpired one. Sign-ins are
  rows in the agent database (``signins``), so a restart keeps them.
- The same ``msgid`` again answers the first answer (the HIS retries after a lost answer); the same
  ``msgid`` with different content is refused.

The transactions live in the package's other modules (``outpatient``, ``inpatient``, ``pharmacy``,
``reconcile``, ``catalogue``, ``rules``, ``person``); this module owns the envelope, ``national.db`` and
sign-in, and receives the transaction table from ``agent.national.add_national_routes`` (it imports none
of them). See docs/NATIONAL.md for examples and our choices.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from aiohttp import web

from protocol.errors import ProtocolError

from ..card import CardReader
from ..checks import DeskChecks
from ..config import AgentConfig
from ..errors import AgentError, ConfigError, StoreError
from ..evoucher import VoucherVerifier
from ..policy_store import PolicyStore
from ..store import Outbox
from .fields import Fields, NationalError

__all__ = ["NATIONAL_PATH", "SIGN_TTL_S", "Envelope", "Handler", "National", "Stored", "stored_write"]

log = logging.getLogger("yibao.agent.national")

NATIONAL_PATH = "/fsi/api/rsfComIfsService/callService"
#: How long a sign-in stays valid: one working day and a night shift, as the HIS signs in each morning.
SIGN_TTL_S = 24 * 3600.0

_MSGID = re.compile(r"^(?P<code>[A-Za-z0-9]{12})(?P<ts>\d{14})(?P<seq>\d{4})$")
_INF_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# ---- the envelope --------------------------------------------------------------------------------

#: ``opter_type`` code values: 1 operator at a desk, 2 self-service terminal, 3 mobile terminal.
OPTER_TYPES = {"1": "desk operator", "2": "self-service terminal", "3": "mobile terminal"}


@dataclass
class Envelope:
    infno: str
    msgid: str
    opter: str
    opter_name: str
    opter_type: str
    fixmedins_code: str
    mdtrtarea_admvs: str
    insuplc_admdvs: str | None
    sign_no: str | None
    inf_time: str
    input: Any
    received: datetime
    digest: bytes
    raw: dict[str, Any] = field(repr=False, default_factory=dict)


#: ``national.db``: its own file, like ``evoucher.db``, so the outbox's schema and migrations stay about
#: settlements. Sign-ins (they survive a restart, with an expiry), answered msgids (the HIS retries and must
#: get the first answer), people as identified by 1101 (no name, no ID number) and the open visits of the
#: 22xx transactions (registration, diagnoses, fee lines) until they are settled.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS signins (
    sign_no TEXT PRIMARY KEY, opter TEXT NOT NULL, fixmedins_code TEXT NOT NULL,
    signed_in_at REAL NOT NULL, expires_at REAL NOT NULL, signed_out_at REAL
);
CREATE TABLE IF NOT EXISTS msgs (
    msgid TEXT PRIMARY KEY, infno TEXT NOT NULL, digest BLOB NOT NULL, answer TEXT NOT NULL, at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS persons (
    psn_no TEXT PRIMARY KEY, gend TEXT, brdy TEXT, insuplc_admdvs TEXT, card_sn TEXT, at REAL NOT NULL,
    emp_no TEXT, insutype TEXT, psn_type TEXT
);
CREATE TABLE IF NOT EXISTS visits (
    mdtrt_id TEXT PRIMARY KEY, psn_no TEXT NOT NULL, state TEXT NOT NULL, reg TEXT NOT NULL, diseinfo TEXT,
    settle_round INTEGER NOT NULL DEFAULT 0, setl_id TEXT, setlinfo TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, kind TEXT NOT NULL DEFAULT 'otp'
);
CREATE TABLE IF NOT EXISTS fees (
    mdtrt_id TEXT NOT NULL, feedetl_sn TEXT NOT NULL, line TEXT NOT NULL, PRIMARY KEY (mdtrt_id, feedetl_sn)
);
PRAGMA user_version = 2;
"""

#: Version 1 → 2: what the HIS said of the person's employer and insurance (1101 answers it, the next
#: visit carries ``emp_no`` into the settlement for the employer blacklist), and the kind of visit
#: (``otp`` outpatient 22xx, ``ipt`` inpatient 24xx/23xx, ``drug`` drug-store 21xx).
_MIGRATE_2 = """
ALTER TABLE persons ADD COLUMN emp_no TEXT;
ALTER TABLE persons ADD COLUMN insutype TEXT;
ALTER TABLE persons ADD COLUMN psn_type TEXT;
ALTER TABLE visits ADD COLUMN kind TEXT NOT NULL DEFAULT 'otp';
PRAGMA user_version = 2;
"""


def _open(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > 2:
            conn.close()
            raise ConfigError(f"{path} was written by a newer agent (schema {version}); run that version")
        if version < 1:
            conn.executescript(_SCHEMA)
        elif version == 1:
            conn.executescript("BEGIN IMMEDIATE;" + _MIGRATE_2 + "COMMIT;")
    except sqlite3.Error as exc:
        raise StoreError(
            f"cannot open {path}: {exc}; check the agent's disk and the file's permissions"
        ) from exc
    return conn


def _stamp(moment: datetime) -> str:
    """``yyyyMMddHHmmssSSS``: how we write ``refmsg_time`` / ``respond_time`` (local time, milliseconds)."""
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"


Handler = Callable[["National", Envelope], Awaitable[Any]]


class National:
    """The envelope endpoint's state: the database helpers and the transaction table."""

    def __init__(
        self,
        config: AgentConfig,
        outbox: Outbox,
        *,
        card_reader: CardReader | None = None,
        vouchers: VoucherVerifier | None = None,
        policy: PolicyStore | None = None,
        desk: DeskChecks | None = None,
        sign_ttl_s: float = SIGN_TTL_S,
        transactions: dict[str, tuple[Handler, bool]] | None = None,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.card_reader = card_reader
        self.vouchers = vouchers
        self.policy = policy
        self.desk = desk
        self.sign_ttl_s = sign_ttl_s
        self.path = Path(config.home) / "national.db"
        self._db = _open(self.path)
        self._lock = threading.Lock()
        #: Read-only view of the agent database: the ``settlements`` table (3201, 2208 checks).
        self._agent_db = sqlite3.connect(f"file:{outbox.path}?mode=ro", uri=True, check_same_thread=False)
        self._agent_lock = threading.Lock()
        self._refseq = itertools.count(1)
        #: infno → (handler, stored): ``stored`` answers are kept for msgid replay (they wrote something).
        self.transactions: dict[str, tuple[Handler, bool]] = {**SIGN_TRANSACTIONS, **(transactions or {})}

    def close(self) -> None:
        self._db.close()
        self._agent_db.close()

    # ---- storage ---------------------------------------------------------------------------------

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def read_agent(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._agent_lock:
            return self._agent_db.execute(sql, args).fetchall()

    async def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` in one transaction of ``national.db`` (fsynced before the answer); on any error nothing
        of it is kept."""

        def run() -> Any:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return result

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            log.error("national.db write failed: %s", type(exc).__name__)
            raise StoreError(
                f"the agent could not write {self.path.name} ({type(exc).__name__}); nothing was recorded, "
                "check the agent's disk and retry"
            ) from None

    def answer(self, env: Envelope | None, output: Any, *, error: str | None = None) -> dict[str, Any]:
        now = datetime.now()
        ref = f"{(self.config.fixmedins_code or 'YIBAOAGENT00')[:12]:0<12}{now:%Y%m%d%H%M%S}"
        return {
            "infcode": -1 if error is not None else 0,
            "inf_refmsgid": ref + f"{next(self._refseq) % 10000:04d}",
            "refmsg_time": _stamp(env.received if env else now),
            "respond_time": _stamp(now),
            "err_msg": error,
            "output": output if error is None else None,
        }

    def store_answer(self, conn: sqlite3.Connection, env: Envelope, answer: dict[str, Any]) -> None:
        conn.execute(
            "INSERT INTO msgs (msgid, infno, digest, answer, at) VALUES (?, ?, ?, ?, ?)",
            (env.msgid, env.infno, env.digest, json.dumps(answer, ensure_ascii=False), time.time()),
        )

    def held_answer(self, conn: sqlite3.Connection | None, env: Envelope) -> dict[str, Any] | None:
        """The first answer to this ``msgid``; a different request under a used ``msgid`` is refused."""
        sql = "SELECT digest, answer, infno FROM msgs WHERE msgid = ?"
        rows = (
            conn.execute(sql, (env.msgid,)).fetchall() if conn is not None else self.read(sql, (env.msgid,))
        )
        if not rows:
            return None
        digest, answer, infno = rows[0]
        if bytes(digest) != env.digest:
            raise NationalError(
                [
                    (
                        "msgid",
                        f"already used for a different request (infno {infno}); every new request needs "
                        "a new msgid (institution code + yyyyMMddHHmmss + a 4-digit sequence), a retry the "
                        "same body",
                    )
                ]
            )
        return json.loads(answer)

    # ---- the request -------------------------------------------------------------------------------

    def envelope(self, body: bytes, received: datetime) -> Envelope:
        try:
            raw = json.loads(body, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError) as exc:
            raise NationalError(
                f"the body is not JSON ({exc}); send the platform's envelope as a JSON object"
            ) from None
        f = Fields(raw, "")
        infno = f.text("infno", pattern=r"\d{4}", hint="the 4-digit transaction number, e.g. 9001", max_len=4)
        msgid = f.text("msgid", max_len=30, hint="institution code (12) + yyyyMMddHHmmss + 4-digit sequence")
        if msgid is not None:
            m = _MSGID.fullmatch(msgid)
            if m is None:
                f.add(
                    "msgid",
                    f"{msgid!r}: expected 30 characters, institution code (12) + yyyyMMddHHmmss + "
                    "a 4-digit sequence, e.g. H37021100001202611250930150001",
                )
            else:
                try:
                    datetime.strptime(m["ts"], "%Y%m%d%H%M%S")
                except ValueError:
                    f.add("msgid", f"characters 13-26 ({m['ts']}) are not a time yyyyMMddHHmmss")
        fixmedins_code = f.text("fixmedins_code", hint="this institution's 12-character national code")
        if fixmedins_code and self.config.fixmedins_code and fixmedins_code != self.config.fixmedins_code:
            f.add("fixmedins_code", f"this agent serves {self.config.fixmedins_code} only")
        if msgid and fixmedins_code and _MSGID.fullmatch(msgid) and msgid[:12] != fixmedins_code:
            f.add("msgid", f"must begin with the institution code {fixmedins_code}")
        mdtrtarea = f.text(
            "mdtrtarea_admvs", pattern=r"\d{6}", hint="the 6-digit area code of the place of care"
        )
        insuplc = f.text(
            "insuplc_admdvs", required=False, pattern=r"\d{6}", hint="a 6-digit area code or empty"
        )
        f.text("recer_sys_code", hint="the receiving system's code (any text the HIS is configured with)")
        f.text("infver", hint="the interface version, e.g. V1.0")
        opter_type = f.code("opter_type", OPTER_TYPES)
        opter = f.text("opter", hint="the operator's code (the cashier)")
        opter_name = f.text("opter_name", max_len=50, hint="the operator's name")
        inf_time = f.text("inf_time", max_len=19, hint="the sending time yyyy-MM-dd HH:mm:ss")
        if inf_time is not None:
            try:
                datetime.strptime(inf_time, _INF_TIME_FORMAT)
            except ValueError:
                f.add("inf_time", f"{inf_time!r} is not a time yyyy-MM-dd HH:mm:ss")
        for optional in ("dev_no", "dev_safe_info", "cainfo", "signtype", "fixmedins_name"):
            f.text(optional, required=False, max_len=1024)
        sign_no = f.text("sign_no", required=False, max_len=64)
        if isinstance(raw, dict) and "input" not in raw:
            f.add("input", "required: the transaction's input object ({} for 9002-style transactions)")
        f.check()
        canonical = json.dumps(
            {k: raw.get(k) for k in ("infno", "fixmedins_code", "input")}, sort_keys=True, default=str
        ).encode()
        return Envelope(
            infno=infno or "",
            msgid=msgid or "",
            opter=opter or "",
            opter_name=opter_name or "",
            opter_type=opter_type or "",
            fixmedins_code=fixmedins_code or "",
            mdtrtarea_admvs=mdtrtarea or "",
            insuplc_admdvs=insuplc,
            sign_no=sign_no,
            inf_time=inf_time or "",
            input=raw.get("input"),
            received=received,
            digest=hashlib.sha256(canonical).digest(),
            raw=raw,
        )

    def check_sign_no(self, env: Envelope) -> None:
        if env.infno == "9001":
            return
        if not env.sign_no:
            raise NationalError(
                [("sign_no", "required: sign in with 9001 first and send the sign_no it returned")]
            )
        rows = self.read(
            "SELECT expires_at, signed_out_at, fixmedins_code FROM signins WHERE sign_no = ?",
            (env.sign_no,),
        )
        if not rows or rows[0][2] != env.fixmedins_code:
            raise NationalError(
                [("sign_no", "unknown sign_no: sign in with 9001 and use the sign_no it returns")]
            )
        expires_at, signed_out_at, _code = rows[0]
        if signed_out_at is not None:
            raise NationalError([("sign_no", "this sign_no was signed out (9002): sign in again with 9001")])
        if expires_at <= time.time():
            raise NationalError([("sign_no", "this sign_no has expired: sign in again with 9001")])

    async def handle(self, request: web.Request) -> web.Response:
        received = datetime.now()
        env: Envelope | None = None
        try:
            env = self.envelope(await request.read(), received)
            entry = self.transactions.get(env.infno)
            if entry is None:
                supported = ", ".join(sorted(self.transactions))
                raise NationalError(
                    [
                        (
                            "infno",
                            f"transaction {env.infno} is not supported by this agent; supported: {supported}",
                        )
                    ]
                )
            handler, stored = entry
            if stored:
                held = self.held_answer(None, env)
                if held is not None:
                    return web.json_response(held)
            self.check_sign_no(env)
            result = await handler(self, env)
            if isinstance(result, Stored):
                return web.json_response(result.answer)
            return web.json_response(self.answer(env, result))
        except NationalError as exc:
            log.info("national %s refused: %s", env.infno if env else "?", _fields_only(exc))
            return web.json_response(self.answer(env, None, error=exc.message))
        except AgentError as exc:
            detail = "; ".join(f"{d.get('field', '')}: {d.get('message', '')}" for d in exc.details)
            log.info("national %s refused: %s", env.infno if env else "?", exc.code)
            message = f"{exc.code}: {exc.message}" + (f" ({detail})" if detail else "")
            return web.json_response(self.answer(env, None, error=message))
        except ProtocolError as exc:
            wire = exc.to_wire()
            detail = "; ".join(
                f"{d.get('field', '')}: {d.get('message', '')}" for d in wire.get("details", [])
            )
            log.info("national %s refused: %s", env.infno if env else "?", wire.get("code"))
            message = f"{wire.get('code')}: {wire.get('message')}" + (f" ({detail})" if detail else "")
            return web.json_response(self.answer(env, None, error=message))
        except Exception as exc:  # a bug must still answer the platform's way, and say how to go on
            # where, not what: the exception's text may hold a value from the request (personal data)
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            place = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else "?"
            log.error("national %s failed: %s at %s", env.infno if env else "?", type(exc).__name__, place)
            message = (
                f"internal error in the agent ({type(exc).__name__}); retry with the same msgid (a "
                "settlement already made is answered, never made twice) and report it to IT if it persists"
            )
            return web.json_response(self.answer(env, None, error=message))


@dataclass
class Stored:
    """A handler's complete answer, already stored with its ``msgid`` (answered as is)."""

    answer: dict[str, Any]


def _fields_only(exc: NationalError) -> str:
    """What the log may say about a refusal: the fields, never their values (they may be personal)."""
    return ", ".join(sorted({f for f, _m in exc.problems if f})) or "envelope"


async def stored_write(nat: National, env: Envelope, fn: Callable[[sqlite3.Connection], Any]) -> Stored:
    """Run ``fn(conn) -> output`` in one writer transaction that also keeps the answer (``msgid`` replay)."""

    def run(conn: sqlite3.Connection) -> Stored:
        held = nat.held_answer(conn, env)
        if held is not None:
            return Stored(held)
        answer = nat.answer(env, fn(conn))
        nat.store_answer(conn, env, answer)
        return Stored(answer)

    return await nat.write(run)


# ---- 9001 / 9002 ---------------------------------------------------------------------------------


async def sign_in(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    s = inp.child("signIn")
    opter_no = s.text("opter_no", hint="the operator's code") if s else None
    if s:
        s.text("mac", required=False, max_len=64)
        s.text("ip", required=False, max_len=64)
    inp.check()
    sign_no = secrets.token_hex(12)
    now = time.time()
    sign_time = datetime.fromtimestamp(now).strftime("%Y-%m-%d %H:%M:%S")

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        conn.execute(
            "INSERT INTO signins (sign_no, opter, fixmedins_code, signed_in_at, expires_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (sign_no, opter_no, env.fixmedins_code, now, now + nat.sign_ttl_s),
        )
        return {"signinoutb": {"sign_time": sign_time, "sign_no": sign_no}}

    return await stored_write(nat, env, write)


async def sign_out(nat: National, env: Envelope) -> Stored:
    inp = Fields(env.input, "input")
    s = inp.child("signOut")
    sign_no = s.text("sign_no", hint="the sign_no to sign out") if s else None
    if s:
        s.text("opter_no", hint="the operator's code")
    inp.check()

    def write(conn: sqlite3.Connection) -> dict[str, Any]:
        done = conn.execute(
            "UPDATE signins SET signed_out_at = ? WHERE sign_no = ? AND signed_out_at IS NULL "
            "AND fixmedins_code = ?",
            (time.time(), sign_no, env.fixmedins_code),
        ).rowcount
        if not done:
            raise NationalError([("input.signOut.sign_no", "not a signed-in sign_no of this institution")])
        return {"signoutoutb": {"sign_time": datetime.now().strftime("%Y-%m-%d %H:%M:%S")}}

    return await stored_write(nat, env, write)


SIGN_TRANSACTIONS: dict[str, tuple[Handler, bool]] = {"9001": (sign_in, True), "9002": (sign_out, True)}
