"""A tenant opened under schemas that index or search other fields than the ones it was written
under: its lookup keys and full text are rebuilt to match, or the open is refused and nothing changes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, TENANT, held_open, widget_folder, widgets

from server.errors import InvalidId, InvalidType, StorageError, ValidationFailed
from server.schema import SchemaSet, load_schemas
from server.store import Store, tenants
from server.store.reindex import rebuild_alone, shape, stale
from server.store.sqlite import connect


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
        pytest.raises(StorageError) as refused,
    ):
        s.find(TENANT, "Widget", filter={"code": "A"})
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string#"')) as s:
        still = s.find(TENANT, "Widget", filter={"code": "A"})
        report = s.verify(TENANT)

    assert refused.value.code == "storage_error"
    assert "cannot be opened with the server's schemas: Widget.code is unique in them" in refused.value.message
    assert refused.value.hint.startswith("For the operator")
    assert all(i in refused.value.message for i in ids)
    assert sorted(names(still)) == ["one", "two"] and still["total"] == 2
    assert report["ok"], report["problems"]


def test_only_nouns_whose_indexed_or_text_fields_changed_are_rebuilt(tmp_path: Path) -> None:
    before, after = widgets(tmp_path, '"color": "string"'), widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", before) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"

    with closing(connect(path)) as conn:
        unchanged = [n.name for n in stale(conn, before)]
        changed = [n.name for n in stale(conn, after)]
    rebuilt = rebuild_alone(path, after)
    with closing(connect(path)) as conn:
        again = [n.name for n in stale(conn, after)]
        keys = conn.execute("SELECT field, value, live FROM entity_keys WHERE type = 'Widget'").fetchall()

    assert (unchanged, changed, rebuilt, again) == ([], ["Widget"], ["Widget"], [])
    assert keys == [("color", "red", 1)]


def test_a_nouns_shape_does_not_depend_on_the_order_of_its_fields(tmp_path: Path) -> None:
    one = widgets(tmp_path, '"a": "string#", "b": "string##", "c": "string"').nouns["Widget"]
    other = widgets(tmp_path, '"c": "string", "b": "string##", "a": "string#"').nouns["Widget"]
    # the same fields with one of them indexed, unique or searched differently: a different shape
    unindexed = widgets(tmp_path, '"a": "string", "b": "string##", "c": "string"').nouns["Widget"]
    not_unique = widgets(tmp_path, '"a": "string#", "b": "string#", "c": "string"').nouns["Widget"]
    not_text = widgets(tmp_path, '"a": "string#", "b": "string##", "c": "json"').nouns["Widget"]

    assert shape(one) == shape(other)
    assert len({shape(one), shape(unindexed), shape(not_unique), shape(not_text)}) == 4


def test_a_tenant_another_process_has_open_is_refused_until_it_can_be_rebuilt_alone(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"

    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string#"')) as s:
        with held_open(path), pytest.raises(StorageError) as refused:
            s.find(TENANT, "Widget", filter={"color": "red"})
        red = s.find(TENANT, "Widget", filter={"color": "red"})

    assert "open in another process" in refused.value.message and refused.value.hint
    assert names(red) == ["first"] and red["total"] == 1


def test_a_rebuild_waits_for_another_store_of_ours_to_let_go_of_the_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = widgets(tmp_path, '"color": "string"')
    with Store(tmp_path / "data", plain) as s:
        make(s, name="first", color="red")
    waits: list[float] = []

    with Store(tmp_path / "data", plain, follow_schemas=False) as flusher:  # like a flush child mid-round
        flusher.find(TENANT, "Widget")

        def round_ends(seconds: float) -> None:
            waits.append(seconds)
            flusher.pool.close_idle()

        monkeypatch.setattr(tenants, "sleep", round_ends)
        with Store(tmp_path / "data", widgets(tmp_path, '"color": "string#"')) as s:
            red = s.find(TENANT, "Widget", filter={"color": "red"})

    assert len(waits) == 1
    assert names(red) == ["first"] and red["total"] == 1


def test_a_tenant_rebuilt_meanwhile_for_the_same_schemas_is_opened_while_the_other_store_still_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        make(s, name="first", color="red")
    indexed = widgets(tmp_path, '"color": "string#"')
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    waits: list[float] = []

    with Store(tmp_path / "data", indexed, follow_schemas=False) as other:
        other.find(TENANT, "Widget")

        def other_rebuilds(seconds: float) -> None:  # closes the tenant, rebuilds it alone, and opens it again
            waits.append(seconds)
            other.pool.close_idle()
            rebuild_alone(path, indexed)
            other.find(TENANT, "Widget")

        monkeypatch.setattr(tenants, "sleep", other_rebuilds)
        with Store(tmp_path / "data", indexed) as s:
            red = s.find(TENANT, "Widget", filter={"color": "red"})

    assert len(waits) == 1
    assert names(red) == ["first"] and red["total"] == 1


def test_a_rebuild_is_refused_while_another_store_keeps_the_tenant_open_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = widgets(tmp_path, '"color": "string"')
    indexed = widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", plain) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)

    with Store(tmp_path / "data", plain, follow_schemas=False) as other:
        other.find(TENANT, "Widget")
        with Store(tmp_path / "data", indexed) as s, pytest.raises(StorageError) as refused:
            s.find(TENANT, "Widget", filter={"color": "red"})
        with closing(connect(path)) as conn:
            still = [n.name for n in stale(conn, indexed)]
    with Store(tmp_path / "data", indexed) as s:
        red = s.find(TENANT, "Widget", filter={"color": "red"})

    assert "open in another process" in refused.value.message and refused.value.hint
    assert still == ["Widget"]
    assert names(red) == ["first"]


def test_a_changed_noun_without_entities_still_waits_for_a_server_with_the_old_schemas_to_let_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = widgets(tmp_path, '"color": "string"')
    indexed = widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", plain) as s:
        s.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})  # no Widget yet
    monkeypatch.setattr(tenants, "LOCK_WAIT_SECONDS", 0.0)

    with Store(tmp_path / "data", plain, follow_schemas=False) as old:
        old.find(TENANT, "Widget")
        with Store(tmp_path / "data", indexed) as new, pytest.raises(StorageError) as refused:
            new.find(TENANT, "Widget", filter={"color": "red"})
        make(old, name="written the old way", color="red")  # keys as the old schemas build them: none
    with Store(tmp_path / "data", indexed) as new:
        red = new.find(TENANT, "Widget", filter={"color": "red"})
        report = new.verify(TENANT)

    assert "open in another process" in refused.value.message
    assert names(red) == ["written the old way"]
    assert report["ok"] is True, report["problems"]


def test_text_fields_listed_in_another_order_need_no_rebuild_and_verify_finds_the_text_right(tmp_path: Path) -> None:
    def schemas(fields: str) -> SchemaSet:
        folder = tmp_path / f"order-{abs(hash(fields))}"
        folder.mkdir()
        (folder / "widgets.json").write_text(f'{{"$domain": "Widgets", "Widget": {{{fields}}}}}')
        return load_schemas([folder])

    with Store(tmp_path / "data", schemas('"name": "string!", "note": "string"')) as s:
        make(s, name="Gizmo", note="blue spinning top")
    with Store(tmp_path / "data", schemas('"note": "string", "name": "string!"')) as s:
        report = s.verify(TENANT)
        found = s.find(TENANT, "Widget", query="spinning gizmo")

    assert report["ok"] is True, report["problems"]
    assert names(found) == ["Gizmo"]


def test_verify_names_only_nouns_with_entities_as_built_for_other_schemas(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        make(s, name="first", color="red")
    gadgets = tmp_path / "gadgets"
    gadgets.mkdir()
    (gadgets / "gadgets.json").write_text('{"$domain": "Gadgets", "Gadget": {"name": "string!", "serial": "string##"}}')
    changed_and_new = load_schemas([widget_folder(tmp_path, '"color": "string#"'), gadgets])

    with Store(tmp_path / "data", changed_and_new, follow_schemas=False) as s:
        report = s.verify(TENANT)

    assert report["ok"] is True, report["problems"]
    assert report["builtForOtherSchemas"] == ["Widget"]


def test_verify_under_schemas_that_make_a_repeated_value_unique_says_a_server_would_refuse_the_tenant(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string#"')) as s:
        ids = sorted([make(s, name="one", code="A"), make(s, name="two", code="A")])
        make(s, name="three", code="B")

    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string##"'), follow_schemas=False) as s:
        report = s.verify(TENANT)

    assert report["ok"] is False and report["builtForOtherSchemas"] == ["Widget"]
    (problem,) = report["problems"]
    assert f"Widget.code is unique in these schemas, but 'A' is used by {ids[0]}, {ids[1]}" in problem
    assert "refuses to open this tenant" in problem


def test_a_new_noun_needs_no_rebuild_while_the_tenant_is_open_elsewhere(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    gadgets = tmp_path / "gadgets"
    gadgets.mkdir()
    (gadgets / "gadgets.json").write_text('{"$domain": "Gadgets", "Gadget": {"name": "string!", "serial": "string##"}}')
    with_gadgets = load_schemas([widget_folder(tmp_path, '"color": "string"'), gadgets])

    with held_open(path), Store(tmp_path / "data", with_gadgets) as s:
        found = s.find(TENANT, "Widget")
        s.do(TENANT, AGENT, {"action": "create", "type": "Gadget", "data": {"name": "g", "serial": "A1"}})
        gadget = s.find(TENANT, "Gadget", filter={"serial": "A1"})

    assert names(found) == ["first"]
    assert names(gadget) == ["g"]


def test_a_store_that_does_not_follow_schemas_leaves_keys_built_for_other_schemas_alone(tmp_path: Path) -> None:
    serving = widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", serving) as s:
        make(s, name="first", color="red")

    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"'), follow_schemas=False) as s:
        report = s.verify(TENANT)
    with Store(tmp_path / "data", serving) as s:
        with closing(connect(tmp_path / "data" / "tenants" / f"{TENANT}.db")) as conn:
            rebuilt = [n.name for n in stale(conn, serving)]
        red = s.find(TENANT, "Widget", filter={"color": "red"})

    assert report["ok"], report["problems"]
    assert rebuilt == []
    assert names(red) == ["first"]


def test_a_file_from_before_shapes_were_recorded_is_taken_as_built_for_the_schemas_it_is_opened_with(
    tmp_path: Path,
) -> None:
    current = widgets(tmp_path, '"color": "string#"')
    with Store(tmp_path / "data", current) as s:
        make(s, name="first", color="red")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DELETE FROM meta WHERE key LIKE 'derived:%'")
        conn.commit()

    with closing(connect(path)) as conn:
        first = stale(conn, current)
        recorded = conn.execute("SELECT value FROM meta WHERE key = 'derived:Widget'").fetchone()

    assert first == [] and recorded == (shape(current.nouns["Widget"]),)


def test_a_unique_string_field_keeps_number_like_values_apart_and_a_number_field_does_not(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"code": "string##", "size": "number#"')) as s:
        make(s, name="zeros", code="007", size=7)
        make(s, name="seven", code="7", size=7.0)
        make(s, name="spaced", code=" 7", size=7.5)
        by_code = [names(s.find(TENANT, "Widget", filter={"code": c})) for c in ("007", "7", " 7", "7.0")]
        by_size = sorted(names(s.find(TENANT, "Widget", filter={"size": 7})))

    assert by_code == [["zeros"], ["seven"], ["spaced"], []]
    assert by_size == ["seven", "zeros"]


def test_a_field_an_older_schema_left_on_an_entity_can_still_be_removed_with_null(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        widget = make(s, name="first", color="red")
    with Store(tmp_path / "data", widgets(tmp_path, '"size": "int"')) as s:
        with pytest.raises(ValidationFailed) as exc:
            s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": widget, "data": {"shade": None}})
        assert "unknown field 'shade'" in exc.value.message
        result = s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": widget, "data": {"color": None}})
        assert "color" not in result["entity"]
        assert result["events"][0]["data"] == {"color": "red -> null"}


def test_an_update_of_an_entity_written_before_a_field_became_required_says_to_set_it(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"size": "int"')) as s:
        widget = make(s, name="first")
    with Store(tmp_path / "data", widgets(tmp_path, '"size": "int!"')) as s:
        with pytest.raises(ValidationFailed) as exc:
            s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": widget, "data": {"name": "renamed"}})
        assert "'size' is required (this entity has no value for it yet: set it in this write)" in exc.value.message
        done = s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": widget, "data": {"size": 3}})
        assert done["entity"]["size"] == 3


def test_an_entity_of_a_noun_renamed_only_in_case_is_not_written_as_the_new_noun(tmp_path: Path) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"size": "int"')) as s:
        widget = make(s, name="first")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    (renamed / "widgets.json").write_text('{"WIDGET": {"name": "string!"}}')
    with Store(tmp_path / "data", load_schemas([renamed])) as s:
        with pytest.raises(InvalidId) as exc:
            s.do(TENANT, AGENT, {"action": "update", "type": "WIDGET", "id": widget, "data": {"name": "x"}})
        assert "is a Widget, not a WIDGET" in exc.value.message
        assert s.events(TENANT)["total"] == 1


def test_keys_of_an_indexed_json_field_written_before_true_and_false_were_left_out_are_rebuilt_on_open(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"j": "json#"')) as s:
        make(s, name="flag", j=True)
        make(s, name="number", j=1)
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    with closing(sqlite3.connect(path)) as conn, conn:  # as the store left it before: true kept as the key 1
        conn.execute(
            "INSERT INTO entity_keys (type, field, value, id, uniq, live, updated_at) "
            "SELECT 'Widget', 'j', 1, id, 0, 1, updated_at FROM entities WHERE json_extract(state, '$.name') = 'flag'"
        )
        conn.execute("UPDATE meta SET value = ? WHERE key = 'derived:Widget'", ('{"keys":[["j",false]],"text":[]}',))

    with Store(tmp_path / "data", widgets(tmp_path, '"j": "json#"')) as s:
        assert names(s.find(TENANT, "Widget", filter={"j": 1})) == ["number"]
        assert names(s.find(TENANT, "Widget", filter={"j": True})) == ["flag"]
        assert s.verify(TENANT)["ok"] is True


def test_a_rollback_to_a_state_the_current_schemas_refuse_says_so_and_how_to_go_on(tmp_path: Path) -> None:
    old = '"color": "string", "stage": "A | B | C = A"'
    with Store(tmp_path / "data", widgets(tmp_path, old)) as s:
        w = make(s, name="w", color="red", stage="B")
        s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": w, "data": {"color": None, "stage": "C"}})

    for new in ('"stage": "A | C = A"', '"color": "string", "stage": "A | B | C = A", "sku": "string!"'):
        with Store(tmp_path / "data", widgets(tmp_path, new)) as s:
            if "sku" in new:
                s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": w, "data": {"sku": "W-1"}})
            before = s.get(TENANT, "Widget", w)
            with pytest.raises(ValidationFailed) as exc:
                s.do(TENANT, AGENT, {"action": "rollback", "type": "Widget", "id": w, "toVersion": 1})
            assert exc.value.message.startswith(
                f"{w} cannot go back to that state: the current schemas do not accept it"
            )
            assert "set it in this write" not in exc.value.message
            assert "update the entity" in exc.value.hint
            assert s.get(TENANT, "Widget", w) == before
    assert "'sku' is required and that state has no value for it" in exc.value.message


def test_a_deleted_entity_whose_earlier_state_lacks_a_field_now_required_comes_back_by_a_rollback_given_it(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string"')) as s:
        w = make(s, name="w", color="red")
        s.do(TENANT, AGENT, {"action": "delete", "type": "Widget", "id": w})

    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string", "sku": "string!"')) as s:
        rollback = {"action": "rollback", "type": "Widget", "id": w, "toVersion": 1}
        with pytest.raises(ValidationFailed) as exc:  # no update reaches a deleted entity: the hint says how
            s.do(TENANT, AGENT, rollback)
        assert "roll back with data" in exc.value.hint
        back = s.do(TENANT, AGENT, {**rollback, "data": {"sku": "W-1", "color": None}})

        assert back["entity"]["$version"] == 3 and "$deletedAt" not in back["entity"]
        assert {k: v for k, v in back["entity"].items() if not k.startswith("$")} == {"name": "w", "sku": "W-1"}
        (event,) = back["events"]
        assert event["type"] == "Widget.Updated"
        assert event["data"]["rollbackTo"] == 1 and event["changes"]["sku"] == {"from": None, "to": "W-1"}
        assert event["changes"]["color"] == {"from": "red", "to": None}
        assert s.get(TENANT, "Widget", w)["sku"] == "W-1"
        assert s.verify(TENANT)["ok"] is True


def test_a_rollbacks_data_is_checked_as_an_updates_and_refused_where_the_rollback_leaves_the_entity_deleted(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string", "size": "number"')) as s:
        w = make(s, name="w", color="red")
        s.do(TENANT, AGENT, {"action": "delete", "type": "Widget", "id": w})
        rollback = {"action": "rollback", "type": "Widget", "id": w}
        refused = {
            "a value of the wrong type": ({"toVersion": 1, "data": {"size": "big"}}, "size"),
            "an unknown field": ({"toVersion": 1, "data": {"weight": 3}}, "unknown field 'weight'"),
            "a meta field": ({"toVersion": 1, "data": {"$id": "widget_x"}}, "set by the store"),
            "data to a deleted state": ({"toVersion": 2, "data": {"color": "blue"}}, "so it takes no data"),
        }
        for why, (args, said) in refused.items():
            with pytest.raises(ValidationFailed) as exc:
                s.do(TENANT, AGENT, {**rollback, **args})
            assert said in exc.value.message, why
        assert s.events(TENANT)["total"] == 2

        back = s.do(TENANT, AGENT, {**rollback, "toVersion": 1, "data": {"size": 3}})
        assert (back["entity"]["color"], back["entity"]["size"]) == ("red", 3)


def test_a_rollbacks_data_may_remove_a_field_the_schemas_dropped_that_the_state_it_restores_holds(
    tmp_path: Path,
) -> None:
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string", "size": "number"')) as s:
        w = make(s, name="w", color="red", size=1)
        s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": w, "data": {"color": None, "size": 2}})

    with Store(tmp_path / "data", widgets(tmp_path, '"size": "number"')) as s:
        rollback = {"action": "rollback", "type": "Widget", "id": w, "toVersion": 1}
        with pytest.raises(ValidationFailed):  # v1 holds color, which the schemas no longer define
            s.do(TENANT, AGENT, rollback)
        with pytest.raises(ValidationFailed, match="unknown field 'color'"):  # only removing it is let through
            s.do(TENANT, AGENT, {**rollback, "data": {"color": "blue"}})
        back = s.do(TENANT, AGENT, {**rollback, "data": {"color": None}})

        assert {k: v for k, v in back["entity"].items() if not k.startswith("$")} == {"name": "w", "size": 1}
        assert back["events"][0]["data"]["rollbackTo"] == 1


def test_a_revert_reports_an_entity_whose_earlier_state_the_schemas_now_refuse_and_reverts_the_rest(
    tmp_path: Path,
) -> None:
    rogue = "agent_rogue"
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string", "stage": "A | B | C = A"')) as s:
        a, b = make(s, name="a", color="red"), make(s, name="b", stage="B")
        c = make(s, name="c")
        for target, data in ((a, {"color": "blue"}), (b, {"stage": "A"}), (c, {"name": "c2"})):
            s.do(TENANT, rogue, {"action": "update", "type": "Widget", "id": target, "data": data})

    with Store(tmp_path / "data", widgets(tmp_path, '"stage": "A | C = A"')) as s:
        result = s.do(TENANT, AGENT, {"action": "revert", "actor": rogue, "since": "2000-01-01", "force": True})
        assert [c_["id"] for c_ in result["conflicts"]] == [a, b]
        assert all("current schemas do not accept it" in c_["message"] for c_ in result["conflicts"])
        assert [e["target"] for e in result["events"]] == [c]
        assert s.get(TENANT, "Widget", c)["name"] == "c"
        assert s.get(TENANT, "Widget", b)["stage"] == "A"
        assert s.verify(TENANT)["ok"] is True


def test_range_filters_leave_out_values_stored_under_an_older_type_of_the_field(tmp_path: Path) -> None:
    for indexed in ("", "#"):
        data = tmp_path / f"data{indexed}"
        with Store(data, widgets(tmp_path, f'"size": "string{indexed}"')) as s:
            for size in ("10", "9", "big"):
                make(s, name=f"old {size}", size=size)
        with Store(data, widgets(tmp_path, f'"size": "int{indexed}"')) as s:
            make(s, name="new 3", size=3)
            make(s, name="new 2000000", size=2_000_000)
            assert names(s.find(TENANT, "Widget", filter={"size": {"$gte": 1_000_000}})) == ["new 2000000"]
            assert names(s.find(TENANT, "Widget", filter={"size": {"$lt": 5}})) == ["new 3"]
            between = s.find(TENANT, "Widget", filter={"size": {"$gt": 0, "$lt": 10_000_000}}, sort="size")
            assert names(between) == ["new 3", "new 2000000"] and between["total"] == 2
        with Store(data, widgets(tmp_path, f'"size": "string{indexed}"')) as s:  # and the other way round
            assert names(s.find(TENANT, "Widget", filter={"size": {"$lt": "a"}}, sort="size")) == ["old 10", "old 9"]


def test_a_server_whose_schemas_differ_from_ones_recorded_while_it_was_opening_the_tenant_rebuilds(
    tmp_path: Path,
) -> None:
    """Two servers with different schemas open a new tenant at the same moment: the one that records its
    layout second must not take the file as built for its own schemas."""
    from server.store.sqlite import migrate

    path = tmp_path / "new.db"
    indexed, plain = widgets(tmp_path, '"code": "string#"'), widgets(tmp_path, '"code": "string"')
    conn = connect(path)
    migrate(conn)
    other = connect(path)

    def other_server_records_first(statement: str) -> None:  # runs as our open starts its transaction
        if (
            statement.startswith("BEGIN")
            and not other.execute("SELECT 1 FROM meta WHERE key LIKE 'derived:%'").fetchone()
        ):
            assert stale(other, indexed) == []  # a new tenant: its layout is recorded at once

    conn.set_trace_callback(other_server_records_first)
    try:
        assert [noun.name for noun in stale(conn, plain)] == ["Widget"]
    finally:
        conn.set_trace_callback(None)
        conn.close()
        other.close()


def test_an_include_leaves_out_a_link_written_before_its_relationship_pointed_at_another_noun(tmp_path: Path) -> None:
    def folder(target: str) -> SchemaSet:
        path = tmp_path / f"linked-{target}"
        path.mkdir()
        (path / "parts.json").write_text(
            '{"$domain": "Parts", "Gadget": {"name": "string!"}, "Gizmo": {"name": "string!"}, '
            f'"Widget": {{"name": "string!", "part": "-> {target}"}}}}'
        )
        return load_schemas([path])

    with Store(tmp_path / "data", folder("Gadget")) as s:
        gadget = s.do(TENANT, AGENT, {"action": "create", "type": "Gadget", "data": {"name": "g"}})["entity"]["$id"]
        w = make(s, name="w", part=gadget)
        assert s.get(TENANT, "Widget", w, include=["part"])["part"]["$id"] == gadget

    with Store(tmp_path / "data", folder("Gizmo")) as s:
        assert s.get(TENANT, "Widget", w)["part"] == gadget  # the stored value is shown as it is
        assert s.get(TENANT, "Widget", w, include=["part"])["part"] is None


def test_an_idempotent_request_retried_after_its_field_changed_type_still_replays(tmp_path: Path) -> None:
    """A deploy between a request and its retry may change how a value is stored (a datetime read as a string
    now): the very same request is still the same request."""
    request = {
        "action": "create",
        "type": "Widget",
        "data": {"name": "w", "due": "2026-01-16T15:30:00+05:30"},
        "idempotencyKey": "k1",
    }
    with Store(tmp_path / "data", widgets(tmp_path, '"due": "datetime"')) as s:
        first = s.do(TENANT, AGENT, request)
    assert first["entity"]["due"] == "2026-01-16T10:00:00.000000Z"

    with Store(tmp_path / "data", widgets(tmp_path, '"due": "string"')) as s:
        again = s.do(TENANT, AGENT, request)
        total = s.events(TENANT)["total"]
    assert again["replayed"] is True and again["entity"] == first["entity"] and total == 1


# ---- a noun removed from the schemas: its entities are kept, unreachable, and said so ---------------------


def widgets_then_removed(tmp_path: Path) -> list[str]:
    """Three Widgets (one deleted) and a Contact in the tenant, written under schemas that define Widget; the
    Widgets' ids. Opened afterwards with the built-in schemas alone, Widget is a noun they do not define."""
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string#"')) as s:
        ids = [make(s, name="one", color="red"), make(s, name="two", color="blue"), make(s, name="three")]
        s.do(TENANT, AGENT, {"action": "delete", "type": "Widget", "id": ids[2]})
        s.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    return ids


def test_verify_reports_entities_of_a_noun_the_schemas_no_longer_define_with_their_counts_and_still_passes(
    tmp_path: Path,
) -> None:
    widgets_then_removed(tmp_path)

    with Store(tmp_path / "data", load_schemas(), follow_schemas=False) as s:
        report = s.verify(TENANT)
    with Store(tmp_path / "data", widgets(tmp_path, '"color": "string#"'), follow_schemas=False) as s:
        defined = s.verify(TENANT)

    assert report["ok"] is True and report["problems"] == []
    assert report["undefinedTypes"] == {"Widget": {"live": 2, "deleted": 1}}
    assert defined["ok"] is True and "undefinedTypes" not in defined  # (Contact is built in: defined in both)


def test_a_server_opening_a_tenant_that_holds_entities_of_a_removed_noun_warns_once_naming_them_and_the_remedy(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    widgets_then_removed(tmp_path)

    def undefined() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "do not define" in r.message]

    with caplog.at_level("WARNING"), Store(tmp_path / "data", load_schemas()) as s:
        s.find(TENANT, "Contact")
        s.find(TENANT, "Contact")
        s.do("other", AGENT, {"action": "create", "type": "Contact", "data": {"name": "Bo"}})
    serving = undefined()
    caplog.clear()
    with caplog.at_level("WARNING"), Store(tmp_path / "data", load_schemas(), follow_schemas=False) as s:
        s.find(TENANT, "Contact")  # (a store that does not serve: the background flush, the CLI's commands)

    (warning,) = serving  # one for the tenant's open, none for the other tenant
    held = f"tenant {TENANT} holds entities of types the server's schemas do not define: Widget (2 live, 1 deleted)"
    assert held in warning
    assert "kept" in warning and "restore each noun's definition" in warning
    assert undefined() == []


def test_fetch_search_and_do_of_a_removed_noun_say_how_many_entities_the_tenant_still_holds(tmp_path: Path) -> None:
    ids = widgets_then_removed(tmp_path)

    with Store(tmp_path / "data", load_schemas()) as s:
        refusals = []
        for call in (
            lambda: s.get(TENANT, "Widget", ids[0]),
            lambda: s.find(TENANT, "Widget", filter={"color": "red"}),
            lambda: s.do(TENANT, AGENT, {"action": "update", "type": "Widget", "id": ids[0], "data": {"color": "x"}}),
            lambda: s.do(TENANT, AGENT, {"action": "create", "type": "Widget", "data": {"name": "w"}, "dryRun": True}),
        ):
            with pytest.raises(InvalidType) as refused:
                call()
            refusals.append(refused.value.message)
        with pytest.raises(InvalidType) as never_held:
            s.find(TENANT, "Gizmo")
        with pytest.raises(InvalidType) as other_tenant:
            s.find("other", "Widget")
        their_events = s.events(TENANT, {"type": "Widget.*"})

    for message in refusals:
        assert message.startswith("unknown type 'Widget': this tenant still holds 3 Widget entities (live or deleted)")
        assert "schemas no longer define Widget" in message and "valid types: " in message
    assert never_held.value.message.startswith("unknown type 'Gizmo'; valid types: ")
    assert other_tenant.value.message.startswith("unknown type 'Widget'; valid types: ")
    assert their_events["total"] == 4  # as the refusal says: their events are still there to read


# ---- values written under an older shape of their field (a list where it is a scalar now, or the reverse) ---


def matching(store: Store, filter: dict[str, Any], **options: Any) -> list[str]:
    return sorted(names(store.find(TENANT, "Widget", filter=filter, limit=100, **options)))


def every_operator(store: Store, **options: Any) -> dict[str, list[str]]:
    """What each operator on `tag` finds for the value "a" (now, or `asOf`)."""
    ops: dict[str, Any] = {"$eq": "a", "$ne": "a", "$in": ["a"], "$nin": ["a"], "$regex": "^a$", "$gte": "a"}
    found = {op: matching(store, {"tag": {op: arg}}, **options) for op, arg in ops.items()}
    found["$not $regex"] = matching(store, {"tag": {"$not": {"$regex": "^a$"}}}, **options)
    found["$eq its text"] = matching(store, {"tag": '["a","b"]'}, **options)  # as SQLite renders a JSON list
    return found


def test_a_list_written_before_its_field_became_an_indexed_scalar_matches_ne_and_never_eq(tmp_path: Path) -> None:
    """A scalar field's keys and filters see only scalar values: an old list in it equals no value, now or asOf."""
    with Store(tmp_path / "data", widgets(tmp_path, '"tag": "string[]"')) as s:
        make(s, name="listed", tag=["a", "b"])
    with Store(tmp_path / "data", widgets(tmp_path, '"tag": "string##"')) as s:
        make(s, name="plain", tag="a")  # the list does not hold "a" as a unique value
        make(s, name="other", tag="c")
        now = every_operator(s)
        at = s.events(TENANT, sort="-seq", limit=1)["results"][0]["timestamp"]
        past = every_operator(s, as_of=at)
        report = s.verify(TENANT)

    assert now == {
        "$eq": ["plain"],
        "$ne": ["listed", "other"],
        "$in": ["plain"],
        "$nin": ["listed", "other"],
        "$regex": ["plain"],
        "$gte": ["other", "plain"],
        "$not $regex": ["listed", "other"],
        "$eq its text": [],
    }
    assert past == now
    assert report["ok"], report["problems"]


def test_an_indexed_field_changed_between_list_and_scalar_rebuilds_its_keys_for_the_shape_it_has_now(
    tmp_path: Path,
) -> None:
    """A list field takes a lone value as a list of one; a scalar field takes no list as any of its values."""
    scalar, listed = widgets(tmp_path, '"tag": "string#"'), widgets(tmp_path, '"tag": "string[]#"')
    with Store(tmp_path / "data", scalar) as s:
        make(s, name="single", tag="a")
    with Store(tmp_path / "data", listed) as s:
        make(s, name="listed", tag=["a", "b"])
        as_list = every_operator(s)
    with Store(tmp_path / "data", scalar) as s:
        as_scalar = every_operator(s)
        scalar_ok = s.verify(TENANT)["ok"]
    with Store(tmp_path / "data", listed) as s:
        again = every_operator(s)
        at = s.events(TENANT, sort="-seq", limit=1)["results"][0]["timestamp"]
        past = every_operator(s, as_of=at)
        list_ok = s.verify(TENANT)["ok"]

    assert as_list["$eq"] == as_list["$in"] == ["listed", "single"] and as_list["$ne"] == as_list["$nin"] == []
    assert as_scalar["$eq"] == as_scalar["$in"] == ["single"]
    assert as_scalar["$ne"] == as_scalar["$nin"] == ["listed"]
    assert again == past == as_list
    assert scalar_ok and list_ok


# ---- values written before their field became an email (`Bob@EXAMPLE.com` in a string field) ---------------

BOB = "Bob@example.com"  # as a write to an email field stores "Bob@EXAMPLE.com": the domain lowercased


def every_email_operator(store: Store, **options: Any) -> dict[str, list[str]]:
    """What each operator on `mail` finds for Bob's address (now, or `asOf`)."""
    ops: dict[str, Any] = {
        "$eq": BOB,
        "$eq as written": "Bob@EXAMPLE.com",
        "$ne": BOB,
        "$in": [BOB],
        "$nin": [BOB],
        "$gte": BOB,  # "Bob@EXAMPLE.com" is below it as written ("E" < "e"), not as an email
        "$regex": "^Bob@example",
    }
    found = {op: matching(store, {"mail": {op.split()[0]: arg}}, **options) for op, arg in ops.items()}
    found["$not $eq"] = matching(store, {"mail": {"$not": {"$eq": BOB}}}, **options)
    return found


def old_mails(tmp_path: Path, fields: str) -> Path:
    """A tenant whose Widgets `old` and `other` were written while `mail` was a string (`fields`)."""
    data = tmp_path / "data"
    with Store(data, widgets(tmp_path, fields)) as s:
        make(s, name="old", mail="Bob@EXAMPLE.com")
        make(s, name="other", mail="carol@example.com")
    return data


EMAIL_FOUND = {
    "$eq": ["old"],
    "$eq as written": ["old"],
    "$ne": ["other"],
    "$in": ["old"],
    "$nin": ["other"],
    "$gte": ["old", "other"],
    "$regex": ["old"],
    "$not $eq": ["other"],
}


def test_a_field_that_became_an_email_filters_values_written_before_as_emails_now_and_as_of(tmp_path: Path) -> None:
    for indexed in ("", "#", "##"):
        (tmp_path / indexed).mkdir(exist_ok=True)  # ("" is tmp_path itself)
        data = old_mails(tmp_path / indexed, f'"mail": "string{indexed}"')
        with Store(data, widgets(tmp_path, f'"mail": "email{indexed}"')) as s:
            now = every_email_operator(s)
            at = s.events(TENANT, sort="-seq", limit=1)["results"][0]["timestamp"]
            past = every_email_operator(s, as_of=at)
            report = s.verify(TENANT)

        assert now == EMAIL_FOUND, indexed
        assert past == now, indexed
        assert report["ok"], report["problems"]


def test_a_field_that_became_a_unique_email_refuses_a_new_value_equal_to_one_written_before(tmp_path: Path) -> None:
    data = old_mails(tmp_path, '"mail": "string##"')

    with Store(data, widgets(tmp_path, '"mail": "email##"')) as s:
        with pytest.raises(ValidationFailed) as refused:
            make(s, name="new", mail="Bob@Example.COM")
        after = matching(s, {"mail": BOB})

    assert "Widget.mail must be unique: 'Bob@example.com' is already used by" in refused.value.message
    assert after == ["old"]


@pytest.mark.parametrize("fields", ['"mail": "string#"', '"mail": "string##"'])
def test_text_that_is_no_email_in_a_field_that_became_an_email_keeps_its_case(tmp_path: Path, fields: str) -> None:
    # No validator accepts these (a double dot, a domain without a dot), so no write lowercases their domains:
    # neither may a filter or a unique check, or two texts that differ in case would become one.
    data = tmp_path / "data"
    with Store(data, widgets(tmp_path, fields)) as s:
        make(s, name="upper", mail="a..b@EXAMPLE.COM")
        make(s, name="lower", mail="a..b@example.com")
        make(s, name="host", mail="bob@LOCALHOST")
        make(s, name="localhost", mail="bob@localhost")

    with Store(data, widgets(tmp_path, fields.replace("string", "email"))) as s:
        found = [
            matching(s, {"mail": "a..b@EXAMPLE.COM"}),
            matching(s, {"mail": {"$regex": "EXAMPLE"}}),
            matching(s, {"mail": {"$ne": "a..b@example.com"}}),
            matching(s, {"mail": "bob@LOCALHOST"}),
        ]
        report = s.verify(TENANT)

    assert found == [["upper"], ["upper"], ["host", "localhost", "upper"], ["host"]]
    assert report["ok"], report["problems"]


def test_a_field_that_became_a_unique_email_over_two_values_equal_as_emails_refuses_the_tenant_and_changes_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with Store(data, widgets(tmp_path, '"mail": "string##"')) as s:
        ids = sorted([make(s, name="upper", mail="Bob@EXAMPLE.com"), make(s, name="lower", mail=BOB)])

    with Store(data, widgets(tmp_path, '"mail": "email##"'), follow_schemas=False) as s:
        report = s.verify(TENANT)
    with Store(data, widgets(tmp_path, '"mail": "email##"')) as s, pytest.raises(StorageError) as refused:
        s.find(TENANT, "Widget")
    with Store(data, widgets(tmp_path, '"mail": "string##"')) as s:
        still = [matching(s, {"mail": m}) for m in ("Bob@EXAMPLE.com", BOB)]

    assert report["ok"] is False and report["builtForOtherSchemas"] == ["Widget"]
    assert f"Widget.mail is unique in these schemas, but {BOB!r} is used by {ids[0]}, {ids[1]}" in report["problems"][0]
    assert f"Widget.mail is unique in them, but {BOB!r} is used by {ids[0]}, {ids[1]}" in refused.value.message
    assert still == [["upper"], ["lower"]]


def test_an_indexed_field_changed_to_an_email_and_back_rebuilds_its_keys_for_the_type_it_has_now(
    tmp_path: Path,
) -> None:
    data = old_mails(tmp_path, '"mail": "string##"')
    path = data / "tenants" / f"{TENANT}.db"
    email, string = widgets(tmp_path, '"mail": "email##"'), widgets(tmp_path, '"mail": "string##"')

    with Store(data, email, follow_schemas=False) as s:
        before = s.verify(TENANT)
    with Store(data, email) as s:
        as_email = every_email_operator(s)
        email_ok = s.verify(TENANT)
    with closing(connect(path)) as conn:
        keys_as_email = conn.execute("SELECT value FROM entity_keys ORDER BY value").fetchall()
    with Store(data, string) as s:
        as_string = [matching(s, {"mail": m}) for m in ("Bob@EXAMPLE.com", BOB)]
        string_ok = s.verify(TENANT)
    with closing(connect(path)) as conn:
        keys_as_string = conn.execute("SELECT value FROM entity_keys ORDER BY value").fetchall()

    assert before["builtForOtherSchemas"] == ["Widget"]
    assert as_email == EMAIL_FOUND
    assert keys_as_email == [(BOB,), ("carol@example.com",)]
    assert as_string == [["old"], []]
    assert keys_as_string == [("Bob@EXAMPLE.com",), ("carol@example.com",)]
    assert email_ok["ok"] and string_ok["ok"], (email_ok["problems"], string_ok["problems"])


def test_email_keys_built_before_shapes_marked_emails_are_kept_when_they_hold_emails_as_writes_store_them(
    tmp_path: Path,
) -> None:
    """An upgrade from a version whose shapes did not mark email fields: no rebuild where none is needed."""
    email = widgets(tmp_path, '"mail": "email##", "note": "string"')
    with Store(tmp_path / "data", email) as s:
        make(s, name="old", mail="Bob@EXAMPLE.com", note="first")
    path = tmp_path / "data" / "tenants" / f"{TENANT}.db"
    unmarked = shape(email.nouns["Widget"]).replace(',"email"', "")
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'derived:Widget'", (unmarked,))
        conn.commit()

    with closing(connect(path)) as conn:
        first = [n.name for n in stale(conn, email)]
    rebuilt = rebuild_alone(path, email)
    with closing(connect(path)) as conn:
        again = [n.name for n in stale(conn, email)]
        recorded = conn.execute("SELECT value FROM meta WHERE key = 'derived:Widget'").fetchone()
    with Store(tmp_path / "data", email) as s:
        found = matching(s, {"mail": "Bob@EXAMPLE.com"})
        report = s.verify(TENANT)

    assert unmarked != shape(email.nouns["Widget"])
    assert (first, rebuilt, again) == (["Widget"], [], [])
    assert recorded == (shape(email.nouns["Widget"]),)
    assert found == ["old"]
    assert report["ok"], report["problems"]
