"""Offline sites and the command line: ``policy apply FILE`` with every TUF check, ``policy status``, and
``init`` pinning the root the centre sends at enrolment (and printing its fingerprint)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from agent.cli import main
from agent.config import AgentConfig, load_config, save_config
from protocol.batch import key_fingerprint
from protocol.wire import root_fingerprint
from tests.agent.tufrepo import OTHER_AREA, Repo, card, in_


@pytest.fixture
def home(agent_config: AgentConfig) -> str:
    save_config(agent_config)
    return str(agent_config.home)


def apply(home: str, tar: Path, capsys) -> tuple[int, str, str]:
    code = main(["--home", home, "policy", "apply", str(tar)])
    out = capsys.readouterr()
    return code, out.out, out.err


def status(home: str, capsys) -> dict:
    assert main(["--home", home, "policy", "status"]) == 0
    return json.loads(capsys.readouterr().out)


def test_apply_an_export_then_refuse_forged_stale_and_foreign_ones(repo: Repo, home, tmp_path, capsys):
    repo.blacklist(1, [card("C1"), card("C2")])
    repo.document("rules", 1, {"mode": "enforce"})
    repo.publish()
    first = repo.export(tmp_path / "v2.tar")
    code, out, err = apply(home, first, capsys)
    assert code == 0, err
    assert "applied blacklist seq 1 (full, +2 -0, 2 entries)" in out and "applied rules seq 1 (full)" in out
    st = status(home, capsys)
    assert st["bundles"]["blacklist"]["seq"] == 1 and st["tuf"]["timestamp"] == 2 and st["warning"] is None

    code, out, _ = apply(home, first, capsys)
    assert code == 0 and "blacklist: already current" in out

    # A newer export, tampered on the way: the bundle does not match its signed hash.
    repo.blacklist(2, [card("C9")], base=1)
    repo.publish()
    code, _, err = apply(home, repo.export(tmp_path / "forged.tar", tamper=True), capsys)
    assert code == 1 and "tuf_target_mismatch" in err and "unchanged" in err
    assert status(home, capsys)["bundles"]["blacklist"]["seq"] == 1

    # Only the rules: the blacklist delta is not in the file (not an error).
    code, out, err = apply(home, repo.export(tmp_path / "rules.tar", kinds=["rules"]), capsys)
    assert code == 0, err
    assert "blacklist: not in this file" in out

    code, out, err = apply(home, repo.export(tmp_path / "v3.tar"), capsys)
    assert code == 0 and "applied blacklist seq 2 (delta on seq 1, +1 -0, 3 entries)" in out, err

    # Carried back in time: yesterday's export is a rollback.
    code, _, err = apply(home, first, capsys)
    assert code == 1 and "tuf_rollback" in err

    # Exported too long ago: expired.
    repo.publish(timestamp_expires=in_(seconds=-1))
    code, _, err = apply(home, repo.export(tmp_path / "old.tar"), capsys)
    assert code == 1 and "tuf_expired" in err

    # From a repository whose keys this agent's root does not name.
    foreign = Repo(tmp_path / "foreign")
    foreign.blacklist(9, [card("C1")])
    foreign.publish()
    code, _, err = apply(home, foreign.export(tmp_path / "foreign.tar"), capsys)
    assert code == 1 and "tuf_signature_invalid" in err

    st = status(home, capsys)
    assert st["bundles"]["blacklist"]["seq"] == 2
    assert {p["code"] for p in st["problems"]} >= {"tuf_target_mismatch", "tuf_rollback", "tuf_expired"}
    assert "policy_update_refused" in {a["code"] for a in st["alarms"]}


def test_an_export_for_another_area_is_refused(repo: Repo, home, tmp_path, capsys):
    repo.blacklist(1, [card("C1")], area=OTHER_AREA)
    repo.publish()
    code, _, err = apply(home, repo.export(tmp_path / "other.tar"), capsys)
    assert code == 1 and "bundle_wrong_area" in err and OTHER_AREA not in err.split("holds no bundles")[0]


def test_not_a_tar_and_no_pinned_root_are_said_clearly(repo: Repo, home, tmp_path, capsys, agent_config):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar")
    code, _, err = apply(home, junk, capsys)
    assert code == 1 and "cannot read" in err
    (agent_config.tuf_metadata_dir / "root.json").unlink()
    code, _, err = apply(home, repo.export(tmp_path / "x.tar"), capsys)
    assert code == 1 and "no pinned TUF root" in err


# ---- enrolment pins the root --------------------------------------------------------------------------


class _Enrol(BaseHTTPRequestHandler):
    answer: ClassVar[dict] = {}

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body = dict(self.answer, key_fingerprint=key_fingerprint(bytes.fromhex(request["public_key"])))
        data = json.dumps(body).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def enrol_centre(repo: Repo) -> Iterator[type[_Enrol]]:
    handler = type("Handler", (_Enrol,), {"answer": {}})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_init_pins_the_root_and_prints_its_fingerprint(repo: Repo, enrol_centre, tmp_path, capsys):
    root = repo.root_bytes()
    enrol_centre.answer = {
        "agent_id": "H37021100001-01",
        "fixmedins_code": "H37021100001",
        "protocol_version": 1,
        "tuf_root": root.decode(),
        "root_fingerprint": root_fingerprint(root),
        "pooling_area": "370200",
    }
    home = tmp_path / "new-agent"
    argv = [
        "--home",
        str(home),
        "init",
        "--central",
        enrol_centre.url,
        "--token",
        "t",
        "--hospital",
        "H37021100001",
        "--insecure-dev",  # a stand-in centre on plain HTTP: this test is about the TUF root
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert root_fingerprint(root) in out and "pooling area 370200" in out
    config = load_config(home)
    assert config.pooling_area == "370200"
    assert (config.tuf_metadata_dir / "root.json").read_bytes() == root

    # A root changed on the way (fingerprint mismatch): refused, nothing written.
    enrol_centre.answer = dict(enrol_centre.answer, root_fingerprint="0000 " * 7 + "0000")
    other = tmp_path / "other-agent"
    assert main(["--home", str(other), *argv[2:]]) == 1
    assert "does not match the fingerprint" in capsys.readouterr().err
    assert not other.exists()
    # A root that is not signed by its own threshold: refused.
    doc = json.loads(root)
    doc["signatures"] = doc["signatures"][:1]
    bad = json.dumps(doc).encode()
    enrol_centre.answer = dict(
        enrol_centre.answer, tuf_root=bad.decode(), root_fingerprint=root_fingerprint(bad)
    )
    assert main(["--home", str(other), *argv[2:]]) == 1
    assert "does not verify" in capsys.readouterr().err and not other.exists()
