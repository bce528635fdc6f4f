"""The HIS API over TLS, with a real agent process: HTTPS when configured, loopback-only plain HTTP otherwise.

The hospital's CA is played by ``central.tls.create_tls`` in a scratch directory: a real CA and a
server certificate for 127.0.0.1, made with the ``cryptography`` package, as a hospital's IT would
hand them over. Every connection is a real TLS handshake.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from central.tls import TlsFiles, create_tls
from tests.conftest import example_settlement

from .harness import BIN, Agent, Central, free_port, trust

HOSPITAL = "H37021100001"


@pytest.fixture
def central(tmp_path):
    c = Central(tmp_path / "central", insecure_dev=True)
    c.proc.start()
    yield c
    c.proc.stop()


@pytest.fixture
def hospital_ca(tmp_path: Path) -> TlsFiles:
    files = TlsFiles(tmp_path / "hospital-ca")
    assert create_tls(files.dir)
    return files


def test_the_his_api_serves_https_with_the_configured_certificate(tmp_path, central, hospital_ca) -> None:
    agent = Agent(
        tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL),
        his_tls_cert=str(hospital_ca.server_cert), his_tls_key=str(hospital_ca.server_key),
    )  # fmt: skip
    assert agent.url.startswith("https://")
    trust(agent.url, ssl.create_default_context(cafile=str(hospital_ca.trust)))
    agent.proc.start()
    try:
        status, answer = agent.settle(example_settlement("HISTLS-1"))
        assert status == 201, answer
        # The same port does not answer plain HTTP, and a client that does not trust the CA is refused.
        plain = urllib.request.Request(agent.url.replace("https", "http") + "/v1/health")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(plain, timeout=5)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(agent.url + "/v1/health", timeout=5, context=ssl.create_default_context())
    finally:
        agent.proc.stop()


def _serve(home: Path, **settings) -> subprocess.CompletedProcess[str]:
    config = json.loads((home / "agent.json").read_text())
    config.update(settings)
    (home / "agent.json").write_text(json.dumps(config))
    return subprocess.run(
        [str(BIN / "yibao-agent"), "--home", str(home), "serve"], capture_output=True, text=True, timeout=60
    )


def test_off_loopback_plain_http_and_unusable_certificates_stop_the_start(
    tmp_path, central, hospital_ca
) -> None:
    agent = Agent(tmp_path / "agent", central.url, HOSPITAL, central.enroll_token(HOSPITAL))
    port = free_port()
    out = _serve(agent.home, listen=f"0.0.0.0:{port}", insecure_dev=False, central_url="https://127.0.0.1:1")
    assert out.returncode == 1 and "must be HTTPS" in out.stderr and "his_tls_cert" in out.stderr
    out = _serve(
        agent.home, listen=f"127.0.0.1:{port}", his_tls_cert="missing.crt", his_tls_key="missing.key"
    )
    assert out.returncode == 1 and "cannot be used" in out.stderr and "missing.crt" in out.stderr
    out = _serve(agent.home, his_tls_cert=str(hospital_ca.server_cert), his_tls_key="")
    assert out.returncode == 1 and "go together" in out.stderr
    # Another certificate's key does not fit.
    out = _serve(agent.home, his_tls_cert=str(hospital_ca.ca_cert), his_tls_key=str(hospital_ca.server_key))
    assert out.returncode == 1 and "cannot be used" in out.stderr
