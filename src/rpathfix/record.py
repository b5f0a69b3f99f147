"""A distribution's RECORD: the installer's list of every file it installed.

`scan` reads it to say which distribution a file belongs to; the planner reads it to
find a root's native files without listing the root's directories (torch's RECORD is
one 1.3 MB read; its 1,330 directories are 1,330 listings); `verify` (for --assume) and
the cause finder read it through a FileTree (dist_infos, record_files). Parsing is fast
and exact: csv's first field of each row, computed with string methods unless the file
needs csv.
"""

from __future__ import annotations

import os
import posixpath

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree

# RECORD files larger than this are not read (a corrupt or hostile file).
MAX_RECORD_BYTES = 64 * 1024 * 1024

_PLAIN_OK = os.sep == "/" and os.altsep is None


def all_plain(rels: list[str]) -> bool:
    """No rel is empty, absolute, starts with ".", ends with "/" or has a "/." or "//" in it:
    each one names site_dir + "/" + rel without normalizing."""
    if not _PLAIN_OK:
        return False
    for r in rels:  # noqa: SIM110 - a plain loop is twice as fast as all() over a generator here
        if not r or r[0] in "./" or r[-1] == "/" or "/." in r or "//" in r:
            return False
    return True


def record_paths(text: str) -> list[str]:
    """The first field of every row of a RECORD file's text, as csv.reader reads it."""
    crs = text.count("\r")
    if '"' in text or "\0" in text or (crs and crs != text.count("\r\n")):
        import csv
        import io

        return [row[0] for row in csv.reader(io.StringIO(text)) if row]
    # Without quotes, NULs or lone carriage returns, csv's first field is the text up to
    # the first comma of each non-empty line. RECORD files written by csv end every line
    # in CRLF; in a mixed file a "\r" can end a first field only on a line without a comma.
    if crs and crs == text.count("\n"):
        return [line.partition(",")[0] for line in text.split("\r\n") if line]
    if crs:
        rels = [line.partition(",")[0] for line in text.split("\n") if line and line != "\r"]
        return [r[:-1] if r[-1:] == "\r" else r for r in rels]
    return [line.partition(",")[0] for line in text.split("\n") if line]


def read_record_text(record: str) -> str:
    """The file as open(record, encoding="utf-8", errors="replace", newline="").read(MAX_RECORD_BYTES)."""
    try:
        with open(record, "rb") as fh:
            data = fh.read(MAX_RECORD_BYTES)
            if len(data) < MAX_RECORD_BYTES:
                return data.decode("utf-8", "replace")  # one decode of the whole file: same text
        with open(record, encoding="utf-8", errors="replace", newline="") as fh:
            return fh.read(MAX_RECORD_BYTES)
    except OSError:
        return ""


def dist_infos(tree: FileTree, site: str) -> list[tuple[str, str, str]]:
    """(directory name, distribution name, version) of each `<name>-<version>.dist-info` of
    the site directory `site`, in the tree's listing order."""
    from rpathfix.names import parse_dist_info_dirname

    out = []
    for n in tree.listdir(site):
        parsed = parse_dist_info_dirname(n) if n.endswith(".dist-info") else None
        if parsed is not None:
            out.append((n, *parsed))
    return out


def record_files(tree: FileTree, site: str, info: str) -> list[str] | None:
    """The files `site/info/RECORD` lists, each as normpath(join(site, path)) (a plain path
    is joined without the call, which gives the same string: all_plain); None when the
    RECORD is missing or larger than MAX_RECORD_BYTES. Paths that leave `site` (scripts:
    `../../../bin/tool`) end up where they point."""
    from rpathfix.fstree import read_small

    data = read_small(tree, f"{site}/{info}/RECORD", MAX_RECORD_BYTES)
    if data is None:
        return None
    base = posixpath.normpath(site)
    return [f"{base}/{rel}" if all_plain([rel]) else posixpath.normpath(posixpath.join(base, rel))
            for rel in record_paths(data.decode("utf-8", "replace"))]
