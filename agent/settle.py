"""The one settlement path: every settlement the agent makes — a REST body, a drop-folder file, a
national 2207 — is checked and made durable here, so each is refused for the same reasons and
written the same way.

Why its own module: the HIS API (``agent.api``), the drop folder and the national envelope all settle;
had this lived in ``agent.api``, they would import the module that registers them (an import circle,
``tests/test_layering.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from protocol.errors import ProtocolError, ValidationFailed
from protocol.records import Settlement

from .cardlog import log_refused_card
from .checks import DeskChecks, DeskOutcome
from .config import AgentConfig
from .errors import AgentError, Blacklisted, CardReplaced
from .evoucher import VoucherVerifier
from .identity import CERT_TYPE_EVOUCHER
from .intake import account_balance, parse_settlement
from .policy_store import BlacklistHit, CardCorrectionHeld, PolicyStore
from .store import Outbox, Receipt
from .users import Principal

__all__ = [
    "BLACKLIST_ACTIONS",
    "REPLACED_ACTION",
    "blacklisted_error",
    "card_replaced_error",
    "error_answer",
    "refuse_blacklisted",
    "settle_body",
    "settle_record",
]

log = logging.getLogger(__name__)


#: What the cashier does, per list: the HIS shows it as is.
BLACKLIST_ACTIONS = {
    "card": "do not settle with this card: tell the patient the card is blocked and ask them to contact the "
    "social-insurance agency; identify the patient another way (e-voucher) or settle as self-pay",
    "person": "this person's insurance benefits are suspended: settle as self-pay and refer the patient to "
    "the social-insurance agency",
    "employer": "the employer's insurance is suspended: settle as self-pay and refer the patient to their "
    "employer or the social-insurance agency",
    "doctor": "this doctor's medical-insurance service is suspended: the fund cannot pay for this visit; "
    "have another doctor see the patient, or settle as self-pay",
    "hospital": "this hospital's medical-insurance agreement is suspended: settle as self-pay; the "
    "hospital's management must contact the medical-insurance bureau",
}
_LIST_NAMES = {
    "card": "card", "person": "insured person", "employer": "employer", "doctor": "doctor",
    "hospital": "hospital",
}  # fmt: skip


def blacklisted_error(hit: BlacklistHit) -> Blacklisted:
    """The refusal the HIS receives: list, reason, list version and what to do; never the number."""
    action = BLACKLIST_ACTIONS.get(hit.list_type, "")
    return Blacklisted(
        f"refused: this {_LIST_NAMES.get(hit.list_type, hit.list_type)} is on the blacklist (list version "
        f"{hit.list_version}, reason: {hit.reason or 'not given'}); {action}",
        list_type=hit.list_type,
        reason=hit.reason,
        list_version=hit.list_version,
        action=action,
    )


#: What the cashier does with a replaced card (the new card's number follows in the message).
REPLACED_ACTION = (
    "do not settle with this card: it was replaced. Ask the patient for the new social-security card and "
    "read that one; if they do not have it with them, identify them with the e-voucher (QR) or settle as "
    "self-pay, and keep the old card out of use"
)


def card_replaced_error(correction: CardCorrectionHeld) -> CardReplaced:
    """The refusal the HIS receives for a replaced card: the new card to ask for and what to do."""
    return CardReplaced(
        f"refused: this card was replaced by card {correction.new_card_sn} (reason: "
        f"{correction.reason or 'not given'}; cards bundle {correction.seq}); {REPLACED_ACTION}",
        new_card_sn=correction.new_card_sn,
        reason=correction.reason,
        bundle_seq=correction.seq,
        action=REPLACED_ACTION,
    )


def error_answer(exc: AgentError | ProtocolError) -> tuple[int, dict[str, Any]]:
    """HTTP status and body of a refusal: one shape for the API and the drop folder's error files."""
    if isinstance(exc, AgentError):
        return exc.http_status, exc.to_wire()
    return exc.http_status, {"error": exc.to_wire()}


def refuse_blacklisted(policy: PolicyStore | None, record: Settlement) -> None:
    """The one blacklist check before a settlement is written (API, drop folder, national envelope),
    with the card check of the ``cards`` bundle: a card the card office replaced is refused
    (``card_replaced``) whatever the blacklist says.

    A doctor who overrides is checked like the visit's doctor: a suspended doctor's decision is not
    honoured either.
    """
    if policy is None:
        return
    psn = record.psn
    correction = policy.card_correction(psn.card_sn)
    if correction is not None and correction.replaced:
        # Before the blacklist: the old card of a replacement is usually blacklisted too, and the cashier
        # needs to hear "ask for the new card", not only "blocked".
        log.info("settlement refused: card replaced (cards bundle %s)", correction.seq)
        raise card_replaced_error(correction)
    hit = policy.is_blacklisted(
        card_sn=psn.card_sn,
        psn_no=psn.psn_no,
        emp_no=psn.emp_no,
        dr_codg=record.mdtrt.dr_codg,
        fixmedins_code=record.fixmedins_code,
    )
    for dr_codg in sorted({o.dr_codg for o in record.overrides} - {record.mdtrt.dr_codg}):
        hit = hit or policy.is_blacklisted(card_sn=None, dr_codg=dr_codg)
    if hit is not None:
        log.info("settlement refused: %s blacklisted (list version %s)", hit.list_type, hit.list_version)
        raise blacklisted_error(hit)


async def settle_record(
    record: Settlement,
    digest: bytes,
    outbox: Outbox,
    *,
    policy: PolicyStore | None,
    desk: DeskChecks | None,
    acct_balance: int | None,
    before_append: Callable[[Settlement], None] | None = None,
) -> tuple[Receipt, DeskOutcome | None]:
    """Check and durably append one parsed settlement: the blacklist, the in-event rules and the split
    (``desk``), then the outbox. The REST body, the drop folder and the national 2207 all end here.

    A retry of a settlement the agent already holds gets its first answer with no checks again. A
    refusal for the card itself is chained as the card's event first (``cardlog.log_refused_card``).
    ``before_append`` may refuse the checked record (the national envelope needs a computed split).
    """
    outcome = None
    if not outbox.has_settlement(record.his_setl_no):
        try:
            refuse_blacklisted(policy, record)
        except (Blacklisted, CardReplaced) as refused:
            await log_refused_card(outbox, record, refused)
            raise
        if desk is not None:
            outcome = await desk.settle(record, acct_balance=acct_balance)
        if before_append is not None:
            before_append(record)
    return await outbox.append_settlement(record, digest), outcome


async def settle_body(
    body: bytes,
    config: AgentConfig,
    outbox: Outbox,
    *,
    vouchers: VoucherVerifier | None = None,
    policy: PolicyStore | None = None,
    desk: DeskChecks | None = None,
    caller: Principal | None = None,
) -> tuple[int, dict[str, Any]]:
    """Settle one HIS settlement body: (201 or 200 for a held ``his_setl_no``, the answer), or raise.

    The one settlement path: ``POST /v1/settlements`` and the drop folder both call it, so a file
    is checked, refused and made durable exactly as a request is. Raises ``AgentError`` /
    ``ProtocolError`` (see ``error_answer``) with nothing written. ``caller`` is who signed in; None
    (a drop-folder file) is no one, so such a body may carry no overrides.
    """
    record, digest = parse_settlement(body, fixmedins_code=config.fixmedins_code or None, caller=caller)
    if record.mdtrt_cert_type == CERT_TYPE_EVOUCHER and not (
        vouchers is not None and vouchers.ledger.seen(record.mdtrt_cert_no or "")
    ):
        raise ValidationFailed(
            "settlement does not validate; correct the listed fields",
            details=[
                {
                    "field": "mdtrt_cert_no",
                    "message": "this agent has not accepted an e-voucher with this nonce: scan the "
                    "patient's code first (POST /v1/evoucher) and send the mdtrt_cert_no it returns",
                }
            ],
        )
    receipt, outcome = await settle_record(
        record, digest, outbox, policy=policy, desk=desk, acct_balance=account_balance(body)
    )
    answer = receipt.to_json()
    if outcome is not None and not receipt.duplicate:
        answer["checks"] = outcome.to_json()
    return (200 if receipt.duplicate else 201), answer
