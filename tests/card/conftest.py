"""A real pcscd with the vpcd driver for each card test module, and the PSAM in slot 2.

Not a mock: the agent reads through pyscard → libpcsclite → pcscd → vpcd → our virtual card,
as it would read a physical reader. ``make test`` installs pcscd and vsmartcard-vpcd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from simulators.pcscd import Pcscd
from simulators.vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for

PSN_NO = "370202198001011234"


# Per module, not per session: only one pcscd can run on a machine, and other tests (the demo)
# start their own.
@pytest.fixture(scope="module")
def pcscd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pcscd]:
    log = tmp_path_factory.mktemp("pcscd") / "pcscd.log"
    with Pcscd(log_path=log) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def psam(pcscd: Pcscd) -> Iterator[VpcdSlot]:
    slot = VpcdSlot(VirtualPsam(), port=pcscd.psam_port).start()
    assert slot.wait_inserted(10), "the PSAM did not reach pcscd's second vpcd slot"
    pcscd.wait_card(1)
    yield slot
    slot.stop()


@pytest.fixture
def insert(pcscd: Pcscd, psam: VpcdSlot) -> Iterator[Callable[..., VpcdSlot]]:
    """``insert(state="valid", psn_no=...)`` puts a virtual card in the first reader."""
    slots: list[VpcdSlot] = []

    def _insert(state: str = "valid", psn_no: str = PSN_NO, wait: bool = True, **kw: object) -> VpcdSlot:
        card = VirtualCard(card_for(psn_no, state=state), state=state)
        kw.setdefault("port", pcscd.card_port)
        slot = VpcdSlot(card, **kw).start()  # type: ignore[arg-type]
        slots.append(slot)
        if wait:
            assert slot.wait_inserted(10)
            pcscd.wait_card(0)
        return slot

    yield _insert
    for slot in slots:
        slot.stop()
    pcscd.wait_card(0, present=False)
