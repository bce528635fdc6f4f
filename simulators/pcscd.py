"""Start a real ``pcscd`` with the vpcd driver, for the demo and the tests.

``pcscd`` is the PC/SC service every Linux card reader goes through; the agent talks to it
exactly as in a hospital. Here it runs in the foreground as our child, with a reader
configuration of our own (two vpcd slots: the patient's card and the PSAM), and stops with
us. pcsc-lite 1.9 has one fixed socket (``/run/pcscd/pcscd.comm``), so only one ``pcscd``
can run on a machine: if another is already running we say so instead of fighting it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["DRIVER", "READER_NAME", "Pcscd", "PcscdUnavailable"]

DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
PCSCD = "pcscd"
READER_NAME = "Yibao Virtual Reader"
SOCKET = Path("/run/pcscd/pcscd.comm")
#: Held (``flock``) while one of ours runs: a second ``Pcscd`` on the machine (a test in another process of
#: a parallel run, the demo) waits for it instead of failing on the one socket.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "yibao-pcscd-machine.lock"
LOCK_WAIT_S = 900.0
DEFAULT_PORT = 35963
# Where to look when vpcd's default pair is taken. Below the kernel's ephemeral range
# (32768-60999 on Debian), so no client connection or ``bind(0)`` server takes it meanwhile.
FALLBACK_PORTS = range(24000, 32000, 2)


class PcscdUnavailable(RuntimeError):
    """pcscd or the vpcd driver is missing, or another pcscd holds the socket."""


def _running_pcscd() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "pcscd":
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def _bindable(port: int) -> bool:
    """Whether vpcd could listen on ``port`` (it binds every address, as this does)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def _free_pair() -> int:
    for port in (DEFAULT_PORT, *FALLBACK_PORTS):
        if _bindable(port) and _bindable(port + 1):
            return port
    raise PcscdUnavailable(
        f"no free pair of ports for vpcd (tried {DEFAULT_PORT} and "
        f"{FALLBACK_PORTS.start}-{FALLBACK_PORTS.stop})"
    )


class Pcscd:
    """``with Pcscd() as p:`` — readers ``p.readers`` exist inside the block.

    vpcd makes two slots from one configuration line: the first listens on ``p.card_port``
    (the patient's card), the second on ``p.psam_port``. Without ``port`` it takes vpcd's
    default pair (35963/35964) when both are free, and another free pair when not: the default
    lies in the ephemeral range, where any server bound to port 0 may hold it, and vpcd then
    fails to listen without a word to its clients.
    """

    def __init__(self, port: int | None = None, *, log_path: Path | None = None) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._log: BinaryIO | None = None
        self.readers = (f"{READER_NAME} 00 00", f"{READER_NAME} 00 01")
        self._lock: BinaryIO | None = None

    def _take_machine(self, timeout: float) -> None:
        import fcntl

        if self._lock is not None:
            return
        lock = open(MACHINE_LOCK, "ab")
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = lock
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise PcscdUnavailable(
                        f"another of our pcscd runs has held the machine for {timeout:.0f} s "
                        f"({MACHINE_LOCK}); wait for it to end, or stop it"
                    ) from None
                time.sleep(0.2)

    def _release_machine(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    @property
    def card_port(self) -> int:
        """The vpcd port a virtual card connects to (known once started)."""
        if self.port is None:
            raise PcscdUnavailable("pcscd is not started: no vpcd port chosen yet")
        return self.port

    @property
    def psam_port(self) -> int:
        return self.card_port + 1

    def start(self, timeout: float = 30.0) -> Pcscd:
        self._take_machine(timeout=LOCK_WAIT_S)
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> Pcscd:
        exe = shutil.which(PCSCD) or ("/usr/sbin/pcscd" if Path("/usr/sbin/pcscd").exists() else None)
        if exe is None or not DRIVER.exists():
            raise PcscdUnavailable(
                "pcscd and the vpcd driver are needed: apt-get install pcscd vsmartcard-vpcd "
                "(make test and make demo do this)"
            )
        others = _running_pcscd()
        if others:
            raise PcscdUnavailable(
                f"another pcscd is running (pid {', '.join(map(str, others))}); only one can run on a "
                "machine: stop it (systemctl stop pcscd.socket pcscd, or kill it) and try again"
            )
        if self.port is None:
            self.port = _free_pair()
        elif not (_bindable(self.port) and _bindable(self.port + 1)):
            raise PcscdUnavailable(
                f"vpcd's ports {self.port} and {self.port + 1} are not both free: "
                "stop what listens there (ss -ltnp) or start pcscd on another port"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="yibao-pcscd-")
        conf = Path(self._dir.name) / "reader.conf.d"
        conf.mkdir()
        (conf / "yibao-vpcd").write_text(
            f'FRIENDLYNAME "{READER_NAME}"\n'
            f"DEVICENAME   /dev/null:0x{self.port:04X}\n"
            f"LIBPATH      {DRIVER}\n"
            f"CHANNELID    0x{self.port:04X}\n"
        )
        SOCKET.parent.mkdir(parents=True, exist_ok=True)
        # A socket left by a pcscd that was killed makes the new one refuse to start.
        for stale in (SOCKET, SOCKET.parent / "pcscd.pid"):
            stale.unlink(missing_ok=True)
        self._log = open(self.log_path, "ab") if self.log_path else None
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [exe, "--foreground", "--config", str(conf), "--info"],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PcscdUnavailable(f"pcscd exited at start with status {self.proc.returncode}")
            if SOCKET.exists() and self._listening():
                return self
            time.sleep(0.05)
        listed = self._readers_listed()
        self.stop()
        log = ""
        if self.log_path is not None and self.log_path.exists():
            tail = self.log_path.read_text(errors="replace").splitlines()[-8:]
            log = "; pcscd's last log lines: " + " | ".join(tail)
        raise PcscdUnavailable(
            f"pcscd did not come up within {timeout:.0f} s with readers {', '.join(self.readers)} "
            f"(vpcd ports {self.card_port}/{self.psam_port}; pcscd lists {listed or 'none'}){log}"
        )

    def _listening(self) -> bool:
        readers = self._readers_listed()
        return all(r in readers for r in self.readers)

    def _readers_listed(self) -> list[str]:
        from smartcard import scard

        hresult, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        if hresult != scard.SCARD_S_SUCCESS:
            return []
        try:
            hresult, readers = scard.SCardListReaders(ctx, [])
            return list(readers) if hresult == scard.SCARD_S_SUCCESS else []
        finally:
            scard.SCardReleaseContext(ctx)

    def wait_card(self, slot: int = 0, *, present: bool = True, timeout: float = 10.0) -> None:
        """Block until pcscd reports a card in (or gone from) reader ``slot``.

        pcscd polls vpcd about twice a second, so a card whose TCP connection is open is not yet
        a card to PC/SC clients; anything that reads right after inserting must wait for this.
        """
        from smartcard import scard

        reader = self.readers[slot]
        _, ctx = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                _, states = scard.SCardGetStatusChange(ctx, 0, [(reader, scard.SCARD_STATE_UNAWARE)])
                if bool(states[0][1] & scard.SCARD_STATE_PRESENT) == present:
                    return
                time.sleep(0.05)
        finally:
            scard.SCardReleaseContext(ctx)
        raise PcscdUnavailable(f"{reader}: the card {'never arrived' if present else 'never left'}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        self._release_machine()

    def __enter__(self) -> Pcscd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
