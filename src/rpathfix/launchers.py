"""Relocatable script launchers for a written venv.

A launcher is a /bin/sh + Python polyglot. /bin/sh runs line 2, which finds the
launcher's own directory from $0 and execs the `python` beside it (the venv's
bin/python) on the launcher itself; Python sees line 2-3 as a string expression and
runs the rest. No absolute path is baked in, so the venv still works when it is moved,
copied, or reached through a Bazel runfiles tree of symlinks (bin/python and
pyvenv.cfg are found next to the path the launcher was reached by).

The sh line uses only shell builtins (PATH may hold nothing but the venv's bin/), and
handles a $0 without a slash: `sh script` in the current directory, or a shell that
found the script on PATH and passed only its name. It holds no `'''` and no backslash,
so it is a valid Python string literal.
"""

from __future__ import annotations

_SH = (
    "'''true' && s=$0 && "
    'case $s in */*) ;; *) [ -f "$s" ] || s=$(command -v -- "$s") || exit 127;; esac && '
    "case $s in */*) d=${s%/*};; *) d=.;; esac && "
    'exec "$d/python" "$s" "$@"'
)

HEADER = f"#!/bin/sh\n{_SH}\n' '''\n"


def python_launcher(body: str) -> str:
    """A launcher running `body`, a Python script; its own `#!` line, if any, is dropped.

    A coding cookie in the original first two lines no longer applies (the header takes
    those lines); Python then reads the body as UTF-8, its default.
    """
    if body.startswith("#!"):
        nl = body.find("\n")
        body = "" if nl < 0 else body[nl + 1:]
    if body and not body.endswith("\n"):
        body += "\n"
    return HEADER + body


def entry_point_launcher(module: str, attr: str) -> str:
    """A launcher calling `module:attr` (attr may be dotted: func.attr) like pip's."""
    head = attr.split(".")[0]
    return HEADER + (
        "import sys\n"
        f"from {module} import {head}\n"
        'if __name__ == "__main__":\n'
        '    if sys.argv[0].endswith(".exe"):\n'
        "        sys.argv[0] = sys.argv[0][:-4]\n"
        f"    sys.exit({attr}())\n"
    )
