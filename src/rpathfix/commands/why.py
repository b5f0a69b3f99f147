"""`rpathfix why`: every place the loader looks for one library, in order, and why."""

from __future__ import annotations

import argparse
import os
import posixpath

HELP = "explain how (or why not) a binary finds one library or binds one symbol"
DESCRIPTION = """\
Simulate the loader resolving NAME for FILE and print every candidate path in order,
with the rule that produced it (RPATH of which object, RUNPATH, LD_LIBRARY_PATH,
ld.so.cache, default directories; LC_RPATH, @loader_path for Mach-O) and the result.
When NAME is not found, say which file in view (the split layout around FILE, or
--view DIRs) would provide it, and from which distribution.

When NAME is a symbol (not a library name; or with --symbol), show how FILE's reference
to it binds: every object of the lookup scope in ld.so's order (the program and its
libraries, then FILE's own dependency tree breadth-first; with --exe, as that program's
dlopen(RTLD_NOW) of FILE), what each defines under that name, and the object it binds to.
NAME may carry a version: `memcpy@GLIBC_2.14`. For Mach-O, the two-level or flat lookup.
Exit codes: 0 found (or bound), 1 not found, 2 bad input."""


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
    p.add_argument("--symbol", action="store_true", help="NAME is a symbol, even if it looks like a library name")


def is_library_name(name: str) -> bool:
    """A library name (`libx.so.1`, `@rpath/x.dylib`, a path), not a symbol."""
    import re

    return "/" in name or bool(re.search(r"\.so(\.[0-9.]*)?$|\.dylib$|\.framework", name))


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.loaders import ProcessSpec, explain
    from rpathfix.providers import default_view, find_providers

    spec = ProcessSpec(executable=args.exe, library_path=args.ld_library_path,
                       cache_path=None if args.no_cache else "/etc/ld.so.cache", cwd=os.getcwd(), secure=args.secure)
    if args.symbol or not is_library_name(args.name):
        return _why_symbol(args, spec)
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


def _why_symbol(args: argparse.Namespace, spec: object) -> int:
    from rpathfix.demangle import demangle
    from rpathfix.fstree import RealTree
    from rpathfix.loaders import ProcessSpec, explain_symbol

    assert isinstance(spec, ProcessSpec)
    trace, result = explain_symbol(RealTree(), args.file, args.name, spec)
    dem = demangle([trace.symbol]).get(trace.symbol)
    name = f"{trace.symbol}{f' ({dem})' if dem else ''}{f', version {trace.version}' if trace.version else ''}"
    if trace.referenced:
        print(f"{name}: {'a weak ' if trace.weak else 'an '}undefined reference of {trace.requester}")
    else:
        print(f"{name}: {trace.requester} does not reference it; looked up as if it did")
    if result.missing:
        missing = ", ".join(sorted({r.name for r in result.missing}))
        print(f"  note: the load fails before binding: {missing} not found (rpathfix ldd shows why)")
    else:
        from rpathfix.loaders import load_checked
        from rpathfix.resolution import VERSION_NOT_FOUND

        _result, problems = load_checked(RealTree(), args.file, spec)
        for p in problems:
            if p.kind == VERSION_NOT_FOUND:
                print(f"  note: the load fails before binding: {p.message}")
    print(f"  lookup ({trace.mode}), in order:")
    width = max((len(s.path) for s in trace.steps), default=0)
    for i, s in enumerate(trace.steps, 1):
        note = f"  [{s.note}]" if s.note else ""
        print(f"  {i:3}. {s.scope:<9} {s.path:<{width}}  {s.result}{note}")
    if trace.provider is not None:
        print(f"  result: bound to {trace.provider}" + (f": {trace.definition}" if trace.definition else ""))
        return 0
    if trace.weak:
        print("  result: not defined anywhere; a weak reference, so it stays 0 and the load works")
        return 0
    words = "Symbol not found" if "namespace" in trace.mode else "undefined symbol"
    print(f"  result: NOT DEFINED in this scope: the load fails with \"{words}\"")
    return 1
