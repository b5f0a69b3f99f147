"""`rpathfix unpack`: install wheels into one distribution root each."""

from __future__ import annotations

import argparse

HELP = "install wheels into distribution roots (DIR/<name>/site-packages, bin, include, data)"
DESCRIPTION = """\
Install each wheel into its own distribution root DIR/<normalized name>/ with
site-packages/ (purelib and platlib), bin/ (console and gui script launchers and
.data/scripts), include/ (.data/headers) and data/ (.data/data), as pypa's installer does.

Wheels are checked (member paths, file types, RECORD hashes and sizes; hashes as the
members are written) and each root is built beside its destination and renamed into
place, so a failed or interrupted run leaves nothing behind. Launchers and "#!python" scripts name --python (default: this
interpreter). Bytecode is hash-based (checked-hash) and compiled for --python;
--no-compile skips it. A root already made from the same wheel with the same options
is left alone ("up to date"); one made from another wheel is replaced.

The RECORD check is stricter than pip: a member that RECORD does not list, or whose hash
or size differs, makes rpathfix refuse the wheel (naming the wheel and the member), where
pip installs it. --no-verify-record installs such a wheel (the other checks still apply).

Several wheels are unpacked at once (--jobs, default: one per core), largest first;
bytecode is compiled by worker processes of --python. With python-isal installed
(pip install 'rpathfix[fast]') members inflate faster; RPATHFIX_INFLATE=zlib turns it off.

Quiet on success (-v names each root); on a terminal, progress goes to stderr.
Exit codes: 0 ok, 2 bad arguments or a bad wheel."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("wheels", nargs="+", metavar="WHEEL", help="wheel file to install")
    p.add_argument("--into", required=True, metavar="DIR", help="directory to create the roots in")
    p.add_argument("--python", metavar="PY", default=None,
                   help="interpreter for launchers and bytecode (default: the one running rpathfix)")
    p.add_argument("--no-compile", action="store_true", help="do not write .pyc files")
    p.add_argument("--no-verify-record", action="store_true",
                   help="install a wheel whose RECORD misses a member or has a wrong hash (as pip does)")
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                   help="unpack up to N wheels at once (default: the number of cores)")
    p.add_argument("-v", "--verbose", action="store_true", help="say which root each wheel went to")


def run(args: argparse.Namespace) -> int:
    import os

    from rpathfix.errors import UsageError
    from rpathfix.progress import Progress
    from rpathfix.unpack import iter_unpack

    if args.jobs is not None and args.jobs < 1:
        raise UsageError(f"--jobs {args.jobs}: must be 1 or more")
    progress = Progress()
    total = len(args.wheels)
    try:
        # Wheels run several at once; the line names the one whose result comes next.
        progress.show(f"unpacking 1/{total}: {os.path.basename(args.wheels[0])}")
        for i, (wheel, root, changed) in enumerate(
                iter_unpack(args.wheels, args.into, python=args.python, compile_bytecode=not args.no_compile,
                            verify_record=not args.no_verify_record, jobs=args.jobs), 1):
            if i < total:
                progress.show(f"unpacking {i + 1}/{total}: {os.path.basename(args.wheels[i])}")
            if args.verbose:
                progress.done()
                print(f"unpacked {wheel} -> {root}" if changed else f"up to date: {root}", flush=True)
    finally:
        progress.done()
    return 0
