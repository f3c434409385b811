"""Web: the confirmation mail of a sign-up (double opt-in), rendered and built as MIME bytes.

Pure: the caller passes the clock, the confirm URL and the DKIM key. The body comes from
the email templates (`confirm.html.j2`, `confirm.txt.j2`) through the digest's renderer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from syndicate import mail
from syndicate.config import Settings, base_url, email_templates_dir
from syndicate.digest import PREHEADER_CHARS, RenderedEmail, make_strings, render_email
from syndicate.mail import DkimKey
from syndicate.model import Subscriber
from syndicate.text import header_safe, shorten


@dataclass(frozen=True, slots=True)
class ConfirmationInfo:
    """What the confirmation mail needs from the settings, as DigestInfo is for the digest."""

    site_title: str
    base_url: str  # ends in '/'
    tz: ZoneInfo
    postal_address: str
    confirm_hours: int
    templates_dir: Path

    @classmethod
    def from_settings(cls, settings: Settings) -> ConfirmationInfo:
        """Take the confirmation mail's values from `settings`."""
        return cls(
            site_title=settings.site.title,
            base_url=base_url(settings),
            tz=settings.site.tz,
            postal_address=settings.mail.postal_address,
            confirm_hours=settings.subscribe.confirm_hours,
            templates_dir=email_templates_dir(settings),
        )


def render_confirmation(
    *, lang: str, info: ConfirmationInfo, confirm_url: str, now: datetime
) -> RenderedEmail:
    """Render the double opt-in mail asking the reader to confirm their subscription."""
    site_title = info.site_title
    strings = make_strings(lang, site_title)
    strings["confirm_expiry"] = strings["confirm_expiry"].replace(
        "{hours}", str(info.confirm_hours)
    )
    subject = header_safe(strings["confirm_subject"])
    preheader = shorten(strings["confirm_body"], limit=PREHEADER_CHARS)
    root = info.base_url
    context = {
        "lang": lang,
        "t": strings,
        "site_title": site_title,
        "site_url": root,
        "subject": subject,
        "preheader": preheader,
        "confirm_url": confirm_url,
        "postal_address": info.postal_address,
        "year": now.astimezone(info.tz).year,
    }
    html, text = render_email(info.templates_dir, "confirm", context, keep={confirm_url})
    return RenderedEmail(lang=lang, subject=subject, preheader=preheader, html=html, text=text)


def build_confirmation(
    settings: Settings,
    *,
    subscriber: Subscriber,
    confirm_url: str,
    now: datetime,
    dkim: DkimKey | None = None,
) -> bytes:
    """Render the confirmation mail for `subscriber` in their language; return its bytes."""
    rendered = render_confirmation(
        lang=subscriber.language,
        info=ConfirmationInfo.from_settings(settings),
        confirm_url=confirm_url,
        now=now,
    )
    return mail.build_confirmation_message(
        rendered,
        info=mail.MailInfo.from_settings(settings),
        to=subscriber.email,
        now=now,
        dkim=dkim,
    )
