"""``yibao-sim``: the outside world on the command line, one verb per simulator.

``traffic`` writes (and optionally posts) labelled fraud traffic: ``simulators.fraud``.
``realistic`` writes, drops or posts a seeded district's honest traffic over a date range:
``simulators.realistic``.

Each verb is a thin shell over a library function (``his`` → ``simulators.his.run_his``) so
tests and the demo call the same code the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from .evoucher import add_cli as add_evoucher
from .his import DEFAULT_HOSPITAL, HisSummary, run_his
from .vcard import CARD_PORT, DEMO_MASTER_KEY, PSAM_PORT, STATES, VirtualCard, VirtualPsam, VpcdSlot, card_for

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yibao-sim", description="Simulators that stand in for the world around Yibao Edge."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    his = verbs.add_parser(
        "his",
        help="post realistic settlements to an agent's HIS API",
        description=(
            "Post settlements evenly at --rate per second for --duration seconds (until Ctrl-C "
            "without --duration), retry the same body on timeouts and 5xx, and print what was "
            "sent and acknowledged."
        ),
    )
    his.add_argument(
        "--agent", required=True, metavar="URL", help="agent base URL, e.g. http://127.0.0.1:8700"
    )
    his.add_argument(
        "--token-file", required=True, type=Path, metavar="FILE", help="file holding the HIS API bearer token"
    )
    his.add_argument(
        "--rate", type=float, default=5.0, metavar="N", help="settlements per second (default 5)"
    )
    his.add_argument(
        "--duration", type=float, default=None, metavar="S", help="seconds to run (default: until Ctrl-C)"
    )
    his.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="replay the same traffic: a second run on the same day is answered as duplicates",
    )
    his.add_argument("--concurrency", type=int, default=8, metavar="C", help="requests in flight (default 8)")
    his.add_argument(
        "--hospital",
        default=DEFAULT_HOSPITAL,
        metavar="CODE",
        help=f"fixmedins_code of the sending hospital (default {DEFAULT_HOSPITAL})",
    )
    his.add_argument(
        "--reversal-share",
        type=float,
        default=0.02,
        metavar="P",
        help="share of acknowledged settlements that are then reversed (default 0.02)",
    )
    his.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="per-request timeout (default 10)"
    )
    his.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="re-sends of the same body after a timeout or 5xx (default 3)",
    )
    his.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write one JSON line per acknowledged record, to compare with the centre",
    )
    his.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    his.set_defaults(run=_his)

    card = verbs.add_parser(
        "card",
        help="insert a virtual social-security card into pcscd's vpcd reader and hold it",
        description=(
            "Insert a virtual social-security card for --psn-no into the virtual reader (vpcd, port "
            f"{CARD_PORT}) and hold it until Ctrl-C or SIGTERM, which removes it. pcscd must be running "
            "with the vsmartcard-vpcd driver (make demo starts one)."
        ),
    )
    card.add_argument(
        "--psn-no", required=True, metavar="N", help="18-character ID number of the card holder"
    )
    card.add_argument(
        "--state",
        choices=STATES,
        default="valid",
        help="what the card does: valid, expired, cloned (fails authentication), damaged, "
        "removed-mid-read, foreign (not a social-security card)",
    )
    card.add_argument(
        "--reinsert-after",
        type=float,
        default=None,
        metavar="S",
        help="with removed-mid-read: push the card back in after S seconds",
    )
    card.add_argument(
        "--port", type=int, default=CARD_PORT, metavar="P", help=f"vpcd port (default {CARD_PORT})"
    )
    card.add_argument(
        "--master-key",
        default=DEMO_MASTER_KEY.hex(),
        metavar="HEX",
        help="issuer master key the card's key is diversified from (default: the demo key)",
    )
    card.set_defaults(run=_card)

    psam = verbs.add_parser(
        "psam",
        help="insert the virtual PSAM (issuer security module) into the second vpcd slot and hold it",
    )
    psam.add_argument(
        "--port", type=int, default=PSAM_PORT, metavar="P", help=f"vpcd port (default {PSAM_PORT})"
    )
    psam.add_argument(
        "--master-key",
        default=DEMO_MASTER_KEY.hex(),
        metavar="HEX",
        help="issuer master key (default: the demo key)",
    )
    psam.set_defaults(run=_psam)

    add_evoucher(verbs)

    traffic = verbs.add_parser(
        "traffic",
        help="labelled fraud traffic for the monitoring benchmark: bodies, ground truth, deaths, hospitals",
        description=(
            "Generate a few days of HIS traffic for three simulated hospitals with labelled fraud cases (one "
            "pattern per monitoring template, mixtures) and honest look-alikes (simulators.fraud), write "
            "settlements.jsonl, truth.jsonl, deaths.csv and hospitals.json to --out, and with --agent post "
            "the bodies to the agents (then truth.jsonl also gets each case's setl_ids). The same --seed, "
            "--size, --fraud-rate and --today give the same files."
        ),
    )
    traffic.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory for the files")
    traffic.add_argument("--seed", type=int, default=1, metavar="N", help="generator seed (default 1)")
    traffic.add_argument(
        "--size", type=int, default=3000, metavar="N", help="settlements, about (default 3000)"
    )
    traffic.add_argument(
        "--fraud-rate",
        type=float,
        default=0.05,
        metavar="P",
        help="share of settlements in fraud cases, about (default 0.05); as many look-alikes",
    )
    traffic.add_argument(
        "--today",
        default=None,
        metavar="YYYY-MM-DD",
        help="the day the agents will stamp (default: today, local); stays and deaths fall before it",
    )
    traffic.add_argument(
        "--no-fee-times", action="store_true", help="leave fee_ocur_time out (an agent that does not take it)"
    )
    traffic.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="CODE=URL=TOKENFILE",
        help="post CODE's bodies to the agent at URL with the HIS token in TOKENFILE (repeat per hospital)",
    )
    traffic.set_defaults(run=_traffic)

    add_realistic(verbs)

    fleet = verbs.add_parser(
        "fleet",
        help="run many lightweight agents (policy only) against one centre",
        description=(
            "Enrol one agent per token (from `yibao-central enroll-token --hospital H --count N`) and run "
            "their policy clients: long-poll, TUF update, apply, signed report. Until Ctrl-C or --duration."
        ),
    )
    fleet.add_argument("--central", required=True, metavar="URL", help="central collector base URL")
    fleet.add_argument("--ca-hash", metavar="sha256:HEX",
                       help="the centre's TLS trust digest (https; `yibao-central tls show`)")  # fmt: skip
    fleet.add_argument("--tokens", required=True, type=Path, metavar="FILE",
                       help="one enrolment token per line")
    fleet.add_argument("--hospital", default=DEFAULT_HOSPITAL, metavar="CODE",
                       help="fixmedins_code the tokens were issued for")
    fleet.add_argument("--agents", type=int, default=None, metavar="N",
                       help="use the first N tokens (default all)")
    fleet.add_argument("--home", type=Path, default=Path("fleet-home"), metavar="DIR",
                       help="where the agents' homes go (must not hold enrolled agents)")
    fleet.add_argument("--duration", type=float, default=None, metavar="S", help="seconds to run")
    fleet.set_defaults(run=_fleet)
    return parser


def add_realistic(verbs: Any) -> None:
    """The ``realistic`` verb: ``simulators.realistic`` from the command line."""
    real = verbs.add_parser(
        "realistic",
        help="a seeded district's honest traffic over a date range: files, a drop folder or agents",
        description=(
            "Simulate a population (ages, genders, chronic conditions, insurance) visiting seven hospitals "
            "of levels 1-3 between --from and --to: refills when supplies run out, acute and pharmacy "
            "visits, inpatient stays with daily lines (simulators.realistic). With --out, write "
            "settlements.jsonl, hospitals.json and summary.json; with --drop-folder and --hospital, write "
            "that hospital's bodies into DIR/inbox/ (tmp + rename); with --agent, POST each hospital's "
            "bodies to its agent (--national: through the national envelope). The same --seed, --persons and "
            "dates give the same traffic."
        ),
    )
    real.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD", help="first visit day")
    real.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD", help="last visit day")
    real.add_argument("--seed", type=int, default=1, metavar="N", help="generator seed (default 1)")
    real.add_argument("--persons", type=int, default=5000, metavar="N", help="population size (default 5000)")
    real.add_argument("--out", type=Path, default=None, metavar="DIR", help="write the files here")
    real.add_argument("--drop-folder", type=Path, default=None, metavar="DIR",
                      help="an agent's drop folder: --hospital's bodies go to DIR/inbox/")  # fmt: skip
    real.add_argument("--hospital", default=None, metavar="CODE",
                      help="the drop folder's hospital (see hospitals.json)")  # fmt: skip
    real.add_argument("--no-fee-times", action="store_true", help="leave fee_ocur_time out")
    real.add_argument("--csv", action="store_true", help="drop-folder files in the CSV layout, not JSON")
    real.add_argument("--agent", action="append", default=[], metavar="CODE=URL=TOKENFILE",
                      help="post CODE's bodies to the agent at URL, token in TOKENFILE (repeat)")  # fmt: skip
    real.add_argument("--concurrency", type=int, default=4, metavar="C", help="requests in flight per agent")
    real.add_argument("--national", action="store_true",
                      help="drive --agent through the national envelope (9001; 2201-2207 per visit, "
                           "2401/2301/2402/2304 per inpatient stay)")  # fmt: skip
    real.set_defaults(run=_realistic)


def _realistic(args: argparse.Namespace) -> int:
    from datetime import date

    from .realistic import HOSPITALS, generate_realistic, post_realistic, write_drop_folder

    try:
        start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    except ValueError:
        print("yibao-sim: --from and --to must be dates such as 2026-11-01", file=sys.stderr)
        return 2
    if end < start or args.persons < 1:
        print("yibao-sim: --to must not be before --from, and --persons must be positive", file=sys.stderr)
        return 2
    codes = {h.code for h in HOSPITALS}
    if args.drop_folder is not None and args.hospital not in codes:
        print(
            f"yibao-sim: --drop-folder needs --hospital, one of {', '.join(sorted(codes))}", file=sys.stderr
        )
        return 2
    if not (args.out or args.drop_folder or args.agent):
        print("yibao-sim: say where the traffic goes: --out, --drop-folder or --agent", file=sys.stderr)
        return 2
    agents: dict[str, tuple[str, str]] = {}
    for spec in args.agent:
        code, _, rest = spec.partition("=")
        url, _, token_file = rest.rpartition("=")
        if code not in codes or not url:
            print(
                f"yibao-sim: --agent {spec}: CODE=URL=TOKENFILE with CODE one of the hospitals",
                file=sys.stderr,
            )
            return 2
        try:
            agents[code] = (url, Path(token_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            print(f"yibao-sim: --agent {spec}: {exc}", file=sys.stderr)
            return 2
    if (args.drop_folder is not None or agents) and end >= date.today():
        print(
            "yibao-sim: warning: --to is not in the past; the agent stamps each settlement with its own "
            "clock, so a visit that has not happened yet (a stay discharged later) is settled today",
            file=sys.stderr,
        )
    traffic = generate_realistic(args.seed, start, end, persons=args.persons, fee_times=not args.no_fee_times)
    summary = traffic.summary()
    print(json.dumps(summary, ensure_ascii=False), file=sys.stderr)
    if args.out:
        traffic.write(args.out)
        print(f"{summary['settlements']} settlements in {args.out}")
    if args.drop_folder is not None:
        layout = "csv" if args.csv else "json"
        files = write_drop_folder(traffic, args.drop_folder, args.hospital, layout=layout)
        print(f"{len(files)} files in {args.drop_folder / 'inbox'}")
    if agents:
        refused: dict[str, int] = {}

        def count(_p: Any, status: int, body: dict[str, Any] | None) -> None:
            if status not in (200, 201):
                err = (body or {}).get("error") or {}
                code = err.get("code") if isinstance(err, dict) else None
                refused[code or f"http_{status}"] = refused.get(code or f"http_{status}", 0) + 1

        if args.national:
            from .realistic import post_national

            def failed(_p: Any, infno: str, _msg: str) -> None:
                refused[f"infno_{infno}"] = refused.get(f"infno_{infno}", 0) + 1

            ids = asyncio.run(post_national(traffic, agents, on_error=failed))
        else:
            ids = asyncio.run(post_realistic(traffic, agents, concurrency=args.concurrency, on_answer=count))
        wanted = sum(1 for p in traffic.planned if p.hospital in agents)
        print(f"posted: {len(ids)} of {wanted} acknowledged" + (f"; refused {refused}" if refused else ""))
        return 0 if len(ids) == wanted else 1
    return 0


def _hold(slot: VpcdSlot, what: str) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    slot.start()
    if slot.wait_inserted(5):
        print(
            f"{what} inserted in the virtual reader on port {slot.port}; Ctrl-C removes it", file=sys.stderr
        )
    else:
        print(f"waiting for pcscd's vpcd reader on port {slot.port} (is pcscd running?)", file=sys.stderr)
    while not stop.wait(0.2):
        if not slot.running:
            break
    slot.stop()
    print(f"{what} removed", file=sys.stderr)
    return 0


def _master(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise SystemExit("yibao-sim: --master-key must be 32 hex digits (a 16-byte SM4 key)")
    return key


def _card(args: argparse.Namespace) -> int:
    try:
        data = card_for(args.psn_no, state=args.state)
    except ValueError as exc:
        print(f"yibao-sim: {exc}", file=sys.stderr)
        return 2
    card = VirtualCard(data, master_key=_master(args.master_key), state=args.state)
    return _hold(VpcdSlot(card, port=args.port, reinsert_after=args.reinsert_after), f"{args.state} card")


def _fleet(args: argparse.Namespace) -> int:
    from .fleet import run_fleet  # imports the agent's policy client: only for this verb

    try:
        tokens = [t.strip() for t in args.tokens.read_text().splitlines() if t.strip()]
    except OSError as exc:
        print(f"yibao-sim: cannot read the tokens file: {exc}", file=sys.stderr)
        return 2
    if args.agents is not None:
        tokens = tokens[: args.agents]
    if not tokens:
        print("yibao-sim: no enrolment tokens: make them with `yibao-central enroll-token --count N`",
              file=sys.stderr)
        return 2

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_fleet(args.central, tokens, args.hospital, args.home, duration=args.duration, stop=stop,
                        ca_hash=args.ca_hash,
                        say=lambda m: print(m, file=sys.stderr))

    asyncio.run(main())
    return 0


def _traffic(args: argparse.Namespace) -> int:
    from datetime import date

    from .fraud import generate_traffic, post_traffic

    try:
        today = date.fromisoformat(args.today) if args.today else None
    except ValueError:
        print("yibao-sim: --today must be a date such as 2026-11-25", file=sys.stderr)
        return 2
    agents: dict[str, tuple[str, str]] = {}
    for spec in args.agent:
        code, _, rest = spec.partition("=")
        url, _, token_file = rest.rpartition("=")
        try:
            agents[code] = (url, Path(token_file).read_text(encoding="utf-8").strip())
        except OSError as exc:
            print(f"yibao-sim: --agent {spec}: {exc}", file=sys.stderr)
            return 2
    traffic = generate_traffic(
        args.seed, size=args.size, fraud_rate=args.fraud_rate, today=today, fee_times=not args.no_fee_times
    )
    missing = {p.hospital for p in traffic.planned} - set(agents)
    if agents and missing:
        print(f"yibao-sim: no --agent for {', '.join(sorted(missing))}", file=sys.stderr)
        return 2
    paths = traffic.write(args.out)
    cases = len(traffic.cases)
    print(f"{len(traffic.planned)} settlements, {cases} cases, {len(traffic.deaths)} deaths in {args.out}")
    if agents:
        ids = asyncio.run(post_traffic(traffic, agents))
        with paths["truth"].open("w", encoding="utf-8") as out:
            for case in traffic.cases:
                row = case.to_json()
                row["setl_ids"] = [ids.get(no) for no in case.his_setl_nos]
                out.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        print(f"posted: {len(ids)} of {len(traffic.planned)} acknowledged")
        return 0 if len(ids) == len(traffic.planned) else 1
    return 0


def _psam(args: argparse.Namespace) -> int:
    return _hold(VpcdSlot(VirtualPsam(_master(args.master_key)), port=args.port), "PSAM")


async def _run_until_signal(args: argparse.Namespace, token: str, out: TextIO | None) -> HisSummary:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        # First Ctrl-C: stop sending and let answers in flight arrive; a second one kills.
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def write(rec: dict[str, Any]) -> None:
        if out is not None:
            out.write(json.dumps(rec, ensure_ascii=False) + "\n")

    return await run_his(
        args.agent,
        token,
        args.rate,
        args.duration,
        seed=args.seed,
        concurrency=args.concurrency,
        fixmedins_code=args.hospital,
        reversal_share=args.reversal_share,
        timeout=args.timeout,
        retries=args.retries,
        on_record=write,
        stop=stop,
    )


def _his(args: argparse.Namespace) -> int:
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        print(f"yibao-sim: cannot read the token file: {exc}", file=sys.stderr)
        return 2
    if not token:
        print(f"yibao-sim: the token file {args.token_file} is empty", file=sys.stderr)
        return 2
    if args.rate <= 0 or (args.duration is not None and args.duration < 0):
        print("yibao-sim: --rate must be positive and --duration not negative", file=sys.stderr)
        return 2
    until = "until Ctrl-C" if args.duration is None else f"for {args.duration:g} s"
    print(f"sending {args.rate:g} settlements/s {until} to {args.agent} as {args.hospital}", file=sys.stderr)
    out = args.out.open("w", encoding="utf-8", buffering=1) if args.out else None
    try:
        summary = asyncio.run(_run_until_signal(args, token, out))
    finally:
        if out is not None:
            out.close()
    if args.json:
        print(json.dumps(summary.to_json(), ensure_ascii=False))
    else:
        print(summary.format_text())
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``yibao-sim`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
