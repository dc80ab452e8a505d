"""Property tests: arbitrary writes and filters never crash the store, and random histories replay exactly."""

from __future__ import annotations

import operator
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.errors import HeadlesslyError, InvalidFilter, NotFound, ValidationFailed
from server.schema import SchemaSet, load_schemas
from server.store import Store

TENANT = "acme"
AGENT = "agent_prop"
START_US = 1_768_471_200_000_000  # 2026-01-15T10:00:00Z
ORG = "<org>"  # replaced by the id of a real Organization of the example's store
CONTACT = "<contact>"  # replaced by the id of a real Contact


def budget(examples: int) -> settings:
    """Small enough that the whole file runs in well under 40 s; no deadline (SQLite timing varies)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def crm(schemas: SchemaSet) -> SchemaSet:
    """The built-in Organization, Contact and Deal nouns only: a fresh store per example stays cheap."""
    return SchemaSet({name: schemas[name] for name in ("Organization", "Contact", "Deal")})


@contextmanager
def fresh_store(schemas: SchemaSet) -> Iterator[Store]:
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "data", schemas, clock=lambda: START_US) as store:
        yield store


def substitute(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [substitute(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, ids) for k, v in value.items()}
    return value


# ---- strategies ------------------------------------------------------------------------------

TIMES = [
    "2026-01-15T10:00:00Z",
    "2026-01-15T12:00:00+02:00",
    "2026-01-15",
    "2026-02-30",
    "9999-12-31T23:59:59-01:00",  # 10000-01-01 in UTC
    "0001-01-01T00:00:00+01:00",  # year 0 in UTC
]
INTERESTING_STRINGS = [
    *TIMES,
    "",
    " ",
    "\x00",
    "Alice",
    "a@example.com",
    "not an email",
    "x' OR 1=1 --",
    "https://example.com",
    "Lead",
    "Qualified",
    "Won",
    "Prospecting",
    "organization_AAAAAAAAAAAA",
    "contact_AAAAAAAAAAAA",
    "deal_AAAAAAAAAAAA",
    "$ref:0",
    "x" * 300,
    ORG,
    CONTACT,
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**31), max_value=2**31),
    st.integers(min_value=2**62, max_value=2**80),
    st.integers(max_value=-(2**62), min_value=-(2**80)),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(INTERESTING_STRINGS),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
FIELD_NAMES = [
    "name",
    "email",
    "phone",
    "title",
    "stage",
    "status",
    "organization",
    "contact",
    "value",
    "closedAt",
    "deals",
    "contacts",
    "$id",
    "$version",
    "unknown",
    "",
]
data_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=8))
data_dicts = st.dictionaries(data_keys, json_values, max_size=6)
VALID = {
    "Contact": {"name": "Alice", "email": "a@example.com", "stage": "Qualified", "organization": ORG},
    "Deal": {"name": "Big", "value": 2.5, "closedAt": "2026-02-01T12:00:00+02:00", "contact": CONTACT},
}
valid_bases = st.sampled_from(list(VALID.values()))
perturbed = st.builds(
    lambda base, extra: {**base, **extra},
    valid_bases,
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=2),
)
any_data = st.one_of(data_dicts, perturbed)

# Outcomes of a write: WRITTEN and REFUSED are foreseen; EITHER is for data too arbitrary to foresee.
WRITTEN, REFUSED, EITHER = "written", "refused", "either"
# What arbitrary data can be refused with: it is only ever wrong data (the noun and the id are right).
DATA_REFUSALS = (ValidationFailed,)
# (field, value, valid?) for one field of each noun: each value plainly right or plainly wrong for the
# schema alone, whatever the other fields (null removes the field, or leaves it out of a create).
CHANGES = {
    "Contact": [
        ("name", "Bob", True), ("name", "x" * 300, True), ("name", None, False), ("name", 5, False),
        ("name", ["Bob"], False), ("email", "b@example.com", True), ("email", None, True),
        ("email", "not an email", False), ("title", "CTO", True), ("title", None, True), ("title", True, False),
        ("stage", "Customer", True), ("stage", None, True), ("stage", "Won", False), ("organization", ORG, True),
        ("organization", "organization_AAAAAAAAAAAA", False), ("organization", CONTACT, False),
        ("value", 1, False), ("unknown", "x", False), ("$id", "contact_AAAAAAAAAAAA", False), ("$version", 3, False),
    ],
    "Deal": [
        ("name", "Small", True), ("name", None, False), ("name", 7, False), ("value", 0, True),
        ("value", -3.25, True), ("value", 2**63 - 1, True), ("value", None, False), ("value", 2**63, False),
        ("value", float("nan"), False), ("value", "7", False), ("stage", "Won", True),
        ("stage", "Qualified", False), ("closedAt", "2026-03-01T00:00:00Z", True), ("closedAt", None, True),
        ("closedAt", "2026-02-30", False), ("closedAt", "9999-12-31T23:59:59-01:00", False),
        ("contact", CONTACT, True), ("contact", None, True), ("contact", ORG, False),
        ("contact", "contact_AAAAAAAAAAAA", False), ("organization", ORG, True), ("email", "a@example.com", False),
    ],
}  # fmt: skip
arbitrary_cases = st.tuples(
    st.sampled_from(["Contact", "Deal"]), st.sampled_from(["create", "update"]), any_data, st.just(EITHER)
)
foreseen_cases = st.sampled_from(["Contact", "Deal"]).flatmap(
    lambda noun: st.tuples(
        st.just(noun),
        st.sampled_from(["create", "update"]),
        st.lists(st.sampled_from(CHANGES[noun]), max_size=3, unique_by=lambda change: change[0]),
    ).map(
        lambda c: (
            c[0],
            c[1],
            VALID[c[0]] | {name: value for name, value, _ in c[2]},
            WRITTEN if all(valid for _, _, valid in c[2]) else REFUSED,
        )
    )
)


# ---- (1) arbitrary data ----------------------------------------------------------------------


@budget(120)
@given(case=st.one_of(arbitrary_cases, foreseen_cases))
@example(case=("Deal", "create", {"name": "D", "value": 1, "closedAt": "9999-12-31T23:59:59-01:00"}, REFUSED))
@example(case=("Deal", "update", {"closedAt": "0001-01-01T00:00:00+01:00"}, REFUSED))
@example(case=("Deal", "update", {"value": 2**70}, REFUSED))
@example(case=("Deal", "update", {"value": 2**63 - 1, "closedAt": "2026-01-15"}, WRITTEN))
@example(case=("Contact", "update", {"organization": ORG, "email": "a@example.com"}, WRITTEN))
@example(case=("Contact", "create", VALID["Contact"], WRITTEN))
@example(case=("Deal", "create", VALID["Deal"], WRITTEN))
def test_arbitrary_data_never_crashes_and_a_refused_write_changes_nothing(
    crm: SchemaSet, case: tuple[str, str, dict[str, Any], str]
) -> None:
    noun, action, data, outcome = case
    with fresh_store(crm) as store:
        org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
        base = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Base"}})["entity"]
        if noun == "Deal":
            base = store.do(TENANT, AGENT, {"action": "create", "type": "Deal", "data": {"name": "B", "value": 1}})[
                "entity"
            ]
        contact_id = store.find(TENANT, "Contact")["results"][0]["$id"]
        data = substitute(data, {ORG: org["entity"]["$id"], CONTACT: contact_id})
        op: dict[str, Any] = {"action": action, "type": noun, "data": data}
        if action == "update":
            op["id"] = base["$id"]
        events_before = store.events(TENANT)["total"]
        verify_before = store.verify(TENANT)

        try:
            result = store.do(TENANT, AGENT, op)  # any refusal but wrong data fails the test
        except DATA_REFUSALS as refused:
            assert outcome != WRITTEN, f"valid data refused: {refused.message}"
            assert store.events(TENANT)["total"] == events_before
            assert store.verify(TENANT) == verify_before
            assert store.get(TENANT, noun, base["$id"]) == base
            return

        assert outcome != REFUSED, f"invalid data written: {op}"
        written = result["entity"]
        if outcome == WRITTEN:  # each field as given (a time in UTC), a null one absent (created: its default)
            given_fields = {k: normalize_time(v) if k == "closedAt" and v else v for k, v in data.items()}
            if action == "create":
                given_fields |= {k: crm.nouns[noun].fields[k].default for k, v in data.items() if v is None}
            assert {k: written.get(k) for k in data} == given_fields
        assert store.get(TENANT, noun, written["$id"]) == written
        assert store.events(TENANT)["total"] == events_before + len(result["events"])
        assert store.verify(TENANT)["ok"] is True
        assert written["$id"] in {e["$id"] for e in store.find(TENANT, noun, limit=100)["results"]}
        assert store.find(TENANT, noun, filter={"name": {"$exists": True}}, sort="name")["total"] >= 1


# ---- (2) arbitrary filters -------------------------------------------------------------------

FILTER_FIELDS = [
    "name",
    "email",
    "title",
    "stage",
    "value",
    "closedAt",
    "organization",
    "contact",
    "$id",
    "$type",
    "$version",
    "$createdAt",
    "$deletedAt",
    "$updatedBy",
    "nope",
    "$nope",
    "",
    "type",
    "seq",
    "timestamp",
    "actor",
]
OPERATORS = [
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$in",
    "$nin",
    "$exists",
    "$regex",
    "$not",
    "$and",
    "$or",
    "$bogus",
    "eq",
    "$",
]
filter_values = st.one_of(scalars, st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=4), scalars))
conditions = st.recursive(
    filter_values,
    lambda inner: st.dictionaries(st.sampled_from(OPERATORS), inner, min_size=1, max_size=2),
    max_leaves=4,
)
filter_docs = st.recursive(
    st.dictionaries(st.one_of(st.sampled_from(FILTER_FIELDS), st.text(max_size=5)), conditions, max_size=3),
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(["$and", "$or"]), st.lists(inner, max_size=3), min_size=1, max_size=2),
        st.dictionaries(st.sampled_from(FILTER_FIELDS), inner, max_size=2),
    ),
    max_leaves=8,
)
TYPED_VALUES = {
    "name": st.one_of(st.text(max_size=8), st.sampled_from(INTERESTING_STRINGS)),
    "email": st.sampled_from(["a@example.com", "x' OR 1=1 --", ""]),
    "stage": st.sampled_from(["Lead", "Qualified", "Won", "Prospecting"]),
    "value": st.one_of(st.integers(), st.integers(min_value=2**63), st.floats(allow_nan=False)),
    "$version": st.integers(),
    "closedAt": st.sampled_from(TIMES),
    "$createdAt": st.sampled_from(TIMES),
    "seq": st.one_of(st.integers(), st.integers(min_value=2**63)),
}
typed_conditions = st.sampled_from(sorted(TYPED_VALUES)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.one_of(
            TYPED_VALUES[name],
            st.dictionaries(st.sampled_from(OPERATORS[:6]), TYPED_VALUES[name], min_size=1, max_size=2),
            st.dictionaries(st.sampled_from(["$in", "$nin"]), st.lists(TYPED_VALUES[name], min_size=1, max_size=3)),
        ),
    )
)
# Typed, but a field may belong to the other noun or to the events, and values go to the edges (a
# bigger-than-64-bit number, 2026-02-30, year 10000): refusing these is legitimate, see the next test.
loosely_typed_filters = st.lists(typed_conditions, min_size=1, max_size=3).map(dict)
any_filter = st.one_of(
    filter_docs, filter_docs, loosely_typed_filters, loosely_typed_filters, scalars, st.lists(scalars, max_size=2)
)
# What an arbitrary filter can be refused with: the filter is wrong; the noun and the rest are right.
FILTER_REFUSALS = (InvalidFilter,)


@budget(100)
@given(doc=any_filter, noun=st.sampled_from(["Contact", "Deal"]))
@example(doc={"value": 2**70}, noun="Deal")
@example(doc={"closedAt": {"$gt": "9999-12-31T23:59:59-01:00"}}, noun="Deal")
@example(doc={"$createdAt": {"$lt": "0001-01-01T00:00:00+01:00"}}, noun="Contact")
@example(doc={"seq": {"$in": [2**64]}}, noun="Contact")
@example(doc={"name": {"$regex": "x' OR 1=1 --"}}, noun="Contact")
def test_arbitrary_filters_never_crash_and_never_write(crm: SchemaSet, doc: Any, noun: str) -> None:
    with fresh_store(crm) as store:
        org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
        contact = store.do(
            TENANT,
            AGENT,
            {"action": "create", "type": "Contact", "data": {"name": "Alice", "email": "a@example.com"}},
        )
        store.do(
            TENANT,
            AGENT,
            {
                "action": "create",
                "type": "Deal",
                "data": {
                    "name": "Big",
                    "value": 2.5,
                    "closedAt": "2026-02-01T10:00:00Z",
                    "contact": contact["entity"]["$id"],
                },
            },
        )
        store.do(TENANT, AGENT, {"action": "qualify", "type": "Contact", "id": contact["entity"]["$id"]})
        doc = substitute(doc, {ORG: org["entity"]["$id"], CONTACT: contact["entity"]["$id"]})
        before = store.verify(TENANT)

        for search in (
            lambda: store.find(TENANT, noun, filter=doc),
            lambda: store.find(TENANT, noun, filter=doc, as_of="2026-01-15T10:00:00.000001Z", include_deleted=True),
            lambda: store.events(TENANT, filter=doc),
        ):
            try:
                page = search()
            except FILTER_REFUSALS:  # any other refusal fails the test
                continue
            assert page["total"] == len(page["results"])

        assert store.verify(TENANT) == before
        assert before["events"] == 4


# ---- (2b) well-typed filters, against a plain evaluation -----------------------------------

# Each noun's fields with values of their own type, mostly near the values of the entities below
# (a strategy listed twice in one_of is drawn twice as often).
SOME_NAMES = st.sampled_from(["Ann", "ann", "An", "Anna", "Bo", "Cy", "Dee", "Mid", "Small", "", "Zed"])
SOME_VALUES = st.sampled_from([0, 2.5, 7, -1.5, 1_000_000, 2.4999, 2**63 - 1])
EMAILS_SEARCHED = [f"{who}@example.com" for who in ("ann", "bo", "cat", "dee", "zed")]
CLOSED = ["2026-02-01T10:00:00Z", "2026-02-01T12:00:00+02:00", "2026-02-01", "2026-03-01", "2026-02-15T00:00:00-05:00"]  # fmt: skip
CREATED = ["2026-01-15", "2026-01-15T10:00:00Z", "2026-01-15T10:00:00.000003Z", "2026-01-15T11:00:00.000006+01:00", "2026-01-15T05:00:00.000011-05:00", "2026-01-16"]  # fmt: skip
WELL_TYPED = {
    "Contact": {
        "name": st.one_of(SOME_NAMES, SOME_NAMES, st.text(max_size=4)),
        "email": st.sampled_from(EMAILS_SEARCHED),
        "stage": st.sampled_from(["Lead", "Qualified", "Customer", "Churned"]),
        "$version": st.integers(min_value=0, max_value=4),
        "$createdAt": st.sampled_from(CREATED),
    },
    "Deal": {
        "name": st.one_of(SOME_NAMES, SOME_NAMES, st.text(max_size=4)),
        "value": st.one_of(
            SOME_VALUES, SOME_VALUES, st.integers(min_value=-(2**63), max_value=2**63 - 1), st.floats(allow_nan=False)
        ),
        "stage": st.sampled_from(["Prospecting", "Won", "Lost", "Closed"]),
        "closedAt": st.sampled_from(CLOSED),
        "$version": st.integers(min_value=0, max_value=4),
        "$createdAt": st.sampled_from(CREATED),
    },
}
TIME_FIELDS = ("closedAt", "$createdAt")
# An enum compares in its declared order (CONTRACT §3), not as text: on Deal, Proposal < Negotiation < Won.
DECLARED = {
    "Contact": {"stage": ["Lead", "Qualified", "Customer", "Churned", "Partner"]},
    "Deal": {"stage": ["Prospecting", "Qualification", "Proposal", "Negotiation", "Closed", "Won", "Lost"]},
}


def well_typed_conditions(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A bare value, one or two comparisons, $in or $nin, or $exists: the operators `holds` knows."""
    return st.one_of(
        values,
        st.dictionaries(st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), values, min_size=1, max_size=2),
        st.dictionaries(st.sampled_from(["$in", "$nin"]), st.lists(values, min_size=1, max_size=3), min_size=1),
        st.fixed_dictionaries({"$exists": st.booleans()}),
    )


def well_typed_filters(noun: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = WELL_TYPED[noun]
    one = st.sampled_from(sorted(fields)).flatmap(lambda f: st.tuples(st.just(f), well_typed_conditions(fields[f])))
    return st.lists(one, min_size=1, max_size=2).map(dict)


def as_utc(text: str) -> datetime:
    """An RFC 3339 time or a date (the start of its day in UTC) as an aware datetime."""
    return datetime.fromisoformat(text + "T00:00:00+00:00" if len(text) == 10 else text.replace("Z", "+00:00"))


def holds(op: str, have: Any, want: Any, order: Callable[[Any], Any]) -> bool:
    """The contract's meaning of `{field: {op: want}}` for a field whose value is `have` (None: absent), whose
    values compare as `order` gives them."""
    if op == "$exists":
        return (have is not None) is want
    if op in ("$ne", "$nin"):  # an absent field is not equal to anything, so it matches $ne and $nin
        return not holds("$eq" if op == "$ne" else "$in", have, want, order)
    if op == "$in":
        return any(holds("$eq", have, one, order) for one in want)
    if have is None:
        return False
    have, want = order(have), order(want)
    compare = {"$eq": operator.eq, "$gt": operator.gt, "$gte": operator.ge, "$lt": operator.lt, "$lte": operator.le}
    return bool(compare[op](have, want))


def order_of(noun: str, name: str) -> Callable[[Any], Any]:
    """How a field's values compare: times as instants, an enum by its members' declared positions."""
    if name in TIME_FIELDS:
        return as_utc
    if name in DECLARED[noun]:
        return DECLARED[noun][name].index
    return lambda value: value


def matches(entity: dict[str, Any], doc: dict[str, Any]) -> bool:
    return all(
        holds(op, entity.get(name), want, order_of(entity["$type"], name))
        for name, condition in doc.items()
        for op, want in (condition.items() if isinstance(condition, dict) else [("$eq", condition)])
    )


@pytest.fixture(scope="module")
def searched(crm: SchemaSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[dict[str, Any]]]]:
    """One store for every example (searches do not write): contacts and deals with fields set, absent,
    equal and unequal, some updated, one of each deleted; and every entity as its last write left it."""
    with Store(tmp_path_factory.mktemp("searched") / "data", crm, clock=lambda: START_US) as store:
        states: dict[str, dict[str, Any]] = {}

        def do(action: str, noun: str, target: str | None = None, **data: Any) -> str:
            op = (
                {"action": action, "type": noun} | ({"id": target} if target else {}) | ({"data": data} if data else {})
            )
            entity = store.do(TENANT, AGENT, op)["entity"]
            states[entity["$id"]] = entity
            return str(entity["$id"])

        ann = do("create", "Contact", name="Ann", email="ann@example.com")
        do("qualify", "Contact", ann)
        do("create", "Contact", name="Bo", email="bo@example.com")
        do("create", "Contact", name="ann")
        do("create", "Contact", name="Cy", stage="Customer")
        dee = do("create", "Contact", name="Dee", email="dee@example.com")
        do("update", "Contact", dee, stage=None)
        do("update", "Contact", dee, name="Dee")  # changes nothing: no new version
        do("delete", "Contact", do("create", "Contact", name="Ann", email="gone@example.com"))
        do("create", "Deal", name="Big", value=2.5, closedAt="2026-02-01T10:00:00Z", stage="Won")
        do("create", "Deal", name="Small", value=0)
        mid = do("create", "Deal", name="Mid", value=7, closedAt="2026-02-01T12:00:00+02:00")
        do("update", "Deal", mid, value=1_000_000)
        do("update", "Deal", mid, closedAt="2026-02-01T12:00:00+02:00")
        do("create", "Deal", name="Neg", value=-1.5, closedAt="2026-03-01")
        do("create", "Deal", name="Bo", value=2**63 - 1, stage="Lost")
        do("delete", "Deal", do("create", "Deal", name="Ann", value=7))
        yield store, list(states.values())


well_typed_searches = st.sampled_from(["Contact", "Deal"]).flatmap(
    lambda noun: st.tuples(st.just(noun), well_typed_filters(noun))
)


@budget(300)
@given(search=well_typed_searches, include_deleted=st.booleans())
@example(search=("Deal", {"closedAt": "2026-02-01T12:00:00+02:00"}), include_deleted=False)  # one instant, two offsets
@example(search=("Deal", {"closedAt": {"$gte": "2026-02-01", "$lt": "2026-03-01"}}), include_deleted=True)
@example(search=("Deal", {"value": {"$gt": 2**62}, "name": {"$in": ["Bo", "Zed"]}}), include_deleted=False)
@example(search=("Contact", {"stage": {"$ne": "Qualified"}, "email": {"$exists": True}}), include_deleted=False)
@example(search=("Contact", {"name": {"$nin": ["Ann"]}, "$version": {"$lte": 1}}), include_deleted=True)
@example(search=("Deal", {"stage": {"$gte": "Won"}}), include_deleted=False)  # Won and Lost: the declared order
@example(search=("Contact", {"stage": {"$gt": "Lead", "$lt": "Churned"}}), include_deleted=True)
def test_a_well_typed_filter_finds_exactly_the_entities_it_holds_for(
    searched: tuple[Store, list[dict[str, Any]]], search: tuple[str, dict[str, Any]], include_deleted: bool
) -> None:
    store, entities = searched
    noun, doc = search
    events = store.events(TENANT)["total"]

    page = store.find(TENANT, noun, filter=doc, limit=100, include_deleted=include_deleted)  # must not be refused

    expected = {
        e["$id"]
        for e in entities
        if e["$type"] == noun and (include_deleted or "$deletedAt" not in e) and matches(e, doc)
    }
    assert {e["$id"] for e in page["results"]} == expected
    assert page["total"] == len(page["results"]) == len(expected)
    assert store.events(TENANT)["total"] == events


# ---- (3) random histories --------------------------------------------------------------------


def normalize_time(text: str) -> str:
    return as_utc(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


NAMES = ["Ann", "Bo"]
EMAILS = ["a@example.com", "b@example.com"]
contact_create = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES)},
    optional={
        "email": st.sampled_from(EMAILS),
        "title": st.sampled_from(["CEO", "CTO"]),
        "stage": st.sampled_from(["Lead", "Customer"]),
    },
)
deal_create = st.fixed_dictionaries(
    {"name": st.sampled_from(NAMES), "value": st.sampled_from([0, 7, 2.5])},
    optional={
        "stage": st.sampled_from(["Prospecting", "Lost"]),
        "closedAt": st.sampled_from(["2026-02-01T10:00:00Z", "2026-03-01T00:00:00Z"]),
    },
)
contact_patch = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from([*NAMES, None]),
        "email": st.sampled_from([*EMAILS, None]),
        "title": st.sampled_from(["CEO", "CTO", None]),
        "stage": st.sampled_from(["Lead", "Qualified", "Customer", None]),
    },
)
deal_patch = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from([*NAMES, None]),
        "value": st.sampled_from([0, 7, 2.5, 1000.25, None]),
        "stage": st.sampled_from(["Prospecting", "Won", "Lost", None]),
        "closedAt": st.sampled_from(["2026-02-01T10:00:00Z", "2026-02-01T12:00:00+02:00", None]),
    },
)
KINDS = ["create_contact", "create_deal", "update", "update", "delete", "verb", "verb", "rollback", "rollback"]
steps = st.lists(
    st.tuples(
        st.sampled_from(KINDS),
        st.integers(min_value=0, max_value=99),  # which entity
        st.integers(min_value=0, max_value=99),  # which verb / version
        st.booleans(),  # rollback by asOf instead of toVersion; verb with data
        contact_create,
        deal_create,
        contact_patch,
        deal_patch,
    ),
    min_size=1,
    max_size=14,
)
VERBS = {"Contact": [("qualify", "stage", "Qualified"), ("capture", None, None)],
         "Deal": [("win", "stage", "Won"), ("advance", None, None)]}  # fmt: skip
REQUIRED = {"Contact": ("name",), "Deal": ("name", "value")}


@dataclass
class Model:
    """What the contract says each entity looks like after each of its versions."""

    noun: str
    versions: list[dict[str, Any]] = field(default_factory=list)  # {"fields", "deleted", "entity"}

    @property
    def current(self) -> dict[str, Any]:
        return self.versions[-1]


def normalized(noun: str, data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    if noun == "Deal" and isinstance(out.get("closedAt"), str):
        out["closedAt"] = normalize_time(out["closedAt"])
    return out


def merged(fields: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def email_taken(models: dict[str, Model], me: str | None, fields: dict[str, Any]) -> bool:
    email = fields.get("email")
    return email is not None and any(
        other_id != me and not m.current["deleted"] and m.current["fields"].get("email") == email
        for other_id, m in models.items()
        if m.noun == "Contact"
    )


def fields_of(entity: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entity.items() if not k.startswith("$")}


def replay(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], bool]]:
    """(fields, deleted) after each event, from the events' typed changes alone."""
    out = []
    fields: dict[str, Any] = {}
    deleted = False
    for event in events:
        for key, change in event["changes"].items():
            if key == "$deletedAt":
                deleted = change["to"] is not None
            elif key.startswith("$"):
                continue
            elif change["to"] is None:
                fields.pop(key, None)
            else:
                fields[key] = change["to"]
        out.append((dict(fields), deleted))
    return out


@budget(60)
@given(history=steps)
def test_random_histories_verify_and_every_version_reads_back_as_replayed(
    crm: SchemaSet, history: list[tuple[Any, ...]]
) -> None:
    with fresh_store(crm) as store:
        models: dict[str, Model] = {}
        written = 0

        def attempt(op: dict[str, Any], expect: type[HeadlesslyError] | None) -> dict[str, Any] | None:
            if expect is not None:
                with pytest.raises(expect):
                    store.do(TENANT, AGENT, op)
                return None
            return store.do(TENANT, AGENT, op)

        for kind, which, pick, flag, c_new, d_new, c_patch, d_patch in history:
            if kind.startswith("create") or not models:
                noun = "Deal" if kind == "create_deal" else "Contact"
                data = c_new if noun == "Contact" else d_new
                fields = {"stage": "Lead" if noun == "Contact" else "Prospecting"} | normalized(noun, data)
                refused = noun == "Contact" and email_taken(models, None, fields)
                result = attempt(
                    {"action": "create", "type": noun, "data": data}, ValidationFailed if refused else None
                )
                if result is not None:
                    entity = result["entity"]
                    models[entity["$id"]] = Model(noun, [{"fields": fields, "deleted": False, "entity": entity}])
                    written += 1
                continue

            entity_id = list(models)[which % len(models)]
            model = models[entity_id]
            noun, cur = model.noun, model.current
            patch = normalized(noun, c_patch if noun == "Contact" else d_patch)
            op: dict[str, Any] = {"type": noun, "id": entity_id}
            expect: type[HeadlesslyError] | None = None
            unchanged = False
            if kind == "update":
                op |= {"action": "update", "data": c_patch if noun == "Contact" else d_patch}
                new_fields, new_deleted = merged(cur["fields"], patch), False
                if cur["deleted"]:
                    expect = NotFound
                elif any(r not in new_fields for r in REQUIRED[noun]):
                    expect = ValidationFailed
                elif new_fields == cur["fields"]:
                    unchanged = True
                elif email_taken(models, entity_id, new_fields):
                    expect = ValidationFailed
            elif kind == "verb":
                verb, sets, past = VERBS[noun][pick % 2]
                verb_data = (c_patch if noun == "Contact" else d_patch) if flag else {}
                op |= {"action": verb} | ({"data": verb_data} if verb_data else {})
                effective = normalized(noun, verb_data) | ({sets: past} if sets else {})
                new_fields, new_deleted = merged(cur["fields"], effective), False
                if cur["deleted"]:
                    expect = NotFound
                elif (
                    (sets and sets in verb_data and verb_data[sets] != past)  # the verb's own field, set otherwise
                    or any(r not in new_fields for r in REQUIRED[noun])
                    or email_taken(models, entity_id, new_fields)
                ):
                    expect = ValidationFailed
            elif kind == "delete":
                op |= {"action": "delete"}
                new_fields, new_deleted = cur["fields"], True
                if cur["deleted"]:
                    expect = NotFound
            else:
                version = 1 + pick % len(model.versions)
                target = model.versions[version - 1]
                if flag:
                    op |= {"action": "rollback", "asOf": target["entity"]["$updatedAt"]}
                else:
                    op |= {"action": "rollback", "toVersion": version}
                new_fields, new_deleted = dict(target["fields"]), target["deleted"]
                if not new_deleted and email_taken(models, entity_id, new_fields):
                    expect = ValidationFailed

            result = attempt(op, expect)
            if result is None:
                continue
            entity = result["entity"]
            if unchanged:
                assert result.get("unchanged") is True and result["events"] == []
                assert entity == cur["entity"]
                continue
            written += 1
            assert fields_of(entity) == new_fields, op
            assert ("$deletedAt" in entity) == new_deleted, op
            assert entity["$version"] == len(model.versions) + 1
            model.versions.append({"fields": new_fields, "deleted": new_deleted, "entity": entity})

        report = store.verify(TENANT)
        assert report["ok"] is True, report["problems"]
        assert report["events"] == written
        assert report["entities"] == len(models)
        for entity_id, model in models.items():
            events = store.events(TENANT, filter={"target": entity_id}, limit=100)["results"]
            replayed = replay(events)
            assert len(replayed) == len(model.versions)
            for n, (expected, (fields, deleted)) in enumerate(zip(model.versions, replayed, strict=True), start=1):
                got = store.get(TENANT, model.noun, entity_id, version=n)
                assert got == expected["entity"]
                assert fields_of(got) == fields == expected["fields"]
                assert ("$deletedAt" in got) == deleted == expected["deleted"]
                assert got["$version"] == n
        live = [(m.current["entity"], m.current["fields"]) for m in models.values() if not m.current["deleted"]]
        for email in {fields["email"] for _, fields in live if "email" in fields}:
            page = store.find(TENANT, "Contact", filter={"email": email})
            holders = [entity for entity, fields in live if fields.get("email") == email]
            assert [e["$id"] for e in page["results"]] == [e["$id"] for e in holders]
            assert page["total"] == len(holders) == 1


org_steps = st.lists(
    st.tuples(
        st.sampled_from(["create", "rename", "move", "delete", "rollback"]),
        st.integers(min_value=0, max_value=60),
        st.sampled_from(["A", "B", "007", "7"]),
    ),
    min_size=1,
    max_size=40,
)


def every_page(store: Store, limit: int, **options: Any) -> tuple[list[str], int]:
    """The ids of every page of a search through its cursor, and the first page's total."""
    ids: list[str] = []
    page = store.find(TENANT, "Organization", limit=limit, **options)
    total = page["total"]
    while True:
        ids += [e["$id"] for e in page["results"]]
        if page["cursor"] is None:
            return ids, total
        page = store.find(TENANT, "Organization", limit=limit, cursor=page["cursor"], **options)


@budget(40)
@given(history=org_steps, limit=st.integers(min_value=1, max_value=4))
def test_an_indexed_field_equal_to_a_value_pages_and_counts_like_a_scan_of_every_entity(
    crm: SchemaSet, history: list[tuple[str, int, str]], limit: int
) -> None:
    with fresh_store(crm) as store:
        ids: list[str] = []
        for kind, pick, industry in history:
            if kind == "create" or not ids:
                op: dict[str, Any] = {"action": "create", "type": "Organization", "data": {"name": "Org", "industry": industry}}  # fmt: skip
                ids.append(store.do(TENANT, AGENT, op)["entity"]["$id"])
                continue
            target = {"type": "Organization", "id": ids[pick % len(ids)]}
            op = {
                "rename": {"action": "update", "data": {"name": f"Org {pick}"}},
                "move": {"action": "update", "data": {"industry": industry}},
                "delete": {"action": "delete"},
                "rollback": {"action": "rollback", "toVersion": 1},
            }[kind] | target
            with suppress(NotFound):  # a deleted entity cannot be updated or deleted again
                store.do(TENANT, AGENT, op)

        everyone, _ = every_page(store, 100)  # no filter: the entities in the default order, from their own index
        live = {e["$id"]: e for e in (store.get(TENANT, "Organization", i) for i in everyone)}
        for value in ("A", "B", "007", "7"):
            expected = [i for i in everyone if live[i].get("industry") == value]
            assert every_page(store, limit, filter={"industry": value}) == (expected, len(expected))
        assert store.verify(TENANT)["ok"]


@budget(300)
@given(text=st.text(max_size=40))
@example(text="foo_bar \ufb01le Ǿ\u0301 ϖ µ x² ①  \U0001f600 \U00010400")
def test_the_words_of_any_text_are_what_the_fts5_tokenizer_makes_of_it(text: str) -> None:
    """Past states are matched by `words`: it must split and fold exactly as the index does."""
    import sqlite3

    from server.store.words import TOKENIZE, words

    with closing(sqlite3.connect(":memory:")) as conn:
        conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(body, tokenize = '{TOKENIZE}')")
        conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        conn.execute("INSERT INTO t (rowid, body) VALUES (1, ?)", (text,))
        indexed = [row[0] for row in conn.execute("SELECT term FROM v ORDER BY offset")]
    assert words(text) == indexed


PAST_WORDS = ("alpha", "beta", "gamma")
past_history = st.lists(
    st.tuples(
        st.sampled_from(["create", "update", "delete", "rollback"]), st.integers(0, 7), st.sampled_from(PAST_WORDS)
    ),
    min_size=1,
    max_size=24,
)


@budget(40)
@given(
    history=past_history, points=st.lists(st.integers(0, 50), min_size=1, max_size=3), word=st.sampled_from(PAST_WORDS)
)
def test_a_search_of_the_past_finds_exactly_the_entities_fetch_shows_as_of_that_time(
    crm: SchemaSet, history: list[tuple[str, int, str]], points: list[int], word: str
) -> None:
    """Entities unchanged since the asOf are read from the table, the others from the log: one answer either way."""
    with fresh_store(crm) as store:
        ids: list[str] = []
        for kind, which, w in history:
            if kind == "create" or not ids:
                data = {"name": f"{w} {len(ids)}", "title": w}
                ids.append(
                    store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": data})["entity"]["$id"]
                )
                continue
            op: dict[str, Any] = {"type": "Contact", "id": ids[which % len(ids)]}
            if kind == "update":
                op |= {"action": "update", "data": {"title": w}}
            elif kind == "delete":
                op |= {"action": "delete"}
            else:
                op |= {"action": "rollback", "toVersion": 1}
            with suppress(HeadlesslyError):  # (a write to a deleted entity; a rollback to where it is)
                store.do(TENANT, AGENT, op)
        times = [e["timestamp"] for e in store.events(TENANT, limit=100)["results"]]
        for point in points:
            as_of = times[point % len(times)]
            then: dict[str, dict[str, Any]] = {}
            for entity_id in ids:
                with suppress(NotFound):  # not yet created, or deleted by then
                    then[entity_id] = store.get(TENANT, "Contact", entity_id, as_of=as_of)

            everything = store.find(TENANT, "Contact", as_of=as_of, limit=100)
            titled = store.find(TENANT, "Contact", {"title": word}, as_of=as_of, limit=100)
            worded = store.find(TENANT, "Contact", query=word, as_of=as_of, limit=100)

            assert {e["$id"]: e for e in everything["results"]} == then
            assert everything["total"] == len(then)
            assert {e["$id"] for e in titled["results"]} == {i for i, e in then.items() if e["title"] == word}
            assert {e["$id"] for e in worded["results"]} == {
                i for i, e in then.items() if e["title"] == word or e["name"].startswith(word)
            }


# ---- (5) values written under another shape of their field -------------------------------------------------

SCALAR_TAGS: list[Any] = ["a", "b", "", '["a","b"]', None]  # (None: no tag)
LIST_TAGS: list[Any] = [["a", "b"], ["b"], [], ["a", "a"], ['["a","b"]']]
TAG_VALUES = ["a", "b", "c", "", '["a","b"]', '["b"]']
TAG_SHAPES = ["string", "string#", "string##", "string[]", "string[]#"]


def tag_schemas(root: Path, tag: str) -> SchemaSet:
    """Widget: a required name and `tag` of the type given (compact notation)."""
    folder = root / f"schemas-{tag.replace('[]', '-list').replace('#', '-key')}"
    folder.mkdir(exist_ok=True)
    (folder / "widgets.json").write_text(f'{{"$domain": "Widgets", "Widget": {{"name": "string!", "tag": "{tag}"}}}}')
    return load_schemas([folder])


@pytest.fixture(scope="module")
def reshaped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[Store, dict[str, Any]]]]:
    """Per shape of `tag`: a store whose Widgets were written with scalar tags, then with list tags (each under
    schemas that take them), opened under that shape; and each Widget's tag by name."""
    root = tmp_path_factory.mktemp("reshaped")
    with ExitStack() as stack:
        stores: dict[str, tuple[Store, dict[str, Any]]] = {}
        for shape in TAG_SHAPES:
            data, tags = root / shape.replace("[]", "-list").replace("#", "-key"), {}
            for written, values in (("string", SCALAR_TAGS), ("string[]", LIST_TAGS)):
                with Store(data, tag_schemas(root, written)) as store:
                    for tag in values:
                        name = f"w{len(tags)}"
                        fields = {"name": name} | ({} if tag is None else {"tag": tag})
                        store.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": fields})
                        tags[name] = tag
            stores[shape] = (stack.enter_context(Store(data, tag_schemas(root, shape))), tags)
        yield stores


def holds_tag(shape: str, tag: Any, value: str) -> bool:
    """`tag` equals `value` as a field of `shape` reads it: a list field by any element (a lone value is a list
    of one), a scalar field by its scalar (a list equals nothing)."""
    if "[]" in shape:
        return value in (tag if isinstance(tag, list) else [tag])
    return bool(tag == value)


@budget(60)
@given(shape=st.sampled_from(TAG_SHAPES), values=st.lists(st.sampled_from(TAG_VALUES), min_size=1, max_size=2))
def test_eq_and_ne_of_a_value_split_the_entities_whatever_shape_their_values_were_written_in(
    reshaped: dict[str, tuple[Store, dict[str, Any]]], shape: str, values: list[str]
) -> None:
    """And $in and $nin of the same values, in a current search and an asOf one alike."""
    store, tags = reshaped[shape]
    at = store.events(TENANT, sort="-seq", limit=1)["results"][0]["timestamp"]

    def found(condition: dict[str, Any], **options: Any) -> set[str]:
        return {e["name"] for e in store.find(TENANT, "Widget", {"tag": condition}, limit=100, **options)["results"]}

    for yes, no, wanted in (("$eq", "$ne", values[:1]), ("$in", "$nin", values)):
        arg = wanted[0] if yes == "$eq" else wanted
        expected = {name for name, tag in tags.items() if any(holds_tag(shape, tag, v) for v in wanted)}
        for options in ({}, {"as_of": at}):
            assert found({yes: arg}, **options) == expected, (yes, options)
            assert found({no: arg}, **options) == set(tags) - expected, (no, options)
