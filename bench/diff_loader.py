"""Differential check: two source trees load, render and feed the same dumps alike.

Each tree's `syndicate` runs in a child process of its own (`python -I -B`, the tree first
on sys.path, so neither the editable install nor the other tree is imported: each child
reports the file it imported). Both get the same dumps: the shipped seeds, every file under
tests/data and tests/golden, and dumps Hypothesis generates from them (lines inserted,
deleted, duplicated, swapped; tricky characters, caption, credit, byline and teaser shapes,
very long lines; each of the encodings the loader reads, NFD, CRLF and CR; bytes mangled).
For each dump both children report everything the loader gives (the decoded text, every
field of the article, its stored row, or the error's type and message, and any warning)
and what the build makes of it: the article page as staged from the loader and as rendered
from the stored record (its teasers linked), an index page, and the RSS, Atom and JSON
feeds. Any byte that differs is a difference: Hypothesis shrinks the dump, lines and then
bytes are left out while the difference stays, and the small dump left is printed with
the first output that differs.

    python bench/diff_loader.py /tmp/old-tree /work/wt/mine --examples 100000 --seed 16

Exit status: 0 no difference, 1 a difference (or a child died), 2 bad invocation.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
# The dumps every run starts with: files of the harness's own checkout.
CORPUS_FOLDERS = ("seeds", "tests/data", "tests/golden")
CORPUS_LIMIT = 200_000  # bytes: larger fixture files are left out of the corpus

# ---------------------------------------------------------------- the child (one tree)

Outputs = list[tuple[str, Any]]


def _child(tree: Path) -> None:
    """Answer requests on stdin (a list of (name, bytes) dumps) with each dump's outputs."""
    sys.path.insert(0, str(tree))
    import syndicate  # only now: the tree is first on sys.path

    imported = Path(syndicate.__file__).resolve()
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    _send(stdout, str(imported))
    if not imported.is_relative_to(tree.resolve()):
        return
    outputs = _make_outputs()
    while True:
        try:
            request = pickle.load(stdin)  # noqa: S301 - our own parent's bytes
        except EOFError:
            return
        _send(stdout, [outputs(name, data) for name, data in request])


def _send(stream: IO[bytes], value: object) -> None:
    pickle.dump(value, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def _make_outputs() -> Callable[[str, bytes], Outputs]:
    """The function that runs one dump through this tree's public functions."""
    import functools
    import warnings
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from syndicate import feeds, load, site, text
    from syndicate.config import site_templates_dir
    from syndicate.model import Precision, StoryLink
    from syndicate.store import articles as store

    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    now = datetime(2026, 12, 7, 1, 2, 3, tzinfo=UTC)
    base = "https://tin.example.vn/"
    renderers = {
        lang: site.SiteRenderer(
            site.SiteInfo("Tin <Quảng Trị>", "Tin & bài", base, lang, str(tz), 20),
            site_templates_dir(),
        )
        for lang in ("vi", "en")
    }
    feed_infos = {
        lang: feeds.FeedInfo("Tin <Quảng Trị>", "Tin & bài", base, lang, str(tz))
        for lang in ("vi", "en")
    }

    def caught(
        out: Outputs, key: str, step: Callable[[], Any], shown: Callable[[Any], Any] = repr
    ) -> Any:
        # Outputs are plain values (the parent holds no syndicate classes): bytes, or repr.
        try:
            value = step()
        except Exception as exc:  # every failure is an output too (DumpError and the rest)
            out.append((key, ("raised", type(exc).__name__, str(exc), getattr(exc, "hint", None))))
            return None
        out.append((key, value if isinstance(value, bytes | str) else shown(value)))
        return value

    def links(article: Any) -> dict[str, Any]:
        # Every other teaser advertises an article of its own text's title.
        found = {}
        for i, teaser in enumerate(article.teasers[::2]):
            key = text.story_key(teaser.text)
            found[key] = StoryLink(
                f"{i:032x}", f"articles/t-{i}.html", teaser.text[:90], now, Precision.DATE, now
            )
        return found

    def outputs(name: str, data: bytes) -> Outputs:
        out: Outputs = []
        lang = ("vi", "en")[len(data) % 2]
        with warnings.catch_warnings(record=True) as caught_warnings:
            warnings.simplefilter("always")
            caught(out, "decode_dump", lambda: load.decode_dump(data, source=name))
            parsed = caught(
                out,
                "parse_dump",
                lambda: load.parse_dump_with_body(data, source=name, tz=tz),
                lambda parsed: parsed[1],  # the body's bytes; the article below
            )
            if parsed is not None:
                article, body = parsed
                out.append(("article", repr(article)))
                out.append(("to_dict", repr(article.to_dict())))
                out.append(("lead, summary", repr((article.lead, article.summary))))
                row = caught(out, "article_row", lambda: tuple(store.article_row(article, body)))
                caught(
                    out,
                    "page (staged)",
                    lambda: renderers[lang].render_article(
                        article, slug=article.slug, from_loader=True, body=body
                    ),
                )
                if row is not None:
                    stored = store.ArticleRow(*row)
                    body_text = None if stored.body is None else stored.body.decode()
                    caught(
                        out,
                        "page (stored, linked)",
                        lambda: renderers["en" if lang == "vi" else "vi"].render_article(
                            store.decode_article(stored.record, body_text),
                            slug=stored.slug,
                            links=links(article),
                        ),
                    )
                entry = site.IndexEntry(
                    article.id,
                    article.slug,
                    article.title,
                    article.published,
                    article.precision,
                    article.author,
                    article.language,
                    article.credit,
                )
                caught(
                    out,
                    "index page",
                    lambda: renderers[lang].render_index([entry], archive=None, archives=0),
                )
                feed = functools.partial(
                    feeds.build_feed,
                    [article],
                    now=now,
                    info=feed_infos[lang],
                    limit=20,
                    page_urls={article.id: f"{base}articles/{article.slug}.html"},
                    first_seen={article.id: now},
                )
                for kind in ("rss", "atom", "json"):
                    caught(out, f"feed ({kind})", functools.partial(feed, kind=kind))
        out.append(("warnings", [(w.category.__name__, str(w.message)) for w in caught_warnings]))
        return out

    return outputs


# ---------------------------------------------------------------- the parent


class ChildDied(Exception):
    """A tree's child process stopped answering."""


class Tree:
    """One source tree's child process."""

    def __init__(self, path: Path, python: str, cwd: str) -> None:
        self.path = path.resolve()
        self.proc = subprocess.Popen(
            [python, "-I", "-B", str(Path(__file__).resolve()), "--child", str(self.path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=cwd,
        )
        self.imported: str = self.receive()

    def send(self, dumps: list[tuple[str, bytes]]) -> None:
        assert self.proc.stdin is not None
        try:
            _send(self.proc.stdin, dumps)
        except BrokenPipeError as exc:
            raise ChildDied(f"{self.path}: the child process died") from exc

    def receive(self) -> Any:
        assert self.proc.stdout is not None
        try:
            return pickle.load(self.proc.stdout)  # noqa: S301 - our own child's bytes
        except EOFError as exc:
            raise ChildDied(
                f"{self.path}: the child process died (exit {self.proc.wait()})"
            ) from exc

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


class Difference(AssertionError):
    """The two trees gave different outputs for one dump."""

    def __init__(self, found: tuple[str, bytes, str]) -> None:
        super().__init__(found[2])
        self.found = found


def _first_difference(old: Outputs, new: Outputs) -> str | None:
    """The first output the two trees gave differently, described; None when all agree."""
    for (key, a), (other_key, b) in zip(old, new, strict=False):
        if key != other_key:
            return f"outputs differ: old gave {key!r} where new gave {other_key!r}"
        if a != b:
            if isinstance(a, bytes | str) and type(a) is type(b):
                at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
                at = min(len(a), len(b)) if at is None else at
                return (
                    f"{key}: differs at offset {at}:\n  old: {a[max(0, at - 60) : at + 60]!r}"
                    f"\n  new: {b[max(0, at - 60) : at + 60]!r}"
                )
            return f"{key}:\n  old: {a!r}\n  new: {b!r}"
    if len(old) != len(new):
        return f"old gave {len(old)} outputs, new {len(new)}"
    return None


class Comparer:
    """Sends dumps to both trees and counts what they agree on."""

    def __init__(self, old: Tree, new: Tree) -> None:
        self.old, self.new = old, new
        self.compared = 0
        self.articles = 0  # dumps the old tree parsed into an article

    def compare(self, dumps: list[tuple[str, bytes]]) -> list[tuple[str, bytes, str]]:
        """The dumps on which the trees differ, each with its first difference."""
        self.old.send(dumps)
        self.new.send(dumps)
        olds, news = self.old.receive(), self.new.receive()
        self.compared += len(dumps)
        found = []
        for (name, data), a, b in zip(dumps, olds, news, strict=True):
            self.articles += any(key == "article" for key, _ in a)
            difference = _first_difference(a, b)
            if difference is not None:
                found.append((name, data, difference))
        return found

    def reduce(self, name: str, data: bytes) -> tuple[bytes, str]:
        """A smaller dump on which the trees still differ (lines, then bytes, left out
        while the difference stays), with its difference."""
        difference = self.compare([(name, data)])[0][2]
        for unit in ("lines", "bytes"):
            size = max(1, len(data) // 2)
            while size >= 1:
                at = 0
                while at < len(data):
                    parts = data.splitlines(keepends=True) if unit == "lines" else list(data)
                    if at >= len(parts):
                        break
                    kept = parts[:at] + parts[at + size :]
                    smaller = b"".join(kept) if unit == "lines" else bytes(kept)  # type: ignore[arg-type]
                    found = self.compare([(name, smaller)]) if smaller != data else []
                    if found:
                        data, difference = smaller, found[0][2]
                    else:
                        at += size
                size //= 2
        return data, difference


# ---------------------------------------------------------------- the dumps


def corpus(root: Path) -> list[tuple[str, bytes]]:
    """The shipped seeds and every test fixture file (the ones small enough to be dumps)."""
    found = []
    for folder in CORPUS_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.stat().st_size <= CORPUS_LIMIT:
                found.append((str(path.relative_to(root)), path.read_bytes()))
    return found


# Pieces of text from the classes the loader's screens and cleaning must tell apart.
TRICKY = [
    *"\x00\x01\x08\t\x0b\x0c\x0e\x1b\x1c\x1f\x7f",  # C0 controls (not "\n", "\r")
    *"\x80\x85\x8d\x9f",  # C1 controls
    *"\u00a0\u00ad\u1680\u2000\u2007\u200a\u202f\u205f\u3000",  # odd spaces, soft hyphen
    *"\u200b\u200c\u200d\u2060\ufeff\ufffe\uffff\u2028\u2029",  # invisibles, separators
    *"\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c",  # bidi
    *"\u0300\u0301\u0303\u0309\u0323\u0306\u0302\u031b\u034f",  # combining marks
    "e\u0301",
    "a\u0323\u0302",
    "o\u031b\u0300",
    "Vie\u0323\u0302t",  # NFD Vietnamese
    "Việt",
    "Đà Nẵng",
    "ĐÀ NẴNG",
    "họa",
    "hoạ",
    "HỌA",
    "HOẠ",
    "ho\u0323a",
    "hoa\u0323",
    "ảnh",
    "Ảnh",
    "ẢNH",
    "a\u0309nh",
    "中国新闻",  # CJK
    "東京",
    "😀",
    "👨\u200d👩\u200d👧",
    "🏳\ufe0f\u200d🌈",
    "👩🏽\u200d💻",
    "\U0001d400",
    "“",
    "”",
    "\u2018",
    "\u2019",
    "…",
    "\u2013",
    "\u2014",
    "€",
    "™",
    ":",
    " : ",
    "(",
    ")",
    " ",
    "  ",
    " - ",
    ". ",
    "!",
    "?",
    "...",
    "<script>alert(1)</script>",
    "{{ x }}",
    "&amp;",
    "]]>",
    "\r",
    "\n",
    "\r\n",
]
WORDS = [
    *"và của các là có được trong cho với đã này những người một không tại theo để khi".split(),
    *"the and of to in is are was were a an for on with that this by from at as it its".split(),
    *"Và THE (và the, “của” it's u.s. ... Quảng Trị coffee growers tỉnh huyện xã".split(),
]
CREDITS = [
    "Ảnh: T.P",
    "ẢNH: NGỌC VĂN",
    "Ảnh minh họa",
    "Ảnh minh hoạ (TTXVN)",
    "ảnh minh họa: Internet",
    "Ảnh tư liệu",
    "ảnh internet",
    "Photo: Lam Giang Times",
    "PHOTO FILE",
    "Photos: AFP",
    "Ảnh: " + "x" * 48,
    "Ảnh: " + "y" * 49,
    "Ảnh:\u1680\u1680 Q",
    "ảnh: đây là kỷ niệm đẹp nhất của gia đình, được chụp năm 1975.",
]
SEPARATORS = [" - ", " \u2013 ", " \u2014 ", ". ", " (", "", "\u00a0-\u00a0", " "]
DATELINES = ["QTO", "TTO", "(Dân trí)", "VOV.VN", "VTV.vn", "(PLO)", "QBĐT", "X"]
DATES = [
    "31/10/2024 08:00",
    "2024-10-29T10:30:00+07:00",
    "Thứ năm, 31/10/2024, 08:00 (GMT+7)",
    "31/02/2025 08:00",
    "ngày 31 tháng 10 năm 2024",
    "Sáng nay 31/10",
    "{publish}",
    "",
]


def _encode_anyway(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode what the codec cannot: a surrogate escape as its byte, another surrogate as
    UTF-8, -16 or -32 would if it could (invalid input), else "?"."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start : exc.end]:
        if "\udc80" <= char <= "\udcff" and exc.encoding.startswith("utf-8"):
            out.append(bytes([ord(char) - 0xDC00]))
        elif exc.encoding.startswith("utf"):
            codec = exc.encoding.replace("-sig", "")  # no BOM before each character
            if codec in ("utf-16", "utf-32"):
                codec += "-le" if sys.byteorder == "little" else "-be"
            out.append(char.encode(codec, "surrogatepass"))
        else:
            out.append(b"?")
    return b"".join(out), exc.end


def strategies() -> Any:
    """The Hypothesis strategy of generated dumps: (description, bytes)."""
    import codecs
    import unicodedata

    from hypothesis import strategies as st

    codecs.register_error("diff-loader", _encode_anyway)
    corpus_texts = [
        data.decode("utf-8", "surrogateescape") for _, data in corpus(ROOT) if data
    ] or ["T\n{publish}\n{head}\nMột.\n"]
    fragment = st.one_of(
        st.lists(st.sampled_from(TRICKY + WORDS), min_size=1, max_size=12).map("".join),
        st.text(st.characters(exclude_characters="\x00"), max_size=30),
        st.text(st.characters(codec="utf-8"), max_size=12),
    )
    prose = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(" ".join)
    line = st.one_of(
        fragment,
        prose,
        st.tuples(prose, st.sampled_from(SEPARATORS), st.sampled_from(CREDITS), fragment).map(
            lambda t: t[0] + t[1] + t[2] + (t[3] if len(t[3]) < 3 else "")
        ),
        st.sampled_from(CREDITS),
        st.tuples(
            st.sampled_from(DATELINES), st.sampled_from([" - ", " \u2013 ", "- "]), prose
        ).map("".join),  # a teaser
        st.tuples(st.sampled_from(["", "Theo ", "By "]), prose).map(
            lambda t: t[0] + " ".join(w.capitalize() for w in t[1].split()[:4])
        ),  # a byline
        st.sampled_from(DATES),
        st.sampled_from(["{title}", "{publish}", "{head}", "", " "]),
        st.tuples(fragment, st.integers(200, 30_000)).map(lambda t: (t[0] or "x") * t[1]),
    )

    @st.composite
    def dump(draw: Any) -> tuple[str, bytes]:
        source = draw(st.integers(0, len(corpus_texts)))
        if source == len(corpus_texts):
            lines = draw(st.lists(line, min_size=3, max_size=14))
        else:
            lines = corpus_texts[source].split("\n")
        for _ in range(draw(st.integers(0, 6))):
            op = draw(st.sampled_from(["insert", "delete", "dup", "swap", "splice", "cut"]))
            at = draw(st.integers(0, len(lines)))
            if op == "insert":
                lines.insert(at, draw(line))
            elif lines and at < len(lines):
                if op == "delete":
                    del lines[at]
                elif op == "dup":
                    lines[at:at] = [lines[at]] * draw(st.integers(1, 3))
                elif op == "swap":
                    other = draw(st.integers(0, len(lines) - 1))
                    lines[at], lines[other] = lines[other], lines[at]
                else:
                    cut = draw(st.integers(0, len(lines[at])))
                    added = draw(fragment) if op == "splice" else ""
                    lines[at] = lines[at][:cut] + added + lines[at][cut:]
        text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
        form = draw(st.sampled_from(["NFC", "NFD", "as is", "as is"]))
        if form != "as is":
            text = unicodedata.normalize(form, text)
        encoding = draw(
            st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "utf-16", "utf-32", "cp1258"])
        )
        data = text.encode(encoding, "diff-loader")
        for _ in range(draw(st.sampled_from([0, 0, 0, 0, 1, 2]))):  # most dumps decode
            at = draw(st.integers(0, len(data)))
            mangled = draw(
                st.sampled_from(
                    [b"", b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\x00", b"\xef\xbb\xbf", b"\xe1"]
                )
                | st.binary(max_size=6)
            )
            data = data[:at] + mangled + data[at + draw(st.integers(0, 2)) :]
        return f"generated {encoding} {form}", data

    return dump()


# ---------------------------------------------------------------- running


def _report(name: str, data: bytes, difference: str) -> None:
    print(f"DIFFERENCE on {name}, {len(data)} bytes: {data!r}"[:2000])
    print(difference[:2000])


def _generated_runs(
    comparer: Comparer, *, examples: int, seed: int, per_run: int
) -> Iterator[tuple[str, bytes, str]]:
    """Hypothesis runs of `per_run` dumps each, seeds `seed`, `seed + 1`...: the minimal
    dump of the first difference in each run that finds one."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    dumps = strategies()
    done = 0
    run = 0
    while done < examples:
        count = min(per_run, examples - done)

        @with_seed(seed + run)
        @settings(
            max_examples=count,
            deadline=None,
            database=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
        )
        @given(dumps)
        def check(dump: tuple[str, bytes]) -> None:
            found = comparer.compare([dump])
            if found:
                raise Difference(found[0])

        try:
            check()
        except Difference as exc:
            yield exc.found
        done += count
        run += 1
        print(f"seed {seed + run - 1}: {done:,} of {examples:,} generated", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path, help="the reference source tree (a checkout)")
    parser.add_argument("new", type=Path, help="the source tree to check against it")
    parser.add_argument("--examples", type=int, default=10_000, help="generated dumps")
    parser.add_argument("--seed", type=int, default=16, help="the first Hypothesis seed")
    parser.add_argument("--per-run", type=int, default=2_000, help="dumps a Hypothesis run")
    parser.add_argument("--python", default=sys.executable, help="the children's Python")
    args = parser.parse_args(argv)
    for tree in (args.old, args.new):
        if not (tree / "syndicate" / "__init__.py").is_file():
            print(f"diff_loader: {tree} holds no syndicate package.", file=sys.stderr)
            return 2
    start = time.process_time(), time.monotonic()
    differences = 0
    with tempfile.TemporaryDirectory(prefix="diff-loader-") as cwd:
        old, new = Tree(args.old, args.python, cwd), Tree(args.new, args.python, cwd)
        for tree in (old, new):
            print(f"{tree.path}: imported {tree.imported}")
            if not Path(tree.imported).is_relative_to(tree.path.resolve()):
                print(f"diff_loader: {tree.path} imported another syndicate.", file=sys.stderr)
                return 2
        comparer = Comparer(old, new)
        try:
            files = corpus(ROOT)
            for name, data, _ in comparer.compare(files):
                differences += 1
                _report(f"{name} (reduced)", *comparer.reduce(name, data))
            print(f"corpus: {len(files)} dumps compared, {differences} differences", flush=True)
            for name, data, _ in _generated_runs(
                comparer, examples=args.examples, seed=args.seed, per_run=args.per_run
            ):
                differences += 1
                _report(f"{name} (reduced)", *comparer.reduce(name, data))
        except ChildDied as exc:
            print(f"diff_loader: {exc}", file=sys.stderr)
            return 1
        old.close()
        new.close()
    children = os.times()
    print(
        f"diff_loader: {comparer.compared:,} dumps compared (seed {args.seed}, "
        f"{args.examples:,} generated; {comparer.articles:,} parsed into articles), "
        f"{differences} differences; "
        f"{time.monotonic() - start[1]:.0f} s, CPU {time.process_time() - start[0]:.0f} s "
        f"here and {children.children_user + children.children_system:.0f} s in the trees"
    )
    return 1 if differences else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(Path(sys.argv[2]))
    else:
        sys.exit(main())
