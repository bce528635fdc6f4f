"""Cashiers' and doctors' own tokens: ``yibao-agent users`` on a real users.db, as an administrator would."""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import TokenDisabled, Unauthorized, UserInvalid
from agent.users import TOKEN_PREFIX, UserStore


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "agent.json").write_text("{}")
    return tmp_path


def _cli(home: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), "users", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _listed(home: Path, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    code, out, _ = _cli(home, capsys, "list", "--json")
    assert code == 0
    return json.loads(out)


def test_add_list_disable_rotate_through_the_cli(home, capsys):
    code, token, err = _cli(
        home, capsys, "add", "--name", "dr.wang", "--role", "doctor", "--dr-codg", "D0001"
    )
    token = token.strip()
    assert code == 0 and token.startswith(TOKEN_PREFIX) and len(token) > 40
    assert "shown only now" in err and "D0001" in err
    code, cashier, _ = _cli(home, capsys, "add", "--name", "li.na", "--role", "cashier")
    assert code == 0
    with UserStore(home / "users.db") as store:
        assert store.authenticate(token).dr_codg == "D0001"
        assert store.authenticate(cashier.strip()).role == "cashier"

    users = {u["name"]: u for u in _listed(home, capsys)}
    assert users["dr.wang"] | {"created_at": 0} == {
        "name": "dr.wang", "role": "doctor", "dr_codg": "D0001", "dept_codg": None, "created_at": 0,
        "rotated_at": None, "disabled_at": None, "enabled": True,
    }  # fmt: skip
    code, table, _ = _cli(home, capsys, "list")
    assert code == 0 and "dr.wang" in table and "D0001" in table and token not in table

    code, rotated, _ = _cli(home, capsys, "rotate", "--name", "dr.wang")
    rotated = rotated.strip()
    assert code == 0 and rotated.startswith(TOKEN_PREFIX) and rotated != token
    code, out, _ = _cli(home, capsys, "disable", "--name", "li.na")
    assert code == 0 and "disabled" in out
    with UserStore(home / "users.db") as store:
        with pytest.raises(Unauthorized) as replaced:
            store.authenticate(token)  # the old token stopped at the rotation
        assert replaced.value.code == "unauthorized"
        assert store.authenticate(rotated).name == "dr.wang"
        with pytest.raises(TokenDisabled):
            store.authenticate(cashier.strip())
    users = {u["name"]: u for u in _listed(home, capsys)}
    assert users["dr.wang"]["rotated_at"] and users["li.na"]["enabled"] is False


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--name", "dr.x", "--role", "doctor"), "needs their national doctor code"),
        (("--name", "li.x", "--role", "cashier", "--dr-codg", "D9"), "only a doctor has a doctor code"),
        (("--name", "has space", "--role", "cashier"), "name:"),
        (("--name", "dr.y", "--role", "doctor", "--dr-codg", "D 1"), "dr_codg:"),
        (("--name", "dr.wang", "--role", "cashier"), "already a user dr.wang"),
        (
            ("--name", "dr.zhao", "--role", "doctor", "--dr-codg", "D0001"),
            "belongs to the enabled user dr.wang",
        ),
    ],
)
def test_bad_input_is_a_clear_error_and_changes_nothing(home, capsys, args, says):
    assert _cli(home, capsys, "add", "--name", "dr.wang", "--role", "doctor", "--dr-codg", "D0001")[0] == 0
    before = _listed(home, capsys)
    code, out, err = _cli(home, capsys, "add", *args)
    assert code == 1 and out == "" and says in err
    assert _listed(home, capsys) == before


def test_a_disabled_or_unknown_user_cannot_be_rotated_and_a_disabled_doctors_code_is_free_again(home, capsys):
    with UserStore(home / "users.db") as store:
        store.add("dr.wang", "doctor", dr_codg="D0001")
        store.disable("dr.wang")
        with pytest.raises(UserInvalid, match="disabled"):
            store.rotate("dr.wang")
        with pytest.raises(UserInvalid, match="no user nobody"):
            store.disable("nobody")
        store.add("dr.wang2", "doctor", dr_codg="D0001")  # the doctor's new account
    code, _out, err = _cli(home, capsys, "rotate", "--name", "nobody")
    assert code == 1 and "users list" in err


def test_only_the_tokens_hash_is_stored_and_the_file_is_the_owners(home):
    with UserStore(home / "users.db") as store:
        token = store.add("li.na", "cashier")
    assert stat.S_IMODE((home / "users.db").stat().st_mode) == 0o600
    with sqlite3.connect(home / "users.db") as db:
        (stored,) = db.execute("SELECT token_sha256 FROM users").fetchone()
        assert db.execute("PRAGMA user_version").fetchone()[0] == 1
    assert len(stored) == 32 and token.encode() not in stored
    for path in home.glob("users.db*"):  # the WAL too
        assert token.encode() not in path.read_bytes()


def test_the_installed_command_prints_the_token_alone_on_stdout_and_never_lists_it(home):
    """``yibao-agent users`` as an administrator runs it: a real process, the token captured from stdout."""
    exe = Path(sys.executable).parent / "yibao-agent"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), "--home", str(home), "users", *args], capture_output=True, text=True, timeout=60
        )

    added = run("add", "--name", "dr.wang", "--role", "doctor", "--dr-codg", "D0001")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert added.stdout == token + "\n" and token.startswith(TOKEN_PREFIX)
    assert "shown only now" in added.stderr and token not in added.stderr
    listed = run("list", "--json")
    assert listed.returncode == 0 and token not in listed.stdout + listed.stderr
    assert [u["name"] for u in json.loads(listed.stdout)] == ["dr.wang"]
    rotated = run("rotate", "--name", "dr.wang")
    assert rotated.returncode == 0 and rotated.stdout.strip() != token
    refused = run("add", "--name", "li.na", "--role", "cashier", "--dr-codg", "D2")
    assert refused.returncode == 1 and refused.stdout == "" and "only a doctor" in refused.stderr
    assert run("disable", "--name", "dr.wang").returncode == 0
    with UserStore(home / "users.db") as store:
        for old in (token, rotated.stdout.strip()):
            with pytest.raises(Unauthorized):
                store.authenticate(old)
        assert [u.name for u in store.users()] == ["dr.wang"]
