"""The SMTP pool's own session: pipelined envelopes (RFC 2920) where the server offers them,
one command at a time where it does not, and the same outcome for every reply either way.

Two real servers on 127.0.0.1: aiosmtpd (tests/plugins/smtp.py), told to offer PIPELINING
or not; and, for what aiosmtpd cannot do (hold its replies until the whole group is in,
answer a byte at a time, take DATA after refusing the recipient), a small scripted server.
"""

from __future__ import annotations

import asyncio

import pytest

from syndicate.errors import RecipientRefusedError, TransientSendError
from syndicate.send.policy import Stage
from syndicate.send.transports import SmtpMailer
from tests.plugins.smtp import Conversation, SmtpRecorder, run_smtp_server, scripted

MESSAGE = (
    b"From: a@example.org\r\nTo: b@example.org\r\nSubject: x\r\n\r\nXin ch\xc3\xa0o\r\n.dot\r\n"
)


async def _read_group(reader: asyncio.StreamReader) -> list[bytes]:
    """Read commands up to and with DATA without answering any of them."""
    lines: list[bytes] = []
    while not lines or lines[-1] != b"DATA\r\n":
        lines.append(await reader.readuntil(b"\r\n"))
    return lines


def _mailer(port: int, **options: float) -> SmtpMailer:
    return SmtpMailer(host="127.0.0.1", port=port, tls="none", connections=1, **options)


async def test_the_envelope_and_data_go_in_one_group_and_replies_in_one_packet_are_read() -> None:
    # The server answers nothing until it has DATA: a client waiting for MAIL's reply would
    # hang here. Its three replies then come in one write.
    seen: list[list[bytes]] = []
    bodies: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):
            seen.append(await _read_group(reader))
            writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go on\r\n")
            bodies.append(await reader.readuntil(b"\r\n.\r\n"))
            writer.write(b"250 2.0.0 queued\r\n")
        await reader.readuntil(b"\r\n")  # QUIT
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await asyncio.wait_for(mailer.send("news@example.org", ["c@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert seen[0][0].startswith(b"MAIL FROM:<news@example.org> BODY=8BITMIME SIZE=")
    assert seen[0][1:] == [b"RCPT TO:<b@example.org>\r\n", b"DATA\r\n"]
    assert seen[1][1] == b"RCPT TO:<c@example.org>\r\n"
    assert bodies[0].endswith(b"Xin ch\xc3\xa0o\r\n..dot\r\n.\r\n")  # dot-stuffed, 8 bit kept


async def test_replies_that_come_a_byte_at_a_time_and_on_several_lines_are_read_whole() -> None:
    async def dribble(writer: asyncio.StreamWriter, data: bytes) -> None:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_group(reader)
        await dribble(writer, b"250-first\r\n250 2.1.0 ok\r\n250 ok\r\n354-go\r\n354 on\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        await dribble(writer, b"250-2.0.0 queued\r\n250 2.0.0 as 12AB\r\n")
        await reader.readuntil(b"\r\n")
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()


async def test_a_refused_recipient_whose_data_is_taken_anyway_ends_the_session() -> None:
    # RFC 2920 says DATA must then be refused; a server that says 354 instead waits for a
    # body. The refusal is reported as such and the session is closed, never reused.
    connections = 0

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_group(reader)
        writer.write(b"250 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n")
        await reader.read()  # until the client hangs up

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        with pytest.raises(RecipientRefusedError) as refused:
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        assert (refused.value.stage, refused.value.code) == (Stage.RECIPIENT, 550)
        with pytest.raises(RecipientRefusedError):
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert connections == 2


async def test_a_421_to_mail_in_a_group_is_the_server_closing_not_a_lost_connection() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_group(reader)
        writer.write(b"421 4.3.2 shutting down\r\n")  # and closes: RCPT and DATA unanswered

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        with pytest.raises(TransientSendError) as closing:
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert (closing.value.stage, closing.value.code) == (Stage.SENDER, 421)
    assert not closing.value.in_flight


async def test_a_server_that_goes_silent_before_the_body_is_a_timeout_not_in_flight() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_group(reader)
        writer.write(b"250 ok\r\n")  # and nothing more
        await reader.read()

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=0.3)
        with pytest.raises(TransientSendError) as failed:
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        assert failed.value.stage == Stage.RECIPIENT
        assert not failed.value.in_flight
        await mailer.aclose()


async def test_a_server_flooding_an_idle_session_is_dropped_and_the_next_one_is_new() -> None:
    # Unasked data is kept for the next reply, up to a bound: past it the session is given
    # up (memory stays bounded) and the next message goes on a fresh connection.
    connections = 0
    flooded = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_group(reader)
        writer.write(b"250 ok\r\n250 ok\r\n354 go on\r\n")
        await reader.readuntil(b"\r\n.\r\n")
        writer.write(b"250 2.0.0 queued\r\n")
        if connections == 1:
            line = b"250-" + b"x" * 1000 + b"\r\n"
            try:
                for _ in range(1000):  # about 1 MB nobody asked for
                    writer.write(line)
                    await writer.drain()
            finally:
                flooded.set()  # all of it written, or the client hung up
        await reader.readuntil(b"\r\n")  # QUIT, or the end of a dropped connection
        writer.write(b"221 bye\r\n")

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        await asyncio.wait_for(mailer.send("news@example.org", ["a@example.org"], MESSAGE), 10)
        await asyncio.wait_for(flooded.wait(), 10)
        await asyncio.sleep(0.1)  # the last of it reaches the client
        await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert connections == 2


# The same refusals and faults through aiosmtpd, offering PIPELINING and not: one outcome.
BOTH = pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "one-by-one"])


@BOTH
async def test_refusals_and_acceptances_alike_on_both_paths(pipelining: bool) -> None:
    handler = SmtpRecorder(pipelining=pipelining)
    handler.refuse("gone@example.org", "550 5.1.1 no such user")
    handler.refuse("full@example.org", "452 4.2.2 mailbox full")
    with run_smtp_server(handler) as server:
        mailer = SmtpMailer(host="127.0.0.1", port=server.port, tls="none", connections=1)
        await mailer.send("news@example.org", ["a@example.org"], MESSAGE)
        with pytest.raises(RecipientRefusedError) as gone:
            await mailer.send("news@example.org", ["gone@example.org"], MESSAGE)
        with pytest.raises(TransientSendError) as full:
            await mailer.send("news@example.org", ["full@example.org"], MESSAGE)
        handler.fail_next("451 4.3.0 try later")
        with pytest.raises(TransientSendError) as later:
            await mailer.send("news@example.org", ["b@example.org"], MESSAGE)
        await mailer.send("news@example.org", ["c@example.org"], MESSAGE)
        await mailer.aclose()
    assert (gone.value.stage, gone.value.code) == (Stage.RECIPIENT, 550)
    assert (full.value.stage, full.value.code) == (Stage.RECIPIENT, 452)
    assert (later.value.stage, later.value.code) == (Stage.DATA, 451)
    assert handler.recipients() == ["a@example.org", "c@example.org"]
    assert handler.messages[0].raw.endswith(b"Xin ch\xc3\xa0o\r\n.dot\r\n")
    # A 5xx resets the envelope and the session goes on; after a 4xx a fresh one is opened.
    assert handler.connections == 3


@BOTH
async def test_a_dropped_connection_in_data_is_in_flight_and_the_next_message_reconnects(
    pipelining: bool,
) -> None:
    handler = SmtpRecorder(pipelining=pipelining)
    handler.drop_next = 1
    with run_smtp_server(handler) as server:
        mailer = SmtpMailer(host="127.0.0.1", port=server.port, tls="none", connections=1)
        with pytest.raises(TransientSendError) as dropped:
            await mailer.send("news@example.org", ["a@example.org"], MESSAGE)
        await mailer.send("news@example.org", ["b@example.org"], MESSAGE)
        await mailer.aclose()
    assert dropped.value.in_flight
    assert handler.recipients() == ["b@example.org"]
    assert handler.connections == 2


async def test_a_recipient_refused_with_421_and_a_hang_up_is_deferred_not_in_flight() -> None:
    # A server going down answers the group's RCPT with 421 and closes (RFC 5321 3.8) before
    # answering DATA. No body went: the refusal is what counts, not "the reply never came"
    # (which would leave the recipient in doubt, for the next run).
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_group(reader)
        writer.write(b"250 2.1.0 ok\r\n421 4.3.2 shutting down\r\n")
        await writer.drain()

    async with scripted(script) as port:
        mailer = _mailer(port, timeout=5)
        with pytest.raises(TransientSendError) as failed:
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert (failed.value.stage, failed.value.code) == (Stage.RECIPIENT, 421)
    assert not failed.value.in_flight


@BOTH
async def test_a_hang_up_before_the_354_is_not_in_flight(pipelining: bool) -> None:
    # The connection drops after the envelope is accepted, before DATA's 354: no body went,
    # so the server cannot have taken the message; it is deferred, not left in doubt.
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if pipelining:
            await _read_group(reader)
            writer.write(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n")
        else:
            for reply in (b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n"):
                await reader.readuntil(b"\r\n")
                writer.write(reply)
            await reader.readuntil(b"\r\n")  # DATA
        await writer.drain()

    async with scripted(script, pipelining=pipelining) as port:
        mailer = _mailer(port, timeout=5)
        with pytest.raises(TransientSendError) as failed:
            await asyncio.wait_for(mailer.send("news@example.org", ["b@example.org"], MESSAGE), 10)
        await mailer.aclose()
    assert failed.value.stage == Stage.DATA
    assert not failed.value.in_flight


class _Garbling(Conversation):
    """Answers RCPT for rcpt@ with a line that is not SMTP, and the body for body@ with a
    reply longer than any SMTP line; each once."""

    def __init__(self) -> None:
        super().__init__()
        self.garbled: set[str] = set()

    async def rcpt(self, recipient: str) -> bytes | None:
        if recipient == "rcpt@example.org" and recipient not in self.garbled:
            self.garbled.add(recipient)
            return b"hello, this is not SMTP\r\n"
        return await super().rcpt(recipient)

    async def body(self, recipient: str) -> bytes | None:
        if recipient == "body@example.org" and recipient not in self.garbled:
            self.garbled.add(recipient)
            return b"250 " + b"x" * 10_000 + b"\r\n"
        return await super().body(recipient)


@BOTH
async def test_a_reply_that_is_not_smtp_is_a_fault_of_the_session_not_a_refusal(
    pipelining: bool,
) -> None:
    # A garbled reply says nothing of the recipient: no refusal (no bounce), the session is
    # closed (out of step), and the outcome is that of no reply: not in flight before the
    # body, in flight after it.
    conversation = _Garbling()
    async with scripted(conversation, pipelining=pipelining) as port:
        mailer = _mailer(port, timeout=5)
        with pytest.raises(TransientSendError) as at_rcpt:
            await asyncio.wait_for(
                mailer.send("news@example.org", ["rcpt@example.org"], MESSAGE), 10
            )
        with pytest.raises(TransientSendError) as after_body:
            await asyncio.wait_for(
                mailer.send("news@example.org", ["body@example.org"], MESSAGE), 10
            )
        for address in ("rcpt@example.org", "body@example.org"):
            await asyncio.wait_for(mailer.send("news@example.org", [address], MESSAGE), 10)
        await mailer.aclose()
    assert (at_rcpt.value.stage, at_rcpt.value.code) == (Stage.RECIPIENT, -1)
    assert not at_rcpt.value.in_flight
    assert at_rcpt.value.reply == "Malformed SMTP response line: hello, this is not SMTP"
    assert (after_body.value.stage, after_body.value.code) == (Stage.DATA, -1)
    assert after_body.value.in_flight
    assert after_body.value.reply == "Response too long"
    assert conversation.accepted == ["rcpt@example.org", "body@example.org"]
    assert conversation.connections == 3  # each garbled session closed, never reused
