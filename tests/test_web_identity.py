"""Saved links after `erase`, through the live app: a confirm or unsubscribe link acts on
the subscriber it was made for, never on whoever signs up after them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from syndicate import tokens
from syndicate.config import Settings
from syndicate.model import Subscriber, SubscriptionStatus
from syndicate.store.meta import get_secret
from syndicate.store.subscribers import erase
from tests.plugins.web import LiveServer, open_settings_store, reset_server
from tests.test_tokens import make_legacy_token
from tests.test_web import confirm_url, sign_up, subscriber

ONE_CLICK = {"content-type": "application/x-www-form-urlencoded"}
DONE = "Bạn đã hủy đăng ký"
BAD_CONFIRM = "Liên kết xác nhận không dùng được"


@pytest.fixture
def server(shared_server: LiveServer, now: datetime) -> LiveServer:
    return reset_server(shared_server, now)


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield http


def _stored(server: LiveServer, address: str) -> Subscriber:
    found = subscriber(server.settings, address)
    assert found is not None, address
    return found


def _signed_up(server: LiveServer, client: httpx.Client, address: str) -> str:
    """Sign `address` up through the form; return the confirm link mailed to it."""
    count = len(server.mail.messages)
    assert sign_up(client, address).status_code == 200
    message = server.mail.wait_for(count + 1)[count]
    assert message["To"] == address
    return confirm_url(server, message)


def _unsubscribe_token(settings: Settings, found: Subscriber, now: datetime) -> str:
    """The token `send` puts in a digest's List-Unsubscribe link for `found`."""
    with open_settings_store(settings) as db:
        secret = get_secret(settings, db)
    return tokens.make_token(
        secret,
        purpose="unsubscribe",
        subscriber_id=found.id,
        nonce=found.token_nonce,
        issued_at=now,
    )


def _erase(settings: Settings, address: str, now: datetime) -> None:
    with open_settings_store(settings) as db:
        assert erase(db, address, now=now)


def _take_id(settings: Settings, address: str, subscriber_id: int) -> None:
    """Give `address` the id `subscriber_id`, as a database from before migration 4 (or a
    new database under the same SYNDICATE_SECRET) could have done."""
    with open_settings_store(settings) as db, db.transaction() as conn:
        conn.execute("UPDATE subscribers SET id = ? WHERE email_key = ?", (subscriber_id, address))
    assert _stored_id(settings, address) == subscriber_id


def _stored_id(settings: Settings, address: str) -> int:
    found = subscriber(settings, address)
    assert found is not None
    return int(found.id)


def _try_to_unsubscribe(client: httpx.Client, token: str) -> None:
    """Everything a saved unsubscribe link can do: open it, click the button, one-click POST."""
    assert client.get("unsubscribe", params={"token": token}).status_code == 200
    one_click = client.post(
        f"unsubscribe?token={token}", content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK
    )
    assert one_click.status_code == 200
    assert DONE in one_click.text  # the erased subscriber is off the list: true, and no leak
    assert client.post("unsubscribe", data={"token": token}).status_code == 200


def test_an_erased_subscribers_saved_unsubscribe_link_does_nothing_to_the_next_sign_up(
    server: LiveServer, client: httpx.Client
) -> None:
    alice_confirm = _signed_up(server, client, "alice@example.org")
    assert client.post(alice_confirm).status_code == 200
    alice = _stored(server, "alice@example.org")
    alice_leave = _unsubscribe_token(server.settings, alice, server.clock())
    _erase(server.settings, "alice@example.org", server.clock())

    server.clock.advance(minutes=5)
    assert client.post(_signed_up(server, client, "bob@example.org")).status_code == 200
    bob = _stored(server, "bob@example.org")
    assert bob.status is SubscriptionStatus.CONFIRMED
    assert bob.id != alice.id  # Alice had the highest id; Bob does not inherit it

    _try_to_unsubscribe(client, alice_leave)
    assert _stored(server, "bob@example.org") == bob
    # Bob's own link still works.
    bob_leave = _unsubscribe_token(server.settings, bob, server.clock())
    assert client.post(f"unsubscribe?token={bob_leave}").status_code == 200
    assert _stored(server, "bob@example.org").status is SubscriptionStatus.UNSUBSCRIBED


def test_an_erased_subscribers_saved_confirm_link_does_not_confirm_the_next_sign_up(
    server: LiveServer, client: httpx.Client
) -> None:
    carol_confirm = _signed_up(server, client, "carol@example.org")
    carol = _stored(server, "carol@example.org")
    _erase(server.settings, "carol@example.org", server.clock())

    server.clock.advance(minutes=5)
    dave_confirm = _signed_up(server, client, "dave@example.org")
    dave = _stored(server, "dave@example.org")
    assert dave.id != carol.id

    for answer in (client.get(carol_confirm), client.post(carol_confirm)):
        assert answer.status_code == 400
        assert BAD_CONFIRM in answer.text
    assert _stored(server, "dave@example.org").status is SubscriptionStatus.PENDING  # opt-in kept
    assert client.post(dave_confirm).status_code == 200
    assert _stored(server, "dave@example.org").status is SubscriptionStatus.CONFIRMED


def test_a_saved_link_does_nothing_to_a_later_subscriber_holding_the_same_id(
    server: LiveServer, client: httpx.Client
) -> None:
    # Bob gets Alice's very id (the old schema reused it; so does a new database under
    # the same SYNDICATE_SECRET): her links, new and from before nonces, are not his.
    with open_settings_store(server.settings) as db:
        secret = get_secret(server.settings, db)
    issued = server.clock()
    alice_confirm = _signed_up(server, client, "alice@example.org")
    assert client.post(alice_confirm).status_code == 200
    alice = _stored(server, "alice@example.org")
    alice_leave = _unsubscribe_token(server.settings, alice, issued)
    alice_legacy = make_legacy_token(
        secret, purpose="unsubscribe", subscriber_id=alice.id, issued_at=issued
    )
    carol_confirm = _signed_up(server, client, "carol@example.org")
    carol = _stored(server, "carol@example.org")
    carol_legacy = make_legacy_token(
        secret, purpose="confirm", subscriber_id=carol.id, issued_at=issued
    )
    _erase(server.settings, "alice@example.org", issued)
    _erase(server.settings, "carol@example.org", issued)

    server.clock.advance(minutes=5)
    assert client.post(_signed_up(server, client, "bob@example.org")).status_code == 200
    _take_id(server.settings, "bob@example.org", alice.id)
    _signed_up(server, client, "dave@example.org")
    _take_id(server.settings, "dave@example.org", carol.id)
    bob, dave = _stored(server, "bob@example.org"), _stored(server, "dave@example.org")

    for token in (alice_leave, alice_legacy):
        _try_to_unsubscribe(client, token)
        assert _stored(server, "bob@example.org") == bob
    for link in (carol_confirm, f"{server.url}confirm?token={carol_legacy}"):
        assert client.get(link).status_code == 400
        assert client.post(link).status_code == 400
        assert _stored(server, "dave@example.org").status is SubscriptionStatus.PENDING

    # Links from before nonces still work for the subscriber they were sent to.
    later = server.clock()
    dave_legacy = make_legacy_token(
        secret, purpose="confirm", subscriber_id=dave.id, issued_at=later
    )
    assert client.post("confirm", params={"token": dave_legacy}).status_code == 200
    assert _stored(server, "dave@example.org").status is SubscriptionStatus.CONFIRMED
    bob_legacy = make_legacy_token(
        secret, purpose="unsubscribe", subscriber_id=bob.id, issued_at=later
    )
    assert client.post(f"unsubscribe?token={bob_legacy}").status_code == 200
    assert _stored(server, "bob@example.org").status is SubscriptionStatus.UNSUBSCRIBED
