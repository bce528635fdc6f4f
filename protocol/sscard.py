"""The social-security card as it is laid out on the chip, and the APDUs that read it.

Both sides of the reader use this module: the agent reads a card with these commands and the
virtual card in ``simulators/`` answers them from the same layout, so the two cannot drift.

What follows the published layout (reconstructed from public reader code) and what we chose
where the public sources are silent is listed in ``docs/CARD.md``. In short:

- The application ``SSSE`` is selected by its AID. Its elementary files are addressed by short
  file identifier (SFI), so no SELECT of EF05 / EF06 is needed.
- Each data element is a record whose number equals its tag. A record reads back as
  ``tag (1 byte) | length (1 byte) | value``.
- We read every record of a file with one READ RECORD whose P2 low bits are ``101`` (ISO 7816-4:
  "all records from P1 up to the last"), so identity takes three APDUs (SELECT, EF05, EF06) and
  internal authentication a fourth.
- Genuineness: the card holds a key diversified from the issuer master key and its card number
  (SM4-ECB of the card number, padded); INTERNAL AUTHENTICATE answers the first 8 bytes of the
  SM4-CMAC of the challenge under that key. The PSAM, holding the master key, recomputes and
  compares, so the master key never leaves the PSAM and the agent never sees a card key.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

from .errors import CardDataInvalid

__all__ = [
    "CHALLENGE_LEN",
    "MAC_LEN",
    "PSAM_AID",
    "SFI_EF05",
    "SFI_EF06",
    "SSSE_AID",
    "SW",
    "CardData",
    "auth_mac",
    "bcd_decode",
    "bcd_encode",
    "diversify_key",
    "encode_records",
    "internal_authenticate",
    "parse_records",
    "psam_verify",
    "read_all_records",
    "select_aid",
    "sw_name",
]

#: AID of the social-security application ``SSSE`` ("sx1.sh.社会保障" in GBK).
SSSE_AID = bytes.fromhex("7378312E73682EC9E7BBE1B1A3D5CF")
#: AID of our PSAM application: proprietary (RID-less, ``F0`` prefix, ISO 7816-5), then "YBPSAM".
PSAM_AID = bytes.fromhex("F0") + b"YBPSAM"
SFI_EF05 = 0x05
SFI_EF06 = 0x06
CHALLENGE_LEN = 8
MAC_LEN = 8

#: Status words the agent branches on (ISO 7816-4).
SW = {
    "OK": 0x9000,
    "MEMORY_FAILURE": 0x6581,
    "WRONG_LENGTH": 0x6700,
    "SECURITY_NOT_SATISFIED": 0x6982,
    "AUTH_FAILED": 0x6988,  # our PSAM: the card's answer does not match (secure messaging data wrong)
    "CONDITIONS_NOT_SATISFIED": 0x6985,
    "FILE_NOT_FOUND": 0x6A82,
    "RECORD_NOT_FOUND": 0x6A83,
    "WRONG_P1P2": 0x6A86,
    "INS_NOT_SUPPORTED": 0x6D00,
    "CLA_NOT_SUPPORTED": 0x6E00,
}
_SW_NAMES = {v: k for k, v in SW.items()}


def sw_name(sw: int) -> str:
    return _SW_NAMES.get(sw, f"SW {sw:04X}")


# ---- field layout -------------------------------------------------------------------------

#: (tag, name, length, kind); kind: ``a`` ASCII, ``g`` GBK text, ``b`` BCD digits, ``x`` raw byte(s).
EF05_FIELDS = (
    (0x01, "card_sn", 16, "a"),  # card identification code; its first 6 digits are the issuing area
    (0x02, "card_type", 1, "a"),
    (0x03, "spec_version", 4, "a"),
    (0x04, "init_org", 16, "a"),
    (0x05, "issue_date", 4, "b"),
    (0x06, "expiry_date", 4, "b"),
    (0x07, "card_no", 9, "a"),
)
EF06_FIELDS = (
    (0x08, "ssn", 18, "a"),
    (0x09, "name", 30, "g"),
    (0x0A, "sex", 1, "a"),
    (0x0B, "naty", 1, "x"),
    (0x0C, "birthplace", 3, "b"),
    (0x0D, "birth_date", 4, "b"),
)


def bcd_encode(digits: str) -> bytes:
    if not (digits.isascii() and digits.isdigit()) or len(digits) % 2:
        raise CardDataInvalid(f"BCD needs an even number of digits, got {len(digits)} characters")
    return bytes.fromhex(digits)


def bcd_decode(raw: bytes) -> str:
    text = raw.hex()
    if not text.isdigit():
        raise CardDataInvalid("a BCD field holds a nibble that is not a digit")
    return text


def _date(digits: str, what: str) -> dt.date:
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise CardDataInvalid(f"the card's {what} is not a date") from None


@dataclass(frozen=True)
class CardData:
    """The readable files of one card. Personal data: never log an instance."""

    card_sn: str
    card_no: str
    issue_date: dt.date
    expiry_date: dt.date
    ssn: str
    name: str
    sex: str
    naty: int
    birthplace: str
    birth_date: dt.date
    card_type: str = "3"
    spec_version: str = "3.00"
    init_org: str = ""

    @property
    def insuplc_admdvs(self) -> str:
        """The insured place: the issuing area, the first six digits of the identification code."""
        return self.card_sn[:6]

    def __repr__(self) -> str:  # personal data stays out of tracebacks and logs
        return f"CardData(card_sn={self.card_sn[:6]}…)"

    def ef05(self) -> dict[int, bytes]:
        return _encode_fields(
            EF05_FIELDS,
            {
                "card_sn": self.card_sn,
                "card_type": self.card_type,
                "spec_version": self.spec_version,
                "init_org": self.init_org.ljust(16, "0"),
                "issue_date": self.issue_date.strftime("%Y%m%d"),
                "expiry_date": self.expiry_date.strftime("%Y%m%d"),
                "card_no": self.card_no,
            },
        )

    def ef06(self) -> dict[int, bytes]:
        return _encode_fields(
            EF06_FIELDS,
            {
                "ssn": self.ssn,
                "name": self.name,
                "sex": self.sex,
                "naty": self.naty,
                "birthplace": self.birthplace,
                "birth_date": self.birth_date.strftime("%Y%m%d"),
            },
        )

    @classmethod
    def from_records(cls, ef05: dict[int, bytes], ef06: dict[int, bytes]) -> CardData:
        """Decode the two files; any missing or malformed field is ``CardDataInvalid``."""
        v = _decode_fields(EF05_FIELDS, ef05) | _decode_fields(EF06_FIELDS, ef06)
        if not v["card_sn"].isdigit() or len(v["card_sn"]) != 16:
            raise CardDataInvalid("the card identification code is not 16 digits")
        if len(v["ssn"]) != 18 or not v["ssn"][:17].isdigit():
            raise CardDataInvalid("the social-security number on the card is not 18 characters")
        return cls(
            card_sn=v["card_sn"],
            card_no=v["card_no"],
            issue_date=_date(v["issue_date"], "issue date"),
            expiry_date=_date(v["expiry_date"], "expiry date"),
            ssn=v["ssn"],
            name=v["name"],
            sex=v["sex"],
            naty=v["naty"],
            birthplace=v["birthplace"],
            birth_date=_date(v["birth_date"], "birth date"),
            card_type=v["card_type"],
            spec_version=v["spec_version"],
            init_org=v["init_org"],
        )


def _encode_fields(layout: tuple, values: dict[str, object]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for tag, name, length, kind in layout:
        value = values[name]
        if kind == "a":
            raw = str(value).encode("ascii")
        elif kind == "g":
            raw = str(value).encode("gbk").ljust(length, b"\x00")
        elif kind == "b":
            raw = bcd_encode(str(value))
        else:
            raw = bytes([int(value)])  # type: ignore[call-overload]
        if len(raw) != length:
            raise CardDataInvalid(f"field {name} must be {length} bytes, got {len(raw)}")
        out[tag] = raw
    return out


def _decode_fields(layout: tuple, records: dict[int, bytes]) -> dict[str, object]:
    out: dict[str, object] = {}
    for tag, name, length, kind in layout:
        raw = records.get(tag)
        if raw is None:
            raise CardDataInvalid(f"the card has no record {tag:02X} ({name})")
        if len(raw) != length:
            raise CardDataInvalid(f"record {tag:02X} ({name}) is {len(raw)} bytes, expected {length}")
        try:
            if kind == "a":
                out[name] = raw.decode("ascii").rstrip("\x00 ")
            elif kind == "g":
                out[name] = raw.rstrip(b"\x00").decode("gbk").rstrip()
            elif kind == "b":
                out[name] = bcd_decode(raw)
            else:
                out[name] = raw[0]
        except UnicodeDecodeError:
            raise CardDataInvalid(f"record {tag:02X} ({name}) is not valid text") from None
    return out


def encode_records(records: dict[int, bytes]) -> bytes:
    """Records in number order, each as ``tag | length | value`` (the READ RECORD answer)."""
    return b"".join(bytes([tag, len(v)]) + v for tag, v in sorted(records.items()))


def parse_records(data: bytes) -> dict[int, bytes]:
    """Strict inverse of ``encode_records``: a truncated or repeated record is an error."""
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        if i + 2 > len(data):
            raise CardDataInvalid("a record is cut short after its tag")
        tag, length = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            raise CardDataInvalid(f"record {tag:02X} is cut short")
        if tag in out:
            raise CardDataInvalid(f"record {tag:02X} appears twice")
        out[tag] = value
        i += 2 + length
    return out


# ---- commands -----------------------------------------------------------------------------


def select_aid(aid: bytes) -> list[int]:
    return [0x00, 0xA4, 0x04, 0x00, len(aid), *aid]


def read_all_records(sfi: int) -> list[int]:
    """READ RECORD, P1=1, P2 = SFI<<3 | 0b101: every record from the first, one APDU."""
    return [0x00, 0xB2, 0x01, (sfi << 3) | 0b101, 0x00]


def internal_authenticate(challenge: bytes) -> list[int]:
    return [0x00, 0x88, 0x00, 0x00, len(challenge), *challenge, MAC_LEN]


def psam_verify(card_no: str, challenge: bytes, response: bytes) -> list[int]:
    """Our PSAM's VERIFY CARD AUTHENTICATION (CLA 80, INS 8A): 9000 if genuine, 6988 if not."""
    data = card_no.encode("ascii") + challenge + response
    return [0x80, 0x8A, 0x00, 0x00, len(data), *data]


# ---- keys ---------------------------------------------------------------------------------


def diversify_key(master: bytes, card_no: str) -> bytes:
    """The card's own key: SM4-ECB of its card number (ASCII, ISO 7816-4 padded) under the master."""
    block = card_no.encode("ascii")[:15]
    block = block + b"\x80" + b"\x00" * (15 - len(block))
    enc = Cipher(algorithms.SM4(master), modes.ECB()).encryptor()
    return enc.update(block) + enc.finalize()


def auth_mac(card_key: bytes, challenge: bytes) -> bytes:
    mac = CMAC(algorithms.SM4(card_key))
    mac.update(challenge)
    return mac.finalize()[:MAC_LEN]
