"""BEFORE and AFTER hooks: changing and rejecting writes, patterns, reactions with causedBy, loading modules."""

from __future__ import annotations

import logging
import re
import subprocess
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from server.errors import HookFailed, ValidationFailed
from server.schema import SchemaSet
from server.store import AfterContext, BeforeContext, HookRejected, Hooks, Store

TENANT = "acme"
AGENT = "agent_mR4nVkTw"


@pytest.fixture
def hooks() -> Hooks:
    return Hooks()


@pytest.fixture
def open_store(tmp_path: Path, schemas: SchemaSet, clock: Any) -> Iterator[Callable[[Hooks], Store]]:
    """Opens a store on real SQLite with the hooks a test registered; closed after the test."""
    opened: list[Store] = []

    def make(hooks: Hooks) -> Store:
        store = Store(tmp_path / "hooked", schemas, hooks=hooks, clock=clock)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def create(store: Store, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    return store.do(TENANT, AGENT, {"action": "create", "type": type_, "data": data})


def event_count(store: Store) -> int:
    total: int = store.events(TENANT)["total"]
    return total


# ---- BEFORE ---------------------------------------------------------------------------------------


def test_a_before_hook_can_change_the_data_in_place(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Contact.create")
    def default_title(ctx: BeforeContext) -> None:
        ctx.data.setdefault("title", "Founder")

    hooked = open_store(hooks)
    result = create(hooked, "Contact", {"name": "Alice"})
    assert result["entity"]["title"] == "Founder"
    assert result["events"][0]["data"]["title"] == "Founder"
    assert hooked.get(TENANT, "Contact", result["entity"]["$id"])["title"] == "Founder"


def test_a_before_hook_can_return_new_data(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Contact.update")
    def shout(ctx: BeforeContext) -> dict[str, Any]:
        return {k: v.upper() if isinstance(v, str) else v for k, v in ctx.data.items()}

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]
    result = hooked.do(
        TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "cto"}}
    )
    assert result["entity"]["title"] == "CTO"
    assert result["events"][0]["data"] == {"title": "null -> CTO"}


def test_before_hooks_run_in_registration_order(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Contact.create")
    def first(ctx: BeforeContext) -> None:
        ctx.data["title"] = "A"

    @hooks.before("Contact.*")
    def second(ctx: BeforeContext) -> None:
        ctx.data["title"] = ctx.data.get("title", "") + "B"

    hooked = open_store(hooks)
    assert create(hooked, "Contact", {"name": "Alice"})["entity"]["title"] == "AB"


def test_a_before_hook_sees_the_current_state_actor_and_reason(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    seen: list[BeforeContext] = []

    @hooks.before("Contact.qualify")
    def look(ctx: BeforeContext) -> None:
        seen.append(ctx)

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]
    hooked.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"], "reason": "hot lead"})
    (ctx,) = seen
    assert ctx.noun == "Contact"
    assert ctx.action == "qualify"
    assert ctx.id == alice["$id"]
    assert ctx.actor == AGENT
    assert ctx.reason == "hot lead"
    assert ctx.current is not None
    assert ctx.current["stage"] == "Lead"
    assert ctx.current["$version"] == 1
    assert ctx.data["stage"] == "Qualified"


def test_a_before_hook_can_reject_with_its_message_and_nothing_is_written(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Deal.create")
    def approval(ctx: BeforeContext) -> None:
        if ctx.data.get("value", 0) > 1_000_000:
            raise HookRejected("deals above 1M need a human approval")

    hooked = open_store(hooks)
    with pytest.raises(ValidationFailed) as exc:
        create(hooked, "Deal", {"name": "Whale", "value": 5_000_000})
    assert exc.value.code == "validation_error"
    assert "deals above 1M need a human approval" in exc.value.message
    assert event_count(hooked) == 0
    assert hooked.find(TENANT, "Deal")["total"] == 0
    small = create(hooked, "Deal", {"name": "Minnow", "value": 500})
    assert small["entity"]["value"] == 500
    assert event_count(hooked) == 1


def test_a_rejected_update_leaves_the_entity_alone(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Deal.update")
    def no_discounts(ctx: BeforeContext) -> None:
        assert ctx.current is not None
        if ctx.data.get("value", ctx.current["value"]) < ctx.current["value"]:
            raise HookRejected("no discounts")

    hooked = open_store(hooks)
    deal = create(hooked, "Deal", {"name": "D", "value": 100})["entity"]
    with pytest.raises(ValidationFailed) as exc:
        hooked.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 50}})
    assert "no discounts" in exc.value.message
    assert hooked.get(TENANT, "Deal", deal["$id"]) == deal
    assert event_count(hooked) == 1


def test_a_rejection_refuses_the_whole_batch(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Deal.win")
    def never(ctx: BeforeContext) -> None:
        raise HookRejected("wins need a signed contract")

    hooked = open_store(hooks)
    with pytest.raises(ValidationFailed) as exc:
        hooked.do(
            TENANT,
            AGENT,
            {
                "operations": [
                    {"action": "create", "type": "Organization", "data": {"name": "Acme"}},
                    {"action": "create", "type": "Deal", "data": {"name": "D", "value": 1, "organization": "$ref:0"}},
                    {"action": "win", "type": "Deal", "id": "$ref:1"},
                ]
            },
        )
    assert "wins need a signed contract" in exc.value.message
    assert event_count(hooked) == 0


def test_a_before_hook_cannot_set_meta_fields(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.before("Contact.create")
    def sneaky(ctx: BeforeContext) -> None:
        ctx.data["$createdBy"] = "user_root"

    hooked = open_store(hooks)
    with pytest.raises(HookFailed) as refused:
        create(hooked, "Contact", {"name": "Alice"})
    assert "sneaky tried to set a '$' field" in refused.value.message
    assert event_count(hooked) == 0


def test_a_before_hook_that_writes_to_its_own_tenant_is_refused_instead_of_hanging(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.create")
    def writes(ctx: BeforeContext) -> None:
        hooked.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Side"}})

    hooked = open_store(hooks)
    outcome: list[BaseException | None] = []

    def create_alice() -> None:
        try:
            create(hooked, "Contact", {"name": "Alice"})
            outcome.append(None)
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    thread = threading.Thread(target=create_alice, daemon=True)
    thread.start()
    thread.join(30)

    assert not thread.is_alive(), "the write waited for itself"
    assert isinstance(outcome[0], HookFailed) and "failed (validation_error)" in outcome[0].message
    assert event_count(hooked) == 0


def test_before_hooks_of_two_tenants_that_write_to_each_other_are_refused_instead_of_hanging(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    both_inside = threading.Barrier(2, timeout=10)

    @hooks.before("Contact.create")
    def write_to_the_other(ctx: BeforeContext) -> None:
        other = "beta" if ctx.data["name"] == "in acme" else TENANT
        both_inside.wait()  # each tenant's writer is now held by its own hook
        hooked.do(other, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Side"}})

    hooked = open_store(hooks)
    outcome: dict[str, BaseException | None] = {}

    def create_in(tenant: str) -> None:
        try:
            hooked.do(tenant, AGENT, {"action": "create", "type": "Contact", "data": {"name": f"in {tenant}"}})
            outcome[tenant] = None
        except BaseException as exc:  # reported to the test
            outcome[tenant] = exc

    threads = [threading.Thread(target=create_in, args=(t,), daemon=True) for t in (TENANT, "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert not any(thread.is_alive() for thread in threads), "the two writes waited for each other"
    assert all(isinstance(exc, HookFailed) for exc in outcome.values()), outcome
    assert create(hooked, "Organization", {"name": "Later"})["events"]  # the tenants still take writes


def test_a_before_hook_that_writes_during_a_dry_run_on_a_tenant_with_no_file_is_refused_and_writes_nothing(
    hooks: Hooks, open_store: Callable[[Hooks], Store], caplog: pytest.LogCaptureFixture
) -> None:
    from server.store.tenants import tenant_path

    @hooks.before("Contact.create")
    def write_too(ctx: BeforeContext) -> None:
        hooked.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Side"}})

    hooked = open_store(hooks)
    with pytest.raises(HookFailed) as refused:
        hooked.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "dryRun": True})

    assert "failed (validation_error)" in refused.value.message and "would wait for itself" in caplog.text
    assert not tenant_path(hooked.data_dir, TENANT).exists()  # the dry run left no trace, nor did the hook


def test_a_hook_that_dry_runs_another_tenant_then_writes_to_its_own_during_its_dry_run_is_still_refused(
    hooks: Hooks, open_store: Callable[[Hooks], Store], caplog: pytest.LogCaptureFixture
) -> None:
    from server.store.tenants import tenant_path

    @hooks.before("Contact.create")
    def preview_elsewhere_then_write(ctx: BeforeContext) -> None:
        if ctx.data["name"] == "Alice":
            side = {"action": "create", "type": "Organization", "data": {"name": "Side"}}
            hooked.do("other", AGENT, {**side, "dryRun": True})  # refused too: a preview takes the other's writer
            hooked.do(TENANT, AGENT, side)

    hooked = open_store(hooks)
    with pytest.raises(HookFailed) as refused:
        hooked.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}, "dryRun": True})

    assert "failed (validation_error)" in refused.value.message and "would wait for itself" in caplog.text
    assert not tenant_path(hooked.data_dir, TENANT).exists() and not tenant_path(hooked.data_dir, "other").exists()


def find_wrong_noun(ctx: BeforeContext) -> None:
    ctx.find("Nope", {"x": "password=hunter2"})


def find_wrong_field(ctx: BeforeContext) -> None:
    ctx.find("Deal", {"password=hunter2": 1})


def exit_(ctx: BeforeContext) -> None:
    raise SystemExit("password=hunter2")


def interrupt(ctx: BeforeContext) -> None:
    raise KeyboardInterrupt("password=hunter2")


def crash(ctx: BeforeContext) -> None:
    raise RuntimeError("password=hunter2 at db.internal:5432")


@pytest.mark.parametrize(
    ("broken", "named"),
    [
        (crash, "RuntimeError"), (exit_, "SystemExit"), (interrupt, "KeyboardInterrupt"),
        (find_wrong_noun, "invalid_type"), (find_wrong_field, "invalid_filter"),
    ],
)  # fmt: skip
def test_a_before_hook_that_fails_in_any_way_is_an_internal_error_whose_details_stay_in_the_log(
    hooks: Hooks,
    open_store: Callable[[Hooks], Store],
    caplog: pytest.LogCaptureFixture,
    broken: Callable[[BeforeContext], None],
    named: str,
) -> None:
    hooks.before("Contact.create")(broken)

    store = open_store(hooks)
    with caplog.at_level(logging.ERROR), pytest.raises(HookFailed) as exc:
        create(store, "Contact", {"name": "Alice"})
    assert exc.value.to_dict()["error"] == "internal_error"
    assert broken.__name__ in exc.value.message and f"failed ({named})" in exc.value.message
    assert "hunter2" not in exc.value.message + exc.value.hint
    assert "hunter2" in caplog.text
    assert event_count(store) == 0
    assert create(store, "Organization", {"name": "Acme"})["entity"]["$id"]  # the store goes on


@pytest.mark.parametrize("how", ["edit", "return"])
def test_a_before_hook_that_gives_a_delete_data_is_an_internal_error_and_nothing_is_deleted(
    hooks: Hooks, open_store: Callable[[Hooks], Store], how: str
) -> None:
    @hooks.before("Contact.Deleted")
    def archive_instead(ctx: BeforeContext) -> Any:
        if how == "edit":
            ctx.data["status"] = "Inactive"
            return None
        return {"status": "Inactive"}

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice"})["entity"]
    with pytest.raises(HookFailed) as refused:
        store.do(TENANT, AGENT, {"action": "delete", "type": "Contact", "id": alice["$id"]})
    with pytest.raises(HookFailed) as by_revert:  # undoing a create deletes too
        store.do(TENANT, "user_admin", {"action": "revert", "actor": AGENT, "since": "2000-01-01"})

    assert "gave data to a delete" in refused.value.message and "gave data to a delete" in by_revert.value.message
    assert store.get(TENANT, "Contact", alice["$id"]) == alice and event_count(store) == 1


def test_a_before_hook_may_not_change_what_a_verb_sets_nor_return_anything_but_data(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    from server.errors import HookFailed

    @hooks.before("Contact.qualify")
    def contradict(ctx: BeforeContext) -> None:
        ctx.data["stage"] = "Churned"

    @hooks.before("Contact.update")
    def odd(ctx: BeforeContext) -> Any:
        return ["title"]

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice"})["entity"]
    with pytest.raises(HookFailed) as verb:
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    assert "Qualified" in verb.value.message and "Churned" in verb.value.message
    with pytest.raises(HookFailed) as returned:
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}})
    assert "returned a list" in returned.value.message
    assert store.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(store) == 1


def test_a_before_hook_can_search_the_tenant_as_the_write_sees_it_earlier_operations_of_its_batch_included(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.create")
    def one_per_name(ctx: BeforeContext) -> None:
        same = ctx.find("Contact", {"name": ctx.data["name"]}, limit=1)
        if same["total"]:
            raise HookRejected(f"{ctx.data['name']} exists already: {same['results'][0]['$id']}")

    store = open_store(hooks)
    create(store, "Contact", {"name": "Ada"})
    with pytest.raises(ValidationFailed) as single:
        create(store, "Contact", {"name": "Ada"})
    assert "Ada exists already" in single.value.message
    twice = [{"action": "create", "type": "Contact", "data": {"name": "Quinn"}}] * 2
    with pytest.raises(ValidationFailed) as batch:
        store.do(TENANT, AGENT, {"operations": twice})
    assert "operations[1]" in batch.value.message and "Quinn exists already" in batch.value.message
    assert [c["name"] for c in store.find(TENANT, "Contact")["results"]] == ["Ada"]


def test_a_revert_runs_each_entitys_before_hooks_once_even_when_it_tries_again_without_an_entity(
    hooks: Hooks, open_store: Callable[[Hooks], Store], clock: Any
) -> None:
    seen: list[str | None] = []

    @hooks.before("Contact.revert")
    def note(ctx: BeforeContext) -> None:
        seen.append(ctx.id)

    store = open_store(hooks)
    org = create(store, "Organization", {"name": "Acme"})["entity"]["$id"]
    linked = create(store, "Contact", {"name": "C1", "organization": org})["entity"]["$id"]
    plain = create(store, "Contact", {"name": "C2"})["entity"]["$id"]
    clock.advance(60)
    rogue = "agent_rogue"
    store.do(TENANT, rogue, {"action": "update", "type": "Contact", "id": linked, "data": {"organization": None}})
    store.do(TENANT, rogue, {"action": "update", "type": "Contact", "id": plain, "data": {"name": "C2 renamed"}})
    store.do(TENANT, AGENT, {"action": "delete", "type": "Organization", "id": org})  # C1's link cannot come back
    clock.advance(60)
    result = store.do(TENANT, AGENT, {"action": "revert", "actor": rogue, "since": "2026-01-15T10:00:30Z"})
    assert [c["id"] for c in result["conflicts"]] == [linked]
    assert [e["target"] for e in result["events"]] == [plain]
    assert seen == [linked, plain]


def test_a_before_hook_that_edits_the_current_state_it_sees_changes_nothing_but_its_data(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.update")
    def would_be(ctx: BeforeContext) -> None:
        assert ctx.current is not None
        ctx.current.update(ctx.data)  # "look at the would-be state"
        ctx.current["$version"] = 99

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice", "email": "old@x.io"})["entity"]
    updated = store.do(
        TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"email": "new@x.io"}}
    )
    assert updated["entity"]["$version"] == 2
    assert [r["$id"] for r in store.find(TENANT, "Contact", {"email": "new@x.io"})["results"]] == [alice["$id"]]
    assert store.find(TENANT, "Contact", {"email": "old@x.io"})["total"] == 0
    with pytest.raises(ValidationFailed):
        create(store, "Contact", {"name": "Copy", "email": "new@x.io"})
    create(store, "Contact", {"name": "Bob", "email": "old@x.io"})
    assert store.verify(TENANT)["ok"] is True


def test_before_hooks_are_told_whether_the_write_is_a_preview(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    seen: list[bool] = []

    @hooks.before("Contact.create")
    def note(ctx: BeforeContext) -> None:
        seen.append(ctx.dry_run)

    store = open_store(hooks)
    create_op = {"action": "create", "type": "Contact", "data": {"name": "Alice"}}
    store.do(TENANT, AGENT, {**create_op, "dryRun": True})
    store.do(TENANT, AGENT, {"operations": [create_op], "dryRun": True})
    store.do(TENANT, AGENT, create_op)
    store.do(TENANT, AGENT, {"operations": [create_op]})
    assert seen == [True, True, False, False]
    assert event_count(store) == 2


@pytest.mark.parametrize(
    ("action", "spoil"),
    [
        ("create", {"stage": "Boss"}),
        ("update", {"shoeSize": 44}),
        ("qualify", {"organization": "org_nOnExIsT"}),
        ("rollback", {"email": "not an address"}),
    ],
)
def test_data_a_before_hook_makes_invalid_is_an_internal_error_naming_what_is_wrong_and_nothing_is_written(
    hooks: Hooks, open_store: Callable[[Hooks], Store], action: str, spoil: dict[str, Any]
) -> None:
    @hooks.before(f"Contact.{action}")
    def spoiler(ctx: BeforeContext) -> None:
        ctx.data.update(spoil)

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice"})["entity"] if action != "create" else None
    op: dict[str, Any] = {"action": action, "type": "Contact", "data": {"name": "Bob", "title": "CTO"}}
    if alice is not None:
        op["id"] = alice["$id"]
    if action == "rollback":
        store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CEO"}})
        op = {"action": "rollback", "type": "Contact", "id": alice["$id"], "toVersion": 1}
    before = event_count(store)

    with pytest.raises(HookFailed) as refused:
        store.do(TENANT, AGENT, op)
    assert refused.value.to_dict()["error"] == "internal_error"
    assert "BEFORE hooks made this write invalid" in refused.value.message
    assert next(iter(spoil)) in refused.value.message  # what the hook got wrong, for the operator
    assert "fault in the server's hooks" in refused.value.hint
    assert event_count(store) == before
    if alice is not None:
        assert store.get(TENANT, "Contact", alice["$id"])["$version"] == before


def test_a_unique_value_a_before_hook_sets_that_another_entity_holds_is_the_hooks_fault_not_the_agents(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.create")
    def same_email(ctx: BeforeContext) -> None:
        if ctx.data.get("name") == "Bob":
            ctx.data["email"] = "taken@x.com"

    store = open_store(hooks)
    create(store, "Contact", {"name": "Ann", "email": "taken@x.com"})
    with pytest.raises(HookFailed) as hooked:
        create(store, "Contact", {"name": "Bob"})
    assert "BEFORE hooks made this write invalid" in hooked.value.message and "taken@x.com" in hooked.value.message
    with pytest.raises(ValidationFailed) as own:  # the agent's own clash stays its validation_error
        create(store, "Contact", {"name": "Cy", "email": "taken@x.com"})
    assert own.value.code == "validation_error" and "must be unique" in own.value.message
    assert event_count(store) == 1


def test_a_before_hook_that_only_normalizes_the_agents_clashing_value_leaves_the_clash_the_agents(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.create")
    def lowercase(ctx: BeforeContext) -> None:
        if isinstance(ctx.data.get("email"), str):
            ctx.data["email"] = ctx.data["email"].lower()  # as the store lowercases the domain anyway

    store = open_store(hooks)
    create(store, "Contact", {"name": "Ann", "email": "taken@x.com"})
    with pytest.raises(ValidationFailed) as own:
        create(store, "Contact", {"name": "Bob", "email": "taken@X.COM"})
    assert own.value.code == "validation_error" and "must be unique" in own.value.message


def test_a_unique_value_a_rollbacks_before_hook_sets_that_another_entity_holds_is_the_hooks_fault(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.rollback")
    def taken(ctx: BeforeContext) -> None:
        ctx.data["email"] = "taken@x.com"

    store = open_store(hooks)
    create(store, "Contact", {"name": "Ann", "email": "taken@x.com"})
    bob = create(store, "Contact", {"name": "Bob"})["entity"]["$id"]
    store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": bob, "data": {"title": "CTO"}})
    with pytest.raises(HookFailed) as hooked:
        store.do(TENANT, AGENT, {"action": "rollback", "type": "Contact", "id": bob, "toVersion": 1})
    assert "BEFORE hooks made this write invalid" in hooked.value.message and "must be unique" in hooked.value.message
    assert store.get(TENANT, "Contact", bob)["$version"] == 2


def test_the_agents_own_invalid_data_is_still_its_validation_error_when_a_before_hook_changes_it_too(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.before("Contact.create")
    def spoiler(ctx: BeforeContext) -> None:
        ctx.data["stage"] = "Boss"

    store = open_store(hooks)
    with pytest.raises(ValidationFailed) as refused:
        create(store, "Contact", {"name": "Alice", "email": "not an address"})
    assert refused.value.code == "validation_error" and "email" in refused.value.message
    assert "Boss" not in refused.value.message  # what the agent sent is what it is told about
    assert event_count(store) == 0


def test_patterns_match_noun_action_past_tense_and_globs(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    calls: dict[str, list[str]] = {"Deal.*": [], "Deal.win": [], "Deal.Won": [], "*.create": [], "Contact.*": []}
    for pattern, log in calls.items():

        def record(ctx: BeforeContext, log: list[str] = log) -> None:
            log.append(f"{ctx.noun}.{ctx.action}")

        hooks.before(pattern)(record)

    hooked = open_store(hooks)
    deal = create(hooked, "Deal", {"name": "D", "value": 1})["entity"]
    hooked.do(TENANT, AGENT, {"action": "update", "type": "Deal", "id": deal["$id"], "data": {"value": 2}})
    hooked.do(TENANT, AGENT, {"action": "win", "type": "Deal", "id": deal["$id"]})
    create(hooked, "Organization", {"name": "Acme"})

    assert calls["Deal.*"] == ["Deal.create", "Deal.update", "Deal.win"]
    assert calls["Deal.win"] == ["Deal.win"]
    assert calls["Deal.Won"] == ["Deal.win"]
    assert calls["*.create"] == ["Deal.create", "Organization.create"]
    assert calls["Contact.*"] == []


def test_a_before_hook_can_change_what_a_rollback_and_a_revert_write(
    hooks: Hooks, open_store: Callable[[Hooks], Store], clock: Any
) -> None:
    seen: list[dict[str, Any]] = []

    @hooks.before("Contact.rollback")
    @hooks.before("Contact.revert")
    def stamp(ctx: BeforeContext) -> None:
        seen.append(dict(ctx.data))
        ctx.data["title"] = f"via {ctx.action}"

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]["$id"]
    clock.advance(60)
    hooked.do(TENANT, "agent_other", {"action": "update", "type": "Contact", "id": alice, "data": {"phone": "1"}})
    rolled = hooked.do(TENANT, AGENT, {"action": "rollback", "type": "Contact", "id": alice, "toVersion": 1})
    assert seen == [{"phone": None}]  # a merge patch of what differs, as for an update: phone goes away
    assert "phone" not in rolled["entity"] and rolled["entity"]["title"] == "via rollback"
    assert rolled["events"][0]["data"] == {"rollbackTo": 1, "phone": "1 -> null", "title": "null -> via rollback"}
    hooked.do(TENANT, "agent_other", {"action": "update", "type": "Contact", "id": alice, "data": {"phone": "2"}})
    reverted = hooked.do(
        TENANT, AGENT, {"action": "revert", "actor": "agent_other", "since": "2026-01-15T10:00:30Z", "force": True}
    )
    assert seen[1] == {"phone": None, "title": None}  # back to before agent_other's first event: v1
    assert reverted["reverted"][0]["title"] == "via revert"
    assert hooked.get(TENANT, "Contact", alice)["title"] == "via revert"
    assert hooked.verify(TENANT)["ok"] is True


# ---- AFTER ----------------------------------------------------------------------------------------


def test_an_after_hook_sees_the_committed_event_and_entity(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    seen: list[AfterContext] = []
    committed: list[int] = []

    @hooks.after("Contact.Qualified")
    def look(ctx: AfterContext) -> None:
        seen.append(ctx)
        committed.append(hooked.events(ctx.tenant)["total"])

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]
    result = hooked.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    (ctx,) = seen
    assert ctx.event == result["events"][0]
    assert ctx.event["type"] == "Contact.Qualified"
    assert ctx.entity is not None
    assert ctx.entity["stage"] == "Qualified"
    assert ctx.entity["$version"] == ctx.event["version"] == 2
    assert ctx.tenant == TENANT
    assert ctx.actor == AGENT
    assert committed == [2]  # the event was already in the log when the hook ran


def test_after_hooks_of_a_revert_get_the_entity_each_event_left(
    hooks: Hooks, open_store: Callable[[Hooks], Store], clock: Any
) -> None:
    seen: list[tuple[str, dict[str, Any] | None]] = []

    @hooks.after("Contact.*")
    def look(ctx: AfterContext) -> None:
        if "revertOf" in ctx.event["data"]:
            seen.append((ctx.event["type"], ctx.entity))

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]["$id"]
    clock.advance(60)
    hooked.do(TENANT, "agent_other", {"action": "update", "type": "Contact", "id": alice, "data": {"title": "X"}})
    made = hooked.do(TENANT, "agent_other", {"action": "create", "type": "Contact", "data": {"name": "Spam"}})
    result = hooked.do(TENANT, AGENT, {"action": "revert", "actor": "agent_other", "since": "2026-01-15T10:00:30Z"})
    assert [(t, e and e["$id"]) for t, e in seen] == [
        ("Contact.Updated", alice),
        ("Contact.Deleted", made["entity"]["$id"]),
    ]
    assert [e for _, e in seen] == result["reverted"]


def test_after_hook_patterns_match_the_verb_and_its_past_tense(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    seen: list[tuple[str, str]] = []
    for pattern in ("Deal.win", "Deal.Won", "*.Won", "Contact.*"):

        def record(ctx: AfterContext, pattern: str = pattern) -> None:
            seen.append((pattern, ctx.event["type"]))

        hooks.after(pattern)(record)

    hooked = open_store(hooks)
    deal = create(hooked, "Deal", {"name": "D", "value": 1})["entity"]
    hooked.do(TENANT, AGENT, {"action": "win", "type": "Deal", "id": deal["$id"]})
    assert sorted(seen) == [("*.Won", "Deal.Won"), ("Deal.Won", "Deal.Won"), ("Deal.win", "Deal.Won")]


def test_after_hooks_do_not_run_for_refused_or_dry_run_writes(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    seen: list[str] = []

    @hooks.after("Deal.*")
    def look(ctx: AfterContext) -> None:
        seen.append(ctx.event["type"])

    hooked = open_store(hooks)
    with pytest.raises(ValidationFailed):
        create(hooked, "Deal", {"name": "D"})
    hooked.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "D", "value": 1}, "dryRun": True})
    assert seen == []
    create(hooked, "Deal", {"name": "D", "value": 1})
    assert seen == ["Deal.Created"]


@pytest.mark.parametrize("failure", [RuntimeError, SystemExit, KeyboardInterrupt])
def test_a_failing_after_hook_is_logged_and_the_write_stands(
    hooks: Hooks, open_store: Callable[[Hooks], Store], caplog: pytest.LogCaptureFixture, failure: type[BaseException]
) -> None:
    @hooks.after("Contact.Created")
    def explode(ctx: AfterContext) -> None:
        raise failure("crm sync is down")

    hooked = open_store(hooks)
    with caplog.at_level(logging.WARNING):
        result = create(hooked, "Contact", {"name": "Alice"})
    alice = result["entity"]
    assert hooked.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(hooked) == 1
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failures
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in failures) + caplog.text
    assert "explode" in logged
    assert "crm sync is down" in logged


def test_an_after_hook_that_edits_its_event_or_entity_does_not_change_what_the_caller_is_told(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    @hooks.after("Contact.create")
    def redact(ctx: AfterContext) -> None:
        assert ctx.entity is not None
        ctx.entity.pop("email", None)
        ctx.event["data"]["name"] = "REDACTED"

    store = open_store(hooks)
    result = create(store, "Contact", {"name": "Bob", "email": "b@x.io"})
    assert result["entity"]["email"] == "b@x.io"
    assert result["events"][0]["data"]["name"] == "Bob"
    assert store.get(TENANT, "Contact", result["entity"]["$id"]) == result["entity"]


def test_after_hooks_that_fan_out_stop_at_a_budget_of_writes_per_request(
    hooks: Hooks, open_store: Callable[[Hooks], Store], caplog: pytest.LogCaptureFixture
) -> None:
    from server.store.service import MAX_HOOK_WRITES

    @hooks.after("Contact.update")
    def twice(ctx: AfterContext) -> None:  # each update makes two more: 2**9 - 1 writes in 8 levels
        for _ in range(2):
            ctx.do(
                {"action": "update", "type": "Contact", "id": ctx.event["target"], "data": {"title": uuid.uuid4().hex}}
            )

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice"})["entity"]
    with caplog.at_level(logging.ERROR):
        result = store.do(
            TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "x"}}
        )
    assert result["events"][0]["data"]["title"] == "null -> x"
    assert event_count(store) == 2 + MAX_HOOK_WRITES
    assert f"wrote {MAX_HOOK_WRITES} times" in caplog.text
    # the next request starts with the whole budget again
    store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "y"}})
    assert event_count(store) == 3 + 2 * MAX_HOOK_WRITES


def test_an_after_hook_may_write_from_another_thread_within_the_same_limits(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    from server.store.service import MAX_HOOK_WRITES

    def elsewhere(ctx: AfterContext, request: dict[str, Any]) -> None:
        """ctx.do from a thread of the hook's own, waited for."""
        failed: list[BaseException] = []

        def run() -> None:
            try:
                ctx.do(request)
            except BaseException as exc:  # handed back to the hook, which raises it
                failed.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join(30)
        if failed:
            raise failed[0]

    @hooks.after("Contact.Created")
    def log_it(ctx: AfterContext) -> None:
        elsewhere(ctx, {"action": "create", "type": "Activity", "data": {"subject": f"created {ctx.event['target']}"}})

    @hooks.after("Contact.update")
    def twice_elsewhere(ctx: AfterContext) -> None:  # fans out, from threads of its own
        for _ in range(2):
            title = uuid.uuid4().hex
            elsewhere(ctx, {"action": "update", "type": "Contact", "id": ctx.event["target"], "data": {"title": title}})

    store = open_store(hooks)
    alice = create(store, "Contact", {"name": "Alice"})["entity"]
    (activity,) = store.find(TENANT, "Activity")["results"]
    assert activity["subject"] == f"created {alice['$id']}"
    before = event_count(store)
    store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "x"}})
    assert event_count(store) == before + 1 + MAX_HOOK_WRITES


def test_writes_made_by_an_after_hook_carry_caused_by(hooks: Hooks, open_store: Callable[[Hooks], Store]) -> None:
    @hooks.after("Contact.Qualified")
    def open_deal(ctx: AfterContext) -> None:
        assert ctx.entity is not None
        ctx.do(
            {
                "action": "create",
                "type": "Deal",
                "data": {"name": f"Deal for {ctx.entity['name']}", "value": 0, "contact": ctx.entity["$id"]},
            }
        )

    hooked = open_store(hooks)
    alice = create(hooked, "Contact", {"name": "Alice"})["entity"]
    qualified = hooked.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": alice["$id"]})
    trigger = qualified["events"][0]
    (deal_event,) = hooked.events(TENANT, filter={"type": "Deal.Created"})["results"]
    assert deal_event["causedBy"] == trigger["id"]
    assert deal_event["actor"] == AGENT
    assert deal_event["seq"] == trigger["seq"] + 1
    assert hooked.event(TENANT, deal_event["id"])["causedBy"] == trigger["id"]
    deals = hooked.find(TENANT, "Deal", {"contact": alice["$id"]})
    assert [d["name"] for d in deals["results"]] == ["Deal for Alice"]
    # the triggering write itself was not caused by anything
    assert "causedBy" not in trigger
    assert hooked.verify(TENANT)["ok"] is True


def test_a_refused_write_by_an_after_hook_is_logged_and_the_trigger_stands(
    hooks: Hooks, open_store: Callable[[Hooks], Store], caplog: pytest.LogCaptureFixture
) -> None:
    @hooks.after("Contact.Created")
    def bad_reaction(ctx: AfterContext) -> None:
        ctx.do({"action": "create", "type": "Deal", "data": {"name": "no value"}})

    hooked = open_store(hooks)
    with caplog.at_level(logging.WARNING):
        alice = create(hooked, "Contact", {"name": "Alice"})["entity"]
    assert hooked.get(TENANT, "Contact", alice["$id"]) == alice
    assert event_count(hooked) == 1
    assert "bad_reaction" in caplog.text


def test_hooks_registered_after_the_store_is_built_still_run(tmp_path: Path, schemas: SchemaSet, clock: Any) -> None:
    hooks = Hooks()  # handed over empty, filled afterwards (e.g. by load_module once the store is up)
    with Store(tmp_path / "late", schemas, hooks=hooks, clock=clock) as store:

        @hooks.before("Contact.create")
        def tag(ctx: BeforeContext) -> None:
            ctx.data["title"] = "Late"

        result = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        assert result["entity"].get("title") == "Late"


# ---- loading hooks from a module ------------------------------------------------------------------


def test_load_module_imports_a_module_and_calls_its_register(
    tmp_path: Path, schemas: SchemaSet, clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"site_hooks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from server.store import HookRejected

            def register(hooks):
                @hooks.before("Contact.create")
                def tag(ctx):
                    ctx.data.setdefault("title", "Imported")

                @hooks.before("Deal.*")
                def guard(ctx):
                    if ctx.data.get("name") == "forbidden":
                        raise HookRejected("that name is forbidden by the site hooks")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = Hooks()
    hooks.load_module(name)
    with Store(tmp_path / "data", schemas, hooks=hooks, clock=clock) as store:
        alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
        assert alice["entity"]["title"] == "Imported"
        with pytest.raises(ValidationFailed) as exc:
            store.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "forbidden", "value": 1}})
        assert "forbidden by the site hooks" in exc.value.message


@pytest.mark.anyio
async def test_the_readme_hooks_example_loads_from_the_working_directory_as_the_readme_says(tmp_path: Path) -> None:
    from e2e_helpers import http_mcp_client, http_server, payload

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = re.search(r"```python\n(# myhooks\.py, loaded with --hooks myhooks\n.*?)```", readme, re.DOTALL)
    assert example, "README's Hooks section should show myhooks.py"
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "myhooks.py").write_text(example.group(1))
    with http_server(tmp_path / "data", "--no-auth", "--no-flush", "--hooks", "myhooks", cwd=workdir) as server:
        with anyio.fail_after(60):
            async with http_mcp_client(server) as client:
                negative = await client.call_tool(
                    "do", {"action": "create", "type": "Deal", "data": {"name": "D", "value": -1}}
                )
                rounded = await client.call_tool(
                    "do", {"action": "create", "type": "Deal", "data": {"name": "D", "value": 2.345}}
                )
                alice = await client.call_tool("do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
                alice_id = payload(alice)["entity"]["$id"]
                await client.call_tool("do", {"action": "qualify", "type": "Contact", "id": alice_id})
                deals = payload(await client.call_tool("search", {"type": "Deal", "filter": {"contact": alice_id}}))

    assert negative.is_error and "cannot be negative" in negative.content[0].text
    assert payload(rounded)["entity"]["value"] == 2.35
    (opened,) = deals["results"]
    assert opened["name"] == "Deal for Alice"


def test_patterns_that_match_no_action_or_event_type_are_named(schemas: SchemaSet) -> None:
    hooks = Hooks()
    for pattern in (
        "Contcat.create",
        "contact.create",
        "Contact.Create",
        "*.created",
        "Deal.Won",
        "Deal.*",
        "*.revert",
        "*",
    ):
        hooks.before(pattern)(lambda ctx: None)
    hooks.after("Contact.qualify")(lambda ctx: None)
    hooks.after("Contact.Qualifed")(lambda ctx: None)
    assert hooks.unmatched(schemas) == [
        "Contcat.create",
        "contact.create",
        "Contact.Create",
        "*.created",
        "Contact.Qualifed",
    ]


def test_serve_refuses_to_start_with_a_hook_that_could_never_run(tmp_path: Path) -> None:
    from e2e_helpers import HEADLESSLY, server_env

    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "typohooks.py").write_text(
        "def register(hooks):\n    hooks.before('Contcat.create')(lambda ctx: None)\n"
        "    hooks.before('Contact.create')(lambda ctx: None)\n"
    )
    done = subprocess.run(
        [str(HEADLESSLY), "serve", "--hooks", "typohooks", "--data-dir", str(tmp_path / "d")],
        cwd=workdir, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=server_env(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "'Contcat.create'" in done.stderr and "never run" in done.stderr
    assert "'Contact.create'" not in done.stderr.split("e.g.")[0]


def test_load_module_refuses_a_module_without_register(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"not_hooks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = Hooks()
    with pytest.raises(ImportError):
        hooks.load_module(name)
    assert not hooks


@pytest.mark.parametrize("given", ["myhooks.py", "./myhooks.py", "hooks/myhooks.py"])
def test_hooks_given_as_a_file_are_refused_with_the_module_name_to_give(given: str) -> None:
    with pytest.raises(ImportError) as refused:
        Hooks().load_module(given)
    assert f"not a file: {given!r} would be --hooks myhooks" in str(refused.value)


def test_load_module_of_a_missing_module_fails() -> None:
    with pytest.raises(ImportError):
        Hooks().load_module(f"no_such_module_{uuid.uuid4().hex[:8]}")


@pytest.mark.anyio
async def test_over_stdio_a_store_with_hooks_runs_them_off_the_event_loop(
    hooks: Hooks, open_store: Callable[[Hooks], Store]
) -> None:
    from mcp import Client

    from server.auth.identity import LocalIdentity
    from server.tools.app import build_server

    ran_on: list[int] = []

    @hooks.after("Contact.Created")
    def note_thread(ctx: AfterContext) -> None:
        ran_on.append(threading.get_ident())

    server = build_server(open_store(hooks), LocalIdentity(TENANT, AGENT), inline=True)  # as `serve` over stdio
    async with Client(server) as client:
        result = await client.call_tool("do", {"action": "create", "type": "Contact", "data": {"name": "Alice"}})
    loop_thread = threading.get_ident()

    assert result.is_error is False, result.content
    assert len(ran_on) == 1 and ran_on[0] != loop_thread, (ran_on, loop_thread, threading.enumerate())
