"""Relocatable script launchers for a written venv.

A launcher is a /bin/sh + Python polyglot. /bin/sh runs line 2, which finds the
launcher's own file from $0, follows it while it is a symlink (`ln -s OUT/bin/tool
~/bin/tool` must still find OUT/bin/python), and execs the `python` beside the real
file (the venv's bin/python) on the launcher; Python sees lines 2-3 as a string
expression and runs the rest. No absolute path is baked in, so the venv still works
when it is moved or copied, and through a Bazel runfiles tree whose files are symlinks
into the venv (the python beside the real launcher is the venv's).

The sh line handles a $0 without a slash (`sh script` in the current directory, or a
shell that found the script on PATH and passed only its name). It uses shell builtins
only (PATH may hold nothing but the venv's bin/), except `readlink` (POSIX.1-2024, in
coreutils, busybox and macOS), which runs only when the launcher is reached through a
symlink; a chain of more than 40 links is not followed (the kernel's ELOOP bound).
Python is given the launcher's path as it was reached (its sys.argv[0] is what the user
typed). The line holds no three quotes in a row and no backslash, so it is a valid
Python string literal.
"""

from __future__ import annotations

_SH = (
    "'''true' && s=$0 && "
    'case $s in */*) ;; *) [ -f "$s" ] || s=$(command -v -- "$s") || exit 127;; esac && '
    "case $s in */*) ;; *) s=./$s;; esac && p=$s && n=0 && "
    'while [ -L "$s" ] && [ $n -lt 40 ]; do l=$(readlink -- "$s") || exit 127; '
    "case $l in /*) s=$l;; *) s=${s%/*}/$l;; esac; n=$((n+1)); done && "
    'exec "${s%/*}/python" "$p" "$@"'
)

HEADER = f"#!/bin/sh\n{_SH}\n' '''\n"


# The header of a Bazel runfiles venv's launchers (layout.py): there bin/tool is a link to
# a launcher in bazel-out, beside which no python lies, so following links (HEADER) would
# lose the venv; its bin/python is beside the link itself, the path the launcher was run by.
RUNFILES_HEADER = "#!/bin/sh\n'''exec' \"${0%/*}/python\" \"$0\" \"$@\"\n' '''\n"


def is_python_script(first_line: bytes) -> bool:
    """Whether a file with this first line (read from its first 512 bytes) is a Python
    script that gets a launcher: a `#!` naming python. (The Bazel rules' repository rule
    asks this function too.)"""
    return first_line.startswith(b"#!") and b"python" in first_line


def python_launcher(body: str, header: str = HEADER) -> str:
    """A launcher running `body`, a Python script; its own `#!` line, if any, is dropped.

    A coding cookie in the original first two lines no longer applies (the header takes
    those lines); Python then reads the body as UTF-8, its default.
    """
    if body.startswith("#!"):
        nl = body.find("\n")
        body = "" if nl < 0 else body[nl + 1:]
    if body and not body.endswith("\n"):
        body += "\n"
    return header + body


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
