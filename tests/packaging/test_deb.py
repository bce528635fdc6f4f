"""The Debian packages and the offline bundle, built by ``packaging/build.py`` and installed for real.

The packages are installed on this machine with ``dpkg -i`` (the tests run as root on a Debian machine,
as CI does), never fetching anything: ``yibao-edge`` makes ``/opt/yibao-edge`` from its own wheelhouse
with ``pip --no-index`` and the ``yibao`` system user through sysusers. Then the installed units pass
``systemd-analyze verify``, their ExecStart commands run a real centre and a real agent enrolled with
it, and purge removes the software but not the data. The offline bundle's ``install.sh --venv`` makes
a working virtualenv with the package index pointed at nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import ssl
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from central.tls import trust_digest
from tests.integration.harness import Proc, free_port, trust

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "packaging"))
import build  # noqa: E402  (packaging/ is scripts, not a package)

PACKAGES = ("yibao-edge", "yibao-agent", "yibao-central")
VENV = Path(build.VENV)
UNIT_DIR = Path("/lib/systemd/system")
HOSPITAL = "H37021100001"


def _sh(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=300, **kwargs)  # type: ignore[call-overload]
    if check and out.returncode != 0:
        tail = f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
        raise AssertionError(f"{' '.join(args)} exited {out.returncode}:\n{tail}")
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if os.geteuid() != 0 or shutil.which("dpkg") is None:
        pytest.fail("the package tests install with dpkg: run them as root on Debian (CI does)")
    return build.build(tmp_path_factory.mktemp("dist"))


def _purge() -> None:
    _sh("dpkg", "--purge", *reversed(PACKAGES), check=False)


@pytest.fixture(scope="module")
def installed(built: dict[str, Path]) -> Iterator[dict[str, Path]]:
    _purge()  # a run that died half-way must not leave the machine with an old install
    try:
        _sh("dpkg", "-i", *(str(built[name]) for name in PACKAGES))
        yield built
    finally:
        _purge()


def _fields(deb: Path) -> dict[str, str]:
    text = _sh("dpkg-deb", "--field", str(deb)).stdout
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def test_package_metadata_and_contents(built: dict[str, Path]) -> None:
    version = build.deb_version(build.project_version())
    common, agent, central = (_fields(built[name]) for name in PACKAGES)
    assert common["Version"] == agent["Version"] == central["Version"] == version
    assert "python3-venv" in common["Depends"]
    assert agent["Depends"].startswith(f"yibao-edge (= {version})") and agent["Recommends"] == "pcscd"
    files = _sh("dpkg-deb", "--contents", str(built["yibao-edge"])).stdout
    assert f".{build.WHEELHOUSE}/yibao_edge-{build.project_version()}-py3-none-any.whl" in files
    assert "./usr/lib/sysusers.d/yibao-edge.conf" in files
    agent_files = _sh("dpkg-deb", "--contents", str(built["yibao-agent"])).stdout
    assert "./lib/systemd/system/yibao-agent.service" in agent_files
    assert "./etc/yibao-edge/agent.env" in agent_files
    conffiles = _sh("dpkg-deb", "--info", str(built["yibao-central"]), "conffiles").stdout
    assert conffiles.split() == ["/etc/yibao-edge/central.env"]
    assert build.deb_version("0.2.0.dev0") == "0.2.0~dev0" and build.deb_version("1.0.0rc1") == "1.0.0~rc1"


def test_installed_units_verify_and_their_commands_serve(installed: dict[str, Path], tmp_path: Path) -> None:
    assert _sh("getent", "passwd", "yibao").stdout.split(":")[6].strip() == "/usr/sbin/nologin"
    for name in ("yibao-agent", "yibao-central"):
        unit = UNIT_DIR / f"{name}.service"
        out = _sh("systemd-analyze", "verify", str(unit), check=False)
        assert out.returncode == 0 and not out.stderr.strip(), out.stderr
        assert Path(f"/etc/yibao-edge/{build.SERVERS[name]['env']}").exists()
    # The installed software is the packaged version, importable from the venv alone.
    version = "import importlib.metadata as m; print(m.version('yibao-edge'))"
    shown = _sh(str(VENV / "bin/python"), "-c", version)
    assert shown.stdout.strip() == build.project_version()

    def exec_start(name: str, listen: str) -> list[str]:
        text = (UNIT_DIR / f"{name}.service").read_text()
        (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
        return shlex.split(line.split("=", 1)[1].replace("${YIBAO_LISTEN}", listen))

    central_home, agent_home = tmp_path / "central", tmp_path / "agent"
    c_listen, a_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    central_bin, agent_bin = str(VENV / "bin/yibao-central"), str(VENV / "bin/yibao-agent")
    admin = central_home.parent / "admin.token"  # the first admin init registers: enrolment is theirs
    _sh(central_bin, "--home", str(central_home), "init", "--admin-token-file", str(admin))
    token = _sh(central_bin, "--home", str(central_home), "--token-file", str(admin), "enroll-token",
                "--hospital", HOSPITAL).stdout  # fmt: skip
    token = token.strip()
    trust(f"https://{c_listen}", ssl.create_default_context(cafile=str(central_home / "tls" / "trust.pem")))
    os.environ["YIBAO_HOME"] = str(central_home)  # the unit's Environment=, which Proc passes on
    try:
        centre = Proc("central", exec_start("yibao-central", c_listen), tmp_path / "central.log",
                      f"https://{c_listen}/v1/health").start()  # fmt: skip
        try:
            _sh(agent_bin, "--home", str(agent_home), "init", "--central", f"https://{c_listen}", "--token",
                token, "--hospital", HOSPITAL, "--ca-hash", trust_digest(central_home / "tls"))  # fmt: skip
            os.environ["YIBAO_HOME"] = str(agent_home)
            agent = Proc("agent", exec_start("yibao-agent", a_listen), tmp_path / "agent.log",
                         f"http://{a_listen}/v1/health").start()  # fmt: skip
            try:
                status = _sh(agent_bin, "--home", str(agent_home), "status")
                assert json.loads(status.stdout)["agent_id"].startswith(HOSPITAL)
            finally:
                agent.stop()
        finally:
            centre.stop()
    finally:
        os.environ.pop("YIBAO_HOME", None)


def test_purge_removes_the_software_and_keeps_the_data(built: dict[str, Path], tmp_path: Path) -> None:
    _purge()
    _sh("dpkg", "-i", *(str(built[name]) for name in PACKAGES))
    data = Path("/var/lib/yibao-agent")
    made = not data.exists()
    data.mkdir(exist_ok=True)
    (data / "keep-me").write_text("the bureau's record")
    try:
        _purge()
        assert not VENV.exists() and not (UNIT_DIR / "yibao-agent.service").exists()
        assert (data / "keep-me").exists()  # data is never the packages' to delete
        assert _sh("getent", "passwd", "yibao", check=False).returncode == 0
    finally:
        (data / "keep-me").unlink()
        if made:
            data.rmdir()


def test_offline_bundle_installs_into_a_fresh_venv_without_an_index(
    built: dict[str, Path], tmp_path: Path
) -> None:
    with tarfile.open(built["offline"]) as tar:
        tar.extractall(tmp_path, filter="data")
    (top,) = tmp_path.iterdir()
    debs = sorted(p.name for p in built.values() if p.suffix == ".deb")
    assert sorted(p.name for p in (top / "debs").iterdir()) == debs
    venv = tmp_path / "venv"
    env = {**os.environ, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_CONFIG_FILE": os.devnull}
    env.pop("PIP_FIND_LINKS", None)
    out = _sh("sh", str(top / "install.sh"), "--venv", str(venv), env=env)
    assert "installed yibao-edge" in out.stdout
    helped = _sh(str(venv / "bin/yibao-central"), "--help")
    assert "reconcile" in helped.stdout
    _sh(str(venv / "bin/python"), "-c", "import agent.service, central.api, protocol.backup, smartcard")
    bad = _sh("sh", str(top / "install.sh"), "nonsense", check=False)
    assert bad.returncode == 2 and "usage" in bad.stderr
