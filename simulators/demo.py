"""``make demo``: the whole spine on loopback, end to end, on embedded defaults.

It starts a central collector and one agent as real processes (through their console
scripts, as an operator would), enrols the agent, drives it with the HIS simulator, waits
for the outbox to drain, and prints what was settled, uploaded, verified and reconciled.
Without ``--duration`` it drives for 30 s, prints the summary and keeps both processes
running until Ctrl-C; with ``--duration S`` it drives for S seconds, prints the summary
and exits 0 only if every settlement made reached the centre.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agent.config import load_config, save_config
from central.intake.reconcile import PERIOD_TZ
from central.tls import trust_digest

from .evoucher import Issuer
from .fraud import generate_traffic, post_traffic, score_detection
from .his import DEFAULT_HOSPITAL, generate_settlement, run_his
from .pcscd import Pcscd, PcscdUnavailable
from .vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for

__all__ = ["main"]

BIN = Path(sys.executable).parent


def _port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The demo centre's trust bundle, once ``init`` made it: the demo verifies the centre like an agent.
_TRUST: ssl.SSLContext | None = None


def _context(url: str) -> ssl.SSLContext | None:
    return _TRUST if url.startswith("https://") else None


def _get(url: str, token: str | None = None) -> Any:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5, context=_context(url)) as resp:
        return json.loads(resp.read())


#: The centre's operators' tokens by name (``admin`` from ``init``), passed to the CLI in
#: ``$YIBAO_OPERATOR_TOKEN`` as an operator's shell would hold them.
_TOKENS: dict[str, str] = {}


def _cli(*args: str, who: str = "admin") -> str:
    return _cli_rc(*args, who=who)[1]


def _cli_rc(*args: str, who: str = "admin") -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "YIBAO_OPERATOR_TOKEN"}
    if who in _TOKENS:
        env["YIBAO_OPERATOR_TOKEN"] = _TOKENS[who]
    out = subprocess.run(
        [str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=120, env=env
    )
    if out.returncode not in (0, 2, 3):  # 2, 3: reconcile's "not whole" and "not provably complete"
        raise SystemExit(f"{' '.join(args[:3])} failed:\n{out.stderr}")
    return out.returncode, out.stdout


class _Service:
    def __init__(self, name: str, args: list[str], log: Path, health: str) -> None:
        self.name, self.health = name, health
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited at start; see {log}")
            try:
                _get(health)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start listening; see {log}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _start_card_stack(home: Path, services: list[_Stoppable]) -> VpcdSlot | None:
    """pcscd with the vpcd driver, the PSAM in slot 2 and a patient's card in slot 1."""
    try:
        daemon = Pcscd(log_path=home / "pcscd.log").start()
    except PcscdUnavailable as exc:
        print(f"card reading off: {exc}")
        return None
    services.append(daemon)
    psam = VpcdSlot(VirtualPsam(), port=daemon.psam_port).start()
    services.append(psam)
    card = VpcdSlot(VirtualCard(card_for(CARD_HOLDER)), port=daemon.card_port).start()
    services.append(card)
    daemon.wait_card(0)
    daemon.wait_card(1)
    print(f"pcscd   readers {', '.join(daemon.readers)} (virtual card and PSAM over vpcd)")
    return card


def _wait_drained(agent_url: str, token: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = _get(agent_url + "/v1/status", token)
        if status["outbox"]["pending"] == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.2)


class _Stoppable(Protocol):
    def stop(self) -> None: ...


CARD_HOLDER = "370211195804021236"
VOUCHER_HOLDER = "37021119900715002X"


def _request(method: str, url: str, token: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Authorization": f"Bearer {token}"})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30, context=_context(url)) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _settle_identified(a_url: str, token: str, hospital: str, ident: dict, n: int) -> dict:
    """One settlement for the identified person, naming how they were identified."""
    body = generate_settlement(random.Random(n), hospital, n, run_tag=f"DESK{int(time.time())}")
    body["psn"].update(psn_no=ident["psn_no"], insuplc_admdvs=ident["insuplc_admdvs"])
    if ident.get("card_sn"):
        body["psn"].update(card_sn=ident["card_sn"], gend=ident["gend"], brdy=ident["brdy"])
    body["mdtrt_cert_type"], body["mdtrt_cert_no"] = ident["mdtrt_cert_type"], ident["mdtrt_cert_no"]
    status, answer = _request("POST", a_url + "/v1/settlements", token, body)
    if status not in (200, 201):
        raise RuntimeError(f"the identified settlement was refused: {answer}")
    return {"setl_id": answer["setl_id"], "kind": "setl"}


def _desk(a_url: str, token: str, hospital: str, issuer: Issuer, card_slot: VpcdSlot | None) -> list[dict]:
    """The cashier's side: a card read through pcscd, an e-voucher scanned, one settlement each."""
    made: list[dict] = []
    print("at the desk:")
    if card_slot is None:
        print("  card          skipped: no pcscd with the vpcd driver here (see above)")
    else:
        status, answer = _request("GET", a_url + "/v1/card?wait=15", token)
        if status == 200:
            ident, read = answer["identity"], answer["read"]
            print(
                f"  card          authenticated (SM4 internal auth via the PSAM), insured area "
                f"{ident['insuplc_admdvs']}, expires {ident['expires']}; {read['card_apdus']} card APDUs + "
                f"{read['psam_apdus']} PSAM APDUs in {read['ms']} ms (the first read also finds the PSAM)"
            )
            made.append(_settle_identified(a_url, token, hospital, ident, 1))
        else:
            print(f"  card          refused: {answer['error']['code']}: {answer['error']['message']}")
    qr = issuer.issue(VOUCHER_HOLDER, insuplc_admdvs="370211", ttl_s=300)
    status, answer = _request("POST", a_url + "/v1/evoucher", token, {"qr": qr})
    if status == 200:
        print(f"  e-voucher     verified ({len(qr)} characters, issuer {answer['identity']['issuer_kid']})")
        made.append(_settle_identified(a_url, token, hospital, answer["identity"], 2))
        status, again = _request("POST", a_url + "/v1/evoucher", token, {"qr": qr})
        print(f"  same QR again refused: {again.get('error', {}).get('code')}")
    else:
        print(f"  e-voucher     refused: {answer['error']['code']}")
    print(f"  settlements   {len(made)} naming how the person was identified (mdtrt_cert_type 03 / 01)")
    return made


def _operator(c_home: Path, a_url: str, token: str, hospital: str, n: int) -> list[dict]:
    """An operator blacklists a person at the centre; the agent refuses them; the entry is lifted."""
    body = generate_settlement(random.Random(n), hospital, n, run_tag=f"OPS{int(time.time())}")
    psn_no = body["psn"]["psn_no"]
    area = "370200"
    print("operator:")
    started = time.monotonic()
    proposed = _cli("yibao-central", "--home", str(c_home), "blacklist", "add", "--type", "person", "--id",
                    psn_no, "--reason", "card reported lost", "--area", area, who="wang")  # fmt: skip
    change = _approve(c_home, proposed)
    print(f"  maker-checker change {change[0]} proposed by wang (digest {change[1][:12]}…), "
          "approved by zhang")  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        body["his_setl_no"] = f"OPS-{n}-{int(time.monotonic() * 1000)}"
        status, answer = _request("POST", a_url + "/v1/settlements", token, body)
        if status == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status != 403:
        print(f"  blacklist     NOT enforced within 30 s (last answer {status})")
        return [{"setl_id": answer["setl_id"], "kind": "setl"}] if status in (200, 201) else []
    err = answer["error"]
    print(
        f"  blacklist     person added by wang and zhang; the agent refused the next settlement "
        f"{time.monotonic() - started:.1f} s later "
        f"({err['code']}: {err['reason']}, list v{err['list_version']})"
    )
    _approve(c_home, _cli("yibao-central", "--home", str(c_home), "blacklist", "remove", "--type", "person",
                          "--id", psn_no, "--area", area, "--reason", "card found", who="wang"))  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body["his_setl_no"] = f"OPS-{n}-{int(time.monotonic() * 1000)}"
        status, answer = _request("POST", a_url + "/v1/settlements", token, body)
        if status in (200, 201):
            print("  lifted        the entry was removed; the agent settles for the person again")
            return [{"setl_id": answer["setl_id"], "kind": "setl"}]
        time.sleep(0.2)
    print("  lifted        NOT seen by the agent within 30 s")
    return []


def _approve(c_home: Path, proposed: str) -> tuple[str, str]:
    """The checker (zhang) approves the change the maker's verb printed, naming its digest."""
    found = re.search(r"^change (\d+) \[pending\] .* digest ([0-9a-f]{64})\)$", proposed, re.M)
    if found is None:
        raise SystemExit(f"no pending change in {proposed!r}")
    _cli("yibao-central", "--home", str(c_home), "changes", "approve", found[1], "--digest", found[2],
         who="zhang")  # fmt: skip
    return found[1], found[2]


def _operators(c_home: Path) -> None:
    """The first admin's token from ``init``, then two policy operators: a maker and a checker."""
    _TOKENS["admin"] = (c_home / "admin.token").read_text().strip()
    for name in ("wang", "zhang"):
        _TOKENS[name] = _cli("yibao-central", "--home", str(c_home), "operators", "add", name, "--role",
                             "policy", "--reason", "demo policy operator").strip()  # fmt: skip


SAMPLES = Path(__file__).resolve().parent.parent / "docs" / "samples"
MONITOR_AREA = "370200"


def _enrol_agent(c_home: Path, c_url: str, hospital: str, a_home: Path) -> None:
    """A one-time token from the centre, then ``yibao-agent init`` with it, as an operator does."""
    token = _cli("yibao-central", "--home", str(c_home), "enroll-token", "--hospital", hospital).strip()
    _cli("yibao-agent", "--home", str(a_home), "init", "--central", c_url, "--token", token,
         "--hospital", hospital, "--ca-hash", trust_digest(c_home / "tls"))  # fmt: skip


def _start_agent(
    home: Path, c_home: Path, c_url: str, hospital: str, services: list[_Stoppable]
) -> tuple[str, str]:
    """Enrol and start one more agent (another hospital of the monitoring traffic); its URL and HIS token."""
    a_home = home / f"agent-{hospital}"
    _enrol_agent(c_home, c_url, hospital, a_home)
    url = f"http://127.0.0.1:{_port(8711)}"
    services.append(
        _Service(
            f"agent {hospital}",
            [
                str(BIN / "yibao-agent"),
                "--home",
                str(a_home),
                "serve",
                "--listen",
                url.removeprefix("http://"),
            ],
            home / f"agent-{hospital}.log",
            url + "/v1/health",
        )
    )
    return url, (a_home / "his.token").read_text().strip()


def _monitoring(
    home: Path,
    c_home: Path,
    c_url: str,
    hospital: str,
    a_url: str,
    his_token: str,
    services: list[_Stoppable],
) -> bool:
    """Labelled fraud through three agents, screened at the centre; a reviewer takes one to a blacklist."""
    print("monitoring:")
    cli = ("yibao-central", "--home", str(c_home))
    traffic = generate_traffic(20261125, size=300, fraud_rate=0.25)
    files = traffic.write(home / "traffic")
    for h in traffic.hospitals:
        _cli(*cli, "hospitals", "set", "--hospital", h.code, "--level", h.hosp_lv, "--name", h.name,
             "--lat", f"{h.lat}", "--lon", f"{h.lon}")  # fmt: skip
    _approve(c_home, _cli(*cli, "catalogue", "import", str(SAMPLES / "catalogue.json"), "--area",
                          MONITOR_AREA, who="wang"))  # fmt: skip
    _approve(c_home, _cli(*cli, "rules", "publish", str(SAMPLES / "monitoring_rules.json"), "--area",
                          MONITOR_AREA, who="wang"))  # fmt: skip
    _cli(*cli, "deaths", "import", str(files["deaths"]))
    _TOKENS["li"] = _cli(*cli, "operators", "add", "li", "--area", MONITOR_AREA, "--role", "reviewer",
                         "--reason", "demo reviewer").strip()  # fmt: skip
    _TOKENS["zhao"] = _cli(*cli, "operators", "add", "zhao", "--area", MONITOR_AREA, "--role", "supervisor",
                           "--reason", "demo supervisor: decides what li confirmed").strip()  # fmt: skip
    agents = {h.code: _start_agent(home, c_home, c_url, h.code, services) for h in traffic.hospitals
              if h.code != hospital}  # fmt: skip
    agents[hospital] = (a_url, his_token)
    if set(agents) != {h.code for h in traffic.hospitals}:
        agents = {h.code: _start_agent(home, c_home, c_url, h.code, services) for h in traffic.hospitals}
    started = time.monotonic()
    ids = asyncio.run(post_traffic(traffic, agents))
    for url, token in agents.values():
        _wait_drained(url, token)
    fraud = sum(c.label == "fraud" for c in traffic.cases)
    print(f"  traffic       {len(ids)} settlements at {len(agents)} hospitals: {fraud} labelled fraud cases, "
          f"{len(traffic.cases) - fraud} honest look-alikes (truth in {files['truth']})")  # fmt: skip

    def queue() -> list[dict[str, Any]]:
        out = _cli(
            *cli, "suspicions", "list", "--status", "all", "--limit", "1000", "--json", who="li"
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    deadline = time.monotonic() + 30
    while not (found := queue()) and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"  screened      {len(found)} suspicions from the centre's incremental screening, "
          f"{time.monotonic() - started:.1f} s after the first settlement")  # fmt: skip
    today = datetime.now(PERIOD_TZ).date()
    summary = json.loads(_cli(*cli, "screen", "--from", (today - timedelta(days=1)).isoformat(), "--to",
                              today.isoformat(), "--json", "--quiet"))  # fmt: skip
    found = queue()
    print(f"  full screen   {summary['hits']} hits over {summary['settlements']} settlements: "
          f"{summary['new_suspicions']} new suspicions (a fact found twice is one suspicion)")  # fmt: skip
    score = score_detection(traffic.cases, ids, found)
    templates = score["templates"]
    cases = sum(t["cases"] for t in templates.values())
    hits = sum(t["found"] for t in templates.values())
    lookalike = sum(t["fp_lookalike"] for t in templates.values())
    other = sum(t["false_positives"] - t["fp_lookalike"] for t in templates.values())
    print(f"  ground truth  {hits} of {cases} fraud cases found over {len(templates)} templates; "
          f"{lookalike} suspicions on the {len(traffic.cases) - fraud} honest look-alikes; {other} on "
          "other settlements (the plain HIS traffic above ignores the catalogue)")  # fmt: skip
    reds = sorted((s for s in found if s["object_type"] == "person" and s["status"] == "new"),
                  key=lambda s: (-s["score"], -s["amount_fen"]))  # fmt: skip
    for s in reds[:3]:
        print(f"    [{s['severity']:<6} {s['score']:>3}] {s['rule_id']}: {s['message'][:100]}")
    if not reds:
        print("  review        nothing to review")
        return False
    top = reds[0]
    sid = str(top["id"])
    _cli(*cli, "suspicions", "review", sid, "confirm", "--reason", "records checked", who="li")
    title = f"{top['rule_id']} at {top['fixmedins_code']}"
    case = json.loads(_cli(*cli, "cases", "open", sid, "--title", title, "--json", who="li"))
    decision = json.loads(_cli(*cli, "decisions", "make", str(case["id"]), "--kind", "blacklist",
                               "--target-type", "person", "--target-id", top["psn_no"],
                               "--reason", "confirmed fraud", "--json", who="zhao"))  # fmt: skip
    body = generate_settlement(random.Random(7), hospital, 7, run_tag=f"MON{int(time.time())}")
    body["psn"] = {**body["psn"], "psn_no": top["psn_no"]}
    deadline = time.monotonic() + 30
    while True:
        body["his_setl_no"] = f"MON-{int(time.monotonic() * 1000)}"
        status, answer = _request("POST", a_url + "/v1/settlements", his_token, body)
        if status == 403 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if status != 403:
        print(f"  decision      blacklist NOT enforced within 30 s (last answer {status})")
        return False
    print(f"  reviewed      suspicion {sid} confirmed → case {case['id']} → decision {decision['id']} "
          f"(blacklist, bundle seq {decision['bundle_seq']}): the agent refuses the person "
          f"({answer['error']['code']})")  # fmt: skip
    return True


def run_demo(home: Path, drive_s: float, rate: float, hospital: str, services: list[_Stoppable]) -> bool:
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    c_home, a_home = home / "central", home / "agent"
    c_port, a_port = _port(8720), _port(8710)
    c_url, a_url = f"https://127.0.0.1:{c_port}", f"http://127.0.0.1:{a_port}"

    global _TRUST
    _cli("yibao-central", "--home", str(c_home), "init", "--admin-token-file", str(c_home / "admin.token"))
    _operators(c_home)
    _TRUST = ssl.create_default_context(cafile=str(c_home / "tls" / "trust.pem"))
    central = _Service(
        "central",
        [str(BIN / "yibao-central"), "--home", str(c_home), "serve", "--listen", f"127.0.0.1:{c_port}"],
        home / "central.log",
        c_url + "/v1/health",
    )
    services.append(central)
    _enrol_agent(c_home, c_url, hospital, a_home)
    issuer = Issuer.load_or_create(home / "issuer")
    config = load_config(a_home)
    config.evoucher_issuers = issuer.issuers_config()
    config.heartbeat_s = 1.0  # so reconcile sees the drained outbox within the demo's seconds
    save_config(config)
    card_slot = _start_card_stack(home, services)
    agent = _Service(
        "agent",
        [str(BIN / "yibao-agent"), "--home", str(a_home), "serve", "--listen", f"127.0.0.1:{a_port}"],
        home / "agent.log",
        a_url + "/v1/health",
    )
    services.append(agent)
    his_token = (a_home / "his.token").read_text().strip()
    print(f"centre  {c_url}   (home {c_home}; agents on mutual TLS, trust {trust_digest(c_home / 'tls')})")
    print(f"agent   {a_url}   (home {a_home}, HIS token in {a_home / 'his.token'})")
    made: dict[str, dict] = {}
    for r in _desk(a_url, his_token, hospital, issuer, card_slot):
        made[r["setl_id"]] = r
    for r in _operator(c_home, a_url, his_token, hospital, 3):
        made[r["setl_id"]] = r
    print(f"driving the agent with the HIS simulator at {rate:g}/s for {drive_s:g} s …", flush=True)
    summary = asyncio.run(
        run_his(
            a_url,
            his_token,
            rate,
            drive_s,
            fixmedins_code=hospital,
            on_record=lambda r: made.__setitem__(r["setl_id"], r),
        )
    )
    status = _wait_drained(a_url, his_token)

    held = [
        json.loads(line)
        for line in _cli("yibao-central", "--home", str(c_home), "export", "settlements").splitlines()
        if line
    ]
    held_ids = [r["setl_id"] for r in held]
    missing = set(made) - set(held_ids)
    twice = len(held_ids) - len(set(held_ids))
    local_day = datetime.now(PERIOD_TZ).date()  # the centre's business day, not this machine's
    today = local_day.isoformat()
    yesterday = (local_day - timedelta(days=1)).isoformat()
    recon_rc, recon = 0, ""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # until a heartbeat after the drain has arrived
        recon_rc, recon = _cli_rc(
            "yibao-central", "--home", str(c_home), "reconcile", "--hospital", hospital, "--from", yesterday,
            "--to", today,
        )  # fmt: skip
        if "complete up to" in recon and "behind by" not in recon:
            break
        time.sleep(0.5)
    # Today has not ended, so reconcile cannot call the period complete (exit 3): what the demo can
    # show is every agent's signed heartbeat saying the centre holds all it settled.
    caught_up = "complete up to" in recon and "behind by" not in recon and "silent since" not in recon
    ok = not missing and not twice and recon_rc in (0, 3) and caught_up
    print()
    monitored = _monitoring(home, c_home, c_url, hospital, a_url, his_token, services)

    print()
    print(summary.format_text())
    print()
    print("Yibao Edge demo — summary")
    settled = [r for r in made.values() if r["kind"] == "setl"]
    reversed_ = [r for r in made.values() if r["kind"] == "revs"]
    print(
        f"  settled at the agent   {len(settled)} settlements, {len(reversed_)} reversals "
        f"(net {summary.amount_net} yuan), each durable before it was answered"
    )
    out = status["outbox"]
    print(
        f"  uploaded               acked seq {out['acked_seq']} of {out['last_seq']}; "
        f"pending {out['pending']}; centre reachable: {status['central']['reachable']}"
    )
    print(
        f"  verified and stored    {len(held)} records held at the centre; missing {len(missing)}; "
        f"held twice {twice}"
    )
    print()
    print(recon.rstrip())
    print()
    print(f"  result                 {'every settlement made reached the centre' if ok else 'INCOMPLETE'}")
    print(
        f"  monitoring             {'suspicions screened, reviewed and decided' if monitored else 'FAILED'}"
    )
    return ok and monitored


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m simulators.demo", description=__doc__)
    ap.add_argument("--duration", type=float, help="drive for S seconds, print the summary and exit")
    ap.add_argument("--rate", type=float, default=20.0, help="settlements per second from the HIS")
    ap.add_argument("--home", default="demo-home", help="working directory, recreated each run")
    ap.add_argument("--hospital", default=DEFAULT_HOSPITAL)
    args = ap.parse_args(argv)
    services: list[_Stoppable] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        ok = run_demo(Path(args.home).resolve(), args.duration or 30.0, args.rate, args.hospital, services)
        if args.duration is None:
            print("\nboth processes keep running; press Ctrl-C to stop", flush=True)
            while True:
                time.sleep(3600)
        return 0 if ok else 1
    except KeyboardInterrupt:
        return 130
    finally:
        for service in reversed(services):
            service.stop()


if __name__ == "__main__":
    sys.exit(main())
