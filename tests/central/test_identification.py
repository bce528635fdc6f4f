"""How a person was identified reaches the centre; an e-voucher is settled at one hospital only."""

from __future__ import annotations

import io
import json

from central.intake.export import export_settlements
from central.intake.ingest import Ingestor
from central.storage.store import Store

from .conftest import HOSPITAL, enrol, settlement

OTHER = "H11010100002"


def _voucher(setl_id: str, nonce: str, hospital: str):
    rec = settlement(setl_id, hospital=hospital)
    rec.mdtrt_cert_type, rec.mdtrt_cert_no = "01", nonce
    return rec


def test_identification_is_stored_with_the_settlement(store: Store) -> None:
    chain = enrol(store)
    card = settlement("S-CARD")
    card.mdtrt_cert_type, card.mdtrt_cert_no, card.psn.card_sn = "03", "A12345678", "3702021234567890"
    chain.append(card)
    chain.append(_voucher("S-QR", "nonce-1", HOSPITAL))
    ack = Ingestor(store).ingest(chain.batch(1, 2))
    assert ack.code == "stored" and not ack.rejected
    rows = store.read(
        lambda c: c.execute(
            "SELECT setl_id, mdtrt_cert_type, mdtrt_cert_no, card_sn FROM settlements ORDER BY setl_id"
        ).fetchall()
    )
    assert rows == [("S-CARD", "03", "A12345678", "3702021234567890"), ("S-QR", "01", "nonce-1", None)]
    out = io.StringIO()
    export_settlements(store, out)
    exported = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["setl_id"], r["mdtrt_cert_type"]) for r in exported] == [("S-CARD", "03"), ("S-QR", "01")]
    assert "A12345678" not in out.getvalue()  # the card number is not exported


def test_a_voucher_used_at_another_hospital_is_refused_and_the_rest_of_the_batch_stored(store: Store) -> None:
    first, second = enrol(store), enrol(store, hospital=OTHER)
    ingestor = Ingestor(store)
    first.append(_voucher("S-A1", "nonce-X", HOSPITAL))
    first.append(_voucher("S-A2", "nonce-X", HOSPITAL))  # same hospital again: allowed
    assert not ingestor.ingest(first.batch(1, 2)).rejected
    second.append(settlement("S-B0", hospital=OTHER))
    second.append(_voucher("S-B1", "nonce-X", OTHER))
    second.append(_voucher("S-B2", "nonce-Y", OTHER))
    ack = ingestor.ingest(second.batch(1, 3))
    assert ack.acked_seq == 3  # the chain is whole: the refused record is held, as rejected
    assert [(r.seq, r.code) for r in ack.rejected] == [(2, "evoucher_replayed")]
    assert HOSPITAL in ack.rejected[0].message and "nonce-X" not in ack.rejected[0].message
    held = store.read(lambda c: [r[0] for r in c.execute("SELECT setl_id FROM settlements ORDER BY setl_id")])
    assert held == ["S-A1", "S-A2", "S-B0", "S-B2"]
    uses = store.read(
        lambda c: c.execute("SELECT nonce, fixmedins_code FROM evoucher_uses ORDER BY nonce").fetchall()
    )
    assert uses == [("nonce-X", HOSPITAL), ("nonce-Y", OTHER)]
    # Delivered again (ack lost): the same answer, nothing new stored.
    again = ingestor.ingest(second.batch(1, 3))
    assert [(r.seq, r.code) for r in again.rejected] == [(2, "evoucher_replayed")]
