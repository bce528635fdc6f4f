"""``yibao-sim card`` holds a card in the real pcscd reader until stopped; stopping removes it."""

from __future__ import annotations

import signal
import subprocess
import sys

from agent.card import CardReader


def test_sim_card_inserts_until_sigterm(pcscd, psam):
    psn = "370203199212120027"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulators.cli", "card", "--psn-no", psn, "--port", str(pcscd.card_port)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pcscd.wait_card(0)
        reader = CardReader()
        try:
            ident = reader.identify(wait_s=5)
        finally:
            reader.close()
        assert ident.psn_no == psn and ident.gend == "2"  # 17th digit even: female
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "card removed" in err
    pcscd.wait_card(0, present=False)


def test_sim_card_refuses_a_bad_person_number(pcscd):
    out = subprocess.run(
        [sys.executable, "-m", "simulators.cli", "card", "--psn-no", "12345"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 2 and "18-character" in out.stderr
