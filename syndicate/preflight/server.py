"""Preflight: does the configured SMTP server answer, encrypt with a trusted certificate and
accept the login? One connection, ended with QUIT; nothing is sent. The server is send's
`SmtpServer`, read from the settings where `send` reads it.
"""

from __future__ import annotations

import asyncio

import aiosmtplib

from syndicate.send.transports import SmtpServer, certificate_error, end_session


async def probe_smtp(smtp: SmtpServer, *, timeout: float) -> tuple[bool, str]:
    """Connect to `smtp` as `syndicate send` would; return (ok, one-line detail)."""
    try:
        return await asyncio.wait_for(_probe(smtp, timeout=timeout), timeout)
    except TimeoutError:
        return False, (
            f"{smtp.where} did not finish the greeting, TLS and login within "
            f"{timeout:g} s. Check smtp.host, smtp.port and the firewall."
        )


async def _probe(smtp: SmtpServer, *, timeout: float) -> tuple[bool, str]:
    where = smtp.where
    if smtp.username and not smtp.password:
        return False, (
            f"smtp.username is {smtp.username!r} but SYNDICATE_SMTP_PASSWORD is empty. "
            "Export the password, or leave smtp.username empty."
        )
    client = aiosmtplib.SMTP(
        hostname=smtp.host,
        port=smtp.port,
        timeout=timeout,
        use_tls=smtp.tls == "tls",
        start_tls=False,
    )
    steps: list[str] = []
    try:
        await client.connect()
        await client.ehlo()
        steps.append("answered")
        if smtp.tls == "starttls":
            if not client.supports_extension("starttls"):
                return False, (
                    f"{where} answered but does not offer STARTTLS. Use a port that does "
                    '(587), or implicit TLS (smtp.tls = "tls", port 465).'
                )
            await client.starttls()
            steps.append("STARTTLS with a trusted certificate")
        elif smtp.tls == "tls":
            steps.append("implicit TLS with a trusted certificate")
        else:
            offers = " (it offers STARTTLS)" if client.supports_extension("starttls") else ""
            return False, (
                f"{where} answered, but smtp.tls is 'none': mail and password travel in clear"
                f'{offers}. Set smtp.tls = "starttls" (port 587) or "tls" (port 465).'
            )
        if smtp.username:
            await client.login(smtp.username, smtp.password)
            steps.append(f"accepted the login of {smtp.username!r}")
        else:
            steps.append("no login configured")
        return True, f"{where} " + ", ".join(steps) + "."
    except aiosmtplib.SMTPAuthenticationError as exc:
        return False, (
            f"{where} refused the login of {smtp.username!r}: {exc.code} {exc.message}. "
            "Check smtp.username and SYNDICATE_SMTP_PASSWORD."
        )
    except aiosmtplib.SMTPException as exc:
        untrusted = certificate_error(exc)
        if untrusted is not None:
            return False, (
                f"{where}: the TLS certificate is not trusted: "
                f"{untrusted.verify_message or untrusted.reason}. The certificate must name "
                "smtp.host and chain to a CA this machine trusts (SSL_CERT_FILE)."
            )
        done = f" (it {', '.join(steps)})" if steps else ""
        return False, (
            f"{where}: {exc}{done}. Check smtp.host, smtp.port and smtp.tls "
            "(starttls for 587, tls for 465)."
        )
    except OSError as exc:
        return False, f"{where}: cannot connect: {exc}. Check smtp.host, smtp.port and smtp.tls."
    finally:
        await end_session(client)
