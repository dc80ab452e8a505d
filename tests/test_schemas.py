"""Schemas: the built-in nouns, the compact notation, malformed files, extra folders, and the field validators."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.errors import InvalidType, SchemaError, ValidationFailed
from server.schema import SchemaSet, load_schemas
from server.store import Store

TENANT = "acme"
AGENT = "agent_schemer"
BUILTIN = Path(__file__).resolve().parent.parent / "schemas"

DOMAINS = {
    "Identity": {"User", "ApiKey"},
    "CRM": {"Organization", "Contact", "Lead", "Deal", "Activity", "Pipeline"},
    "Billing": {"Customer", "Product", "Plan", "Price", "Subscription", "Invoice", "Payment"},
    "Projects": {"Project", "Issue", "Comment"},
    "Content": {"Content", "Asset", "Site"},
    "Support": {"Ticket"},
    "Analytics": {"Metric", "Funnel", "Goal"},
    "Marketing": {"Campaign", "Segment", "Form"},
    "Experiments": {"Experiment", "FeatureFlag"},
    "Platform": {"Workflow", "Integration", "Agent"},
    "Communication": {"Message"},
}


def folder(root: Path, name: str, files: dict[str, Any]) -> Path:
    """A schema folder: each value is written as JSON, or as raw text when it is a string."""
    path = root / name
    path.mkdir()
    for file_name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (path / file_name).write_text(text, encoding="utf-8")
    return path


# ---- the built-in nouns ----------------------------------------------------------------------


def test_every_built_in_file_loads(schemas: SchemaSet) -> None:
    files = sorted(BUILTIN.glob("*.json"))
    assert files

    for path in files:
        doc = json.loads(path.read_text(encoding="utf-8"))
        nouns = [k for k in doc if not k.startswith("$")]
        assert nouns, f"{path.name} declares no noun"
        for name in nouns:
            assert name in schemas, f"{name} of {path.name} did not load"
            assert Path(schemas[name].source).name == path.name
            assert schemas[name].domain == doc.get("$domain", path.stem)


def test_the_built_in_domains_hold_the_nouns_of_the_contract(schemas: SchemaSet) -> None:
    by_domain: dict[str, set[str]] = {}
    for name in schemas.names():
        by_domain.setdefault(schemas[name].domain, set()).add(name)

    for domain, nouns in DOMAINS.items():
        assert nouns <= by_domain.get(domain, set()), f"{domain} misses {nouns - by_domain.get(domain, set())}"


def test_built_in_relationships_and_reverses_point_at_known_nouns(schemas: SchemaSet) -> None:
    for name in schemas.names():
        noun = schemas[name]
        for f in noun.fields.values():
            if f.relation:
                assert f.relation in schemas, f"{name}.{f.name} -> {f.relation}"
        for r in noun.reverses.values():
            assert schemas[r.noun].fields[r.field].relation == name


def spec(schemas: SchemaSet, noun: str, field: str) -> dict[str, Any]:
    f = schemas[noun].fields[field]
    return {
        "type": f.type,
        "required": f.required,
        "unique": f.unique,
        "indexed": f.indexed,
        "array": f.array,
        "enum": f.enum,
        "default": f.default,
        "relation": f.relation,
        "reverse": f.reverse_name,
    }


def plain(kind: str = "string", **flags: Any) -> dict[str, Any]:
    out = {
        "type": kind,
        "required": False,
        "unique": False,
        "indexed": False,
        "array": False,
        "enum": None,
        "default": None,
        "relation": None,
        "reverse": None,
    }
    out.update(flags)
    return out


def test_contact_is_exactly_as_the_contract_says(schemas: SchemaSet) -> None:
    contact = schemas["Contact"]

    assert list(contact.fields) == ["name", "email", "phone", "title", "stage", "status", "organization"]
    assert spec(schemas, "Contact", "name") == plain(required=True)
    assert spec(schemas, "Contact", "email") == plain("email", unique=True, indexed=True)
    assert spec(schemas, "Contact", "phone") == plain()
    assert spec(schemas, "Contact", "title") == plain()
    assert spec(schemas, "Contact", "stage") == plain(
        enum=("Lead", "Qualified", "Customer", "Churned", "Partner"), default="Lead"
    )
    assert spec(schemas, "Contact", "status") == plain(enum=("Active", "Inactive", "Bounced", "Unsubscribed"))
    organization = spec(schemas, "Contact", "organization")
    assert (organization["type"], organization["relation"], organization["reverse"]) == (
        "id",
        "Organization",
        "contacts",
    )
    assert organization["array"] is False and organization["required"] is False
    assert {(v.name, v.past, v.sets) for v in contact.verbs.values()} == {
        ("qualify", "Qualified", "stage"),
        ("capture", "Captured", None),
        ("assign", "Assigned", None),
        ("merge", "Merged", None),
        ("enrich", "Enriched", None),
    }


def test_deal_is_exactly_as_the_contract_says(schemas: SchemaSet) -> None:
    deal = schemas["Deal"]

    assert list(deal.fields) == ["name", "value", "stage", "organization", "contact", "closedAt"]
    assert spec(schemas, "Deal", "name") == plain(required=True)
    assert spec(schemas, "Deal", "value") == plain("number", required=True)
    assert spec(schemas, "Deal", "stage") == plain(
        enum=("Prospecting", "Qualification", "Proposal", "Negotiation", "Closed", "Won", "Lost"),
        default="Prospecting",
    )
    assert spec(schemas, "Deal", "closedAt") == plain("datetime")
    for field, target, reverse in (("organization", "Organization", "deals"), ("contact", "Contact", "deals")):
        got = spec(schemas, "Deal", field)
        assert (got["type"], got["relation"], got["reverse"], got["array"]) == ("id", target, reverse, False)
    assert {(v.name, v.past, v.sets) for v in deal.verbs.values()} == {
        ("close", "Closed", "stage"),
        ("win", "Won", "stage"),
        ("lose", "Lost", "stage"),
        ("advance", "Advanced", None),
        ("reopen", "Reopened", None),
    }


def test_the_reverse_relationships_of_contact_and_deal_exist(schemas: SchemaSet) -> None:
    assert schemas["Organization"].reverses["contacts"].noun == "Contact"
    assert schemas["Organization"].reverses["contacts"].field == "organization"
    assert schemas["Organization"].reverses["deals"].field == "organization"
    assert (schemas["Contact"].reverses["deals"].noun, schemas["Contact"].reverses["deals"].field) == (
        "Deal",
        "contact",
    )


def test_the_schema_read_shows_fields_enums_relationships_and_verbs(store: Store) -> None:
    contact = store.schema("Contact")

    assert contact["name"] == "Contact"
    assert contact["fields"]["stage"]["enum"] == ["Lead", "Qualified", "Customer", "Churned", "Partner"]
    assert contact["fields"]["stage"]["default"] == "Lead"
    assert contact["fields"]["email"]["unique"] is True
    assert contact["relationships"]["organization"]["noun"] == "Organization"
    assert contact["relationships"]["deals"] == {"noun": "Deal", "kind": "reverse", "field": "contact"}
    assert contact["verbs"]["qualify"] == {"event": "Contact.Qualified", "sets": {"stage": "Qualified"}}
    assert set(store.schema()["nouns"]) >= {"Contact", "Deal", "Organization"}


def test_event_and_schema_are_not_nouns(schemas: SchemaSet, store: Store) -> None:
    assert "Event" not in schemas and "Schema" not in schemas
    with pytest.raises(InvalidType):
        store.find(TENANT, "Event")
    with pytest.raises(InvalidType):
        store.do(TENANT, AGENT, {"action": "create", "type": "Schema", "data": {"name": "x"}})


@pytest.mark.parametrize("reserved", ["Event", "Schema"])
def test_a_schema_file_may_not_declare_a_reserved_noun(tmp_path: Path, reserved: str) -> None:
    extra = folder(tmp_path, "extra", {"mine.json": {reserved: {"name": "string!"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.noun == reserved
    assert err.value.file.endswith("mine.json")
    assert "reserved" in err.value.problem


def test_nouns_whose_names_differ_only_in_case_are_refused_since_their_ids_would_look_alike(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"shouting.json": {"CONTACT": {"name": "string!"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.noun == "CONTACT"
    assert err.value.file.endswith("shouting.json")
    assert "contact_" in err.value.problem and "Contact" in err.value.problem


@pytest.mark.parametrize("reserved", ["rollbackTo", "revertOf"])
def test_a_field_may_not_take_the_name_of_an_event_marker(tmp_path: Path, reserved: str) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string!", reserved: "string"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", reserved)
    assert "reserved" in err.value.problem


# ---- malformed files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"name": "strng!"}, "name", ["strng", "string"]),  # names the bad type and the valid ones
        ({"name": "string", "size": "S | M | L = XL"}, "size", ["XL", "S", "M", "L"]),
        ({"name": "string", "size": "S | M | S"}, "size", ["repeat"]),
        ({"name": "string", "maker": "-> Factory.widgets"}, "maker", ["Factory"]),
        ({"name": "string", "friends": "<- Gizmo.widget[]"}, "friends", ["Gizmo"]),
        ({"name": "string", "people": "<- Contact.organization[]"}, "people", ["Contact.organization"]),
        ({"name": "string", "count": "int = many"}, "count", ["many"]),
        ({"name": "string", "2fast": "string"}, "2fast", ["field name"]),
        ({"name": "string", "blob": 42}, "blob", ["42"]),
        ({"name": "string", "blob": ""}, "blob", ["empty"]),
        ({"name": "string", "meta": "json##"}, "meta", ["json", "cannot be unique"]),
        ({"name": "string", "meta": "json[]##"}, "meta", ["json", "cannot be unique"]),
        ({"name": "string", "frob": "frobbed"}, "frob", ["unknown type 'frobbed'", "'frob': 'Frobbed'"]),
        ({"name": "string", "Frob": "Frobbed"}, "Frob", ["'frob': 'Frobbed'", "starts lowercase"]),
        ({"name": "string", "email": "Email"}, "email", ["types are lowercase", "'email': 'email'"]),
        ({"name": "string", "notes": "Text"}, "notes", ["types are lowercase", "'notes': 'text'"]),
    ],
)
def test_a_malformed_field_fails_naming_file_noun_field_and_problem(
    tmp_path: Path, body: dict[str, Any], field: str, words: list[str]
) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"$domain": "Widgets", "Widget": body}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.file == str(extra / "widgets.json")
    assert err.value.noun == "Widget"
    assert err.value.field == field
    for word in words:
        assert word in err.value.problem
    assert str(extra / "widgets.json") in str(err.value)
    assert f"Widget.{field}" in str(err.value)


@pytest.mark.parametrize(
    "notation", ["int = 1.5", "boolean = 1", "email = notanemail", "date = tomorrow", "url = nope", "int[] = 5"]
)
def test_a_default_that_is_not_a_valid_value_fails_at_start_up(tmp_path: Path, notation: str) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", "x": notation}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", "x")
    assert "default" in err.value.problem and "not valid" in err.value.problem


def test_a_default_may_hold_a_bar_and_an_enum_may_not_end_in_an_empty_default(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", "sep": "string = a|b"}}})
    bad = folder(tmp_path, "bad", {"widgets.json": {"Widget": {"name": "string", "stage": "A | B ="}}})

    assert load_schemas([extra])["Widget"].fields["sep"].default == "a|b"
    with pytest.raises(SchemaError) as err:
        load_schemas([bad])
    assert err.value.field == "stage" and "no default" in err.value.problem


def test_a_forward_relationships_reverse_name_is_a_relationship_of_its_target(store: Store, schemas: SchemaSet) -> None:
    contact = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})["entity"]
    store.do(TENANT, AGENT, {"action": "create", "type": "Lead", "data": {"name": "L", "contact": contact["$id"]}})

    got = store.get(TENANT, "Contact", contact["$id"], include=["leads", "activities"])

    assert schemas["Contact"].reverses["leads"].field == "contact"  # declared only as Lead.contact -> Contact.leads
    assert [lead["name"] for lead in got["leads"]] == ["L"] and got["activities"] == []


@pytest.mark.parametrize(
    ("widget", "organization", "words"),
    [
        ({"maker": "-> Organization.name"}, {}, "already a field of Organization"),
        ({"maker": "-> Organization.contacts"}, {}, "already Organization's relationship"),
        ({"maker": "-> Organization.widgets"}, {"gadgets": "<- Widget.maker[]"}, "differs from the name"),
    ],
)
def test_a_reverse_name_that_clashes_fails_at_start_up(
    tmp_path: Path, widget: dict[str, str], organization: dict[str, str], words: str
) -> None:
    crm = json.loads((BUILTIN / "crm.json").read_text())
    crm["Organization"].update(organization)
    extra = folder(tmp_path, "extra", {"crm.json": crm, "widgets.json": {"Widget": {"name": "string", **widget}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", "maker") and words in err.value.problem


@pytest.mark.parametrize(("verb", "past"), [("delete", "Removed"), ("create", "Made"), ("update", "Changed")])
def test_a_verb_named_like_a_crud_action_fails(tmp_path: Path, verb: str, past: str) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", verb: past}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", verb)
    assert verb in err.value.problem
    assert err.value.file.endswith("widgets.json")


def test_a_verb_whose_past_tense_is_a_crud_event_fails_naming_the_verb(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", "remove": "Deleted"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", "remove")
    assert "'Deleted' is the event of a CRUD action" in err.value.problem


def test_two_verbs_with_one_past_tense_fail_naming_the_second_and_the_first(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", "ship": "Sent", "mail": "Sent"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", "mail")
    assert "'Sent' is also ship's" in err.value.problem


def test_a_unique_field_with_a_default_fails_at_start_up(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"Widget": {"name": "string", "code": "string## = ABC"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert (err.value.noun, err.value.field) == ("Widget", "code")
    assert "unique field (##) cannot have a default" in err.value.problem


@pytest.mark.parametrize(
    ("nouns", "chain"),
    [
        ({"Widget": {"name": "string", "parent": "-> Widget.children!"}}, "Widget.parent -> Widget"),
        (
            {"Widget": {"name": "string", "gizmo": "-> Gizmo.widgets!"}, "Gizmo": {"name": "string", "part": "-> Part!"},
             "Part": {"name": "string", "widget": "-> Widget.parts!"}},
            "Widget.gizmo -> Gizmo.part -> Part.widget -> Widget",
        ),
    ],
)  # fmt: skip
def test_required_relationships_that_lead_back_where_they_start_are_a_warning_at_start_up(
    tmp_path: Path, nouns: dict[str, Any], chain: str, caplog: pytest.LogCaptureFixture
) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": nouns})

    with caplog.at_level(logging.WARNING):
        schemas = load_schemas([extra])  # (a tenant that has such entities may go on linking new ones to them)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Widget" in schemas.names()
    assert [w for w in warnings if chain in w and "none could be created first" in w and "widgets.json: Widget." in w]


def test_optional_or_list_relationships_may_lead_back_where_they_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = folder(
        tmp_path, "extra",
        {"widgets.json": {"Widget": {"name": "string", "parent": "-> Widget.children", "gizmo": "-> Gizmo!"},
                          "Gizmo": {"name": "string", "widgets": "-> Widget[]!"}}},
    )  # fmt: skip

    with caplog.at_level(logging.WARNING):
        assert load_schemas([extra])["Widget"].fields["parent"].relation == "Widget"
    assert "lead back" not in caplog.text


def test_an_unknown_dollar_key_in_a_file_fails_naming_the_known_ones(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"widgets.json": {"$domian": "Widgets", "Widget": {"name": "string"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.file.endswith("widgets.json")
    assert "unknown key '$domian'" in err.value.problem and "$domain" in err.value.problem


def test_a_files_schema_and_comment_keys_are_ignored(tmp_path: Path) -> None:
    extra = folder(
        tmp_path, "extra",
        {"widgets.json": {"$schema": "./notation.json", "$comment": "ours", "Widget": {"name": "string"}}},
    )  # fmt: skip

    assert "Widget" in load_schemas([extra]).names()


def test_a_noun_redefined_by_a_later_operator_folder_is_a_warning_naming_both_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = folder(tmp_path, "first", {"a.json": {"Widget": {"name": "string"}}})
    second = folder(tmp_path, "second", {"b.json": {"Widget": {"name": "string", "size": "int"}}})
    (second / "more").mkdir()

    with caplog.at_level(logging.INFO):
        schemas = load_schemas([first, second])

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "size" in schemas["Widget"].fields
    assert any(str(second / "b.json") in w and "redefines Widget" in w and str(first / "a.json") in w for w in warnings)
    assert any("ignoring more/" in w for w in warnings)


def test_invalid_json_fails_naming_the_file(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"broken.json": '{"Widget": {"name": "string",}}'})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.file == str(extra / "broken.json")
    assert "JSON" in err.value.problem
    assert "broken.json" in str(err.value)


def test_a_key_given_twice_fails_naming_the_noun_and_field_it_is_in(tmp_path: Path) -> None:
    text = '{"Widget": {"name": "string", "size": "int", "name": "text"}, "Gadget": {"name": "string"}}'
    extra = folder(tmp_path, "extra", {"w.json": text})
    with pytest.raises(SchemaError) as err:
        load_schemas([extra])
    assert (err.value.file, err.value.noun, err.value.field) == (str(extra / "w.json"), "Widget", "name")
    assert "Widget.name" in str(err.value) and "twice" in err.value.problem

    again = folder(tmp_path, "again", {"w.json": '{"Widget": {"name": "string"}, "Widget": {"name": "text"}}'})
    with pytest.raises(SchemaError) as err:
        load_schemas([again])
    assert "'Widget' appears twice" in err.value.problem


def test_a_noun_defined_twice_in_one_folder_fails_naming_both_files(tmp_path: Path) -> None:
    extra = folder(
        tmp_path,
        "extra",
        {"a.json": {"Widget": {"name": "string"}}, "b.json": {"Widget": {"name": "string", "size": "int"}}},
    )

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.noun == "Widget"
    assert err.value.file.endswith("b.json")
    assert "a.json" in err.value.problem


@pytest.mark.parametrize(
    "doc",
    [["Widget"], {"widget": {"name": "string"}}, {"Widget": {}}, {"Widget": "string"}, {"Widget": {"go": "Went"}}],
    ids=["not-an-object", "lowercase-noun", "empty-noun", "noun-not-an-object", "no-stored-field"],
)
def test_a_malformed_noun_fails_naming_the_file(tmp_path: Path, doc: Any) -> None:
    extra = folder(tmp_path, "extra", {"odd.json": doc})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.file.endswith("odd.json")
    assert err.value.problem


def test_a_missing_extra_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(SchemaError) as err:
        load_schemas([tmp_path / "nowhere"])

    assert "nowhere" in err.value.file


# ---- extra folders ---------------------------------------------------------------------------


def test_an_extra_folder_can_add_a_noun(tmp_path: Path) -> None:
    extra = folder(
        tmp_path,
        "extra",
        {
            "widgets.json": {
                "$domain": "Widgets",
                "Widget": {
                    "name": "string!",
                    "status": "Draft | Shipped = Draft",
                    "maker": "-> Organization.widgets",
                    "ship": "Shipped",
                },
            }
        },
    )
    schemas = load_schemas([extra])

    assert "Widget" in schemas and "Contact" in schemas
    assert schemas["Widget"].domain == "Widgets"
    assert schemas["Widget"].verbs["ship"].sets == "status"
    with Store(tmp_path / "data", schemas) as store:
        org = store.do(TENANT, AGENT, {"action": "create", "type": "Organization", "data": {"name": "Acme"}})
        widget = store.do(
            TENANT, AGENT, {"action": "create", "type": "Widget", "data": {"name": "W", "maker": org["entity"]["$id"]}}
        )["entity"]
        shipped = store.do(TENANT, AGENT, {"action": "ship", "type": "Widget", "id": widget["$id"]})

        assert widget["$id"].startswith("widget_")
        assert widget["status"] == "Draft"
        assert shipped["entity"]["status"] == "Shipped"
        assert shipped["events"][0]["type"] == "Widget.Shipped"


def test_an_extra_folder_can_redefine_a_built_in_noun(tmp_path: Path) -> None:
    extra = folder(
        tmp_path,
        "extra",
        {
            "contact.json": {
                "Contact": {
                    "name": "string!",
                    "nickname": "string",
                    "stage": "Lead | Customer = Lead",
                    "organization": "-> Organization.contacts",
                    "promote": "Customer",
                }
            }
        },
    )
    schemas = load_schemas([extra])

    assert list(schemas["Contact"].fields) == ["name", "nickname", "stage", "organization"]
    assert set(schemas["Contact"].verbs) == {"promote"}
    assert schemas["Contact"].source == str(extra / "contact.json")
    assert "Deal" in schemas  # the rest of the built-ins are untouched
    with Store(tmp_path / "data", schemas) as store:
        created = store.do(
            TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A", "nickname": "a"}}
        )
        assert created["entity"]["nickname"] == "a"
        with pytest.raises(ValidationFailed):
            store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "B", "email": "b@b.io"}})


def test_a_later_extra_folder_wins_over_an_earlier_one(tmp_path: Path) -> None:
    first = folder(tmp_path, "first", {"w.json": {"Widget": {"name": "string", "size": "int"}}})
    second = folder(tmp_path, "second", {"w.json": {"Widget": {"name": "string", "colour": "string"}}})

    schemas = load_schemas([first, second])

    assert list(schemas["Widget"].fields) == ["name", "colour"]


def test_builtins_can_be_left_out(tmp_path: Path) -> None:
    extra = folder(tmp_path, "extra", {"w.json": {"Widget": {"name": "string"}}})

    schemas = load_schemas([extra], include_builtin=False)

    assert schemas.names() == ["Widget"]


# ---- validators ------------------------------------------------------------------------------

GADGET = {
    "name": "string!",
    "contactEmail": "email",
    "homepage": "url",
    "launchedAt": "datetime",
    "launchDay": "date",
    "units": "int",
    "price": "number",
    "active": "boolean",
    "tags": "string[]",
    "specs": "json",
    "size": "S | M | L",
}


@pytest.fixture(scope="module")
def gadget_schemas(tmp_path_factory: pytest.TempPathFactory) -> SchemaSet:
    root = tmp_path_factory.mktemp("gadget")
    return load_schemas([folder(root, "extra", {"gadget.json": {"Gadget": GADGET}})], include_builtin=False)


@pytest.fixture
def gadgets(tmp_path: Path, gadget_schemas: SchemaSet) -> Iterator[Store]:
    with Store(tmp_path / "data", gadget_schemas) as store:
        yield store


def make(store: Store, **data: Any) -> dict[str, Any]:
    return store.do(TENANT, AGENT, {"action": "create", "type": "Gadget", "data": {"name": "g", **data}})["entity"]


def test_valid_values_of_every_type_are_stored_normalized(gadgets: Store) -> None:
    entity = make(
        gadgets,
        contactEmail="bob@example.com",
        homepage="https://example.com/x?y=1",
        launchedAt="2026-01-15T12:00:00+02:00",
        launchDay="2026-01-15",
        units=3,
        price=12.5,
        active=False,
        tags=["a", "b"],
        specs={"a": [1, {"b": None}], "c": "d"},
        size="M",
    )

    assert entity["contactEmail"] == "bob@example.com"
    assert entity["homepage"] == "https://example.com/x?y=1"
    assert entity["launchedAt"] == "2026-01-15T10:00:00.000000Z"
    assert entity["launchDay"] == "2026-01-15"
    assert (entity["units"], entity["price"], entity["active"]) == (3, 12.5, False)
    assert entity["tags"] == ["a", "b"]
    assert entity["specs"] == {"a": [1, {"b": None}], "c": "d"}
    assert gadgets.get(TENANT, "Gadget", entity["$id"]) == entity


def test_a_number_field_takes_whole_numbers_too(gadgets: Store) -> None:
    assert make(gadgets, price=12)["price"] == 12


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("contactEmail", "not-an-email", "email"),
        ("contactEmail", "a@", "email"),
        ("homepage", "not a url", "url"),
        ("homepage", "example.com", "url"),
        ("launchedAt", "2026-01-15 10:00", "datetime"),
        ("launchedAt", "yesterday", "datetime"),
        ("launchedAt", 1768471200, "datetime"),
        ("launchDay", "2026-02-30", "date"),
        ("launchDay", "15/01/2026", "date"),
        ("units", 1.5, "int"),
        ("units", "3", "int"),
        ("units", True, "int"),
        ("price", "12", "number"),
        ("price", True, "number"),
        ("price", math.inf, "number"),
        ("price", math.nan, "number"),
        ("active", "true", "boolean"),
        ("active", 1, "boolean"),
        ("tags", "a,b", "string[]"),
        ("tags", [1, 2], "string[]"),
        ("specs", {1, 2}, "json"),
        ("specs", b"bytes", "json"),
        ("size", "XL", "S, M, L"),
        ("name", 5, "string"),
    ],
)
def test_a_bad_value_is_refused_with_a_message_naming_the_field_and_its_type(
    gadgets: Store, field: str, value: Any, expected: str
) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, **{field: value})

    assert f"'{field}'" in err.value.message
    assert expected in err.value.message
    assert gadgets.events(TENANT)["total"] == 0


@pytest.mark.parametrize("value", ["12", True])
def test_a_number_field_refusal_does_not_claim_only_integers_are_valid(gadgets: Store, value: Any) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, price=value)

    assert "integer" not in err.value.message.lower()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"a": math.nan}, [1, math.inf]])
def test_a_json_field_refuses_values_json_cannot_hold(gadgets: Store, value: Any) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, specs=value)

    assert "'specs'" in err.value.message
    assert gadgets.find(TENANT, "Gadget", filter={"name": "g"})["total"] == 0


def test_several_bad_fields_are_all_named(gadgets: Store) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, units="x", active="y", launchDay="z")

    for field in ("units", "active", "launchDay"):
        assert f"'{field}'" in err.value.message


def test_a_missing_required_field_is_named(gadgets: Store) -> None:
    with pytest.raises(ValidationFailed) as err:
        gadgets.do(TENANT, AGENT, {"action": "create", "type": "Gadget", "data": {"units": 1}})

    assert "'name'" in err.value.message and "required" in err.value.message


def test_an_unknown_field_is_named_with_the_known_ones(gadgets: Store) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, colour="red")

    assert "colour" in err.value.message
    assert "launchDay" in err.value.message or "launchDay" in err.value.hint


def test_a_dollar_key_is_refused_naming_the_key(gadgets: Store) -> None:
    with pytest.raises(ValidationFailed) as err:
        make(gadgets, **{"$version": 7})

    assert "$version" in err.value.message


def test_updates_are_validated_like_creates(gadgets: Store) -> None:
    gadget = make(gadgets, units=1)

    with pytest.raises(ValidationFailed) as err:
        gadgets.do(TENANT, AGENT, {"action": "update", "type": "Gadget", "id": gadget["$id"], "data": {"units": 1.5}})

    assert "'units'" in err.value.message
    assert gadgets.get(TENANT, "Gadget", gadget["$id"])["units"] == 1


def test_a_redefined_noun_that_drops_a_link_another_noun_relies_on_names_both_files_and_the_way_out(
    tmp_path: Path,
) -> None:
    extra = folder(tmp_path, "extra", {"crm.json": {"$domain": "CRM", "Contact": {"name": "string!"}}})

    with pytest.raises(SchemaError) as err:
        load_schemas([extra])

    assert err.value.noun == "Organization" and err.value.field == "contacts"
    assert str(extra / "crm.json") in err.value.problem
    assert "keep organization as '-> Organization', or redefine Organization too" in err.value.problem


def test_a_schema_folder_without_json_files_fails_and_other_files_in_one_are_named_as_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    yaml_only = tmp_path / "yaml_only"
    yaml_only.mkdir()
    (yaml_only / "widgets.yaml").write_text("Widget:\n  name: string\n")
    mixed = folder(tmp_path, "mixed", {"widgets.json": {"Widget": {"name": "string"}}})
    (mixed / "notes.txt").write_text("not a schema")

    with pytest.raises(SchemaError) as err:
        load_schemas([yaml_only])
    with caplog.at_level("WARNING"):
        loaded = load_schemas([mixed])

    assert err.value.file == str(yaml_only) and "no *.json file" in err.value.problem
    assert "Widget" in loaded.nouns
    assert "ignoring notes.txt" in caplog.text
