"""The e-voucher token: an honest one verifies; anything else is refused with its own code.

Real Ed25519 keys throughout. The property at the heart of it: a token is one exact text, so
changing, dropping or adding any one character is refused (never accepted as the same or as
another voucher), whatever the character and wherever it lands.
"""

from __future__ import annotations

import base64
import time

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from protocol.batch import KeyPair
from protocol.canonical import encode_canonical
from protocol.errors import (
    ProtocolError,
    VoucherBadSignature,
    VoucherError,
    VoucherExpired,
    VoucherMalformed,
    VoucherNotYetValid,
    VoucherReplayed,
    VoucherUnknownIssuer,
    VoucherUnsupportedVersion,
)
from protocol.evoucher import (
    MAX_LIFETIME_S,
    PREFIX,
    VoucherClaims,
    dump_public_key,
    iso_utc,
    issue_voucher,
    load_issuers,
    load_public_key,
    verify_voucher,
)

KEY = KeyPair.from_private_bytes(bytes(range(32)))
OTHER = KeyPair.from_private_bytes(bytes(range(1, 33)))
KID = "iss-2026"
PSN = "37021119580402123X"
AREA = "370211"
NOW = 1_795_000_000
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")
TTL = 120


def pub(key: KeyPair):
    return load_public_key(base64.urlsafe_b64encode(key.public_bytes).rstrip(b"=").decode())


TRUSTED = {KID: pub(KEY)}
TOKEN = issue_voucher(KEY, KID, PSN, AREA, TTL, now=NOW, nonce=NONCE)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes) -> dict:
    base = {"a": AREA, "e": NOW + TTL, "i": NOW, "k": KID, "n": NONCE, "p": PSN}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def signed(c: dict, key: KeyPair = KEY) -> str:
    """A token over any claims, signed the way the protocol documents: domain string + claims."""
    sig = key.sign(encode_canonical(["yibao-evoucher/1", c]))
    return PREFIX + b64(encode_canonical([c, sig]))


def refused(text: str, now: float = NOW + 1, skew_s: float = 30, trusted=None) -> VoucherError:
    with pytest.raises(VoucherError) as info:
        verify_voucher(text, TRUSTED if trusted is None else trusted, now, skew_s)
    err = info.value
    assert PSN not in err.message and PSN not in str(err.to_wire())
    assert err.http_status == 422
    return err


# ---- the honest path ----------------------------------------------------------------------------


def test_round_trip():
    got = verify_voucher(TOKEN, TRUSTED, NOW + 1, 30)
    assert got == VoucherClaims(
        psn_no=PSN, insuplc_admdvs=AREA, issued_at=NOW, expires_at=NOW + TTL, nonce=NONCE.hex(), kid=KID
    )
    assert got.issued_iso == iso_utc(NOW) == "2026-11-18T11:06:40Z"
    assert got.expires_iso == "2026-11-18T11:08:40Z"
    assert PSN not in repr(got)


def test_token_is_short_ascii_for_a_qr_code():
    assert TOKEN.startswith("YBV1.") and TOKEN.isascii() and TOKEN.isprintable()
    assert len(TOKEN) < 200
    assert len(issue_voucher(KEY, "a1b2c3d4", PSN, AREA, TTL)) == 196


def test_fresh_nonce_and_clock_by_default():
    a, b = (issue_voucher(KEY, KID, PSN, AREA, TTL) for _ in range(2))
    assert a != b
    claims_a = verify_voucher(a, TRUSTED, time.time(), 30)
    assert abs(claims_a.issued_at - time.time()) < 5 and len(claims_a.nonce) == 32


def test_scanner_line_endings_are_tolerated():
    assert verify_voucher(f"  {TOKEN}\r\n", TRUSTED, NOW, 30).psn_no == PSN


def test_ed25519_private_key_signs_too():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    assert issue_voucher(private, KID, PSN, AREA, TTL, now=NOW, nonce=NONCE) == TOKEN


# ---- any single-character change is refused --------------------------------------------------------


any_char = st.characters(codec="utf-8") | st.sampled_from("ABCabc019-_+/=. \n")


@given(st.data())
def test_any_one_character_replaced_is_refused(data):
    i = data.draw(st.integers(0, len(TOKEN) - 1))
    c = data.draw(any_char.filter(lambda c: c != TOKEN[i]))
    refused(TOKEN[:i] + c + TOKEN[i + 1 :])


@given(st.integers(0, len(TOKEN) - 1))
def test_any_one_character_dropped_is_refused(i):
    refused(TOKEN[:i] + TOKEN[i + 1 :])


@given(st.integers(0, len(TOKEN)), any_char)
def test_any_one_character_added_is_refused(i, c):
    assume(not (c.isspace() and i in (0, len(TOKEN))))  # a scanner's trailing newline is fine
    refused(TOKEN[:i] + c + TOKEN[i:])


def test_unused_low_bits_of_the_last_character_are_refused():
    """196 characters carry 143 bytes + 2 spare bits; a decoder that ignores them accepts 4 spellings."""
    body = TOKEN[len(PREFIX) :]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(body[-1])
    for spare in range(1, 4):
        other = PREFIX + body[:-1] + alphabet[last ^ spare]
        assert base64.urlsafe_b64decode(other[len(PREFIX) :] + "=" * (-len(body) % 4)) == (
            base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        )
        assert refused(other).code == "evoucher_malformed"


# ---- each refusal ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello",
        "https://example.com/pay?id=1",
        "6901234567892",
        "医保电子凭证",
        "YBV1",
        "YBV1.",
        "ybv1." + TOKEN[5:],
        "YBV." + TOKEN[5:],
        "YBV1:" + TOKEN[5:],
        "X" * 5000,
        TOKEN + TOKEN,
    ],
)
def test_garbage_and_wrong_prefix_are_malformed(text):
    err = refused(text)
    assert type(err) is VoucherMalformed and err.code == "evoucher_malformed"
    assert "refresh the code in the app" in err.message


def test_not_text_is_malformed():
    assert refused(None).code == "evoucher_malformed"  # type: ignore[arg-type]
    assert refused(TOKEN.encode()).code == "evoucher_malformed"  # type: ignore[arg-type]


def test_other_version_is_its_own_code():
    err = refused("YBV2." + TOKEN[5:])
    assert isinstance(err, VoucherMalformed) and err.code == "evoucher_unsupported_version"
    assert "version 2" in err.message and "update the agent" in err.message


@pytest.mark.parametrize("body", ["a+b/", "abc=", "abcd==", "ab cd", "abcde", "Zm9v\u00e9"])
def test_bad_base64_is_malformed(body):
    assert "base64url" in refused(PREFIX + body).message


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",
        b"\x92",
        b"\x92\x80",
        b"junk bytes",
        msgpack.packb([{"a": 1.5}, b"x" * 64]),
        msgpack.packb({"a": 1}),
        msgpack.packb([claims(), b"s" * 64, 3]),
        msgpack.packb([b"s" * 64, claims()]),
        encode_canonical([[1] * 3, b"s" * 64]),
        encode_canonical([claims(), b"s" * 64]) + b"\x00",
        encode_canonical([[[[[[1]]]]], b"s" * 64]),
    ],
)
def test_malformed_msgpack_or_shape_is_malformed(raw):
    assert refused(PREFIX + b64(raw)).code == "evoucher_malformed"


def test_non_canonical_msgpack_is_malformed():
    good = encode_canonical([claims(), b"s" * 64])
    unsorted = msgpack.packb([dict(reversed(list(claims().items()))), b"s" * 64], use_bin_type=True)
    assert sorted(unsorted) == sorted(good) and unsorted != good
    assert "does not decode" in refused(PREFIX + b64(unsorted)).message


@pytest.mark.parametrize("missing", list("aeiknp"))
def test_missing_field_is_malformed(missing):
    err = refused(signed(claims(**{missing: ...})))
    assert err.code == "evoucher_malformed" and f"'{missing}'" in err.message


@pytest.mark.parametrize("extra", [{"x": 1}, {"psn_no": PSN}, {"v": 2}])
def test_extra_field_is_malformed(extra):
    err = refused(signed(claims(**extra)))
    assert err.code == "evoucher_malformed" and "1 unknown" in err.message


@pytest.mark.parametrize(
    "change",
    [
        {"a": "37021"},
        {"a": 370211},
        {"a": "37021a"},
        {"e": "1795000120"},
        {"e": True},
        {"e": -5},
        {"i": 0},
        {"i": 2**41},
        {"k": ""},
        {"k": "kid with space"},
        {"k": "k" * 33},
        {"n": NONCE[:15]},
        {"n": NONCE.hex()},
        {"p": PSN[:17]},
        {"p": PSN.lower()},
        {"p": "37021119580402123Y"},
        {"p": PSN.encode()},
        {"p": None},
    ],
)
def test_claim_of_wrong_form_is_malformed(change):
    err = refused(signed(claims(**change)))
    assert err.code == "evoucher_malformed" and "bad " in err.message


@pytest.mark.parametrize("lifetime", [0, -1, MAX_LIFETIME_S + 1])
def test_lifetime_out_of_range_is_malformed(lifetime):
    assert "lifetime" in refused(signed(claims(e=NOW + lifetime))).message


def test_signature_of_wrong_size_is_malformed():
    assert "signature" in refused(PREFIX + b64(encode_canonical([claims(), b"s" * 63]))).message


def test_altered_payload_has_a_bad_signature():
    c, sig = msgpack.unpackb(base64.urlsafe_b64decode(TOKEN[5:] + "=="), raw=False)
    for change in ({"p": "110101199001011234"}, {"a": "110000"}, {"e": NOW + 3600}, {"n": b"\x00" * 16}):
        text = PREFIX + b64(encode_canonical([{**c, **change}, sig]))
        err = refused(text)
        assert type(err) is VoucherBadSignature and err.code == "evoucher_bad_signature"
        assert "110101199001011234" not in err.message


def test_another_key_under_a_trusted_kid_is_a_bad_signature():
    forged = issue_voucher(OTHER, KID, PSN, AREA, TTL, now=NOW, nonce=NONCE)
    err = refused(forged)
    assert err.code == "evoucher_bad_signature" and "do not accept it" in err.message
    # one bit of an honest signature flipped
    raw = bytearray(base64.urlsafe_b64decode(TOKEN[5:] + "=="))
    raw[-1] ^= 1
    assert refused(PREFIX + b64(bytes(raw))).code == "evoucher_bad_signature"


def test_unknown_kid():
    text = issue_voucher(KEY, "someone-else", PSN, AREA, TTL, now=NOW, nonce=NONCE)
    err = refused(text)
    assert type(err) is VoucherUnknownIssuer and err.code == "evoucher_unknown_issuer"
    assert "'someone-else'" in err.message and "evoucher_issuers" in err.message


def test_no_trusted_issuers_tells_the_operator():
    err = refused(TOKEN, trusted={})
    assert err.code == "evoucher_unknown_issuer"
    assert "trusts no e-voucher issuer" in err.message and "evoucher_issuers" in err.message


def test_expiry_with_skew():
    assert verify_voucher(TOKEN, TRUSTED, NOW + TTL + 29, 30).nonce == NONCE.hex()
    err = refused(TOKEN, now=NOW + TTL + 30, skew_s=30)
    assert type(err) is VoucherExpired and err.code == "evoucher_expired"
    assert "expired 30 s ago" in err.message and "refresh the code in the app" in err.message
    assert refused(TOKEN, now=NOW + TTL, skew_s=0).code == "evoucher_expired"


def test_issued_in_the_future_with_skew():
    assert verify_voucher(TOKEN, TRUSTED, NOW - 30, 30).kid == KID
    err = refused(TOKEN, now=NOW - 31, skew_s=30)
    assert type(err) is VoucherNotYetValid and err.code == "evoucher_not_yet_valid"
    assert "31 s later" in err.message and "clock" in err.message


def test_signature_is_checked_before_times():
    """A forged voucher is reported as forged even when it is also expired: the worse news first."""
    forged = issue_voucher(OTHER, KID, PSN, AREA, TTL, now=NOW - 10_000, nonce=NONCE)
    assert refused(forged).code == "evoucher_bad_signature"


def test_error_codes_are_stable():
    assert {
        cls.__name__: cls.code
        for cls in (
            VoucherError,
            VoucherMalformed,
            VoucherUnsupportedVersion,
            VoucherBadSignature,
            VoucherUnknownIssuer,
            VoucherExpired,
            VoucherNotYetValid,
            VoucherReplayed,
        )
    } == {
        "VoucherError": "evoucher_invalid",
        "VoucherMalformed": "evoucher_malformed",
        "VoucherUnsupportedVersion": "evoucher_unsupported_version",
        "VoucherBadSignature": "evoucher_bad_signature",
        "VoucherUnknownIssuer": "evoucher_unknown_issuer",
        "VoucherExpired": "evoucher_expired",
        "VoucherNotYetValid": "evoucher_not_yet_valid",
        "VoucherReplayed": "evoucher_replayed",
    }
    assert issubclass(VoucherError, ProtocolError)


# ---- keys and issuing arguments -------------------------------------------------------------------


def test_public_key_text_round_trip():
    text = dump_public_key(pub(KEY))
    assert len(text) == 43 and "=" not in text
    assert dump_public_key(load_public_key(text)) == text
    assert load_issuers({KID: text, "b": dump_public_key(pub(OTHER))}).keys() == {KID, "b"}


@pytest.mark.parametrize(
    "text", ["", "abc", b64(bytes(31)), b64(bytes(33)), b64(bytes(32)) + "=", bytes(32).hex(), None]
)
def test_bad_public_key_text(text):
    with pytest.raises(ValueError, match="base64url"):
        load_public_key(text)


def test_bad_issuer_config_names_the_kid():
    with pytest.raises(ValueError, match="'k1'"):
        load_issuers({"k1": "nope"})
    with pytest.raises(ValueError, match="key id"):
        load_issuers({"bad kid": dump_public_key(pub(KEY))})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kid": ""},
        {"psn_no": "123"},
        {"insuplc_admdvs": "3702"},
        {"ttl_s": 0},
        {"ttl_s": MAX_LIFETIME_S + 1},
        {"ttl_s": 1.5},
        {"nonce": b"short"},
    ],
)
def test_issue_refuses_bad_arguments(kwargs):
    args = {"kid": KID, "psn_no": PSN, "insuplc_admdvs": AREA, "ttl_s": TTL} | kwargs
    with pytest.raises(ValueError) as info:
        issue_voucher(KEY, **args)
    assert PSN not in str(info.value)
