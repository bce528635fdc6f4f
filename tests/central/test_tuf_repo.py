"""The centre's TUF repository, checked by the real client (``tuf.ngclient``) over real HTTP."""

from __future__ import annotations

import dataclasses
import http.client
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import Updater

from central.cli import init_home, operator_signers
from central.config import CentralConfig
from central.errors import DocumentInvalid, InternalError, RootRotationRefused, SigningRefused
from central.policy.tuf_repo import TufRepository, generate_key_file, load_public_key, load_signer
from protocol.bundles import iter_blacklist, read_document
from protocol.wire import root_fingerprint

from .conftest import ACTOR, AREA, Server, start_server, tuf_client


def _fresh(tmp_path: Path, **kwargs: object) -> CentralConfig:
    cfg = CentralConfig(home=tmp_path / "c2", listen="127.0.0.1:0", insecure_dev=True, **kwargs)  # type: ignore[arg-type]
    init_home(cfg, area=AREA)
    return cfg


def test_init_makes_a_2_of_3_operator_root_and_online_keys(
    config: CentralConfig, repo: TufRepository
) -> None:
    info = repo.root_info()
    assert info.version == 1 and info.thresholds == {"root": 2, "targets": 1, "snapshot": 1, "timestamp": 1}
    assert len(info.keys["root"]) == 3 and info.keys["targets"] == info.keys["root"]
    assert not set(info.keys["snapshot"]) & set(info.keys["root"])
    assert info.fingerprint == root_fingerprint((repo.metadata_dir / "1.root.json").read_bytes())
    assert repo.versions() == {"root": 1, "timestamp": 1, "snapshot": 1, "targets": 1}
    for keyid in (*info.keys["snapshot"], *info.keys["timestamp"]):
        assert stat.S_IMODE((config.keys_dir / f"{keyid}.pem").stat().st_mode) == 0o600
    operators = sorted(config.operators_dir.glob("*.pem"))
    assert len(operators) == 3 and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in operators)
    assert Metadata[Root].from_bytes(repo.current_root_bytes()).signed.consistent_snapshot
    # init again changes nothing
    init_home(config)
    assert repo.root_fingerprint() == info.fingerprint and repo.versions()["timestamp"] == 1


def test_a_published_bundle_verifies_with_the_real_client(server: Server, policy, signers, tmp_path) -> None:
    published = policy.blacklist_add(
        ACTOR, signers, list_type="card", entry_id="C0001", reason="lost", area=AREA, source="hotline"
    )
    assert published.full and published.seq == 1 and published.timestamp_version == 2
    client = tuf_client(server.url, policy.repo.root_md(1).to_bytes(), tmp_path / "client")
    client.refresh()
    info = client.get_targetinfo(published.target)
    assert info is not None
    assert info.custom == {
        "kind": "blacklist", "area": AREA, "seq": 1, "base_seq": None,
        "created": info.custom["created"], "format": 1,
    }  # fmt: skip
    path = client.download_target(info)
    with open(path, "rb") as f:
        header, entries = iter_blacklist(f)
        assert header.seq == 1 and [(e.op, e.list_type, e.id, e.reason, e.source) for e in entries] == [
            ("+", "card", "C0001", "lost", "hotline")
        ]
    # consistent snapshots: versioned metadata and hash-prefixed target files
    names = {p.name for p in policy.repo.metadata_dir.iterdir()}
    assert {"2.targets.json", "2.snapshot.json", "timestamp.json"} <= names
    prefixed = info.get_prefixed_paths()[0]
    assert (
        prefixed.startswith(f"{AREA}/blacklist/{info.hashes['sha256']}.")
        and (policy.repo.targets_dir / prefixed).is_file()
    )


def test_targets_need_an_operator_key(policy, config, tmp_path) -> None:
    stranger = generate_key_file(tmp_path / "stranger.pem")
    assert stranger.keyid not in policy.repo.root_info().keys["targets"]
    with pytest.raises(SigningRefused, match="targets needs signatures of 1"):
        policy.blacklist_add(
            ACTOR,
            [load_signer(tmp_path / "stranger.pem")],
            list_type="card",
            entry_id="X1",
            reason="r",
            area=AREA,
        )
    assert policy.bundles() == [] and policy.audit_log() == [] and policy.repo.versions()["targets"] == 1


def test_superseded_targets_leave_the_metadata_and_later_the_disk(policy, signers, config) -> None:
    doc = {
        "area": AREA,
        "format": 1,
        "rules": [
            {
                "id": "blacklist",
                "version": 1,
                "template": "blacklisted",
                "severity": "block",
                "mode": "enforce",
                "action": "refuse",
            }
        ],
    }
    first = policy.publish_document(ACTOR, signers, "rules", doc)
    first_file = (
        policy.repo.targets_dir
        / policy.repo.targets_md().signed.targets[first.target].get_prefixed_paths()[0]
    )
    second = policy.publish_document(
        ACTOR,
        signers,
        "rules",
        {
            **doc,
            "rules": [
                {
                    "id": "b",
                    "version": 1,
                    "template": "blacklisted",
                    "severity": "block",
                    "mode": "off",
                    "action": "refuse",
                }
            ],
        },
    )
    listed = policy.repo.targets_md().signed.targets
    assert second.target in listed and first.target not in listed
    assert first_file.exists()  # clients part-way through an update may still fetch it
    for i in range(config.keep_versions):
        policy.publish_document(
            ACTOR, signers, "rules", {**doc, "rules": [{**doc["rules"][0], "id": f"r{i}", "mode": "shadow"}]}
        )
    assert not first_file.exists()
    md_names = sorted(p.name for p in policy.repo.metadata_dir.glob("*.targets.json"))
    assert len(md_names) == config.keep_versions


def test_a_publish_killed_after_the_commit_is_completed_by_the_next(
    policy, signers, monkeypatch, server, tmp_path
):
    before = policy.repo.versions()

    def killed(*args: object, **kwargs: object) -> None:
        raise OSError("killed")

    monkeypatch.setattr(TufRepository, "set_targets", killed)
    with pytest.raises(InternalError, match="bundle sync"):
        policy.blacklist_add(ACTOR, signers, list_type="person", entry_id="P1", reason="deceased", area=AREA)
    monkeypatch.undo()
    assert policy.repo.versions() == before
    assert policy.pending() == [f"{AREA}/blacklist/000000000001.full.bin"]
    # the next operator action publishes both: the interrupted bundle and its own
    second = policy.publish_document(ACTOR, signers, "rules", {"area": AREA, "format": 1, "rules": []})
    assert policy.pending() == []
    client = tuf_client(server.url, policy.repo.root_md(1).to_bytes(), tmp_path / "c")
    client.refresh()
    assert client.get_targetinfo(f"{AREA}/blacklist/000000000001.full.bin") is not None
    assert client.get_targetinfo(second.target) is not None


def test_a_publish_killed_before_the_timestamp_leaves_the_old_state_whole(
    policy, signers, monkeypatch, server, tmp_path
) -> None:
    client_dir = tmp_path / "c"
    root = policy.repo.root_md(1).to_bytes()
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C1", reason="lost", area=AREA)
    before = policy.repo.versions()
    real = TufRepository._publish_online
    monkeypatch.setattr(
        TufRepository, "_publish_online", lambda *a, **k: (_ for _ in ()).throw(OSError("kill"))
    )
    with pytest.raises(InternalError):
        policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C2", reason="lost", area=AREA)
    assert (
        policy.repo.metadata_dir / f"{before['targets'] + 1}.targets.json"
    ).exists()  # written, unreferenced
    assert policy.repo.versions() == before
    client = tuf_client(server.url, root, client_dir)
    client.refresh()  # the published state is whole
    assert client.get_targetinfo(f"{AREA}/blacklist/000000000002.full.bin") is None
    monkeypatch.setattr(TufRepository, "_publish_online", real)
    assert policy.sync(signers) == before["timestamp"] + 1
    client = tuf_client(server.url, root, client_dir)
    client.refresh()
    assert client.get_targetinfo(f"{AREA}/blacklist/000000000002.full.bin") is not None  # 2 entries: a full


def test_online_roles_are_resigned_before_they_expire(tmp_path) -> None:
    cfg = _fresh(tmp_path, timestamp_expiry_s=100, snapshot_expiry_s=1000)
    repo = TufRepository.open(cfg)
    t0 = datetime.now(UTC)
    assert repo.resign_online() is None  # fresh
    assert repo.resign_online(now=t0 + timedelta(seconds=52)) == 2  # timestamp past half its life
    assert repo.versions() == {"root": 1, "timestamp": 2, "snapshot": 1, "targets": 1}
    assert repo.resign_online(now=t0 + timedelta(seconds=40)) is None  # the new one is fresh
    repo.resign_online(now=t0 + timedelta(seconds=502))
    assert repo.versions() == {"root": 1, "timestamp": 3, "snapshot": 2, "targets": 1}  # both renewed
    assert repo.timestamp_md().signed.expires > t0 + timedelta(seconds=99)


def test_the_server_resigns_and_wakes_long_polls(tmp_path) -> None:
    cfg = _fresh(tmp_path, timestamp_expiry_s=2, snapshot_expiry_s=60)
    srv, stop = start_server(cfg)
    try:
        started = time.monotonic()
        reply = srv.request("GET", "/v1/policy/changes?have=1&wait=10")
        assert reply.json() == {"timestamp_version": 2} and time.monotonic() - started < 5
        client = tuf_client(srv.url, TufRepository.open(cfg).root_md(1).to_bytes(), tmp_path / "c")
        client.refresh()
    finally:
        stop()


def _rotate_to_new_keys(repo: TufRepository, config: CentralConfig, tmp_path: Path) -> tuple[list, list]:
    """Replace operator keys 1 and 2 by two new ones; returns (old signers, new signers)."""
    old = operator_signers(config, None)
    new_paths = [tmp_path / "new1.pem", tmp_path / "new2.pem"]
    for p in new_paths:
        generate_key_file(p)
    return old, [load_signer(p) for p in new_paths]


def test_root_rotation_verifies_from_the_old_pinned_root(policy, signers, config, server, tmp_path) -> None:
    repo = policy.repo
    pinned = repo.current_root_bytes()
    policy.blacklist_add(ACTOR, signers, list_type="card", entry_id="C1", reason="lost", area=AREA)
    old, new = _rotate_to_new_keys(repo, config, tmp_path)
    old_ids = [s.public_key.keyid for s in old]
    version = repo.rotate_root(
        [*old[:2], *new],
        add_keys=[load_public_key(tmp_path / "new1.pem.pub"), load_public_key(tmp_path / "new2.pem.pub")],
        remove_keyids=old_ids[:2],
    )
    assert version == 2
    info = repo.root_info()
    assert set(info.keys["root"]) == {old_ids[2], *(s.public_key.keyid for s in new)}
    assert info.keys["targets"] == info.keys["root"]
    client = tuf_client(server.url, pinned, tmp_path / "client")
    client.refresh()
    assert client._trusted_set.root.version == 2
    assert client.get_targetinfo(f"{AREA}/blacklist/000000000001.full.bin") is not None
    # the removed keys no longer sign targets; the new ones do
    with pytest.raises(SigningRefused):
        policy.blacklist_add(ACTOR, old[:2], list_type="card", entry_id="C2", reason="lost", area=AREA)
    policy.blacklist_add(ACTOR, new[:1], list_type="card", entry_id="C2", reason="lost", area=AREA)
    fresh = tuf_client(server.url, pinned, tmp_path / "client2")
    fresh.refresh()
    assert fresh.get_targetinfo(f"{AREA}/blacklist/000000000002.full.bin") is not None


def test_rotation_without_a_threshold_of_old_and_new_keys_is_refused(policy, config, tmp_path) -> None:
    repo = policy.repo
    old, new = _rotate_to_new_keys(repo, config, tmp_path)
    adds = [load_public_key(tmp_path / "new1.pem.pub"), load_public_key(tmp_path / "new2.pem.pub")]
    removes = [s.public_key.keyid for s in old[:2]]
    before = sorted(p.name for p in repo.metadata_dir.iterdir())
    with pytest.raises(RootRotationRefused, match="has 1"):
        repo.rotate_root(old[:1], rotate_online=True)  # one of the 2 old keys needed
    with pytest.raises(RootRotationRefused, match=r"2 of the new root keys \(has 0\)"):
        repo.rotate_root(old[:2], add_keys=adds, remove_keyids=removes)  # old threshold only
    with pytest.raises(RootRotationRefused, match=r"current root keys \(has 0\)"):
        repo.rotate_root(new, add_keys=adds, remove_keyids=removes)  # new threshold only
    with pytest.raises(RootRotationRefused, match="threshold 4"):
        repo.rotate_root(old, root_threshold=4)
    assert sorted(p.name for p in repo.metadata_dir.iterdir()) == before
    assert repo.root_version() == 1


def test_online_keys_can_be_rotated(policy, signers, server, tmp_path) -> None:
    repo = policy.repo
    pinned = repo.current_root_bytes()
    old_ts = repo.root_info().keys["timestamp"]
    repo.rotate_root(signers[:2], rotate_online=True)
    assert repo.root_info().keys["timestamp"] != old_ts
    assert repo.resign_online() is None  # the new timestamp is signed by the new key and fresh
    client = tuf_client(server.url, pinned, tmp_path / "c")
    client.refresh()
    assert client._trusted_set.timestamp.version == repo.timestamp_version()


def _raw_get(url: str, path: str) -> int:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_static_paths_stay_inside_the_repository(server: Server, repo: TufRepository) -> None:
    reply = server.request("GET", "/tuf/metadata/1.root.json")
    assert reply.status == 200 and reply.body == repo.current_root_bytes()
    assert server.request("GET", "/tuf/metadata/timestamp.json").headers["Cache-Control"] == "no-cache"
    for path in (
        "/tuf/metadata/../central.db",
        "/tuf/metadata/..%2Fcentral.db",
        "/tuf/metadata/.lock",
        "/tuf/metadata/2.root.json",
        "/tuf/metadata/root.json",
        "/tuf/targets/../../central.db",
        "/tuf/targets/%2e%2e/%2e%2e/central.db",
        "/tuf/targets/..%2F..%2Fcentral.db",
        "/tuf/targets/x/.hidden",
        "/tuf/targets/nothing.bin",
    ):
        assert _raw_get(server.url, path) == 404, path


def test_documents_are_targets_too(server: Server, policy, signers, tmp_path) -> None:
    doc = {"evoucher_issuers": {"k1": "A" * 42}}
    with pytest.raises(DocumentInvalid, match=r"evoucher_issuers\.k1"):
        policy.publish_document(ACTOR, signers, "keys", doc, area=AREA)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.evoucher import dump_public_key

    doc = {"evoucher_issuers": {"k1": dump_public_key(Ed25519PrivateKey.generate().public_key())}}
    published = policy.publish_document(ACTOR, signers, "keys", doc, area=AREA)
    client: Updater = tuf_client(server.url, policy.repo.root_md(1).to_bytes(), tmp_path / "c")
    info = client.get_targetinfo(published.target)
    assert info is not None and info.custom["kind"] == "keys"
    with open(client.download_target(info), "rb") as f:
        header, body = read_document(f)
    assert header.kind == "keys" and header.area == AREA and body == doc
    assert (
        Metadata[Targets]
        .from_bytes(
            (policy.repo.metadata_dir / f"{policy.repo.versions()['targets']}.targets.json").read_bytes()
        )
        .signed.targets[published.target]
        .custom
        == header.custom()
    )


def test_expiry_warnings_name_the_operator_roles(tmp_path) -> None:
    cfg = _fresh(tmp_path, targets_expiry_s=100)
    repo = TufRepository.open(cfg)
    warnings = repo.expiry_warnings(within_s=3600)
    assert any(w.startswith("targets metadata v1 expires") for w in warnings)
    assert repo.expiry_warnings(within_s=1) == []
    assert dataclasses.replace(cfg).targets_expiry_s == 100
