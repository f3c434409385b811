"""The test suite's own servers: they must not be what fails a test."""

from __future__ import annotations

import gc
import smtplib
import socket

import pytest

from tests.plugins import smtp as smtp_plugin
from tests.plugins.smtp import run_smtp_server


def test_the_test_smtp_server_binds_another_port_when_its_first_was_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # free_port's port is free only a moment ago: in a CI run another test process took it
    # first, the server failed to start ("address already in use") and aiosmtpd left its
    # loop and sockets open, which failed a later test on the same process as well.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = [int(taken.getsockname()[1])]
        free_port = smtp_plugin.free_port
        monkeypatch.setattr(smtp_plugin, "free_port", lambda: first.pop() if first else free_port())
        with run_smtp_server(ready_timeout=3) as server:
            assert server.port != taken.getsockname()[1]
            with smtplib.SMTP(server.host, server.port, timeout=10) as client:
                client.sendmail("a@example.org", ["b@example.org"], b"Subject: x\r\n\r\nx\r\n")
            assert server.handler.wait_for(1)
    gc.collect()  # a loop left open warns here, and the suite's warnings are errors
