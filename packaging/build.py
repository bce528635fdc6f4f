"""Build the Debian packages and the offline install bundle from this checkout.

    .venv/bin/python packaging/build.py --out dist [--wheelhouse DIR]

Why our own ~300 lines and not dh-virtualenv or fpm: the packages are three small trees and four
maintainer scripts; ``dpkg-deb --build`` (always on Debian) makes them, and the one decision that
matters, *how the Python code gets onto a machine with no internet*, is ours either way. The answer
is a wheelhouse: the project's wheel and every dependency's, built once here (``pip wheel``, from the
registry or pip's cache), shipped inside the ``yibao-edge`` package, and installed by its postinst
into ``/opt/yibao-edge`` with ``pip install --no-index``. Nothing is fetched on the target.

What it writes into ``--out``:

- ``yibao-edge_V_ARCH.deb``: the wheelhouse in ``/usr/share/yibao-edge/wheelhouse``, the system user
  (``/usr/lib/sysusers.d/yibao-edge.conf``, applied by postinst with ``systemd-sysusers``, or
  ``useradd`` where systemd is absent), the virtualenv made by postinst, removed at purge.
- ``yibao-agent_V_ARCH.deb`` and ``yibao-central_V_ARCH.deb``: the unit (``/lib/systemd/system``),
  the settings the unit reads (``/etc/yibao-edge/*.env``, conffiles an operator edits and upgrades
  keep), enabled at install but not started (an agent must be enrolled, a centre initialised first).
  Data stays in ``/var/lib/yibao-agent`` and ``/var/lib/yibao-central`` (the units' StateDirectory)
  and is never removed by the packages, not even at purge: it is the bureau's record.
  Logs go to the journal (the servers log to stderr), so there is no log file to rotate.
- ``yibao-edge-offline-V.tar.gz``: the three packages, the wheelhouse and ``install.sh`` (Debian:
  installs the packages with dpkg; elsewhere ``install.sh --venv DIR`` makes a virtualenv from the
  wheelhouse with ``pip --no-index``).

The architecture is the build machine's (``dpkg --print-architecture``): the wheelhouse holds
compiled wheels (cryptography, pyscard, msgspec…), so a package is for the machines like this one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
VENV = "/opt/yibao-edge"
WHEELHOUSE = "/usr/share/yibao-edge/wheelhouse"
MAINTAINER = "Yibao Edge developers <yibao-edge@localhost>"

#: Each server package: its unit, its settings file and what it needs beyond the common package.
SERVERS = {
    "yibao-agent": {
        "description": "Yibao Edge agent: settlement outbox, card reader and uploader beside the HIS",
        "recommends": "pcscd",
        "env": "agent.env",
    },
    "yibao-central": {
        "description": "Yibao Edge central collector: ingest, monitoring and signed policy bundles",
        "recommends": "",
        "env": "central.env",
    },
}


class BuildError(Exception):
    """A step of the build failed; the message says which and what to do."""


def project_version() -> str:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return str(data["project"]["version"])


def deb_version(version: str) -> str:
    """PEP 440 to Debian: a pre-release sorts before its release (``0.2.0.dev0`` → ``0.2.0~dev0``)."""
    for tag in (".dev", "a", "b", "rc"):
        head, sep, tail = version.partition(tag)
        if sep and head and head[-1].isdigit():
            return f"{head}~{tag.lstrip('.')}{tail}"
    return version


def _run(args: list[str], what: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(args[:4])} …):\n{out.stderr[-2000:]}")
    return out


def build_wheelhouse(dest: Path) -> list[Path]:
    """The project's wheel and every runtime dependency's (never the test extras)."""
    dest.mkdir(parents=True, exist_ok=True)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), str(ROOT)],
        "building the wheelhouse (pip wheel; it needs the package registry or pip's cache)",
    )
    wheels = sorted(dest.glob("*.whl"))
    if not any(w.name.startswith("yibao_edge-") for w in wheels):
        raise BuildError(f"pip wheel wrote no yibao_edge wheel into {dest}")
    return wheels


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _control(name: str, version: str, arch: str, depends: str, description: str, **extra: str) -> str:
    fields = {
        "Package": name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": MAINTAINER,
        "Section": "misc",
        "Priority": "optional",
        "Depends": depends,
        **{k: v for k, v in extra.items() if v},
        "Description": description,
    }
    return "".join(f"{k}: {v}\n" for k, v in fields.items())


def _dpkg_build(tree: Path, out: Path) -> Path:
    for path in tree.rglob("*"):  # root-owned files whatever the builder's umask was
        if path.is_dir():
            path.chmod(0o755)
    _run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(out)], f"dpkg-deb for {out.name}")
    return out


COMMON_POSTINST = """#!/bin/sh
# The system user, then the virtualenv from the wheelhouse: nothing is fetched from the network.
set -e
if [ "$1" = configure ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers /usr/lib/sysusers.d/yibao-edge.conf
    elif ! getent passwd yibao >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/yibao --no-create-home \\
            --shell /usr/sbin/nologin --comment "Yibao Edge" yibao
    fi
    rm -rf {venv}.new
    python3 -m venv {venv}.new
    {venv}.new/bin/pip install --quiet --no-index --no-cache-dir --find-links {wheelhouse} \\
        "yibao-edge=={pyversion}"
    # The new tree replaces the old in one rename; the services restart onto it (their postinst).
    rm -rf {venv}.old
    if [ -d {venv} ]; then mv {venv} {venv}.old; fi
    mv {venv}.new {venv}
    # The scripts name the interpreter by the path they were installed under: point them at the final one.
    sed -i "1s|^#!{venv}.new/|#!{venv}/|" {venv}/bin/*
    sed -i "s|{venv}.new|{venv}|g" {venv}/bin/activate* {venv}/pyvenv.cfg
    rm -rf {venv}.old
fi
exit 0
"""

COMMON_POSTRM = """#!/bin/sh
# The software goes at remove; the data in /var/lib/yibao-* and the system user stay, even at purge:
# settlements, keys and audit logs are the bureau's record, removed only by an operator's decision.
set -e
if [ "$1" = remove ] || [ "$1" = purge ]; then
    rm -rf {venv} {venv}.new {venv}.old
fi
exit 0
"""

SERVER_POSTINST = """#!/bin/sh
# Enabled, not started: an agent must be enrolled (yibao-agent init) and a centre initialised
# (yibao-central init) first; an upgrade restarts a running service onto the new code.
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable {name}.service >/dev/null 2>&1 || true
    if systemctl is-active --quiet {name}.service; then systemctl restart {name}.service; fi
fi
exit 0
"""

SERVER_PRERM = """#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl disable --now {name}.service >/dev/null 2>&1 || true
fi
exit 0
"""

SERVER_POSTRM = """#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
exit 0
"""

INSTALL_SH = """#!/bin/sh
# Yibao Edge {version}, offline: nothing here reaches the network.
#   sh install.sh agent|central|both   (root, Debian {arch}: the packages, through dpkg)
#   sh install.sh --venv DIR           (any Linux {arch} with Python 3.11: a virtualenv from the wheelhouse)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
case "${{1:-}}" in
    --venv)
        [ $# -eq 2 ] || {{ echo "usage: sh install.sh --venv DIR" >&2; exit 2; }}
        python3 -m venv "$2"
        "$2/bin/pip" install --no-index --find-links "$here/wheelhouse" "yibao-edge=={pyversion}"
        echo "installed yibao-edge {pyversion} into $2 (commands in $2/bin)"
        ;;
    agent|central|both)
        [ "$(id -u)" -eq 0 ] || {{ echo "install.sh: run as root to install the packages" >&2; exit 1; }}
        command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || {{
            echo "install.sh: python3 with venv is missing: install Debian's python3 and python3-venv" >&2
            exit 1
        }}
        debs="$here/debs/yibao-edge_{debversion}_{arch}.deb"
        [ "$1" = central ] || debs="$debs $here/debs/yibao-agent_{debversion}_{arch}.deb"
        [ "$1" = agent ] || debs="$debs $here/debs/yibao-central_{debversion}_{arch}.deb"
        # shellcheck disable=SC2086
        dpkg -i $debs
        echo "installed; next: enrol the agent (yibao-agent init) or set up the centre (yibao-central init)"
        ;;
    *)
        echo "usage: sh install.sh agent|central|both | --venv DIR" >&2
        exit 2
        ;;
esac
"""


def build_common(work: Path, out: Path, wheels: list[Path], version: str, arch: str) -> Path:
    tree = work / "yibao-edge"
    house = tree / WHEELHOUSE.lstrip("/")
    house.mkdir(parents=True)
    for wheel in wheels:
        shutil.copy2(wheel, house / wheel.name)
        (house / wheel.name).chmod(0o644)
    _write(tree / "usr/lib/sysusers.d/yibao-edge.conf",
           '# The services\' user (systemd-sysusers); its data lives in /var/lib/yibao-*\n'
           'u yibao - "Yibao Edge" /var/lib/yibao /usr/sbin/nologin\n')  # fmt: skip
    _write(tree / "usr/share/doc/yibao-edge/README",
           f"Yibao Edge {version}: {VENV} is made at install from {WHEELHOUSE} (pip --no-index).\n"
           "See packaging/README.md in the source for enrolment, TLS, backup and upgrades.\n")  # fmt: skip
    subs = {"venv": VENV, "wheelhouse": WHEELHOUSE, "pyversion": version}
    _write(tree / "DEBIAN/control", _control(
        "yibao-edge", deb_version(version), arch, "python3 (>= 3.11), python3-venv, passwd",
        "Yibao Edge: medical-insurance settlement and fund monitoring (software and its user)",
    ))  # fmt: skip
    _write(tree / "DEBIAN/postinst", COMMON_POSTINST.format(**subs), 0o755)
    _write(tree / "DEBIAN/postrm", COMMON_POSTRM.format(**subs), 0o755)
    return _dpkg_build(tree, out / f"yibao-edge_{deb_version(version)}_{arch}.deb")


def build_server(name: str, work: Path, out: Path, version: str, arch: str) -> Path:
    spec = SERVERS[name]
    tree = work / name
    unit = PACKAGING / "systemd" / f"{name}.service"
    _write(tree / f"lib/systemd/system/{name}.service", unit.read_text())
    env = PACKAGING / "etc" / spec["env"]
    _write(tree / f"etc/yibao-edge/{spec['env']}", env.read_text())
    _write(tree / "DEBIAN/conffiles", f"/etc/yibao-edge/{spec['env']}\n")
    depends = f"yibao-edge (= {deb_version(version)}), systemd"
    _write(tree / "DEBIAN/control", _control(
        name, deb_version(version), arch, depends, spec["description"], Recommends=spec["recommends"],
    ))  # fmt: skip
    for script, text in (("postinst", SERVER_POSTINST), ("prerm", SERVER_PRERM), ("postrm", SERVER_POSTRM)):
        _write(tree / "DEBIAN" / script, text.format(name=name), 0o755)
    return _dpkg_build(tree, out / f"{name}_{deb_version(version)}_{arch}.deb")


def build_bundle(out: Path, debs: list[Path], wheels: list[Path], version: str, arch: str) -> Path:
    name = f"yibao-edge-offline-{version}"
    bundle = out / f"{name}.tar.gz"
    with tempfile.TemporaryDirectory() as scratch:
        top = Path(scratch) / name
        (top / "debs").mkdir(parents=True)
        (top / "wheelhouse").mkdir()
        for deb in debs:
            shutil.copy2(deb, top / "debs" / deb.name)
        for wheel in wheels:
            shutil.copy2(wheel, top / "wheelhouse" / wheel.name)
        subs = {"version": version, "pyversion": version, "debversion": deb_version(version), "arch": arch}
        _write(top / "install.sh", INSTALL_SH.format(**subs), 0o755)
        with tarfile.open(bundle, "w:gz") as tar:
            tar.add(top, arcname=name)
    return bundle


def build(out: Path, *, wheelhouse: Path | None = None) -> dict[str, Path]:
    """Build everything into ``out``; returns the artefacts by name."""
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} not found: build on Debian (apt-get install dpkg-dev)")
    arch = _run(["dpkg", "--print-architecture"], "dpkg --print-architecture").stdout.strip()
    version = project_version()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="yibao-build-") as scratch:
        work = Path(scratch)
        wheels = build_wheelhouse(wheelhouse or work / "wheelhouse")
        common = build_common(work, out, wheels, version, arch)
        servers = [build_server(name, work, out, version, arch) for name in SERVERS]
        bundle = build_bundle(out, [common, *servers], wheels, version, arch)
    return {"yibao-edge": common, **{p.name.split("_")[0]: p for p in servers}, "offline": bundle}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="dist", help="where the packages and the bundle go (default dist)")
    parser.add_argument("--wheelhouse", help="keep the wheelhouse in DIR (reused by the next build)")
    args = parser.parse_args(argv)
    try:
        built = build(Path(args.out), wheelhouse=Path(args.wheelhouse) if args.wheelhouse else None)
    except BuildError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    for path in built.values():
        print(os.path.relpath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
