"""Bearer tokens: shown once, stored only as hashes, verified, listed and revoked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.auth.tokens import TokenStore
from server.errors import HeadlesslyError, NotFound

TOKEN = re.compile(r"^hly_([A-Za-z0-9]+)_([A-Za-z0-9_-]+)$")


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[TokenStore]:
    store = TokenStore(tmp_path / "data")
    yield store
    store.close()


def secret_of(token: str) -> str:
    match = TOKEN.match(token)
    assert match is not None, token
    return match.group(2)


def test_create_returns_an_hly_token_naming_its_record(tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_mR4nVkTw", note="laptop")
    match = TOKEN.match(token)
    assert match is not None
    assert match.group(1) == info.id
    assert len(secret_of(token)) >= 32
    assert info.tenant == "acme"
    assert info.actor == "agent_mR4nVkTw"
    assert info.read_only is False
    assert info.revoked_at is None
    assert info.note == "laptop"


def test_each_token_is_different(tokens: TokenStore) -> None:
    made = [tokens.create("acme", "agent_a") for _ in range(5)]
    assert len({token for token, _ in made}) == 5
    assert len({info.id for _, info in made}) == 5


def test_the_database_never_contains_the_secret(tmp_path: Path, tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a")
    tokens.close()
    secret = secret_of(token)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").iterdir() if p.name.startswith("tokens.db"))
    assert info.id.encode() in stored  # the file is the one holding the tokens
    assert secret.encode() not in stored
    assert token.encode() not in stored


def test_nothing_the_store_returns_carries_the_secret(tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a")
    secret = secret_of(token)
    listed = tokens.list()
    assert [t.id for t in listed] == [info.id]
    for value in (info.to_dict(), listed[0].to_dict(), tokens.verify(token).to_dict()):  # type: ignore[union-attr]
        assert secret not in repr(value)


def test_a_valid_token_verifies_to_its_record(tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a", read_only=True)
    verified = tokens.verify(token)
    assert verified == info
    assert verified is not None and verified.read_only is True


def test_a_token_survives_reopening_the_store(tmp_path: Path, tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a")
    tokens.close()
    reopened = TokenStore(tmp_path / "data")
    try:
        assert reopened.verify(token) == info
    finally:
        reopened.close()


def test_a_revoked_token_no_longer_verifies(tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a")
    revoked = tokens.revoke(info.id)
    assert revoked.id == info.id
    assert revoked.revoked_at is not None
    assert tokens.verify(token) is None


def test_a_wrong_secret_for_a_real_id_does_not_verify(tokens: TokenStore) -> None:
    token, info = tokens.create("acme", "agent_a")
    other, _ = tokens.create("acme", "agent_b")
    secret = secret_of(token)
    flipped = ("A" if secret[0] != "A" else "B") + secret[1:]
    assert tokens.verify(f"hly_{info.id}_{flipped}") is None
    assert tokens.verify(f"hly_{info.id}_{secret_of(other)}") is None
    assert tokens.verify(f"hly_{info.id}_{secret[:-1]}") is None
    assert tokens.verify(token) == info


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "garbage",
        "hly_",
        "hly__",
        "hly_abc",
        "hly_abc_",
        "hly__secret",
        "Bearer hly_x_y",
        "HLY_abc_def",
        "hly_000000000000_x",
    ],
)
def test_garbage_does_not_verify(tokens: TokenStore, garbage: str) -> None:
    tokens.create("acme", "agent_a")
    assert tokens.verify(garbage) is None


def test_list_hides_revoked_tokens_unless_asked(tokens: TokenStore) -> None:
    _, kept = tokens.create("acme", "agent_a")
    _, gone = tokens.create("acme", "agent_b")
    tokens.revoke(gone.id)
    assert [t.id for t in tokens.list()] == [kept.id]
    everything = {t.id: t for t in tokens.list(include_revoked=True)}
    assert everything.keys() == {kept.id, gone.id}
    assert everything[gone.id].revoked_at is not None
    assert everything[kept.id].revoked_at is None


def test_list_can_be_limited_to_one_tenant(tokens: TokenStore) -> None:
    _, acme = tokens.create("acme", "agent_a")
    _, other = tokens.create("globex", "agent_a")
    assert [t.id for t in tokens.list("acme")] == [acme.id]
    assert [t.id for t in tokens.list("globex")] == [other.id]
    assert {t.id for t in tokens.list()} == {acme.id, other.id}


def test_revoking_an_unknown_id_is_not_found(tokens: TokenStore) -> None:
    with pytest.raises(NotFound) as exc:
        tokens.revoke("nosuchtoken")
    assert exc.value.code == "not_found"
    assert "nosuchtoken" in exc.value.message


def test_revoking_twice_is_not_found_and_says_when_it_was_revoked(tokens: TokenStore) -> None:
    _, info = tokens.create("acme", "agent_a")
    first = tokens.revoke(info.id)
    with pytest.raises(NotFound) as again:
        tokens.revoke(info.id)
    assert f"token {info.id} was already revoked, at {first.revoked_at}" in again.value.message


@pytest.mark.parametrize("cut", ["wrong last letter", "cut after the id", "no secret at all"])
def test_a_whole_token_whose_secret_does_not_match_revokes_nothing(tokens: TokenStore, cut: str) -> None:
    secret, info = tokens.create("acme", "agent_a")
    pasted = {
        "wrong last letter": secret[:-1] + ("A" if not secret.endswith("A") else "B"),
        "cut after the id": f"hly_{info.id}_",
        "no secret at all": f"hly_{info.id}",
    }[cut]
    with pytest.raises(NotFound) as refused:
        tokens.revoke(pasted)
    assert "nothing was revoked" in refused.value.message and secret.split("_", 2)[2] not in refused.value.message
    assert tokens.verify(secret) is not None


def test_a_token_pasted_with_its_authorization_header_is_revoked_by_it(tokens: TokenStore) -> None:
    secret, info = tokens.create("acme", "agent_a")
    assert tokens.revoke(f"Authorization: Bearer {secret}").id == info.id
    assert tokens.verify(secret) is None


@pytest.mark.parametrize("tenant", ["", "Acme", "../etc", "a b", "-acme", "a" * 64, "acme/x"])
def test_a_bad_tenant_is_refused_and_nothing_is_stored(tokens: TokenStore, tenant: str) -> None:
    with pytest.raises(HeadlesslyError) as exc:
        tokens.create(tenant, "agent_a")
    assert exc.value.code == "invalid_tenant"
    assert tokens.list(include_revoked=True) == []


@pytest.mark.parametrize("actor", ["", "alice", "agent_", "robot_x", "agent_a b", "agent_" + "x" * 65, "agent_é"])
def test_a_bad_actor_is_refused_and_nothing_is_stored(tokens: TokenStore, actor: str) -> None:
    with pytest.raises(HeadlesslyError) as exc:
        tokens.create("acme", actor)
    assert exc.value.code == "invalid_actor"
    assert tokens.list(include_revoked=True) == []
