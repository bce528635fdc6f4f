"""A real pcscd with the vpcd driver for the whole card test session, and the PSAM in slot 2.

Not a mock: the agent reads through pyscard → libpcsclite → pcscd → vpcd → our virtual card,
as it would read a physical reader. ``make test`` installs pcscd and vsmartcard-vpcd.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from simulators.pcscd import Pcscd
from simulators.vcard import PSAM_PORT, VirtualCard, VirtualPsam, VpcdSlot, card_for

PSN_NO = "370202198001011234"


@pytest.fixture(scope="session")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    log = tmp_path_factory.mktemp("pcscd") / "pcscd.log"
    with Pcscd(log_path=log) as daemon:
        yield daemon


@pytest.fixture(scope="session")
def psam(pcscd: Pcscd) -> Iterator[VpcdSlot]:
    slot = VpcdSlot(VirtualPsam(), port=PSAM_PORT).start()
    assert slot.wait_inserted(10), "the PSAM did not reach pcscd's second vpcd slot"
    _wait_present(pcscd.readers[1])
    yield slot
    slot.stop()


def _wait_present(reader: str, present: bool = True, timeout: float = 10.0) -> None:
    """Block until pcscd reports the reader's card state (its polling lags the TCP connect)."""
    from smartcard import scard

    _, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
            if bool(states[0][1] & scard.SCARD_STATE_PRESENT) == present:
                return
            time.sleep(0.05)
        raise AssertionError(f"{reader}: card {'never arrived' if present else 'never left'}")
    finally:
        scard.SCardReleaseContext(ctx)


@pytest.fixture
def insert(pcscd: Pcscd, psam: VpcdSlot) -> Iterator[Callable[..., VpcdSlot]]:
    """``insert(state="valid", psn_no=...)`` puts a virtual card in the first reader."""
    slots: list[VpcdSlot] = []

    def _insert(state: str = "valid", psn_no: str = PSN_NO, wait: bool = True, **kw: object) -> VpcdSlot:
        card = VirtualCard(card_for(psn_no, state=state), state=state)
        slot = VpcdSlot(card, **kw).start()  # type: ignore[arg-type]
        slots.append(slot)
        if wait:
            assert slot.wait_inserted(10)
            _wait_present(pcscd.readers[0])
        return slot

    yield _insert
    for slot in slots:
        slot.stop()
    _wait_present(pcscd.readers[0], present=False)
