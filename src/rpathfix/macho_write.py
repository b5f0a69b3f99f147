"""Plan edits of Mach-O load commands (LC_RPATH, LC_ID_DYLIB, dylib install names) as bytes.

What install_name_tool does, as a pure plan: every slice's load commands are rebuilt in
order with the edits applied, and written back over the header and the free space after
it (the header padding, which linkers reserve for exactly this; -headerpad_max_install_names
reserves the most). Nothing else in the file moves, so the file keeps its size, and the
plan is "in-place" or "unchanged". A slice that carried a code signature gets the hashes of
the pages the edit changed recomputed (codesign.plan_resign); one without gets none.

The planner reads through a ByteSource: the fat header, each slice's header and load
commands, the bytes up to the first section (to diff against) and the signature; never the
rest of the file.

Edit semantics, applied in order to every slice (`plan_patch`):
  set-rpath LIST    the LC_RPATHs become exactly LIST (':'-separated, "" for none): the
                    existing commands are rewritten in place in order, extra ones removed,
                    missing ones appended at the end of the load commands;
  add-rpath E       appends an LC_RPATH (as ld64 and install_name_tool -add_rpath place it);
                    nothing when E is already there;
  remove-rpath E    removes every LC_RPATH equal to E; nothing when there is none;
  replace-rpath O=N each LC_RPATH equal to O becomes N, in place;
  remove-all-rpaths removes every LC_RPATH;
  set-id NAME       rewrites LC_ID_DYLIB (an EditError when the slice is not a dylib);
  change O=N        rewrites each LC_LOAD/WEAK/REEXPORT/LAZY/UPWARD_DYLIB naming O.
No edit leaves two equal LC_RPATHs (set-rpath keeps the first of repeated entries,
replace-rpath onto an existing entry drops the old one): dyld in macOS 15.4 and later
refuses to load a file that has them ("duplicate LC_RPATH", facebook/zstd#4369,
tpoechtrager/cctools-port#166).

A changed command gets the size ld64 gives it: the fixed part, the string and its NUL,
rounded up to 8 bytes in a 64-bit slice and 4 in a 32-bit one; a dylib command keeps its
timestamp and versions. The header's ncmds and sizeofcmds follow, and bytes that the old
commands used beyond the new end become zeros again.
"""

from __future__ import annotations

import struct

from rpathfix import codesign
from rpathfix.errors import EditError, FormatError, UsageError
from rpathfix.macho import (
    DYLIB_KINDS,
    LC_CODE_SIGNATURE,
    LC_DYLD_INFO,
    LC_DYLD_INFO_ONLY,
    LC_ID_DYLIB,
    LC_RPATH,
    LC_SEGMENT,
    LC_SEGMENT_64,
    LC_SYMTAB,
    ZEROFILL_TYPES,
    read_load_commands,
    slice_ranges,
)
from rpathfix.model import BytePatch, Change
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.macho import LoadCommands
    from rpathfix.model import Edit
    from rpathfix.source import ByteSource

# Edits that exist only for ELF, and what to use on a Mach-O file instead.
ELF_ONLY = {
    "set-soname": "--set-id sets a dylib's install name",
    "replace-needed": "--change OLD=NEW changes a dependency's install name",
    "rpath-tag": "Mach-O has one kind of run path, LC_RPATH",
}
MACHO_OPS = frozenset({"set-rpath", "add-rpath", "remove-rpath", "replace-rpath", "remove-all-rpaths", "set-id",
                       "change"})

RPATH_FIXED = 12  # struct rpath_command: cmd, cmdsize, path.offset
DYLIB_FIXED = 24  # struct dylib_command: cmd, cmdsize, name.offset, timestamp, current, compatibility

# linkedit_data_command kinds: each points at file bytes the new commands must not reach.
LINKEDIT_DATA = frozenset({LC_CODE_SIGNATURE, 0x1E, 0x26, 0x29, 0x2B, 0x2E, 0x80000033, 0x80000034, 0x36})
LC_DYSYMTAB = 0xB


def plan_patch(src: ByteSource, edits: Sequence[Edit]) -> BytePatch:
    """The bytes that apply `edits` to every slice of the Mach-O file `src`, and what changes.

    UsageError for an edit that does not apply to Mach-O (naming its option) or an unusable
    value; FormatError for a file that is not a well-formed Mach-O; EditError when the new
    load commands do not fit a slice's header padding (how many bytes are missing).
    """
    _check_edits(src.name, edits)
    _fat, ranges = slice_ranges(src)
    writes: list[tuple[int, bytes]] = []
    changes: list[Change] = []
    for off, size in ranges:
        lcs = read_load_commands(src, off, size)
        slice_writes, slice_changes = _plan_slice(src, lcs, edits)
        writes += slice_writes
        changes += slice_changes
    return BytePatch(writes=tuple(writes), size=src.size, method="in-place" if writes else "unchanged",
                     changes=tuple(changes))


def _check_edits(name: str, edits: Sequence[Edit]) -> None:
    for e in edits:
        if e.op in ELF_ONLY:
            raise UsageError(f"{name}: --{e.op} applies to ELF files only and this is a Mach-O file "
                             f"({ELF_ONLY[e.op]})")
        if e.op not in MACHO_OPS:
            raise UsageError(f"{name}: unknown edit {e.op!r}")
        for v in (e.arg, e.new):
            if "\0" in v:
                raise UsageError(f"{name}: --{e.op}: a name cannot contain a NUL byte")
            try:
                _enc(v)
            except UnicodeEncodeError:
                raise UsageError(f"{name}: --{e.op}: {v!r} cannot be written as bytes") from None
        if e.op == "set-rpath" and e.arg and "" in e.arg.split(":"):
            raise UsageError(f"{name}: --set-rpath {e.arg!r} has an empty entry (an LC_RPATH of nothing)")
        if (e.op in ("add-rpath", "set-id") and not e.arg) or \
                (e.op in ("replace-rpath", "change") and not (e.arg and e.new)):
            raise UsageError(f"{name}: --{e.op} needs a non-empty name")


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


class _Commands:
    """One slice's load commands while edits are applied: a list of whole commands."""

    def __init__(self, name: str, lcs: LoadCommands) -> None:
        self.name = name
        self.lcs = lcs
        self.e = lcs.endian
        self.align = 8 if lcs.is_64 else 4
        self.cmds: list[bytes] = list(lcs.commands)
        self.changes: list[Change] = []

    def kind(self, raw: bytes) -> int:
        cmd: int = struct.unpack_from(self.e + "I", raw, 0)[0]
        return cmd

    def string(self, raw: bytes) -> bytes:
        """The lc_str of an LC_RPATH or dylib command (FormatError when it points outside)."""
        if len(raw) < RPATH_FIXED:
            raise FormatError(self.name, f"{self.lcs.arch}: load command {self.kind(raw):#x} of {len(raw)} bytes")
        (off,) = struct.unpack_from(self.e + "I", raw, 8)
        if not RPATH_FIXED <= off < len(raw):
            raise FormatError(self.name, f"{self.lcs.arch}: load command {self.kind(raw):#x} has its string at "
                                         f"{off}, outside its {len(raw)} bytes")
        return raw[off:].split(b"\0", 1)[0]

    def _size(self, fixed: int, s: bytes) -> int:
        return -(-(fixed + len(s) + 1) // self.align) * self.align

    def rpath_cmd(self, path: bytes) -> bytes:
        size = self._size(RPATH_FIXED, path)
        return struct.pack(self.e + "III", LC_RPATH, size, RPATH_FIXED) + path.ljust(size - RPATH_FIXED, b"\0")

    def dylib_cmd(self, old: bytes, name: bytes) -> bytes:
        if len(old) < DYLIB_FIXED:
            raise FormatError(self.name, f"{self.lcs.arch}: dylib load command of {len(old)} bytes")
        cmd, _size, _off, stamp, current, compat = struct.unpack_from(self.e + "IIIIII", old, 0)
        size = self._size(DYLIB_FIXED, name)
        return struct.pack(self.e + "IIIIII", cmd, size, DYLIB_FIXED, stamp, current, compat) + \
            name.ljust(size - DYLIB_FIXED, b"\0")

    def note(self, what: str, before: bytes | None, after: bytes | None) -> None:
        self.changes.append(Change(what, None if before is None else _dec(before),
                                   None if after is None else _dec(after), self.lcs.arch))

    def rpath_positions(self) -> list[int]:
        return [i for i, raw in enumerate(self.cmds) if self.kind(raw) == LC_RPATH]

    def rpaths(self) -> list[bytes]:
        return [self.string(self.cmds[i]) for i in self.rpath_positions()]

    # ----------------------------------------------------------------- the edits

    def set_rpath(self, entries: list[bytes]) -> None:
        wanted = list(dict.fromkeys(entries))  # first of repeated entries (no duplicate LC_RPATH)
        positions = self.rpath_positions()
        for i, pos in enumerate(positions[: len(wanted)]):
            old = self.string(self.cmds[pos])
            if old != wanted[i]:
                self.cmds[pos] = self.rpath_cmd(wanted[i])
                self.note("lc_rpath", old, wanted[i])
        extra = positions[len(wanted) :]
        for pos in extra:
            self.note("lc_rpath", self.string(self.cmds[pos]), None)
        for pos in reversed(extra):
            del self.cmds[pos]
        for entry in wanted[len(positions) :]:
            self.cmds.append(self.rpath_cmd(entry))
            self.note("lc_rpath", None, entry)

    def add_rpath(self, entry: bytes) -> None:
        if entry not in self.rpaths():
            self.cmds.append(self.rpath_cmd(entry))
            self.note("lc_rpath", None, entry)

    def remove_rpath(self, entry: bytes | None) -> None:
        """Remove every LC_RPATH equal to entry (every one when entry is None)."""
        kept: list[bytes] = []
        for raw in self.cmds:
            if self.kind(raw) == LC_RPATH:
                old = self.string(raw)
                if entry is None or old == entry:
                    self.note("lc_rpath", old, None)
                    continue
            kept.append(raw)
        self.cmds = kept

    def replace_rpath(self, old: bytes, new: bytes) -> None:
        if old == new:
            return
        present = new in self.rpaths()
        kept: list[bytes] = []
        for raw in self.cmds:
            if self.kind(raw) == LC_RPATH and self.string(raw) == old:
                if present:  # NEW is there already: a second one would be a duplicate LC_RPATH
                    self.note("lc_rpath", old, None)
                    continue
                raw = self.rpath_cmd(new)
                present = True
                self.note("lc_rpath", old, new)
            kept.append(raw)
        self.cmds = kept

    def set_id(self, name: bytes) -> None:
        for i, raw in enumerate(self.cmds):
            if self.kind(raw) == LC_ID_DYLIB:
                old = self.string(raw)
                if old != name:
                    self.cmds[i] = self.dylib_cmd(raw, name)
                    self.note("id", old, name)
                return
        raise EditError(f"{self.name}: {self.lcs.arch}: not a dylib (no LC_ID_DYLIB), so --set-id does not apply")

    def change(self, old: bytes, new: bytes) -> None:
        if old == new:
            return
        for i, raw in enumerate(self.cmds):
            if self.kind(raw) in DYLIB_KINDS and self.string(raw) == old:
                self.cmds[i] = self.dylib_cmd(raw, new)
                self.note("dylib", old, new)


def _apply(c: _Commands, edit: Edit) -> None:
    if edit.op == "set-rpath":
        c.set_rpath([_enc(p) for p in edit.arg.split(":")] if edit.arg else [])
    elif edit.op == "add-rpath":
        c.add_rpath(_enc(edit.arg))
    elif edit.op == "remove-rpath":
        c.remove_rpath(_enc(edit.arg))
    elif edit.op == "remove-all-rpaths":
        c.remove_rpath(None)
    elif edit.op == "replace-rpath":
        c.replace_rpath(_enc(edit.arg), _enc(edit.new))
    elif edit.op == "set-id":
        c.set_id(_enc(edit.arg))
    elif edit.op == "change":
        c.change(_enc(edit.arg), _enc(edit.new))


def _plan_slice(src: ByteSource, lcs: LoadCommands, edits: Sequence[Edit]) -> tuple[list[tuple[int, bytes]], list[Change]]:
    name = src.name
    if sum(len(c) for c in lcs.commands) != lcs.sizeofcmds:
        raise FormatError(name, f"{lcs.arch}: the load commands fill {sum(len(c) for c in lcs.commands)} of the "
                                f"{lcs.sizeofcmds} bytes sizeofcmds says")
    c = _Commands(name, lcs)
    for edit in edits:
        _apply(c, edit)
    if c.cmds == list(lcs.commands):  # nothing changed, or edits that undid each other
        return [], []
    new_cmds = b"".join(c.cmds)
    hs = lcs.header_size
    room = _content_start(name, lcs) - hs
    if len(new_cmds) > room:
        missing = len(new_cmds) - room
        raise EditError(f"{name}: {lcs.arch}: the edited load commands need {len(new_cmds)} bytes but the header "
                        f"has room for {room}: {missing} bytes missing (relink with -headerpad_max_install_names, "
                        f"which reserves room for the longest install names)")
    end = hs + max(lcs.sizeofcmds, len(new_cmds))
    old_region = src.read_at(lcs.offset, end)
    header = bytearray(old_region[:hs])
    struct.pack_into(lcs.endian + "II", header, 16, len(c.cmds), len(new_cmds))
    new_region = (bytes(header) + new_cmds).ljust(end, b"\0")
    if new_region == old_region:
        return [], []
    first = next(i for i in range(end) if old_region[i] != new_region[i])
    last = next(i for i in range(end - 1, -1, -1) if old_region[i] != new_region[i])
    header_write = (first, new_region[first : last + 1])
    writes = [(lcs.offset + first, header_write[1])]
    sig = codesign.read_signature(src, lcs)
    if sig is not None:
        writes += codesign.plan_resign(src, lcs, [header_write], sig)
        if not sig.adhoc:  # a Developer ID (CMS) signature cannot survive an edit: say it is now ad hoc
            c.changes.append(Change("signature", "signed", "ad-hoc", lcs.arch))
    return writes, c.changes


def _content_start(name: str, lcs: LoadCommands) -> int:
    """The first file byte (in the slice) that something other than the header uses: section
    contents, a segment's file range, the link-edit tables. New load commands must end
    before it. A slice whose commands point at nothing leaves no room to grow."""
    e = lcs.endian
    starts: list[int] = []

    def add(offset: int, size: int) -> None:
        if offset and size:
            starts.append(offset)

    try:
        for raw in lcs.commands:
            cmd = struct.unpack_from(e + "I", raw, 0)[0]
            if cmd in (LC_SEGMENT, LC_SEGMENT_64):
                is64 = cmd == LC_SEGMENT_64
                seg_fmt, seg_hdr, sect_size = ("QQQQiiII", 72, 80) if is64 else ("IIIIiiII", 56, 68)
                _vmaddr, _vmsize, fileoff, filesize, _mp, _ip, nsects, _fl = struct.unpack_from(e + seg_fmt, raw, 24)
                add(fileoff, filesize)
                if seg_hdr + nsects * sect_size > len(raw):
                    raise FormatError(name, f"{lcs.arch}: segment with {nsects} sections in a {len(raw)}-byte command")
                for j in range(nsects):
                    at = seg_hdr + j * sect_size + 32
                    if is64:
                        _addr, size, offset, _al, _ro, _nr, flags = struct.unpack_from(e + "QQIIIII", raw, at)
                    else:
                        _addr, size, offset, _al, _ro, _nr, flags = struct.unpack_from(e + "IIIIIII", raw, at)
                    if flags & 0xFF not in ZEROFILL_TYPES:
                        add(offset, max(size, 1))
            elif cmd == LC_SYMTAB:
                symoff, nsyms, stroff, strsize = struct.unpack_from(e + "IIII", raw, 8)
                add(symoff, nsyms)
                add(stroff, strsize)
            elif cmd == LC_DYSYMTAB:
                f = struct.unpack_from(e + "18I", raw, 8)
                for off, count in ((f[6], f[7]), (f[8], f[9]), (f[10], f[11]), (f[12], f[13]), (f[14], f[15]),
                                   (f[16], f[17])):
                    add(off, count)
            elif cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
                f = struct.unpack_from(e + "10I", raw, 8)
                for k in range(0, 10, 2):
                    add(f[k], f[k + 1])
            elif cmd in LINKEDIT_DATA:
                dataoff, datasize = struct.unpack_from(e + "II", raw, 8)
                add(dataoff, datasize)
    except struct.error:
        raise FormatError(name, f"{lcs.arch}: a load command is too short for its kind") from None
    return min(starts) if starts else lcs.header_size + lcs.sizeofcmds
