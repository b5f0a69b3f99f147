"""`rpathfix ldd`: the whole closure of a binary, as ldd(1) shows it, without running anything."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.resolution import LoadResult, SymbolProblem

HELP = "show every library a binary loads and how each was found (ELF and Mach-O, nothing executed)"
DESCRIPTION = """\
Simulate the dynamic loader (glibc ld.so for ELF, Apple dyld for Mach-O) on FILE and
list its whole closure, as ldd(1) does with FILE as the main object, with the rule that
found each library (rpath, runpath, ld_library_path, cache, default, loaded, ...).
Nothing is executed, so untrusted and foreign-architecture files are safe.

--exe PY simulates PY dlopen()ing FILE instead (how Python imports an extension module).
--secure simulates FILE run as a setuid program (AT_SECURE), as ldd cannot show it.
Version needs are checked as ld.so checks them (`version `GLIBC_2.38' not found`); with -r,
or with --exe (an import binds with RTLD_NOW), every undefined symbol is bound too, as
`ldd -r` does. JSON (--json): {"schema": "rpathfix.ldd/1", "root": ..., "libraries":
[{"name", "path", "found_via", "needed_by", "error"}], "problems": [...]}. Exit codes: 0 all
found and bound, 1 something missing or unbound or a file the loader refuses (the load
stops there), 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="shared library, extension module or executable")
    p.add_argument("--json", action="store_true", help="print rpathfix.ldd/1 JSON")
    p.add_argument("--exe", metavar="PATH", help="main program that dlopen()s FILE (e.g. a Python interpreter)")
    p.add_argument("--ld-library-path", metavar="P", help="simulate this LD_LIBRARY_PATH (DYLD_LIBRARY_PATH for Mach-O)")
    p.add_argument("--cache", metavar="FILE", default="/etc/ld.so.cache", help="ld.so.cache to read (default: %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="simulate without ld.so.cache")
    p.add_argument("--arch", help="Mach-O slice to simulate (default: arm64 when present)")
    p.add_argument("--secure", action="store_true",
                   help="simulate a setuid/setgid/capability program (AT_SECURE: LD_LIBRARY_PATH ignored, $ORIGIN restricted; a restricted process for dyld)")
    p.add_argument("-r", "--bind", action="store_true",
                   help="also bind every undefined symbol, as `ldd -r` does (always with --exe)")


def libraries(result: LoadResult) -> list[dict[str, object]]:
    """One row per library in load order, plus one per failed search: a name that several
    objects look for and do not find gets a row per requester, as ldd(1) prints it (the
    root itself, dlopen()ed by --exe, is the subject, not a row)."""
    rows: list[dict[str, object]] = []
    seen: set[tuple[str, str | None, str | None]] = set()
    for r in result.resolutions:
        if r.found_via == "loaded" or (r.found_via == "direct" and r.path == result.root):
            continue
        key = (r.name, r.path, None if r.path is not None else r.requester)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"name": r.name, "path": r.path, "found_via": r.found_via, "needed_by": r.requester,
                     "error": r.error})
    return rows


def run(args: argparse.Namespace) -> int:
    from rpathfix.demangle import demangle
    from rpathfix.fstree import RealTree
    from rpathfix.loaders import ProcessSpec, load_checked

    spec = ProcessSpec(executable=args.exe, library_path=args.ld_library_path,
                       cache_path=None if args.no_cache else args.cache, cwd=os.getcwd(), arch=args.arch,
                       secure=args.secure)
    result, problems = load_checked(RealTree(), args.file, spec, bind=args.bind)
    rows = libraries(result)
    missing = result.missing
    demangled = demangle(p.symbol for p in problems if p.symbol)
    if args.json:
        from rpathfix.verify import symbol_json

        doc = {"schema": "rpathfix.ldd/1", "root": result.root, "libraries": rows,
               "problems": [{"kind": p.kind, **symbol_json(p, demangled.get(p.symbol or ""))} for p in problems]}
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        for row in rows:
            if row["found_via"] == "driver":
                print(f"\t{row['name']} => provided by the GPU driver")
            elif row["error"] is not None:
                print(f"\t{row['name']} => error: {row['error']}   (needed by {row['needed_by']}; the load stops here)")
            elif row["path"] is None:
                print(f"\t{row['name']} => not found   (needed by {row['needed_by']})")
            else:
                print(f"\t{row['name']} => {row['path']}   [{row['found_via']}]")
        for p in problems:
            print(_problem_line(p, demangled.get(p.symbol or "")))
    return 1 if missing or problems else 0


def _problem_line(p: SymbolProblem, demangled: str | None) -> str:
    """One problem as ldd -r words it."""
    from rpathfix.resolution import VERSION_NOT_FOUND

    if p.kind == VERSION_NOT_FOUND:
        return f"{p.provider}: version `{p.version}' not found (required by {p.requester})"
    name = f"{p.symbol} ({demangled})" if demangled else f"{p.symbol}"
    if p.loader == "dyld":
        where = f"expected in {p.provider}" if p.provider else "flat namespace"
        return f"symbol not found: {name}\t({p.requester}; {where})"
    version = f", version {p.version}" if p.version else ""
    return f"undefined symbol: {name}{version}\t({p.requester})"
