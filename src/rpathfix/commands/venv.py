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
directories where $ORIGIN/.. must climb), console scripts that work when OUT moves or
are reached through a symlink, .data/data under OUT (merged into lib/, bin/, include/ as
pip does), .data/headers under include/site/pythonX.Y/<dist>/.

The check reads the very tree that will be written, in every --link-mode. It refuses
(exit 1, printing the report) when an extension module would not load; nothing is
written then. A package that loads some libraries itself at run time (cupy preloads the
CUDA libraries) can name them with --assume-loaded: missing libraries matching NAME
become warnings. --no-verify skips the check and says how many modules it left unchecked.
`rpathfix verify OUT` loads every other native library too (plugins, preloaded
libraries) for its warnings.

OUT is replaced only if rpathfix wrote it (it holds the marker file .rpathfix-venv) or is
an empty directory; anything else, a venv made by pip included, is refused (exit 2).
The new venv is built beside OUT and put in place in one step (a rename, or an exchange
of the two directories), so a reader never sees OUT missing or half-written (where the
file system cannot exchange two directories, replacing OUT is refused: remove it first);
what a killed run left beside OUT is removed by the next run. A run that changes nothing
writes nothing.

--repair: a library whose own search path (RPATH/RUNPATH, LC_RPATH) misses a library
that another file of the venv provides (onnxruntime's CUDA provider and the nvidia-*
wheels) gets a patched copy in the venv with the entries that reach it, the same edit
`rpathfix repair` makes in a wheel; only those files are copies, every other file stays a
link, and the roots are not changed. Without it, the check refuses such a venv and names
the command with --repair.

--link-mode hardlink: where a hard link cannot be made (another file system, a refusal
by the kernel), the file is copied, and one note on stderr says how many were.

Quiet on success: warnings that matter go to stderr, once each; -v also says what was
written and the planner's notes (each distinct case once)."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="venv directory to write")
    p.add_argument("roots", nargs="+", metavar="ROOT", help="distribution root directory")
    p.add_argument("--python", metavar="PY", default=None, help="interpreter of the venv (default: this one)")
    p.add_argument("--link-mode", choices=("symlink", "hardlink", "copy"), default="symlink",
                   help="how files reach the venv (default: relative symlinks); hardlink copies, "
                        "with a note, what cannot be hard-linked")
    p.add_argument("--prefer", action="append", default=[], metavar="DIST",
                   help="when two distributions ship different files at one path, DIST wins")
    p.add_argument("--assume-loaded", action="append", default=[], metavar="NAME",
                   help="a library (file name or SONAME) or a distribution whose libraries the package loads "
                        "itself at run time: missing, they are warnings, not errors (repeatable)")
    p.add_argument("--repair", action="store_true",
                   help="give libraries that cannot reach a provider in the venv a patched copy there")
    p.add_argument("--no-verify", action="store_true",
                   help="write without checking that the extension modules load (says how many it did not check)")
    p.add_argument("--ld-library-path", metavar="P", help="LD_LIBRARY_PATH to assume when verifying (default: unset)")
    p.add_argument("-v", "--verbose", action="store_true", help="say what was written, and the planner's notes")


def run(args: argparse.Namespace) -> int:
    from rpathfix.build_venv import build_venv

    python = args.python or sys.executable
    out = os.path.abspath(args.out)
    result = build_venv(out, args.roots, python=python, link_mode=args.link_mode, prefer=args.prefer,
                        verify_layout=not args.no_verify, ld_library_path=args.ld_library_path,
                        assume_loaded=args.assume_loaded, repair=args.repair)
    if result.refused is not None:
        print(result.refused, file=sys.stderr)
        print(f"rpathfix venv: refusing to write {out}: a native file would not load "
              "(see above; --assume-loaded NAME for a library the package loads itself, "
              "--no-verify writes it anyway)", file=sys.stderr)
        return 1
    if args.no_verify:
        print(f"rpathfix venv: --no-verify: not checked: {result.unchecked} extension module(s) "
              f"(whether they load; `rpathfix verify {args.out}` checks them)", file=sys.stderr)
    for w in result.warnings:
        print(w, file=sys.stderr)
    if args.verbose:
        from rpathfix.report import plan_note_lines

        for n in plan_note_lines(result.notes, checked=not args.no_verify):
            print(n, file=sys.stderr)
        for rel in result.repaired:
            print(f"patched copy: {rel} (--repair)", file=sys.stderr)
        state = "wrote" if result.changed else "up to date:"
        print(f"{state} {out} ({result.entries} entries, {result.real_dirs} real directories)")
    return 0
