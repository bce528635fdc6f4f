"""The policy verbs of yibao-central: the real command end to end, and in-process for the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from central.cli import main
from central.policy.tuf_repo import TufRepository

from .conftest import AREA, set_settings

BIN = Path(sys.executable).parent / "yibao-central"
SAMPLES = Path(__file__).resolve().parents[2] / "docs" / "samples"


def _run(home: Path, *args: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "YIBAO_OPERATOR_TOKEN"}
    if token:
        env["YIBAO_OPERATOR_TOKEN"] = token
    return subprocess.run([str(BIN), "--home", str(home), *args], capture_output=True, text=True, timeout=60,
                          env=env)  # fmt: skip


def _alone(home: Path) -> None:
    """These tests are about the verbs, not maker-checker (tests/central/test_changes.py): one operator."""
    set_settings(home, approvals_required=1)


@pytest.fixture
def policy_op(config, act_as) -> str:
    _alone(config.home)
    return act_as("alice", "policy")


def test_the_command_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init = _run(home, "init", "--area", "370200", "--admin-token-file", str(tmp_path / "admin.token"))
    assert init.returncode == 0, init.stderr
    _alone(home)
    admin = (tmp_path / "admin.token").read_text().strip()
    alice = _run(home, "operators", "add", "alice", "--role", "policy", token=admin).stdout.strip()
    assert init.stdout.startswith("TUF root v1 fingerprint: ") and "operator keys" in init.stderr
    fingerprint = init.stdout.splitlines()[0].split(": ", 1)[1].strip()  # line 2: the TLS trust digest
    shown = _run(home, "root", "show")
    assert shown.returncode == 0 and f"fingerprint {fingerprint}" in shown.stdout
    assert "root      2 of 3" in shown.stdout

    add = _run(home, "blacklist", "add", "--type", "card", "--id", "A37020012345",
               "--reason", "reported lost", "--why", "reported lost", token=alice)  # fmt: skip
    assert add.returncode == 0, add.stderr
    assert add.stdout.strip() == "370200 blacklist seq 1 (full, 1 entry) published as timestamp v2"
    listed = _run(home, "blacklist", "list", "--json")
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["id"] == "A37020012345" and row["reason"] == "reported lost" and row["area"] == "370200"

    imported = _run(home, "blacklist", "import", str(SAMPLES / "blacklist.csv"), "--reason", "weekly list",
                    token=alice)  # fmt: skip
    # the sample holds the same card again (it replaces the entry): 5 entries
    assert imported.returncode == 0 and "seq 2 (full, 5 entries)" in imported.stdout
    for verb in (["policy", "publish"], ["catalogue", "import"], ["rules", "publish"], ["keys", "publish"]):
        out = _run(home, *verb, str(SAMPLES / f"{verb[0]}.json"), token=alice)
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"370200 {verb[0]} seq 1 (full, ")

    removed = _run(home, "blacklist", "remove", "--type", "card", "--id", "A37020012345", "--reason", "found",
                   token=alice)  # fmt: skip
    assert removed.returncode == 0 and "seq 3 (delta on seq 2, 1 entry)" in removed.stdout

    tar_path = tmp_path / "offline.tar"
    export = _run(home, "bundle", "export", "--kind", "blacklist", "--out", str(tar_path), token=alice)
    assert export.returncode == 0, export.stderr
    with tarfile.open(tar_path) as tar:
        names = tar.getnames()
    assert names == export.stdout.split()
    assert [n for n in names if n.startswith("targets/")] == [
        n for n in names if n.startswith("targets/370200/blacklist/")
    ] and len([n for n in names if n.startswith("targets/")]) == 2  # the full and the delta after it

    audit = _run(home, "audit", "--json")
    actions = [json.loads(line) for line in audit.stdout.splitlines()]
    actions = [a for a in actions if not a["action"].startswith(("change.", "operator."))]
    assert [a["action"] for a in actions] == [
        "bundle.export", "blacklist.remove", "keys.publish", "rules.publish", "catalogue.import",
        "policy.publish", "blacklist.import", "blacklist.add",
    ]  # fmt: skip
    assert actions[-1]["operator"] == "alice" and actions[-1]["reason"].endswith(": reported lost")
    assert actions[1]["reason"].endswith(": found") and actions[1]["seq"] == 3


def test_refusals_exit_non_zero_and_change_nothing(config, tmp_path: Path, capsys, policy_op) -> None:
    home = ["--home", str(config.home)]
    assert main([*home, "blacklist", "add", "--type", "card", "--id", "C1", "--reason", "lost"]) == 1
    assert "pass --area AREA" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("list_type,id,reason,source,effective_at\ncard,C1,lost,,\nperson,,dead,,\n")
    assert main([*home, "blacklist", "import", str(bad), "--area", AREA]) == 1
    err = capsys.readouterr().err
    assert "bad.csv is not valid (1 problem); nothing was published" in err and "line 3, column id" in err
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"area": AREA, "benefits": [{"year": 2026}]}))
    assert main([*home, "policy", "publish", str(policy)]) == 1
    err = capsys.readouterr().err
    assert "benefits[0].insutype: is required" in err and "benefits[0].fund_ratio: is required" in err
    assert main([*home, "blacklist", "remove", "--type", "card", "--id", "C1", "--area", AREA]) == 1
    assert "holds no card with that id" in capsys.readouterr().err
    assert main([*home, "bundle", "export", "--kind", "rules", "--out", str(tmp_path / "x.tar")]) == 1
    assert "no rules bundle is published" in capsys.readouterr().err
    stranger = tmp_path / "stranger.pem"
    assert main(["keys", "generate", "--out", str(stranger)]) == 0
    capsys.readouterr()
    assert main([*home, "rules", "publish", str(SAMPLES / "rules.json"), "--key", str(stranger)]) == 1
    assert "targets needs signatures of 1 of its 3 operator keys" in capsys.readouterr().err
    assert main([*home, "audit", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in rows] == ["operator.add"]  # nothing else audited: nothing happened
    assert TufRepository.open(config).versions()["timestamp"] == 1


def test_operator_keys_and_root_rotation(config, tmp_path: Path, capsys, act_as) -> None:
    act_as("carol")
    home = ["--home", str(config.home)]
    new = tmp_path / "new.pem"
    assert main(["keys", "generate", "--out", str(new)]) == 0
    keyid = capsys.readouterr().out.strip()
    assert main(["keys", "generate", "--out", str(new)]) == 1  # never overwrites a key
    assert "already exists" in capsys.readouterr().err
    ops = sorted(config.operators_dir.glob("*.pem"))
    repo = TufRepository.open(config)
    old_id = repo.root_info().keys["root"][0]
    one = [
        *home,
        "root",
        "rotate",
        "--add-key",
        f"{new}.pub",
        "--remove-key",
        old_id[:12],
        "--key",
        str(ops[0]),
    ]
    assert main(one) == 1
    assert "needs 2 signatures of the current root keys (has 1)" in capsys.readouterr().err
    assert repo.root_version() == 1
    rotate = [
        *one,
        "--key",
        str(ops[1]),
        "--key",
        str(ops[2]),
        "--reason",
        "key ceremony",
    ]
    assert main(rotate) == 0
    out = capsys.readouterr().out
    assert out.startswith("root v2 written; fingerprint ") and repo.root_fingerprint() in out
    info = repo.root_info()
    assert keyid in info.keys["root"] and old_id not in info.keys["root"]
    assert main([*home, "root", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["version"] == 2 and shown["published"]["root"] == 2
    assert main([*home, "audit", "--json", "--limit", "1"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["action"] == "root.rotate" and row["operator"] == "carol" and row["reason"] == "key ceremony"
    assert row["detail"]["added"] == [keyid] and row["detail"]["version"] == 2


def test_bundle_sync_and_list(config, capsys, policy_op) -> None:
    home = ["--home", str(config.home)]
    assert main([*home, "bundle", "sync"]) == 0
    assert "nothing to publish" in capsys.readouterr().out
    assert main([*home, "rules", "publish", str(SAMPLES / "rules.json")]) == 0
    capsys.readouterr()
    assert main([*home, "bundle", "list", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["kind"] == "rules" and row["area"] == "370200" and row["seq"] == 1 and row["base_seq"] is None
    assert main([*home, "bundle", "sync", "--force"]) == 0
    assert "published as timestamp v3" in capsys.readouterr().out


@pytest.mark.parametrize("verb", [["blacklist", "list"], ["audit"], ["root", "show"]])
def test_reading_verbs_need_an_initialised_home(tmp_path: Path, capsys, verb: list[str]) -> None:
    assert main(["--home", str(tmp_path / "none"), *verb]) == 1
    assert "init" in capsys.readouterr().err
