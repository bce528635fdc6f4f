"""E-voucher verifications per second at the agent, with and without the nonce ledger.

What a scan costs: ``agent.evoucher.VoucherVerifier.verify`` decodes the scanned text, checks
the issuer's Ed25519 signature and the times, and spends the nonce with one INSERT committed
to the ledger (WAL, ``synchronous=FULL``: one fsync per voucher) before answering. That is
the headline. ``protocol.evoucher.verify_voucher`` alone (decode, signature, times; no
ledger) is reported beside it, so the share of the fsync is visible.

Vouchers come from the simulator's issuer (a real key), all distinct, issued before the clock
starts. Each round uses a fresh ledger file in a temporary directory on the same disk as the
system's temporary files. After every round the ledger must hold exactly the round's nonces
and a second scan of a voucher must be refused as a replay; anything else exits non-zero.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import Failed, emit, median, parse_args

from agent.config import AgentConfig
from agent.errors import VoucherRejected
from agent.evoucher import open_verifier
from protocol.evoucher import verify_voucher
from simulators.evoucher import Issuer

PSN = "37021119580402123X"


def ledger_round(home: Path, issuer: Issuer, texts: list[str]) -> float:
    """Verifications per second through ``VoucherVerifier.verify`` into a fresh ledger."""
    home.mkdir()
    config = AgentConfig(home=home, evoucher_issuers=issuer.issuers_config())
    with open_verifier(config) as verifier:
        start = time.perf_counter()
        for text in texts:
            identity = verifier.verify(text)
            if not identity.authenticated:
                raise Failed("a verified voucher came back unauthenticated")
        elapsed = time.perf_counter() - start
        if verifier.ledger.count() != len(texts):
            raise Failed(f"the ledger holds {verifier.ledger.count()} nonces, expected {len(texts)}")
        try:
            verifier.verify(texts[0])
        except VoucherRejected as exc:
            if exc.code != "evoucher_replayed":
                raise Failed(f"a second scan was refused as {exc.code}, not as a replay") from None
        else:
            raise Failed("a second scan of the same voucher was accepted")
    return len(texts) / elapsed


def pure_round(issuer: Issuer, texts: list[str]) -> float:
    """Verifications per second through ``verify_voucher`` alone (no ledger)."""
    trusted = {issuer.kid: issuer.public_key}
    now = time.time()
    start = time.perf_counter()
    for text in texts:
        verify_voucher(text, trusted, now, 30)
    return len(texts) / (time.perf_counter() - start)


def run(args: argparse.Namespace, tmp: Path) -> None:
    issuer = Issuer.load_or_create(tmp / "issuer")
    start = time.perf_counter()
    batches = [[issuer.issue(PSN, ttl_s=3600) for _ in range(args.n)] for _ in range(args.rounds)]
    issue_rate = args.n * args.rounds / (time.perf_counter() - start)
    length = len(batches[0][0])

    ledger = [ledger_round(tmp / f"agent-{r}", issuer, batch) for r, batch in enumerate(batches)]
    pure = [pure_round(issuer, batches[0]) for _ in range(args.rounds)]
    with_ledger, alone = median(ledger), median(pure)

    emit(
        "evoucher_verifications_per_s",
        with_ledger,
        "per_s",
        ratio=with_ledger / alone,
        ratio_to="verify_voucher_alone",
        vouchers=args.n,
        rounds=args.rounds,
        per_round=[round(x) for x in ledger],
        note="VoucherVerifier.verify: decode + Ed25519 + times + ledger INSERT (fsync), one thread",
        verified="ledger holds exactly the round's nonces; a second scan is refused as replayed",
    )
    emit("evoucher_ms_per_verification", 1000 / with_ledger, "ms")
    emit(
        "evoucher_verify_only_per_s",
        alone,
        "per_s",
        per_round=[round(x) for x in pure],
        note="protocol.evoucher.verify_voucher alone, no ledger",
    )
    emit("evoucher_issue_per_s", issue_rate, "per_s", note="simulator issuer, not the measure")
    emit("evoucher_token_chars", length, "count", kid_chars=len(issuer.kid), note="aim < 200 for a small QR")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="vouchers verified per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported")
    args = parse_args(ap, n=100, rounds=1)
    if args.n < 1 or args.rounds < 1:
        ap.error("--n and --rounds must be at least 1")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-evoucher-") as d:
            run(args, Path(d))
    except Failed as exc:
        print(f"evoucher benchmark failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
