"""Reader for glibc's /etc/ld.so.cache: the list ld.so consults before the default dirs.

ld.so never runs ldconfig; it maps the cache file and binary-searches it. So do we: the
file is parsed with struct (never by running ``ldconfig -p``), which keeps rpathfix
usable on a sysroot or an image of another machine and costs well under a millisecond.

Layouts (glibc sysdeps/generic/dl-cache.h):

* old ("ld.so-1.7.0"): 16-byte header, 12-byte entries, string offsets relative to the
  string table that follows the entries. Written only by ``ldconfig -c old/compat``.
* new ("glibc-ld.so.cache1.1"): 48-byte header, 24-byte entries with a 64-bit hwcap
  field, string offsets relative to the start of the new header. In the compat layout
  it follows the old entries at an 8-byte aligned offset; ld.so then uses the new part,
  and so do we.
* the optional extension area (glibc >= 2.33) of the new format, whose
  glibc-hwcaps section names the ``glibc-hwcaps/<name>`` subdirectories that entries
  with the hwcap extension bit refer to. Unlike entry strings, the extension offset,
  its section offsets and the hwcaps name offsets count from the start of the FILE
  (cache_extension_load and glibc_hwcaps_compare in dl-cache.c). In the compat layout
  ldconfig writes the names relative to the new header, so ld.so (and ldconfig -p)
  read the wrong bytes there; we read what ld.so reads.

Lookup follows search_cache() in elf/dl-cache.c: entries for one name are in file order
with the glibc-hwcaps variants first; the best supported variant wins, else the first
other entry whose flags match the requester. Entries for the legacy hwcap and platform
subdirectories (tls/, x86_64/, haswell/; glibc 2.36 reads them, 2.37 dropped them) count
when every hwcap bit they carry is one the process has (`legacy`, below), and are
skipped without it.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Sequence

from rpathfix.errors import FormatError
from rpathfix.static import NamedTuple

OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
OLD_HEADER = 16  # 11 magic bytes, 1 pad byte, uint32 nlibs
OLD_ENTRY = 12
NEW_HEADER = 48
NEW_ENTRY = 24
NEW_ALIGN = 8  # __alignof__ (struct cache_file_new): it holds uint64 hwcap fields

MAX_CACHE = 64 << 20
MAX_STRING = 4096  # PATH_MAX: no key or path ldconfig writes is longer

FLAG_ELF, FLAG_ELF_LIBC6 = 0x0001, 0x0003
FLAG_TYPE_MASK = 0x00FF

ENDIAN_UNSET, ENDIAN_INVALID, ENDIAN_LITTLE, ENDIAN_BIG = 0, 1, 2, 3

EXTENSION_MAGIC = 0xEAA42174
EXTENSION_TAG_GLIBC_HWCAPS = 1
MAX_SECTIONS = 1024
HWCAP_EXTENSION = 1 << 62  # dl_cache_hwcap_extension: (hwcap >> 62) == 1
HWCAP_TLS = 1 << 63  # _DL_HWCAP_TLS_MASK: a tls/ subdirectory, usable everywhere

# glibc 2.36's legacy hwcap and platform bits, by subdirectory name (what ldconfig writes
# into an entry's hwcap field, and ld.so compares): sysdeps/x86/dl-hwcap.h (HWCAP_X86_64 is
# bit 1, HWCAP_X86_AVX512_1 bit 2) and dl-procinfo.c/.h (platforms from bit 48: haswell is
# i586, i686, haswell, xeon_phi's third). Machines not listed here use no legacy entries.
LEGACY_HWCAP_BITS: dict[str, dict[str, int]] = {
    "x86_64": {"tls": HWCAP_TLS, "x86_64": 1 << 1, "avx512_1": 1 << 2, "haswell": 1 << 50, "xeon_phi": 1 << 51},
}


def legacy_hwcap_mask(arch: str, subdirs: Sequence[str]) -> int | None:
    """The hwcap bits ld.so accepts in legacy cache entries, from the legacy subdirectories it
    searches (`subdirs` as hwcaps.host_hwcap_subdirs gives them; a name is searched only when
    the CPU has it): search_cache's ~hwcap_exclude, g:elf/dl-cache.c:205-211. None when the
    machine's bits are not known."""
    bits = LEGACY_HWCAP_BITS.get(arch)
    if bits is None:
        return None
    mask = HWCAP_TLS
    for sub in subdirs:
        for name in sub.split("/"):
            mask |= bits.get(name, 0)
    return mask

# (arch, elf_class) -> (the requester's _DL_CACHE_DEFAULT_ID, every flags value its
# _dl_cache_check_flags accepts). Where one ELF arch has several ABIs we pick the
# common Linux one: armhf, riscv64 lp64d, loongarch64 lp64d; mips is not modelled.
_GENERIC = (FLAG_ELF_LIBC6, frozenset({FLAG_ELF, FLAG_ELF_LIBC6}))


def _exact(flag: int) -> tuple[int, frozenset[int]]:
    return flag | FLAG_ELF_LIBC6, frozenset({flag | FLAG_ELF_LIBC6})


ARCH_FLAGS: dict[tuple[str, int], tuple[int, frozenset[int]]] = {
    ("x86_64", 64): _exact(0x0300),
    ("x86_64", 32): _exact(0x0800),  # x32
    ("i386", 32): _GENERIC,
    ("aarch64", 64): _exact(0x0A00),
    ("ppc64", 64): _exact(0x0500),
    ("ppc64le", 64): _exact(0x0500),
    ("ppc", 32): _GENERIC,
    ("s390x", 64): _exact(0x0400),
    ("s390x", 32): _GENERIC,
    ("sparcv9", 64): _exact(0x0100),
    ("sparc", 32): _GENERIC,
    ("ia64", 64): _exact(0x0200),
    ("arm", 32): _exact(0x0900),
    ("riscv64", 64): _exact(0x1000),
    ("loongarch64", 64): _exact(0x1200),
}


class CacheEntry(NamedTuple):
    """One cache record. ``hwcaps_subdir`` is set only for glibc-hwcaps variants."""

    name: str
    path: str
    flags: int
    hwcap: int
    hwcaps_subdir: str | None

    @property
    def hwcaps_index(self) -> int | None:
        """Index into the extension's glibc-hwcaps string array, for variants only."""
        return self.hwcap & 0xFFFFFFFF if _is_named(self.hwcap) else None


class LdCache:
    """A parsed cache. ``entries`` keeps file order, which is ld.so's preference order."""

    __slots__ = ("_index", "entries", "path")

    def __init__(self, path: str, entries: tuple[CacheEntry, ...]) -> None:
        self.path = path
        self.entries = entries
        # name -> entries in file order; filled on first lookup. Equality and repr ignore it.
        self._index: dict[str, list[CacheEntry]] = {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LdCache) and (self.path, self.entries) == (other.path, other.entries)

    def __hash__(self) -> int:
        return hash((self.path, self.entries))

    def __repr__(self) -> str:
        return f"LdCache(path={self.path!r}, entries=<{len(self.entries)}>)"

    def by_name(self, name: str) -> list[CacheEntry]:
        """All entries whose key is exactly ``name``, in file order."""
        index = self._index
        if not index and self.entries:
            for e in self.entries:
                index.setdefault(e.name, []).append(e)
        return index.get(name, [])

    def lookup(self, name: str, arch: str, elf_class: int, hwcaps_supported: Sequence[str] = (),
               legacy: int | None = None) -> str | None:
        """The path ld.so would try for ``name`` (exact key) for a requester of this arch.

        ``hwcaps_supported`` lists the glibc-hwcaps subdirectories the CPU supports, best
        first (e.g. ``("x86-64-v3", "x86-64-v2")``); with the default, variants are ignored,
        which is what ld.so does on a CPU that supports none. ``legacy`` is the set of
        legacy hwcap bits the process has (legacy_hwcap_mask); None skips every legacy
        entry, as glibc 2.37 does. Unknown arches give None.
        """
        accept = ARCH_FLAGS.get((arch, elf_class))
        if accept is None:
            return None
        default_id, accepted = accept
        best: str | None = None
        best_priority = len(hwcaps_supported)
        for e in self.by_name(name):
            if e.flags not in accepted:
                continue
            if e.hwcaps_subdir is not None:
                try:
                    priority = hwcaps_supported.index(e.hwcaps_subdir)
                except ValueError:
                    continue
                if best is None or priority < best_priority:
                    best, best_priority = e.path, priority
                continue
            if _is_named(e.hwcap):
                continue  # a variant whose subdir name we could not read: unusable
            if best is not None:
                break  # variants are listed first; a supported one beats any plain entry
            if e.hwcap != 0 and (legacy is None or e.hwcap & ~legacy):
                continue  # a legacy subdirectory for bits this process lacks (or glibc >= 2.37)
            best = e.path
            if e.flags == default_id:
                break  # nothing later can be better; otherwise keep looking for the default id
        return best


def _is_named(hwcap: int) -> bool:
    return hwcap >> 62 == 1


def load_cache(path: str = "/etc/ld.so.cache") -> LdCache | None:
    """Read and parse the cache; None when it does not exist (ld.so then skips it too)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_CACHE:
                raise FormatError(path, f"cache of {size} bytes exceeds {MAX_CACHE}")
            data = f.read(MAX_CACHE + 1)
    except FileNotFoundError:
        return None
    return parse_cache(data, path)


def parse_cache(data: bytes, path: str = "/etc/ld.so.cache") -> LdCache:
    """Parse cache bytes; FormatError for anything ld.so could not use or we will not trust."""
    if len(data) > MAX_CACHE:
        raise FormatError(path, f"cache of {len(data)} bytes exceeds {MAX_CACHE}")
    native = "<" if sys.byteorder == "little" else ">"
    if data.startswith(NEW_MAGIC):
        return LdCache(path, _parse_new(data, 0, path, native))
    if not data.startswith(OLD_MAGIC):
        raise FormatError(path, "not an ld.so cache (bad magic)")
    if len(data) < OLD_HEADER:
        raise FormatError(path, "truncated old-format header")
    (nlibs,) = struct.unpack_from(native + "I", data, 12)
    entries_end = OLD_HEADER + nlibs * OLD_ENTRY
    if entries_end > len(data):
        raise FormatError(path, f"{nlibs} old-format entries do not fit in {len(data)} bytes")
    new_at = -(-entries_end // NEW_ALIGN) * NEW_ALIGN
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return LdCache(path, _parse_new(data, new_at, path, native))
    strings = data[entries_end:]
    out = []
    for flags, key, value in struct.iter_unpack(native + "iII", data[OLD_HEADER:entries_end]):
        out.append(CacheEntry(_string(strings, key, path), _string(strings, value, path), flags, 0, None))
    return LdCache(path, tuple(out))


def _parse_new(data: bytes, base: int, path: str, native: str) -> tuple[CacheEntry, ...]:
    """The new-format cache whose header starts at ``base``; string offsets count from there."""
    if len(data) - base < NEW_HEADER:
        raise FormatError(path, "truncated new-format header")
    endian = data[base + 28]
    if endian == ENDIAN_LITTLE:
        e = "<"
    elif endian == ENDIAN_BIG:
        e = ">"
    elif endian == ENDIAN_UNSET:
        e = native  # written by ldconfig before glibc 2.33, always for the host
    else:
        raise FormatError(path, f"invalid endianness flag {endian}")
    nlibs, len_strings = struct.unpack_from(e + "II", data, base + 20)
    (ext_offset,) = struct.unpack_from(e + "I", data, base + 32)
    table = data[base:]  # ld.so's string_table: offsets and bounds are relative to it
    entries_end = NEW_HEADER + nlibs * NEW_ENTRY
    if entries_end + len_strings > len(table):
        raise FormatError(path, f"{nlibs} entries and {len_strings} string bytes do not fit in the file")
    hwcaps = _hwcaps_strings(data, ext_offset, e, path)
    out = []
    for flags, key, value, _osv, hwcap in struct.iter_unpack(e + "iIIIQ", table[NEW_HEADER:entries_end]):
        subdir = None
        if hwcap >> 62 == 1:
            # An index without a readable name has priority 0 in ld.so: never used.
            index = hwcap & 0xFFFFFFFF
            subdir = hwcaps[index] if index < len(hwcaps) else None
        out.append(CacheEntry(_string(table, key, path), _string(table, value, path), flags, hwcap, subdir))
    return tuple(out)


def _hwcaps_strings(table: bytes, ext_offset: int, e: str, path: str) -> list[str | None]:
    """The glibc-hwcaps subdirectory names of the extension area (``table`` is the whole file).

    A corrupt extension makes ld.so drop the whole cache, hence FormatError; a name
    offset that does not lead to a string only makes that one variant unusable (None).
    """
    if ext_offset == 0:
        return []
    if ext_offset % 4 or ext_offset + 8 > len(table):
        raise FormatError(path, f"extension offset {ext_offset} out of range or misaligned")
    magic, count = struct.unpack_from(e + "II", table, ext_offset)
    if magic != EXTENSION_MAGIC:
        raise FormatError(path, f"bad extension magic {magic:#x}")
    if count > MAX_SECTIONS or ext_offset + 8 + 16 * count > len(table):
        raise FormatError(path, f"{count} extension sections do not fit in the file")
    result: list[str | None] = []
    for i in range(count):
        tag, _flags, offset, size = struct.unpack_from(e + "IIII", table, ext_offset + 8 + 16 * i)
        if tag != EXTENSION_TAG_GLIBC_HWCAPS:
            continue  # e.g. the generator string: nothing lookups need
        if offset % 4 or size % 4 or offset + size > len(table):
            raise FormatError(path, f"glibc-hwcaps section at {offset} of {size} bytes out of range")
        offsets = struct.unpack_from(f"{e}{size // 4}I", table, offset)
        result = [_maybe_string(table, off) for off in offsets]
    return result


def _maybe_string(table: bytes, offset: int) -> str | None:
    end = table.find(b"\0", offset, offset + MAX_STRING + 1)
    return None if end < 0 else table[offset:end].decode("utf-8", "surrogateescape")


def _string(table: bytes, offset: int, path: str) -> str:
    """A NUL-terminated string at ``offset``; the search is bounded so corrupt data stays cheap."""
    end = table.find(b"\0", offset, offset + MAX_STRING + 1)
    if end < 0 or offset >= len(table):
        raise FormatError(path, f"string at offset {offset} is out of range or unterminated")
    return table[offset:end].decode("utf-8", "surrogateescape")
