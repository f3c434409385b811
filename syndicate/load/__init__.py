"""Load stage: article dump files in, `Article` values out.

`parse_dump` and `decode_dump` are pure; `find_dumps`, `read_dump` and `read_dumps` are the
edge that touches the file system. The format is described in docs/format.md.

Modules: `files` (finding and reading dump files), `decode` (bytes -> text),
`parse` (text -> Article), `dates` (publish dates).
"""

from syndicate.load.dates import LEAD_DATE_WITHIN
from syndicate.load.decode import decode_dump
from syndicate.load.files import (
    SEEDS_HINT,
    DumpPin,
    LinkCheck,
    check_dump_paths,
    check_link,
    check_name,
    display_path,
    find_dump_paths,
    find_dumps,
    read_dump,
    read_dumps,
    real_folders,
)
from syndicate.load.parse import (
    LINE_LIMIT,
    PARSER_VERSION,
    TEXT_LIMIT,
    merge_copies,
    parse_dump,
    parse_dump_with_body,
)
from syndicate.text import TITLE_LIMIT

__all__ = [
    "LEAD_DATE_WITHIN",
    "LINE_LIMIT",
    "PARSER_VERSION",
    "SEEDS_HINT",
    "TEXT_LIMIT",
    "TITLE_LIMIT",
    "DumpPin",
    "LinkCheck",
    "check_dump_paths",
    "check_link",
    "check_name",
    "decode_dump",
    "display_path",
    "find_dump_paths",
    "find_dumps",
    "merge_copies",
    "parse_dump",
    "parse_dump_with_body",
    "read_dump",
    "read_dumps",
    "real_folders",
]
