"""``yibao-agent``: a thin shell over ``enrol``, ``serve`` and the outbox status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from .config import load_config
from .enrol import enrol
from .errors import AgentError
from .service import open_outbox, serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yibao-agent", description="Yibao Edge agent beside a hospital's HIS")
    p.add_argument(
        "--home", default=os.environ.get("YIBAO_HOME"), help="agent directory (default $YIBAO_HOME)"
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="verb", required=True)
    init = sub.add_parser("init", help="create the key and database and enrol with the centre")
    init.add_argument("--central", required=True, help="central collector URL, e.g. http://127.0.0.1:8720")
    init.add_argument("--token", required=True, help="one-time enrolment token from the central operator")
    init.add_argument("--hospital", required=True, help="fixmedins_code of this institution")
    srv = sub.add_parser("serve", help="run the HIS API and the uploader")
    srv.add_argument("--listen", help="host:port for the HIS API (default 127.0.0.1:8710)")
    sub.add_parser("status", help="print the outbox status as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.verb == "init":
            if not args.home:
                raise AgentError("no agent home: pass --home DIR or set YIBAO_HOME")
            config = asyncio.run(enrol(Path(args.home), args.central, args.token, args.hospital))
            print(f"enrolled as {config.agent_id}; HIS token in {config.token_path}")
            return 0
        config = load_config(args.home)
        if args.verb == "serve":
            if args.listen:
                config.listen = args.listen
            asyncio.run(serve(config))
            return 0
        if args.verb == "status":
            outbox = open_outbox(config)
            try:
                print(
                    json.dumps(
                        {
                            "agent_id": config.agent_id,
                            "outbox": outbox.status(),
                            "alarms": list(outbox.alarms.values()),
                        },
                        indent=2,
                    )
                )
            finally:
                outbox.close()
            return 0
    except AgentError as exc:
        print(f"yibao-agent: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
