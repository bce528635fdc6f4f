"""Real processes on loopback: a central collector, agents, and a HIS client that retries.

Every process is started through its console script exactly as an operator would, so the
tests cover the CLI, the config files, the HTTP servers and the databases together.

The centre serves HTTPS with mutual TLS on agent routes, as ``init`` sets it up: ``Central``
remembers each centre's trust bundle, so ``http()`` verifies the centre like an agent does and
``Agent`` enrols with the centre's ``--ca-hash``. ``Central(..., insecure_dev=True)`` is plain HTTP
for the tests that put a faulty HTTP link between agent and centre (it rewrites bytes in transit,
which is exactly what TLS forbids); an agent given an ``http://`` centre is enrolled with
``--insecure-dev``.

Operators: ``init`` registers the first admin (its token in ``HOME/admin.token``) and ``Central``
adds two policy operators, ``maker`` and ``checker``. ``cli`` acts as the admin, except the verbs
that propose a change (``blacklist add``, ``rules publish``…), which ``maker`` proposes and
``checker`` approves with the digest printed, as two people would (``central.policy.changes``);
``cli_as(token, …)`` acts as any operator.
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
from typing import Any

BIN = Path(sys.executable).parent
#: base URL of each TLS centre started here → that centre (its ``ca_hash`` and ``context``)
_CENTRES: dict[str, Central] = {}


#: base URL of other HTTPS servers started here (an agent's HIS API over TLS) → a context trusting it
_TRUSTED: dict[str, ssl.SSLContext] = {}

#: The verbs that propose a change request rather than publish at once.
PROPOSING = {("blacklist", "add"), ("blacklist", "remove"), ("blacklist", "import"), ("policy", "publish"),
             ("rules", "publish"), ("catalogue", "import"), ("keys", "publish"), ("cards", "correct"),
             ("cards", "notify"), ("cards", "withdraw")}  # fmt: skip
#: ``changes.describe`` of a pending change: its id and digest.
CHANGE_LINE = re.compile(r"^change (\d+) \[pending\] .* digest ([0-9a-f]{64})\)$", re.M)


def trust(base_url: str, context: ssl.SSLContext) -> None:
    """Let ``http()`` and the health checks verify the HTTPS server at ``base_url`` with ``context``."""
    _TRUSTED[base_url] = context


def _context(url: str) -> ssl.SSLContext | None:
    for base, centre in _CENTRES.items():
        if url.startswith(base):
            return centre.context
    for base, context in _TRUSTED.items():
        if url.startswith(base):
            return context
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 10
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=_context(url)) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_until(predicate, timeout: float = 30, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Proc:
    def __init__(self, name: str, args: list[str], log: Path, health_url: str) -> None:
        self.name, self.args, self.log_path, self.health_url = name, args, log, health_url
        self.proc: subprocess.Popen | None = None

    def start(self) -> Proc:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        log.close()

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return http("GET", self.health_url, timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(up, 30, what=f"{self.name} to listen")
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class Central:
    def __init__(self, home: Path, *, insecure_dev: bool = False, serve_args: tuple[str, ...] = ()) -> None:
        from central.tls import trust_digest

        self.home = home
        self.port = free_port()
        self.url = f"{'http' if insecure_dev else 'https'}://127.0.0.1:{self.port}"
        self.admin_token_file = home / "admin.token"
        #: What ``yibao-central init`` printed (the TUF root's and the trust bundle's fingerprints).
        self.init_output = self._run(None, "init", "--admin-token-file", str(self.admin_token_file))
        self.admin_token = self.admin_token_file.read_text().strip()
        self.maker_token = self.add_operator("maker", "--role", "policy")
        self.checker_token = self.add_operator("checker", "--role", "policy")
        listen = f"127.0.0.1:{self.port}"
        args = [str(BIN / "yibao-central"), "--home", str(home), "serve", "--listen", listen, *serve_args]
        #: The agents' ``--ca-hash`` and a context that verifies this centre (None: plain HTTP).
        self.ca_hash: str | None = None
        self.context: ssl.SSLContext | None = None
        if insecure_dev:
            args.append("--insecure-dev")
        else:
            self.ca_hash = trust_digest(home / "tls")
            self.context = ssl.create_default_context(cafile=str(home / "tls" / "trust.pem"))
            _CENTRES[self.url] = self
        self.proc = Proc("central", args, home / "central.log", self.url + "/v1/health")

    def _run(self, token: str | None, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "YIBAO_OPERATOR_TOKEN"}
        if token is not None:
            env["YIBAO_OPERATOR_TOKEN"] = token
        out = subprocess.run(
            [str(BIN / "yibao-central"), "--home", str(self.home), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        if out.returncode not in (0, 2, 3):  # 2, 3: reconcile's "not whole" and "not provably complete"
            raise AssertionError(f"yibao-central {' '.join(args)} failed: {out.stderr}")
        return out.stdout

    def cli(self, *args: str) -> str:
        """A verb as the admin; a proposing verb proposed by ``maker`` and approved by ``checker``
        (returns what the approval printed: the bundle published)."""
        if tuple(args[:2]) not in PROPOSING:
            return self._run(self.admin_token, *args)
        return self.approve(self._run(self.maker_token, *args))

    def approve(self, proposed: str, token: str | None = None) -> str:
        """Approve the change ``proposed`` (a proposing verb's output) as ``checker`` (or ``token``)."""
        found = CHANGE_LINE.search(proposed)
        assert found, f"no pending change in {proposed!r}"
        return self._run(token or self.checker_token, "changes", "approve", found[1], "--digest", found[2])

    def cli_as(self, token: str, *args: str) -> str:
        return self._run(token, *args)

    def add_operator(self, name: str, *args: str) -> str:
        """Register an operator (as the admin); returns their token."""
        return self._run(self.admin_token, "operators", "add", name, *args).strip()

    def enroll_token(self, hospital: str) -> str:
        return self.cli("enroll-token", "--hospital", hospital).strip()

    def settlements(self) -> list[dict]:
        return [json.loads(line) for line in self.cli("export", "settlements").splitlines() if line.strip()]


class Agent:
    def __init__(self, home: Path, central_url: str, hospital: str, token: str, **settings: Any) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"{'https' if settings.get('his_tls_cert') else 'http'}://127.0.0.1:{self.port}"
        centre = _CENTRES.get(central_url)
        trust = ["--ca-hash", str(centre.ca_hash)] if centre is not None else ["--insecure-dev"]
        out = subprocess.run(
            [
                str(BIN / "yibao-agent"),
                "--home",
                str(home),
                "init",
                "--central",
                central_url,
                "--token",
                token,
                "--hospital",
                hospital,
                *trust,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        config = json.loads((home / "agent.json").read_text())
        config.update({"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "idle_poll_s": 0.2})
        config.update(settings)
        (home / "agent.json").write_text(json.dumps(config))
        self.agent_id = config["agent_id"]
        self.token = (home / "his.token").read_text().strip()
        self.proc = Proc(
            "agent",
            [str(BIN / "yibao-agent"), "--home", str(home), "serve", "--listen", f"127.0.0.1:{self.port}"],
            home / "agent.log",
            self.url + "/v1/health",
        )

    def settle(self, body: dict, timeout: float = 10) -> tuple[int, Any]:
        return http("POST", self.url + "/v1/settlements", body, self.token, timeout)

    def status(self) -> dict:
        return http("GET", self.url + "/v1/status", token=self.token)[1]

    def drained(self) -> bool:
        st = self.status()
        return st["outbox"]["pending"] == 0


def settle_until_answered(agent: Agent, body: dict, deadline_s: float = 60) -> dict:
    """A HIS that retries the same body until it gets an answer (what a cashier's client does)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            status, answer = agent.settle(body, timeout=5)
            if status in (200, 201):
                return answer
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"settlement {body['his_setl_no']} never answered")
        time.sleep(0.05)
