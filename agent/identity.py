"""Who is at the desk: the one identity type both the card reader and the e-voucher produce.

The cashier's screen and the settlement need the same facts whichever way the person was
identified, so card and e-voucher both end in an ``Identity``. Name and ID number are personal
data: they are carried to the HIS that asked (it shows them to the cashier) and never logged;
``redacted()`` is what logs and status pages may show.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["CERT_TYPE_CARD", "CERT_TYPE_EVOUCHER", "Identity"]

#: National ``mdtrt_cert_type`` code values: 01 e-voucher, 02 resident ID card, 03 social-security card.
CERT_TYPE_EVOUCHER = "01"
CERT_TYPE_CARD = "03"


class Identity(msgspec.Struct, kw_only=True, omit_defaults=True):
    #: How the person was identified: ``card`` (social-security card) or ``evoucher`` (QR).
    method: Literal["card", "evoucher"]
    #: National ``mdtrt_cert_type`` for this method (``03`` card, ``01`` e-voucher).
    mdtrt_cert_type: str
    #: Person number; for a card holder the social-security number the card carries (18 characters).
    psn_no: str
    #: Six-digit area code of the insured place (``insuplc_admdvs``).
    insuplc_admdvs: str
    #: ``mdtrt_cert_no``: the card number for a card, the voucher's nonce for an e-voucher.
    mdtrt_cert_no: str
    #: Card identification code (tag 01), cards only.
    card_sn: str | None = None
    #: Name (personal data: shown to the cashier, never logged). Cards only.
    psn_name: str | None = None
    #: Sex code (national ``gend``: 1 male, 2 female, 9 unknown). Cards only.
    gend: str | None = None
    #: Birth date ``YYYY-MM-DD``. Cards only.
    brdy: str | None = None
    #: Ethnicity code (``naty``). Cards only.
    naty: str | None = None
    #: Card issue and expiry dates ``YYYY-MM-DD``; voucher issue/expiry as ISO-8601 UTC instants.
    issued: str | None = None
    expires: str | None = None
    #: True once the card proved it holds the issuer-diversified key (internal authentication),
    #: or the voucher's signature verified against a trusted issuer key.
    authenticated: bool = False
    #: For an e-voucher: the issuer key id that signed it.
    issuer_kid: str | None = None

    def redacted(self) -> dict[str, object]:
        """What may be logged: no name, no ID number, no person number."""
        return {
            "method": self.method,
            "insuplc_admdvs": self.insuplc_admdvs,
            "authenticated": self.authenticated,
            "expires": self.expires,
        }
