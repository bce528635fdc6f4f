"""E-vouchers at the agent: real keys, a real SQLite ledger on disk, the simulator as issuer.

Every refusal reaches the HIS as a ``VoucherRejected`` (422) carrying the protocol's code; a
voucher is accepted once, also across a restart of the agent; nothing personal is written to
messages, logs or the ledger.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import sqlite3
import stat
import struct
import threading
import time
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.config import AgentConfig, load_config, save_config
from agent.errors import AgentError, ConfigError, VoucherLedgerFailed, VoucherRejected
from agent.evoucher import PRUNE_AFTER_S, NonceLedger, VoucherVerifier, open_verifier
from agent.identity import Identity
from protocol.canonical import encode_canonical
from protocol.evoucher import PREFIX
from simulators import evoucher as sim
from simulators.evoucher import Issuer, render_png

PSN = "37021119580402123X"
AREA = "370211"


@pytest.fixture
def issuer() -> Issuer:
    return Issuer.generate()


@pytest.fixture
def config(tmp_path: Path, issuer: Issuer) -> AgentConfig:
    return AgentConfig(home=tmp_path, evoucher_issuers=issuer.issuers_config(), evoucher_skew_s=30)


@pytest.fixture
def verifier(config: AgentConfig):
    with open_verifier(config) as v:
        yield v


def rejected(verifier: VoucherVerifier, text: str, code: str) -> VoucherRejected:
    with pytest.raises(VoucherRejected) as info:
        verifier.verify(text)
    err = info.value
    assert err.code == code and err.http_status == 422
    assert err.to_wire() == {"error": {"code": code, "message": err.message}}
    assert PSN not in err.message and PSN not in json.dumps(err.to_wire())
    return err


def test_valid_voucher_gives_the_identity(verifier: VoucherVerifier, issuer: Issuer):
    text = issuer.issue(PSN, insuplc_admdvs=AREA, ttl_s=60)
    identity = verifier.verify(text)
    assert isinstance(identity, Identity)
    assert identity.method == "evoucher" and identity.mdtrt_cert_type == "01"
    assert identity.psn_no == PSN and identity.insuplc_admdvs == AREA
    assert identity.authenticated is True and identity.issuer_kid == issuer.kid
    # the voucher's 16-byte nonce as 32 lowercase hex digits, its own for each voucher
    assert re.fullmatch("[0-9a-f]{32}", identity.mdtrt_cert_no), identity.mdtrt_cert_no
    other = verifier.verify(issuer.issue(PSN, insuplc_admdvs=AREA, ttl_s=60))
    assert other.mdtrt_cert_no != identity.mdtrt_cert_no
    assert (
        identity.issued.endswith("Z")
        and identity.expires.endswith("Z")
        and identity.issued < identity.expires
    )
    assert identity.card_sn is None and identity.psn_name is None
    assert PSN not in json.dumps(identity.redacted())


def test_expired(verifier: VoucherVerifier, issuer: Issuer):
    text = issuer.issue(PSN, ttl_s=60, now=time.time() - 200)
    assert "refresh the code in the app" in rejected(verifier, text, "evoucher_expired").message


def test_within_skew_is_accepted(verifier: VoucherVerifier, issuer: Issuer):
    assert verifier.verify(issuer.issue(PSN, ttl_s=60, now=time.time() - 80)).psn_no == PSN
    assert verifier.verify(issuer.issue(PSN, ttl_s=60, now=time.time() + 20)).psn_no == PSN


def test_issued_in_the_future(verifier: VoucherVerifier, issuer: Issuer):
    text = issuer.issue(PSN, ttl_s=60, now=time.time() + 3600)
    assert "clock" in rejected(verifier, text, "evoucher_not_yet_valid").message


def test_forged_with_another_key_under_a_trusted_kid(verifier: VoucherVerifier, issuer: Issuer):
    forger = Issuer.generate(kid=issuer.kid)
    rejected(verifier, forger.issue(PSN), "evoucher_bad_signature")


def test_unknown_kid(verifier: VoucherVerifier):
    stranger = Issuer.generate(kid="not-ours")
    err = rejected(verifier, stranger.issue(PSN), "evoucher_unknown_issuer")
    assert "evoucher_issuers" in err.message


def test_altered_payload(verifier: VoucherVerifier, issuer: Issuer):
    text = issuer.issue(PSN, ttl_s=60)
    claims, sig = msgpack.unpackb(base64.urlsafe_b64decode(text[len(PREFIX) :] + "=="), raw=False)
    other = "110101199001011234"
    for change in ({"p": other}, {"a": "110000"}, {"e": claims["e"] + 86_000}):
        body = encode_canonical([{**claims, **change}, sig])
        altered = PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode()
        assert other not in rejected(verifier, altered, "evoucher_bad_signature").message
    assert verifier.verify(text).psn_no == PSN  # refusals did not spend the genuine voucher


def test_replayed_nonce(verifier: VoucherVerifier, issuer: Issuer):
    text = issuer.issue(PSN)
    first = verifier.verify(text)
    err = rejected(verifier, text, "evoucher_replayed")
    assert "already used" in err.message and "refresh the code in the app" in err.message
    rejected(verifier, f"{text}\r\n", "evoucher_replayed")  # scanner line ending: same voucher
    assert verifier.ledger.count() == 1
    assert verifier.verify(issuer.issue(PSN)).mdtrt_cert_no != first.mdtrt_cert_no


def test_replay_refused_after_a_restart(config: AgentConfig, issuer: Issuer):
    text = issuer.issue(PSN)
    with open_verifier(config) as v:
        v.verify(text)
    with open_verifier(config) as v:
        rejected(v, text, "evoucher_replayed")
        assert v.ledger.count() == 1


def test_forged_voucher_does_not_spend_the_genuine_nonce(verifier: VoucherVerifier, issuer: Issuer):
    nonce = bytes(range(16))
    forger = Issuer.generate(kid=issuer.kid)
    rejected(verifier, forger.issue(PSN, nonce=nonce), "evoucher_bad_signature")
    assert verifier.verify(issuer.issue(PSN, nonce=nonce)).mdtrt_cert_no == nonce.hex()


@pytest.mark.parametrize(
    "text", ["", "hello world", "YBV1.!!!", "YBV1.AAAA", "6901234567892", "\x00\x01", "X" * 100_000, PSN]
)
def test_garbage_text(verifier: VoucherVerifier, text: str):
    rejected(verifier, text, "evoucher_malformed")


def test_empty_issuer_config(tmp_path: Path, issuer: Issuer, caplog):
    with caplog.at_level(logging.WARNING, logger="yibao.agent.evoucher"):
        v = open_verifier(AgentConfig(home=tmp_path))
    assert "evoucher_issuers" in caplog.text
    with v:
        err = rejected(v, issuer.issue(PSN), "evoucher_unknown_issuer")
        assert "trusts no e-voucher issuer" in err.message and "agent.json" in err.message


def test_issuer_keys_survive_agent_json(tmp_path: Path, issuer: Issuer):
    save_config(AgentConfig(home=tmp_path, evoucher_issuers=issuer.issuers_config()))
    with open_verifier(load_config(tmp_path)) as v:
        assert v.verify(issuer.issue(PSN)).issuer_kid == issuer.kid


@pytest.mark.parametrize(
    ("issuers", "skew", "match"),
    [
        ({"k1": "not-a-key"}, 30, "'k1'"),
        ({"bad kid": Issuer.generate().public_key_b64}, 30, "key id"),
        ({}, -1, "skew"),
    ],
)
def test_bad_settings_fail_at_start(tmp_path: Path, issuers, skew, match):
    with pytest.raises(ConfigError, match=match):
        open_verifier(AgentConfig(home=tmp_path, evoucher_issuers=issuers, evoucher_skew_s=skew))


def test_ledger_that_cannot_be_opened(tmp_path: Path):
    (tmp_path / "evoucher.db").mkdir()
    with pytest.raises(VoucherLedgerFailed) as info:
        open_verifier(AgentConfig(home=tmp_path))
    assert info.value.http_status == 503 and info.value.code == "evoucher_ledger_failed"
    assert isinstance(info.value, AgentError)


def test_ledger_failure_is_503_and_spends_nothing(config: AgentConfig, issuer: Issuer):
    v = open_verifier(config)
    v.ledger._conn.close()  # a dead database connection, as after a disk failure
    with pytest.raises(VoucherLedgerFailed) as info:
        v.verify(issuer.issue(PSN))
    assert info.value.http_status == 503 and "social-security card" in info.value.message


def test_ledger_on_disk_is_wal_and_holds_nothing_personal(verifier: VoucherVerifier, issuer: Issuer, config):
    identity = verifier.verify(issuer.issue(PSN, insuplc_admdvs=AREA))
    con = sqlite3.connect(config.evoucher_db_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        rows = con.execute("SELECT nonce, kid, expires_at, used_at FROM used_nonces").fetchall()
    finally:
        con.close()
    assert len(rows) == 1 and rows[0][:2] == (identity.mdtrt_cert_no, issuer.kid)
    for path in config.home.glob("evoucher.db*"):
        assert PSN.encode() not in path.read_bytes()


def test_prune_keeps_rows_a_day_past_expiry(tmp_path: Path, issuer: Issuer):
    now = time.time()
    with VoucherVerifier(
        {issuer.kid: issuer.public_key}, NonceLedger(tmp_path / "l.db"), skew_s=30, clock=lambda: now
    ) as v:
        text = issuer.issue(PSN, ttl_s=60, now=now)
        v.verify(text)
        expires = int(now) + 60
        assert v.ledger.prune(expires + PRUNE_AFTER_S - 1) == 0
        rejected(v, text, "evoucher_replayed")
        assert v.ledger.prune(expires + PRUNE_AFTER_S + 1) == 1 and v.ledger.count() == 0


def test_concurrent_scans_accept_a_voucher_once(verifier: VoucherVerifier, issuer: Issuer):
    same = issuer.issue(PSN)
    distinct = [issuer.issue(PSN) for _ in range(16)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def scan(text: str) -> None:
        try:
            verifier.verify(text)
            result = "ok"
        except VoucherRejected as exc:
            result = exc.code
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=scan, args=(t,)) for t in [same] * 16 + distinct]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("ok") == 1 + 16 and outcomes.count("evoucher_replayed") == 15


def test_no_person_number_in_messages_or_logs(verifier: VoucherVerifier, issuer: Issuer, caplog):
    forger = Issuer.generate(kid=issuer.kid)
    cases = [
        issuer.issue(PSN, ttl_s=60, now=time.time() - 500),
        issuer.issue(PSN, now=time.time() + 500),
        forger.issue(PSN),
        Issuer.generate().issue(PSN),
        PSN,
        PREFIX + PSN,
    ]
    genuine = issuer.issue(PSN)
    with caplog.at_level(logging.DEBUG):
        verifier.verify(genuine)
        cases.append(genuine)
        for text in cases:
            with pytest.raises(VoucherRejected) as info:
                verifier.verify(text)
            assert PSN not in str(info.value) and PSN not in json.dumps(info.value.to_wire())
    assert caplog.records and PSN not in caplog.text


# ---- the simulator: key directory, PNG, CLI ---------------------------------------------------------


def test_render_png(tmp_path: Path, issuer: Issuer):
    text = issuer.issue(PSN)
    path = render_png(text, tmp_path / "voucher.png", scale=4)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data.endswith(b"IEND\xaeB`\x82")
    width, height = struct.unpack(">II", data[16:24])
    modules = width // 4 - 2 * 4  # scale 4, quiet zone of 4 modules each side
    assert width == height and width % 4 == 0 and (modules - 17) % 4 == 0  # QR sizes are 17 + 4·version
    assert 5 <= (modules - 17) // 4 <= 12 and 500 < len(data) < 20_000


def test_issuer_key_directory(tmp_path: Path):
    first = Issuer.load_or_create(tmp_path / "iss")
    key = tmp_path / "iss" / "issuer.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32
    again = Issuer.load_or_create(tmp_path / "iss")
    assert (again.kid, again.public_key_b64) == (first.kid, first.public_key_b64) and len(first.kid) == 8
    assert Issuer.load_or_create(tmp_path / "iss", kid="custom").kid == "custom"
    assert [p.name for p in (tmp_path / "iss").iterdir()] == ["issuer.key"]


def test_issuer_reads_a_pem_key_and_tightens_its_mode(tmp_path: Path, config: AgentConfig):
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "pem").mkdir()
    (tmp_path / "pem" / "issuer.key").write_bytes(pem)
    (tmp_path / "pem" / "issuer.key").chmod(0o644)
    issuer = Issuer.load_or_create(tmp_path / "pem")
    assert stat.S_IMODE((tmp_path / "pem" / "issuer.key").stat().st_mode) == 0o600
    config.evoucher_issuers = issuer.issuers_config()
    with open_verifier(config) as v:
        assert v.verify(issuer.issue(PSN)).issuer_kid == issuer.kid


def _cli(*argv: str) -> tuple[int, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="yibao-sim")
    sim.add_cli(parser.add_subparsers(dest="verb", required=True))
    args = parser.parse_args(list(argv))
    return args.run(args), args


def test_cli_prints_only_the_voucher_and_the_key_for_agent_json(tmp_path: Path, capsys):
    d = str(tmp_path / "iss")
    status, _ = _cli("evoucher", "--issuer-dir", d, "--show-key")
    assert status == 0
    shown = json.loads(capsys.readouterr().out)
    assert set(shown) == {"kid", "public_key"}

    png = tmp_path / "qr.png"
    status, _ = _cli(
        "evoucher", "--issuer-dir", d, "--psn-no", PSN, "--ttl", "60", "--area", AREA, "--png", str(png)
    )
    out = capsys.readouterr().out
    assert status == 0 and out.count("\n") == 1 and out.startswith(PREFIX)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = AgentConfig(home=tmp_path, evoucher_issuers={shown["kid"]: shown["public_key"]})
    with open_verifier(config) as v:
        identity = v.verify(out)
    assert (identity.psn_no, identity.insuplc_admdvs, identity.issuer_kid) == (PSN, AREA, shown["kid"])


@pytest.mark.parametrize(
    "argv", [[], ["--psn-no", "123"], ["--psn-no", PSN, "--ttl", "0"], ["--psn-no", PSN, "--area", "37"]]
)
def test_cli_refuses_bad_arguments(tmp_path: Path, capsys, argv):
    status, _ = _cli("evoucher", "--issuer-dir", str(tmp_path / "iss"), *argv)
    captured = capsys.readouterr()
    assert status == 2 and captured.out == "" and "yibao-sim:" in captured.err and PSN not in captured.err
