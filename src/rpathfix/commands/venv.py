"""`rpathfix venv`: write the per-binary venv of distribution roots, checked before writing."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "write a relocatable venv merging distribution roots (checked before writing)"
DESCRIPTION = """\
Plan the merged site-packages of the distribution ROOTs (see `rpathfix plan`), check
with the loader model that every extension module will load, and write OUT:
pyvenv.cfg, bin/python -> PY, lib/pythonX.Y/site-packages/ of relative symlinks (real
directories where $ORIGIN/.. must climb), console scripts that work when OUT moves.

Refuses (exit 1, printing the report) when an extension module would not load, unless
--no-verify; nothing is written then. `rpathfix verify OUT` loads every other native
library too (plugins, preloaded libraries) for its warnings. Atomic (built beside OUT,
then renamed) and idempotent: a run that changes nothing writes nothing.

Quiet on success: warnings that matter go to stderr, once each; -v also says what was
written and the planner's notes."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="venv directory to write")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="distribution root directory")
    p.add_argument("--python", metavar="PY", default=None, help="interpreter of the venv (default: this one)")
    p.add_argument("--link-mode", choices=("symlink", "hardlink", "copy"), default="symlink",
                   help="how files reach the venv (default: relative symlinks)")
    p.add_argument("--prefer", action="append", default=[], metavar="DIST",
                   help="when two distributions ship different files at one path, DIST wins")
    p.add_argument("--no-verify", action="store_true", help="write even if an extension module would not load")
    p.add_argument("--ld-library-path", metavar="P", help="LD_LIBRARY_PATH to assume when verifying (default: unset)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what was written, and the planner's notes")


def run(args: argparse.Namespace) -> int:
    from rpathfix.build_venv import build_venv

    python = args.python or sys.executable
    out = os.path.abspath(args.out)
    result = build_venv(out, args.roots, python=python, link_mode=args.link_mode, prefer=args.prefer,
                        verify_layout=not args.no_verify, ld_library_path=args.ld_library_path)
    if result.refused is not None:
        print(result.refused, file=sys.stderr)
        print(f"rpathfix venv: refusing to write {out}: an extension module would not load "
              "(see above; --no-verify writes it anyway)", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(w, file=sys.stderr)
    if args.verbose:
        from rpathfix.report import plan_note_lines

        for n in plan_note_lines(result.notes, checked=not args.no_verify):
            print(n, file=sys.stderr)
        state = "wrote" if result.changed else "up to date:"
        print(f"{state} {out} ({result.entries} entries, {result.real_dirs} real directories)")
    return 0
