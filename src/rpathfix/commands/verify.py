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

Errors: an extension module whose libraries do not resolve; an executable that does not
find a library the environment holds (programs are run by their resolved path, as the
kernel runs them); an extension module whose load needs a symbol version or a symbol
that no object in its scope defines (version-not-found, undefined-symbol: checked as the
import's dlopen(RTLD_NOW) binds them, and for programs as their start-up binds them; C++
names demangled with c++filt when present). Warnings: a library whose dependency nothing provides, a library that
resolves only by load order, a system library shadowing a wheel's copy, one SONAME
provided by files with different contents.

--assume-loaded NAME (repeatable) is for packages that load libraries themselves before
importing their modules (cupy, through cuda-pathfinder): a library that is not found is
a warning instead of an error when NAME is its file name (libcublas.so.12), or when NAME
is the distribution of the module or program that needs it (cupy-cuda12x).

The report groups the findings by cause and says the command that fixes each
(`rpathfix venv` for a split layout); --explain adds every directory the loader tried.
--json keeps one entry per file and name (rpathfix.verify/1). In a split sys.path a
package that a regular package of another directory hides is an error too.
Exit codes: 0 no errors, 1 errors, 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="venv, site-packages, or sys.path directories")
    p.add_argument("--json", action="store_true", help="print rpathfix.verify/1 JSON")
    p.add_argument("--python", metavar="PY", help="interpreter that imports the modules (default: the venv's, or this one)")
    p.add_argument("--ld-library-path", metavar="P", help="simulate this LD_LIBRARY_PATH (default: unset)")
    p.add_argument("--no-cache", action="store_true", help="ignore /etc/ld.so.cache")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--secure", action="store_true",
                   help="simulate a setuid/setgid/capability program (AT_SECURE: LD_LIBRARY_PATH ignored, $ORIGIN restricted; a restricted process for dyld)")
    p.add_argument("--assume-loaded", action="append", default=[], metavar="NAME",
                   help="a library file name, or a distribution whose modules' libraries, that the package "
                        "loads itself at run time: not found is a warning (repeatable)")
    p.add_argument("--explain", action="store_true", help="show every directory the loader tried")
    p.add_argument("--no-symbols", action="store_true",
                   help="do not check symbol versions and undefined symbols of extension modules")


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.verify import LoaderOptions, format_report, report_to_json, verify

    opts = LoaderOptions(interpreter=args.python, ld_library_path=args.ld_library_path, use_cache=not args.no_cache,
                         secure=args.secure, assume_loaded=tuple(args.assume_loaded), symbols=not args.no_symbols)
    report = verify(RealTree(), args.paths, opts)
    if args.json:
        json.dump(report_to_json(report), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from rpathfix.report import use_color

        print(format_report(report, explain=args.explain, color=use_color(sys.stdout), named=args.paths))
    failed = bool(report.errors) or (args.strict and bool(report.warnings))
    return 1 if failed else 0
