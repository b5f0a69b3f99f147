"""`rpathfix ldd`: the whole closure of a binary, as ldd(1) shows it, without running anything."""

from __future__ import annotations

import argparse
import json
import os
import sys

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.resolution import LoadResult

HELP = "show every library a binary loads and how each was found (ELF and Mach-O, nothing executed)"
DESCRIPTION = """\
Simulate the dynamic loader (glibc ld.so for ELF, Apple dyld for Mach-O) on FILE and
list its whole closure, as ldd(1) does with FILE as the main object, with the rule that
found each library (rpath, runpath, ld_library_path, cache, default, loaded, ...).
Nothing is executed, so untrusted and foreign-architecture files are safe.

--exe PY simulates PY dlopen()ing FILE instead (how Python imports an extension module).
--secure simulates FILE run as a setuid program (AT_SECURE), as ldd cannot show it.
JSON (--json): {"schema": "rpathfix.ldd/1", "root": ..., "libraries": [{"name", "path",
"found_via", "needed_by", "error"}]}. Exit codes: 0 all found, 1 something missing or a
file the loader refuses (the load stops there), 2 bad input."""


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


def libraries(result: LoadResult) -> list[dict[str, object]]:
    """One row per library in load order, plus one per name that was not found (the root
    itself, dlopen()ed by --exe, is the subject, not a row)."""
    rows: list[dict[str, object]] = []
    seen: set[tuple[str, str | None]] = set()
    for r in result.resolutions:
        if r.found_via == "loaded" or (r.found_via == "direct" and r.path == result.root):
            continue
        key = (r.name, r.path)
        if key in seen:
            continue
        seen.add(key)
        rows.append({"name": r.name, "path": r.path, "found_via": r.found_via, "needed_by": r.requester,
                     "error": r.error})
    return rows


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.loaders import ProcessSpec, load

    spec = ProcessSpec(executable=args.exe, library_path=args.ld_library_path,
                       cache_path=None if args.no_cache else args.cache, cwd=os.getcwd(), arch=args.arch,
                       secure=args.secure)
    result = load(RealTree(), args.file, spec)
    rows = libraries(result)
    missing = result.missing
    if args.json:
        json.dump({"schema": "rpathfix.ldd/1", "root": result.root, "libraries": rows}, sys.stdout, indent=1)
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
    return 1 if missing else 0
