"""`rpathfix why`: every place the loader looks for one library, in order, and why."""

from __future__ import annotations

import argparse
import os
import posixpath

HELP = "explain how (or why not) a binary finds one library: every directory tried, and the rule"
DESCRIPTION = """\
Simulate the loader resolving NAME for FILE and print every candidate path in order,
with the rule that produced it (RPATH of which object, RUNPATH, LD_LIBRARY_PATH,
ld.so.cache, default directories; LC_RPATH, @loader_path for Mach-O) and the result.
When NAME is not found, say which file in view (the split layout around FILE, or
--view DIRs) would provide it, and from which distribution.
Exit codes: 0 found, 1 not found, 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="the binary that needs NAME")
    p.add_argument("name", metavar="NAME", help="the library name, as in DT_NEEDED or a load command")
    p.add_argument("--exe", metavar="PATH", help="main program that dlopen()s FILE (e.g. a Python interpreter)")
    p.add_argument("--ld-library-path", metavar="P", help="simulate this LD_LIBRARY_PATH (DYLD_LIBRARY_PATH for Mach-O)")
    p.add_argument("--no-cache", action="store_true", help="simulate without /etc/ld.so.cache")
    p.add_argument("--secure", action="store_true",
                   help="simulate a setuid/setgid/capability program (AT_SECURE: LD_LIBRARY_PATH ignored, $ORIGIN restricted; a restricted process for dyld)")
    p.add_argument("--view", action="append", default=[], metavar="DIR",
                   help="directories to search for a provider of a missing NAME (default: around FILE)")


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.loaders import ProcessSpec, explain
    from rpathfix.providers import default_view, find_providers

    spec = ProcessSpec(executable=args.exe, library_path=args.ld_library_path,
                       cache_path=None if args.no_cache else "/etc/ld.so.cache", cwd=os.getcwd(), secure=args.secure)
    res, _result = explain(RealTree(), args.file, args.name, spec)
    print(f"{res.name} requested by {res.requester}")
    for i, a in enumerate(res.attempts, 1):
        origin = ""
        if a.contributor:
            origin = f" of {posixpath.basename(a.contributor)}"
        entry = f" {a.entry!r}" if a.entry is not None and a.entry != a.path else ""
        note = f"  ({a.note})" if a.note else ""
        print(f"  {i:2}. {a.rule}{origin}{entry}: {a.path}  -> {a.result}{note}")
    if res.found_via == "driver":
        print("  result: provided by the GPU driver at run time (not shipped in wheels)")
        return 0
    if res.path is not None:
        print(f"  result: {res.path}  (via {res.found_via})")
        return 0
    print(f"  result: NOT FOUND{': ' + res.error if res.error else ''}")
    view = args.view or default_view(os.path.abspath(args.file))
    for p in find_providers(view, posixpath.basename(args.name)):
        dist = f" (from {p.dist} {p.version})" if p.dist else ""
        print(f"  provided in view by {p.path}{dist}: it is not on {posixpath.basename(args.file)}'s search path")
    return 1
