"""Identification at the desk: APDUs and time per card identification, and e-voucher scans per second.

The card is read the way a hospital reads one: ``agent.card.CardReader.identify`` through pyscard,
libpcsclite and a real ``pcscd`` (started here, with Debian's vpcd driver), to the virtual card and
PSAM of ``simulators.vcard``. The headline is the number of card APDUs per identification
(identity + internal authentication), aim <= 4, because it is the figure that carries to a real
reader: vpcd adds tens of milliseconds per APDU on this machine (a TCP round trip through pcscd's
polling driver), a USB CCID reader a few milliseconds at 9600-115200 baud. The time per
identification is reported as measured here, and per APDU, so the two can be told apart.

Every identification is checked (the right person, authenticated); a cloned card must be refused.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import Failed, emit, median, parse_args
from evoucher import PSN as VOUCHER_PSN
from evoucher import ledger_round

from agent.card import CardReader
from agent.errors import CardCounterfeit
from simulators.evoucher import Issuer
from simulators.pcscd import Pcscd, PcscdUnavailable
from simulators.vcard import VirtualCard, VirtualPsam, VpcdSlot, card_for

AIM_APDUS = 4
PSN = "370202198001011234"


def card_rounds(pcscd: Pcscd, n: int) -> tuple[list[int], list[int], list[float]]:
    card_apdus, psam_apdus, seconds = [], [], []
    with VpcdSlot(VirtualCard(card_for(PSN)), port=pcscd.card_port) as slot:
        slot.wait_inserted()
        pcscd.wait_card(0)
        reader = CardReader()
        try:
            reader.identify()  # finds and selects the PSAM once, as an agent does at its first read
            for _ in range(n):
                ident = reader.identify()
                if ident.psn_no != PSN or not ident.authenticated:
                    raise Failed("an identification returned the wrong person or no authentication")
                card_apdus.append(reader.stats.card_apdus)
                psam_apdus.append(reader.stats.psam_apdus)
                seconds.append(reader.stats.seconds)
        finally:
            reader.close()
    pcscd.wait_card(0, present=False)
    with VpcdSlot(VirtualCard(card_for(PSN, state="cloned"), state="cloned"), port=pcscd.card_port) as slot:
        slot.wait_inserted()
        pcscd.wait_card(0)
        reader = CardReader()
        try:
            reader.identify()
        except CardCounterfeit:
            pass
        else:
            raise Failed("a cloned card was accepted")
        finally:
            reader.close()
    return card_apdus, psam_apdus, seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30, help="card identifications")
    ap.add_argument("--vouchers", type=int, default=1000, help="e-vouchers per round")
    ap.add_argument("--rounds", type=int, default=3, help="e-voucher rounds; the median is reported")
    args = parse_args(ap, n=2, vouchers=50, rounds=1)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-card-") as d,
            Pcscd(log_path=Path(d) / "pcscd.log") as daemon,
        ):
            with VpcdSlot(VirtualPsam(), port=daemon.psam_port) as psam:
                psam.wait_inserted()
                daemon.wait_card(1)
                card_apdus, psam_apdus, seconds = card_rounds(daemon, args.n)
            issuer = Issuer.load_or_create(Path(d) / "issuer")
            vouchers = [
                ledger_round(
                    Path(d) / f"agent-{r}",
                    issuer,
                    [issuer.issue(VOUCHER_PSN, ttl_s=3600) for _ in range(args.vouchers)],
                )
                for r in range(args.rounds)
            ]
    except PcscdUnavailable as exc:
        print(f"card benchmark cannot run: {exc}", file=sys.stderr)
        return 1
    except Failed as exc:
        print(f"card benchmark failed: {exc}", file=sys.stderr)
        return 1
    apdus = max(card_apdus)
    ms = median(seconds) * 1e3
    emit(
        "card_apdus_per_identification",
        apdus,
        "count",
        ratio=apdus / AIM_APDUS,
        ratio_to=f"aim_{AIM_APDUS}_apdus",
        identifications=args.n,
        note="SELECT SSSE, READ RECORD EF05 (all), READ RECORD EF06 (all), INTERNAL AUTHENTICATE",
    )
    emit("psam_apdus_per_identification", max(psam_apdus), "count", note="VERIFY CARD AUTHENTICATION")
    emit("card_identification_median_ms", ms, "ms", note="through vpcd: a TCP round trip per APDU")
    emit("card_ms_per_apdu", ms / (apdus + max(psam_apdus)), "ms", note="vpcd on this machine")
    emit("card_identification_p90_ms", sorted(seconds)[int(0.9 * (len(seconds) - 1))] * 1e3, "ms")
    emit(
        "evoucher_verifications_per_s",
        median(vouchers),
        "per_s",
        per_round=[round(v) for v in vouchers],
        note="decode + Ed25519 + times + nonce ledger INSERT with fsync; benchmarks/evoucher.py has more",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
