"""Mail: one template per digest and language, filled per recipient; headers safe and complete."""

from __future__ import annotations

import base64
import dataclasses
import inspect
import re
import shutil
import subprocess
import typing
import unicodedata
from datetime import date, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from syndicate import mail
from syndicate.bounces.parse import digest_hint
from syndicate.config import Settings
from syndicate.digest import DigestInfo, RenderedEmail, make_subject
from syndicate.errors import ConfigError
from syndicate.mail import (
    DkimKey,
    MailInfo,
    build_confirmation_message,
    build_digest_template,
    fill_message,
    unsubscribe_url,
)

MARKER = "https://marker.syndicate.invalid/unsubscribe?token=MARKER-abc123"
DAY = date(2024, 11, 1)
KEY = "5eed0f1c2a3b"  # the digest's part of its Message-IDs (digests.message_key)
URL = "https://news.example.org/unsubscribe?token=AQIAAAAAAAAAKmckm3Dk_-x"


@pytest.fixture
def mail_settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        site=dataclasses.replace(settings.site, base_url="https://news.example.org/"),
        mail=dataclasses.replace(
            settings.mail,
            from_="Tin mới Lam Giang <news@example.org>",
            reply_to="toa-soan@example.org",
            postal_address="1 Đường Lê Lợi, Bến Lam",
        ),
    )


@pytest.fixture
def rendered() -> RenderedEmail:
    return RenderedEmail(
        lang="vi",
        subject="Tin mới: <b>bản tin</b> ngày 1/11\r\nBcc: x@y",
        preheader="Thông xe cầu Sông Lam",
        html=(
            '<!doctype html><html lang="vi"><body><p>Thông xe cầu &lt;script&gt;</p>\n'
            f'<a href="{MARKER}">Hủy đăng ký</a></body></html>\n'
        ),
        text=f"Thông xe cầu <script>\n\nHủy đăng ký: {MARKER}\n",
    )


def _parse(raw: bytes) -> EmailMessage:
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _fill(template, to: str = "an@example.org", subscriber_id: int = 42) -> bytes:  # type: ignore[no-untyped-def]
    return fill_message(template, to=to, subscriber_id=subscriber_id, unsubscribe_url=URL)


def _template(rendered, settings, now, **extra):  # type: ignore[no-untyped-def]
    """The digest's message template as `send` builds it for DAY, from `settings`."""
    return build_digest_template(
        rendered,
        info=MailInfo.from_settings(settings),
        digest_day=DAY,
        marker=MARKER,
        now=now,
        message_key=KEY,
        **extra,
    )


@pytest.mark.parametrize(
    ("from_", "title", "shown"),
    [
        # No name: the site's title, which readers know (not "syndicate").
        ("news@example.org", "Báo Lam Giang", ("Báo Lam Giang", "news@example.org")),
        ("", 'Báo, "Lam" <Giang>', ('Báo, "Lam" <Giang>', "newsletter@localhost")),
        ("", "The Daily", ("The Daily", "newsletter@localhost")),
        # A name configured wins.
        ("Tòa soạn <news@example.org>", "Báo Lam Giang", ("Tòa soạn", "news@example.org")),
    ],
)
def test_a_sender_without_a_name_is_shown_under_the_sites_title(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now, from_: str, title: str, shown: tuple[str, str]
) -> None:
    settings = dataclasses.replace(
        mail_settings,
        site=dataclasses.replace(mail_settings.site, title=title),
        mail=dataclasses.replace(mail_settings.mail, from_=from_),
    )
    digest = _parse(_fill(_template(rendered, settings, now)))
    confirmation = _parse(
        build_confirmation_message(
            rendered, info=MailInfo.from_settings(settings), to="an@example.org", now=now
        )
    )
    for msg in (digest, confirmation):
        [address] = msg["From"].addresses
        assert (address.display_name, address.addr_spec) == shown


def test_digest_message_has_every_header(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    msg = _parse(_fill(template))
    assert msg["To"] == "an@example.org"
    assert msg["From"] == "Tin mới Lam Giang <news@example.org>"
    assert msg["Reply-To"] == "toa-soan@example.org"
    assert msg["Subject"] == "Tin mới: <b>bản tin</b> ngày 1/11 Bcc: x@y"
    assert msg["Date"] == "Fri, 01 Nov 2024 06:00:00 +0000"
    assert msg["Message-ID"] == f"<2024-11-01.42.{KEY}@news.example.org>"
    assert msg["List-Id"] == "Tin mới <digest.news.example.org>"
    # The mail's language ends the link: its pages speak it (the same for every recipient).
    assert msg["List-Unsubscribe"] == f"<{URL}&lang=vi>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["Content-Language"] == "vi"
    assert msg["Bcc"] is None
    assert msg.get_content_type() == "multipart/alternative"
    assert not msg.defects


def test_subject_is_one_encoded_line_that_round_trips(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    raw = _fill(template)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert not re.search(rb"(?m)^Bcc:", head)
    subject = re.search(rb"(?m)^Subject: .*(\r\n[ \t].*)*", head)
    assert subject is not None
    assert b"=?utf-8?" in subject.group(0)
    assert _parse(raw)["Subject"].count("\n") == 0


def test_parts_are_text_then_html_with_the_url_filled_in(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    raw = _fill(template)
    assert b"MARKER" not in raw
    text, html = _parse(raw).iter_parts()
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert text.get_content_charset() == "utf-8"
    assert text.get_content().replace("\r\n", "\n") == rendered.text.replace(
        MARKER, URL + "&lang=vi"
    )
    assert html.get_content().replace("\r\n", "\n") == rendered.html.replace(
        MARKER, URL + "&amp;lang=vi"
    )


def test_each_recipient_gets_their_own_fields(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    one = _parse(fill_message(template, to="a@x.org", subscriber_id=1, unsubscribe_url=URL + "1"))
    two = _parse(fill_message(template, to="b@x.org", subscriber_id=2, unsubscribe_url=URL + "2"))
    assert (one["To"], one["Message-ID"]) == (
        "a@x.org",
        f"<2024-11-01.1.{KEY}@news.example.org>",
    )
    assert (two["To"], two["Message-ID"]) == (
        "b@x.org",
        f"<2024-11-01.2.{KEY}@news.example.org>",
    )
    assert URL + "2" in two.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert URL + "1" not in two.as_string()


def test_the_message_id_holds_the_digest_s_key_so_a_digest_made_again_gets_new_ones(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now
) -> None:
    # <DAY.ID@domain> alone: the digest of a day made again (`digest --retire`, then the
    # day's own) went out under the Message-IDs of the retired copy readers already had.
    info = MailInfo.from_settings(mail_settings)

    def message_id(key: str | None, sent_at: datetime) -> str:
        template = build_digest_template(
            rendered, info=info, digest_day=DAY, marker=MARKER, now=sent_at, message_key=key
        )
        return str(_parse(_fill(template))["Message-ID"])

    first = message_id(KEY, now)
    assert first == f"<2024-11-01.42.{KEY}@news.example.org>"
    # The same digest sent again by a later run: the same Message-ID (duplicates dedupe).
    assert message_id(KEY, now + timedelta(hours=3)) == first
    # Another digest of the same day: another Message-ID.
    assert message_id("0123456789ab", now) == "<2024-11-01.42.0123456789ab@news.example.org>"
    # A digest stored before keys existed keeps the form it was sent with.
    assert message_id(None, now) == "<2024-11-01.42@news.example.org>"
    with pytest.raises(ValueError, match="not lowercase hex"):
        message_id("x@y>", now)
    assert digest_hint(first) == (DAY, 42)
    assert digest_hint("<2024-11-01.42@news.example.org>") == (DAY, 42)  # mail sent before


def test_mailto_unsubscribe_is_added_when_configured(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    configured = dataclasses.replace(
        mail_settings,
        mail=dataclasses.replace(
            mail_settings.mail, mailto_unsubscribe="leave@example.org", list_id="tin.example.org"
        ),
    )
    template = _template(rendered, configured, now)
    msg = _parse(_fill(template))
    assert msg["List-Unsubscribe"] == (
        f"<{URL}&lang=vi>, <mailto:leave@example.org?subject=unsubscribe>"
    )
    assert msg["List-Id"] == "<tin.example.org>"


def test_fill_message_refuses_header_breaking_values(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    with pytest.raises(ValueError, match="not a checked ASCII address"):
        fill_message(template, to="a@x.org\r\nBcc: y@z", subscriber_id=1, unsubscribe_url=URL)
    with pytest.raises(ValueError, match="unsafe characters"):
        fill_message(template, to="a@x.org", subscriber_id=1, unsubscribe_url=URL + ">\r\nX: y")


def test_a_digest_without_the_unsubscribe_link_is_refused(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    broken = dataclasses.replace(rendered, html="<p>no link</p>")
    with pytest.raises(ConfigError) as caught:
        _template(broken, mail_settings, now)
    assert str(caught.value) == (
        "digest (vi): the HTML part has no unsubscribe link. Keep the unsubscribe link in "
        "custom templates (digest.templates_dir)."
    )


def test_a_bad_from_address_names_the_key(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    bad = dataclasses.replace(
        mail_settings, mail=dataclasses.replace(mail_settings.mail, from_="News <news@>")
    )
    with pytest.raises(ConfigError, match=r"^config key mail.from has value 'News <news@>'"):
        _template(rendered, bad, now)


def test_digest_message_matches_golden(mail_settings, rendered, now, check_golden) -> None:  # type: ignore[no-untyped-def]
    template = _template(rendered, mail_settings, now)
    # The boundary is derived from the content, so the bytes are deterministic as they are.
    check_golden("digest-message.eml", _fill(template))


def test_confirmation_message(mail_settings, now) -> None:  # type: ignore[no-untyped-def]
    confirm_url = "https://news.example.org/confirm?token=abc"
    rendered = RenderedEmail(
        lang="en",
        subject="Confirm your subscription to Tin mới",
        preheader="",
        html=f'<p><a href="{confirm_url}">Confirm</a></p>',
        text=f"Confirm: {confirm_url}\n",
    )
    raw = build_confirmation_message(
        rendered, info=MailInfo.from_settings(mail_settings), to="an@example.org", now=now
    )
    msg = _parse(raw)
    assert msg["To"] == "an@example.org"
    assert msg["Subject"] == "Confirm your subscription to Tin mới"
    assert msg["Message-ID"].endswith("@news.example.org>")
    assert msg["List-Unsubscribe"] is None
    assert msg["Auto-Submitted"] == "auto-generated"
    assert confirm_url in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert raw.isascii()
    assert raw == build_confirmation_message(
        rendered, info=MailInfo.from_settings(mail_settings), to="an@example.org", now=now
    )


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a DKIM test key")
    folder = tmp_path_factory.mktemp("dkim")
    key = folder / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-traditional", "-out", str(key), "2048"],
        check=True,
        capture_output=True,
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
        check=True,
        capture_output=True,
    ).stdout
    return key.read_bytes(), base64.b64encode(public)


def test_dkim_signature_covers_the_unsubscribe_headers_and_verifies(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now, dkim_key
) -> None:
    import dkim

    private, public = dkim_key
    key = DkimKey(domain="example.org", selector="news", private_key=private)
    template = _template(rendered, mail_settings, now, dkim=key)
    raw = _fill(template)
    assert raw.startswith(b"DKIM-Signature: ")
    signed = re.search(rb"h=([^;]+);", raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n ", b""))
    assert signed is not None
    names = {n.strip().lower() for n in signed.group(1).replace(b" ", b"").split(b":")}
    assert {b"from", b"subject", b"date", b"message-id", b"list-unsubscribe"} <= names
    assert b"list-unsubscribe-post" in names

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"news._domainkey.example.org."
        return b"v=DKIM1; k=rsa; p=" + public

    assert dkim.verify(raw, dnsfunc=dns)
    tampered = raw.replace(URL.encode(), URL.encode() + b"x", 1)
    assert not dkim.verify(tampered, dnsfunc=dns)


def test_unsubscribe_url_lives_under_base_url(mail_settings) -> None:  # type: ignore[no-untyped-def]
    assert (
        unsubscribe_url("T0K", info=MailInfo.from_settings(mail_settings))
        == "https://news.example.org/unsubscribe?token=T0K"
    )


def test_golden_is_stored_with_crlf_line_ends() -> None:
    golden = Path(__file__).parent / "golden" / "digest-message.eml"
    if golden.exists():
        assert b"\r\n" in golden.read_bytes()


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://example.org/~news/", "https://example.org/~news/unsubscribe?token=T0K"),
        ("https://báo.example.vn/tin/", "https://xn--bo-mia.example.vn/tin/unsubscribe?token=T0K"),
        ("http://[::1]:8000/", "http://[::1]:8000/unsubscribe?token=T0K"),
        (
            "https://example.org/tin tức/",
            "https://example.org/tin%20t%E1%BB%A9c/unsubscribe?token=T0K",
        ),
    ],
)
def test_unsubscribe_url_is_header_safe_for_any_base_url(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now, base: str, expected: str
) -> None:
    settings = dataclasses.replace(
        mail_settings, site=dataclasses.replace(mail_settings.site, base_url=base)
    )
    url = unsubscribe_url("T0K", info=MailInfo.from_settings(settings))
    assert url == expected
    template = _template(rendered, settings, now)
    raw = fill_message(template, to="an@example.org", subscriber_id=7, unsubscribe_url=url)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    msg = _parse(raw)
    assert msg["List-Unsubscribe"] == f"<{url}&lang=vi>"
    assert msg["Message-ID"].endswith("@" + (urlsplit(expected).hostname or "") + ">")
    assert url in msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_list_id_phrase_cannot_hide_the_id(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    settings = dataclasses.replace(
        mail_settings, site=dataclasses.replace(mail_settings.site, title="Tin <b>mới</b>")
    )
    template = _template(rendered, settings, now)
    list_id = str(_parse(_fill(template))["List-Id"])
    assert list_id.endswith("<digest.news.example.org>")
    assert list_id.count("<") == 1


def test_a_reply_to_that_is_not_an_address_names_the_key(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    bad = dataclasses.replace(
        mail_settings, mail=dataclasses.replace(mail_settings.mail, reply_to="not an address")
    )
    with pytest.raises(ConfigError) as caught:
        _template(rendered, bad, now)
    assert str(caught.value) == (
        "config key mail.reply_to has value 'not an address'; "
        "expected an address like 'editor@example.org'."
    )


def test_an_internationalised_bounce_address_is_told_its_xn_form(mail_settings) -> None:  # type: ignore[no-untyped-def]
    # "expected a plain address like ..." for an address that is one, in letters an
    # envelope cannot carry as such.
    for value, why in (
        ("bounces@tin-tức.vn", "its domain is not ASCII: write it in its xn-- form, "),
        ("trả-về@example.org", "its local part is not ASCII, "),
        ("bounces@@tin-tức.vn", "expected a plain address like "),
    ):
        info = mail.MailInfo.from_settings(
            dataclasses.replace(
                mail_settings, mail=dataclasses.replace(mail_settings.mail, bounce_address=value)
            )
        )
        with pytest.raises(ConfigError) as caught:
            mail.bounce_address(info=info)
        assert str(caught.value).startswith(
            f"config key mail.bounce_address has value {value!r}; {why}"
        )
    assert str(caught.value).endswith("'bounces@news.example.org'.")


def test_long_vietnamese_headers_round_trip_with_every_space(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now
) -> None:
    title = (
        "Báo điện tử Lam Giang \u2013 Cơ quan của Đảng bộ, Chính quyền và Nhân dân tỉnh "
        '«Tiếng nói» "quê hương" (bản tin)'
    )
    subject = f"{title}: bản tin 26 tháng 11, 2026"
    sender = "Báo Lam Giang, cơ quan của Đảng bộ, Chính quyền và Nhân dân tỉnh Lam Giang"
    settings = dataclasses.replace(
        mail_settings,
        site=dataclasses.replace(mail_settings.site, title=title),
        mail=dataclasses.replace(mail_settings.mail, from_=f'"{sender}" <news@example.org>'),
    )
    long_one = dataclasses.replace(rendered, subject=subject)
    template = _template(long_one, settings, now)
    raw = _fill(template)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert max(len(line) for line in head.split(b"\r\n")) <= 998
    msg = _parse(raw)
    assert str(msg["Subject"]) == subject
    assert msg["From"].addresses[0].display_name == sender
    assert msg["From"].addresses[0].addr_spec == "news@example.org"
    assert str(msg["List-Id"]) == f"{title} <digest.news.example.org>"
    confirmation = build_confirmation_message(
        long_one, info=MailInfo.from_settings(settings), to="an@example.org", now=now
    )
    assert str(_parse(confirmation)["Subject"]) == subject


def test_reply_to_keeps_every_address_and_encodes_names(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    two = dataclasses.replace(
        mail_settings,
        mail=dataclasses.replace(
            mail_settings.mail, reply_to="Tòa soạn <toa-soan@example.org>, ban-doc@example.org"
        ),
    )
    template = _template(rendered, two, now)
    addresses = _parse(_fill(template))["Reply-To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [
        ("Tòa soạn", "toa-soan@example.org"),
        ("", "ban-doc@example.org"),
    ]


def test_the_top_story_subject_is_byte_exact_vietnamese_after_encoding(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now
) -> None:
    # A decomposed (NFD) headline, as cp1258 dumps give: the subject is NFC.
    headline = unicodedata.normalize("NFD", "Quảng Trị: thông xe cầu Sông Thạch Hãn mùa lũ")
    subject = make_subject(
        DigestInfo.from_settings(mail_settings), lang="vi", day=DAY, headline=headline, others=6
    )
    expected = "Tin mới: Quảng Trị: thông xe cầu Sông Thạch Hãn mùa lũ và 6 tin khác"
    assert subject == expected
    template = _template(dataclasses.replace(rendered, subject=subject), mail_settings, now)
    decoded = _parse(_fill(template))["Subject"]
    assert decoded.encode("utf-8") == expected.encode("utf-8")


def test_mail_folds_long_html_lines_of_the_rendered_digest(mail_settings, rendered, now) -> None:  # type: ignore[no-untyped-def]
    # The digest renders; folding for SMTP's 998-byte lines is the mail stage's job.
    long_html = "<p>" + "Thông xe cầu " * 300 + "</p>"
    rendered = dataclasses.replace(rendered, html=long_html + f'<a href="{MARKER}">x</a>\n')
    template = _template(rendered, mail_settings, now)
    data = fill_message(template, to="an@example.org", subscriber_id=7, unsubscribe_url=URL)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    html = _parse(data).get_body(preferencelist=("html",)).get_content()
    assert html.replace("\r\n", " ").startswith(long_html)


def test_mail_takes_mail_info_not_the_whole_settings() -> None:
    takes_info = set()
    for name, function in vars(mail).items():
        if not inspect.isfunction(function) or function.__module__ != mail.__name__:
            continue
        hints = typing.get_type_hints(function)
        for parameter in inspect.signature(function).parameters.values():
            assert hints.get(parameter.name) is not Settings, (name, parameter.name)
            assert parameter.name != "settings", name
            if hints.get(parameter.name) is MailInfo and not name.startswith("_"):
                assert parameter.kind is inspect.Parameter.KEYWORD_ONLY, name
                assert parameter.name == "info", name
                takes_info.add(name)
    assert {
        "message_domain",
        "envelope_sender",
        "bounce_address",
        "return_path",
        "list_id",
        "reply_to",
        "unsubscribe_url",
        "build_digest_template",
        "build_confirmation_message",
    } <= takes_info
    params = MailInfo.__dataclass_params__  # type: ignore[attr-defined]
    assert params.frozen
    assert hasattr(MailInfo, "__slots__")


def test_mail_info_takes_the_base_url_with_its_slash(settings: Settings) -> None:
    bare = dataclasses.replace(
        settings, site=dataclasses.replace(settings.site, base_url="https://news.example.org/x")
    )
    info = MailInfo.from_settings(bare)
    assert info.base_url == "https://news.example.org/x/"
    assert unsubscribe_url("T0K", info=info) == "https://news.example.org/x/unsubscribe?token=T0K"


@pytest.mark.parametrize(
    "title",
    [
        # Shaped like an encoded word: a reader decoded it into other text ("Bcc: x@evil").
        "=?utf-8?b?QmNjOiB4QGV2aWw=?=",
        "Tin =?utf-8?q?x?= mới",
        # Quoted with a backslash before each quote: a From line of 1,200 bytes (RFC 5322
        # allows 998).
        '"' * 600,
        "a, " * 300,
    ],
)
def test_the_sites_title_as_the_senders_name_is_shown_as_written(  # type: ignore[no-untyped-def]
    mail_settings, rendered, now, title: str
) -> None:
    settings = dataclasses.replace(
        mail_settings,
        site=dataclasses.replace(mail_settings.site, title=title),
        mail=dataclasses.replace(mail_settings.mail, from_="news@example.org"),
    )
    raw = _fill(_template(rendered, settings, now))
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    [address] = _parse(raw)["From"].addresses
    assert address.addr_spec == "news@example.org"
    if len(title) < 70:
        assert address.display_name == title
    else:  # folded into several encoded words: the email package reads a space between them
        assert address.display_name.replace(" ", "") == title.replace(" ", "")
