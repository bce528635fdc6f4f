"""Reading the patient's social-security card through PC/SC, and proving it genuine.

Cashiers have a queue: an identification is four card APDUs (select the application, read
EF05 and EF06 whole, internal authentication) and one PSAM APDU (verify the card's answer),
nothing more. The PSAM holds the issuer's master key; the agent only carries a random challenge
and the card's answer to it, so no key ever sits on the HIS computer.

Every failure is one of the ``CardError`` classes in ``agent.errors``, with a code the HIS
branches on and a message the cashier acts on. PC/SC result codes are mapped here and only
here. The card's contents (name, ID number) never reach a log.

PC/SC calls block; the HTTP API runs ``identify`` in a worker thread. One identification runs
at a time (a lock): a second cashier request waits for the first rather than fighting it for
the reader. The PC/SC context and the PSAM connection are kept between identifications and
rebuilt when ``pcscd`` restarts.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smartcard import scard

from protocol.errors import CardDataInvalid
from protocol.sscard import (
    CHALLENGE_LEN,
    MAC_LEN,
    PSAM_AID,
    SFI_EF05,
    SFI_EF06,
    SSSE_AID,
    SW,
    CardData,
    internal_authenticate,
    parse_records,
    psam_verify,
    read_all_records,
    select_aid,
    sw_name,
)

from .errors import (
    CardCounterfeit,
    CardError,
    CardExpired,
    CardRemoved,
    CardServiceDown,
    CardUnreadable,
    NoCard,
    NoReader,
    NotSocialSecurityCard,
    PsamMissing,
    ReaderBusy,
)
from .identity import CERT_TYPE_CARD, Identity

__all__ = ["CardReader", "ReadStats"]

log = logging.getLogger("yibao.agent.card")

_SERVICE_GONE = {
    scard.SCARD_E_NO_SERVICE,
    scard.SCARD_E_SERVICE_STOPPED,
    scard.SCARD_E_INVALID_HANDLE,
}
_CARD_GONE = {
    scard.SCARD_W_REMOVED_CARD,
    scard.SCARD_E_NO_SMARTCARD,
    scard.SCARD_W_RESET_CARD,
    scard.SCARD_W_UNPOWERED_CARD,
    scard.SCARD_E_READER_UNAVAILABLE,
    scard.SCARD_E_NOT_TRANSACTED,  # the reader lost the card between our connect and this command
}
_MSG = {
    "service": (
        "the smart-card service (pcscd) is not running on this computer: start it "
        "(systemctl start pcscd) or call IT"
    ),
    "no_reader": "no card reader is connected: plug the reader in, or check card_reader in agent.json",
    "no_card": "no card in the reader: ask the patient to insert the social-security card",
    "removed": "the card was removed while it was being read: ask the patient to insert the card again",
    "foreign": (
        "this is not a social-security card: ask the patient for the social-security card "
        "or the medical-insurance e-voucher"
    ),
    "counterfeit": (
        "the card failed authentication (possible counterfeit): do not settle with this card; "
        "keep it and call the supervisor"
    ),
    "unreadable": (
        "the card could not be read (damaged chip?): ask the patient to use the e-voucher "
        "and to have the card replaced at the card office"
    ),
    "busy": "the card reader is in use by another program: wait a moment or close that program, then retry",
    "psam": (
        "the PSAM (security module) was not found in any reader: cards cannot be authenticated; "
        "check the PSAM slot or call IT"
    ),
}


def _hr(value: int) -> int:
    return value & 0xFFFFFFFF if value < 0 else value


@dataclass
class ReadStats:
    """APDUs sent for the last identification: the figure that carries to real readers."""

    card_apdus: int = 0
    psam_apdus: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class CardReader:
    def __init__(self, card_reader: str = "", psam_reader: str = "", *, today: dt.date | None = None) -> None:
        self.card_reader_hint = card_reader
        self.psam_reader_hint = psam_reader
        self._today = today
        self._lock = threading.Lock()
        self._ctx: int | None = None
        self._psam: tuple[int, int, str] | None = None  # (handle, protocol, reader)
        self.stats = ReadStats()
        #: Called with the error code of every refused identification (the metrics count them).
        self.on_error: Callable[[str], None] | None = None

    # ---- public ---------------------------------------------------------------------------

    def readers(self) -> list[str]:
        with self._lock:
            return self._readers()

    def identify(self, wait_s: float = 0.0) -> Identity:
        """Read and authenticate the card in the reader, waiting up to ``wait_s`` for one."""
        with self._lock:
            start = time.perf_counter()
            self.stats = ReadStats()
            try:
                return self._identify(wait_s)
            except CardError as exc:
                log.info("card identification refused: %s", exc.code)
                if self.on_error is not None:
                    self.on_error(exc.code)
                raise
            finally:
                self.stats.seconds = time.perf_counter() - start

    def close(self) -> None:
        with self._lock:
            self._drop_psam()
            if self._ctx is not None:
                scard.SCardReleaseContext(self._ctx)
                self._ctx = None

    # ---- PC/SC plumbing ---------------------------------------------------------------------

    def _context(self) -> int:
        if self._ctx is None:
            hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
            if _hr(hresult) != scard.SCARD_S_SUCCESS:
                raise CardServiceDown(_MSG["service"])
            self._ctx = ctx
        return self._ctx

    def _reset_context(self) -> None:
        self._drop_psam()
        if self._ctx is not None:
            scard.SCardReleaseContext(self._ctx)
        self._ctx = None

    def _readers(self) -> list[str]:
        for attempt in (1, 2):
            hresult, readers = scard.SCardListReaders(self._context(), [])
            hresult = _hr(hresult)
            if hresult == scard.SCARD_S_SUCCESS:
                return list(readers)
            if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
                raise NoReader(_MSG["no_reader"])
            if hresult in _SERVICE_GONE and attempt == 1:
                self._reset_context()  # pcscd restarted since: one fresh context, then give up
                continue
            raise CardServiceDown(_MSG["service"])
        raise CardServiceDown(_MSG["service"])  # pragma: no cover - loop always returns or raises

    def _connect(self, reader: str, mode: int) -> tuple[int, int]:
        hresult, handle, proto = scard.SCardConnect(
            self._context(), reader, mode, scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1
        )
        hresult = _hr(hresult)
        if hresult == scard.SCARD_S_SUCCESS:
            return handle, proto
        if hresult == scard.SCARD_E_SHARING_VIOLATION:
            raise ReaderBusy(_MSG["busy"])
        if hresult in _CARD_GONE:
            log.debug("connect to %r: %08X", reader, hresult)
            raise NoCard(_MSG["no_card"])
        if hresult == scard.SCARD_W_UNRESPONSIVE_CARD:
            raise CardUnreadable(_MSG["unreadable"])
        if hresult in _SERVICE_GONE:
            self._reset_context()
            raise CardServiceDown(_MSG["service"])
        raise CardUnreadable(_MSG["unreadable"] + f" (PC/SC {hresult:08X})")

    @staticmethod
    def _transmit(handle: int, proto: int, apdu: list[int]) -> tuple[bytes, int]:
        hresult, resp = scard.SCardTransmit(handle, proto, apdu)
        hresult = _hr(hresult)
        if hresult != scard.SCARD_S_SUCCESS:
            if hresult in _CARD_GONE:
                raise CardRemoved(_MSG["removed"])
            if hresult in _SERVICE_GONE:
                raise CardServiceDown(_MSG["service"])
            raise CardUnreadable(_MSG["unreadable"] + f" (PC/SC {hresult:08X})")
        if len(resp) < 2:
            # vpcd (and some USB readers) report a card pulled out mid-command as an empty answer;
            # either way the cashier's next step is the same: insert the card again.
            raise CardRemoved(_MSG["removed"])
        return bytes(resp[:-2]), (resp[-2] << 8) | resp[-1]

    def _card_present(self, reader: str, wait_s: float) -> bool:
        """Wait (PC/SC status change) until a card is present in ``reader``, up to ``wait_s``."""
        state = scard.SCARD_STATE_UNAWARE
        deadline = time.monotonic() + wait_s
        while True:
            timeout_ms = max(0, int((deadline - time.monotonic()) * 1000))
            hresult, states = scard.SCardGetStatusChange(self._context(), timeout_ms, [(reader, state)])
            hresult = _hr(hresult)
            if hresult == scard.SCARD_E_TIMEOUT:
                return False
            if hresult in _SERVICE_GONE:
                self._reset_context()
                raise CardServiceDown(_MSG["service"])
            if hresult != scard.SCARD_S_SUCCESS:
                raise NoReader(_MSG["no_reader"])
            _name, event, _atr = states[0]
            if event & scard.SCARD_STATE_PRESENT and not event & scard.SCARD_STATE_MUTE:
                return True
            if event & scard.SCARD_STATE_MUTE:
                raise CardUnreadable(_MSG["unreadable"])
            if time.monotonic() >= deadline:
                return False
            state = event & ~scard.SCARD_STATE_CHANGED

    # ---- the PSAM ---------------------------------------------------------------------------

    def _drop_psam(self) -> None:
        if self._psam is not None:
            scard.SCardDisconnect(self._psam[0], scard.SCARD_LEAVE_CARD)
            self._psam = None

    def _find_psam(self, readers: list[str]) -> tuple[int, int, str]:
        if self._psam is not None and self._psam[2] in readers:
            return self._psam
        self._drop_psam()
        hint = self.psam_reader_hint
        candidates = [r for r in readers if hint in r] if hint else readers
        if self.card_reader_hint:
            candidates = [r for r in candidates if self.card_reader_hint not in r]
        for reader in candidates:
            try:
                handle, proto = self._connect(reader, scard.SCARD_SHARE_SHARED)
            except CardError as exc:
                log.info("no PSAM in %r: %s", reader, exc.code)
                continue
            self.stats.psam_apdus += 1
            _data, sw = self._transmit(handle, proto, select_aid(PSAM_AID))
            if sw == SW["OK"]:
                self._psam = (handle, proto, reader)
                log.info("PSAM found in %r", reader)
                return self._psam
            log.info("no PSAM in %r: the card there answered %s", reader, sw_name(sw))
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        raise PsamMissing(_MSG["psam"])

    def _card_reader_name(self, readers: list[str], psam: str | None) -> str:
        if self.card_reader_hint:
            for r in readers:
                if self.card_reader_hint in r:
                    return r
            raise NoReader(_MSG["no_reader"])
        for r in readers:
            if r != psam:
                return r
        raise NoReader(_MSG["no_reader"])

    def _psam_check(self, readers: list[str], card_no: str, challenge: bytes, answer: bytes) -> bool:
        for attempt in (1, 2):
            handle, proto, _reader = self._find_psam(readers)
            try:
                self.stats.psam_apdus += 1
                _data, sw = self._transmit(handle, proto, psam_verify(card_no, challenge, answer))
            except CardError:
                if attempt == 2:
                    raise PsamMissing(_MSG["psam"]) from None
                self._drop_psam()  # reset or reinserted since last time: select it again
                continue
            if sw == SW["OK"]:
                return True
            if sw == SW["AUTH_FAILED"]:
                return False
            if sw == SW["CONDITIONS_NOT_SATISFIED"] and attempt == 1:
                self._drop_psam()
                continue
            raise PsamMissing(_MSG["psam"] + f" (PSAM answered {sw_name(sw)})")
        return False  # pragma: no cover

    # ---- one identification -------------------------------------------------------------------

    def _identify(self, wait_s: float) -> Identity:
        readers = self._readers()
        psam = self._find_psam(readers)
        reader = self._card_reader_name(readers, psam[2])
        if not self._card_present(reader, wait_s):
            raise NoCard(_MSG["no_card"])
        handle, proto = self._connect(reader, scard.SCARD_SHARE_EXCLUSIVE)
        try:
            data, challenge, answer = self._read(handle, proto)
        finally:
            scard.SCardDisconnect(handle, scard.SCARD_LEAVE_CARD)
        if not self._psam_check(readers, data.card_no, challenge, answer):
            log.warning("card failed internal authentication (issuing area %s)", data.insuplc_admdvs)
            refused: CardCounterfeit | CardExpired = CardCounterfeit(_MSG["counterfeit"])
            refused.card_sn = data.card_sn  # for the card log (agent.cardlog), never the answer or a log line
            raise refused
        today = self._today or dt.date.today()
        if data.expiry_date < today:
            refused = CardExpired(
                f"the card expired on {data.expiry_date.isoformat()}: ask the patient to renew it at the "
                "card office, and use the medical-insurance e-voucher meanwhile"
            )
            refused.card_sn = data.card_sn
            raise refused
        return Identity(
            method="card",
            mdtrt_cert_type=CERT_TYPE_CARD,
            psn_no=data.ssn,
            insuplc_admdvs=data.insuplc_admdvs,
            mdtrt_cert_no=data.card_no,
            card_sn=data.card_sn,
            psn_name=data.name,
            gend=data.sex,
            brdy=data.birth_date.isoformat(),
            naty=f"{data.naty:02d}",
            issued=data.issue_date.isoformat(),
            expires=data.expiry_date.isoformat(),
            authenticated=True,
        )

    def _read(self, handle: int, proto: int) -> tuple[CardData, bytes, bytes]:
        def send(apdu: list[int]) -> tuple[bytes, int]:
            self.stats.card_apdus += 1
            return self._transmit(handle, proto, apdu)

        _fci, sw = send(select_aid(SSSE_AID))
        if sw != SW["OK"]:
            raise NotSocialSecurityCard(_MSG["foreign"])
        files = []
        for sfi in (SFI_EF05, SFI_EF06):
            raw, sw = send(read_all_records(sfi))
            if sw != SW["OK"]:
                log.info("card refused to read EF%02X: %s", sfi, sw_name(sw))
                if sw in (SW["FILE_NOT_FOUND"], SW["RECORD_NOT_FOUND"]):
                    raise NotSocialSecurityCard(_MSG["foreign"])
                raise CardUnreadable(_MSG["unreadable"])
            files.append(raw)
        try:
            data = CardData.from_records(parse_records(files[0]), parse_records(files[1]))
        except CardDataInvalid as exc:
            log.info("card data does not follow the layout: %s", exc.code)
            raise CardUnreadable(_MSG["unreadable"]) from None
        challenge = os.urandom(CHALLENGE_LEN)
        answer, sw = send(internal_authenticate(challenge))
        if sw != SW["OK"] or len(answer) != MAC_LEN:
            raise CardCounterfeit(_MSG["counterfeit"])
        return data, challenge, answer
