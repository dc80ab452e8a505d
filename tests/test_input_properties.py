"""Property tests for the open-ended inputs at the edges: tenant and actor names, bearer tokens and cursors.

Each rule is modelled here from the contract (§2 words, §8 tokens), not imported from the server: any
text is accepted exactly when the model says so, and whatever is refused leaves no trace."""

from __future__ import annotations

import base64
import string
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AGENT, TENANT, FakeClock, create
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.auth.tokens import TokenStore
from server.errors import InvalidActor, InvalidCursor, InvalidTenant
from server.store import Store


def budget(examples: int) -> settings:
    """Each test stays well under 10 s. The `store` fixture is shared by every example of a test on
    purpose: each property holds of one call on any store, whatever earlier examples wrote to it."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


def files(root: Path) -> list[str]:
    """Every path under `root`, relative to it (nothing if it does not exist yet)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() else []


def mutated(base: st.SearchStrategy[str], extras: list[str], edges: range) -> st.SearchStrategy[str]:
    """Names near `base`: one edit that often (not always) breaks the rule, at a random place;
    `edges` are the lengths around the longest allowed, which a padded name is likely cut to."""

    @st.composite
    def edit(draw: st.DrawFn) -> str:
        name = draw(base)
        at = draw(st.integers(0, len(name)))
        piece = draw(st.sampled_from(extras) | st.characters())
        how = draw(
            st.sampled_from(["insert", "replace", "append", "prepend", "upper", "pad", "cut", "newline", "keep"])
        )
        if how == "insert":
            return name[:at] + piece + name[at:]
        if how == "replace":
            return name[:at] + piece + name[at + 1 :]
        if how == "append":
            return name + piece
        if how == "prepend":
            return piece + name
        if how == "upper":
            return name[:at] + name[at : at + 1].upper() + name[at + 1 :]
        if how == "pad":  # mostly to just under, at or just over the longest allowed
            length = draw(st.sampled_from(edges) | st.integers(0, edges.stop + 5))
            return (name + "a" * length)[:length]
        if how == "cut":
            return name[:at]
        if how == "newline":  # `$` matches before a final newline: only a full match refuses it
            return name + "\n"
        return name

    return edit()


# ---- tenant names (CONTRACT §2: ^[a-z0-9][a-z0-9-]{0,62}$, and never a Windows device name) ------

TENANT_FIRST = string.ascii_lowercase + string.digits
TENANT_REST = TENANT_FIRST + "-"
DEVICE_NAMES = {"con", "prn", "aux", "nul"} | {f"{d}{i}" for d in ("com", "lpt") for i in range(10)}


def is_tenant_name(text: str) -> bool:
    """The rule, spelt out: 1 to 63 characters, lowercase ASCII letters, digits and '-', not starting
    with '-'; and not a reserved device name (a file named `con.db` cannot be made on Windows)."""
    return (
        1 <= len(text) <= 63
        and text[0] in TENANT_FIRST
        and all(c in TENANT_REST for c in text)
        and text not in DEVICE_NAMES
    )


# Path pieces, separators, whitespace, NUL, case; and look-alikes of allowed characters (dotless i and
# dotted I, Kelvin sign, fullwidth 0 and a) that a Unicode-aware or case-folding check would let through.
LOOKALIKES = ["\u00e9", "\u0131", "\u0130", "\u212a", "\uff10", "\uff41"]
TENANT_EXTRAS = [*"/\\.-_ \n\x00A:~", "..", "../", *LOOKALIKES]
near_tenant_names = st.one_of(
    mutated(st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True), TENANT_EXTRAS, range(61, 66)),
    st.sampled_from(sorted(DEVICE_NAMES)).flatmap(
        lambda d: st.sampled_from([d, d.upper(), d + "0", d + "-1", d + ".db", "x" + d, d[:-1]])
    ),
)


def tenant_outcome(store: Store, name: str) -> bool:
    """Whether the store took `name` as a tenant for a write; a refusal must have touched no file."""
    before = files(store.data_dir)
    try:
        entity = store.do(name, AGENT, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})["entity"]
    except InvalidTenant as refused:
        assert refused.code == "invalid_tenant" and refused.hint
        with pytest.raises(InvalidTenant):
            store.find(name, "Contact")
        assert files(store.data_dir) == before, f"refused tenant {name!r} touched the data dir"
        return False
    new = set(files(store.data_dir)) - set(before)
    assert all(p == "tenants" or p.startswith(f"tenants/{name}.db") for p in new), new
    assert (store.data_dir / "tenants" / f"{name}.db").is_file()
    assert store.get(name, "Contact", entity["$id"])["$createdBy"] == AGENT
    return True


@budget(150)
@given(name=st.text())
@example(name="")
@example(name="a" * 63)
@example(name="a" * 64)
@example(name="acme\n")
@example(name="\ud800")  # a lone surrogate (st.text() leaves them out)
@example(name="con")
def test_any_text_is_a_tenant_exactly_when_it_matches_the_tenant_rule(store: Store, name: str) -> None:
    assert tenant_outcome(store, name) == is_tenant_name(name)


@budget(250)
@given(name=near_tenant_names)
@example(name="a" * 63)
@example(name="a" * 64)
@example(name="-acme")
@example(name="acme-")
@example(name="../acme")
@example(name="acme.")
@example(name="Acme")
@example(name="lpt9")
@example(name="com10")
def test_a_name_near_a_tenant_name_is_a_tenant_exactly_when_it_matches_the_tenant_rule(store: Store, name: str) -> None:
    assert tenant_outcome(store, name) == is_tenant_name(name)


# ---- actor names (CONTRACT §2: ^(agent|user|system)_[A-Za-z0-9_-]{1,64}$) ----------------------

ACTOR_KINDS = ("agent", "user", "system")
ACTOR_REST = string.ascii_letters + string.digits + "_-"


def is_actor(text: str) -> bool:
    """The rule, spelt out: a kind, '_', then 1 to 64 ASCII letters, digits, '_' or '-'."""
    for kind in ACTOR_KINDS:
        rest = text.removeprefix(kind + "_")
        if rest != text and 1 <= len(rest) <= 64 and all(c in ACTOR_REST for c in rest):
            return True
    return False


ACTOR_EXTRAS = [*"/. \n\x00:@", "agent_", "bot_", "User_", "\u00df", *LOOKALIKES]
near_actors = mutated(
    st.from_regex(r"(agent|user|system)_[A-Za-z0-9_-]{1,64}", fullmatch=True), ACTOR_EXTRAS, range(68, 74)
)


def last_event(store: Store) -> dict[str, Any]:
    (event,) = store.events(TENANT, sort="-seq", limit=1)["results"]
    return event


def actor_outcome(store: Store, clock: FakeClock, actor: str) -> bool:
    """Whether `store.do` took `actor`; a refused actor wrote nothing, an accepted one wrote as itself."""
    create(store, "Contact", name="Earlier")  # the tenant exists and has a last event
    before, before_files = last_event(store), files(store.data_dir)
    clock.advance(1)
    try:
        result = store.do(TENANT, actor, {"action": "create", "type": "Contact", "data": {"name": "Ada"}})
    except InvalidActor as refused:
        assert refused.code == "invalid_actor" and refused.hint
        assert last_event(store) == before, f"refused actor {actor!r} wrote an event"
        assert files(store.data_dir) == before_files
        return False
    (event,) = result["events"]
    assert event["actor"] == actor and event["seq"] == before["seq"] + 1
    assert last_event(store) == event
    assert store.get(TENANT, "Contact", result["entity"]["$id"])["$createdBy"] == actor
    return True


@budget(150)
@given(actor=st.text())
@example(actor="agent_")
@example(actor="agent_x\n")
@example(actor="agent_\ud800")  # a lone surrogate (st.text() leaves them out)
@example(actor="agent_\u00e9")
@example(actor="agent_" + "a" * 64)
@example(actor="agent_" + "a" * 65)
def test_any_text_is_an_actor_exactly_when_it_matches_the_actor_rule(
    store: Store, clock: FakeClock, actor: str
) -> None:
    assert actor_outcome(store, clock, actor) == is_actor(actor)


@budget(250)
@given(actor=near_actors)
@example(actor="Agent_x")
@example(actor="agentx")
@example(actor="agent_x\n")
@example(actor="user__")
@example(actor="system_-")
@example(actor="agent_x.y")
def test_a_name_near_an_actor_is_an_actor_exactly_when_it_matches_the_actor_rule(
    store: Store, clock: FakeClock, actor: str
) -> None:
    assert actor_outcome(store, clock, actor) == is_actor(actor)


# ---- bearer tokens (CONTRACT §8: hly_<id>_<secret>, stored only as a hash) ----------------------


Issued = tuple[TokenStore, str, str]


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issued]:
    """A token store holding one live token and one revoked one: (store, live token, revoked token)."""
    tokens = TokenStore(tmp_path_factory.mktemp("tokens") / "data")
    live, _ = tokens.create(TENANT, AGENT)
    revoked, info = tokens.create(TENANT, "agent_revoked")
    tokens.revoke(info.id)
    yield tokens, live, revoked
    tokens.close()


def only_the_real_token_verifies(issued: Issued, candidate: str) -> None:
    tokens, live, revoked = issued
    if candidate != live:
        assert tokens.verify(candidate) is None, f"{candidate!r} verified"
    info = tokens.verify(live)
    assert info is not None and (info.tenant, info.actor) == (TENANT, AGENT)
    assert tokens.verify(revoked) is None


URLSAFE = string.ascii_letters + string.digits + "_-"
# Near misses of the live token's parts, by name (so that examples can name them).
ID_EDITS: dict[str, Callable[[str], str]] = {
    "same": lambda i: i,
    "upper": str.upper,
    "empty": lambda i: "",
    "longer": lambda i: i + "0",
    "shorter": lambda i: i[:-1],
}
SECRET_EDITS: dict[str, Callable[[str], str]] = {
    **ID_EDITS,
    "swapcase": str.swapcase,
    "spaced": lambda s: s + " ",
    "doubled": lambda s: s + s,
}


def part(edits: dict[str, Callable[[str], str]], alphabet: str) -> st.SearchStrategy[tuple[str, str]]:
    """("edit", name) of a near miss of the real part, or ("text", random text)."""
    return st.tuples(st.just("edit"), st.sampled_from(sorted(edits))) | st.tuples(
        st.just("text"), st.text(alphabet, max_size=60) | st.text()
    )


# Any character, lone surrogates included (st.text() leaves those out; st.characters() does not).
UTF8 = st.characters(exclude_categories=("Cs",))  # what UTF-8 can carry: no lone surrogates


@budget(300)
@given(text=st.text())
@example(text="")
@example(text="hly_")
@example(text="hly__")
@example(text="hly_\ud800_x")
def test_any_text_does_not_verify_as_a_token(issued: Issued, text: str) -> None:
    only_the_real_token_verifies(issued, text)


@budget(300)
@given(id_part=part(ID_EDITS, string.hexdigits), secret_part=part(SECRET_EDITS, URLSAFE))
@example(id_part=("edit", "upper"), secret_part=("edit", "same"))
@example(id_part=("edit", "same"), secret_part=("edit", "longer"))
@example(id_part=("edit", "same"), secret_part=("edit", "spaced"))
@example(id_part=("edit", "same"), secret_part=("edit", "swapcase"))
def test_any_token_shaped_text_does_not_verify(
    issued: Issued, id_part: tuple[str, str], secret_part: tuple[str, str]
) -> None:
    token_id, _, secret = issued[1].removeprefix("hly_").partition("_")
    (id_how, id_value), (secret_how, secret_value) = id_part, secret_part
    if id_how == "edit":
        id_value = ID_EDITS[id_value](token_id)
    if secret_how == "edit":
        secret_value = SECRET_EDITS[secret_value](secret)
    only_the_real_token_verifies(issued, f"hly_{id_value}_{secret_value}")


@budget(400)
@given(data=st.data())
def test_a_real_or_revoked_token_with_one_character_changed_does_not_verify(
    issued: Issued, data: st.DataObject
) -> None:
    _, live, revoked = issued
    token = data.draw(st.sampled_from([live, revoked]), "token")
    at = data.draw(st.integers(0, len(token)), "position")  # len(token): after the last character
    piece = data.draw(st.sampled_from(URLSAFE + " \t\n") | UTF8, "character")
    how = data.draw(st.sampled_from(["replace", "insert", "delete"]), "edit")
    changed = {
        "replace": token[:at] + piece + token[at + 1 :],
        "insert": token[:at] + piece + token[at:],
        "delete": token[:at] + token[at + 1 :],
    }[how]
    only_the_real_token_verifies(issued, changed)


# ---- search cursors (CONTRACT §7: opaque, and refused as invalid_cursor when not as issued) -------

B64URL = string.ascii_letters + string.digits + "-_"


def spelt(token: str) -> bytes | None:
    """The bytes a cursor spells in base64url with its padding left off (as issued), if any."""
    try:
        return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:  # binascii.Error, or text that is not ASCII
        return None


@pytest.fixture
def pages(store: Store, clock: FakeClock) -> dict[str, Any]:
    """Twenty contacts; the first pages of a search by name and of the events; then others write on (so
    that the log's head is well past the position the cursors read at), and the genuine second pages."""
    for i in range(20):
        clock.advance(1)
        create(store, "Contact", name=f"Person {i:02d}")
    first, events = store.find(TENANT, "Contact", sort="name", limit=5), store.events(TENANT, limit=5)
    for i in range(40):
        clock.advance(1)
        create(store, "Deal", name=f"Deal {i:02d}", value=i)
    return {
        "search": (first["cursor"], store.find(TENANT, "Contact", sort="name", limit=5, cursor=first["cursor"])),
        "events": (events["cursor"], store.events(TENANT, limit=5, cursor=events["cursor"])),
    }


def next_page(store: Store, kind: str, cursor: str) -> dict[str, Any]:
    if kind == "search":
        return store.find(TENANT, "Contact", sort="name", limit=5, cursor=cursor)
    return store.events(TENANT, limit=5, cursor=cursor)


def refused_or_same(store: Store, kind: str, altered: str, second: dict[str, Any]) -> dict[str, Any] | None:
    """None if `altered` is refused as invalid_cursor; else the page it gave, which must be the genuine one."""
    try:
        page = next_page(store, kind, altered)
    except InvalidCursor as refused:
        assert refused.code == "invalid_cursor" and refused.hint
        return None
    assert page == second, f"altered cursor {altered!r} gave another page"
    return page


@budget(400)
@given(data=st.data())
def test_a_search_cursor_with_any_character_changed_is_invalid_cursor(
    store: Store, pages: dict[str, Any], data: st.DataObject
) -> None:
    kind = data.draw(st.sampled_from(["search", "events"]), "kind")
    cursor, second = pages[kind]
    at = data.draw(st.integers(0, len(cursor) - 1), "position")
    piece = data.draw(st.sampled_from(B64URL + "+/=") | st.characters(), "replacement")
    altered = cursor[:at] + piece + cursor[at + 1 :]
    if altered != cursor and refused_or_same(store, kind, altered, second) is not None:
        # Accepted: only the same bytes spelt another way (base64 decoding is lenient about the unused
        # low bits of the last character, and takes '+' and '/' for '-' and '_').
        assert spelt(altered) == spelt(cursor), f"altered cursor {altered!r} (at {at}) was accepted"


@budget(500)
@given(data=st.data())
def test_a_search_cursor_with_any_character_of_its_content_changed_is_invalid_cursor(
    store: Store, pages: dict[str, Any], data: st.DataObject
) -> None:
    """The same, one layer down: every character of what the cursor encodes (sort keys, log position
    and check value) is covered by the check, whatever it is changed to."""
    kind = data.draw(st.sampled_from(["search", "events"]), "kind")
    cursor, second = pages[kind]
    content = (spelt(cursor) or b"").decode()
    at = data.draw(st.integers(0, len(content) - 1), "position")
    # Mostly a character of the same kind (a digit for a digit...): the changes that keep the content valid.
    alike = next(kind for kind in (string.digits, string.ascii_letters, string.printable) if content[at] in kind)
    piece = data.draw(st.sampled_from(alike) | st.sampled_from(string.printable) | UTF8, "replacement")
    changed = content[:at] + piece + content[at + 1 :]
    altered = base64.urlsafe_b64encode(changed.encode()).decode().rstrip("=")
    if changed != content and refused_or_same(store, kind, altered, second) is not None:
        raise AssertionError(f"a cursor encoding {changed!r} (changed at {at}) was accepted")
