"""TLS on the wire, with real processes: the centre's own CA, a pinned trust bundle, mutual TLS.

Every certificate here is made by the code under test (``central.tls`` with the ``cryptography``
package) and every connection is a real TLS handshake over loopback: ``yibao-central serve`` and
``yibao-agent serve`` as operators start them. The machine in the middle is a second real centre
with a CA of its own.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from agent.errors import ConfigError
from agent.tls import ClientTls, make_csr
from central.tls import trust_digest
from tests.conftest import example_settlement

from .harness import BIN, Central, Proc, free_port, http, wait_until

HOSPITAL = "H37021100001"


class TlsCentral(Central):
    """The harness's centre as ``init`` makes it (HTTPS, its own CA, mutual TLS on the agent routes), which
    looks for a rotated server certificate every half second, and a raw GET with any client context."""

    def __init__(self, home: Path) -> None:
        super().__init__(home, serve_args=("--tls-check-s", "0.5"))
        assert self.ca_hash is not None and self.context is not None
        assert "TLS trust bundle sha256:" in self.init_output and self.ca_hash in self.init_output
        assert self.ca_hash == trust_digest(home / "tls")

    def start(self) -> TlsCentral:
        self.proc.start()
        return self

    def get(self, path: str, context: ssl.SSLContext | None = None) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5, context=context or self.context) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError):
            return 0, b""


def agent_init(home: Path, url: str, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "yibao-agent"), "--home", str(home), "init", "--central", url, "--token", token,
         "--hospital", HOSPITAL, *extra],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def running(home: Path) -> Iterator[TlsCentral]:
    c = TlsCentral(home).start()
    try:
        yield c
    finally:
        c.proc.stop()


@pytest.fixture
def centre(tmp_path: Path) -> Iterator[TlsCentral]:
    yield from running(tmp_path / "central")


@pytest.fixture
def other_centre(tmp_path: Path) -> Iterator[TlsCentral]:
    """The machine in the middle: a real centre with a CA of its own."""
    yield from running(tmp_path / "mitm")


def start_agent(home: Path) -> tuple[Proc, str, str]:
    config = json.loads((home / "agent.json").read_text())
    config.update({"backoff_initial_s": 0.05, "backoff_max_s": 0.5, "idle_poll_s": 0.2, "heartbeat_s": 0.5})
    (home / "agent.json").write_text(json.dumps(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        "agent",
        [str(BIN / "yibao-agent"), "--home", str(home), "serve", "--listen", f"127.0.0.1:{port}"],
        home / "agent.log",
        url + "/v1/health",
    ).start()
    return proc, url, (home / "his.token").read_text().strip()


def test_enrolled_agent_uploads_over_mutual_tls(centre: TlsCentral, tmp_path: Path) -> None:
    token = centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    out = agent_init(tmp_path / "agent", centre.url, token, "--ca-hash", centre.ca_hash)
    assert out.returncode == 0, out.stderr
    tls_dir = tmp_path / "agent" / "tls"
    assert (tls_dir / "trust.pem").read_bytes() == (centre.home / "tls" / "trust.pem").read_bytes()
    assert (tls_dir / "client.key").stat().st_mode & 0o077 == 0
    cert = x509.load_pem_x509_certificate((tls_dir / "client.crt").read_bytes())
    config = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert cert.subject.rfc4514_string() == f"CN={config['agent_id']}"
    assert config["central_url"].startswith("https://") and not config["insecure_dev"]

    proc, url, his = start_agent(tmp_path / "agent")
    try:
        status, answer = http("POST", url + "/v1/settlements", example_settlement("TLS1"), his)
        assert status == 201, answer
        wait_until(lambda: [s["setl_id"] for s in centre.settlements()] == [answer["setl_id"]], 30,
                   what="the settlement to reach the centre over mTLS")  # fmt: skip
        st = http("GET", url + "/v1/status", token=his)[1]
        assert st["central"]["reachable"] is True
        # The signed heartbeat goes over the same mutual TLS: the centre knows the agent is caught up.
        wait_until(lambda: _reach(centre)["heartbeat_seq"] == 1 and _reach(centre)["state"] == "complete", 30,
                   what="a heartbeat over mTLS")  # fmt: skip
        assert st["central"]["tls"]["client_cert_days_left"] > 300 and not st["central"]["tls"]["expiring"]
    finally:
        proc.stop()


def _reach(centre: TlsCentral) -> dict:
    today = date.today().isoformat()
    out = centre.cli("reconcile", "--hospital", HOSPITAL, "--from", today, "--to", today, "--json")
    [agent] = json.loads(out)["agents"]
    return agent


def test_agent_routes_refuse_a_client_without_certificate(centre: TlsCentral) -> None:
    # The server is verified (the pinned bundle) but no client certificate is presented.
    request = urllib.request.Request(centre.url + "/v1/agents/heartbeat", data=b"\x80", method="POST",
                                     headers={"Content-Type": "application/msgpack"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5, context=centre.context)
    assert refused.value.code == 401
    status, body = centre.get("/v1/policy/changes?have=0&wait=0")
    assert status == 401 and json.loads(body)["error"]["code"] == "client_cert_required"
    status, body = centre.get("/tuf/metadata/timestamp.json")
    assert status == 401
    # Open routes stay open: health, and the trust bundle an enrolling agent fetches.
    assert centre.get("/v1/health")[0] == 200
    assert centre.get("/v1/tls/trust.pem")[1] == (centre.home / "tls" / "trust.pem").read_bytes()


def test_client_certificate_of_another_ca_is_refused_at_the_handshake(
    centre: TlsCentral, other_centre: TlsCentral, tmp_path: Path
) -> None:
    """A certificate the other centre issued does not chain to ours: the handshake itself fails."""
    token = other_centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    assert (
        agent_init(tmp_path / "a", other_centre.url, token, "--ca-hash", other_centre.ca_hash).returncode == 0
    )
    context = ssl.create_default_context(cafile=str(centre.home / "tls" / "trust.pem"))
    context.load_cert_chain(str(tmp_path / "a/tls/client.crt"), str(tmp_path / "a/tls/client.key"))
    status, _ = centre.get("/v1/policy/changes?have=0&wait=0", context=context)
    assert status == 0  # no HTTP answer at all: the TLS handshake was refused


def test_enrolment_refuses_a_centre_whose_bundle_does_not_match_the_hash(
    centre: TlsCentral, other_centre: TlsCentral, tmp_path: Path
) -> None:
    token = other_centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    out = agent_init(tmp_path / "agent", other_centre.url, token, "--ca-hash", centre.ca_hash)
    assert out.returncode != 0 and "do not enrol" in out.stderr
    assert not (tmp_path / "agent" / "agent.json").exists()
    # The token was not spent: the same token enrols once the right hash is given.
    again = agent_init(tmp_path / "agent", other_centre.url, token, "--ca-hash", other_centre.ca_hash)
    assert again.returncode == 0, again.stderr


def test_agent_refuses_a_machine_in_the_middle_after_enrolment(
    centre: TlsCentral, other_centre: TlsCentral, tmp_path: Path
) -> None:
    """The agent is pointed (DNS spoofed, say) at a centre with another CA: nothing is uploaded there."""
    token = centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    assert agent_init(tmp_path / "agent", centre.url, token, "--ca-hash", centre.ca_hash).returncode == 0
    config_path = tmp_path / "agent" / "agent.json"
    config = json.loads(config_path.read_text())
    config["central_url"] = other_centre.url
    config_path.write_text(json.dumps(config))
    proc, url, his = start_agent(tmp_path / "agent")
    try:
        assert http("POST", url + "/v1/settlements", example_settlement("MITM1"), his)[0] == 201

        def failed() -> dict | None:
            st = http("GET", url + "/v1/status", token=his)[1]
            return st if st["central"]["last_error"] else None

        st = wait_until(failed, 30, what="the upload to fail")
        assert st["central"]["reachable"] is False
        assert st["outbox"]["pending"] == 1
        assert other_centre.settlements() == [] and centre.settlements() == []
    finally:
        proc.stop()


def test_plain_http_needs_the_explicit_dev_flag(centre: TlsCentral, tmp_path: Path) -> None:
    token = centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    plain = centre.url.replace("https://", "http://")
    out = agent_init(tmp_path / "agent", plain, token)
    assert out.returncode != 0 and "--insecure-dev" in out.stderr
    out = agent_init(tmp_path / "agent", centre.url, token)
    assert out.returncode != 0 and "--ca-hash" in out.stderr
    assert not (tmp_path / "agent").exists() or not (tmp_path / "agent" / "agent.json").exists()


def test_enrolment_without_csr_is_refused_before_the_token_is_spent(
    centre: TlsCentral, tmp_path: Path
) -> None:
    """An old agent (no CSR) enrolling with a TLS centre gets a message, and the token still works."""
    token = centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    body = json.dumps({"token": token, "fixmedins_code": HOSPITAL, "public_key": "11" * 32}).encode()
    headers = {"Content-Type": "application/json", "Yibao-Protocol": "1"}
    req = urllib.request.Request(centre.url + "/v1/agents/enroll", data=body, method="POST", headers=headers)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=5, context=centre.context)
    assert err.value.code == 400 and "certificate signing request" in err.value.read().decode()
    assert agent_init(tmp_path / "agent", centre.url, token, "--ca-hash", centre.ca_hash).returncode == 0


def test_server_certificate_rotation_is_picked_up_and_client_renewal_works(
    centre: TlsCentral, tmp_path: Path
) -> None:
    token = centre.cli("enroll-token", "--hospital", HOSPITAL).strip()
    assert agent_init(tmp_path / "agent", centre.url, token, "--ca-hash", centre.ca_hash).returncode == 0
    tls = ClientTls(tmp_path / "agent" / "tls")
    before = tls.certificate().serial_number

    async def renew() -> str:
        async with aiohttp.ClientSession() as session:
            return await tls.renew(
                session, centre.url, json.loads((tmp_path / "agent/agent.json").read_text())["agent_id"]
            )

    asyncio.run(renew())
    after = tls.certificate()
    assert after.serial_number != before
    # The renewed certificate works on an agent route (mTLS), the old key is gone from disk.
    status, _ = centre.get("/v1/policy/changes?have=0&wait=0", context=tls.context)
    assert status == 200

    def served_serial() -> int:
        pem = ssl.get_server_certificate(("127.0.0.1", centre.port))
        return x509.load_pem_x509_certificate(pem.encode()).serial_number

    old = served_serial()
    centre.cli("tls", "rotate")
    new = x509.load_pem_x509_certificate((centre.home / "tls" / "server.crt").read_bytes()).serial_number
    assert new != old
    wait_until(lambda: served_serial() == new, 15, what="the running server to load the rotated certificate")
    assert centre.get("/v1/health")[0] == 200  # still verifies against the pinned bundle
    shown = json.loads(centre.cli("tls", "show", "--json"))
    assert shown["trust_digest"] == centre.ca_hash  # rotation does not change what agents pin
    assert shown["server"]["days_left"] > 300 and not shown["server"]["expiring"]


def test_ca_hash_must_be_well_formed() -> None:
    from agent.tls import parse_ca_hash

    with pytest.raises(ConfigError):
        parse_ca_hash("sha256:abc")
    assert parse_ca_hash("SHA256:" + "A" * 64) == "a" * 64
    key, csr = make_csr("x")
    assert b"PRIVATE KEY" in key and "CERTIFICATE REQUEST" in csr
