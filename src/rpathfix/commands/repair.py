"""`rpathfix repair`: make a wheel's libraries find the sibling wheels installed beside it."""

from __future__ import annotations

import argparse
import os
import sys

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.repair import WheelOutcome

HELP = "patch wheels so their libraries find sibling wheels' libraries (new build tag)"
DESCRIPTION = """\
For every native file of each WHEEL, simulate the site-packages that WHEEL and the SIBLING
wheels (or distribution roots) make when installed together. A needed library that resolves
nowhere but that a sibling (or WHEEL itself) provides gets a search entry from where the file
lands to where the provider lands: ELF $ORIGIN/../../nvidia/cu13/lib appended to its RPATH or
RUNPATH (its own tag; a file with neither takes the tag of the wheel's other libraries, else
--rpath-tag-default), Mach-O an @loader_path LC_RPATH. Existing entries stay, in order. The GPU
driver's libraries and the manylinux policy's system libraries are never given paths.

The repaired layout is checked with the loader model before anything is written: an extension
module or a repaired library that would still not load is refused (exit 1, with the trace)
unless --allow-unresolved. The repaired wheel keeps name, version and tags and gets a build tag
(`-0rpathfix-`, or the original's build tag + `rpathfix`), which pip and uv prefer to the
original (see docs/repair.md). RECORD is rewritten; unchanged members are copied byte for byte.

METADATA: without --add-requires, the sibling requirements it lacks are printed; with it, each
is added as an unconditional Requires-Dist (compatible release of the sibling's version, such
as nvidia-cublas~=13.1), or, with --add-requires=EXTRA, under that extra.
Exit codes: 0 done, 1 refused or an edit that cannot be made, 2 bad input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("wheels", nargs="*", metavar="WHEEL", help="wheel to repair")
    p.add_argument("--with", dest="siblings", action="extend", nargs="+", default=[], metavar="SIBLING",
                   help="wheel or distribution root installed beside WHEEL (repeatable)")
    p.add_argument("--out", metavar="DIR", help="directory for the repaired wheels")
    p.add_argument("--add-requires", nargs="?", const="", default=None, metavar="EXTRA",
                   help="add the sibling requirements METADATA lacks (under extra EXTRA when given: "
                        "--add-requires=EXTRA)")
    p.add_argument("--allow-unresolved", action="store_true",
                   help="write even if an extension module or repaired library would still not load")
    p.add_argument("--rpath-tag-default", choices=("rpath", "runpath"), default="rpath",
                   help="tag for a file with neither RPATH nor RUNPATH when the wheel's other libraries "
                        "use none either (default: rpath, which LD_LIBRARY_PATH cannot override)")
    p.add_argument("--dry-run", action="store_true", help="print the planned edits; write nothing")
    p.add_argument("--json", action="store_true", help="print rpathfix.repair/1 JSON")
    p.add_argument("--explain", action="store_true", help="print traces and notes")


def _looks_like_input(value: str) -> bool:
    return value.endswith(".whl") or os.sep in value or os.path.exists(value)


def run(args: argparse.Namespace) -> int:
    from rpathfix.errors import UsageError
    from rpathfix.repair import format_plan, format_refusal, outcomes_to_json, repair_wheels

    wheels = list(args.wheels)
    extra = args.add_requires
    # `--add-requires WHEEL` takes the wheel as its optional value: give it back.
    if extra and _looks_like_input(extra):
        wheels.insert(0, extra)
        extra = ""
    if extra:
        from packaging.utils import canonicalize_name

        if canonicalize_name(extra) != extra.lower().replace("_", "-").replace(".", "-"):
            raise UsageError(f"--add-requires={extra}: not a valid extra name")
    outcomes = repair_wheels(wheels, args.siblings, args.out, add_requires=extra is not None,
                             extra=extra or None, allow_unresolved=args.allow_unresolved,
                             dry_run=args.dry_run, rpath_tag_default=args.rpath_tag_default)
    refused = [o for o in outcomes if o.status == "refused"]
    if args.json:
        import json

        json.dump(outcomes_to_json(outcomes), sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif args.dry_run:
        print("\n".join(format_plan(o, explain=args.explain) for o in outcomes))
    else:
        for o in refused:
            print(format_refusal(o), file=sys.stderr)
        if refused:
            print("rpathfix repair: nothing written (--allow-unresolved writes anyway)", file=sys.stderr)
        else:
            _report(outcomes, args.explain)
    return 1 if refused else 0


def _report(outcomes: list[WheelOutcome], explain: bool) -> None:
    for o in outcomes:
        p = o.plan
        if o.requires_missing and not o.requires_added:
            print(f"{os.path.basename(o.wheel)}: METADATA lacks {', '.join(o.requires_missing)} "
                  "(--add-requires adds them)", file=sys.stderr)
        if o.status == "unchanged":
            print(f"{os.path.basename(o.wheel)}: nothing to repair; not written")
            continue
        what = []
        if p.files:
            what.append(f"{len(p.files)} native file(s) patched")
        if o.requires_added:
            what.append(f"{len(o.requires_added)} requirement(s) added")
        state = "wrote" if o.status == "repaired" else "up to date:"
        print(f"{state} {o.output} ({', '.join(what)})")
        for x in p.warnings:
            print(f"  warning [{x.code}] {x.file}: {x.message}", file=sys.stderr)
        if explain:
            for n in p.notes:
                print(f"  note: {n}", file=sys.stderr)
