"""The centre and agents as the benchmarks run them: ``serve`` in its own process, and the CLIs.

Shared by the benchmarks that need a real centre or agent (drain, propagation, checks, detection,
drop folder, history lookup); a helper, not a benchmark (``make bench`` skips ``benchmarks/_*.py``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from _common import Failed

from agent.tls import ClientTls, make_csr
from central.tls import trust_digest
from protocol.wire import ENROLL_PATH, PROTOCOL_HEADER

__all__ = ["BIN", "CLK_TCK", "Centre", "Failed", "Served", "agent_init", "central_cli", "free_port"]

BIN = Path(sys.executable).parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: The verbs that propose a change request (``central.policy.changes``) rather than publish at once.
_PROPOSING = {("blacklist", "add"), ("blacklist", "remove"), ("blacklist", "import"), ("policy", "publish"),
              ("rules", "publish"), ("catalogue", "import"), ("keys", "publish")}  # fmt: skip
_CHANGE = re.compile(r"^change (\d+) \[pending\] .* digest ([0-9a-f]{64})\)$", re.M)


def _as(home: Path, who: str, *args: str) -> str:
    """``yibao-central`` as the operator whose token ``Centre`` saved in ``HOME/<who>.token``."""
    token = home / f"{who}.token"
    env = {k: v for k, v in os.environ.items() if k != "YIBAO_OPERATOR_TOKEN"}
    if token.exists():
        env["YIBAO_OPERATOR_TOKEN"] = token.read_text().strip()
    out = subprocess.run(
        [str(BIN / "yibao-central"), "--home", str(home), *args], capture_output=True, text=True, timeout=120,
        env=env,
    )  # fmt: skip
    if out.returncode != 0:
        raise Failed(f"yibao-central {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def central_cli(home: Path, *args: str) -> str:
    """A verb as the centre's admin; a proposing verb proposed by ``maker`` and approved by ``checker``,
    so what is measured includes the maker-checker step an operator goes through."""
    if args[:1] == ("init",):
        fresh = not (home / "admin.token").exists()
        out = _as(home, "admin", *args, *(("--admin-token-file", str(home / "admin.token")) if fresh else ()))
        if fresh:
            for who in ("maker", "checker"):
                token = _as(home, "admin", "operators", "add", who, "--role", "policy")
                (home / f"{who}.token").write_text(token)
        return out
    if tuple(args[:2]) not in _PROPOSING:
        return _as(home, "admin", *args)
    found = _CHANGE.search(_as(home, "maker", *args))
    if found is None:
        raise Failed(f"yibao-central {' '.join(args)} proposed no change")
    return _as(home, "checker", "changes", "approve", found[1], "--digest", found[2])


class Served:
    """``PROGRAM --home HOME serve …`` in its own process, up once ``GET URL/v1/health`` answers 200."""

    def __init__(
        self, program: str, home: Path, url: str, args: list[str], *, log_name: str,
        context: ssl.SSLContext | None = None,
    ) -> None:  # fmt: skip
        self.program, self.home, self.url, self.log_path = program, home, url, home / log_name
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(BIN / program), "--home", str(home), "serve", *args], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise Failed(f"{program} serve exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/v1/health", timeout=1, context=context) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise Failed(f"{program} serve did not answer within 30 s: {self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Centre(Served):
    """``yibao-central serve`` in its own process on a free loopback port."""

    def __init__(
        self, home: Path, hospital: str | None = None, *, area: str | None = None, tls: bool = True
    ) -> None:
        """``tls``: HTTPS with mutual TLS on agent routes, as deployed; False is ``--insecure-dev``."""
        self.home = home
        central_cli(home, "init", *(("--area", area) if area else ()))
        #: One enrolment token for ``hospital`` (when given).
        self.token = central_cli(home, "enroll-token", "--hospital", hospital).strip() if hospital else ""
        port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        #: What an agent enrols with (``--ca-hash``), and a context that verifies this centre.
        self.ca_hash = trust_digest(home / "tls") if tls else None
        self.context = ssl.create_default_context(cafile=str(home / "tls" / "trust.pem")) if tls else None
        args = ["--listen", f"127.0.0.1:{port}", *(() if tls else ("--insecure-dev",))]
        super().__init__("yibao-central", home, self.url, args, log_name="central.log", context=self.context)

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def register(self, public_key: bytes, hospital: str, tls_dir: Path | None = None) -> str:
        """Register an existing agent key with this centre's token, as ``agent.enrol`` does.

        ``tls_dir``: for a TLS centre, the agent's TLS directory, which gets this centre's trust bundle
        and a client certificate for a new key (what enrolment writes).
        """
        key_pem, csr = make_csr(hospital) if self.ca_hash else (b"", "")
        body = json.dumps(
            {"token": self.token, "fixmedins_code": hospital, "public_key": public_key.hex(), "csr": csr}
        ).encode()
        req = urllib.request.Request(
            self.url + ENROLL_PATH,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", PROTOCOL_HEADER: "1"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as resp:
                answer = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise Failed(f"enrolment refused: {exc.code} {exc.read()[:300]!r}") from None
        if self.ca_hash:
            if tls_dir is None:
                raise Failed("registering with a TLS centre needs the agent's tls_dir")
            trust = (self.home / "tls" / "trust.pem").read_bytes()
            ClientTls.install(tls_dir, trust, key_pem, answer["client_cert"])
        return answer["agent_id"]


def agent_init(home: Path, centre: Centre, hospital: str, token: str | None = None) -> None:
    """``yibao-agent init`` with ``centre``: its ``--ca-hash`` (or ``--insecure-dev`` for a plain one)."""
    token = token or central_cli(centre.home, "enroll-token", "--hospital", hospital).strip()
    trust = ["--ca-hash", centre.ca_hash] if centre.ca_hash else ["--insecure-dev"]
    out = subprocess.run(
        [str(BIN / "yibao-agent"), "--home", str(home), "init", "--central", centre.url, "--token", token,
         "--hospital", hospital, *trust],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if out.returncode != 0:
        raise Failed(f"yibao-agent init for {hospital} failed: {out.stderr.strip()[-2000:]}")
