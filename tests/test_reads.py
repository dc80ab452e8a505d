"""Reading entities back: the current state, the state asOf a time or at a version, includes, projections, events."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import AGENT, EPOCH, TENANT, advance_to, create, us, write

from server.errors import InvalidAsOf, InvalidId, NotFound, ValidationFailed
from server.store import Store

BOB = "user_bob"


def iso(micros: int) -> str:
    return (EPOCH + timedelta(microseconds=micros)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fields(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if not k.startswith("$")}


@pytest.fixture
def history(store: Store, clock: Any) -> dict[str, Any]:
    """Alice: created 10:00, title CTO at 10:01, title CEO at 10:02 (2026-01-15, UTC)."""
    advance_to(clock, "2026-01-15T10:00:00Z")
    alice = create(store, "Contact", name="Alice", email="alice@acme.io", title="Engineer")
    advance_to(clock, "2026-01-15T10:01:00Z")
    v2 = write(store, "update", "Contact", alice["$id"], title="CTO")
    advance_to(clock, "2026-01-15T10:02:00Z")
    v3 = write(store, "update", "Contact", alice["$id"], title="CEO")
    return {"id": alice["$id"], "v1": alice, "v2": v2["entity"], "v3": v3["entity"], "v2_event": v2["events"][0]}


# ---- current state --------------------------------------------------------------------------


def test_get_returns_the_current_state_with_its_meta_fields(store: Store, history: dict[str, Any]) -> None:
    got = store.get(TENANT, "Contact", history["id"])

    assert got == history["v3"]
    assert got["title"] == "CEO"
    assert got["$version"] == 3
    assert got["$createdAt"] == "2026-01-15T10:00:00.000000Z"
    assert got["$updatedAt"] == "2026-01-15T10:02:00.000000Z"
    assert got["$createdBy"] == AGENT and got["$updatedBy"] == AGENT


def test_get_of_a_deleted_entity_is_not_found_saying_when_and_by_whom(store: Store, clock: Any) -> None:
    alice = create(store, "Contact", name="Alice")
    advance_to(clock, "2026-01-15T11:00:00Z")
    write(store, "delete", "Contact", alice["$id"], actor=BOB)

    with pytest.raises(NotFound) as err:
        store.get(TENANT, "Contact", alice["$id"])

    assert "2026-01-15T11:00:00.000000Z" in err.value.message
    assert BOB in err.value.message


def test_get_of_an_id_nobody_created_is_not_found(store: Store) -> None:
    create(store, "Contact", name="Alice")

    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", "contact_AAAAAAAAAAAA")


def test_get_with_an_id_of_another_noun_is_invalid_id(store: Store) -> None:
    org = create(store, "Organization", name="Acme")

    with pytest.raises(InvalidId):
        store.get(TENANT, "Contact", org["$id"])


# ---- asOf ------------------------------------------------------------------------------------


def test_get_as_of_a_time_between_events_returns_the_state_then(store: Store, history: dict[str, Any]) -> None:
    at_start = store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T10:00:30Z")
    in_middle = store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T10:01:59.999999Z")
    later = store.get(TENANT, "Contact", history["id"], as_of="2026-01-16T00:00:00Z")

    assert at_start == history["v1"]
    assert in_middle == history["v2"]
    assert later == history["v3"]


def test_get_as_of_an_events_own_timestamp_includes_that_event(store: Store, history: dict[str, Any]) -> None:
    stamp = history["v2_event"]["timestamp"]
    just_before = iso(us(stamp) - 1)

    assert store.get(TENANT, "Contact", history["id"], as_of=stamp) == history["v2"]
    assert store.get(TENANT, "Contact", history["id"], as_of=just_before) == history["v1"]


def test_get_as_of_before_creation_is_not_found_saying_when_it_was_created(
    store: Store, history: dict[str, Any]
) -> None:
    with pytest.raises(NotFound) as err:
        store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T09:59:59.999999Z")

    assert "2026-01-15T10:00:00.000000Z" in err.value.message
    assert "creat" in err.value.message


def test_get_as_of_after_deletion_is_not_found_but_before_it_shows_the_entity(
    store: Store, clock: Any, history: dict[str, Any]
) -> None:
    advance_to(clock, "2026-01-15T10:05:00Z")
    write(store, "delete", "Contact", history["id"], actor=BOB)

    with pytest.raises(NotFound) as err:
        store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T10:05:00Z")
    assert "2026-01-15T10:05:00.000000Z" in err.value.message
    assert store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T10:04:59Z") == history["v3"]


def test_a_date_only_as_of_means_the_start_of_that_day_in_utc(store: Store, clock: Any) -> None:
    advance_to(clock, "2026-01-15T10:00:00Z")
    alice = create(store, "Contact", name="Alice", title="Engineer")
    advance_to(clock, "2026-01-16T00:00:00Z")  # exactly the start of the 16th
    midnight = write(store, "update", "Contact", alice["$id"], title="CTO")["entity"]
    advance_to(clock, "2026-01-16T00:00:00.000001Z")
    write(store, "update", "Contact", alice["$id"], title="CEO")

    assert store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-16") == midnight
    assert store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-17")["title"] == "CEO"
    with pytest.raises(NotFound):
        store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15")  # 00:00Z, before 10:00Z


@pytest.mark.parametrize(
    ("as_of", "expected"),
    [
        ("2026-01-15T12:00:30+02:00", "v1"),  # 10:00:30Z
        ("2026-01-15T12:01:30+02:00", "v2"),  # 10:01:30Z
        ("2026-01-15T05:01:30-05:00", "v2"),  # 10:01:30Z
        ("2026-01-15T10:01:30.000000+00:00", "v2"),
        ("2026-01-15t10:00:30z", "v1"),
        ("2026-01-15T10:00:60Z", "v1"),  # a leap second: the last microsecond of its minute, before v2 at 10:01
        ("2026-01-15T15:31:60+05:30", "v2"),  # 10:01:60Z
        ("2026-01-15T10:01:30." + "0" * 40 + "Z", "v2"),  # any number of fractional digits
    ],
)
def test_as_of_accepts_any_rfc3339_offset(store: Store, history: dict[str, Any], as_of: str, expected: str) -> None:
    assert store.get(TENANT, "Contact", history["id"], as_of=as_of) == history[expected]


@pytest.mark.parametrize(
    "as_of",
    ["yesterday", "2026-13-01", "2026-01-15T10:00:00", "2026-02-30", "15/01/2026", "2026-01-15T25:00:00Z", 12345],
)
def test_a_garbage_as_of_is_invalid_as_of(store: Store, history: dict[str, Any], as_of: Any) -> None:
    with pytest.raises(InvalidAsOf) as err:
        store.get(TENANT, "Contact", history["id"], as_of=as_of)

    assert err.value.code == "invalid_as_of"
    assert "2026-01-16" in err.value.hint or "RFC 3339" in err.value.message


def test_a_time_may_have_ascii_spaces_around_it_but_no_other_spaces(store: Store, history: dict[str, Any]) -> None:
    assert store.get(TENANT, "Contact", history["id"], as_of=" 2026-01-15T10:01:30Z\n") == history["v2"]
    for spaced in ("2026-01-15T10:01:30Z\u3000", "\xa02026-01-16"):
        with pytest.raises(InvalidAsOf):
            store.get(TENANT, "Contact", history["id"], as_of=spaced)


def test_an_as_of_before_year_one_in_utc_is_refused_not_crashed(store: Store, history: dict[str, Any]) -> None:
    # 0001-01-01T00:00:00+01:00 is 0000-12-31T23:00:00Z: before anything, and outside the calendar the API shows.
    with pytest.raises((NotFound, InvalidAsOf)):
        store.get(TENANT, "Contact", history["id"], as_of="0001-01-01T00:00:00+01:00")


def test_an_as_of_after_year_9999_in_utc_is_answered_not_crashed(store: Store, history: dict[str, Any]) -> None:
    # 9999-12-31T23:59:59-01:00 is 10000-01-01T00:59:59Z: later than every event.
    try:
        got = store.get(TENANT, "Contact", history["id"], as_of="9999-12-31T23:59:59-01:00")
    except InvalidAsOf:
        return
    assert got == history["v3"]


# ---- versions --------------------------------------------------------------------------------


def test_get_version_n_returns_the_state_right_after_that_version(store: Store, history: dict[str, Any]) -> None:
    for n in (1, 2, 3):
        assert store.get(TENANT, "Contact", history["id"], version=n) == history[f"v{n}"]


def test_get_version_of_a_deleted_entity_still_returns_its_past_versions(store: Store, history: dict[str, Any]) -> None:
    write(store, "delete", "Contact", history["id"])

    assert store.get(TENANT, "Contact", history["id"], version=2) == history["v2"]
    deletion = store.get(TENANT, "Contact", history["id"], version=4)
    assert deletion["$deletedBy"] == AGENT and deletion["name"] == history["v2"]["name"]


def test_a_version_beyond_the_last_is_not_found_naming_the_range(store: Store, history: dict[str, Any]) -> None:
    with pytest.raises(NotFound) as err:
        store.get(TENANT, "Contact", history["id"], version=4)

    assert "1 to 3" in err.value.message


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True])
def test_a_version_that_is_not_a_positive_whole_number_is_refused(
    store: Store, history: dict[str, Any], version: Any
) -> None:
    with pytest.raises(ValidationFailed):
        store.get(TENANT, "Contact", history["id"], version=version)


def test_as_of_and_version_together_are_refused(store: Store, history: dict[str, Any]) -> None:
    with pytest.raises(ValidationFailed) as err:
        store.get(TENANT, "Contact", history["id"], as_of="2026-01-15T10:01:30Z", version=1)

    assert "asOf" in err.value.message and "version" in err.value.message


# ---- include and fields ----------------------------------------------------------------------


def test_include_replaces_a_forward_relationship_id_by_the_entity(store: Store) -> None:
    org = create(store, "Organization", name="Acme", industry="Software")
    alice = create(store, "Contact", name="Alice", organization=org["$id"])

    got = store.get(TENANT, "Contact", alice["$id"], include=["organization"])

    assert got["organization"] == org
    assert store.get(TENANT, "Contact", alice["$id"])["organization"] == org["$id"]


def test_include_lists_a_reverse_relationship(store: Store) -> None:
    acme = create(store, "Organization", name="Acme")
    globex = create(store, "Organization", name="Globex")
    alice = create(store, "Contact", name="Alice", organization=acme["$id"])
    bob = create(store, "Contact", name="Bob", organization=acme["$id"])
    gone = create(store, "Contact", name="Gone", organization=acme["$id"])
    create(store, "Contact", name="Carol", organization=globex["$id"])
    create(store, "Contact", name="Dan")
    write(store, "delete", "Contact", gone["$id"])

    got = store.get(TENANT, "Organization", acme["$id"], include=["contacts"])

    assert sorted(c["$id"] for c in got["contacts"]) == sorted([alice["$id"], bob["$id"]])
    assert {c["name"] for c in got["contacts"]} == {"Alice", "Bob"}
    assert got["name"] == "Acme"


def test_a_relationship_named_many_times_in_include_is_expanded_once(store: Store) -> None:
    from contextlib import closing

    from server.store import queries
    from server.store.sqlite import connect
    from server.store.tenants import tenant_path

    acme = create(store, "Organization", name="Acme")
    create(store, "Contact", name="Alice", organization=acme["$id"])
    noun = store.schemas["Organization"]

    def statements(include: list[str]) -> tuple[int, dict[str, Any]]:
        ran: list[str] = []
        with closing(connect(tenant_path(store.data_dir, TENANT))) as conn:
            conn.set_trace_callback(ran.append)
            got = queries.get_entity(conn, store.schemas, noun, acme["$id"], include=include)
        return len(ran), got

    once, repeated = statements(["contacts"]), statements(["contacts"] * 50)
    assert repeated == once


def test_a_reverse_include_past_100_entities_says_it_is_cut_and_how_to_read_the_rest(store: Store) -> None:
    acme = create(store, "Organization", name="Acme")
    small = create(store, "Organization", name="Small")
    create(store, "Contact", name="Only", organization=small["$id"])
    store.do(
        TENANT,
        "agent_bulk",
        {"operations": [{"action": "create", "type": "Contact", "data": {"name": f"C{i}", "organization": acme["$id"]}} for i in range(105)]},
    )  # fmt: skip

    got = store.get(TENANT, "Organization", acme["$id"], include=["contacts"])
    whole = store.get(TENANT, "Organization", small["$id"], include=["contacts"])

    assert len(got["contacts"]) == 100
    cut = got["$includeTruncated"]["contacts"]
    assert (cut["shown"], cut["total"]) == (100, 105)
    rest = store.find(
        TENANT, cut["search"]["type"], filter=cut["search"]["filter"], sort=cut["search"]["sort"], limit=100
    )
    assert [c["$id"] for c in rest["results"]] == [c["$id"] for c in got["contacts"]]
    assert "$includeTruncated" not in whole
    assert store.get(TENANT, "Organization", acme["$id"], include=["contacts"], fields=["name"])["$includeTruncated"]


def test_a_reverse_include_cut_in_the_past_names_a_search_of_that_same_past(store: Store, clock: Any) -> None:
    acme = create(store, "Organization", name="Acme")
    many = [
        {"action": "create", "type": "Contact", "data": {"name": f"C{i}", "organization": acme["$id"]}}
        for i in range(101)
    ]
    store.do(TENANT, "agent_bulk", {"operations": many})
    then = store.events(TENANT, sort="-seq", limit=1)["results"][0]["timestamp"]
    clock.advance(60)
    store.do(TENANT, "agent_bulk", {"operations": many[:10]})  # ten more, later

    cut = store.get(TENANT, "Organization", acme["$id"], as_of=then, include=["contacts"])["$includeTruncated"][
        "contacts"
    ]
    search = cut["search"]
    rest = store.find(
        TENANT, search["type"], filter=search["filter"], sort=search["sort"], as_of=search["asOf"], limit=100
    )

    assert cut["total"] == 101 and rest["total"] == 101


def test_include_as_of_shows_related_entities_as_they_were_then(store: Store, clock: Any) -> None:
    advance_to(clock, "2026-01-15T10:00:00Z")
    org = create(store, "Organization", name="Acme")
    alice = create(store, "Contact", name="Alice", organization=org["$id"])
    advance_to(clock, "2026-01-15T11:00:00Z")
    write(store, "update", "Organization", org["$id"], name="Acme Corp")
    create(store, "Contact", name="Bob", organization=org["$id"])

    then = store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:30:00Z", include=["organization"])
    org_then = store.get(TENANT, "Organization", org["$id"], as_of="2026-01-15T10:30:00Z", include=["contacts"])

    assert then["organization"]["name"] == "Acme"
    assert [c["name"] for c in org_then["contacts"]] == ["Alice"]


def test_include_of_an_unknown_relationship_is_refused_naming_the_valid_ones(store: Store) -> None:
    alice = create(store, "Contact", name="Alice")

    with pytest.raises(ValidationFailed) as err:
        store.get(TENANT, "Contact", alice["$id"], include=["friends"])

    assert "friends" in err.value.message
    assert "organization" in err.value.hint


def test_fields_projection_keeps_id_type_and_version(store: Store, history: dict[str, Any]) -> None:
    got = store.get(TENANT, "Contact", history["id"], fields=["title", "email"])

    assert got == {
        "$id": history["id"],
        "$type": "Contact",
        "$version": 3,
        "title": "CEO",
        "email": "alice@acme.io",
    }


def test_fields_keep_what_include_expands(store: Store) -> None:
    acme = create(store, "Organization", name="Acme")
    alice = create(store, "Contact", name="Alice", title="CEO", organization=acme["$id"])

    got = store.get(TENANT, "Organization", acme["$id"], include=["contacts"], fields=["name"])
    contact = store.get(TENANT, "Contact", alice["$id"], include=["organization"], fields=["title"])

    assert got == {"$id": acme["$id"], "$type": "Organization", "$version": 1, "name": "Acme", "contacts": [alice]}
    assert contact["organization"] == acme and contact["title"] == "CEO" and "name" not in contact


def test_fields_naming_a_reverse_relationship_without_include_is_refused_with_the_include_to_pass(
    store: Store,
) -> None:
    acme = create(store, "Organization", name="Acme")
    alice = create(store, "Contact", name="Alice", organization=acme["$id"])

    with pytest.raises(ValidationFailed) as err:
        store.get(TENANT, "Organization", acme["$id"], fields=["name", "contacts"])
    both = store.get(TENANT, "Organization", acme["$id"], include=["contacts"], fields=["name", "contacts"])

    assert "contacts" in err.value.message and '"include": ["contacts"]' in err.value.hint
    assert both["contacts"] == [alice]


def test_fields_may_name_meta_fields_but_not_unknown_dollar_names(store: Store, history: dict[str, Any]) -> None:
    got = store.get(TENANT, "Contact", history["id"], fields=["$createdBy", "title"])
    with pytest.raises(ValidationFailed) as err:
        store.get(TENANT, "Contact", history["id"], fields=["$nonsense"])

    assert set(got) == {"$id", "$type", "$version", "$createdBy", "title"}
    assert "$nonsense" in err.value.message and "$createdBy" in err.value.hint


def test_fields_projection_applies_to_past_versions(store: Store, history: dict[str, Any]) -> None:
    got = store.get(TENANT, "Contact", history["id"], version=2, fields=["title"])

    assert got == {"$id": history["id"], "$type": "Contact", "$version": 2, "title": "CTO"}


# ---- single events ---------------------------------------------------------------------------


def test_event_by_id_returns_that_event(store: Store, history: dict[str, Any]) -> None:
    event = history["v2_event"]

    got = store.event(TENANT, event["id"])

    assert got == event
    assert got["type"] == "Contact.Updated"
    assert got["changes"] == {"title": {"from": "Engineer", "to": "CTO"}}


@pytest.mark.parametrize("bad", ["evt_", "evt_!!!!!!!!!!!", "contact_AAAAAAAAAAAA", "", "evt AAAAAAAAAAAA", 17])
def test_a_malformed_event_id_is_invalid_id(store: Store, history: dict[str, Any], bad: Any) -> None:
    with pytest.raises(InvalidId):
        store.event(TENANT, bad)


def test_an_unknown_well_formed_event_id_is_not_found(store: Store, history: dict[str, Any]) -> None:
    with pytest.raises(NotFound):
        store.event(TENANT, "evt_AAAAAAAAAAAA")


def test_reads_see_the_fields_of_each_version(store: Store, history: dict[str, Any]) -> None:
    titles = [fields(store.get(TENANT, "Contact", history["id"], version=n))["title"] for n in (1, 2, 3)]

    assert titles == ["Engineer", "CTO", "CEO"]


# ---- a tenant with no file yet ---------------------------------------------------------------------


def test_reads_of_a_tenant_with_no_file_answer_as_an_empty_tenant_and_make_no_file(store: Store) -> None:
    from server.errors import InvalidCursor, InvalidFilter
    from server.store.tenants import tenant_path

    path = tenant_path(store.data_dir, "nobody")
    found = store.find("nobody", "Contact", {"name": "Ada"})
    events = store.events("nobody", {"type": "Contact.*"})
    with pytest.raises(NotFound):
        store.get("nobody", "Contact", "contact_abcdefghij")
    with pytest.raises(NotFound):
        store.event("nobody", "evt_abcdefghijkl")
    with pytest.raises(InvalidFilter):  # arguments are still checked
        store.find("nobody", "Contact", {"nonsense": 1})
    with pytest.raises(InvalidCursor):
        store.find("nobody", "Contact", cursor=store.find(TENANT, "Contact", limit=1)["cursor"] or "x")

    assert (found["results"], found["total"], found["hasMore"]) == ([], 0, False)
    assert (events["results"], events["total"]) == ([], 0)
    assert not path.exists() and "nobody" not in store.tenants()
    store.do("nobody", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})  # a write makes it
    assert path.exists() and store.find("nobody", "Contact")["total"] == 1


def test_a_dry_run_on_a_tenant_with_no_file_shows_its_result_and_makes_no_file(store: Store) -> None:
    from server.store.tenants import lock_path, tenant_path

    path = tenant_path(store.data_dir, "nobody")
    create = {"action": "create", "type": "Contact", "data": {"name": "Ada", "email": "ada@x.io"}}
    one = store.do("nobody", AGENT, {**create, "dryRun": True})
    batch = store.do("nobody", AGENT, {"operations": [create, {**create, "data": {"name": "Bo"}}], "dryRun": True})
    with pytest.raises(ValidationFailed):  # still checked as a write to an empty tenant
        store.do("nobody", AGENT, {"operations": [create, create], "dryRun": True})  # the email twice

    assert one["dryRun"] is True and one["entity"]["name"] == "Ada" and one["entity"]["$version"] == 1
    assert [e["seq"] for e in one["events"]] == [1]
    assert [r["entity"]["name"] for r in batch["results"]] == ["Ada", "Bo"]
    assert not path.exists() and not lock_path(path).exists() and "nobody" not in store.tenants()
    written = store.do("nobody", AGENT, create)  # the real write makes it, as the dry run showed
    assert written["events"][0]["seq"] == 1 and written["entity"]["name"] == "Ada" and path.exists()
