"""vpcd's default ports taken by another program: our pcscd moves to a free pair and says which.

The default pair (35963/35964) is inside the kernel's ephemeral range, so on a busy machine a
server bound to port 0 can hold it; vpcd then cannot listen and pcscd shows no reader at all.
This module starts its own pcscd (not the module fixture) because it needs the port taken first.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from agent.card import CardReader
from simulators.pcscd import DEFAULT_PORT, Pcscd, PcscdUnavailable
from simulators.vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for

PSN = "370202198001011234"


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", DEFAULT_PORT))
    s.listen()
    yield s
    s.close()


def test_default_port_taken_moves_to_a_free_pair_and_a_card_reads(squatter, tmp_path):
    with Pcscd(log_path=tmp_path / "pcscd.log") as daemon:
        assert daemon.card_port != DEFAULT_PORT and daemon.psam_port == daemon.card_port + 1
        assert daemon.card_port < 32768, "the fallback must lie below the ephemeral range"
        with (
            VpcdSlot(VirtualPsam(), port=daemon.psam_port) as psam,
            VpcdSlot(VirtualCard(card_for(PSN)), port=daemon.card_port) as card,
        ):
            assert psam.wait_inserted(10) and card.wait_inserted(10)
            daemon.wait_card(0)
            daemon.wait_card(1)
            reader = CardReader()
            try:
                assert reader.identify(wait_s=5).psn_no == PSN
            finally:
                reader.close()


def test_an_explicit_port_that_is_taken_is_refused_with_what_to_do(squatter):
    taken = rf"{DEFAULT_PORT} and {DEFAULT_PORT + 1} are not both free.*ss -ltnp"
    with pytest.raises(PcscdUnavailable, match=taken):
        Pcscd(port=DEFAULT_PORT).start()
