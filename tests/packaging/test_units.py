"""The systemd units as shipped: systemd's own checker accepts them, and what they start exists.

``systemd-analyze verify`` runs against a scratch root (``--root``) that holds the units, the
distribution's unit library (for ``multi-user.target`` and friends) and, at the path the units
name (``/opt/yibao-edge/bin``), executables standing in for an installed virtualenv's console
scripts, each forwarding to this checkout's venv. A unit with a missing or non-executable
command, a bad section or an unknown key fails here; so does a unit whose command line names a
sub-command or option the program does not have.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = sorted((ROOT / "packaging" / "systemd").glob("*.service"))
VENV_BIN = Path(sys.executable).parent
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

ANALYZE = shutil.which("systemd-analyze")
if ANALYZE is None:  # make test installs it (Makefile SYSDEPS); fail rather than skip when absent
    raise RuntimeError("systemd-analyze not found: apt-get install systemd (make test does this)")


def unit_values(unit: Path, key: str) -> list[str]:
    return [
        line.split("=", 1)[1].strip()
        for line in unit.read_text().splitlines()
        if line.strip().startswith(f"{key}=")
    ]


def scratch_root(tmp: Path, units: list[Path]) -> Path:
    root = tmp / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    for unit in units:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for command in unit_values(unit, "ExecStart"):
            exe = Path(shlex.split(command)[0])
            stand_in = root / exe.relative_to("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text(f'#!/bin/sh\nexec "{VENV_BIN / exe.name}" "$@"\n')
            stand_in.chmod(0o755)
    return root


def verify(root: Path, names: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANALYZE, f"--root={root}", "verify", *(str(root / "etc/systemd/system" / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_are_shipped() -> None:
    assert {u.name for u in UNITS} == {"yibao-agent.service", "yibao-central.service"}


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_systemd_analyze_verify_accepts_unit(unit: Path, tmp_path: Path) -> None:
    root = scratch_root(tmp_path, [unit])
    proc = verify(root, [unit.name])
    # verify exits 0 on warnings such as an unknown key: any output is a finding too
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), proc.stderr


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a missing command and an unknown key are both reported."""
    broken = tmp_path / "yibao-broken.service"
    text = UNITS[0].read_text().replace("ExecStart=", "ExecStart=/nonexistent/bin/yibao ", 1)
    broken.write_text(text.replace("[Service]", "[Service]\nBogusKey=1", 1))
    root = scratch_root(tmp_path, [])
    shutil.copy(broken, root / "etc/systemd/system" / broken.name)
    proc = verify(root, [broken.name])
    assert proc.returncode != 0
    assert "/nonexistent/bin/yibao" in proc.stderr and "BogusKey" in proc.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_exec_start_names_a_real_command_and_options(unit: Path) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    (command,) = unit_values(unit, "ExecStart")
    exe, *args = shlex.split(command)
    assert Path(exe).parent == Path("/opt/yibao-edge/bin"), "the packaging README installs the venv there"
    assert Path(exe).name in scripts, f"{exe} is not one of the project's console scripts"
    sub = args[0]
    helped = subprocess.run(
        [str(VENV_BIN / Path(exe).name), sub, "--help"], capture_output=True, text=True, timeout=60
    )
    assert helped.returncode == 0, helped.stderr
    for option in (a.split("=", 1)[0] for a in args[1:] if a.startswith("--")):
        assert option in helped.stdout, f"{unit.name}: {sub} has no option {option}"


@pytest.mark.parametrize("unit", UNITS, ids=[u.stem for u in UNITS])
def test_unit_runs_as_its_own_user_and_is_hardened(unit: Path) -> None:
    assert unit_values(unit, "User") == ["yibao"]
    for key, value in (("NoNewPrivileges", "true"), ("ProtectSystem", "strict"), ("PrivateTmp", "true")):
        assert unit_values(unit, key) == [value], f"{unit.name}: {key}"
    home = unit_values(unit, "Environment")
    assert any(v.startswith("YIBAO_HOME=/var/lib/") for v in home), home
