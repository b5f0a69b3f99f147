"""A distribution's RECORD: the installer's list of every file it installed.

`scan` reads it to say which distribution a file belongs to; the planner reads it to
find a root's native files without listing the root's directories (torch's RECORD is
one 1.3 MB read; its 1,330 directories are 1,330 listings). Parsing is fast and exact:
csv's first field of each row, computed with string methods unless the file needs csv.
"""

from __future__ import annotations

import os

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
