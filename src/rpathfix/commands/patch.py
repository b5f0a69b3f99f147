"""`rpathfix patch`: edit RPATH/RUNPATH, SONAME and NEEDED of ELF files (LC_RPATH, install
names of Mach-O files) in place, keeping the tag, the mode and other hard links' bytes."""

from __future__ import annotations

import argparse
import os
import sys

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.model import BytePatch, Change, Edit

HELP = "edit a binary's library search paths and names (RPATH/RUNPATH, SONAME, NEEDED; LC_RPATH, install names)"
DESCRIPTION = """\
Edit FILE... as the options say, in the order given (every slice of a fat Mach-O file).
A new string that fits in the bytes of the one it replaces is written over it: only those
bytes change. One that does not goes, with the tables that must move with it, into new
space at the end of the file, mapped by the loader; the rest of the file is not rewritten.
The tag stays DT_RPATH or DT_RUNPATH unless --rpath-tag says otherwise. Mode, owner and
exec bit are kept; a kill at any moment leaves the old file or the new one; a file with
other hard links is replaced by a patched copy (the other links keep the old bytes); a
read-only file is refused unless --force. A run that changes nothing writes nothing.

JSON (--json): rpathfix.patch/1, see docs/schemas.md.
Exit codes: 0 done or nothing to do, 1 an edit cannot be made, 2 bad input."""


class _EditAction(argparse.Action):
    """Collects every edit option into one list, in command-line order."""

    def __init__(self, option_strings: Sequence[str], dest: str, op: str, pair: bool = False, **kw: object) -> None:
        self.op = op
        self.pair = pair
        super().__init__(option_strings, dest, **kw)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from rpathfix.model import Edit

        value = "" if values is None else str(values)
        if "\0" in value:
            parser.error(f"{option_string}: a NUL byte cannot be stored")
        if self.pair:
            old, sep, new = value.partition("=")
            if not sep or not old:
                parser.error(f"{option_string} takes OLD=NEW, not {value!r}")
            edit = Edit(self.op, old, new)  # type: ignore[arg-type]
        else:
            edit = Edit(self.op, value)  # type: ignore[arg-type]
        if self.op in ("add-rpath", "remove-rpath") and (not value or ":" in value):
            parser.error(f"{option_string} takes one non-empty entry (no ':'), not {value!r}")
        edits = list(getattr(namespace, self.dest, None) or [])
        edits.append(edit)
        setattr(namespace, self.dest, edits)


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="ELF or Mach-O files to edit")
    e = p.add_argument_group("edits (applied in the order given)")
    for flag, op, meta, pair, text in (
        ("--set-rpath", "set-rpath", "LIST", False, "the path list becomes LIST (':'-separated; '' removes it)"),
        ("--add-rpath", "add-rpath", "ENTRY", False, "append ENTRY unless it is there already"),
        ("--remove-rpath", "remove-rpath", "ENTRY", False, "remove ENTRY from the path list"),
        ("--replace-rpath", "replace-rpath", "OLD=NEW", True, "replace the entry OLD by NEW where it stands"),
        ("--set-soname", "set-soname", "NAME", False, "ELF: DT_SONAME becomes NAME"),
        ("--replace-needed", "replace-needed", "OLD=NEW", True,
         "ELF: the DT_NEEDED entry OLD (and its version needs) becomes NEW"),
        ("--set-id", "set-id", "NAME", False, "Mach-O: LC_ID_DYLIB becomes NAME"),
        ("--change", "change", "OLD=NEW", True, "Mach-O: the dependency with install name OLD becomes NEW"),
    ):
        e.add_argument(flag, dest="edits", action=_EditAction, op=op, pair=pair, metavar=meta, help=text)
    e.add_argument("--remove-all-rpaths", dest="edits", action=_EditAction, op="remove-all-rpaths", nargs=0,
                   help="remove every path-list entry (ELF: DT_RPATH and DT_RUNPATH; Mach-O: every LC_RPATH)")
    e.add_argument("--rpath-tag", dest="edits", action=_EditAction, op="rpath-tag", metavar="TAG",
                   choices=("keep", "rpath", "runpath"),
                   help="ELF: the tag of the path list: keep (default; a file with neither tag gets "
                        "DT_RUNPATH, as patchelf gives it), rpath (DT_RPATH: searched before "
                        "LD_LIBRARY_PATH, also for the libraries it loads) or runpath (DT_RUNPATH)")
    p.add_argument("--dry-run", action="store_true", help="print what would change (before -> after); write nothing")
    p.add_argument("--json", action="store_true", help="print rpathfix.patch/1 JSON")
    p.add_argument("--force", action="store_true", help="edit read-only files too (they stay read-only)")


class _Planned:
    """One file's plan: the patch, or why there is none."""

    __slots__ = ("error", "exit_code", "fmt", "patch", "path", "size", "stat", "written")

    def __init__(self, path: str) -> None:
        self.path = path
        self.fmt: str | None = None
        self.patch: BytePatch | None = None
        self.stat: os.stat_result | None = None
        self.size = 0
        self.error: str | None = None
        self.exit_code = 0
        self.written: str | None = None


def plan_file(path: str, edits: Sequence[Edit]) -> tuple[str, BytePatch, os.stat_result]:
    """(format, patch, stat when planned) for one file; FormatError / EditError otherwise."""
    from rpathfix.errors import FormatError
    from rpathfix.sniff import binary_format
    from rpathfix.source import FileSource

    if os.path.isdir(path):
        raise FormatError(path, "a directory, not a binary")
    with FileSource(path) as src:
        st = os.stat(path)
        fmt = binary_format(src.read_at(0, min(8, src.size))) if src.size >= 4 else None
        if fmt == "elf":
            from rpathfix import elf_write

            return fmt, elf_write.plan_patch(src, edits), st
        if fmt == "macho":
            from rpathfix import macho_write

            return fmt, macho_write.plan_patch(src, edits), st
        raise FormatError(path, "not an ELF or Mach-O file")


def run(args: argparse.Namespace) -> int:
    from rpathfix.errors import EditError, FormatError, UsageError
    from rpathfix.patch import apply, is_read_only

    edits: list[Edit] = args.edits or []
    if not edits:
        raise UsageError("no edit given (see rpathfix patch --help)")
    plans = []
    for path in args.files:
        pl = _Planned(path)
        try:
            pl.fmt, pl.patch, pl.stat = plan_file(path, edits)
            pl.size = pl.stat.st_size
            if (not args.dry_run and not args.force and pl.patch.method != "unchanged"
                    and is_read_only(path)):
                raise EditError(f"{path}: read-only; --force edits it anyway (it stays read-only)")
        except (FormatError, EditError) as e:
            pl.error, pl.exit_code = str(e), e.exit_code
        plans.append(pl)
    failed = [pl for pl in plans if pl.error]
    if not failed and not args.dry_run:
        for pl in plans:
            assert pl.patch is not None
            pl.written = apply(pl.path, pl.patch, expect=pl.stat, force=args.force)
    if args.json:
        _print_json(plans, args.dry_run)
    else:
        for pl in failed:
            print(f"rpathfix patch: error: {pl.error}", file=sys.stderr)
        if not failed:
            for pl in plans:
                print(_line(pl, args.dry_run))
    return max((pl.exit_code for pl in plans), default=0)


def _show(value: str | None) -> str:
    return "(none)" if value is None else repr(value) if not value or value != value.strip() else value


def _changes(changes: Sequence[Change]) -> str:
    return "; ".join(f"{'[' + c.slice + '] ' if c.slice else ''}{c.what} {_show(c.before)} -> {_show(c.after)}"
                     for c in changes)


def _line(pl: _Planned, dry_run: bool) -> str:
    """One line per file: what happened (or would), then each change before -> after."""
    patch = pl.patch
    assert patch is not None
    if patch.method == "unchanged":
        return f"{pl.path}: unchanged"
    grown = patch.size - pl.size
    if patch.method == "in-place":
        how = "would patch in place" if dry_run else "patched in place"
    else:
        how = f"would grow by {grown:,} bytes" if dry_run else f"patched, grown by {grown:,} bytes"
    if pl.written == "replaced":
        how += " (as a new file: other hard links keep the old one)"
    return f"{pl.path}: {how}: {_changes(patch.changes)}"


def _print_json(plans: list[_Planned], dry_run: bool) -> None:
    import json

    files = []
    for pl in plans:
        patch = pl.patch
        files.append({
            "path": pl.path,
            "format": pl.fmt,
            "method": None if pl.error or patch is None else patch.method,
            "written": None if dry_run or pl.written == "unchanged" else pl.written,
            "size_before": pl.size if patch is not None else None,
            "size_after": patch.size if patch is not None and not pl.error else None,
            "changes": [] if patch is None or pl.error else [
                {"slice": c.slice, "what": c.what, "before": c.before, "after": c.after} for c in patch.changes],
            "error": pl.error,
        })
    json.dump({"schema": "rpathfix.patch/1", "dry_run": dry_run, "files": files}, sys.stdout, indent=1)
    sys.stdout.write("\n")
