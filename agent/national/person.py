"""National 1101 (person information): who the card in the reader or the scanned e-voucher is, and
what the agent knows of them that the settlement needs (insurance type, employer number).

The employer number (``emp_no``) is on neither the card nor the voucher; the HIS knows it from its
patient record. Sent here or at a visit (2201/2401/2101, extension field), it is kept in ``persons``
and carried into every later settlement of the person, so an employer (unit) blacklist applies to
envelope settlements as it does to REST ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
from typing import Any

from ..identity import CERT_TYPE_EVOUCHER, Identity
from .envelope import Envelope, National, Stored, stored_write
from .fields import Fields, NationalError
from .settling import CERT_TYPES, person_known, remember_person

__all__ = ["PERSON_TRANSACTIONS", "person_info"]


def _age(brdy: str | None) -> int | None:
    if not brdy:
        return None
    born, today = dt.date.fromisoformat(brdy), dt.date.today()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def _blacklist_json(nat: National, identity: Identity, emp_no: str | None) -> dict[str, Any] | None:
    if nat.policy is None:
        return None
    hit = nat.policy.is_blacklisted(card_sn=identity.card_sn, psn_no=identity.psn_no, emp_no=emp_no)
    if hit is None:
        return None
    from ..settle import BLACKLIST_ACTIONS

    return {
        "list_type": hit.list_type,
        "reason": hit.reason,
        "list_version": hit.list_version,
        "action": BLACKLIST_ACTIONS.get(hit.list_type, ""),
    }


async def person_info(nat: National, env: Envelope) -> Stored | dict[str, Any]:
    inp = Fields(env.input, "input")
    d = inp.child("data")
    if d is None:
        inp.check()
    assert d is not None
    cert_type = d.code("mdtrt_cert_type", CERT_TYPES)
    cert_no = d.text(
        "mdtrt_cert_no", max_len=4096, hint="the card number (03) or the scanned e-voucher text (01)"
    )
    card_sn = d.text("card_sn", required=False)
    emp_no = d.text("emp_no", required=False, hint="the employer (unit) number, extension")
    for ignored in ("begntime", "psn_cert_type", "certno", "psn_name"):  # accepted; never stored
        d.text(ignored, required=False, max_len=200)
    inp.check()
    if cert_type == "02":
        raise NationalError(
            [
                (
                    "input.data.mdtrt_cert_type",
                    "02 (resident ID card) needs the platform's person "
                    "register; this agent identifies by 03 social-security card or 01 e-voucher",
                )
            ]
        )
    if cert_type == CERT_TYPE_EVOUCHER:
        if nat.vouchers is None:
            raise NationalError(
                "this agent runs without an e-voucher verifier (no trusted issuer keys); use the "
                "social-security card (mdtrt_cert_type 03) or call IT"
            )
        identity = await asyncio.to_thread(nat.vouchers.verify, cert_no or "")
    else:
        if nat.card_reader is None:
            raise NationalError(
                "no card reader on this agent (started with card reading off): identify the "
                "patient by e-voucher (mdtrt_cert_type 01) or call IT"
            )
        identity = await asyncio.to_thread(nat.card_reader.identify, 0.0)
        if identity.mdtrt_cert_no != cert_no or (card_sn and identity.card_sn != card_sn):
            raise NationalError(
                [
                    (
                        "input.data.mdtrt_cert_no",
                        "the card in the reader is not the card named "
                        "(mdtrt_cert_no / card_sn): insert that card or send the number it shows",
                    )
                ]
            )
    known = person_known(nat, identity.psn_no)
    emp_no = emp_no or known["emp_no"]
    blacklist = _blacklist_json(nat, identity, emp_no)
    output = {
        "baseinfo": {
            "psn_no": identity.psn_no,
            "psn_cert_type": None,
            "certno": None,
            "psn_name": identity.psn_name,
            "gend": identity.gend,
            "brdy": identity.brdy,
            "naty": identity.naty,
            "age": _age(identity.brdy),
            "mdtrt_cert_type": identity.mdtrt_cert_type,
            "mdtrt_cert_no": identity.mdtrt_cert_no,
            "card_sn": identity.card_sn,
            "authenticated": identity.authenticated,
            "expires": identity.expires,
        },
        "insuinfo": [
            {
                "insuplc_admdvs": identity.insuplc_admdvs,
                "insutype": known["insutype"],
                "psn_type": known["psn_type"],
                "emp_no": emp_no,
                "emp_name": None,
                "balc": None,
                "psn_insu_stas": "2" if blacklist else "1",
                "paus_insu_date": None,
            }
        ],
        "idetinfo": [],
        "blacklist": blacklist,
    }

    def remember(conn: sqlite3.Connection) -> None:
        remember_person(
            conn,
            identity.psn_no,
            gend=identity.gend,
            brdy=identity.brdy,
            insuplc_admdvs=identity.insuplc_admdvs,
            card_sn=identity.card_sn,
            emp_no=emp_no,
        )

    if cert_type == CERT_TYPE_EVOUCHER:
        # The voucher's nonce is spent: a retry of this msgid must get this answer (it holds no name).
        def write(conn: sqlite3.Connection) -> dict[str, Any]:
            remember(conn)
            return output

        return await stored_write(nat, env, write)
    await nat.write(remember)  # a card answer (it has the name) is not stored: a retry reads the card again
    return output


PERSON_TRANSACTIONS = {"1101": (person_info, True)}
