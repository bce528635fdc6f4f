"""``yibao-central import …``, ``hospitals import`` and ``enroll-token --hospitals-file``: a new
deployment's first day (``docs/IMPORT.md``).

Bringing a province onto the system means registering thousands of hospitals, giving each its
enrolment token and loading the years of settlements screening must see; one at a time through the
verbs for a single hospital that is days of typing. These verbs take files.

    import settlements FILE… [--format jsonl|csv|parquet] [--money fen|yuan] [--strict] [--rejects OUT]
                             [--json]
    import status [--json]
    import rejects ID
    hospitals import FILE.csv
    enroll-token --hospitals-file FILE --out TOKENS.csv [--ttl-hours N] [--area AREA]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .bulk_import import (
    FORMATS,
    import_rejects,
    import_settlements,
    import_status,
    sniff_format,
    write_rejects,
)
from .config import CentralConfig
from .enrol import issue_token
from .errors import CentralError, ConfigInvalid
from .hospitals import read_hospitals_csv, set_hospitals
from .policy import Actor, audit_in
from .store import Store

__all__ = ["add_hospital_parsers", "add_parsers", "issue_tokens_file", "run", "run_hospitals_import"]


def add_parsers(verbs: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    """``parents``: the acting operator's arguments (audited with every import)."""
    imp = verbs.add_parser("import", help="bulk import of historical settlements (docs/IMPORT.md)")
    sub = imp.add_subparsers(dest="import_verb", required=True, metavar="ACTION")
    s = sub.add_parser("settlements", parents=parents, help="import settlement files; safe to run again")
    s.add_argument("files", nargs="+", type=Path, metavar="FILE")
    s.add_argument("--format", choices=FORMATS, help="default: from each file's suffix")
    s.add_argument(
        "--money", choices=("fen", "yuan"), default="fen", help="amounts in integer fen (default) or yuan"
    )
    s.add_argument("--strict", action="store_true", help="stop at the first bad row (its chunk not stored)")
    s.add_argument("--rejects", type=Path, metavar="OUT", help="write the refused rows (JSON lines) to OUT")
    s.add_argument("--json", action="store_true", help="one JSON summary per file on stdout")
    st = sub.add_parser("status", help="every import with its checkpoint and counts")
    st.add_argument("--json", action="store_true", help="one JSON object per line")
    rj = sub.add_parser("rejects", help="one import's refused rows as JSON lines (file, row, code, message)")
    rj.add_argument("import_id", type=int, metavar="ID")


def add_hospital_parsers(
    hosp_verbs: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    p = hosp_verbs.add_parser("import", parents=parents, help="register hospitals from a CSV (all or none)")
    p.add_argument("file", type=Path, help="CSV with header fixmedins_code,hosp_lv,name,admdvs,lat,lon")


def run(args: argparse.Namespace, config: CentralConfig, store: Store, actor: Actor) -> int:
    if args.import_verb == "status":
        for row in store.read(import_status):
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                stored = row["settlements"] + row["reversals"]
                print(
                    f"{row['id']:>4} {row['status']:<8} {row['format']:<8} rows {row['rows_read']:>10}  "
                    f"stored {stored:>10}  held {row['already_held']:>8}  "
                    f"agents' {row['held_from_agent']:>8}  rejected {row['rejected']:>8}  {row['path']}"
                )
        return 0
    if args.import_verb == "rejects":
        store.read(lambda c: write_rejects(import_rejects(c, args.import_id), sys.stdout))
        return 0
    for path in args.files:
        sniff_format(path, args.format)  # refuse a file of unknown format before importing any
    rejected = 0
    rejects_out = args.rejects.open("x", encoding="utf-8") if args.rejects else None
    try:
        for path in args.files:
            rejected += _import_one(args, store, actor, path, rejects_out)
    finally:
        if rejects_out is not None:
            rejects_out.close()
    return 2 if rejected else 0


def _import_one(
    args: argparse.Namespace, store: Store, actor: Actor, path: Path, rejects_out: TextIO | None
) -> int:
    total = None
    if sniff_format(path, args.format) == "parquet":
        import pyarrow.parquet as pq

        total = pq.ParquetFile(path).metadata.num_rows
    with tqdm(total=total, unit=" rows", desc=path.name, file=sys.stderr, disable=None, smoothing=0.1) as bar:

        def progress(rows_read: int) -> None:
            bar.update(rows_read - bar.n)

        summary = import_settlements(store, path, fmt=args.format, money=args.money, strict=args.strict,
                                     progress=progress)  # fmt: skip
    store.write(lambda c: audit_in(c, actor, "import.settlements", {
        k: v for k, v in summary.to_json().items() if k != "first_reject"}))  # fmt: skip
    if rejects_out is not None and summary.rejected:
        store.read(lambda c: write_rejects(import_rejects(c, summary.import_id), rejects_out))
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False))
    else:
        resumed = f" (resumed from row {summary.resumed_from})" if summary.resumed_from else ""
        print(f"import {summary.import_id} {path.name}: {summary.status}{resumed}; {summary.rows_read} rows: "
              f"{summary.settlements} settlements and {summary.reversals} reversals stored, "
              f"{summary.already_held} held already, {summary.held_from_agent} uploaded by agents, "
              f"{summary.rejected} rejected")  # fmt: skip
        if summary.first_reject:
            r = summary.first_reject
            print(f"  first reject: row {r['row']}: {r['code']}: {r['message']} "
                  f"(all: yibao-central import rejects {summary.import_id})")  # fmt: skip
    return summary.rejected


def run_hospitals_import(args: argparse.Namespace, store: Store, actor: Actor) -> int:
    specs = read_hospitals_csv(args.file)
    rows = set_hospitals(store, actor, specs)
    print(f"{len(rows)} hospitals registered from {args.file.name}", file=sys.stderr)
    return 0


def issue_tokens_file(
    store: Store, hospitals_file: Path, out: Path, ttl_hours: float, area: str | None
) -> int:
    """One enrolment token per hospital of the file, into a new 0600 CSV (tokens never go to a log or
    the terminal: they are the hospitals' one-time secrets, handed over out of band)."""
    with hospitals_file.open("r", encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if "fixmedins_code" not in (reader.fieldnames or []):
            raise ConfigInvalid(f"{hospitals_file.name}: the header must name fixmedins_code")
        codes = [(row["fixmedins_code"] or "").strip() for row in reader]
    if not codes:
        raise ConfigInvalid(f"{hospitals_file.name} lists no hospital")
    if len(set(codes)) != len(codes):
        raise ConfigInvalid(f"{hospitals_file.name} lists a hospital twice")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never overwrite handed-out tokens
    issued = 0
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["fixmedins_code", "token", "ttl_hours"])
        try:
            for code in codes:
                w.writerow([code, issue_token(store, code, ttl_hours, area=area), ttl_hours])
                issued += 1
        except CentralError as exc:
            raise ConfigInvalid(f"{exc.message} (the {issued} tokens before it are in {out})") from None
    return issued
