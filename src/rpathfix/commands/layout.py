"""`rpathfix layout`: check a venv of per-file links described by a manifest (the Bazel rules' check)."""

from __future__ import annotations

import argparse
import sys

HELP = "check a venv of per-file links described by a manifest, without writing it (Bazel rules)"
DESCRIPTION = """\
Read MANIFEST (rpathfix.layout/1, docs/schemas.md: the venv path of every file and the
file it links to, paths relative to the current directory), as the Bazel rule
rpathfix_venv writes it for a venv made of runfiles symlinks, and check it without
writing anything:

- rpathfix plans the distribution roots itself (the precedence and namespace rules of
  `rpathfix plan`) and every path where the manifest places another file, or none, is an
  error: "rules and rpathfix disagree about <path>";
- a file that cannot work as a link (an ELF executable whose $ORIGIN climbs into another
  wheel, a Mach-O file whose @loader_path does) is an error naming the file: the rule's
  layout = "tree" writes real files;
- the loader check `rpathfix venv` runs before writing, over the described tree of real
  directories and per-file links: an extension module that would not load fails (exit 1)
  with the report naming the missing library.

On success --report gets a short deterministic summary (no absolute path), and each
`--script` record's launcher is written (a Python script of bin/ whose `#!` names another
interpreter, run by the venv's bin/python instead); warnings go to stderr."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("manifest", metavar="MANIFEST", help="rpathfix.layout/1 manifest")
    p.add_argument("--report", metavar="FILE", help="write the summary here on success")
    p.add_argument("--assume-loaded", action="append", default=[], metavar="NAME",
                   help="a library or distribution the package loads itself at run time (as for `rpathfix venv`)")


def run(args: argparse.Namespace) -> int:
    from rpathfix.errors import UsageError
    from rpathfix.layout import check_layout, parse_manifest

    try:
        with open(args.manifest, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UsageError(f"{args.manifest}: cannot read: {e.strerror}") from None
    manifest = parse_manifest(text, args.manifest)
    result = check_layout(manifest, assume_loaded=args.assume_loaded)
    if result.errors:
        for err in result.errors:
            print(err, file=sys.stderr)
        print(f"rpathfix layout: {manifest.name}: the venv would not work (see above)", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(w, file=sys.stderr)
    if manifest.scripts:
        import os

        from rpathfix.layout import write_launchers

        write_launchers(manifest, os.getcwd())
    if args.report:
        from rpathfix import fileio

        fileio.write_bytes(args.report, result.report.encode(), mode=0o644, durable=False)
    return 0
