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

and, every month after, the hospitals' declarations checked against what the centre holds
(``central.intake.declarations``, docs/IMPORT.md "Monthly declarations")::

    declarations submit FILE.json [--json]      stored, checked, re-uploads asked; exit 2 if it differs
    declarations check ID [--json]              again, after re-uploads arrived
    declarations list [--hospital H] [--json]
    declarations reupload [--hospital H] [--json]   the settlements still asked for
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

from central.config import CentralConfig
from central.errors import CentralError, ConfigInvalid
from central.policy.bundles import Actor, audit_in
from central.storage.store import Store

from .bulk_import import (
    FORMATS,
    import_rejects,
    import_settlements,
    import_status,
    sniff_format,
    write_rejects,
)
from .declarations import (
    CheckResult,
    check_declaration,
    list_declarations,
    open_reupload_requests,
    store_declaration,
)
from .enrol import issue_token
from .hospitals import read_hospitals_csv, set_hospitals

__all__ = [
    "add_hospital_parsers",
    "add_parsers",
    "issue_tokens_file",
    "run",
    "run_declarations",
    "run_hospitals_import",
]


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

    dec = verbs.add_parser("declarations", help="hospitals' monthly declarations checked against the centre")
    dsub = dec.add_subparsers(dest="declarations_verb", required=True, metavar="ACTION")
    submit = dsub.add_parser("submit", parents=parents, help="store and check a declaration (JSON)")
    submit.add_argument("file", type=Path)
    submit.add_argument("--json", action="store_true", help="the result as one JSON object")
    chk = dsub.add_parser("check", parents=parents, help="check a held declaration again")
    chk.add_argument("declaration_id", type=int, metavar="ID")
    chk.add_argument("--json", action="store_true", help="the result as one JSON object")
    for verb, text in (("list", "declarations received, newest first"),
                       ("reupload", "settlements declared but not held, still asked for")):  # fmt: skip
        p = dsub.add_parser(verb, help=text)
        p.add_argument("--hospital", help="only this fixmedins_code")
        p.add_argument("--json", action="store_true", help="one JSON object per line")


def add_hospital_parsers(
    hosp_verbs: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]
) -> None:
    p = hosp_verbs.add_parser("import", parents=parents, help="register hospitals from a CSV (all or none)")
    p.add_argument("file", type=Path, help="CSV with header fixmedins_code,hosp_lv,name,admdvs,lat,lon")


def run(args: argparse.Namespace, config: CentralConfig, store: Store, actor: Actor | None) -> int:
    """``actor``: the token's operator, for ``import settlements`` (the read verbs need none)."""
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
    assert actor is not None, "import settlements is done by an operator"
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


def run_declarations(args: argparse.Namespace, store: Store, actor: Actor | None) -> int:
    verb = args.declarations_verb
    if verb == "list":
        for row in store.read(lambda c: list_declarations(c, args.hospital)):
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                force = "in force" if row["in_force"] else "replaced"
                result = row["result"] or "-"
                print(f"{row['id']:>5} {row['fixmedins_code']:<14} {row['period']}  {result:<8} "
                      f"{force:<9} received {row['received_at']} by {row['operator']}")  # fmt: skip
        return 0
    if verb == "reupload":
        for row in open_reupload_requests(store, args.hospital):
            if args.json:
                print(json.dumps(row, ensure_ascii=False))
            else:
                print(f"{row['fixmedins_code']:<14} {row['setl_id']:<40} declaration {row['declaration_id']} "
                      f"asked since {row['requested_at']}")  # fmt: skip
        return 0
    assert actor is not None, "submit and check are done by an operator"
    if verb == "submit":
        result = store_declaration(store, actor, args.file.read_bytes())
    else:
        result = check_declaration(store, actor, args.declaration_id)
    print(json.dumps(result.to_json(), ensure_ascii=False) if args.json else render_check(result))
    return 0 if result.agrees else 2


def render_check(r: CheckResult) -> str:
    """The operator's reading of a check: what agrees, what differs, and what to do next."""
    head = f"declaration {r.declaration_id}: {r.hospital} {r.period}: "
    if r.agrees:
        return head + "AGREES with what the centre holds"
    lines = [head + "DIFFERS from what the centre holds"]
    for t in r.totals:
        lines.append(f"  insutype {t['insutype']}: differs in {', '.join(t['differs_in'])}: "
                     f"declared {t['declared']}, held {t['held']}")  # fmt: skip
    for b in r.batches:
        lines.append(f"  batch {b['batch_no']}: declared {b['declared_records']} records "
                     f"{b['declared_medfee_sumamt']}, held {b['held_records']} "
                     f"{b['held_medfee_sumamt']}")  # fmt: skip
    if r.missing_at_centre:
        shown = ", ".join(r.missing_at_centre[:20]) + (" …" if len(r.missing_at_centre) > 20 else "")
        lines.append(f"  {len(r.missing_at_centre)} declared but not held: {shown}")
    if r.not_declared:
        shown = ", ".join(r.not_declared[:20]) + (" …" if len(r.not_declared) > 20 else "")
        lines.append(f"  {len(r.not_declared)} held but not declared: {shown}")
    for d in r.amounts_differ[:20]:
        lines.append(f"  {d['setl_id']}: differs in {', '.join(d['fields'])}")
    if r.reupload_open:
        lines.append(f"  {r.reupload_open} settlements asked of the hospital (`declarations reupload`); "
                     "check again when they arrive: "
                     f"`yibao-central declarations check {r.declaration_id}`")  # fmt: skip
    return "\n".join(lines)
