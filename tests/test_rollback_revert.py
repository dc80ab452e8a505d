"""Rollback of one entity (by version or time) and revert of everything one actor did in a window."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import widgets

from server.errors import HeadlesslyError, InvalidAsOf, NotFound, ValidationFailed, VersionConflict
from server.store import Store

TENANT = "acme"
AGENT = "agent_mR4nVkTw"
ROGUE = "agent_rogue"
GOOD = "user_bob"
ADMIN = "user_admin"


def do(store: Store, who: str, /, **request: Any) -> dict[str, Any]:
    return store.do(TENANT, who, request)


def fields(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if not k.startswith("$")}


def event_count(store: Store) -> int:
    total: int = store.events(TENANT)["total"]
    return total


def alice_history(store: Store, clock: Any) -> str:
    """Alice: v1 Lead at 10:00, v2 Qualified at 11:00, v3 +title at 12:00."""
    alice: str = do(store, AGENT, action="create", type="Contact", data={"name": "Alice", "email": "alice@startup.io"})[
        "entity"
    ]["$id"]
    clock.advance(3600)
    do(store, AGENT, action="qualify", type="Contact", id=alice)
    clock.advance(3600)
    do(store, AGENT, action="update", type="Contact", id=alice, data={"title": "CTO"})
    clock.advance(3600)
    return alice


# ---- rollback -------------------------------------------------------------------------------------


def test_rollback_to_a_version_restores_its_fields_and_appends_an_updated_event(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    result = do(store, GOOD, action="rollback", type="Contact", id=alice, toVersion=1)
    entity = result["entity"]
    assert fields(entity) == {"name": "Alice", "email": "alice@startup.io", "stage": "Lead"}
    assert entity["$version"] == 4
    assert entity["$updatedBy"] == GOOD
    assert entity["$createdBy"] == AGENT
    (event,) = result["events"]
    assert event["type"] == "Contact.Updated"
    assert event["version"] == 4
    assert event["actor"] == GOOD
    assert event["data"] == {"rollbackTo": 1, "stage": "Qualified -> Lead", "title": "CTO -> null"}
    assert store.get(TENANT, "Contact", alice) == entity
    assert event_count(store) == 4


def test_rollback_to_an_as_of_restores_the_state_at_that_time(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    result = do(store, AGENT, action="rollback", type="Contact", id=alice, asOf="2026-01-15T11:30:00.000000Z")
    assert fields(result["entity"]) == {"name": "Alice", "email": "alice@startup.io", "stage": "Qualified"}
    (event,) = result["events"]
    assert event["data"] == {"rollbackTo": "2026-01-15T11:30:00.000000Z", "title": "CTO -> null"}
    assert event["changes"]["title"] == {"from": "CTO", "to": None}
    assert result["entity"]["$version"] == 4


def test_rollback_accepts_an_as_of_with_an_offset(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    result = do(store, AGENT, action="rollback", type="Contact", id=alice, asOf="2026-01-15T11:00:00+01:00")
    assert fields(result["entity"])["stage"] == "Lead"
    assert "title" not in result["entity"]
    long = "2026-01-15T11:00:00." + "0" * 50 + "+01:00"  # RFC 3339 puts no bound on the fraction
    assert do(store, AGENT, action="rollback", type="Contact", id=alice, asOf=long)["entity"]["stage"] == "Lead"


def test_rollback_never_moves_the_version_back(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    versions = []
    for target in (1, 2, 4, 1):
        versions.append(do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=target)["entity"])
    assert [v["$version"] for v in versions] == [4, 5, 6, 7]
    assert [v["stage"] for v in versions] == ["Lead", "Qualified", "Lead", "Lead"]
    history = store.events(TENANT, filter={"target": alice})["results"]
    assert [e["version"] for e in history] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["type"] for e in history[3:]] == ["Contact.Updated"] * 4


def test_rollback_of_a_deleted_entity_to_when_it_existed_restores_it(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    do(store, GOOD, action="delete", type="Contact", id=alice)
    clock.advance(60)
    result = do(store, AGENT, action="rollback", type="Contact", id=alice, asOf="2026-01-15T12:30:00Z")
    entity = result["entity"]
    assert "$deletedAt" not in entity
    assert "$deletedBy" not in entity
    assert entity["$version"] == 5
    assert entity["title"] == "CTO"
    assert store.get(TENANT, "Contact", alice) == entity
    assert [c["$id"] for c in store.find(TENANT, "Contact")["results"]] == [alice]
    (event,) = result["events"]
    assert event["type"] == "Contact.Updated"
    assert event["data"]["rollbackTo"] == "2026-01-15T12:30:00.000000Z"
    # restored, it can be written again and keeps its unique email
    do(store, AGENT, action="update", type="Contact", id=alice, data={"phone": "+1"})
    with pytest.raises(ValidationFailed):
        do(store, AGENT, action="create", type="Contact", data={"name": "Copy", "email": "alice@startup.io"})
    assert store.verify(TENANT)["ok"] is True


def test_rollback_of_a_deleted_entity_to_its_deleted_version_keeps_it_deleted(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    do(store, GOOD, action="delete", type="Contact", id=alice)
    do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=2)
    do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=4)
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", alice)
    assert store.verify(TENANT)["ok"] is True


def test_a_rollback_that_deletes_names_its_own_actor_and_time_as_the_deletion(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    do(store, GOOD, action="delete", type="Contact", id=alice)  # v4, by GOOD at 13:00
    clock.advance(60)
    do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=3)  # restored
    clock.advance(60)
    result = do(store, ADMIN, action="rollback", type="Contact", id=alice, toVersion=4)  # deleted again, by ADMIN
    entity, (event,) = result["entity"], result["events"]
    assert (entity["$deletedAt"], entity["$deletedBy"]) == (event["timestamp"], ADMIN)
    assert event["changes"]["$deletedBy"] == {"from": None, "to": ADMIN}
    with pytest.raises(NotFound) as exc:
        store.get(TENANT, "Contact", alice)
    assert ADMIN in exc.value.message and event["timestamp"] in exc.value.message
    deleted = {"$deletedBy": ADMIN, "$deletedAt": {"$gte": event["timestamp"]}}
    assert store.find(TENANT, "Contact", deleted, include_deleted=True)["total"] == 1
    # rolled back again to a deleted version while deleted, it keeps the deletion it has
    clock.advance(60)
    again = do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=4)["entity"]
    assert (again["$deletedAt"], again["$deletedBy"]) == (event["timestamp"], ADMIN)
    assert store.verify(TENANT)["ok"] is True


def test_a_rollback_to_the_state_the_entity_is_in_still_appends_its_event_with_empty_changes(
    store: Store, clock: Any
) -> None:
    alice = alice_history(store, clock)
    result = do(store, GOOD, action="rollback", type="Contact", id=alice, toVersion=3)
    (event,) = result["events"]
    assert (event["version"], event["data"], event["changes"]) == (4, {"rollbackTo": 3}, {})
    assert fields(result["entity"]) == fields(store.get(TENANT, "Contact", alice, version=3))


def test_rollback_to_before_creation_is_refused(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    for as_of in ("2026-01-15T09:59:59.999999Z", "2026-01-14"):
        with pytest.raises(InvalidAsOf) as exc:
            do(store, AGENT, action="rollback", type="Contact", id=alice, asOf=as_of)
        assert exc.value.code == "invalid_as_of"
    assert event_count(store) == 3
    assert store.get(TENANT, "Contact", alice)["$version"] == 3


def test_rollback_to_a_time_not_yet_past_is_refused_and_writes_nothing(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)  # the clock is now 13:00
    for as_of in ("2062-01-15T13:00:00Z", "2026-01-15T13:00:00Z", "2026-01-16"):
        with pytest.raises(
            InvalidAsOf, match=r"is not in the past: this rollback would be written at 2026-01-15T13:00:00"
        ):
            do(store, AGENT, action="rollback", type="Contact", id=alice, asOf=as_of, dryRun=True)
        with pytest.raises(InvalidAsOf) as exc:
            do(store, AGENT, action="rollback", type="Contact", id=alice, asOf=as_of)
        assert "toVersion" in exc.value.hint
    assert event_count(store) == 3
    back = do(store, AGENT, action="rollback", type="Contact", id=alice, asOf="2026-01-15T12:59:59.999999Z")
    assert back["events"][0]["data"] == {"rollbackTo": "2026-01-15T12:59:59.999999Z"}


def test_rollback_needs_exactly_one_target_and_a_known_version(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    with pytest.raises(HeadlesslyError):
        do(store, AGENT, action="rollback", type="Contact", id=alice)
    with pytest.raises(HeadlesslyError):
        do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=1, asOf="2026-01-15T11:00:00Z")
    with pytest.raises(HeadlesslyError):
        do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=9)
    with pytest.raises(InvalidAsOf):
        do(store, AGENT, action="rollback", type="Contact", id=alice, asOf="yesterday")
    assert event_count(store) == 3


def test_rollback_respects_if_version(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    with pytest.raises(VersionConflict) as exc:
        do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=1, ifVersion=2)
    assert exc.value.details["currentVersion"] == 3
    ok = do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=1, ifVersion=3)
    assert ok["entity"]["$version"] == 4


def test_rollback_is_refused_when_its_unique_value_is_taken_now(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    do(store, AGENT, action="update", type="Contact", id=alice, data={"email": "alice@new.io"})
    other = do(store, GOOD, action="create", type="Contact", data={"name": "Al", "email": "alice@startup.io"})
    with pytest.raises(ValidationFailed) as exc:
        do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=1)
    assert other["entity"]["$id"] in exc.value.message
    assert store.get(TENANT, "Contact", alice)["email"] == "alice@new.io"


def test_rollback_dry_run_writes_nothing(store: Store, clock: Any) -> None:
    alice = alice_history(store, clock)
    result = do(store, AGENT, action="rollback", type="Contact", id=alice, toVersion=1, dryRun=True)
    assert result["dryRun"] is True
    assert result["entity"]["stage"] == "Lead"
    assert result["events"][0]["data"]["rollbackTo"] == 1
    assert store.get(TENANT, "Contact", alice)["$version"] == 3
    assert event_count(store) == 3


# ---- revert ---------------------------------------------------------------------------------------


def setup_rogue(store: Store, clock: Any) -> dict[str, Any]:
    """Before the window GOOD creates two organizations; in it ROGUE creates, updates and deletes."""
    acme = do(store, GOOD, action="create", type="Organization", data={"name": "Acme", "domain": "acme.com"})
    globex = do(store, GOOD, action="create", type="Organization", data={"name": "Globex"})
    initech = do(store, GOOD, action="create", type="Organization", data={"name": "Initech"})
    clock.advance(3600)  # 11:00: the window starts
    spam = do(
        store, ROGUE, action="create", type="Contact", data={"name": "Spam", "organization": acme["entity"]["$id"]}
    )
    clock.advance(60)
    do(store, ROGUE, action="update", type="Organization", id=acme["entity"]["$id"], data={"industry": "Spam"})
    clock.advance(60)
    do(store, ROGUE, action="update", type="Organization", id=acme["entity"]["$id"], data={"employeeCount": 1})
    clock.advance(60)
    do(store, ROGUE, action="delete", type="Organization", id=initech["entity"]["$id"])
    clock.advance(3600)
    return {
        "acme": acme["entity"],
        "globex": globex["entity"],
        "initech": initech["entity"],
        "spam": spam["entity"],
    }


def test_revert_undoes_everything_an_actor_did_in_the_window(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    before = event_count(store)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z")
    assert result["conflicts"] == []
    assert result["revertOf"]["actor"] == ROGUE

    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", e["spam"]["$id"])
    (spam,) = store.find(TENANT, "Contact", include_deleted=True)["results"]
    assert spam["$deletedBy"] == ADMIN
    acme = store.get(TENANT, "Organization", e["acme"]["$id"])
    assert fields(acme) == fields(e["acme"])
    assert acme["$version"] == 4
    initech = store.get(TENANT, "Organization", e["initech"]["$id"])
    assert fields(initech) == fields(e["initech"])
    assert "$deletedAt" not in initech
    assert store.get(TENANT, "Organization", e["globex"]["$id"]) == e["globex"]

    assert len(result["events"]) == 3
    assert event_count(store) == before + 3
    by_target = {ev["target"]: ev for ev in result["events"]}
    assert by_target[e["spam"]["$id"]]["type"] == "Contact.Deleted"
    assert by_target[e["acme"]["$id"]]["type"] == "Organization.Updated"
    assert by_target[e["initech"]["$id"]]["type"] == "Organization.Updated"
    for ev in result["events"]:
        assert ev["actor"] == ADMIN
        assert ev["data"].get("revertOf")
    assert {r["$id"] for r in result["reverted"]} == set(by_target)
    assert all(r["$updatedBy"] == ADMIN for r in result["reverted"])
    assert store.verify(TENANT)["ok"] is True


def test_revert_records_the_reverted_fields_in_the_event(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z")
    (acme_event,) = [ev for ev in result["events"] if ev["target"] == e["acme"]["$id"]]
    assert acme_event["changes"] == {
        "industry": {"from": "Spam", "to": None},
        "employeeCount": {"from": 1, "to": None},
    }
    assert acme_event["data"]["industry"] == "Spam -> null"
    assert acme_event["data"]["employeeCount"] == "1 -> null"


def test_revert_reports_an_entity_changed_afterwards_by_someone_else_and_leaves_it(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    acme_id = e["acme"]["$id"]
    later = do(store, GOOD, action="update", type="Organization", id=acme_id, data={"website": "https://acme.com"})
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z")
    (conflict,) = result["conflicts"]
    assert conflict["id"] == acme_id
    assert conflict["type"] == "Organization"
    assert GOOD in conflict["changedBy"]
    assert conflict["message"]
    assert store.get(TENANT, "Organization", acme_id) == later["entity"]
    assert acme_id not in {ev["target"] for ev in result["events"]}
    # the entities nobody else touched were still reverted
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", e["spam"]["$id"])
    assert "$deletedAt" not in store.get(TENANT, "Organization", e["initech"]["$id"])


def test_a_later_revert_of_another_actor_is_a_change_by_whoever_reverted(store: Store, clock: Any) -> None:
    bob = do(store, GOOD, action="create", type="Contact", data={"name": "Bob"})["entity"]["$id"]
    clock.advance(60)
    do(store, ROGUE, action="update", type="Contact", id=bob, data={"title": "CTO"})
    clock.advance(60)
    do(store, ADMIN, action="revert", actor=GOOD, since="2026-01-15", force=True)  # deletes Bob, GOOD's creation
    clock.advance(60)
    result = do(store, AGENT, action="revert", actor=ROGUE, since="2026-01-15")
    (conflict,) = result["conflicts"]
    assert conflict["id"] == bob
    assert conflict["changedBy"] == [ADMIN]
    assert result["events"] == []
    assert "$deletedAt" in store.find(TENANT, "Contact", include_deleted=True)["results"][0]


def acme_and_bob(store: Store) -> tuple[str, str]:
    """GOOD creates Acme and Bob, a Contact linked to it: their ids."""
    org = do(store, GOOD, action="create", type="Organization", data={"name": "Acme"})["entity"]["$id"]
    bob = do(store, GOOD, action="create", type="Contact", data={"name": "Bob", "organization": org})["entity"]["$id"]
    return str(org), str(bob)


def test_revert_restores_a_link_to_an_entity_that_the_same_revert_brings_back(store: Store, clock: Any) -> None:
    org, bob = acme_and_bob(store)
    clock.advance(60)
    # ROGUE unlinks Bob first (a live contact may not point at a deleted organization), then deletes Acme
    do(store, ROGUE, action="update", type="Contact", id=bob, data={"organization": None})
    do(store, ROGUE, action="delete", type="Organization", id=org)
    clock.advance(60)
    plan = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", dryRun=True)
    assert [ev["target"] for ev in plan["events"]] == [bob, org]
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")
    assert result["conflicts"] == []
    assert store.get(TENANT, "Contact", bob)["organization"] == org
    assert "$deletedAt" not in store.get(TENANT, "Organization", org)
    assert store.verify(TENANT)["ok"] is True


def test_revert_reports_an_entity_whose_restored_link_points_at_an_entity_deleted_since_and_reverts_the_rest(
    store: Store, clock: Any
) -> None:
    org, bob = acme_and_bob(store)
    clock.advance(60)
    bob_now = do(store, ROGUE, action="update", type="Contact", id=bob, data={"organization": None, "title": "Spam"})
    spam = do(store, ROGUE, action="create", type="Contact", data={"name": "Spam"})["entity"]["$id"]
    do(store, GOOD, action="delete", type="Organization", id=org)  # not ROGUE's: the revert leaves it deleted
    clock.advance(60)
    for force in (False, True):
        result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", force=force, dryRun=True)
        (conflict,) = result["conflicts"]
        assert conflict["id"] == bob and conflict["type"] == "Contact"
        assert org in conflict["message"] and "deleted" in conflict["message"]
        assert conflict["hint"]
        assert [ev["target"] for ev in result["events"]] == [spam]
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")
    assert [c["id"] for c in result["conflicts"]] == [bob]
    assert store.get(TENANT, "Contact", bob) == bob_now["entity"]
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", spam)
    assert store.verify(TENANT)["ok"] is True


def test_revert_reports_an_entity_whose_unique_value_another_entity_holds_now_and_reverts_the_rest(
    store: Store, clock: Any
) -> None:
    acme = do(store, GOOD, action="create", type="Organization", data={"name": "Acme", "domain": "acme.com"})
    acme_id = acme["entity"]["$id"]
    clock.advance(60)
    moved = do(store, ROGUE, action="update", type="Organization", id=acme_id, data={"domain": "acme.net"})
    spam = do(store, ROGUE, action="create", type="Organization", data={"name": "Spam"})["entity"]["$id"]
    copy = do(store, GOOD, action="create", type="Organization", data={"name": "Acme 2", "domain": "acme.com"})
    clock.advance(60)
    before = event_count(store)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", force=True)
    (conflict,) = result["conflicts"]
    assert conflict["id"] == acme_id
    assert conflict["field"] == "domain"
    assert conflict["existing"] == copy["entity"]["$id"]
    assert "acme.com" in conflict["message"] and "force does not change this" in conflict["message"]
    assert copy["entity"]["$id"] in conflict["hint"]
    assert store.get(TENANT, "Organization", acme_id) == moved["entity"]
    assert [ev["target"] for ev in result["events"]] == [spam]
    assert event_count(store) == before + 1
    with pytest.raises(NotFound):
        store.get(TENANT, "Organization", spam)
    assert store.verify(TENANT)["ok"] is True


def test_revert_leaves_an_entity_linked_to_one_it_cannot_bring_back_and_writes_only_the_rest(
    store: Store, clock: Any
) -> None:
    acme = do(store, GOOD, action="create", type="Organization", data={"name": "Acme", "domain": "acme.com"})
    org = acme["entity"]["$id"]
    bob = do(store, GOOD, action="create", type="Contact", data={"name": "Bob", "organization": org})["entity"]["$id"]
    clock.advance(60)
    # ROGUE unlinks Bob and deletes Acme; then GOOD gives a new organization Acme's domain
    do(store, ROGUE, action="update", type="Contact", id=bob, data={"organization": None})
    do(store, ROGUE, action="delete", type="Organization", id=org)
    spam = do(store, ROGUE, action="create", type="Contact", data={"name": "Spam"})["entity"]["$id"]
    do(store, GOOD, action="create", type="Organization", data={"name": "Acme 2", "domain": "acme.com"})
    clock.advance(60)
    before = event_count(store)
    # Bob comes first in the window: his link is fine only if Acme comes back, and Acme cannot
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")
    assert [(c["id"], c.get("field")) for c in result["conflicts"]] == [(bob, None), (org, "domain")]
    assert [ev["target"] for ev in result["events"]] == [spam]
    assert event_count(store) == before + 1
    assert "organization" not in store.get(TENANT, "Contact", bob)
    with pytest.raises(NotFound):
        store.get(TENANT, "Organization", org)
    assert store.verify(TENANT)["ok"] is True


def test_revert_with_force_reverts_a_conflicting_entity_too(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    acme_id = e["acme"]["$id"]
    do(store, GOOD, action="update", type="Organization", id=acme_id, data={"website": "https://acme.com"})
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z", force=True)
    assert result["conflicts"] == []
    acme = store.get(TENANT, "Organization", acme_id)
    assert fields(acme) == fields(e["acme"])
    assert acme["$updatedBy"] == ADMIN


def test_revert_dry_run_shows_the_plan_and_writes_nothing(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    before = event_count(store)
    acme_now = store.get(TENANT, "Organization", e["acme"]["$id"])
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z", dryRun=True)
    assert result["dryRun"] is True
    assert {ev["target"] for ev in result["events"]} == {e["spam"]["$id"], e["acme"]["$id"], e["initech"]["$id"]}
    assert {r["$id"] for r in result["reverted"]} == {e["spam"]["$id"], e["acme"]["$id"], e["initech"]["$id"]}
    assert event_count(store) == before
    assert store.get(TENANT, "Organization", e["acme"]["$id"]) == acme_now
    assert store.get(TENANT, "Contact", e["spam"]["$id"])["$version"] == 1


def test_until_bounds_the_window(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)  # ROGUE acted 11:00 .. 11:03
    late = do(store, ROGUE, action="update", type="Organization", id=e["globex"]["$id"], data={"industry": "Late"})
    acme = store.get(TENANT, "Organization", e["acme"]["$id"])
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z", until="2026-01-15T11:01:30Z")
    assert {ev["target"] for ev in result["events"]} == {e["spam"]["$id"]}
    assert result["revertOf"]["until"] is not None
    assert store.get(TENANT, "Organization", e["globex"]["$id"]) == late["entity"]
    assert "$deletedAt" in store.find(TENANT, "Organization", {"name": "Initech"}, include_deleted=True)["results"][0]
    # acme's state before the window would also undo ROGUE's change after `until`: a conflict, not done silently
    (conflict,) = result["conflicts"]
    assert conflict["id"] == e["acme"]["$id"] and conflict["changedBy"] == [ROGUE]
    assert "after 'until'" in conflict["message"]
    assert store.get(TENANT, "Organization", e["acme"]["$id"]) == acme


def test_revert_with_until_and_force_also_undoes_the_actors_later_change_of_an_entity_it_touched_in_the_window(
    store: Store, clock: Any
) -> None:
    e = setup_rogue(store, clock)
    result = do(
        store,
        ADMIN,
        action="revert",
        actor=ROGUE,
        since="2026-01-15T11:00:00Z",
        until="2026-01-15T11:01:30Z",
        force=True,
    )
    assert {ev["target"] for ev in result["events"]} == {e["spam"]["$id"], e["acme"]["$id"]}
    assert result["conflicts"] == []
    assert fields(store.get(TENANT, "Organization", e["acme"]["$id"])) == fields(e["acme"])


def test_the_actors_later_change_that_a_revert_already_undid_is_no_conflict_for_an_earlier_window(
    store: Store, clock: Any
) -> None:
    org = do(store, GOOD, action="create", type="Organization", data={"name": "Acme"})["entity"]["$id"]
    clock.advance(3600)  # 11:00
    do(store, ROGUE, action="update", type="Organization", id=org, data={"industry": "A"})
    clock.advance(3600)  # 12:00
    do(store, ROGUE, action="update", type="Organization", id=org, data={"industry": "B"})
    clock.advance(60)
    later = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:30:00Z")
    clock.advance(60)
    earlier = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:30:00Z", until="2026-01-15T11:30:00Z")

    assert later["conflicts"] == [] and earlier["conflicts"] == []
    assert [e["target"] for e in earlier["events"]] == [org]
    assert "industry" not in store.get(TENANT, "Organization", org)


def test_since_bounds_the_window(store: Store, clock: Any) -> None:
    e = setup_rogue(store, clock)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:01:30Z")
    assert {ev["target"] for ev in result["events"]} == {e["acme"]["$id"], e["initech"]["$id"]}
    acme = store.get(TENANT, "Organization", e["acme"]["$id"])
    assert acme["industry"] == "Spam"  # set before the window
    assert "employeeCount" not in acme
    assert store.get(TENANT, "Contact", e["spam"]["$id"])["$version"] == 1


def test_revert_of_an_actor_with_nothing_in_the_window_writes_nothing(store: Store, clock: Any) -> None:
    setup_rogue(store, clock)
    before = event_count(store)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-16")
    assert result["events"] == []
    assert result["reverted"] == []
    assert result["conflicts"] == []
    assert event_count(store) == before


def test_a_since_and_an_until_inside_the_same_microsecond_are_an_empty_window_not_a_mistake(
    store: Store, clock: Any
) -> None:
    setup_rogue(store, clock)
    before = event_count(store)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00.0000005Z", until="2026-01-15T11:00:00.0000005Z")  # fmt: skip
    assert result["events"] == [] and result["conflicts"] == []
    assert event_count(store) == before


def test_revert_needs_an_actor_and_a_since(store: Store, clock: Any) -> None:
    setup_rogue(store, clock)
    before = event_count(store)
    with pytest.raises(HeadlesslyError):
        do(store, ADMIN, action="revert", actor=ROGUE)
    with pytest.raises(HeadlesslyError):
        do(store, ADMIN, action="revert", since="2026-01-15")
    with pytest.raises(HeadlesslyError):
        do(store, ADMIN, action="revert", actor="rogue", since="2026-01-15")
    with pytest.raises(InvalidAsOf):
        do(store, ADMIN, action="revert", actor=ROGUE, since="last week")
    assert event_count(store) == before


def test_a_since_between_two_microseconds_leaves_out_the_event_just_before_it(store: Store, clock: Any) -> None:
    alice = do(store, GOOD, action="create", type="Contact", data={"name": "Alice"})["entity"]["$id"]
    clock.advance(1)
    at = do(store, ROGUE, action="update", type="Contact", id=alice, data={"title": "CTO"})["events"][0]["timestamp"]
    after = at[:-1] + "1Z"  # 0.1 µs after the event

    result = do(store, ADMIN, action="revert", actor=ROGUE, since=after)

    assert result["events"] == [] and result["revertOf"]["since"] > at
    assert store.get(TENANT, "Contact", alice)["title"] == "CTO"


def test_bringing_back_a_deleted_entity_whose_link_points_at_an_entity_deleted_since_is_refused_or_a_conflict(
    store: Store, clock: Any
) -> None:
    org, bob = acme_and_bob(store)
    clock.advance(60)
    do(store, ROGUE, action="delete", type="Contact", id=bob)
    clock.advance(60)
    do(store, GOOD, action="delete", type="Organization", id=org)  # Bob's link now points at a deleted entity
    before = event_count(store)

    with pytest.raises(ValidationFailed) as by_rollback:
        do(store, ADMIN, action="rollback", type="Contact", id=bob, toVersion=1)
    reverted = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")

    assert org in by_rollback.value.message and "deleted" in by_rollback.value.message
    assert [c["id"] for c in reverted["conflicts"]] == [bob]
    assert reverted["events"] == []
    assert event_count(store) == before


def test_a_rollback_or_revert_that_leaves_an_entity_deleted_ignores_its_links_to_entities_deleted_since(
    store: Store, clock: Any
) -> None:
    org, bob = acme_and_bob(store)
    do(store, GOOD, action="delete", type="Contact", id=bob)  # v2: deleted, still pointing at Acme
    clock.advance(60)
    do(store, ROGUE, action="rollback", type="Contact", id=bob, toVersion=1)  # v3: ROGUE brings Bob back
    do(store, ROGUE, action="update", type="Contact", id=bob, data={"organization": None})  # v4
    do(store, GOOD, action="delete", type="Organization", id=org)

    reverted = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")
    assert reverted["conflicts"] == []
    assert [e["version"] for e in reverted["events"]] == [5]
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", bob)
    rolled = do(store, ADMIN, action="rollback", type="Contact", id=bob, toVersion=2)  # deleted again: no link is live
    assert rolled["entity"]["$version"] == 6 and rolled["entity"]["$deletedAt"] is not None
    assert store.verify(TENANT)["ok"] is True


def test_revert_refuses_an_until_before_its_since(store: Store, clock: Any) -> None:
    setup_rogue(store, clock)
    before = event_count(store)
    with pytest.raises(ValidationFailed) as exc:
        do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-16", until="2026-01-15")
    assert "before 'since'" in exc.value.message
    assert event_count(store) == before


def test_reverting_twice_changes_nothing_the_second_time(store: Store, clock: Any) -> None:
    setup_rogue(store, clock)
    do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z")
    before = event_count(store)
    again = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T11:00:00Z")
    assert again["events"] == []
    assert again["reverted"] == []
    assert event_count(store) == before


def test_a_revert_restores_unique_values_swapped_inside_its_window(store: Store, clock: Any) -> None:
    a = do(store, GOOD, action="create", type="Contact", data={"name": "A", "email": "x@a.io"})["entity"]["$id"]
    c = do(store, GOOD, action="create", type="Contact", data={"name": "C", "email": "w@a.io"})["entity"]["$id"]
    clock.advance(60)
    do(store, ROGUE, action="update", type="Contact", id=a, data={"email": "z@a.io"})
    do(store, ROGUE, action="update", type="Contact", id=c, data={"email": "x@a.io"})  # a's old value
    clock.advance(60)
    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")
    assert result["conflicts"] == []
    assert store.get(TENANT, "Contact", a)["email"] == "x@a.io"
    assert store.get(TENANT, "Contact", c)["email"] == "w@a.io"
    assert store.verify(TENANT)["ok"] is True


def emails(store: Store, *ids: str) -> list[str]:
    return [store.get(TENANT, "Contact", i)["email"] for i in ids]


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_revert_restores_unique_values_exchanged_inside_its_window(store: Store, clock: Any, dry_run: bool) -> None:
    a = do(store, GOOD, action="create", type="Contact", data={"name": "A", "email": "x@a.io"})["entity"]["$id"]
    c = do(store, GOOD, action="create", type="Contact", data={"name": "C", "email": "y@a.io"})["entity"]["$id"]
    clock.advance(60)
    do(store, ROGUE, action="update", type="Contact", id=a, data={"email": "t@a.io"})
    do(store, ROGUE, action="update", type="Contact", id=c, data={"email": "x@a.io"})
    do(store, ROGUE, action="update", type="Contact", id=a, data={"email": "y@a.io"})  # a and c exchanged
    spam = do(store, ROGUE, action="create", type="Contact", data={"name": "Spam"})["entity"]["$id"]
    clock.advance(60)
    before = event_count(store)

    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", dryRun=dry_run)

    assert result["conflicts"] == []
    assert sorted(ev["target"] for ev in result["events"]) == sorted([a, c, spam])
    assert {e["$id"]: e.get("email") for e in result["reverted"]} == {a: "x@a.io", c: "y@a.io", spam: None}
    if dry_run:
        assert event_count(store) == before
        assert emails(store, a, c) == ["y@a.io", "x@a.io"]
    else:
        assert emails(store, a, c) == ["x@a.io", "y@a.io"]
        assert [e["email"] for e in store.find(TENANT, "Contact", filter={"email": "x@a.io"})["results"]] == ["x@a.io"]
        assert store.verify(TENANT)["ok"] is True


def test_a_revert_restores_unique_values_rotated_among_three_entities(store: Store, clock: Any) -> None:
    ids = [
        do(store, GOOD, action="create", type="Contact", data={"name": n, "email": f"{n}@a.io"})["entity"]["$id"]
        for n in "abc"
    ]
    clock.advance(60)
    do(store, ROGUE, operations=[
        {"action": "update", "type": "Contact", "id": ids[0], "data": {"email": "tmp@a.io"}},
        {"action": "update", "type": "Contact", "id": ids[2], "data": {"email": "a@a.io"}},
        {"action": "update", "type": "Contact", "id": ids[1], "data": {"email": "c@a.io"}},
        {"action": "update", "type": "Contact", "id": ids[0], "data": {"email": "b@a.io"}},
    ])  # fmt: skip
    clock.advance(60)

    result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z")

    assert result["conflicts"] == []
    assert emails(store, *ids) == ["a@a.io", "b@a.io", "c@a.io"]
    assert store.verify(TENANT)["ok"] is True


def test_a_revert_writes_none_of_an_exchange_that_one_side_cannot_complete(tmp_path: Any, clock: Any) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string##", "tag": "string##"'), clock=clock) as store:

        def widget(**data: Any) -> str:
            return str(store.do(TENANT, GOOD, {"action": "create", "type": "Widget", "data": data})["entity"]["$id"])

        a, c = widget(name="A", code="1", tag="p"), widget(name="C", code="2", tag="q")
        clock.advance(60)
        store.do(TENANT, ROGUE, {"operations": [
            {"action": "update", "type": "Widget", "id": a, "data": {"code": "0", "tag": "r"}},
            {"action": "update", "type": "Widget", "id": c, "data": {"code": "1"}},
            {"action": "update", "type": "Widget", "id": a, "data": {"code": "2"}},
        ]})  # fmt: skip
        clock.advance(60)
        d = widget(name="D", tag="p")  # a's old tag, taken by an entity the revert leaves alone
        clock.advance(60)
        before = event_count(store)

        result = store.do(TENANT, ADMIN, {"action": "revert", "actor": ROGUE, "since": "2026-01-15T10:00:30Z"})

        assert sorted(conflict["id"] for conflict in result["conflicts"]) == sorted([a, c])
        why = {conflict["id"]: conflict for conflict in result["conflicts"]}
        assert why[a]["existing"] == d  # the real obstacle, not the exchange
        assert why[c]["exchangesWith"] == [a]
        assert a in why[c]["hint"]
        assert result["events"] == []
        assert event_count(store) == before
        codes = [store.get(TENANT, "Widget", i)["code"] for i in (a, c)]
        assert codes == ["2", "1"]
        assert store.find(TENANT, "Widget", filter={"code": "1"})["total"] == 1
        assert store.verify(TENANT)["ok"] is True


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_revert_reports_an_exchange_whose_earlier_states_would_hold_one_value_twice(
    tmp_path: Any, clock: Any, dry_run: bool
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string##", "tag": "string##"'), clock=clock) as store:

        def do_(who: str, **request: Any) -> dict[str, Any]:
            return store.do(TENANT, who, request)

        y = do_(GOOD, action="create", type="Widget", data={"name": "Y", "code": "v", "tag": "q"})["entity"]["$id"]
        x = do_(GOOD, action="create", type="Widget", data={"name": "X", "code": "x0", "tag": "p"})["entity"]["$id"]
        clock.advance(60)
        do_(ROGUE, action="update", type="Widget", id=y, data={"code": "w"})  # Y lets go of v
        do_(GOOD, action="update", type="Widget", id=x, data={"code": "v"})  # X takes v, before the rogue touches X
        do_(ROGUE, action="update", type="Widget", id=x, data={"tag": "r"})
        do_(ROGUE, action="update", type="Widget", id=y, data={"tag": "p"})  # Y takes X's old tag
        spam = do_(ROGUE, action="create", type="Widget", data={"name": "Spam"})["entity"]["$id"]
        clock.advance(60)
        before = event_count(store)

        result = do_(ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", dryRun=dry_run)

        # Y's earlier state has code v, which X keeps: they cannot both come back, and neither does.
        assert {c["id"]: c["exchangesWith"] for c in result["conflicts"]} == {x: [y], y: [x]}
        assert all(c["field"] == "code" for c in result["conflicts"])
        assert [e["target"] for e in result["events"]] == [spam]
        assert event_count(store) == before + (0 if dry_run else 1)
        assert [store.get(TENANT, "Widget", i)["code"] for i in (x, y)] == ["v", "w"]
        assert store.verify(TENANT)["ok"] is True


def test_a_revert_restores_an_entity_that_exchanged_values_with_two_others(tmp_path: Any, clock: Any) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string##", "tag": "string##"'), clock=clock) as store:

        def widget(**data: Any) -> str:
            return str(store.do(TENANT, GOOD, {"action": "create", "type": "Widget", "data": data})["entity"]["$id"])

        a, b, c = widget(name="A", code="a", tag="ta"), widget(name="B", code="b"), widget(name="C", tag="tc")
        clock.advance(60)
        store.do(
            TENANT,
            ROGUE,
            {
                "operations": [
                    {"action": "update", "type": "Widget", "id": a, "data": {"code": "tmp", "tag": "ttmp"}},
                    {"action": "update", "type": "Widget", "id": b, "data": {"code": "a"}},
                    {"action": "update", "type": "Widget", "id": c, "data": {"tag": "ta"}},
                    {"action": "update", "type": "Widget", "id": a, "data": {"code": "b", "tag": "tc"}},
                ]
            },
        )  # fmt: skip  (A took B's code and C's tag; B and C took A's)
        clock.advance(60)

        result = store.do(TENANT, ADMIN, {"action": "revert", "actor": ROGUE, "since": "2026-01-15T10:00:30Z"})

        assert result["conflicts"] == []
        got = [store.get(TENANT, "Widget", i) for i in (a, b, c)]
        assert [(w.get("code"), w.get("tag")) for w in got] == [("a", "ta"), ("b", None), (None, "tc")]
        assert store.verify(TENANT)["ok"] is True


def test_a_revert_whose_every_entity_is_blocked_reports_them_all_within_the_request_budget(
    store: Store, clock: Any
) -> None:
    org, _ = acme_and_bob(store)
    big = "x" * 900_000  # 12 of them fit the request budget; passes tried once per blocked entity did not
    contacts = [
        do(store, GOOD, action="create", type="Contact", data={"name": f"C{i}", "title": big, "organization": org})[
            "entity"
        ]["$id"]
        for i in range(12)
    ]
    clock.advance(60)
    for contact in contacts:
        do(store, ROGUE, action="update", type="Contact", id=contact, data={"organization": None})
    do(store, GOOD, action="delete", type="Organization", id=org)
    clock.advance(60)
    before = event_count(store)
    for dry_run in (True, False):
        result = do(store, ADMIN, action="revert", actor=ROGUE, since="2026-01-15T10:00:30Z", dryRun=dry_run)
        assert [c["id"] for c in result["conflicts"]] == contacts
        assert result["events"] == []
    assert event_count(store) == before
