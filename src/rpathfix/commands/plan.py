"""`rpathfix plan`: where every file of every distribution lands in one per-binary venv."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "compute the merged site-packages layout of distribution roots"
DESCRIPTION = """\
Compute where every file of each distribution root lands in one site-packages.

A ROOT is a directory with site-packages/ (and optional bin/, include/, data/), as
`rpathfix unpack` and rules_python's whl_library make, or a site-packages directory.
Directories are linked whole unless several distributions share them or a native
library's $ORIGIN/.. climbs through them to another distribution's files. Files whose
loader takes their origin from their resolved path are copied when it reaches another
distribution's files: Mach-O images (@loader_path) and ELF executables ($ORIGIN of a
program, also those of bin/ that climb out of it).

--json prints {"schema": "rpathfix.plan/1", "entries": [...]}: each entry maps onto
rules_python's PyInfo.venv_symlinks (kind, venv_path, link_to_path)."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("roots", nargs="+", metavar="ROOT", help="distribution root directory")
    p.add_argument("--json", action="store_true", help="print rpathfix.plan/1 JSON")
    p.add_argument("--prefer", action="append", default=[], metavar="DIST",
                   help="when two distributions ship different files at one path, DIST wins (repeatable, in order)")


def run(args: argparse.Namespace) -> int:
    from rpathfix.fstree import RealTree
    from rpathfix.names import canonicalize_name
    from rpathfix.plan import make_plan, plan_to_json
    from rpathfix.roots import load_root

    tree = RealTree()
    roots = [load_root(tree, r) for r in args.roots]
    plan = make_plan(tree, roots, precedence=[canonicalize_name(p) for p in args.prefer])
    if args.json:
        json.dump(plan_to_json(plan), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    for d in plan.real_dirs:
        print(f"real  {d.kind}/{d.venv_path}/  ({'; '.join(d.reasons)})")
    for e in plan.entries:
        arrow = "copy " if e.method == "copy" else "link "
        print(f"{arrow} {e.kind}/{e.venv_path} -> {e.target}  [{e.dist}]")
    for n in plan.notes:
        print(f"note: {n}", file=sys.stderr)
    return 0
