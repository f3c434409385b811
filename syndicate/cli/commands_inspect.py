"""Commands: inspect."""

from __future__ import annotations

import json
from pathlib import Path

import click

from syndicate.cli import AppContext, cli, echo, pass_app
from syndicate.errors import EXIT_FAILED, DumpError
from syndicate.load import display_path, read_dumps
from syndicate.model import Article
from syndicate.store.articles import read_page_paths


def _error_text(exc: DumpError) -> str:
    """The error without its path (the JSON object names the source separately)."""
    where = f"line {exc.line}: " if exc.line is not None else ""
    hint = f" {exc.hint}" if exc.hint else ""
    return f"{where}{exc.reason}{hint}"


def _render(article: Article, pages: dict[str, str] | None) -> list[str]:
    published = article.published.isoformat() if article.published else "unknown"
    source = "head" if article.head else "lead"
    title = article.title + (f" (derived from the {source})" if article.title_derived else "")
    lines = [
        article.source,
        f"  id:          {article.id}",
        f"  slug:        {article.slug}",
    ]
    if pages is not None:  # a store exists: where the last build put its page, if anywhere
        lines.append(f"  page:        {pages.get(article.id, '-')}")
    lines += [
        f"  title:       {title}",
        f"  published:   {published} ({article.precision})",
        f"  author:      {article.author or '-'}",
        *([f"  credit:      {article.credit}"] if article.credit else []),
        f"  language:    {article.language}",
        f"  dateline:    {article.dateline or '-'}",
        f"  head:        {article.head or '-'}",
        f"  lead:        {article.lead}",
        f"  paragraphs:  {len(article.paragraphs)}",
        f"  captions:    {len(article.captions)}",
    ]
    lines += [f"    - {caption}" for caption in article.captions]
    lines.append(f"  teasers:     {len(article.teasers)}")
    lines += [f"    - {t.dateline} - {t.text}" for t in article.teasers]
    return lines


@cli.command("inspect")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines, one object per file.")
@pass_app
def inspect_command(app: AppContext, paths: tuple[Path, ...], as_json: bool) -> None:
    """Show how each dump file parses, on its own (no duplicate removal).

    Example: syndicate inspect seeds/001_lam-giang.txt --json
    """
    settings = app.settings
    # Page paths are the build's to decide: shown as stored, only when there is a store
    # (none is made: on PostgreSQL, a database no command has written stays empty).
    db = app.read_store()
    pages = read_page_paths(db) if db is not None else None
    failed = 0
    first = True
    for path, result in read_dumps(
        list(paths),
        max_bytes=settings.load.max_bytes,
        tz=settings.site.tz,
        follow_symlinks=settings.load.follow_symlinks,
    ):
        if isinstance(result, DumpError):
            failed += 1
            if as_json:
                record = {"source": display_path(path), "error": _error_text(result)}
                echo(json.dumps(record, ensure_ascii=False))
            else:
                echo(f"error: {result}", err=True)
            continue
        if as_json:
            echo(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            if not first:
                echo("")
            echo("\n".join(_render(result, pages)))
            first = False
    if failed:
        raise click.exceptions.Exit(EXIT_FAILED)
