"""The `rpathfix` command line: one subcommand per module in rpathfix.commands.

Each command module defines HELP, register(parser) and run(args) -> exit code, and keeps
its top-level imports light so that `rpathfix scan` starts fast. Errors a user can
cause (RpathfixError) become one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

from rpathfix import __version__
from rpathfix.errors import RpathfixError

# In the order `--help` lists them.
COMMANDS = ("scan", "ldd", "why", "verify", "unpack", "plan", "venv")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpathfix",
        description="Find, explain and fix native libraries that will not load from Python wheels.",
    )
    parser.add_argument("--version", action="version", version=f"rpathfix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        modname = f"rpathfix.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.register(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
    except KeyboardInterrupt:
        print("rpathfix: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
