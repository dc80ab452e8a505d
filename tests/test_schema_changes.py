"""A tenant opened under schemas that index or search other fields than the ones it was written
under: its lookup keys and full text are rebuilt to match, or the open is refused and nothing changes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, TENANT

from server.errors import ValidationFailed
from server.schema import SchemaSet, load_schemas
from server.store import Store
from server.store.reindex import reindex
from server.store.sqlite import connect


def widgets(tmp_path: Path, fields: str) -> SchemaSet:
    folder = tmp_path / f"schemas-{abs(hash(fields))}"
    folder.mkdir(exist_ok=True)
    (folder / "widgets.json").write_text(f'{{"$domain": "Widgets", "Widget": {{"name": "string!", {fields}}}}}')
    return load_schemas([folder])


def make(store: Store, **data: Any) -> str:
    return str(store.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": data})["entity"]["$id"])


def names(page: dict[str, Any]) -> list[str]:
    return [e["name"] for e in page["results"]]


def test_entities_written_before_a_field_was_indexed_are_found_and_counted_by_it_afterwards(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        make(s, name="first", color="red")
        make(s, name="second", color="blue")
        gone = make(s, name="third", color="red")
        make(s, name="fourth", color="red")
        s.do(TENANT, AGENT, {"action": "delete", "type": "Widget", "id": gone})

    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string#"')) as s:
        red = s.find(TENANT, "Widget", filter={"color": "red"})
        with_deleted = s.find(TENANT, "Widget", filter={"color": "red"}, include_deleted=True)
        report = s.verify(TENANT)

    assert names(red) == ["fourth", "first"] and red["total"] == 2
    assert with_deleted["total"] == 3
    assert report["ok"], report["problems"]


def test_a_field_that_became_text_finds_entities_written_before_by_its_words(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"note": "json"')) as s:
        make(s, name="Moby", note="a blue whale")

    with Store(tmp_path / "data", widgets(tmp_path, '"note": "string"')) as s:
        found = s.find(TENANT, "Widget", query="whale")

    assert names(found) == ["Moby"]


def test_a_field_made_unique_over_repeated_values_refuses_the_tenant_and_changes_nothing(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string#"')) as s:
        ids = sorted([make(s, name="one", code="A"), make(s, name="two", code="A")])

    with (
        Store(tmp_path / "data", widgets(tmp_path, '"code": "string##"')) as s,
        pytest.raises(ValidationFailed) as refused,
    ):
        s.find(TENANT, "Widget", filter={"code": "A"})
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string#"')) as s:
        still = s.find(TENANT, "Widget", filter={"code": "A"})
        report = s.verify(TENANT)

    assert "Widget.code is unique in the schemas" in refused.value.message
    assert all(i in refused.value.message for i in ids)
    assert sorted(names(still)) == ["one", "two"] and still["total"] == 2
    assert report["ok"], report["problems"]


def test_only_nouns_whose_indexed_or_text_fields_changed_are_rebuilt(tmp_path: Path) -> None:
    before, after = widgets(tmp_path, '"color": "string"'), widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", before) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"

    with closing(connect(path)) as conn:
        unchanged = reindex(conn, before)
        changed = reindex(conn, after)
        again = reindex(conn, after)
    with closing(sqlite3.connect(path)) as conn:
        keys = conn.execute("SELECT field, value, live FROM entity_keys WHERE type = 'Widget'").fetchall()

    assert (unchanged, changed, again) == ([], ["Widget"], [])
    assert keys == [("color", "red", 1)]
