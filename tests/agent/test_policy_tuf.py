"""The agent's TUF client against a real repository on loopback HTTP: every refusal is an attack performed.

Each attack must be refused with its code, recorded as a problem, shown in status with an alarm, and
leave the held bundles in force; once the repository is honest again the next update succeeds.
"""

from __future__ import annotations

import time

import pytest
from securesystemslib.signer import CryptoSigner

from agent.policy import ALARM_EXPIRED, ALARM_REFUSED, ALARM_STALE, PolicyClient
from agent.policy_store import PolicyStore
from protocol.bundles import BundleHeader, target_name
from tests.agent.tufrepo import AREA, OTHER_AREA, Repo, card, in_, now_iso, unlist


@pytest.fixture
def held(repo: Repo, client: PolicyClient, store: PolicyStore) -> PolicyClient:
    """An agent holding blacklist seq 1 (cards C1, C2) and rules seq 1, verified at timestamp version 2."""
    repo.blacklist(1, [card("C1"), card("C2", reason="deceased")])
    repo.document("rules", 1, {"mode": "enforce", "rules": []})
    repo.publish()
    result = client.update()
    assert result.ok, result.refused
    assert store.held_seq("blacklist") == 1 and store.is_blacklisted(card_sn="C1")
    return client


def refused(client: PolicyClient, code: str, *, kind: str | None = None) -> None:
    result = client.update()
    assert [e.code for e in result.refused] == [code], [(e.code, e.message) for e in result.refused]
    if kind is not None:
        assert result.refused[0].kind == kind
    problem = client.store.problems(1)[0]
    assert problem["code"] == code and problem["message"]
    status = client.status()
    assert status["last_attempt"]["result"] == code
    assert status["problems"][0]["code"] == code
    assert ALARM_REFUSED in {a["code"] for a in status["alarms"]}


def still_held(store: PolicyStore, seq: int = 1) -> None:
    """The held list is untouched: seq 1 holds C1 (not C9), seq 2 adds C9."""
    assert store.held_seq("blacklist") == seq
    hit = store.is_blacklisted(card_sn="C1")
    assert hit is not None and hit.list_version == seq
    assert (store.is_blacklisted(card_sn="C9") is not None) == (seq >= 2)


def recovers(repo: Repo, client: PolicyClient, store: PolicyStore) -> None:
    """The honest repository publishes again: accepted, and the refusal alarm clears."""
    repo.publish()
    result = client.update()
    assert result.ok, [(e.code, e.message) for e in result.refused]
    assert ALARM_REFUSED not in {a["code"] for a in store.alarms()}


def add_c9(repo: Repo, seq: int = 2, base: int = 1) -> str:
    return repo.blacklist(seq, [card("C9")], base=base)


# ---- what TUF refuses ---------------------------------------------------------------------------


def test_a_bad_signature_is_refused(repo, held, store):
    add_c9(repo)
    repo.publish()
    repo.tamper_signature("timestamp.json")
    refused(held, "tuf_signature_invalid")
    still_held(store)
    recovers(repo, held, store)
    assert store.is_blacklisted(card_sn="C9") is not None


@pytest.mark.parametrize("role", ["targets", "snapshot", "timestamp"])
def test_metadata_signed_by_a_key_the_root_does_not_name_is_refused(repo, held, store, role):
    add_c9(repo)
    rogue = [CryptoSigner.generate_ed25519()]
    repo.publish(**{f"{role}_signers": rogue})
    refused(held, "tuf_signature_invalid")
    still_held(store)
    recovers(repo, held, store)


def test_a_rollback_to_older_metadata_is_refused(repo, held, store):
    old_timestamp = repo.file("timestamp.json")
    add_c9(repo)
    repo.publish()
    assert held.update().ok and store.held_seq("blacklist") == 2
    repo.put("timestamp.json", old_timestamp)  # replay yesterday's timestamp (blacklist without C9)
    refused(held, "tuf_rollback")
    assert store.held_seq("blacklist") == 2 and store.is_blacklisted(card_sn="C9") is not None
    assert held.status()["tuf"]["timestamp"] == 3


def test_expired_metadata_is_refused_and_the_held_lists_stay_in_force(repo, held, store):
    add_c9(repo)
    repo.publish(timestamp_expires=in_(seconds=-5))  # a freeze: old metadata replayed past its expiry
    refused(held, "tuf_expired")
    still_held(store)
    repo.publish(snapshot_expires=in_(seconds=-5))
    refused(held, "tuf_expired")
    still_held(store)
    recovers(repo, held, store)


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_a_mix_of_versions_is_refused(repo, held, store, role):
    add_c9(repo)
    repo.publish()
    # The new timestamp names version 3, the server hands out version 2's content under that name.
    repo.put(f"3.{role}.json", repo.file(f"2.{role}.json"))
    refused(held, "tuf_rollback")
    still_held(store)
    recovers(repo, held, store)


def test_a_bundle_file_that_does_not_match_its_signed_hash_is_refused(repo, held, store):
    name = add_c9(repo)
    repo.publish()
    path = repo.served_target_path(name)
    forged = repo.blacklist(2, [card("C9"), unlist("card", "C1")], base=1, name="370200/blacklist/forged.bin")
    path.write_bytes(repo.served_target_path(forged).read_bytes())  # a valid-looking, different delta
    refused(held, "tuf_target_mismatch", kind="blacklist")
    still_held(store)


def test_a_root_rotation_needs_a_threshold_of_the_old_keys(repo, held, store):
    old = list(repo.root_signers)
    new_key = repo.rotate_root(replace=0)  # signed by 2 of the old keys and 2 of the new set: valid
    add_c9(repo)
    repo.publish()
    result = held.update()
    assert result.ok and result.tuf["root"] == 2
    assert held.status()["tuf"]["root"] == 2
    assert store.is_blacklisted(card_sn="C9") is not None
    # Next rotation signed by only one key of the current root (plus the new one): refused.
    current = [new_key, *old[1:]]
    repo.rotate_root(replace=1, old_signers=[current[0]], new_signers=[])
    repo.blacklist(3, [card("C10")], base=2)
    repo.publish()
    refused(held, "tuf_root_rotation_refused")
    assert held.status()["tuf"]["root"] == 2
    assert store.held_seq("blacklist") == 2 and store.is_blacklisted(card_sn="C10") is None


def test_a_root_rotation_the_old_keys_did_not_sign_is_refused(repo, held, store):
    outsider = [CryptoSigner.generate_ed25519(), CryptoSigner.generate_ed25519()]
    repo.rotate_root(replace=0, old_signers=outsider, new_signers=None)
    repo.publish()
    refused(held, "tuf_root_rotation_refused")
    still_held(store)


# ---- what the agent refuses on top ----------------------------------------------------------------


def test_a_bundle_of_another_kind_is_refused(repo, held, store):
    name = target_name(AREA, "blacklist", 2, True)
    announced = BundleHeader("blacklist", AREA, 2, None, now_iso())
    repo.document("rules", 2, {"mode": "off"}, name=name, custom=announced.custom())
    repo.publish()
    refused(held, "bundle_wrong_kind", kind="blacklist")
    still_held(store)
    assert store.document("rules") == {"mode": "enforce", "rules": []}


def test_a_bundle_for_another_pooling_area_is_refused(repo, held, store):
    inside = BundleHeader("blacklist", OTHER_AREA, 2, 1, now_iso())
    repo.blacklist(2, [unlist("card", "C1")], base=1, file_header=inside)  # announced as ours
    repo.publish()
    refused(held, "bundle_wrong_area", kind="blacklist")
    still_held(store)


def test_another_areas_bundles_are_not_ours(repo, held, store):
    repo.blacklist(7, [card("C9")], area=OTHER_AREA)
    repo.document("rules", 9, {"mode": "off"}, area=OTHER_AREA)
    repo.publish()
    result = held.update()
    assert result.ok and result.applied == []
    still_held(store)


def test_a_delta_whose_base_is_not_the_held_seq_is_refused(repo, held, store):
    add_c9(repo)
    repo.publish()
    assert held.update().ok and store.held_seq("blacklist") == 2
    # Announced as a delta on 2 (what the agent holds); the file inside applies on 1.
    inside = BundleHeader("blacklist", AREA, 3, 1, now_iso())
    repo.blacklist(3, [unlist("card", "C1")], base=2, file_header=inside)
    repo.publish()
    refused(held, "bundle_base_mismatch", kind="blacklist")
    still_held(store, seq=2)


def test_a_list_older_than_the_held_one_is_refused(repo, held, store):
    add_c9(repo)
    repo.publish()
    assert held.update().ok
    repo.remove_targets("blacklist")
    repo.blacklist(1, [card("C1")])  # a validly signed targets version naming an older list
    repo.publish()
    refused(held, "bundle_not_newer", kind="blacklist")
    still_held(store, seq=2)


def test_no_way_from_the_held_seq_to_the_newest_is_reported(repo, held, store):
    repo.remove_targets("blacklist")
    repo.blacklist(3, [card("C9")], base=2)
    repo.publish()
    refused(held, "bundle_unavailable", kind="blacklist")
    still_held(store)


def test_header_inside_the_file_must_match_the_signed_metadata(repo, held, store):
    inside = BundleHeader("blacklist", AREA, 5, 1, now_iso())  # says seq 5, announced as seq 2
    repo.blacklist(2, [card("C9")], base=1, file_header=inside)
    repo.publish()
    refused(held, "bundle_header_mismatch", kind="blacklist")
    still_held(store)


# ---- deltas, snapshots, other kinds -----------------------------------------------------------------


def test_deltas_from_the_held_seq_when_the_chain_exists(repo, held, store):
    for seq in (2, 3, 4):
        repo.blacklist(seq, [card(f"D{seq}")], base=seq - 1)
    repo.publish()
    result = held.update()
    assert [(a.seq, a.base_seq) for a in result.applied] == [(2, 1), (3, 2), (4, 3)]
    assert store.held()["blacklist"]["entries"] == 5


def test_an_agent_behind_the_deltas_gets_the_full_snapshot(repo, held, store):
    for seq in (2, 3):
        repo.blacklist(seq, [card(f"D{seq}")], base=seq - 1)
    repo.publish()
    assert held.update().ok and store.held_seq("blacklist") == 3
    # The centre moved on: a new full snapshot at 5, deltas 6 and 7 after it; the deltas 4, 5 are gone.
    repo.remove_targets("blacklist")
    repo.blacklist(5, [card("C1"), card("D2"), card("D5")])
    repo.blacklist(6, [card("D6"), unlist("card", "D2")], base=5)
    repo.blacklist(7, [card("D7")], base=6)
    repo.publish()
    result = held.update()
    assert result.ok
    assert [(a.seq, a.base_seq) for a in result.applied] == [(5, None), (6, 5), (7, 6)]
    assert store.held_seq("blacklist") == 7 and store.held()["blacklist"]["entries"] == 4
    for present in ("C1", "D5", "D6", "D7"):
        assert store.is_blacklisted(card_sn=present) is not None
    for gone in ("C2", "D2", "D3"):
        assert store.is_blacklisted(card_sn=gone) is None


def test_every_kind_is_applied_and_reported_in_status(repo, client, store):
    started = time.time()
    repo.blacklist(4, [card("C1")])
    repo.document("rules", 2, {"mode": "shadow", "rules": [{"id": "R1"}]})
    repo.document("policy", 3, {"370200": {"2026": {}}})
    repo.document("catalogue", 8, {"drugs": []})
    repo.document("keys", 1, {"evoucher_issuers": {}})
    repo.cards(5, [])
    repo.publish()
    result = client.update()
    assert result.ok and sorted(a.kind for a in result.applied) == sorted(
        ["blacklist", "rules", "policy", "catalogue", "keys", "cards"]
    )
    status = client.status()
    assert {k: v["seq"] for k, v in status["bundles"].items()} == {
        "blacklist": 4,
        "rules": 2,
        "policy": 3,
        "catalogue": 8,
        "keys": 1,
        "cards": 5,
    }
    elapsed = time.time() - started
    bl = status["bundles"]["blacklist"]
    assert bl["entries"] == 1 and bl["created"]
    # created during this test (stamped in whole seconds, so up to 1 s earlier), confirmed by the
    # update above; both ages are rounded to 0.1 s
    assert 0 <= bl["confirmed_age_s"] <= bl["age_s"] <= elapsed + 1.1, (bl, elapsed)
    assert status["tuf"]["root"] == 1 and status["tuf"]["timestamp"] == 2 and status["tuf"]["expires"]
    assert status["last_attempt"]["result"] == "ok" and status["last_success_at"]
    assert status["alarms"] == [] and status["warning"] is None and status["problems"] == []
    assert len(status["root_fingerprint"].split()) == 8
    assert store.document("rules") == {"mode": "shadow", "rules": [{"id": "R1"}]}
    # Nothing new: nothing downloaded, all current.
    again = client.update()
    assert again.ok and again.applied == [] and "blacklist" in again.current


def test_a_keys_bundle_with_a_bad_key_is_refused(repo, held, store):
    repo.document("keys", 1, {"evoucher_issuers": {"k1": "not-a-key"}})
    repo.publish()
    refused(held, "bundle_invalid", kind="keys")
    assert store.document("keys") is None


# ---- the link is down for days ------------------------------------------------------------------------


def test_expired_metadata_while_offline_keeps_enforcing_and_raises_alarms(held, store, agent_config):
    agent_config.central_url = "http://127.0.0.1:9"  # nothing listens: the link is down
    held.clock = lambda: time.time() + 3 * 24 * 3600  # ... for three days
    result = held.update()
    assert [e.code for e in result.refused] == ["policy_unreachable"]
    still_held(store)
    status = held.status()
    codes = {a["code"] for a in status["alarms"]}
    assert {ALARM_EXPIRED, ALARM_STALE} <= codes and ALARM_REFUSED not in codes
    assert "blacklist seq 1" in status["warning"] and "72.0 h" in status["warning"]
    assert {a["code"] for a in store.alarms()} >= {ALARM_EXPIRED, ALARM_STALE}
    # The same failure again is not a new problem line every poll.
    held.update()
    assert [p["code"] for p in store.problems(5)] == ["policy_unreachable"]


def test_a_blacklist_older_than_the_limit_warns(held, agent_config):
    agent_config.blacklist_max_age_s = 60
    status = held.status(now=time.time() + 120)
    assert ALARM_STALE in {a["code"] for a in status["alarms"]}
    assert status["warning"].startswith("blacklist seq 1 was last confirmed current")
    assert held.status()["warning"] is None
