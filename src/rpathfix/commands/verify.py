"""`rpathfix verify`: will every native library of this Python environment load?"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check that the native libraries of a venv, site-packages or sys.path will load"
DESCRIPTION = """\
Simulate the interpreter importing every extension module (and loading every other
native library) of a Python environment, without executing anything.

PATH is a venv (with pyvenv.cfg), a site-packages directory, or several directories
that form a sys.path (for example one directory per wheel, as rules_python lays them out).

Errors: an extension module whose libraries do not resolve; a library whose dependency
nothing provides; an extension module whose load needs a symbol version or a symbol
that no object in its scope defines (version-not-found, undefined-symbol: checked as the
import's dlopen(RTLD_NOW) binds them; C++ names demangled with c++filt when present). Warnings: a library that resolves only by load order, a system
library shadowing a wheel's copy, one SONAME provided by two files.
Exit codes: 0 no errors, 1 errors, 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="venv, site-packages, or sys.path directories")
    p.add_argument("--json", action="store_true", help="print rpathfix.verify/1 JSON")
    p.add_argument("--python", metavar="PY", help="interpreter that imports the modules (default: the venv's, or this one)")
    p.add_argument("--ld-library-path", metavar="P", help="simulate this LD_LIBRARY_PATH (default: unset)")
    p.add_argument("--no-cache", action="store_true", help="ignore /etc/ld.so.cache")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--no-symbols", action="store_true",
                   help="do not check symbol versions and undefined symbols of extension modules")


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.verify import LoaderOptions, format_report, report_to_json, verify

    opts = LoaderOptions(interpreter=args.python, ld_library_path=args.ld_library_path, use_cache=not args.no_cache,
                         symbols=not args.no_symbols)
    report = verify(RealTree(), args.paths, opts)
    if args.json:
        json.dump(report_to_json(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(report))
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0
