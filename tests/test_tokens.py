"""Tokens: signed, opaque, purpose-bound, expiring; verified in constant time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from syndicate.errors import TokenError
from syndicate.tokens import make_token, verify_token

SECRET = b"k" * 32
NOW = datetime(2024, 11, 1, 6, 0, tzinfo=UTC)


def _make(**kw: object) -> str:
    args: dict[str, object] = {"purpose": "unsubscribe", "subscriber_id": 42, "issued_at": NOW}
    args.update(kw)
    return make_token(SECRET, **args)  # type: ignore[arg-type]


def test_token_round_trips_to_the_subscriber_id() -> None:
    token = _make()
    assert verify_token(SECRET, token, purpose="unsubscribe", now=NOW) == 42


def test_token_is_url_safe_and_short() -> None:
    token = _make(subscriber_id=2**40)
    assert len(token) == 40
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_token_is_deterministic_for_the_same_inputs() -> None:
    assert _make() == _make()
    assert _make() != _make(subscriber_id=43)


def test_altered_token_is_refused() -> None:
    raw = bytearray(base64.urlsafe_b64decode(_make() + "=" * (-len(_make()) % 4)))
    raw[5] ^= 1  # change the subscriber id, keep the tag
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="signature does not match"):
        verify_token(SECRET, forged, purpose="unsubscribe", now=NOW)


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(TokenError, match="signature does not match"):
        verify_token(b"x" * 32, _make(), purpose="unsubscribe", now=NOW)


def test_confirm_token_cannot_unsubscribe() -> None:
    token = _make(purpose="confirm")
    assert verify_token(SECRET, token, purpose="confirm", now=NOW) == 42
    with pytest.raises(TokenError, match="another purpose"):
        verify_token(SECRET, token, purpose="unsubscribe", now=NOW)


def test_expired_token_is_refused_with_a_hint() -> None:
    token = _make(purpose="confirm")
    later = NOW + timedelta(hours=49)
    assert verify_token(SECRET, token, purpose="confirm", now=later) == 42  # no max_age
    with pytest.raises(TokenError, match="has expired") as caught:
        verify_token(SECRET, token, purpose="confirm", now=later, max_age=timedelta(hours=48))
    assert caught.value.hint == "Ask for a new one."


def test_token_from_the_future_is_refused() -> None:
    token = _make(issued_at=NOW + timedelta(hours=1))
    with pytest.raises(TokenError, match="in the future"):
        verify_token(SECRET, token, purpose="unsubscribe", now=NOW)


@pytest.mark.parametrize("bad", ["", "   ", "abc", "!!!!", "é" * 40, "A" * 200, _make()[:-2]])
def test_malformed_token_is_refused(bad: str) -> None:
    with pytest.raises(TokenError, match=r"malformed|signature"):
        verify_token(SECRET, bad, purpose="unsubscribe", now=NOW)


@pytest.mark.parametrize("junk", [".", "!", "=", "+", "%"])
def test_a_valid_token_with_stray_characters_is_refused(junk: str) -> None:
    token = _make()
    for spelled in (token + junk, token[:20] + junk + token[20:]):
        with pytest.raises(TokenError, match="malformed"):
            verify_token(SECRET, spelled, purpose="unsubscribe", now=NOW)


def test_token_holds_no_email_address() -> None:
    raw = base64.urlsafe_b64decode(_make() + "=" * (-len(_make()) % 4))
    assert b"@" not in raw
