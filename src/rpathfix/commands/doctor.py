"""`rpathfix doctor`: what will fail to load in this Python environment, why, and how to fix it."""

from __future__ import annotations

import argparse
import json
import os
import sys

HELP = "diagnose a Python environment: what will not load, why, and the command that fixes it"
DESCRIPTION = """\
Ask a Python interpreter (--python PY; default: the active venv's python, else python3 on
PATH) for its sys.path, site directories, LD_LIBRARY_PATH, LD_PRELOAD and the host's
glibc, then load every native file on that sys.path with the loader models (nothing of
the environment runs). PATH... checks those directories instead, as `rpathfix verify`
does (a venv, a site-packages, or one directory per wheel).

Each finding has a code, a severity, the files concerned, a short explanation and the
command that fixes it: a split layout (-> rpathfix venv), a library with no path to the
wheel that provides what it needs (-> rpathfix repair), what works only because of
LD_LIBRARY_PATH, LD_PRELOAD or Python code that preloads libraries, a system copy
shadowing a wheel's, one SONAME from two files, CUDA 12 and 13 wheels together, a regular
package hiding a namespace in a split sys.path, .pth files that will not run, a
dependency only on a parent's RUNPATH, no GPU driver on this host.

--explain adds every directory the loader tried; --json prints rpathfix.doctor/1.
Exit codes: 0 no errors, 1 errors, 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="venv, site-packages, or sys.path directories")
    p.add_argument("--python", metavar="PY", help="the interpreter to ask (default: $VIRTUAL_ENV/bin/python, "
                                                  "else python3 on PATH)")
    p.add_argument("--json", action="store_true", help="print rpathfix.doctor/1 JSON")
    p.add_argument("--explain", action="store_true", help="show every directory the loader tried, and notes")
    p.add_argument("--cache-root", metavar="DIR",
                   help="use DIR/etc/ld.so.cache instead of this host's (a container image's root)")
    p.add_argument("--no-cache", action="store_true", help="ignore /etc/ld.so.cache")


def run(args: argparse.Namespace) -> int:
    from rpathfix.doctor import (
        default_python,
        diagnose,
        doctor_json,
        header_lines,
        probe_python,
        sys_path_dirs,
    )
    from rpathfix.errors import UsageError
    from rpathfix.fstree import RealTree
    from rpathfix.progress import Progress
    from rpathfix.report import Display, Scope, format_findings, use_color

    progress = Progress()
    if args.cache_root is not None and not os.path.isdir(args.cache_root):
        raise UsageError(f"--cache-root {args.cache_root}: not a directory")
    try:
        info = None
        skipped: list[str] = []
        if args.paths:
            from rpathfix.environment import layout_of

            layout = layout_of(RealTree(), args.paths)
            dirs, venv_python = layout.site_dirs, layout.interpreter
            interpreter = args.python or venv_python or sys.executable
            # One site-packages or a venv runs its .pth files; several directories are a sys.path.
            sites = dirs if (len(args.paths) == 1 or venv_python) else []
            llp, preload = os.environ.get("LD_LIBRARY_PATH"), os.environ.get("LD_PRELOAD")
            paths, named = list(args.paths), list(args.paths)
        else:
            python = args.python or default_python()
            progress.show(f"asking {python}")
            info = probe_python(python)
            interpreter, llp, preload = info.executable, info.ld_library_path, info.ld_preload
            paths, skipped = sys_path_dirs(info)
            if not paths:
                raise UsageError(f"{python}: no installed distribution on its sys.path (only the standard library"
                                 f"{' and ' + ', '.join(skipped) if skipped else ''})")
            sites, named = list(info.site_dirs), []
        diag = diagnose(RealTree(), paths, python=info, interpreter=interpreter, ld_library_path=llp,
                        ld_preload=preload, site_dirs=sites, cache_root=args.cache_root, use_cache=not args.no_cache,
                        named=named, progress=progress)._replace(skipped=tuple(skipped))
    finally:
        progress.done()
    failed = any(f.severity == "error" for f in diag.findings)
    if args.json:
        json.dump(doctor_json(diag), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 1 if failed else 0
    env = diag.env
    scope = Scope(len(env.files), sum(1 for f in env.files if f.is_extension), len(env.site_dirs),
                  header=header_lines(diag))
    print(format_findings(diag.findings, scope, Display(env.site_dirs, diag.context.label),
                          explain=args.explain, color=use_color(sys.stdout)))
    return 1 if failed else 0
