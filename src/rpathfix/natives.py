"""A root's index of its native files, written once by `rpathfix unpack`.

Planning a venv needs every native file of every root and its headers. Without an
index that is a parse of each root's RECORD (torch's has 12,000 lines) and a header
read per library, on every build. `rpathfix unpack` already holds those answers when it
installs a wheel, so it writes them beside the root's marker, the way uv's cache keeps
what it learnt from each wheel: <root>/.rpathfix-natives.json.

An entry is trusted only while the file it describes is unchanged: same size and same
modification time, as a build tool's cache would check. A library patched in place
(patchelf, `rpathfix` rewriting an RPATH) is read again; an index that is unreadable,
from another rpathfix version or malformed is ignored as a whole. A file added to a root
after it was unpacked is not in its index, as it would not be in its RECORD: roots are
written once (atomically) and then only read.
"""

from __future__ import annotations

import json

from rpathfix import __version__
from rpathfix.fstree import read_small
from rpathfix.model import DylibRef, ElfInfo, MachoInfo, MachoSlice
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any

    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo

INDEX = ".rpathfix-natives.json"
SCHEMA = "rpathfix.natives/1"
MAX_INDEX_BYTES = 16 * 1024 * 1024
# The index stores records as field lists: another field list is another format.
_FORMAT = [SCHEMA, __version__, list(ElfInfo._fields), list(MachoSlice._fields)]

if TYPE_CHECKING:
    Entry = tuple[str, int, int, BinaryInfo]  # (path under site-packages, size, mtime_ns, headers)


def index_json(entries: list[Entry]) -> str:
    """The index text for `entries` (sorted by path: the same root gives the same bytes)."""
    files = [[rel, size, mtime_ns, _encode(info)] for rel, size, mtime_ns, info in sorted(entries, key=lambda e: e[0])]
    return json.dumps({"format": _FORMAT, "files": files}, separators=(",", ":")) + "\n"


def read_index(tree: FileTree, root: str) -> list[Entry] | None:
    """The entries of <root>/.rpathfix-natives.json; None when it is absent or not usable."""
    data = read_small(tree, f"{root}/{INDEX}", MAX_INDEX_BYTES)
    if data is None:
        return None
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != _FORMAT or not isinstance(raw.get("files"), list):
            return None
        out: list[Entry] = []
        for rel, size, mtime_ns, info in raw["files"]:
            if not (isinstance(rel, str) and type(size) is int and type(mtime_ns) is int):
                return None
            out.append((rel, size, mtime_ns, _decode(info)))
        return out
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _encode(info: BinaryInfo) -> list[Any]:
    if isinstance(info, ElfInfo):
        return ["elf", list(info)]
    return ["macho", info.fat, [list(s) for s in info.slices]]  # json writes the nested tuples as lists


_ELF_TYPES = (int, bool, int, str, str, (str, None), (str, None), list, (str, None), (str, None), int, bool)
_SLICE_TYPES = (str, int, int, bool, str, int, int, (str, None), list, list, bool, int, bool)


def _check(values: list[Any], types: tuple[Any, ...]) -> None:
    """TypeError unless each value has the type its field needs (bool is not an int here)."""
    if not isinstance(values, list) or len(values) != len(types):
        raise TypeError("wrong field count")
    for v, t in zip(values, types):
        allowed = t if isinstance(t, tuple) else (t,)
        if not any((v is None) if a is None else (type(v) is a) for a in allowed):
            raise TypeError(f"bad field {v!r}")


def _strings(values: list[Any]) -> tuple[str, ...]:
    if not all(type(v) is str for v in values):
        raise TypeError("not a list of strings")
    return tuple(values)


def _decode(raw: list[Any]) -> BinaryInfo:
    if raw[0] == "elf":
        f = raw[1]
        _check(f, _ELF_TYPES)
        return ElfInfo(f[0], f[1], f[2], f[3], f[4], f[5], f[6], _strings(f[7]), f[8], f[9], f[10], f[11])
    if raw[0] == "macho" and type(raw[1]) is bool and isinstance(raw[2], list):
        slices = []
        for s in raw[2]:
            _check(s, _SLICE_TYPES)
            dylibs = []
            for d in s[8]:
                if not (isinstance(d, list) and len(d) == 2 and type(d[0]) is str
                        and d[1] in ("load", "weak", "reexport", "lazy", "upward")):
                    raise TypeError("bad dylib")
                dylibs.append(DylibRef(d[0], d[1]))
            slices.append(MachoSlice(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], tuple(dylibs), _strings(s[9]),
                                     s[10], s[11], s[12]))
        return MachoInfo(raw[1], tuple(slices))
    raise TypeError("unknown format")
