"""A read of a past instant never changes: it waits for a write in flight that may still add events at that
instant (stamped when its job ran, visible only once its whole group of writes commits)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeClock

from server.errors import TenantBusy
from server.schema import SchemaSet
from server.store import BeforeContext, Hooks, Store
from server.store import writer as writer_module
from server.store.writer import Writer
from server.timeutil import format_us

TENANT = "acme"
AGENT = "agent_mR4nVkTw"


class SlowGroup:
    """Two writes committed as one group: Alice's update (stamped at once), then Bob's, which waits inside a
    BEFORE hook. A first job holds the writer until both have queued behind it, so they form one group."""

    def __init__(self, store: Store, writer: Writer, alice: str, bob: str) -> None:
        self.store, self.writer, self.alice, self.bob = store, writer, alice, bob
        self.inside = threading.Event()
        self.release = threading.Event()
        self.threads: list[threading.Thread] = []

    def hook(self, ctx: BeforeContext) -> None:
        if ctx.id == self.bob:
            self.inside.set()
            assert self.release.wait(30), "the test never released the write"

    def _start(self, target: Callable[[], Any]) -> None:
        thread = threading.Thread(target=target)
        thread.start()
        self.threads.append(thread)

    def _update(self, entity: str) -> None:
        self.store.do(TENANT, AGENT, {"action": "update", "type": "Contact", "id": entity, "data": {"title": "CTO"}})

    def __enter__(self) -> SlowGroup:
        held, holding = threading.Event(), threading.Event()

        def hold(_txn: Any) -> None:
            holding.set()
            assert held.wait(30), "the test never let the writer go"

        self._start(lambda: self.writer.run(hold))
        assert holding.wait(30)
        self._start(lambda: self._update(self.alice))
        assert self.writer.wait_queued(1, 30)
        self._start(lambda: self._update(self.bob))
        assert self.writer.wait_queued(2, 30)
        held.set()  # the next group takes both, Alice's first
        assert self.inside.wait(30), "Bob's write never reached its hook"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        for thread in self.threads:
            thread.join(30)
            assert not thread.is_alive()


@pytest.fixture
def setup(tmp_path: Path, schemas: SchemaSet, clock: FakeClock) -> Iterator[tuple[Store, SlowGroup, Writer]]:
    hooks = Hooks()
    store = Store(tmp_path / "data", schemas, hooks=hooks, clock=clock)
    try:
        alice, bob = (
            store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": n}})["entity"]["$id"]
            for n in ("Alice", "Bob")
        )
        clock.advance(60)  # the group stamps Alice's update at 10:01:00
        with store.pool.lease(TENANT) as tenant:
            writer = tenant.writer
        group = SlowGroup(store, writer, alice, bob)
        hooks.before("Contact.update")(group.hook)
        yield store, group, writer
    finally:
        store.close()


def read_in_thread(read: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []

    def run() -> None:
        try:
            got.append(read())
        except Exception as exc:  # recorded for the test to check
            got.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, got


READS: dict[str, Callable[[Store, str, str], Any]] = {
    "get": lambda s, alice, at: s.get(TENANT, "Contact", alice, as_of=at).get("title"),
    "search": lambda s, alice, at: [
        r.get("title") for r in s.find(TENANT, "Contact", {"$id": alice}, as_of=at)["results"]
    ],
    "events": lambda s, alice, at: [
        e["type"] for e in s.events(TENANT, {"target": alice, "timestamp": {"$lte": at}})["results"]
    ],
}
THEN = {"get": "CTO", "search": ["CTO"], "events": ["Contact.Created", "Contact.Updated"]}


@pytest.mark.parametrize("read", list(READS))
def test_a_read_of_a_past_instant_waits_for_the_write_in_flight_and_shows_what_it_stamped_there(
    setup: tuple[Store, SlowGroup, Writer], clock: FakeClock, read: str
) -> None:
    store, group, writer = setup
    with group:
        clock.advance(60)  # 10:01:30 is past now, and the group stamped Alice's update before it
        thread, got = read_in_thread(lambda: READS[read](store, group.alice, "2026-01-15T10:01:30Z"))
        assert writer.wait_held(1, 30), "the read did not wait for the group"
        assert got == []
    thread.join(30)
    assert got == [THEN[read]]  # what every later read of 10:01:30 shows too
    assert READS[read](store, group.alice, "2026-01-15T10:01:30Z") == THEN[read]


def test_a_read_of_an_instant_before_the_write_in_flight_began_does_not_wait(
    setup: tuple[Store, SlowGroup, Writer], clock: FakeClock
) -> None:
    store, group, writer = setup
    with group:
        clock.advance(60)
        earlier = store.get(TENANT, "Contact", group.alice, as_of="2026-01-15T10:00:59Z")
        now = store.get(TENANT, "Contact", group.alice)  # the present does not wait: it is what is committed
        assert "title" not in earlier and "title" not in now
        assert writer.held_reads == 0
    assert store.get(TENANT, "Contact", group.alice)["title"] == "CTO"


def test_a_before_hooks_own_read_of_the_past_does_not_wait_for_its_own_write(
    tmp_path: Path, schemas: SchemaSet, clock: FakeClock
) -> None:
    hooks = Hooks()
    seen: list[Any] = []
    with Store(tmp_path / "data", schemas, hooks=hooks, clock=clock) as store:

        @hooks.before("Contact.update")
        def look_back(ctx: BeforeContext) -> None:
            seen.append(store.get(TENANT, "Contact", str(ctx.id), as_of=format_us(clock.now)).get("title"))

        alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})["entity"]
        clock.advance(1)
        thread, got = read_in_thread(
            lambda: store.do(
                TENANT, AGENT, {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}}
            )
        )
        thread.join(30)
        assert not thread.is_alive() and got[0]["entity"]["title"] == "CTO"
        assert seen == [None]


def test_a_read_held_longer_than_its_limit_is_refused_saying_why_and_reads_nothing(
    setup: tuple[Store, SlowGroup, Writer], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, group, _writer = setup
    monkeypatch.setattr(writer_module, "SETTLE_SECONDS", 0.2)
    with group:
        clock.advance(60)
        with pytest.raises(TenantBusy) as refused:
            store.get(TENANT, "Contact", group.alice, as_of="2026-01-15T10:01:30Z")
    assert refused.value.code == "storage_error"
    assert "may still add events at 2026-01-15T10:01:30.000000Z or before" in refused.value.message
    assert "Retry" in refused.value.hint


def test_a_clock_that_steps_back_does_not_stamp_an_event_under_an_instant_already_read(
    tmp_path: Path, schemas: SchemaSet, clock: FakeClock
) -> None:
    with Store(tmp_path / "data", schemas, clock=clock) as store:
        alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})["entity"]
        clock.advance(60)  # 10:01:00
        read = store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:00:30Z")
        clock.advance(-50)  # 10:00:10: the clock steps back
        update = {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}}
        stamped = store.do(TENANT, AGENT, update)["events"][0]["timestamp"]
        assert stamped > "2026-01-15T10:00:30.000000Z"
        assert store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:00:30Z") == read


def test_an_instant_already_read_stays_read_when_its_tenant_is_closed_and_opened_again(
    tmp_path: Path, schemas: SchemaSet, clock: FakeClock
) -> None:
    with Store(tmp_path / "data", schemas, clock=clock) as store:
        alice = store.do(TENANT, AGENT, {"action": "create", "type": "Contact", "data": {"name": "A"}})["entity"]
        clock.advance(60)
        read = store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:00:30Z")
        store.pool.close_idle()  # (the background flush does this; so does a pool at its limit of open tenants)
        clock.advance(-50)
        update = {"action": "update", "type": "Contact", "id": alice["$id"], "data": {"title": "CTO"}}
        assert store.do(TENANT, AGENT, update)["events"][0]["timestamp"] > "2026-01-15T10:00:30.000000Z"
        assert store.get(TENANT, "Contact", alice["$id"], as_of="2026-01-15T10:00:30Z") == read
