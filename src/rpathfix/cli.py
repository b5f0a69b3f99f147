"""The `rpathfix` command line: one subcommand per module in rpathfix.commands.

Each command module defines HELP, register(parser) and run(args) -> exit code, and keeps
its top-level imports light so that `rpathfix scan` starts fast. Errors a user can
cause (RpathfixError) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from rpathfix import __version__
from rpathfix.errors import RpathfixError

# In the order `--help` lists them.
COMMANDS = ("scan", "ldd", "why", "verify", "doctor", "unpack", "plan", "venv", "layout", "patch", "repair", "index")


def _command_module(name: str) -> ModuleType | None:
    """rpathfix.commands.<name>, or None when that command does not exist (yet)."""
    modname = f"rpathfix.commands.{name}"
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            return None
        raise


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter with the terminal width found as shutil finds it, without
    importing shutil (and bz2, lzma, zlib with it) at every start: argparse asks for the
    width each time it builds a parser, not only when it prints help."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _terminal_columns() - 2)


def _terminal_columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or with only= one subcommand (the others are not even imported)."""
    parser = argparse.ArgumentParser(
        prog="rpathfix",
        description="Find, explain and fix native libraries that will not load from Python wheels.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"rpathfix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        mod = _command_module(name)
        if mod is None:
            continue
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=_Formatter)
        mod.register(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    # `rpathfix scan ...` parses the same with a parser holding only `scan`, and start-up
    # skips importing every other command. Anything else (help, --version, a typo) gets
    # the full parser and its messages.
    only = args_list[0] if args_list and args_list[0] in COMMANDS else None
    if only is not None and _command_module(only) is None:
        only = None
    parser = build_parser(only)
    args = parser.parse_args(args_list)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        code: int = run(args)
        return code
    except RpathfixError as e:
        print(f"rpathfix {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        return 0
    except OSError as e:  # the environment refused (disk full, permission denied): one line, not a traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"rpathfix {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpathfix: interrupted", file=sys.stderr)
        return 130


def console() -> None:
    """The `rpathfix` command (console script and `python -m rpathfix`): main(), then a
    normal exit (atexit handlers run, every buffer is flushed).

    A run is short and its objects live until its end, so the cyclic garbage collector is
    told that the modules imported so far are permanent (gc.freeze: its passes no longer
    walk them), and it runs after 20,000 new objects instead of 700: a plan allocates tens
    of thousands of objects that all live until the end, and `rpathfix venv` of the torch
    stack spent 1-3 ms walking them over and over in 15 passes (now none; larger runs still
    collect). Both only change when collections happen, never what is freed.
    """
    import gc

    gc.freeze()
    gc.set_threshold(20_000)
    code = main()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`rpathfix scan ... | head`): what is left for it goes
        # nowhere, so that the interpreter's own flush at exit does not complain either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    sys.exit(code)
