"""The national platform's transaction envelope on the agent: ``POST /fsi/api/rsfComIfsService/callService``.

One package, one room: ``envelope`` (the request and answer, ``msgid`` replay, sign-in, ``national.db``),
``fields`` (reading input and the field variants real HIS send), ``person`` (1101), ``outpatient``
(2201-2208), ``inpatient`` (2401-2405, 2301-2305), ``pharmacy`` (2101-2103), ``settling`` (from a held
visit to the one settlement path, shared by the three), ``rules`` (3101/3102), ``reconcile``
(3201/3202) and ``catalogue`` (1301-1319). Only this module knows them all: it assembles the
transaction table and hands it to the envelope, so no module imports the one that registers it.
"""

from __future__ import annotations

from aiohttp import web

from ..card import CardReader
from ..checks import DeskChecks
from ..config import AgentConfig
from ..evoucher import VoucherVerifier
from ..policy_store import PolicyStore
from ..store import Outbox
from .catalogue import CATALOGUE_TRANSACTIONS
from .envelope import NATIONAL_PATH, SIGN_TTL_S, Handler, National
from .fields import NationalError
from .inpatient import INPATIENT_TRANSACTIONS
from .outpatient import OUTPATIENT_TRANSACTIONS
from .person import PERSON_TRANSACTIONS
from .pharmacy import PHARMACY_TRANSACTIONS
from .reconcile import RECONCILE_TRANSACTIONS
from .rules import RULE_TRANSACTIONS

__all__ = ["NATIONAL_PATH", "SIGN_TTL_S", "TRANSACTIONS", "National", "NationalError", "add_national_routes"]

#: infno → (handler, whether its answer is kept for msgid replay); 9001/9002 are the envelope's own.
TRANSACTIONS: dict[str, tuple[Handler, bool]] = {
    **PERSON_TRANSACTIONS,
    **OUTPATIENT_TRANSACTIONS,
    **INPATIENT_TRANSACTIONS,
    **PHARMACY_TRANSACTIONS,
    **RULE_TRANSACTIONS,
    **RECONCILE_TRANSACTIONS,
    **CATALOGUE_TRANSACTIONS,
}


def add_national_routes(
    app: web.Application,
    config: AgentConfig,
    outbox: Outbox,
    *,
    card_reader: CardReader | None = None,
    vouchers: VoucherVerifier | None = None,
    policy: PolicyStore | None = None,
    desk: DeskChecks | None = None,
    sign_ttl_s: float = SIGN_TTL_S,
) -> National:
    """Serve the national envelope on ``app`` (behind its HIS-token middleware); the reader closes with it."""
    national = National(
        config,
        outbox,
        card_reader=card_reader,
        vouchers=vouchers,
        policy=policy,
        desk=desk,
        sign_ttl_s=sign_ttl_s,
        transactions=TRANSACTIONS,
    )
    app.router.add_post(NATIONAL_PATH, national.handle)

    async def close(_app: web.Application) -> None:
        national.close()

    app.on_cleanup.append(close)
    return national
