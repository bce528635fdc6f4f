"""Bulk import of historical settlements (``yibao-central import settlements``, ``docs/IMPORT.md``).

A new deployment must screen against the years of settlements made before any agent ran; the agents
cannot bring them (an agent stamps what it settles now and signs it into its chain). An import reads
them from files — JSON lines, CSV or Parquet in the national field names — and stores each as the
centre stores an uploaded one (``settlements``, ``hist_lines``, ``hist_visits``), so screening, the
doctors' history lookup and analysis see them alike, but marked: ``settlements.import_id`` names the
import, ``agent_id``/``seq`` stay NULL (no agent's chain holds them, nothing pretends one does) and
``imported`` keeps each record's canonical bytes and digest.

The rules:

1. Each record passes the protocol's validation of a settlement or reversal (``check_settlement`` /
   ``check_reversal``: the same checks an agent's upload passes at ingest) and ingest's own (a
   registered hospital, an ISO-8601 ``setl_time`` with its offset); the original ``setl_time`` is kept.
   A record that fails is written to ``import_rejects`` with its file row, field and problem, and the
   import goes on (``strict`` stops it at the first one, with nothing of that chunk stored).
2. Idempotent by ``setl_id``: a record held already with the same content is counted
   ``already_held``; one an agent uploaded is the agent's (signed) and is counted ``held_from_agent``;
   the same ``setl_id`` with other content is rejected (``setl_duplicate``). Importing a file twice
   stores it once.
3. Resumable: every chunk (``CHUNK`` records) is one transaction with the import's checkpoint — the
   input rows consumed — so a killed import resumes at the last committed chunk with nothing lost or
   doubled. A file is known by its SHA-256: the same file again resumes or reports it done; a changed
   file is a new import whose rows are judged by rule 2.
4. Reversals delete the lines and visit row of the settlement they cancel (as at ingest); a settlement
   whose reversal was imported first gets none.
5. Memory is bounded by the chunk: files are streamed (JSON lines line by line, CSV row by row,
   Parquet batch by batch).

Money: integer fen, as the records agents sign (``money="fen"``), or yuan as decimal text or numbers
with at most two places (``money="yuan"``), converted exactly; a sub-fen amount is a reject, never
rounded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import msgspec

from central.errors import ImportInvalid
from central.policy.bundles import area_of_hospital, default_area
from central.storage.store import Store, now_iso
from protocol.errors import ProtocolError
from protocol.records import Reversal, Settlement, check_reversal, check_settlement, to_fen

from .ingest import _DELETE_LINES, _DELETE_VISIT, _problem_text, _Refused, _settlement_row
from .lines import INSERT_HIST_LINE
from .visits import INSERT_VISIT

__all__ = [
    "CHUNK",
    "FLAT_COLUMNS",
    "FORMATS",
    "ImportSummary",
    "import_rejects",
    "import_settlements",
    "import_status",
    "sniff_format",
]

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "parquet")
#: Records per transaction: bounds memory and the work a kill can lose (it is redone on resume).
CHUNK = 1000
_MONEY_UNITS = ("fen", "yuan")

# The flat layout of CSV and Parquet: one row per fee-detail line, the settlement's columns repeated
# on each; a reversal is one row with ``orig_setl_id`` and no line columns.
_SETTLEMENT_COLUMNS = (
    "setl_id", "his_setl_no", "fixmedins_code", "setl_time", "medfee_sumamt", "fund_pay_sumamt", "hifp_pay",
    "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay", "mdtrt_cert_type", "mdtrt_cert_no", "opter",
    "opter_name", "orig_setl_id", "reason",
)  # fmt: skip
_PERSON_COLUMNS = ("psn_no", "gend", "brdy", "insuplc_admdvs", "insutype", "psn_type", "card_sn", "emp_no")
_VISIT_COLUMNS = (
    "mdtrt_id", "med_type", "begntime", "endtime", "dise_codg", "dise_name", "dept_codg", "dr_codg",
    "ipt_days",
)  # fmt: skip
_LINE_COLUMNS = (
    "feedetl_sn", "med_list_codg", "medins_list_name", "list_type", "cnt", "pric", "det_item_fee_sumamt",
    "chrgitm_lv", "fee_ocur_time", "dosage", "days", "fulamt_ownpay_amt", "preselfpay_amt",
)  # fmt: skip
FLAT_COLUMNS = _SETTLEMENT_COLUMNS + _PERSON_COLUMNS + _VISIT_COLUMNS + _LINE_COLUMNS
_REQUIRED_FLAT = ("setl_id", "fixmedins_code", "setl_time", "medfee_sumamt", "opter")
_INT_FIELDS = frozenset({"ipt_days", "days"})
_MONEY_FIELDS = frozenset(
    {"medfee_sumamt", "fund_pay_sumamt", "hifp_pay", "hifmi_pay", "hifob_pay", "acct_pay", "psn_cash_pay"}
)
_LINE_MONEY = frozenset({"det_item_fee_sumamt", "fulamt_ownpay_amt", "preselfpay_amt"})
#: ingest's settlements row (``_settlement_row``, agent_id and seq NULL) and the import that brought it.
_INSERT_SETTLEMENT = (
    "INSERT INTO settlements (setl_id, agent_id, seq, kind, his_setl_no, fixmedins_code, psn_no, mdtrt_id, "
    "med_type, setl_time, setl_date, medfee_sumamt, fund_pay_sumamt, acct_pay, psn_cash_pay, orig_setl_id, "
    "mdtrt_cert_type, mdtrt_cert_no, card_sn, hifp_pay, hifmi_pay, hifob_pay, insutype, import_id) "
    f"VALUES ({', '.join('?' * 24)})"
)
_INSERT_IMPORTED = "INSERT INTO imported (setl_id, import_id, digest, raw) VALUES (?, ?, ?, ?)"
_INSERT_REJECT = "INSERT INTO import_rejects (import_id, row, setl_id, code, message) VALUES (?, ?, ?, ?, ?)"
_DUPLICATE = (
    "setl_id is held already with other content; a settlement is counted once (correct the file, or reverse "
    "the held one first)"
)
_COUNTS = ("settlements", "reversals", "already_held", "held_from_agent", "rejected")


@dataclass(slots=True)
class ImportSummary:
    """What one file's import did; ``resumed_from`` > 0 when it went on from a checkpoint."""

    import_id: int
    path: str
    format: str
    digest: str
    status: str
    rows_read: int = 0
    resumed_from: int = 0
    settlements: int = 0
    reversals: int = 0
    already_held: int = 0
    held_from_agent: int = 0
    rejected: int = 0
    first_reject: dict[str, Any] | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Input:
    """One record read from a file: its object form and the file rows it came from."""

    obj: dict[str, Any] | None
    row: int  # the first file row (1-based data row; JSON lines: line number)
    end: int  # input rows consumed once this record is done
    problem: str | None = None  # a row that could not even be read as a record


def sniff_format(path: Path, given: str | None) -> str:
    if given:
        if given not in FORMATS:
            raise ImportInvalid(f"--format must be one of {', '.join(FORMATS)}, not {given!r}")
        return given
    suffix = path.suffix.lower().lstrip(".")
    by_suffix = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "jsonl", "csv": "csv", "parquet": "parquet"}
    if suffix not in by_suffix:
        raise ImportInvalid(
            f"cannot tell the format of {path.name} from its name; give --format jsonl|csv|parquet"
        )
    return by_suffix[suffix]


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- readers: each yields _Input in file order, skipping the first `skip` input rows ----------------


def _read_jsonl(path: Path, skip: int) -> Iterator[_Input]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if number <= skip:
                continue
            text = line.strip()
            if not text:
                yield _Input(None, number, number)  # a blank line: consumed, nothing to store
                continue
            try:
                obj = msgspec.json.decode(text)
            except msgspec.DecodeError as exc:
                yield _Input(None, number, number, f"not JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield _Input(
                    None, number, number, "a line must be one JSON object (a settlement or reversal)"
                )
                continue
            yield _Input(obj, number, number)


def _flat_value(name: str, value: Any) -> Any:
    """A flat cell as the record wants it: empty is absent; counts as text (exact), days as int."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None
    if name in _INT_FIELDS:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return int(value) if isinstance(value, int) or str(value).strip().lstrip("-").isdigit() else value
    if name in _MONEY_FIELDS or name in _LINE_MONEY:
        return value.strip() if isinstance(value, str) else value
    if isinstance(value, float):
        return repr(value)  # cnt/pric given as floats: their shortest text, validated as decimals
    return str(value).strip() if not isinstance(value, str) else value.strip()


def _group_flat(rows: Iterator[tuple[int, dict[str, Any]]]) -> Iterator[_Input]:
    """Consecutive rows of one ``setl_id`` make one record (``row``: its first row)."""
    current: dict[str, Any] | None = None
    first = last = 0
    for number, raw in rows:
        problem = raw.pop("_problem", None)
        if problem is not None:  # a row that cannot be read (a short CSV row) is a reject of its own
            if current is not None:
                yield _Input(current, first, last)
                current = None
            yield _Input(None, number, number, problem)
            continue
        cells = {k: _flat_value(k, v) for k, v in raw.items()}
        setl_id = cells.get("setl_id")
        if current is not None and setl_id == current["setl_id"] and current.get("feedetl") is not None:
            line = {k: cells[k] for k in _LINE_COLUMNS if cells.get(k) is not None}
            if line:
                current["feedetl"].append(line)
            last = number
            continue
        if current is not None:
            yield _Input(current, first, last)
        current, first, last = _record_from_flat(cells), number, number
    if current is not None:
        yield _Input(current, first, last)


def _record_from_flat(cells: dict[str, Any]) -> dict[str, Any]:
    obj = {k: cells[k] for k in _SETTLEMENT_COLUMNS if cells.get(k) is not None}
    if cells.get("orig_setl_id") is not None:
        return obj  # a reversal: no person, visit or lines
    obj["psn"] = {k: cells[k] for k in _PERSON_COLUMNS if cells.get(k) is not None}
    obj["mdtrt"] = {k: cells[k] for k in _VISIT_COLUMNS if cells.get(k) is not None}
    line = {k: cells[k] for k in _LINE_COLUMNS if cells.get(k) is not None}
    obj["feedetl"] = [line] if line else []
    return obj


def _check_header(columns: list[str], path: Path) -> None:
    unknown = [c for c in columns if c not in FLAT_COLUMNS]
    if unknown:
        raise ImportInvalid(
            f"{path.name}: unknown column(s) {', '.join(unknown[:10])}; the flat layout's columns are listed "
            "in docs/IMPORT.md (a misspelt column would drop its data silently, so the import stops)"
        )
    missing = [c for c in _REQUIRED_FLAT if c not in columns]
    if missing:
        raise ImportInvalid(f"{path.name}: missing required column(s) {', '.join(missing)}")


def _read_csv(path: Path, skip: int) -> Iterator[_Input]:
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            return
        _check_header(header, path)

        def rows() -> Iterator[tuple[int, dict[str, Any]]]:
            for number, values in enumerate(reader, start=1):
                if number <= skip:
                    continue
                if len(values) != len(header):
                    yield (
                        number,
                        {"setl_id": None, "_problem": f"{len(values)} cells, the header has {len(header)}"},
                    )
                    continue
                yield number, dict(zip(header, values, strict=True))

        yield from _group_flat(rows())


def _read_parquet(path: Path, skip: int) -> Iterator[_Input]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportInvalid(
            "reading Parquet needs pyarrow: reinstall yibao-edge with its dependencies"
        ) from exc
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's errors are not one class; any is "not a Parquet file we can read"
        raise ImportInvalid(f"{path.name} is not a readable Parquet file: {exc}") from None
    _check_header(list(pf.schema_arrow.names), path)

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        number = 0
        for group in range(pf.num_row_groups):
            size = pf.metadata.row_group(group).num_rows
            if number + size <= skip:  # a whole row group before the checkpoint: not even read
                number += size
                continue
            for batch in pf.iter_batches(batch_size=CHUNK, row_groups=[group]):
                for row in batch.to_pylist():
                    number += 1
                    if number > skip:
                        yield number, row

    yield from _group_flat(rows())


_READERS: dict[str, Callable[[Path, int], Iterator[_Input]]] = {
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
}


# ---- validation ----------------------------------------------------------------------------------


def _yuan_to_fen(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str, float)):
        raise ValueError(f"{name} must be an amount in yuan")
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        raise ValueError(f"{name} is not an amount in yuan like 12.34") from None
    try:
        return to_fen(amount)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _fen(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be integer fen")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{name} must be integer fen (or import with --money yuan)")


def _money(obj: dict[str, Any], unit: str) -> None:
    convert = _yuan_to_fen if unit == "yuan" else _fen
    for name in _MONEY_FIELDS:
        if obj.get(name) is not None:
            obj[name] = convert(obj[name], name)
    for line in obj.get("feedetl") or ():
        if isinstance(line, dict):
            for name in _LINE_MONEY:
                if line.get(name) is not None:
                    line[name] = convert(line[name], f"feedetl {line.get('feedetl_sn', '?')} {name}")


def _record(obj: dict[str, Any], unit: str) -> Settlement | Reversal:
    """The typed, validated record, or ValueError/ProtocolError naming the problem."""
    _money(obj, unit)
    kind = Reversal if obj.get("orig_setl_id") is not None else Settlement
    try:
        rec = msgspec.convert(obj, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None
    return check_reversal(rec) if kind is Reversal else check_settlement(rec)  # type: ignore[arg-type]


# ---- the import ----------------------------------------------------------------------------------


class _Context:
    """Per-import lookups held across chunks (hospital grade and area)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.hospitals: dict[str, tuple[str | None, str | None] | None] = {}
        self.default_area = default_area(conn)

    def hospital(self, conn: sqlite3.Connection, code: str) -> tuple[str | None, str | None] | None:
        if code not in self.hospitals:
            row = conn.execute("SELECT hosp_lv FROM hospitals WHERE fixmedins_code = ?", (code,)).fetchone()
            if row is None:
                self.hospitals[code] = None
            else:
                agent = conn.execute(
                    "SELECT pooling_area FROM agents WHERE fixmedins_code = ? AND pooling_area != '' "
                    "ORDER BY enrolled_at LIMIT 1",
                    (code,),
                ).fetchone()
                area = agent[0] if agent else (area_of_hospital(code) or self.default_area)
                self.hospitals[code] = (row[0], area)
        return self.hospitals[code]


def _start(conn: sqlite3.Connection, path: Path, fmt: str, digest: str, unit: str) -> tuple[int, int, str]:
    row = conn.execute(
        "SELECT id, rows_read, status FROM imports WHERE digest = ? AND format = ? AND money = ?",
        (digest, fmt, unit),
    ).fetchone()
    if row is not None:
        return row
    cur = conn.execute(
        "INSERT INTO imports (path, format, money, digest, status, started_at, rows_read, settlements, "
        "reversals, already_held, held_from_agent, rejected) "
        "VALUES (?, ?, ?, ?, 'running', ?, 0, 0, 0, 0, 0, 0)",
        (str(path), fmt, unit, digest, now_iso()),
    )
    return int(cur.lastrowid or 0), 0, "running"


def _store_chunk(
    conn: sqlite3.Connection, ctx: _Context, import_id: int, chunk: list[_Input], unit: str, strict: bool
) -> dict[str, Any]:
    """One chunk and its checkpoint, in the caller's transaction; returns the counts it added."""
    counts = dict.fromkeys(_COUNTS, 0)
    rejects: list[tuple] = []
    seen: dict[str, bytes] = {}

    def reject(item: _Input, setl_id: str | None, code: str, message: str) -> None:
        rejects.append((import_id, item.row, setl_id, code, message[:500]))
        if strict:
            raise ImportInvalid(
                f"row {item.row}: {code}: {message} (--strict: nothing of this chunk was stored)"
            )

    for item in chunk:
        if item.obj is None:
            if item.problem:
                reject(item, None, "row_invalid", item.problem)
            continue
        setl_id = item.obj.get("setl_id") if isinstance(item.obj.get("setl_id"), str) else None
        try:
            rec = _record(item.obj, unit)
            place = ctx.hospital(conn, rec.fixmedins_code)
            if place is None:
                raise _Refused(
                    "hospital_unknown",
                    f"hospital {rec.fixmedins_code} is not registered: register it first "
                    "(`yibao-central hospitals set` or `hospitals import FILE`)",
                )
            row, lines, visit = _settlement_row(rec, None, None, rec.fixmedins_code, place[0], place[1])  # type: ignore[arg-type]
        except ProtocolError as exc:
            reject(item, setl_id, exc.code, _problem_text(exc))
            continue
        except _Refused as exc:
            reject(item, setl_id, exc.code, exc.message)
            continue
        except ValueError as exc:
            reject(item, setl_id, "field_invalid", str(exc))
            continue
        raw = msgspec.msgpack.encode(rec)
        digest = hashlib.sha256(raw).digest()
        held = seen.get(rec.setl_id)
        if held is None:
            got = conn.execute(
                "SELECT s.agent_id, i.digest FROM settlements AS s LEFT JOIN imported AS i USING (setl_id) "
                "WHERE s.setl_id = ?",
                (rec.setl_id,),
            ).fetchone()
            if got is not None and got[0] is not None:
                counts["held_from_agent"] += 1
                continue
            held = got[1] if got is not None else None
        if held is not None:
            if held == digest:
                counts["already_held"] += 1
            else:
                reject(item, rec.setl_id, "setl_duplicate", _DUPLICATE)
            continue
        seen[rec.setl_id] = digest
        conn.execute(_INSERT_SETTLEMENT, (*row, import_id))
        conn.execute(_INSERT_IMPORTED, (rec.setl_id, import_id, digest, raw))
        if isinstance(rec, Reversal):
            counts["reversals"] += 1
            conn.execute(_DELETE_LINES, (rec.orig_setl_id, rec.fixmedins_code))
            conn.execute(_DELETE_VISIT, (rec.orig_setl_id, rec.fixmedins_code))
            continue
        counts["settlements"] += 1
        cancelled = conn.execute(
            "SELECT 1 FROM settlements WHERE orig_setl_id = ? AND kind = 'revs' AND fixmedins_code = ?",
            (rec.setl_id, rec.fixmedins_code),
        ).fetchone()
        if cancelled is None:
            conn.executemany(INSERT_HIST_LINE, lines or [])
            conn.execute(INSERT_VISIT, visit)
    conn.executemany(_INSERT_REJECT, rejects)
    counts["rejected"] = len(rejects)
    sets = ", ".join(f"{k} = {k} + ?" for k in _COUNTS)
    conn.execute(
        f"UPDATE imports SET rows_read = ?, {sets} WHERE id = ?",
        (chunk[-1].end, *(counts[k] for k in _COUNTS), import_id),
    )
    return counts


def import_settlements(
    store: Store,
    path: Path | str,
    *,
    fmt: str | None = None,
    money: str = "fen",
    strict: bool = False,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = CHUNK,
) -> ImportSummary:
    """Import one file (rules in the module docstring); safe to run again on the same file."""
    path = Path(path)
    if money not in _MONEY_UNITS:
        raise ImportInvalid(f"--money must be fen or yuan, not {money!r}")
    if not path.is_file():
        raise ImportInvalid(f"{path} is not a file")
    kind = sniff_format(path, fmt)
    digest = _file_digest(path)
    import_id, done_rows, status = store.write(lambda c: _start(c, path, kind, digest, money))
    summary = _summary(store, import_id)
    summary.resumed_from = done_rows
    if status == "done":
        return summary
    ctx = store.read(_Context)
    chunk: list[_Input] = []

    def flush() -> None:
        store.write(lambda c: _store_chunk(c, ctx, import_id, chunk, money, strict))
        if progress is not None:
            progress(chunk[-1].end)
        chunk.clear()

    for item in _READERS[kind](path, done_rows):
        chunk.append(item)
        if len(chunk) >= chunk_size:
            flush()
    if chunk:
        flush()
    store.write(
        lambda c: c.execute(
            "UPDATE imports SET status = 'done', finished_at = ? WHERE id = ?", (now_iso(), import_id)
        )
    )
    log.info("import %d of %s (%s) done", import_id, path.name, kind)
    summary = _summary(store, import_id)
    summary.resumed_from = done_rows
    return summary


_SUMMARY_SQL = (
    "SELECT id, path, format, digest, status, rows_read, settlements, reversals, already_held, "
    "held_from_agent, rejected FROM imports"
)


def _summary(store: Store, import_id: int) -> ImportSummary:
    def read(conn: sqlite3.Connection) -> ImportSummary:
        row = conn.execute(_SUMMARY_SQL + " WHERE id = ?", (import_id,)).fetchone()
        s = ImportSummary(*row[:5], rows_read=row[5], **dict(zip(_COUNTS, row[6:], strict=True)))
        first = conn.execute(
            "SELECT row, setl_id, code, message FROM import_rejects WHERE import_id = ? ORDER BY row LIMIT 1",
            (import_id,),
        ).fetchone()
        if first:
            s.first_reject = dict(zip(("row", "setl_id", "code", "message"), first, strict=True))
        return s

    return store.read(read)


def import_status(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every import with its checkpoint and counts, newest first."""
    cols = ("id", "path", "format", "money", "digest", "status", "started_at", "finished_at", "rows_read",
            *_COUNTS)  # fmt: skip
    rows = conn.execute(f"SELECT {', '.join(cols)} FROM imports ORDER BY id DESC").fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


def import_rejects(conn: sqlite3.Connection, import_id: int) -> Iterator[dict[str, Any]]:
    """One import's rejected rows in file order: what to correct and import again."""
    if conn.execute("SELECT 1 FROM imports WHERE id = ?", (import_id,)).fetchone() is None:
        raise ImportInvalid(f"no import {import_id}; `yibao-central import status` lists them")
    path = conn.execute("SELECT path FROM imports WHERE id = ?", (import_id,)).fetchone()[0]
    for row, setl_id, code, message in conn.execute(
        "SELECT row, setl_id, code, message FROM import_rejects WHERE import_id = ? ORDER BY row",
        (import_id,),
    ):
        yield {"file": path, "row": row, "setl_id": setl_id, "code": code, "message": message}


def write_rejects(rows: Iterator[dict[str, Any]], out: io.TextIOBase | Any) -> int:
    n = 0
    for r in rows:
        out.write(json.dumps(r, ensure_ascii=False) + "\n")
        n += 1
    return n
