"""`syndicate inspect` through CliRunner: exact output, JSON keys, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from syndicate.cli import cli

DUMP = (
    "{title}\n31/10/2024 09:15\n{head}\n"
    "QTO - Sáng nay, tại TP. Đông Hà, hội thảo <b>chuyển đổi số</b> diễn ra. Câu hai.\n"
    "Quang cảnh hội thảo - Ảnh: T.P\n"
    "Đoạn thân bài thứ hai.\n"
    "Trúc Phương\n"
    "QTO - Chiều nay 30/10, một tin khác...\n"
)
KEYS = [
    "id",
    "slug",
    "title",
    "title_derived",
    "published",
    "published_precision",
    "head",
    "lead",
    "paragraphs",
    "captions",
    "author",
    "credit",
    "teasers",
    "source",
]


@pytest.fixture
def folder(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    (workdir / "seeds" / "a.txt").write_text(DUMP, encoding="utf-8")
    (workdir / "seeds" / "b.txt").write_bytes(DUMP.encode("utf-16"))  # same article
    return workdir


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["inspect", *args])
    return result.exit_code, result.stdout, result.stderr


def test_json_lines_have_exactly_the_article_keys(folder: Path) -> None:
    code, out, err = run("seeds", "--json")
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2
    records = [json.loads(line) for line in lines]
    for record in records:
        assert list(record) == KEYS
    first = records[0]
    assert first["source"] == "seeds/a.txt"
    assert records[1]["source"] == "seeds/b.txt"
    assert records[0]["id"] == records[1]["id"]  # no dedup, but duplicates share the id
    # Derived from the lead, its opening time and place dropped.
    assert first["title"] == "Hội thảo <b>chuyển đổi số</b> diễn ra"
    assert first["title_derived"] is True
    assert first["head"] is None
    assert first["published"] == "2024-10-31T09:15:00+07:00"
    assert first["published_precision"] == "datetime"
    assert first["lead"] == (
        "Sáng nay, tại TP. Đông Hà, hội thảo <b>chuyển đổi số</b> diễn ra. Câu hai."
    )
    assert first["paragraphs"] == [first["lead"], "Đoạn thân bài thứ hai."]
    assert first["captions"] == ["Quang cảnh hội thảo - Ảnh: T.P"]
    assert first["author"] == "Trúc Phương"
    assert first["teasers"] == [{"dateline": "QTO", "text": "Chiều nay 30/10, một tin khác..."}]
    # Vietnamese stays readable (ensure_ascii=False).
    assert "Đông Hà" in lines[0]
    assert "\\u" not in lines[0]


def test_human_output_is_one_block_per_file(folder: Path) -> None:
    (folder / "seeds" / "b.txt").unlink()
    code, out, err = run("seeds/a.txt")
    assert (code, err) == (0, "")
    article_id = json.loads(run("seeds/a.txt", "--json")[1])["id"]
    assert out == (
        "seeds/a.txt\n"
        f"  id:          {article_id}\n"
        "  slug:        hoi-thao-b-chuyen-doi-so-b-dien-ra\n"
        "  title:       Hội thảo <b>chuyển đổi số</b> diễn ra (derived from the lead)\n"
        "  published:   2024-10-31T09:15:00+07:00 (datetime)\n"
        "  author:      Trúc Phương\n"
        "  language:    vi\n"
        "  dateline:    QTO\n"
        "  head:        -\n"
        "  lead:        Sáng nay, tại TP. Đông Hà, hội thảo <b>chuyển đổi số</b> diễn ra."
        " Câu hai.\n"
        "  paragraphs:  2\n"
        "  captions:    1\n"
        "    - Quang cảnh hội thảo - Ảnh: T.P\n"
        "  teasers:     1\n"
        "    - QTO - Chiều nay 30/10, một tin khác...\n"
    )


@pytest.mark.usefixtures("store")  # the one test here with a store: it builds first
def test_human_output_names_the_page_the_last_build_wrote(folder: Path) -> None:
    (folder / "seeds" / "b.txt").unlink()
    assert CliRunner().invoke(cli, ["build"]).exit_code == 0
    (folder / "c.txt").write_text(DUMP.replace("Đoạn thân bài", "Một đoạn khác"), "utf-8")
    code, out, err = run("seeds/a.txt", "c.txt")
    assert (code, err) == (0, "")
    pages = [line for line in out.splitlines() if line.startswith("  page:")]
    assert pages == [
        "  page:        articles/hoi-thao-b-chuyen-doi-so-b-dien-ra.html",
        "  page:        -",  # never built: no page
    ]
    assert (folder / "feeds" / "articles" / "hoi-thao-b-chuyen-doi-so-b-dien-ra.html").is_file()


def test_rejected_file_prints_its_error_and_exits_1_at_the_end(folder: Path) -> None:
    (folder / "seeds" / "0_empty.txt").write_bytes(b"")
    (folder / "seeds" / "c.txt").write_text(
        "Tiêu đề\n31/02/2025 08:00\n{head}\nĐoạn.\n", encoding="utf-8"
    )
    code, out, err = run("--json", "seeds")
    assert code == 1
    assert err == ""
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["source"] for r in records] == [
        "seeds/0_empty.txt",
        "seeds/a.txt",
        "seeds/b.txt",
        "seeds/c.txt",
    ]
    assert records[0] == {
        "source": "seeds/0_empty.txt",
        "error": "is empty. Remove it, or fill it with an article.",
    }
    assert records[3] == {
        "source": "seeds/c.txt",
        "error": "line 2: publish time '31/02/2025 08:00' is not a real date. "
        "Fix the dump or move it out of the dump folder.",
    }
    assert list(records[1]) == KEYS

    code, out, err = run("seeds/0_empty.txt", "seeds/c.txt")
    assert code == 1
    assert out == ""
    assert err == (
        "error: seeds/0_empty.txt: is empty. Remove it, or fill it with an article.\n"
        "error: seeds/c.txt line 2: publish time '31/02/2025 08:00' is not a real date. "
        "Fix the dump or move it out of the dump folder.\n"
    )


def test_too_large_file_uses_the_configured_limit(folder: Path) -> None:
    (folder / "syndicate.toml").write_text("[load]\nmax_bytes = 100\n", encoding="utf-8")
    code, out, _ = run("--json", "seeds/a.txt")
    assert code == 1
    assert json.loads(out) == {
        "source": "seeds/a.txt",
        "error": "is larger than the limit of 100 bytes. "
        "Raise load.max_bytes in the config if the file is a real article.",
    }


def test_missing_path_is_an_input_error_exit_2(folder: Path) -> None:
    code, out, err = run("seeds/a.txt", "nope.txt")
    assert code == 2
    assert out == ""
    assert err == "Error: nope.txt: no such file or folder. Give existing dump files or folders.\n"


def test_inspect_needs_a_path(folder: Path) -> None:
    code, _, err = run()
    assert code == 2
    assert "Missing argument 'PATHS...'" in err


def test_any_file_name_is_taken_when_given(folder: Path) -> None:
    (folder / "dump.export").write_text(DUMP, encoding="utf-8")
    code, out, _ = run("--json", "dump.export")
    assert code == 0
    assert json.loads(out)["source"] == "dump.export"


def test_inspect_of_the_repo_seeds_parses_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    code, out, err = run("--json", "seeds")
    assert (code, err) == (0, "")
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(list((root / "seeds").glob("*.txt")))
    assert all(list(r) == KEYS for r in records)


def test_inspect_json_of_the_repo_seeds_matches_the_golden_file(
    monkeypatch: pytest.MonkeyPatch, check_golden
) -> None:
    """Every key of every seed, `head` included: reviewed by hand when it changes."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    monkeypatch.delenv("SYNDICATE_CONFIG", raising=False)
    code, out, err = run("--json", "seeds")
    assert (code, err) == (0, "")
    check_golden("inspect-seeds.jsonl", out.encode("utf-8"))


def test_inspect_shows_a_filled_head_without_its_dateline(folder: Path) -> None:
    (folder / "seeds" / "c.txt").write_text(
        "{title}\n{publish}\nQTO - Sáng nay 31/10, tỉnh bàn chuyển đổi số.\nThân bài.\n",
        encoding="utf-8",
    )
    code, out, _err = run("--json", "seeds/c.txt")
    assert code == 0
    record = json.loads(out)
    assert record["head"] == "Sáng nay 31/10, tỉnh bàn chuyển đổi số."
    assert record["lead"] == "Thân bài."
    assert record["paragraphs"] == ["Thân bài."]
    assert record["title"] == "Tỉnh bàn chuyển đổi số"
    code, out, _err = run("seeds/c.txt")
    assert "  head:        Sáng nay 31/10, tỉnh bàn chuyển đổi số.\n" in out
    assert "(derived from the head)" in out


def test_a_link_leading_outside_the_folder_is_refused_as_by_the_build(folder: Path) -> None:
    (folder / "private").mkdir()
    (folder / "private" / "passwd").write_text(DUMP, encoding="utf-8")
    (folder / "seeds" / "c.txt").symlink_to(folder / "private" / "passwd")
    code, out, err = run("seeds", "--json")
    assert code == 1
    assert len(out.splitlines()) == 3  # a.txt and b.txt, then c.txt's error
    assert err == ""
    assert json.loads(out.splitlines()[-1]) == {
        "source": "seeds/c.txt",
        "error": f"is a link to '{folder / 'private' / 'passwd'}', outside the "
        "dump folder. Copy the file into the dump folder, or set load.follow_symlinks = true.",
    }
    (folder / "syndicate.toml").write_text("[load]\nfollow_symlinks = true\n", encoding="utf-8")
    code, out, err = run("seeds", "--json")
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == 3
