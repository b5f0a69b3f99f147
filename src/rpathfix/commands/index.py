"""`rpathfix index`: a static simple repository (PEP 503/691/658) of a directory of wheels."""

from __future__ import annotations

import argparse

HELP = "write a static simple repository (PEP 503 HTML, PEP 691 JSON, PEP 658 metadata) of a wheel directory"
DESCRIPTION = """\
Write OUT/simple/ (default OUT: DIR) for the wheels in DIR, to be served by any static web
server or bucket: `pip install --index-url URL/simple/ NAME` and `uv pip install` read it.
Each wheel's METADATA is written beside it as <wheel>.metadata (PEP 658/714), so resolvers
read requirements without downloading wheels; links carry sha256 hashes and Requires-Python.
When OUT is not DIR, wheels are hard-linked (else copied) into OUT.

Incremental: only new or changed wheels are read, and a page is written only when its
content changes. Atomic: every file is renamed into place whole, linked files before the
pages that link them. See docs/repair.md for serving the JSON form."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="directory holding the wheels")
    p.add_argument("--out", metavar="OUT", help="where to write the repository (default: DIR)")


def run(args: argparse.Namespace) -> int:
    from rpathfix.index import build_index

    result = build_index(args.dir, args.out)
    changed = len(result.written) + len(result.removed)
    state = f"wrote {changed} file(s)" if changed else "up to date"
    print(f"{state}: {result.wheels} wheel(s) of {result.projects} project(s)")
    return 0
