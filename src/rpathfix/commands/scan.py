"""`rpathfix scan`: list every native library with its names, dependencies and search paths."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

HELP = "inventory native libraries (ELF, Mach-O) in wheels, directories and files"
DESCRIPTION = """\
Inventory every native library in wheels (read in place), directories and files.

A file is a candidate when it is named like a library (.so, .so.N, .dylib, .bundle)
or has an exec bit, and is confirmed by its magic bytes; --all-files sniffs every
file. Links within a directory are listed as links, not scanned twice; links out of it
are followed (a venv written by `rpathfix venv` is scanned as what it holds).

JSON (--json): {"schema": "rpathfix.scan/1", "files": [...], "links": [...]};
see docs/schemas.md. Exit codes: 0 ok, 2 bad arguments or unreadable input."""


def register(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="wheel, directory or binary file")
    p.add_argument("--json", action="store_true", help="print rpathfix.scan/1 JSON")
    p.add_argument("--all-files", action="store_true", help="sniff every file, not only library-like names")


def _progress_printer() -> object:
    if not sys.stderr.isatty():
        return None

    def show(n: int, total: int) -> None:
        if total >= 200 and n % 50 == 0:
            print(f"\rscanning {n}/{total}", end="", file=sys.stderr, flush=True)

    return show


def run(args: argparse.Namespace) -> int:
    from rpathfix.scan import record_to_json, scan_paths

    progress = _progress_printer()
    result = scan_paths(args.paths, args.all_files, progress)  # type: ignore[arg-type]
    if progress:
        print("\r\033[K", end="", file=sys.stderr)
    for r in result.files:
        if r.error:
            where = f"{r.wheel}!{r.path}" if r.wheel else r.path
            print(f"rpathfix scan: warning: {where}: {r.error}", file=sys.stderr)
    if args.json:
        doc = {
            "schema": "rpathfix.scan/1",
            "files": [record_to_json(r) for r in result.files],
            "links": [{"path": lk.path, "target": lk.target, "dangling": lk.dangling} for lk in result.links],
        }
        sys.stdout.write(dumps_indent1(doc) + "\n")
        return 0
    _print_table(result.files)
    if result.links:
        print(f"\n{len(result.links)} symlinked file(s):")
        for lk in result.links:
            print(f"  {lk.path} -> {lk.target}{' (dangling)' if lk.dangling else ''}")
    return 0


def _print_table(files: list) -> None:  # type: ignore[type-arg]
    if not files:
        print("no native libraries found")
        return
    for r in files:
        where = f"{r.wheel}!{r.path}" if r.wheel else r.path
        if r.error:
            print(f"{where}\n    ERROR {r.error}")
            continue
        kind = " [extension]" if r.is_extension else ""
        name = r.soname or r.install_name or "-"
        dist = f"  ({r.dist} {r.version})" if r.dist else ""
        print(f"{where}{kind}{dist}")
        print(f"    {r.format}/{r.arch}  name: {name}")
        if r.rpath:
            print(f"    {'RPATH' if r.format == 'elf' else 'LC_RPATH'}: {':'.join(r.rpath) if r.format == 'elf' else ', '.join(r.rpath)}")
        if r.runpath:
            print(f"    RUNPATH: {':'.join(r.runpath)}")
        if r.needed:
            print(f"    needs: {', '.join(r.needed)}")


def dumps_indent1(doc: object) -> str:
    """Exactly json.dumps(doc, indent=1), without importing json.

    With indent set, json encodes in pure Python through generators; this does the same
    layout in one recursive pass, and escapes strings with the same C function json uses.
    Anything but dict/list/tuple/str/int/bool/None is left to json itself.
    """
    try:
        from _json import encode_basestring_ascii as esc
    except ImportError:  # pragma: no cover - CPython always has _json
        from json.encoder import encode_basestring_ascii as esc
    out: list[str] = []
    try:
        _encode(doc, "\n", out, esc)
    except TypeError:
        import json

        return json.dumps(doc, indent=1)
    return "".join(out)


def _encode(o: object, nl: str, out: list[str], esc: Callable[[str], str]) -> None:
    """Append o's JSON to out; nl is the newline plus indentation of o's own line."""
    if isinstance(o, str):
        out.append(esc(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif type(o) is int:
        out.append(int.__repr__(o))
    elif isinstance(o, (list, tuple)):
        if not o:
            out.append("[]")
            return
        inner = nl + " "
        sep = "[" + inner
        for v in o:
            out.append(sep)
            if isinstance(v, str):
                out.append(esc(v))
            else:
                _encode(v, inner, out, esc)
            sep = "," + inner
        out.append(nl + "]")
    elif isinstance(o, dict):
        if not o:
            out.append("{}")
            return
        inner = nl + " "
        sep = "{" + inner
        for k, v in o.items():
            if not isinstance(k, str):
                raise TypeError("non-string key")
            out.append(sep)
            out.append(esc(k))
            out.append(": ")
            if isinstance(v, str):
                out.append(esc(v))
            else:
                _encode(v, inner, out, esc)
            sep = "," + inner
        out.append(nl + "}")
    else:
        raise TypeError(type(o).__name__)
