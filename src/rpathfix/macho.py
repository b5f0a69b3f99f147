"""Mach-O reader: only what dyld (and install_name_tool) read.

The fat header and its arch table, then per slice the mach_header and the load commands,
read in one bounded read of sizeofcmds bytes. From the load commands come the install
name, the dylib references with their kinds, the LC_RPATHs, whether a code signature is
present, and the free space between the load commands and the first section (what
install_name_tool needs when a longer name must fit). Whether a file is a CPython
extension module is answered by looking up the one name _PyInit_<module> in the export
trie (falling back to the symbol table only for old files without one). So a large
library costs a few kilobytes of reads, and memory never grows with file size.

Every offset and count is checked before it is used: a corrupt file raises FormatError,
never IndexError or struct.error, and no walk can loop.
"""

from __future__ import annotations

import posixpath
import struct

from rpathfix.errors import FormatError
from rpathfix.model import DylibRef, MachoInfo, MachoSlice
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.model import DylibKind
    from rpathfix.source import ByteSource

MH_MAGIC, MH_MAGIC_64 = 0xFEEDFACE, 0xFEEDFACF
FAT_MAGIC, FAT_MAGIC_64 = 0xCAFEBABE, 0xCAFEBABF

# Java class files share 0xCAFEBABE; where a fat file has nfat_arch they have
# minor/major version (major >= 45), so a real fat file has few arches.
MAX_FAT_ARCH = 30

LC_SEGMENT, LC_SYMTAB, LC_ID_DYLIB, LC_LOAD_DYLIB = 0x1, 0x2, 0xD, 0xC
LC_SEGMENT_64, LC_CODE_SIGNATURE, LC_LAZY_LOAD_DYLIB = 0x19, 0x1D, 0x20
LC_DYLD_INFO, LC_DYLD_INFO_ONLY = 0x22, 0x80000022
LC_LOAD_WEAK_DYLIB, LC_RPATH, LC_REEXPORT_DYLIB = 0x80000018, 0x8000001C, 0x8000001F
LC_LOAD_UPWARD_DYLIB, LC_DYLD_EXPORTS_TRIE = 0x80000023, 0x80000033

DYLIB_KINDS: dict[int, DylibKind] = {
    LC_LOAD_DYLIB: "load",
    LC_LOAD_WEAK_DYLIB: "weak",
    LC_REEXPORT_DYLIB: "reexport",
    LC_LAZY_LOAD_DYLIB: "lazy",
    LC_LOAD_UPWARD_DYLIB: "upward",
}

# Section types whose bytes are not in the file: their offset field means nothing.
S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL = 0x1, 0xC, 0x12
ZEROFILL_TYPES = {S_ZEROFILL, S_GB_ZEROFILL, S_THREAD_LOCAL_ZEROFILL}

MH_DYLIB, MH_BUNDLE = 6, 8
FILETYPES = {
    1: "object", 2: "execute", 6: "dylib", 7: "dylinker", 8: "bundle", 9: "dylib_stub", 10: "dsym",
    11: "kext_bundle",
}

CPU_ARCH_ABI64, CPU_ARCH_ABI64_32 = 0x01000000, 0x02000000
CPU_TYPE_X86, CPU_TYPE_ARM, CPU_TYPE_POWERPC = 7, 12, 18
ARM_SUBTYPES = {9: "armv7", 11: "armv7s", 12: "armv7k"}
CPU_SUBTYPE_ARM64E = 2

MAX_SIZEOFCMDS = 16 * 1024 * 1024
MAX_NCMDS = 100_000
MAX_TRIE = 16 * 1024 * 1024
MAX_TRIE_NODES = 4096
MAX_NSYMS = 2_000_000
MAX_STRSIZE = 16 * 1024 * 1024
NLIST_CHUNK = 1 << 20  # bytes of nlist entries per read

N_TYPE, N_SECT, N_EXT = 0x0E, 0x0E, 0x01


def is_macho(head: bytes) -> bool:
    """True for a thin or fat Mach-O header; head needs 8 bytes to tell fat from Java."""
    if len(head) < 4:
        return False
    magic_be: int = struct.unpack_from(">I", head, 0)[0]
    magic_le: int = struct.unpack_from("<I", head, 0)[0]
    if magic_be in (MH_MAGIC, MH_MAGIC_64) or magic_le in (MH_MAGIC, MH_MAGIC_64):
        return True
    if magic_be in (FAT_MAGIC, FAT_MAGIC_64):
        if len(head) < 8:
            return False
        nfat: int = struct.unpack_from(">I", head, 4)[0]
        return 1 <= nfat <= MAX_FAT_ARCH
    return False


def arch_name(cputype: int, cpusubtype: int) -> str:
    """The name lipo and dyld use for a cputype/cpusubtype pair, or "cpu-<n>"."""
    sub = cpusubtype & 0x00FFFFFF  # the top byte holds capability bits (e.g. pointer auth ABI)
    if cputype == CPU_TYPE_X86 | CPU_ARCH_ABI64:
        return "x86_64"
    if cputype == CPU_TYPE_X86:
        return "i386"
    if cputype == CPU_TYPE_ARM | CPU_ARCH_ABI64:
        return "arm64e" if sub & 0xFF == CPU_SUBTYPE_ARM64E else "arm64"
    if cputype == CPU_TYPE_ARM | CPU_ARCH_ABI64_32:
        return "arm64_32"
    if cputype == CPU_TYPE_ARM:
        return ARM_SUBTYPES.get(sub, "arm")
    if cputype == CPU_TYPE_POWERPC:
        return "ppc"
    if cputype == CPU_TYPE_POWERPC | CPU_ARCH_ABI64:
        return "ppc64"
    return f"cpu-{cputype}"


def _unpack(name: str, fmt: str, buf: bytes | memoryview, offset: int) -> tuple[int, ...]:
    """struct.unpack_from that turns a short buffer into FormatError."""
    if offset < 0:
        raise FormatError(name, f"negative offset {offset}")
    try:
        return struct.unpack_from(fmt, buf, offset)
    except struct.error:
        raise FormatError(name, f"truncated structure at offset {offset} (needs {struct.calcsize(fmt)} bytes)") from None


class _Slice:
    """Reads within one slice: offsets are relative to the slice and bounded by its size."""

    def __init__(self, src: ByteSource, base: int, size: int) -> None:
        self.src = src
        self.name = src.name
        self.base = base
        self.size = size
        self.e = "<"

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise self.fail(f"bytes {offset}..{offset + size} lie outside the {self.size}-byte slice")
        return self.src.read_at(self.base + offset, size)

    def unpack(self, fmt: str, buf: bytes | memoryview, offset: int) -> tuple[int, ...]:
        return _unpack(self.name, self.e + fmt, buf, offset)

    def fail(self, reason: str) -> FormatError:
        if self.base:
            reason = f"slice at {self.base}: {reason}"
        return FormatError(self.name, reason)


def read_macho(src: ByteSource) -> MachoInfo:
    """Parse a thin or fat Mach-O file's headers and load commands; FormatError when malformed."""
    fat, ranges = slice_ranges(src)
    return MachoInfo(fat=fat, slices=tuple(_read_thin(_Slice(src, off, size)) for off, size in ranges))


def slice_ranges(src: ByteSource) -> tuple[bool, tuple[tuple[int, int], ...]]:
    """(fat?, the (offset, size) of every slice): a thin file is one slice covering the file.

    The writer edits every slice of a fat file through the same ranges the reader reads.
    """
    if src.size < 8:
        raise FormatError(src.name, "not a Mach-O file (too short)")
    head = src.read_at(0, 8)
    (magic,) = _unpack(src.name, ">I", head, 0)
    if magic in (FAT_MAGIC, FAT_MAGIC_64):
        return True, _fat_ranges(src, magic == FAT_MAGIC_64, head)
    return False, ((0, src.size),)


def _fat_ranges(src: ByteSource, is64: bool, head: bytes) -> tuple[tuple[int, int], ...]:
    (nfat,) = _unpack(src.name, ">I", head, 4)
    if not 1 <= nfat <= MAX_FAT_ARCH:
        raise FormatError(src.name, f"fat header with {nfat} architectures (a Java class file?)")
    entsize = 32 if is64 else 20
    table = src.read_at(8, nfat * entsize)
    ranges = []
    for i in range(nfat):
        if is64:
            _cpu, _sub, offset, size, _align, _res = _unpack(src.name, ">iiQQII", table, i * entsize)
        else:
            _cpu, _sub, offset, size, _align = _unpack(src.name, ">iiIII", table, i * entsize)
        if size == 0 or offset < 8 + nfat * entsize or offset + size > src.size:
            raise FormatError(src.name, f"fat arch {i}: slice {offset}..{offset + size} outside the {src.size}-byte file")
        ranges.append((offset, size))
    return tuple(ranges)


class LoadCommands(NamedTuple):
    """One slice's mach_header and its load commands as raw bytes, checked: what the writer
    (macho_write) rebuilds. `commands` are whole commands (cmd, cmdsize, body) in file order,
    each exactly cmdsize bytes; they fill at most sizeofcmds bytes (the reader tolerates a
    header that claims more, the writer does not)."""

    offset: int  # of the slice in the file
    size: int  # of the slice
    little_endian: bool
    is_64: bool
    cputype: int
    cpusubtype: int
    filetype: int
    flags: int
    sizeofcmds: int
    commands: tuple[bytes, ...]

    @property
    def header_size(self) -> int:
        return 32 if self.is_64 else 28

    @property
    def endian(self) -> str:
        return "<" if self.little_endian else ">"

    @property
    def arch(self) -> str:
        return arch_name(self.cputype, self.cpusubtype)


def read_load_commands(src: ByteSource, offset: int, size: int) -> LoadCommands:
    """The header and load commands of the slice at offset..offset+size (one bounded read)."""
    return _load_commands(_Slice(src, offset, size))


def _load_commands(s: _Slice) -> LoadCommands:
    head = s.read(0, 4) if s.size >= 4 else b""
    if len(head) < 4:
        raise s.fail("not a Mach-O file (too short)")
    (magic_le,) = _unpack(s.name, "<I", head, 0)
    (magic_be,) = _unpack(s.name, ">I", head, 0)
    if magic_le in (MH_MAGIC, MH_MAGIC_64):
        s.e, magic = "<", magic_le
    elif magic_be in (MH_MAGIC, MH_MAGIC_64):
        s.e, magic = ">", magic_be
    else:
        raise s.fail(f"bad Mach-O magic {magic_be:#010x}")
    is64 = magic == MH_MAGIC_64
    header_size = 32 if is64 else 28
    header = s.read(0, header_size)
    _m, cputype, cpusubtype, filetype, ncmds, sizeofcmds, flags = s.unpack("IiiIIII", header, 0)
    if sizeofcmds > MAX_SIZEOFCMDS or ncmds > MAX_NCMDS:
        raise s.fail(f"absurd load commands ({ncmds} commands in {sizeofcmds} bytes)")
    cmds = s.read(header_size, sizeofcmds)
    commands = []
    pos = 0
    for i in range(ncmds):
        if pos + 8 > sizeofcmds:
            raise s.fail(f"load command {i} starts beyond sizeofcmds {sizeofcmds}")
        cmd, cmdsize = s.unpack("II", cmds, pos)
        if cmdsize < 8 or cmdsize % 4 or pos + cmdsize > sizeofcmds:
            raise s.fail(f"load command {i} ({cmd:#x}) has bad cmdsize {cmdsize}")
        commands.append(cmds[pos : pos + cmdsize])
        pos += cmdsize
    return LoadCommands(offset=s.base, size=s.size, little_endian=s.e == "<", is_64=is64, cputype=cputype,
                        cpusubtype=cpusubtype, filetype=filetype, flags=flags, sizeofcmds=sizeofcmds,
                        commands=tuple(commands))


def _read_thin(s: _Slice) -> MachoSlice:
    lcs = _load_commands(s)
    is64, header_size, filetype = lcs.is_64, lcs.header_size, lcs.filetype

    install_name: str | None = None
    dylibs: list[DylibRef] = []
    rpaths: list[str] = []
    has_signature = False
    min_section: int | None = None
    min_segment: int | None = None
    export_trie: tuple[int, int] | None = None
    symtab: tuple[int, int, int, int] | None = None

    for raw in lcs.commands:
        body = memoryview(raw)
        (cmd,) = s.unpack("I", body, 0)
        if cmd == LC_ID_DYLIB:
            install_name = _lc_str(s, body, 8)
        elif cmd in DYLIB_KINDS:
            dylibs.append(DylibRef(_lc_str(s, body, 8), DYLIB_KINDS[cmd]))
        elif cmd == LC_RPATH:
            rpaths.append(_lc_str(s, body, 8))
        elif cmd == LC_CODE_SIGNATURE:
            has_signature = True
        elif cmd in (LC_SEGMENT, LC_SEGMENT_64):
            sect, seg = _segment_offsets(s, body, cmd == LC_SEGMENT_64)
            if sect is not None and (min_section is None or sect < min_section):
                min_section = sect
            if seg is not None and (min_segment is None or seg < min_segment):
                min_segment = seg
        elif cmd in (LC_DYLD_INFO, LC_DYLD_INFO_ONLY):
            export_off, export_size = s.unpack("II", body, 40)
            if export_size:
                export_trie = (export_off, export_size)
        elif cmd == LC_DYLD_EXPORTS_TRIE:
            dataoff, datasize = s.unpack("II", body, 8)
            if datasize:
                export_trie = (dataoff, datasize)
        elif cmd == LC_SYMTAB:
            symoff, nsyms, stroff, strsize = s.unpack("IIII", body, 8)
            symtab = (symoff, nsyms, stroff, strsize)

    first = min_section if min_section is not None else min_segment
    padding = 0 if first is None else max(0, first - (header_size + lcs.sizeofcmds))
    is_ext = False
    if filetype in (MH_DYLIB, MH_BUNDLE):
        is_ext = _is_extension(s, is64, export_trie, symtab)
    return MachoSlice(
        arch=lcs.arch, cputype=lcs.cputype, cpusubtype=lcs.cpusubtype, is_64=is64,
        filetype=FILETYPES.get(filetype, f"type-{filetype}"), offset=s.base, size=s.size,
        install_name=install_name, dylibs=tuple(dylibs), rpaths=tuple(rpaths),
        has_code_signature=has_signature, header_padding=padding, is_extension=is_ext,
    )


def _lc_str(s: _Slice, body: memoryview, field: int) -> str:
    """An lc_str: a uint32 offset from the command start to a string inside the command.

    The string ends at the first NUL or at the end of the command (commands are padded
    with NULs to a multiple of 4, so a missing NUL only happens in corrupt files).
    """
    (off,) = s.unpack("I", body, field)
    if off >= len(body):
        raise s.fail(f"lc_str offset {off} outside its {len(body)}-byte load command")
    raw = bytes(body[off:]).split(b"\0", 1)[0]
    return raw.decode("utf-8", "surrogateescape")


def _segment_offsets(s: _Slice, body: memoryview, is64: bool) -> tuple[int | None, int | None]:
    """(lowest file offset of a section with file contents, segment fileoff if it has contents).

    install_name_tool measures the free space after the load commands up to the first
    section's contents; zero-fill sections occupy no file bytes and do not count.
    """
    if is64:
        seg_fields = s.unpack("QQQQiiII", body, 24)
        seg_hdr, sect_size, sect_fmt = 72, 80, "QQIIIIIIII"
    else:
        seg_fields = s.unpack("IIIIiiII", body, 24)
        seg_hdr, sect_size, sect_fmt = 56, 68, "IIIIIIIII"
    _vmaddr, _vmsize, fileoff, filesize, _maxprot, _initprot, nsects, _flags = seg_fields
    if seg_hdr + nsects * sect_size > len(body):
        raise s.fail(f"segment with {nsects} sections does not fit its {len(body)}-byte command")
    best: int | None = None
    for j in range(nsects):
        fields = s.unpack(sect_fmt, body, seg_hdr + j * sect_size + 32)
        offset, flags = fields[2], fields[6]
        if offset and (flags & 0xFF) not in ZEROFILL_TYPES and (best is None or offset < best):
            best = offset
    seg = fileoff if fileoff and filesize else None
    return best, seg


def _module_symbol(name: str) -> bytes | None:
    base = posixpath.basename(name.rsplit("!", 1)[-1])
    module = base.split(".", 1)[0]
    if not module:
        return None
    try:
        return ("_PyInit_" + module).encode("utf-8", "surrogateescape")
    except UnicodeError:
        return None


def _is_extension(s: _Slice, is64: bool, trie: tuple[int, int] | None,
                  symtab: tuple[int, int, int, int] | None) -> bool:
    """Whether the slice exports _PyInit_<module>; False (not an error) when the tables are corrupt."""
    want = _module_symbol(s.name)
    if want is None:
        return False
    try:
        if trie is not None:
            off, size = trie
            if size > MAX_TRIE:
                return False
            return _trie_lookup(s.read(off, size), want)
        if symtab is not None:
            return _symtab_lookup(s, is64, symtab, want)
    except FormatError:
        return False
    return False


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); raises IndexError/ValueError on overrun, caught by the caller."""
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("bad uleb128")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _trie_lookup(data: bytes, want: bytes) -> bool:
    """Follow the export trie along `want` only; every edge consumes at least one byte."""
    node = 0
    rest = want
    try:
        for _ in range(MAX_TRIE_NODES):
            terminal, pos = _uleb(data, node)
            if not rest:
                return terminal > 0
            pos += terminal
            if pos >= len(data):
                return False
            count = data[pos]
            pos += 1
            for _child in range(count):
                end = data.index(b"\0", pos)
                label = data[pos:end]
                child, pos = _uleb(data, end + 1)
                if label and rest.startswith(label):
                    if child >= len(data):
                        return False
                    node, rest = child, rest[len(label) :]
                    break
            else:
                return False
    except (ValueError, IndexError):
        return False
    return False


def _symtab_lookup(s: _Slice, is64: bool, symtab: tuple[int, int, int, int], want: bytes) -> bool:
    """Scan LC_SYMTAB for an external symbol defined in a section named `want` (old files only)."""
    symoff, nsyms, stroff, strsize = symtab
    if nsyms > MAX_NSYMS or strsize > MAX_STRSIZE:
        return False
    strings = s.read(stroff, strsize)
    entsize = 16 if is64 else 12
    fmt = s.e + ("IBBHQ" if is64 else "IBBHI")
    per_chunk = NLIST_CHUNK // entsize
    for first in range(0, nsyms, per_chunk):
        n = min(per_chunk, nsyms - first)
        chunk = s.read(symoff + first * entsize, n * entsize)
        for n_strx, n_type, _sect, _desc, _value in struct.iter_unpack(fmt, chunk):
            if n_type & N_TYPE != N_SECT or not n_type & N_EXT or n_strx >= strsize:
                continue
            if strings.startswith(want + b"\0", n_strx):
                return True
    return False
