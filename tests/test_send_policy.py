"""Send policy: the pure map from one SMTP outcome to a ledger action, without SMTP."""

from __future__ import annotations

import dataclasses

import pytest

from syndicate.config import Settings
from syndicate.send import Action, Outcome, SendPolicy, Stage, to_action


@pytest.mark.parametrize(
    ("stage", "code", "reply", "in_flight", "action"),
    [
        (Stage.DATA, 250, "250 2.0.0 OK queued", False, Action.SENT),
        (Stage.RECIPIENT, 550, "550 5.1.1 User unknown", False, Action.BOUNCE_NOW),
        (Stage.RECIPIENT, 550, "550 5.1.10 null MX", False, Action.BOUNCE_NOW),
        (Stage.RECIPIENT, 550, "550 5.2.1 mailbox disabled", False, Action.BOUNCE_NOW),
        (Stage.RECIPIENT, 550, "550 5.1.0 sender not allowed", False, Action.COUNT_BOUNCE),
        (Stage.RECIPIENT, 553, "553 5.1.8 bad sender domain", False, Action.COUNT_BOUNCE),
        (Stage.RECIPIENT, 550, "550 5.7.1 refused by policy", False, Action.COUNT_BOUNCE),
        (Stage.RECIPIENT, 552, "552 5.2.2 mailbox full", False, Action.COUNT_BOUNCE),
        (Stage.RECIPIENT, 550, "550 no such user here", False, Action.COUNT_BOUNCE),
        (Stage.DATA, 554, "554 5.7.1 message refused", False, Action.COUNT_BOUNCE),
        (Stage.RECIPIENT, 452, "452 4.2.2 mailbox full", False, Action.DEFER),
        (Stage.RECIPIENT, 451, "451 4.7.1 greylisted", False, Action.DEFER),
        (Stage.RECIPIENT, 421, "421 4.3.2 closing", False, Action.DEFER),
        (Stage.DATA, 451, "451 4.3.0 try later", False, Action.DEFER),
        (Stage.RECIPIENT, 0, "Unexpected EOF received", False, Action.DEFER),
        (Stage.SENDER, 451, "451 4.3.0 later", False, Action.DEFER),
        (Stage.DATA, 0, "Timed out waiting for server response", True, Action.IN_DOUBT),
        # A reply that is not SMTP (aiosmtplib's code -1) counts as no reply at all.
        (Stage.RECIPIENT, -1, "Malformed SMTP response line: hello", False, Action.DEFER),
        (Stage.SENDER, -1, "Malformed SMTP response line: hello", False, Action.DEFER),
        (Stage.DATA, -1, "Response too long", False, Action.DEFER),
        (Stage.DATA, -1, "Response too long", True, Action.IN_DOUBT),
        (Stage.SESSION, -1, "Malformed SMTP response line: hello", False, Action.RECONNECT),
        (Stage.SENDER, 550, "550 5.7.1 sender rejected", False, Action.SETUP_STOP),
        (Stage.SENDER, 553, "553 5.1.8 sender domain", False, Action.SETUP_STOP),
        (Stage.RECIPIENT, 530, "530 5.7.0 authentication required", False, Action.SETUP_STOP),
        (Stage.RECIPIENT, 535, "535 5.7.8 bad credentials", False, Action.SETUP_STOP),
        (Stage.SESSION, 554, "554 5.7.1 no service for you", False, Action.SETUP_STOP),
        (Stage.SESSION, 421, "421 4.3.2 too busy", False, Action.RECONNECT),
        (Stage.SESSION, 0, "Connection refused", False, Action.RECONNECT),
    ],
)
def test_each_outcome_maps_to_one_ledger_action(
    stage: Stage, code: int, reply: str, in_flight: bool, action: Action
) -> None:
    assert to_action(Outcome(stage, code, reply, in_flight=in_flight)) is action


def test_enhanced_status_codes_are_read_from_the_reply_text() -> None:
    assert Outcome(Stage.RECIPIENT, 550, "550 5.1.1 User unknown").enhanced == "5.1.1"
    assert Outcome(Stage.RECIPIENT, 550, "5.2.1 disabled").enhanced == "5.2.1"
    assert Outcome(Stage.RECIPIENT, 550, "550 User unknown 5.1.1").enhanced is None
    assert Outcome(Stage.RECIPIENT, 550, "550 5.1.1.2 odd").enhanced is None


def test_the_policy_is_built_once_from_the_settings(settings: Settings) -> None:
    tuned = dataclasses.replace(
        settings,
        mail=dataclasses.replace(settings.mail, transport="smtp", bounce_limit=4),
        smtp=dataclasses.replace(
            settings.smtp, connections=3, rate=9.0, retry_window=40.0, data_timeout=120.0
        ),
    )
    policy = SendPolicy.from_settings(tuned)
    assert (policy.connections, policy.rate, policy.bounce_limit) == (3, 9.0, 4)
    assert (policy.retry_window, policy.retry_delay, policy.data_timeout) == (40.0, 5.0, 120.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [5.0, 10.0, 20.0, 40.0, 60.0]
    outbox = SendPolicy.from_settings(settings)  # the outbox writes one file at a time
    assert (outbox.connections, outbox.rate) == (1, 0.0)
    assert (
        SendPolicy.from_settings(
            dataclasses.replace(settings, smtp=dataclasses.replace(settings.smtp, retry_window=2.0))
        ).retry_delay
        == 0.25
    )


def test_per_message_send_errors_sit_in_errors_py_under_one_branch() -> None:
    from syndicate import errors
    from syndicate.send.policy import Outcome, Stage, outcome_of, to_action

    refused = errors.RecipientRefusedError(
        "an@example.org", stage=Stage.RECIPIENT, code=550, reply="550 5.1.1 no such user"
    )
    transient = errors.TransientSendError(
        "busy", stage=Stage.DATA, code=0, reply="dropped", in_flight=True
    )
    for error in (refused, transient, errors.DeliveryError("x"), errors.TempFailError("x")):
        assert isinstance(error, errors.SendError)
    # One refused address is not a refused run, and one 4xx is not "the server stayed down".
    assert not isinstance(refused, errors.DeliveryError)
    assert not isinstance(transient, errors.TempFailError)
    assert refused.exit_code == errors.EXIT_FAILED
    assert transient.exit_code == errors.EXIT_TEMPFAIL
    assert str(refused) == "an@example.org: the server refused the message: 550 5.1.1 no such user"
    assert outcome_of(refused) == Outcome(Stage.RECIPIENT, 550, "550 5.1.1 no such user")
    assert outcome_of(transient) == Outcome(Stage.DATA, 0, "dropped", in_flight=True)
    assert to_action(outcome_of(transient)) is to_action(
        Outcome(Stage.DATA, 0, "dropped", in_flight=True)
    )
