"""A stateful model test: any sequence of Contact writes, clock moves and reads agrees with a plain model.

The model keeps every Contact's history as a list of states (fields, version, deleted or not), each
with the timestamp the store reported for its event. Timestamps are never predicted: the clock may
stand still, move by a microsecond or by hours, or go backwards, and the store picks the time.
"""

from __future__ import annotations

import itertools
import operator
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conftest import FakeClock
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from server.errors import HeadlesslyError, InvalidAsOf, NotFound, ValidationFailed
from server.schema import SchemaSet
from server.store import Store

TENANT = "acme"
AGENT = "agent_model"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ORG = "<org>"  # replaced by the id of a live Organization
GONE = "<gone>"  # replaced by the id of a deleted Organization


def budget(examples: int, steps: int) -> settings:
    """Small enough that the whole file runs in well under 30 s; no deadline (SQLite timing varies)."""
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


def to_us(text: str) -> int:
    """Microseconds since the epoch of an RFC 3339 time (computed here, independently of the store)."""
    return (datetime.fromisoformat(text.replace("Z", "+00:00")) - EPOCH) // timedelta(microseconds=1)


def to_text(us: int) -> str:
    return (EPOCH + timedelta(microseconds=us)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- the Contact noun, as values the model can judge ---------------------------------------------

VALID: dict[str, list[Any]] = {
    "name": ["Ada", "Bob Li", "Zoë"],
    "email": ["ann@example.com", "bob@example.org"],  # lowercase: stored as written
    "phone": ["+1 555 0100", "0100"],
    "title": ["CTO", "Engineer"],
    "stage": ["Lead", "Qualified", "Customer", "Churned", "Partner"],
    "status": ["Active", "Inactive", "Bounced", "Unsubscribed"],
    "organization": [ORG],
}
INVALID: dict[str, list[Any]] = {
    "name": [7, ["Ada"]],
    "email": ["not an email", 5],
    "phone": [5_551_234, True],
    "title": [False, 1.5],
    "stage": ["Won", "lead"],
    "status": ["Active ", "Qualified"],
    "organization": [GONE, "organization_AAAAAAAAAAAA", "contact_AAAAAAAAAAAA"],
}
FIELDS = frozenset(VALID)
STAGES = VALID["stage"]  # in the enum's declared order
RANGES = {"$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}


def is_valid(key: str, value: Any) -> bool:
    """A value the store must accept for `key` (exact types: True is not 1, 1.5 is not a string)."""
    return any(type(v) is type(value) and v == value for v in VALID[key])


def field_values(key: str, nulls: bool) -> st.SearchStrategy[tuple[str, Any]]:
    """Mostly valid values of one field, sometimes invalid ones, and null (removal) when `nulls`."""
    valid, invalid = VALID[key], INVALID[key]
    pool = valid * (-(-4 * len(invalid) // len(valid))) + invalid + [None, None] * nulls  # about 4 valid to 1
    return st.tuples(st.just(key), st.sampled_from(pool))


ODD_KEYS = [("nickname", "x"), ("$version", 3), ("$deletedAt", None)]  # an unknown field, meta fields


def data_of(keys: list[str], nulls: bool, null_stage: bool = True) -> st.SearchStrategy[dict[str, Any]]:
    pairs = [field_values(k, nulls and (k != "stage" or null_stage)) for k in keys]
    odd = st.sampled_from([None] * 12 + ODD_KEYS)  # now and then
    return st.builds(
        lambda fields, extra: dict(fields + ([extra] if extra else [])),
        st.lists(st.one_of(pairs), unique_by=lambda p: p[0], max_size=3),
        odd,
    )


# create: null means "absent" for every field but stage, whose null-versus-default is left to the store
create_data = st.tuples(
    st.sampled_from([*VALID["name"] * 2, 7, None]),
    st.sampled_from([*VALID["email"], None]),  # often: unique emails collide, live or deleted
    data_of(sorted(FIELDS - {"name", "email"}), True, False),
)
update_data = data_of(sorted(FIELDS), True)
verb_data = data_of(["title", "phone", "stage", "name"], True)
time_shift = st.sampled_from([-1, 0, 1])


@dataclass(frozen=True)
class Snap:
    """One entity's state right after one of its events, at the time the store reported."""

    ts: str
    us: int
    version: int
    fields: dict[str, Any]
    deleted: bool


def fields_of(state: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in state.items() if not k.startswith("$")}


def assert_state(state: dict[str, Any], snap: Snap) -> None:
    assert fields_of(state) == snap.fields, (state, snap)
    assert {k: type(v) for k, v in fields_of(state).items()} == {k: type(v) for k, v in snap.fields.items()}
    assert state["$version"] == snap.version, (state, snap)
    assert ("$deletedAt" in state) == snap.deleted, (state, snap)
    assert state["$updatedAt"] == snap.ts, (state, snap)


class StoreModel(RuleBasedStateMachine):
    """A real Store (SQLite in a temporary directory, a fake clock) against a list of states per Contact."""

    contacts = Bundle("contacts")
    schemas: SchemaSet  # set by the test: the built-in Organization, Contact and Deal nouns

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.TemporaryDirectory()
        self.clock = FakeClock()
        self.store = Store(Path(self.tmp.name) / "data", self.schemas, clock=self.clock)
        self.history: dict[str, list[Snap]] = {}
        self.times: list[str] = []  # every event's timestamp in the tenant, in seq order
        org = self.do({"action": "create", "type": "Organization", "data": {"name": "Acme"}})
        gone = self.do({"action": "create", "type": "Organization", "data": {"name": "Gone"}})
        self.do({"action": "delete", "type": "Organization", "id": gone["entity"]["$id"]})
        self.ids = {ORG: org["entity"]["$id"], GONE: gone["entity"]["$id"]}

    # ---- helpers ----------------------------------------------------------------------------

    def do(self, op: dict[str, Any]) -> dict[str, Any]:
        result = self.store.do(TENANT, AGENT, op)
        self.times.extend(e["timestamp"] for e in result["events"])
        return result

    def refused(self, op: dict[str, Any], *errors: type[HeadlesslyError]) -> None:
        """The store refuses `op` with one of `errors` and writes nothing (the invariants check the log)."""
        before = len(self.times)
        try:
            result = self.do(op)
        except errors:
            assert len(self.times) == before
            return
        raise AssertionError(f"expected {[e.__name__ for e in errors]} for {op}, the store answered {result}")

    def written(self, op: dict[str, Any], past: str, fields: dict[str, Any], deleted: bool) -> dict[str, Any]:
        """The store accepts `op` with exactly one event of type Contact.`past` leaving `fields`."""
        result = self.do(op)
        (event,) = result["events"]
        entity = result["entity"]
        history = self.history.setdefault(entity["$id"], [])
        assert event["type"] == f"Contact.{past}"
        assert event["target"] == entity["$id"]
        assert event["version"] == len(history) + 1
        snap = Snap(event["timestamp"], to_us(event["timestamp"]), len(history) + 1, fields, deleted)
        history.append(snap)
        assert_state(entity, snap)
        return result

    def sub(self, data: dict[str, Any]) -> dict[str, Any]:
        return {k: self.ids.get(v, v) if isinstance(v, str) else v for k, v in data.items()}

    def current(self, eid: str) -> Snap:
        return self.history[eid][-1]

    def at(self, eid: str, us: int) -> Snap | None:
        """The state after every event of `eid` at or before `us`."""
        found = None
        for snap in self.history[eid]:
            if snap.us <= us:
                found = snap
        return found

    def email_taken(self, email: Any, by_other_than: str | None) -> bool:
        """Whether a live Contact other than `by_other_than` holds `email` now."""
        return any(
            eid != by_other_than and not h[-1].deleted and h[-1].fields.get("email") == email
            for eid, h in self.history.items()
        )

    def bad_keys(self, data: dict[str, Any]) -> bool:
        return any(k.startswith("$") or k not in FIELDS for k in data)

    def bad_values(self, data: dict[str, Any]) -> bool:
        back = {v: k for k, v in self.ids.items()}  # the pools name the organizations by placeholder
        return any(
            v is not None and not is_valid(k, back.get(v, v) if isinstance(v, str) else v) for k, v in data.items()
        )

    def merged_or_none(self, eid: str, data: dict[str, Any]) -> dict[str, Any] | None:
        """The fields after merging `data` into `eid`, or None when the store must refuse it."""
        before = self.current(eid).fields
        if self.bad_keys(data) or self.bad_values(data):
            return None
        merged = {**before, **data}
        merged = {k: v for k, v in merged.items() if v is not None}
        if "name" not in merged:
            return None
        email = merged.get("email")
        if email is not None and email != before.get("email") and self.email_taken(email, eid):
            return None
        return merged

    def a_time(self, data: st.DataObject) -> tuple[str, int]:
        """A past event's reported timestamp, or one microsecond either side of it."""
        us = to_us(data.draw(st.sampled_from(self.times), label="at")) + data.draw(time_shift, label="shift")
        return to_text(us), us

    # ---- the clock --------------------------------------------------------------------------

    @rule(step=st.sampled_from([0, 1, 2_000_000, 3_600_000_000, -1, -5_000_000, -400 * 86_400_000_000]))
    def move_clock(self, step: int) -> None:
        self.clock.now += step

    # ---- writes -----------------------------------------------------------------------------

    @rule(target=contacts, data=create_data)
    def create(self, data: tuple[Any, Any, dict[str, Any]]) -> str | MultipleResults[str]:
        name, email, rest = data
        given = self.sub({"name": name, "email": email, **rest})
        given = {k: v for k, v in given.items() if v is not None or k in rest}
        op = {"action": "create", "type": "Contact", "data": given}
        fields = {"stage": "Lead", **{k: v for k, v in given.items() if v is not None}}
        if (
            self.bad_keys(given)
            or self.bad_values(given)
            or "name" not in fields
            or ("email" in fields and self.email_taken(fields["email"], None))
        ):
            self.refused(op, ValidationFailed)
            return multiple()
        return str(self.written(op, "Created", fields, False)["entity"]["$id"])

    @rule(eid=contacts, data=update_data)
    def update(self, eid: str, data: dict[str, Any]) -> None:
        self.merge_into(eid, self.sub(data))

    @rule(eid=contacts, names=st.sets(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=3))
    def remove(self, eid: str, names: set[str]) -> None:
        self.merge_into(eid, dict.fromkeys(sorted(names)))

    def merge_into(self, eid: str, data: dict[str, Any]) -> None:
        op = {"action": "update", "type": "Contact", "id": eid, "data": data}
        snap = self.current(eid)
        merged = self.merged_or_none(eid, data)
        if snap.deleted:  # not_found; refused data may be reported first
            self.refused(op, *((NotFound,) if merged is not None else (NotFound, ValidationFailed)))
        elif merged is None:
            self.refused(op, ValidationFailed)
        elif merged == snap.fields:
            result = self.do(op)
            assert result.get("unchanged") is True, result
            assert result["events"] == []
            assert_state(result["entity"], snap)
        else:
            self.written(op, "Updated", merged, False)

    @rule(eid=contacts, data=verb_data)
    def qualify(self, eid: str, data: dict[str, Any]) -> None:
        data = self.sub(data)
        op: dict[str, Any] = {"action": "qualify", "type": "Contact", "id": eid}
        if data:
            op["data"] = data
        merged = self.merged_or_none(eid, {**data, "stage": "Qualified"})
        if "stage" in data and data["stage"] != "Qualified":
            merged = None
        if self.current(eid).deleted:  # not_found; refused data may be reported first
            self.refused(op, *((NotFound,) if merged is not None else (NotFound, ValidationFailed)))
        elif merged is None:
            self.refused(op, ValidationFailed)
        else:
            self.written(op, "Qualified", merged, False)  # a verb always appends, even when nothing changes

    @rule(eid=contacts)
    def delete(self, eid: str) -> None:
        op = {"action": "delete", "type": "Contact", "id": eid}
        if self.current(eid).deleted:
            self.refused(op, NotFound)
        else:
            self.written(op, "Deleted", self.current(eid).fields, True)

    def rollback_to(self, eid: str, op: dict[str, Any], snap: Snap) -> None:
        live = not snap.deleted
        email = snap.fields.get("email")
        if live and email is not None and self.email_taken(email, eid):
            self.refused(op, ValidationFailed)
            return
        result = self.written(op, "Updated", snap.fields, snap.deleted)
        assert "rollbackTo" in result["events"][0]["data"]

    @rule(eid=contacts, data=st.data())
    def rollback_to_version(self, eid: str, data: st.DataObject) -> None:
        history = self.history[eid]
        version = data.draw(st.integers(min_value=1, max_value=len(history) + 1), label="toVersion")
        op = {"action": "rollback", "type": "Contact", "id": eid, "toVersion": version}
        if version > len(history):
            self.refused(op, ValidationFailed)
        else:
            self.rollback_to(eid, op, history[version - 1])

    @rule(eid=contacts, data=st.data())
    def rollback_as_of(self, eid: str, data: st.DataObject) -> None:
        text, us = self.a_time(data)
        op = {"action": "rollback", "type": "Contact", "id": eid, "asOf": text}
        snap = self.at(eid, us)
        if snap is None:
            self.refused(op, InvalidAsOf)
        elif us >= max(self.clock.now, to_us(self.times[-1]) + 1):  # the rollback's own stamp is at least that
            # Not yet past, so refused; unless a read of the past since pushed the stamp later (see Writer.settle)
            before = len(self.times)
            try:
                self.rollback_to(eid, op, snap)
            except InvalidAsOf as exc:
                assert "is not in the past" in exc.message and len(self.times) == before
        else:
            self.rollback_to(eid, op, snap)

    # ---- reads ------------------------------------------------------------------------------

    def expect_get(self, eid: str, snap: Snap | None, **how: Any) -> None:
        if snap is None or snap.deleted:
            try:
                state = self.store.get(TENANT, "Contact", eid, **how)
            except NotFound:
                return
            raise AssertionError(f"expected not_found for {eid} {how}, got {state}")
        assert_state(self.store.get(TENANT, "Contact", eid, **how), snap)

    @rule(eid=contacts, data=st.data())
    def get_as_of(self, eid: str, data: st.DataObject) -> None:
        text, us = self.a_time(data)
        self.expect_get(eid, self.at(eid, us), as_of=text)

    @rule(eid=contacts, data=st.data())
    def get_version(self, eid: str, data: st.DataObject) -> None:
        history = self.history[eid]
        version = data.draw(st.integers(min_value=1, max_value=len(history) + 1), label="version")
        if version > len(history):
            self.expect_get(eid, None, version=version)
            return
        # A version read shows the state as it was, deleted or not.
        assert_state(self.store.get(TENANT, "Contact", eid, version=version), history[version - 1])

    @rule(
        filter=st.one_of(
            st.sampled_from(STAGES).map(lambda s: {"stage": s}),
            st.just({"title": {"$exists": False}}),
            st.tuples(st.sampled_from(sorted(RANGES)), st.sampled_from(STAGES)).map(lambda r: {"stage": {r[0]: r[1]}}),
        ),
        sort=st.sampled_from([None, "stage", "-stage"]),
        past=st.booleans(),
        data=st.data(),
    )
    def find(self, filter: dict[str, Any], sort: str | None, past: bool, data: st.DataObject) -> None:
        (key, condition) = next(iter(filter.items()))
        text, us = self.a_time(data) if past else (None, None)
        expected: dict[str, Snap] = {}
        for eid, history in self.history.items():
            snap = history[-1] if us is None else self.at(eid, us)
            if snap is None or snap.deleted:
                continue
            if not isinstance(condition, dict):
                hit = snap.fields.get(key) == condition
            elif "$exists" in condition:
                hit = key not in snap.fields
            else:  # a range on the stage: in the enum's declared order
                ((op, bound),) = condition.items()
                hit = key in snap.fields and RANGES[op](STAGES.index(snap.fields[key]), STAGES.index(bound))
            if hit:
                expected[eid] = snap
        found = self.store.find(TENANT, "Contact", filter=filter, sort=sort, limit=100, as_of=text)
        assert {e["$id"] for e in found["results"]} == set(expected), (filter, text, found)
        if sort is not None:  # declared order, absent stages last, then by id
            desc = sort.startswith("-")

            def position(eid: str) -> int:
                stage = expected[eid].fields.get("stage")
                at = len(STAGES) if stage is None else STAGES.index(stage)
                return -at if desc and stage is not None else at

            assert [e["$id"] for e in found["results"]] == sorted(expected, key=lambda i: (position(i), i))
        assert found["total"] == len(expected)
        assert found["hasMore"] is False
        for state in found["results"]:
            assert_state(state, expected[state["$id"]])

    @rule(action=st.sampled_from(["update", "qualify", "delete", "rollback", "get"]))
    def touch_an_unknown_id(self, action: str) -> None:
        unknown = "contact_AAAAAAAAAAAA"  # well formed, never given out
        if action == "get":
            self.expect_get(unknown, None)
            return
        op: dict[str, Any] = {"action": action, "type": "Contact", "id": unknown}
        if action == "update":
            op["data"] = {"title": "CTO"}
        elif action == "rollback":
            op["toVersion"] = 1
        self.refused(op, NotFound)

    @rule()
    def count_events(self) -> None:
        assert self.store.events(TENANT)["total"] == len(self.times)

    # ---- invariants -------------------------------------------------------------------------

    @invariant()
    def the_log_is_the_model(self) -> None:
        """Seqs contiguous, timestamps strictly increasing, each Contact's versions 1..n at the reported times."""
        log = self.store.log(TENANT)
        assert [e.seq for e in log] == list(range(1, len(log) + 1))
        assert [e.ts for e in log] == self.times
        stamps = [to_us(e.ts) for e in log]
        assert all(a < b for a, b in itertools.pairwise(stamps)), stamps
        per_target: dict[str, list[tuple[int, str]]] = {}
        for e in log:
            if e.entity_type == "Contact":
                per_target.setdefault(e.target, []).append((e.version, e.ts))
        assert per_target == {eid: [(s.version, s.ts) for s in h] for eid, h in self.history.items()}

    @invariant()
    def every_contact_reads_as_the_model_says(self) -> None:
        for eid in self.history:
            self.expect_get(eid, self.current(eid))

    def teardown(self) -> None:
        try:
            assert self.store.verify(TENANT)["ok"] is True
        finally:
            self.store.close()
            self.tmp.cleanup()


def test_the_store_agrees_with_a_plain_model_under_any_sequence_of_writes_and_reads(schemas: SchemaSet) -> None:
    class CrmStoreModel(StoreModel):
        schemas = SchemaSet({name: schemas[name] for name in ("Organization", "Contact", "Deal")})

    run_state_machine_as_test(CrmStoreModel, settings=budget(40, 30))
