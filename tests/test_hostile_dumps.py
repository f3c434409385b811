"""Dumps written by an attacker (a contributor, a compromised wire feed), through the real CLI.

Each test puts crafted dumps in the dump folder, runs `python -m syndicate` in a
subprocess as cron would, and reads what it published with the parsers readers use
(the email package, an HTML parser): the dump's text must stay text, and its size must
cost time in proportion.
"""

from __future__ import annotations

import base64
import os
import resource
import subprocess
import sys
from datetime import datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from html.parser import HTMLParser
from pathlib import Path
from zoneinfo import ZoneInfo

_CONFIG = """\
[site]
title = "{title}"
language = "{lang}"
base_url = "https://news.example.org/"
[paths]
seeds = "seeds"
output = "out"
database = "s.db"
outbox = "outbox"
[mail]
from = "news@example.org"
"""

# A story's lead and a second paragraph, below a filled header ({place}: one story each).
_STORY = (
    "LGO - Sáng nay, Ủy ban nhân dân huyện {place} họp bàn kế hoạch "
    "sửa chữa đường sau mùa mưa lũ.\n"
    "Các đại biểu thống nhất ưu tiên những tuyến đường liên xã bị sạt lở nặng.\n"
)


def _today() -> str:
    """Today's date as a dump's publish line gives it: a digest of older news says so."""
    return datetime.now(ZoneInfo("Asia/Ho_Chi_Minh")).strftime("%d/%m/%Y")


def _project(root: Path, *, title: str = "Tin Lam Giang", lang: str = "vi") -> Path:
    (root / "seeds").mkdir()
    (root / "syndicate.toml").write_text(_CONFIG.format(title=title, lang=lang), encoding="utf-8")
    return root / "seeds"


def _syndicate(
    cwd: Path,
    *args: str,
    cpu_seconds: int | None = None,
    recursion_limit: int | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as cron would, with no SYNDICATE_* variable.

    `cpu_seconds` caps the process's CPU time (the kernel ends it past that): a test of
    a bound on work fails there on a busy machine as on an idle one. `recursion_limit`
    sets Python's (default 1,000) before syndicate starts.
    """
    command = ["-m", "syndicate"]
    if recursion_limit is not None:
        command = [
            "-c",
            f"import runpy, sys; sys.setrecursionlimit({recursion_limit}); "
            "runpy.run_module('syndicate', run_name='__main__', alter_sys=True)",
        ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNDICATE_")}

    def limit() -> None:
        if cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))

    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_sidebars_of_ten_thousand_teasers_cost_linear_time_on_pages_and_in_the_digest(
    tmp_path: Path,
) -> None:
    # A dump may hold 10,000 lines: all but a story's few can be teasers. Each teaser was
    # compared with every one kept before it (a prefix of it, or it of one), on the page
    # and in the digest's "Other news", whose teasers are those of all its articles: these
    # two dumps of 700 KB cost 20 s of CPU to build, and one alone 90 s to render the
    # digest (four times that for two). Now about 1 s each.
    seeds = _project(tmp_path)
    for name, place in (("a", "Đông Lũy"), ("b", "Phước Hải")):
        teasers = "".join(
            f"LGO - Tin {name} số {n}: xã {n} khánh thành nhà văn hóa mới...\n"
            for n in range(9_990)
        )
        (seeds / f"{name}.txt").write_text(
            f"Lam Giang sửa đường ({name})\n{_today()} 09:00\n{{head}}\n"
            + _STORY.format(place=place)
            + teasers,
            encoding="utf-8",
        )
    built = _syndicate(tmp_path, "build", cpu_seconds=15)
    assert (built.returncode, built.stderr) == (0, "")
    done = _syndicate(tmp_path, "digest", "--out", "preview", cpu_seconds=15)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[0].endswith(": 2 articles.")
    page = (tmp_path / "out" / "articles" / "lam-giang-sua-duong-a.html").read_text("utf-8")
    assert page.count("khánh thành nhà văn hóa mới") == 9_990
    digest = (tmp_path / "preview" / "digest.txt").read_text("utf-8")
    assert digest.count("khánh thành nhà văn hóa mới") == 5  # digest.max_teasers


def _sent(root: Path) -> list[EmailMessage]:
    """The mails `send` left in the outbox, parsed as a mail reader parses them."""
    return [
        message_from_bytes(path.read_bytes(), policy=policy.default)  # type: ignore[misc]
        for path in sorted((root / "outbox").rglob("*.eml"))
    ]


def test_a_title_written_as_an_encoded_word_is_the_subject_readers_see(tmp_path: Path) -> None:
    # An ASCII subject went out as it was: a title spelled as an RFC 2047 encoded word was
    # decoded by every mail reader into other text, here a line break and a forged header.
    # Such text must be encoded itself, so that the reader decodes it back to the title.
    title = "=?utf-8?b?" + base64.b64encode(b"Bcc: all@example.org\r\nX: y").decode() + "?="
    seeds = _project(tmp_path, title="News", lang="en")
    (seeds / "a.txt").write_text(
        f"{title} today\n{_today()} 09:00\n{{head}}\n" + _STORY.format(place="Dong Luy"),
        encoding="utf-8",
    )
    added = _syndicate(tmp_path, "subscribers", "add", "an@example.org", "--lang", "en")
    assert added.returncode == 0, added.stderr
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stderr) == (0, "")
    (mail,) = _sent(tmp_path)
    assert mail["Subject"] == f"News: {title} today"


class _Headings(HTMLParser):
    """The text of each <h2> of an HTML document, character references read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.texts: list[str] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._open = True
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._open = False

    def handle_data(self, data: str) -> None:
        if self._open:
            self.texts[-1] += data


def test_a_title_of_ampersands_keeps_its_references_whole_in_the_mail(tmp_path: Path) -> None:
    # Lines of the HTML part are folded under SMTP's limit; a run with no space (300
    # escaped "&" are 1,500 bytes) was split between any two characters, inside "&amp;"
    # too: readers showed "&am p;" in the headline.
    seeds = _project(tmp_path)
    (seeds / "a.txt").write_text(
        "&" * 300 + f"\n{_today()} 09:00\n{{head}}\n" + _STORY.format(place="Đông Lũy"),
        encoding="utf-8",
    )
    added = _syndicate(tmp_path, "subscribers", "add", "an@example.org")
    assert added.returncode == 0, added.stderr
    done = _syndicate(tmp_path, "send")
    assert (done.returncode, done.stderr) == (0, "")
    (mail,) = _sent(tmp_path)
    html = mail.get_body(("html",))
    assert html is not None
    headings = _Headings()
    headings.feed(html.get_content())
    # Split between two references (a line break, shown as a space): never inside one.
    assert [text.replace("\r\n", "") for text in headings.texts] == ["&" * 300]


def test_a_dump_folders_deep_is_read_with_the_others(tmp_path: Path) -> None:
    # The dump folder was walked by recursion, a call per level: a dump 1,000 folders deep
    # (`mkdir -p` makes one in a blink) went past Python's recursion limit, and the build
    # (and inspect) ended in a RecursionError traceback, the other dumps unbuilt. Here the
    # limit is lowered to 300 and the dump 400 deep: pytest's clean-up of tmp_path recurses
    # too, and would fail on a folder past the usual limit.
    seeds = _project(tmp_path)
    (seeds / "a.txt").write_text(
        f"Lam Giang sửa đường\n{_today()} 09:00\n{{head}}\n" + _STORY.format(place="Đông Lũy"),
        encoding="utf-8",
    )
    deep = seeds.joinpath(*["d"] * 400)
    deep.mkdir(parents=True)
    (deep / "b.txt").write_text(
        f"Phước Hải sửa đường\n{_today()} 10:00\n{{head}}\n" + _STORY.format(place="Phước Hải"),
        encoding="utf-8",
    )
    done = _syndicate(tmp_path, "build", recursion_limit=300)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("Built 2 articles (0 duplicates, 0 skipped)")
    shown = _syndicate(tmp_path, "inspect", "seeds", recursion_limit=300)
    assert (shown.returncode, shown.stderr) == (0, "")
    assert "Phước Hải sửa đường" in shown.stdout
