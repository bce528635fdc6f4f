"""A virtual social-security card and PSAM, inserted into a real ``pcscd`` through vpcd.

Debian's ``vsmartcard-vpcd`` driver makes ``pcscd`` show a reader per TCP port (35963 for
the first slot, 35964 for the second); a virtual card "is inserted" while a client holds a
TCP connection to that port, and "is removed" when the connection closes. The wire is tiny:
every message is prefixed by a 2-byte big-endian length; a 1-byte message is a control
(0 power off, 1 power on, 2 reset, 4 send the ATR) and anything else is a command APDU,
answered with the response APDU. Debian's own emulator ``vicc`` needs Python 2, hence this.

The card answers from ``protocol.sscard`` — the same layout the agent reads — so a change
to the layout cannot leave the card and the reader disagreeing. States model what a cashier
meets: ``valid``; ``expired``; ``cloned`` (files copied, key not: fails authentication);
``damaged`` (the chip reports a memory failure reading EF06); ``removed-mid-read`` (pulled
out while EF06 is read; with ``reinsert_after`` pushed back in as a valid card);
``foreign`` (not a social-security card: the SSSE application is not on it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from typing import Literal

from protocol.sscard import (
    CHALLENGE_LEN,
    MAC_LEN,
    PSAM_AID,
    SFI_EF05,
    SFI_EF06,
    SSSE_AID,
    SW,
    CardData,
    auth_mac,
    diversify_key,
    encode_records,
)

__all__ = [
    "CARD_PORT",
    "DEMO_MASTER_KEY",
    "PSAM_PORT",
    "STATES",
    "VirtualCard",
    "VirtualPsam",
    "VpcdSlot",
    "card_for",
]

log = logging.getLogger("yibao.sim.vcard")

CARD_PORT = 35963
PSAM_PORT = 35964
#: The simulated issuer's master key. A published test key: it exists so the demo and tests can
#: authenticate simulated cards, and must never be loaded into a real PSAM.
DEMO_MASTER_KEY = bytes.fromhex("594942414f2d44454d4f2d4d4b2d3031")  # "YIBAO-DEMO-MK-01"

State = Literal["valid", "expired", "cloned", "damaged", "removed-mid-read", "foreign"]
STATES: tuple[str, ...] = ("valid", "expired", "cloned", "damaged", "removed-mid-read", "foreign")

#: ATRs: TS=3B, T0 = 0x0K (no interface bytes: T=0), K historical bytes naming the product.
CARD_ATR = bytes([0x3B, 0x0A]) + b"YIBAO SSC3"
PSAM_ATR = bytes([0x3B, 0x0A]) + b"YIBAO PSAM"

_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
_GIVEN = ("伟", "芳", "娜", "秀英", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛")


def _sw(name: str) -> bytes:
    return struct.pack(">H", SW[name])


def card_for(psn_no: str, *, state: str = "valid", today: dt.date | None = None) -> CardData:
    """A plausible card for ``psn_no`` (an 18-character ID number): same number, same person."""
    if len(psn_no) != 18 or not psn_no[:17].isdigit():
        raise ValueError("psn_no must be an 18-character ID number (17 digits and a check character)")
    today = today or dt.date.today()
    h = hashlib.sha256(psn_no.encode()).digest()
    area = psn_no[:6]
    try:
        birth = dt.date(int(psn_no[6:10]), int(psn_no[10:12]), int(psn_no[12:14]))
    except ValueError:
        birth = dt.date(1980, 1, 1)
    issued = today.replace(year=today.year - 3) if not (today.month == 2 and today.day == 29) else today
    expiry = (
        today - dt.timedelta(days=30)
        if state == "expired"
        else issued.replace(year=issued.year + 10)
        if issued.month != 2 or issued.day != 29
        else issued
    )
    return CardData(
        card_sn=area + f"{int.from_bytes(h[:8], 'big') % 10**10:010d}",
        card_no="A" + f"{int.from_bytes(h[8:12], 'big') % 10**8:08d}",
        issue_date=issued,
        expiry_date=expiry,
        ssn=psn_no,
        name=_SURNAMES[h[12] % len(_SURNAMES)] + _GIVEN[h[13] % len(_GIVEN)],
        sex="1" if int(psn_no[16]) % 2 else "2",
        naty=1,
        birthplace=area,
        birth_date=birth,
        init_org=area + "0" * 10,
    )


class VirtualCard:
    """The card's application logic: one APDU in, one response out."""

    def __init__(self, data: CardData, *, master_key: bytes = DEMO_MASTER_KEY, state: str = "valid") -> None:
        if state not in STATES:
            raise ValueError(f"unknown card state {state!r}; one of {', '.join(STATES)}")
        self.data = data
        self.state = state
        # A clone copies every readable file but cannot copy the key: it has a key of its own.
        self.key = os.urandom(16) if state == "cloned" else diversify_key(master_key, data.card_no)
        self._files = {SFI_EF05: data.ef05(), SFI_EF06: data.ef06()}
        self.selected = False
        self.apdus = 0
        #: Called (once) when the card should be pulled out mid-read; set by the slot.
        self.on_remove: Callable[[], None] | None = None

    atr = CARD_ATR

    def reset(self) -> None:
        self.selected = False

    def handle(self, apdu: bytes) -> bytes | None:
        """The response APDU, or ``None`` when the card was pulled out before answering."""
        self.apdus += 1
        if len(apdu) < 4:
            return _sw("WRONG_LENGTH")
        cla, ins, p1, p2 = apdu[:4]
        body = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if cla != 0x00:
            return _sw("CLA_NOT_SUPPORTED")
        if ins == 0xA4:  # SELECT
            if p1 == 0x04 and body == SSSE_AID and self.state != "foreign":
                self.selected = True
                return _sw("OK")
            self.selected = False
            return _sw("FILE_NOT_FOUND")
        if not self.selected:
            return _sw("CONDITIONS_NOT_SATISFIED")
        if ins == 0xB2:  # READ RECORD
            return self._read_record(p1, p2)
        if ins == 0x88:  # INTERNAL AUTHENTICATE
            if len(body) != CHALLENGE_LEN:
                return _sw("WRONG_LENGTH")
            return auth_mac(self.key, body) + _sw("OK")
        return _sw("INS_NOT_SUPPORTED")

    def _read_record(self, p1: int, p2: int) -> bytes | None:
        sfi, mode = p2 >> 3, p2 & 0b111
        records = self._files.get(sfi)
        if records is None:
            return _sw("FILE_NOT_FOUND")
        if sfi == SFI_EF06 and self.state == "damaged":
            return _sw("MEMORY_FAILURE")
        if sfi == SFI_EF06 and self.state == "removed-mid-read" and self.on_remove is not None:
            remove, self.on_remove = self.on_remove, None
            remove()
            return None
        if mode == 0b100:
            if p1 not in records:
                return _sw("RECORD_NOT_FOUND")
            return encode_records({p1: records[p1]}) + _sw("OK")
        if mode == 0b101:
            chosen = {t: v for t, v in records.items() if t >= p1}
            if not chosen:
                return _sw("RECORD_NOT_FOUND")
            return encode_records(chosen) + _sw("OK")
        return _sw("WRONG_P1P2")


class VirtualPsam:
    """The PSAM: holds the issuer master key and checks a card's authentication answer."""

    atr = PSAM_ATR

    def __init__(self, master_key: bytes = DEMO_MASTER_KEY) -> None:
        self.master_key = master_key
        self.selected = False
        self.apdus = 0
        self.on_remove = None

    def reset(self) -> None:
        self.selected = False

    def handle(self, apdu: bytes) -> bytes:
        self.apdus += 1
        if len(apdu) < 4:
            return _sw("WRONG_LENGTH")
        cla, ins, p1, _p2 = apdu[:4]
        body = apdu[5 : 5 + apdu[4]] if len(apdu) > 5 else b""
        if cla == 0x00 and ins == 0xA4:
            self.selected = p1 == 0x04 and body == PSAM_AID
            return _sw("OK") if self.selected else _sw("FILE_NOT_FOUND")
        if cla != 0x80:
            return _sw("CLA_NOT_SUPPORTED")
        if not self.selected:
            return _sw("CONDITIONS_NOT_SATISFIED")
        if ins != 0x8A:
            return _sw("INS_NOT_SUPPORTED")
        if len(body) != 9 + CHALLENGE_LEN + MAC_LEN:
            return _sw("WRONG_LENGTH")
        card_no, challenge, answer = body[:9], body[9:17], body[17:]
        expected = auth_mac(diversify_key(self.master_key, card_no.decode("ascii", "replace")), challenge)
        return _sw("OK") if expected == answer else _sw("AUTH_FAILED")


class VpcdSlot:
    """Holds a virtual card in one vpcd slot: connected means inserted.

    Runs in a daemon thread. If ``pcscd`` is not there yet (or restarts), the slot keeps
    trying to connect, as a card sitting in a reader would be found when the service starts.
    """

    def __init__(
        self,
        card: VirtualCard | VirtualPsam,
        *,
        host: str = "127.0.0.1",
        port: int = CARD_PORT,
        reinsert_after: float | None = None,
    ) -> None:
        self.card = card
        self.host, self.port = host, port
        self.reinsert_after = reinsert_after
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"vpcd-{port}", daemon=True)
        self.connected = threading.Event()
        self.removed_mid_read = threading.Event()
        self.card.on_remove = self._pull_out

    def start(self) -> VpcdSlot:
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """False once the card is out for good (removed mid-read without reinsertion, or stopped)."""
        return self._thread.is_alive()

    def wait_inserted(self, timeout: float = 10.0) -> bool:
        return self.connected.wait(timeout)

    def stop(self) -> None:
        """Remove the card: close the connection and end the thread."""
        self._stop.set()
        self._close()
        self._thread.join(timeout=5)

    def __enter__(self) -> VpcdSlot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        self.connected.clear()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _pull_out(self) -> None:
        log.info("card pulled out of the reader mid-read (port %d)", self.port)
        self.removed_mid_read.set()
        self._close()
        if self.reinsert_after is None:
            self._stop.set()  # stays out until the simulator is stopped
        else:
            self.card.state = "valid"

    def _run(self) -> None:
        delay = 0.05
        while not self._stop.is_set():
            if self.removed_mid_read.is_set() and self.reinsert_after is not None and not self._sock:
                self._stop.wait(self.reinsert_after)
                self.removed_mid_read.clear()
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2)
            except OSError:
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sock = sock
            self.connected.set()
            try:
                self._serve(sock)
            except OSError:
                pass
            finally:
                self._close()
            if not self._stop.is_set() and not self.removed_mid_read.is_set():
                self._stop.wait(0.2)  # pcscd went away: try again shortly

    def _serve(self, sock: socket.socket) -> None:
        while not self._stop.is_set():
            head = _recv_exact(sock, 2)
            if head is None:
                return
            (length,) = struct.unpack(">H", head)
            msg = _recv_exact(sock, length)
            if msg is None:
                return
            if length == 1:
                ctl = msg[0]
                if ctl in (0, 1, 2):  # power off, power on, reset: no answer
                    self.card.reset()
                elif ctl == 4:
                    _send(sock, self.card.atr)
                continue
            answer = self.card.handle(msg)
            if answer is None:  # pulled out before answering
                return
            _send(sock, answer)


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(struct.pack(">H", len(payload)) + payload)
