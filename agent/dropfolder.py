"""The drop folder: settlements from HIS products that can only exchange files.

The HIS writes one settlement per file (JSON, the body of ``POST /v1/settlements``, or the CSV
layout of docs/DROPFOLDER.md) into ``inbox/``. The agent claims a file by renaming it into
``processing/``, settles it through the API's own path (``agent.api.settle_body``), writes the
answer to ``results/`` and moves the input to ``done/`` — or to ``rejected/`` with
``<name>.error.json`` when the settlement is refused (nothing is settled then).

Why it is exactly once without a journal of its own: the outbox answers a ``his_setl_no`` it
already holds with its first receipt (same ``setl_id``, ``seq``, ``hash``) and never settles it
twice. So whatever point a crash interrupts — before, during or after the outbox commit, before
the result or the move — the file is still in ``processing/`` (or, after a power loss undid an
unsynced rename, back in ``inbox/``), and settling it again at start-up gives the same
settlement. Only the result file must never be seen half-written: tmp + fsync + rename + fsync of
the directory.

Why a file cannot carry overrides: an override is a doctor's decision and must carry the code of the
doctor who signed in with their own token (``agent.users``); nobody signs in to a file, so
``settle_body`` gets no caller and refuses a file with ``overrides`` (403 ``override_needs_doctor`` in
``rejected/<name>.error.json``, nothing settled). Such a settlement goes to ``POST /v1/settlements``
with the doctor's token.

Why files are taken only when stable: a HIS that writes in place would otherwise be read half-way.
The contract asks for write-then-rename (names ending ``.tmp``/``.part`` and dot-files are never
taken); the agent also waits until a file's mtime is ``dropfolder_stable_ms`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from protocol.errors import ProtocolError, ValidationFailed

from .config import AgentConfig
from .durable import write_atomic
from .errors import AgentError, BodyTooLarge
from .settle import error_answer

__all__ = ["DIRS", "DropFolder", "Settle", "csv_to_body", "prepare_dirs", "write_atomic"]

log = logging.getLogger("yibao.agent.dropfolder")

#: Settles one body like ``POST /v1/settlements``: (HTTP status, answer) or raises a refusal.
Settle = Callable[[bytes], Awaitable[tuple[int, dict[str, Any]]]]

INBOX, PROCESSING, RESULTS, DONE, REJECTED = "inbox", "processing", "results", "done", "rejected"
DIRS = (INBOX, PROCESSING, RESULTS, DONE, REJECTED)
#: Suffixes the HIS writes under before its rename into ``inbox/``: never taken.
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".swp", ".crdownload")
ACCEPTED_SUFFIXES = (".json", ".csv")
#: Longest wait before a file refused with a transient error (5xx: outbox full, disk) is retried.
MAX_RETRY_S = 30.0
#: Pause after a file event before scanning, so a burst of events costs one scan.
SCAN_DEBOUNCE_S = 0.05
#: File events that cannot mean a new file in ``inbox/`` (a claim is a deletion there).
_QUIET_EVENTS = frozenset({"deleted", "opened", "closed_no_write"})


# ---- durable file operations ----------------------------------------------------------------


def _free_name(directory: Path, name: str) -> Path:
    """``directory/name``, or ``stem~N.suffix`` when a file of that name is already there (kept)."""
    target = directory / name
    n = 1
    stem, suffix = os.path.splitext(name)
    while target.exists():
        n += 1
        target = directory / f"{stem}~{n}{suffix}"
    return target


def _answer_bytes(answer: dict[str, Any]) -> bytes:
    return json.dumps(answer, ensure_ascii=False, indent=2, sort_keys=True).encode() + b"\n"


# ---- the CSV layout ---------------------------------------------------------------------------

_KEY = re.compile(r"^[a-z_]+(\[\d{1,3}\])?(\.[a-z_]+(\[\d{1,3}\])?)*$")
_PART = re.compile(r"^([a-z_]+)(?:\[(\d+)\])?$")
#: JSON integers (every other value is a string; money and counts are decimal text).
_INT_FIELDS = {"mdtrt.ipt_days", "days"}
_INT = re.compile(r"^-?\d{1,9}$")


def _csv_problem(line: int, message: str, field: str = "$") -> dict[str, Any]:
    return {"field": field, "line": line, "message": message}


def _decode_text(data: bytes) -> str:
    """UTF-8 (a BOM is allowed); bytes that are not UTF-8 are read as GB18030 (GBK-writing HIS)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030", errors="strict")


def _set_path(doc: dict[str, Any], key: str, value: Any) -> None:
    """Put ``value`` at a dotted path such as ``psn.psn_no`` or ``overrides[1].reason``."""
    node: Any = doc
    parts = key.split(".")
    for i, part in enumerate(parts):
        m = _PART.match(part)
        assert m is not None  # the key matched _KEY
        name, index = m.group(1), m.group(2)
        last = i == len(parts) - 1
        if index is None:
            if last:
                node[name] = value
            else:
                node = node.setdefault(name, {})
        else:
            slots = node.setdefault(name, {})  # index → element; turned into a list at the end
            if last:
                slots[int(index)] = value
            else:
                node = slots.setdefault(int(index), {})


def _lists(node: Any, path: str, problems: list[dict[str, Any]]) -> Any:
    """Turn the ``{index: element}`` maps ``_set_path`` built into lists (indices must be 0..n-1)."""
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        where = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and value and all(isinstance(k, int) for k in value):
            if sorted(value) != list(range(len(value))):
                problems.append({"field": where, "message": "list indices must run 0, 1, 2, … without gaps"})
            out[key] = [_lists(value[k], f"{where}[{k}]", problems) for k in sorted(value)]
        else:
            out[key] = _lists(value, where, problems)
    return out


def csv_to_body(data: bytes) -> tuple[bytes, dict[str, int]]:
    """A settlement CSV file → the JSON body of ``POST /v1/settlements`` and field path → line number.

    Layout (docs/DROPFOLDER.md): a ``field,value`` header row, then one row per settlement field
    named by its JSON path (``his_setl_no``, ``psn.insutype``, ``overrides[0].rule_id``), then the
    fee-line table: a row of column names starting with ``feedetl_sn``, one row per line. Empty
    cells are absent fields. Raises ``ValidationFailed`` with the CSV line of each problem.
    """
    try:
        text = _decode_text(data)
    except UnicodeDecodeError:
        raise ValidationFailed(
            "the CSV file is neither UTF-8 nor GB18030 text",
            details=[{"field": "$", "message": "save the file as UTF-8 (or GB18030)"}],
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[dict[str, Any]] = []
    lines: dict[str, int] = {}
    doc: dict[str, Any] = {}
    columns: list[str] | None = None
    fee_rows: list[dict[str, Any]] = []
    seen_header = False
    try:
        for row in reader:
            line = reader.line_num
            cells = [c.strip() for c in row]
            while cells and not cells[-1]:
                cells.pop()  # spreadsheets pad rows with empty cells
            if not cells or cells[0].startswith("#"):
                continue
            if not seen_header:
                if [c.lower() for c in cells] != ["field", "value"]:
                    problems.append(_csv_problem(line, "the first row must be 'field,value'"))
                    break
                seen_header = True
                continue
            if columns is None and cells[0] == "feedetl_sn":
                columns = cells
                if len(set(columns)) != len(columns):
                    problems.append(_csv_problem(line, "a fee-line column is named twice"))
                continue
            if columns is None:
                key = cells[0]
                if len(cells) > 2:
                    problems.append(_csv_problem(line, "a header row has two cells: field, value", key))
                elif not _KEY.match(key) or key.split(".")[0].split("[")[0] == "feedetl":
                    problems.append(
                        _csv_problem(line, "not a settlement field path (fee lines go in the table)", key)
                    )
                elif key in lines:
                    again = f"field given twice (first on line {lines[key]})"
                    problems.append(_csv_problem(line, again, key))
                else:
                    lines[key] = line
                    value: Any = cells[1] if len(cells) > 1 else ""
                    if value == "":
                        continue
                    if key in _INT_FIELDS and _INT.match(value):
                        value = int(value)
                    _set_path(doc, key, value)
                continue
            index = len(fee_rows)
            lines[f"feedetl[{index}]"] = line
            if len(cells) > len(columns):
                problems.append(
                    _csv_problem(line, f"{len(cells)} cells but {len(columns)} columns", f"feedetl[{index}]")
                )
            fee: dict[str, Any] = {}
            for col, value in zip(columns, cells, strict=False):
                if value == "":
                    continue
                fee[col] = int(value) if col in _INT_FIELDS and _INT.match(value) else value
            fee_rows.append(fee)
    except csv.Error as exc:
        problems.append(_csv_problem(reader.line_num, f"not valid CSV: {exc}"))
    if not problems and not seen_header:
        problems.append(_csv_problem(1, "the file is empty: expected a 'field,value' header row"))
    if not problems and columns is None:
        no_table = "no fee-line table: a row of columns starting with feedetl_sn"
        problems.append(_csv_problem(reader.line_num, no_table))
    doc = _lists(doc, "", problems)
    if problems:
        raise ValidationFailed(
            "the CSV file does not follow the settlement layout (docs/DROPFOLDER.md)", details=problems
        )
    doc["feedetl"] = fee_rows
    return json.dumps(doc, ensure_ascii=False).encode(), lines


def _with_lines(answer: dict[str, Any], lines: dict[str, int]) -> None:
    """Add the CSV line to each refusal detail that names a field the file gave."""
    for detail in answer.get("error", {}).get("details", []):
        field = str(detail.get("field", "")).removeprefix("$.")
        if "line" in detail:
            continue
        if field in lines:
            detail["line"] = lines[field]
            continue
        m = re.match(r"^feedetl\[(\d+)\]", field)
        if m and f"feedetl[{m.group(1)}]" in lines:
            detail["line"] = lines[f"feedetl[{m.group(1)}]"]


def prepare_dirs(root: Path) -> None:
    """Create the five directories and drop result writes a crash cut; ``OSError`` when unusable.

    Called before the agent opens anything else, so a drop folder that cannot be used stops the start.
    """
    for d in DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    for d in (RESULTS, REJECTED):
        for stale in (root / d).glob(".*.tmp"):
            stale.unlink(missing_ok=True)
    probe = root / INBOX / f".yibao-probe-{os.getpid()}-{secrets.token_hex(4)}.tmp"  # must be writable
    probe.write_bytes(b"")
    probe.unlink()


# ---- the folder ---------------------------------------------------------------------------------


@dataclasses.dataclass(order=True, frozen=True)
class _Item:
    #: 0 = already in processing/ (resumed or retried: first), 1 = in inbox/; then arrival order.
    rank: int
    mtime_ns: int
    name: str
    size: int = dataclasses.field(default=-1, compare=False)


_STOP = _Item(-1, 0, "")


class DropFolder:
    """Watches ``inbox/`` and settles each file once; ``run`` until ``stop``."""

    def __init__(
        self,
        root: Path,
        settle: Settle,
        *,
        stable_s: float = 1.0,
        poll_s: float = 2.0,
        workers: int = 8,
        max_bytes: int = 1024 * 1024,
    ) -> None:
        self.root = Path(root)
        self.settle = settle
        self.stable_ns = int(stable_s * 1e9)
        self.poll_s = poll_s
        self.workers = workers
        self.max_bytes = max_bytes
        self.dirs = {d: self.root / d for d in DIRS}
        self.counts = {"settled": 0, "duplicate": 0, "rejected": 0, "retried": 0}
        self._queue: asyncio.PriorityQueue[_Item] = asyncio.PriorityQueue()
        self._known: set[str] = set()  # queued, in flight or waiting for a retry
        self._retries: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._observer: Any = None

    @classmethod
    def from_config(cls, config: AgentConfig, settle: Settle) -> DropFolder:
        assert config.dropfolder_path is not None
        return cls(
            config.dropfolder_path,
            settle,
            stable_s=config.dropfolder_stable_ms / 1000,
            poll_s=config.dropfolder_poll_s,
            workers=config.dropfolder_workers,
            max_bytes=config.max_body_bytes,
        )

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Resume ``processing/``, then settle what arrives until ``stop``."""
        await asyncio.to_thread(self.prepare)
        if self._stopping.is_set():  # stopped before it started: no worker may start after stop()
            return
        self._start_observer()
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self.workers)]
        try:
            for item in await asyncio.to_thread(self._list_processing):
                self._known.add(item.name)
                self._queue.put_nowait(item)
            while not self._stopping.is_set():
                self._wake.clear()  # before the scan: an event during it brings the next one
                try:
                    next_in = await self._scan()
                except OSError as exc:  # e.g. inbox/ removed by hand: say so, recreate, keep trying
                    log.error("drop folder: cannot scan %s (%s); retrying", self.dirs[INBOX], exc)
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(self.prepare)
                    next_in = self.poll_s
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=next_in)
                    # A burst of events is one scan, not one per file: each scan stats the whole inbox.
                    await asyncio.sleep(SCAN_DEBOUNCE_S)
        finally:
            await asyncio.to_thread(self._stop_observer)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the files in hand (or leave them in ``processing/`` for resume); take no new one."""
        self._stopping.set()
        self._wake.set()
        for _ in self._workers:
            self._queue.put_nowait(_STOP)
        if self._workers:
            _done, pending = await asyncio.wait(self._workers, timeout=timeout_s)
            for task in pending:  # a file interrupted here stays in processing/: resumed at start
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("drop folder stopped: %s", self.counts)

    def prepare(self) -> None:
        prepare_dirs(self.root)

    def _start_observer(self) -> None:
        """File events wake the scanner at once; the periodic scan covers events that were missed."""
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a core dependency
            log.warning("watchdog is not installed: the drop folder only polls")
            return
        loop = asyncio.get_running_loop()
        wake = self._wake

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in _QUIET_EVENTS:  # our own claims and reads: nothing new
                    return
                with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                    loop.call_soon_threadsafe(wake.set)

        try:
            observer = Observer()
            observer.schedule(_Wake(), str(self.dirs[INBOX]), recursive=False)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except OSError as exc:  # e.g. the inotify watch limit: polling still works
            log.warning("drop folder file events are off (%s): polling every %ss", exc, self.poll_s)

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(5)
            self._observer = None

    # ---- finding files ---------------------------------------------------------------------------

    def _list_processing(self) -> list[_Item]:
        items = []
        for entry in os.scandir(self.dirs[PROCESSING]):
            if entry.is_file() and not entry.name.startswith("."):
                st = entry.stat()
                items.append(_Item(0, st.st_mtime_ns, entry.name, st.st_size))
        if items:
            log.info("drop folder: resuming %d file(s) left in processing/", len(items))
        return sorted(items)

    def _list_inbox(self, known: frozenset[str]) -> tuple[list[_Item], float | None]:
        """Stable files not yet queued, in arrival order; and when the next one becomes stable."""
        now = time.time_ns()
        ready, soonest = [], None
        for entry in os.scandir(self.dirs[INBOX]):
            name = entry.name
            if name in known or name.startswith((".", "~")) or name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except FileNotFoundError:
                continue
            age = now - st.st_mtime_ns
            if age < self.stable_ns:
                wait = (self.stable_ns - age) / 1e9
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            ready.append(_Item(1, st.st_mtime_ns, name, st.st_size))
        ready.sort()
        return ready, soonest

    async def _scan(self) -> float:
        ready, soonest = await asyncio.to_thread(self._list_inbox, frozenset(self._known))
        for item in ready:
            self._known.add(item.name)
            self._queue.put_nowait(item)
        if soonest is None:
            return self.poll_s
        return min(self.poll_s, max(soonest, 0.01))

    # ---- settling one file ------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            item = await self._queue.get()
            if item is _STOP or self._stopping.is_set():
                return
            try:
                await self._handle(item)
            except Exception:  # a bug must not stop the folder: the file stays for a retry
                log.exception("drop folder: %s failed unexpectedly; it stays for a retry", item.name)
                self._retry(item.name)

    def _claim(self, item: _Item) -> bool:
        """inbox/ → processing/ by rename; False when the file changed or went away meanwhile."""
        src, dst = self.dirs[INBOX] / item.name, self.dirs[PROCESSING] / item.name
        try:
            st = src.stat()
        except FileNotFoundError:
            return False
        if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
            return False  # still being written: the next scan sees it again when stable
        if dst.exists():  # cannot happen while names are tracked; never overwrite a claimed file
            log.warning("drop folder: %s is in inbox/ and processing/ at once; left in inbox/", item.name)
            return False
        os.rename(src, dst)
        return True

    async def _handle(self, item: _Item) -> None:
        name = item.name
        if item.rank == 1 and not await asyncio.to_thread(self._claim, item):
            self._known.discard(name)
            return
        status, answer, lines = await self._settle_file(name)
        if status >= 500:
            log.warning("drop folder: %s not settled now (%s); retried later", name, answer["error"]["code"])
            self._retry(name)
            return
        await asyncio.to_thread(self._finish, name, status, answer, lines)
        self._retries.pop(name, None)
        self._known.discard(name)

    async def _settle_file(self, name: str) -> tuple[int, dict[str, Any], dict[str, int]]:
        path = self.dirs[PROCESSING] / name
        lines: dict[str, int] = {}
        try:
            suffix = Path(name).suffix.lower()
            if suffix not in ACCEPTED_SUFFIXES:
                raise ValidationFailed(
                    "unsupported file type",
                    details=[{"field": "$", "message": "a settlement file's name ends in .json or .csv"}],
                )
            size = path.stat().st_size
            if size > self.max_bytes:
                raise BodyTooLarge(f"the file is larger than {self.max_bytes} bytes")
            data = await asyncio.to_thread(path.read_bytes)
            body = data.removeprefix(b"\xef\xbb\xbf")  # Windows tools put a UTF-8 BOM before JSON too
            if suffix == ".csv":
                body, lines = csv_to_body(data)
            status, answer = await self.settle(body)
        except (AgentError, ProtocolError) as exc:
            status, answer = error_answer(exc)
        return status, answer, lines

    def _finish(self, name: str, status: int, answer: dict[str, Any], lines: dict[str, int]) -> None:
        """Result first (durable), then the move: a crash between them resumes to the same answer."""
        src = self.dirs[PROCESSING] / name
        result = self.dirs[RESULTS] / (Path(name).stem + ".json")
        if status < 300:
            write_atomic(result, _answer_bytes(answer))
            os.replace(src, _free_name(self.dirs[DONE], name))
            duplicate = bool(answer.get("duplicate"))
            self.counts["duplicate" if duplicate else "settled"] += 1
            held = " (already held)" if duplicate else ""
            log.debug("drop folder: %s settled as seq %s%s", name, answer.get("seq"), held)
            return
        _with_lines(answer, lines)
        target = _free_name(self.dirs[REJECTED], name)
        error = {"file": name, "status": status, **answer}
        write_atomic(target.with_name(target.name + ".error.json"), _answer_bytes(error))
        write_atomic(result, _answer_bytes(answer))
        os.replace(src, target)
        self.counts["rejected"] += 1
        log.info("drop folder: %s rejected (%s %s); nothing settled", name, status, answer["error"]["code"])

    def _retry(self, name: str) -> None:
        """Back off and queue the file again (it stays in ``processing/``)."""
        n = self._retries.get(name, 0) + 1
        self._retries[name] = n
        self.counts["retried"] += 1
        delay = min(self.poll_s * 2 ** (n - 1), MAX_RETRY_S)

        def again() -> None:
            if self._stopping.is_set():
                return
            try:
                st = (self.dirs[PROCESSING] / name).stat()
            except FileNotFoundError:
                self._known.discard(name)
                return
            self._queue.put_nowait(_Item(0, st.st_mtime_ns, name, st.st_size))

        asyncio.get_running_loop().call_later(delay, again)

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/status`` shows: files waiting and in hand, and refused files a person must
        look at (their reasons are in ``rejected/*.error.json``); counts since the agent started."""

        def files(d: str, skip: str = "") -> int:
            try:
                with os.scandir(self.dirs[d]) as it:
                    names = (e.name for e in it if not e.name.startswith("."))
                    return sum(1 for n in names if not (skip and n.endswith(skip)))
            except OSError:
                return 0

        return {
            "root": str(self.root), "queued": self._queue.qsize(), "inbox": files("inbox"),
            "processing": files("processing"), "rejected_files": files("rejected", ".error.json"),
            **self.counts,
        }  # fmt: skip
