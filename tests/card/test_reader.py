"""The agent's card reader through real pcscd: every card state and every cashier-facing failure."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import pytest

from agent.card import CardReader
from agent.errors import (
    CardCounterfeit,
    CardExpired,
    CardRemoved,
    CardUnreadable,
    NoCard,
    NoReader,
    NotSocialSecurityCard,
    PsamMissing,
    ReaderBusy,
)
from tests.card.conftest import PSN_NO


@pytest.fixture
def reader():
    r = CardReader()
    yield r
    r.close()


def test_valid_card_identifies_in_four_card_apdus_and_one_psam_apdu(insert, reader):
    insert("valid")
    reader.identify()  # the first one also finds and selects the PSAM
    ident = reader.identify()
    assert ident.method == "card" and ident.mdtrt_cert_type == "03"
    assert ident.psn_no == PSN_NO and ident.insuplc_admdvs == "370202"
    assert ident.authenticated and len(ident.card_sn) == 16 and ident.brdy == "1980-01-01"
    assert ident.gend == "1" and ident.psn_name and dt.date.fromisoformat(ident.expires) > dt.date.today()
    assert (reader.stats.card_apdus, reader.stats.psam_apdus) == (4, 1)


def test_cloned_card_fails_authentication(insert, reader):
    insert("cloned")
    with pytest.raises(CardCounterfeit) as err:
        reader.identify()
    assert err.value.code == "card_auth_failed" and "counterfeit" in err.value.message


def test_expired_card_is_refused_with_its_date(insert, reader):
    insert("expired")
    with pytest.raises(CardExpired) as err:
        reader.identify()
    assert "renew" in err.value.message and PSN_NO not in err.value.message


def test_damaged_card(insert, reader):
    insert("damaged")
    with pytest.raises(CardUnreadable):
        reader.identify()


def test_foreign_card(insert, reader):
    insert("foreign")
    with pytest.raises(NotSocialSecurityCard):
        reader.identify()


def test_removed_mid_read_then_inserted_again(pcscd, insert, reader):
    slot = insert("removed-mid-read", reinsert_after=1.5)
    with pytest.raises(CardRemoved) as err:
        reader.identify()
    assert "insert the card again" in err.value.message
    assert slot.removed_mid_read.wait(5)
    pcscd.wait_card(0, present=False)
    ident = reader.identify(wait_s=10)
    assert ident.psn_no == PSN_NO


def test_no_card(pcscd, psam, reader):
    with pytest.raises(NoCard) as err:
        reader.identify(wait_s=0.3)
    assert err.value.http_status == 404


def test_reader_busy_when_another_program_holds_the_card(pcscd, insert, reader):
    from smartcard import scard

    insert("valid")
    _, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    hresult, handle, _proto = scard.SCardConnect(
        ctx, pcscd.readers[0], scard.SCARD_SHARE_EXCLUSIVE, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
    )
    assert hresult == scard.SCARD_S_SUCCESS
    try:
        with pytest.raises(ReaderBusy) as err:
            reader.identify()
        assert err.value.http_status == 409
    finally:
        scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(ctx)
    assert reader.identify().psn_no == PSN_NO  # free again: the same reader object recovers


def test_no_reader_when_the_configured_reader_is_absent(pcscd, psam):
    r = CardReader(card_reader="Reader That Is Not Plugged In")
    try:
        with pytest.raises(NoReader) as err:
            r.identify()
        assert "plug the reader in" in err.value.message
    finally:
        r.close()


def test_psam_missing(insert):
    insert("valid")
    r = CardReader(psam_reader="No Such PSAM Slot")
    try:
        with pytest.raises(PsamMissing):
            r.identify()
    finally:
        r.close()


def test_service_down_is_its_own_error(tmp_path):
    # libpcsclite looks for pcscd's socket at PCSCLITE_CSOCK_NAME: pointing it at an empty place
    # is exactly what a client sees when pcscd is not running. A child process, because the
    # library reads the variable once.
    code = (
        "from agent.card import CardReader\n"
        "from agent.errors import CardServiceDown\n"
        "try:\n    CardReader().identify()\nexcept CardServiceDown as e:\n    print(e.code)\n"
    )
    env = {**os.environ, "PCSCLITE_CSOCK_NAME": str(tmp_path / "no-pcscd.comm")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "card_service_down", out.stderr
