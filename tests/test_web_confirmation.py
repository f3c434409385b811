"""The sign-up's confirmation mail: rendered from the email templates in both languages."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import datetime

import pytest

from syndicate.config import Settings
from syndicate.web.confirmation import ConfirmationInfo, render_confirmation


@pytest.fixture
def mail_settings(settings: Settings) -> Settings:
    mail = dataclasses.replace(
        settings.mail, postal_address="Báo Lam Giang, 12 Trần Hưng Đạo, TP. Bến Lam"
    )
    return dataclasses.replace(settings, mail=mail)


def _lines_ok(text: str) -> bool:
    return all(len(line.encode()) < 998 for line in text.split("\n"))


@pytest.mark.parametrize(
    ("lang", "subject", "phrase"),
    [
        ("vi", "Xác nhận đăng ký bản tin Tin mới", "có hiệu lực trong 48 giờ"),
        ("en", "Confirm your subscription to Tin mới", "The link works for 48 hours"),
    ],
)
def test_confirmation_mail(
    mail_settings: Settings, now: datetime, lang: str, subject: str, phrase: str
) -> None:
    url = "http://localhost:8000/confirm?token=CONFIRM-MARKER.abc_def-123"
    rendered = render_confirmation(
        lang=lang, info=ConfirmationInfo.from_settings(mail_settings), confirm_url=url, now=now
    )
    assert rendered.subject == subject
    assert rendered.lang == lang
    assert url in rendered.text
    assert f'href="{url}"' in rendered.html
    assert phrase in rendered.html
    assert phrase in rendered.text
    assert "Báo Lam Giang" in rendered.text
    assert f'lang="{lang}"' in rendered.html
    assert _lines_ok(rendered.html)
    assert _lines_ok(rendered.text)
    assert all(len(line) <= 72 or url in line for line in rendered.text.split("\n"))


def test_confirmation_info_takes_its_values_from_the_settings(settings: Settings) -> None:
    info = ConfirmationInfo.from_settings(settings)
    assert info.site_title == settings.site.title
    assert info.base_url.endswith("/")
    assert (info.tz, info.postal_address) == (settings.site.tz, settings.mail.postal_address)
    assert info.confirm_hours == settings.subscribe.confirm_hours
    assert (info.templates_dir / "confirm.html.j2").is_file()
    annotations = {
        str(p.annotation) for p in inspect.signature(render_confirmation).parameters.values()
    }
    assert "Settings" not in annotations
