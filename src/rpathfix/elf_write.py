"""Planning edits of an ELF file's dynamic entries: which bytes go where. Pure: nothing is
written here; the result is a model.BytePatch that patch.py applies in place, to a copy, or
while streaming the file into a wheel.

What ld.so reads is the program headers, the dynamic segment and the strings DT_STRTAB points
at; debuggers and strip also read the section headers. An edit (RPATH/RUNPATH, SONAME,
NEEDED) is planned in one of two ways:

- In place. Every new string fits in the bytes of the string it replaces, and nothing else
  points into those bytes: the linker merges string tails ("libfoo.so" can be the end of
  "xlibfoo.so", a symbol name can share bytes with a library name), so every reference into
  .dynstr is checked first: the dynamic entries, the dynamic symbols' names, the version
  needs and definitions. Changes to the dynamic entries themselves (a tag switched between
  DT_RPATH and DT_RUNPATH, an entry removed) are rewritten in their table. The plan is in
  place only when all of it is one write within one 4096-byte page: a page is the unit a
  write cannot be cut inside by kill -9 (the kernel checks for a fatal signal between
  pages), so the file is the old one or the new one, never half of each.

- Grown. Otherwise new copies of what must change go into new space at the end of the file:
  .dynstr (copied whole, new strings appended, so every offset into it stays valid), the
  dynamic table (always: its pointers change), .gnu.version_r when a version need must name
  a new library, and a new section header table. The loader maps the new space through a
  new PT_LOAD (or, when the last PT_LOAD already ends at the end of the file and is
  writable with no .bss, as a file of ours or patchelf's is, by extending that one). Its
  address lies above every other segment and is congruent to its offset modulo the largest
  p_align, so PT_LOADs stay sorted by address and every loader maps it.

  The program header table stays where it is, at the start of the file: strip (BFD) breaks
  files whose table lies elsewhere (it lays the segments out again and loses the congruence
  of offset and address; tried with binutils 2.40), and kernels before 5.18 computed AT_PHDR
  from the first PT_LOAD. A new PT_LOAD needs one more entry, so the sections that follow
  the table (.interp, notes, .MIPS.abiflags, a hash table...) are copied to the new space as
  one block with their pointers (PT_INTERP, PT_NOTE, DT_GNU_HASH, section headers) updated,
  and the table grows over their old bytes. Only kinds whose every reference is known move.

  The ELF header and the program header table (the first bytes of the file) are the last
  write, in one page: until then the file is the old one plus unreferenced bytes past its
  end; after it, every pointer leads to the new copies. Nothing else in the file changes.
  Old copies stay behind, unreferenced (the old .dynamic also stays what _DYNAMIC and
  GOT[0] name; ld.so takes the dynamic segment from PT_DYNAMIC). The moved .dynamic is no
  longer inside PT_GNU_RELRO, as with patchelf.

Reads go through source.ByteSource and are bounded by the tables involved: a fitting edit
of the 503 MB libtorch_cuda.so reads its headers, its dynamic table and 0.6 MB of symbol
names; a growing one also reads and copies its 4.5 MB .dynstr (never the rest of the file).
"""

from __future__ import annotations

import struct
from array import array

from rpathfix.elf import (
    DT_GNU_HASH,
    DT_HASH,
    DT_NEEDED,
    DT_NULL,
    DT_RPATH,
    DT_RUNPATH,
    DT_SONAME,
    DT_STRSZ,
    DT_STRTAB,
    DT_SYMTAB,
    ELF_MAGIC,
    MAX_DYNAMIC,
    MAX_PHNUM,
    MAX_STRING,
    PT_DYNAMIC,
    PT_INTERP,
    PT_LOAD,
)
from rpathfix.errors import EditError, FormatError
from rpathfix.model import BytePatch, Change
from rpathfix.source import MAX_READ
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Literal

    from rpathfix.model import Edit
    from rpathfix.source import ByteSource

ET_EXEC, ET_DYN = 2, 3
PT_NOTE, PT_PHDR = 4, 6
PT_GNU_PROPERTY = 0x6474E553
PT_MIPS_REGINFO, PT_MIPS_ABIFLAGS = 0x70000000, 0x70000003
PF_W, PF_R = 2, 4

SHT_NULL, SHT_PROGBITS, SHT_STRTAB, SHT_HASH, SHT_DYNAMIC, SHT_NOTE, SHT_NOBITS, SHT_DYNSYM = 0, 1, 3, 5, 6, 7, 8, 11
SHT_SYMTAB = 2
SHT_GNU_HASH, SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFF6, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHT_MIPS_REGINFO, SHT_MIPS_ABIFLAGS = 0x70000006, 0x7000002A
SHF_ALLOC = 2
SHN_XINDEX = 0xFFFF

DT_SYMENT = 11
DT_FLAGS_1 = 0x6FFFFFFB
DF_1_PIE = 0x08000000
DT_VERSYM, DT_VERDEF, DT_VERDEFNUM, DT_VERNEED, DT_VERNEEDNUM = (
    0x6FFFFFF0, 0x6FFFFFFC, 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF)
DT_MIPS_RLD_MAP_REL = 0x70000035
# Tags whose value is an offset into DT_STRTAB (besides NEEDED, SONAME, RPATH, RUNPATH):
# DT_AUXILIARY, DT_FILTER, DT_CONFIG, DT_DEPAUDIT, DT_AUDIT.
STRING_TAGS = frozenset({DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH, 0x7FFFFFFD, 0x7FFFFFFF,
                         0x6FFFFEFA, 0x6FFFFEFB, 0x6FFFFEFC})
# Tags whose value is an address: PLTGOT, HASH, STRTAB, SYMTAB, RELA, INIT, FINI, REL, DEBUG,
# JMPREL, INIT_ARRAY, FINI_ARRAY, PREINIT_ARRAY, SYMTAB_SHNDX, RELR, and the OS range.
ADDRESS_TAGS = frozenset({3, 4, 5, 6, 7, 12, 13, 17, 21, 23, 25, 26, 32, 34, 36,
                          DT_GNU_HASH, DT_VERSYM, DT_VERDEF, DT_VERNEED})
# The tables a moved block may hold, by the tag that points at each.
MOVABLE_TABLE_TAGS = frozenset({DT_HASH, DT_STRTAB, DT_SYMTAB, DT_GNU_HASH, DT_VERSYM, DT_VERDEF, DT_VERNEED})
MOVABLE_SECTION_TYPES = frozenset({SHT_NOTE, SHT_HASH, SHT_DYNSYM, SHT_DYNAMIC, SHT_GNU_HASH, SHT_GNU_VERDEF,
                                   SHT_GNU_VERNEED, SHT_GNU_VERSYM, SHT_MIPS_REGINFO, SHT_MIPS_ABIFLAGS})
MOVABLE_SEGMENT_TYPES = frozenset({PT_INTERP, PT_NOTE, PT_GNU_PROPERTY, PT_MIPS_REGINFO, PT_MIPS_ABIFLAGS,
                                   PT_DYNAMIC})

# Machines whose page size we know (the largest one their kernels use, as GNU gold and
# patchelf take it); an unknown machine is refused rather than guessed at.
PAGE_SIZES = {
    2: 0x2000, 3: 0x1000, 4: 0x1000, 8: 0x10000, 15: 0x1000, 18: 0x2000, 20: 0x10000, 21: 0x10000,
    22: 0x1000, 40: 0x1000, 42: 0x1000, 43: 0x2000, 50: 0x10000, 62: 0x1000, 183: 0x10000,
    191: 0x10000, 243: 0x1000, 258: 0x10000, 0x9026: 0x10000,
}
PAGE = 4096  # the unit a single write is never cut inside (see the module docstring)
MAX_SHNUM = 1 << 18
MAX_VERSION_RECORDS = 1 << 16
MAX_CHAIN = 1 << 22
CHUNK = 4 << 20


def _align(n: int, a: int) -> int:
    return n if a <= 1 else -(-n // a) * a


class _Seg:
    """One program header, as numbers (packed back into its raw entry when it changes)."""

    __slots__ = ("align", "filesz", "flags", "memsz", "offset", "paddr", "type", "vaddr")

    def __init__(self, fields: Sequence[int], is64: bool) -> None:
        if is64:
            self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.align = fields
        else:
            self.type, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.flags, self.align = fields

    def fields(self, is64: bool) -> tuple[int, ...]:
        if is64:
            return (self.type, self.flags, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.align)
        return (self.type, self.offset, self.vaddr, self.paddr, self.filesz, self.memsz, self.flags, self.align)

    def copy(self, is64: bool) -> _Seg:
        return _Seg(self.fields(is64), is64)


class _Sec:
    """One section header."""

    __slots__ = ("addr", "addralign", "entsize", "flags", "info", "link", "name", "offset", "size", "type")

    def __init__(self, fields: Sequence[int]) -> None:
        (self.name, self.type, self.flags, self.addr, self.offset, self.size, self.link, self.info,
         self.addralign, self.entsize) = fields

    def fields(self) -> tuple[int, ...]:
        return (self.name, self.type, self.flags, self.addr, self.offset, self.size, self.link, self.info,
                self.addralign, self.entsize)


class _Obj:
    """Something at a file range that may stand where the program header table must grow:
    a section, a segment the loader reads (PT_INTERP, PT_NOTE...) or a table a dynamic
    entry points at. `movable` when every reference to it is one we update."""

    __slots__ = ("align", "end", "movable", "off", "what")

    def __init__(self, off: int, size: int, what: str, movable: bool, align: int = 1) -> None:
        self.off, self.end, self.what, self.movable, self.align = off, off + size, what, movable, max(1, align)


class _Elf:
    """The parts of one ELF file an edit touches, parsed with bounded reads."""

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.name = src.name
        head = src.read_at(0, 16) if src.size >= 16 else b""
        if head[:4] != ELF_MAGIC:
            raise self.fail("not an ELF file (bad magic)")
        if head[4] not in (1, 2) or head[5] not in (1, 2):
            raise self.fail(f"bad ELF class {head[4]} or data encoding {head[5]}")
        self.is64 = head[4] == 2
        self.e = "<" if head[5] == 1 else ">"
        self.wsize = 8 if self.is64 else 4
        self.ehsize = 64 if self.is64 else 52
        self.ehdr_fmt = self.e + ("HHIQQQIHHHHHH" if self.is64 else "HHIIIIIHHHHHH")
        self.ph_fmt = self.e + ("IIQQQQQQ" if self.is64 else "IIIIIIII")
        self.sh_fmt = self.e + ("IIQQQQIIQQ" if self.is64 else "IIIIIIIIII")
        self.dyn_fmt = self.e + ("QQ" if self.is64 else "II")
        self.dynsize = 2 * self.wsize
        (self.e_type, self.e_machine, _ver, _entry, self.e_phoff, self.e_shoff, _flags, _ehsize,
         self.e_phentsize, self.e_phnum, self.e_shentsize, self.e_shnum, self.e_shstrndx) = self.unpack(
            self.ehdr_fmt, 16)
        if self.e_type not in (ET_EXEC, ET_DYN):
            kind = {0: "none", 1: "rel (an object file)", 4: "core"}.get(self.e_type, str(self.e_type))
            raise self.fail(f"not an executable or shared library (ELF type {kind})")
        if self.e_machine not in PAGE_SIZES:
            raise self.fail(f"unknown machine {self.e_machine} (e_machine): its page size is not known")
        self.page = PAGE_SIZES[self.e_machine]
        self._read_segments()
        self._read_sections()
        self._read_dynamic()
        self._names: bytes | None = None
        self._nsyms: int | None = -1
        self._verneed: list[tuple[int, tuple[int, ...], list[tuple[int, tuple[int, ...]]]]] | None = None
        self._verdef: list[tuple[int, tuple[int, ...], list[tuple[int, tuple[int, ...]]]]] | None = None

    # -- reading ------------------------------------------------------------------------

    def fail(self, reason: str) -> FormatError:
        return FormatError(self.name, reason)

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        return struct.unpack(fmt, self.src.read_at(offset, struct.calcsize(fmt)))

    def read(self, offset: int, size: int) -> bytes:
        """Any number of bytes, in bounded reads."""
        if size <= MAX_READ:
            return self.src.read_at(offset, size)
        parts = [self.src.read_at(offset + i, min(CHUNK, size - i)) for i in range(0, size, CHUNK)]
        return b"".join(parts)

    def _read_segments(self) -> None:
        ph_size = struct.calcsize(self.ph_fmt)
        if not 0 < self.e_phnum <= MAX_PHNUM:
            raise self.fail(f"program header count {self.e_phnum} (no program headers or absurd)")
        if self.e_phentsize < ph_size:
            raise self.fail(f"program header entry size {self.e_phentsize} too small")
        self.pht_raw = self.src.read_at(self.e_phoff, self.e_phnum * self.e_phentsize)
        self.segs = [_Seg(struct.unpack_from(self.ph_fmt, self.pht_raw, i * self.e_phentsize), self.is64)
                     for i in range(self.e_phnum)]
        self.loads = [s for s in self.segs if s.type == PT_LOAD]
        for s in self.loads:
            if s.filesz > s.memsz or s.offset + s.filesz > self.src.size:
                raise self.fail(f"PT_LOAD at offset {s.offset:#x} lies outside the file (truncated?)")
            if s.align > 1 and (s.align & (s.align - 1) or (s.vaddr - s.offset) % s.align):
                raise self.fail(f"PT_LOAD at {s.vaddr:#x}: bad alignment {s.align:#x}")
        if not self.loads:
            raise self.fail("no PT_LOAD segment")
        dyn = [s for s in self.segs if s.type == PT_DYNAMIC]
        if not dyn:
            raise self.fail("no dynamic section (a static executable?): nothing to patch")
        self.dyn_seg = dyn[0]
        self.interp = any(s.type == PT_INTERP for s in self.segs)

    def _read_sections(self) -> None:
        self.secs: list[_Sec] = []
        self.sht_raw = b""
        if self.e_shoff == 0:
            return
        sh_size = struct.calcsize(self.sh_fmt)
        if self.e_shentsize < sh_size:
            raise self.fail(f"section header entry size {self.e_shentsize} too small")
        count = self.e_shnum
        if count == 0:  # extended numbering: the count is in section 0's sh_size
            count = _Sec(self.unpack(self.sh_fmt, self.e_shoff)).size
        if count > MAX_SHNUM:
            raise self.fail(f"absurd section count {count}")
        self.shnum = count
        self.sht_raw = self.read(self.e_shoff, count * self.e_shentsize)
        self.secs = [_Sec(struct.unpack_from(self.sh_fmt, self.sht_raw, i * self.e_shentsize)) for i in range(count)]
        for s in self.secs:
            if s.type not in (SHT_NULL, SHT_NOBITS) and s.offset + s.size > self.src.size:
                raise self.fail(f"a section at offset {s.offset:#x} lies outside the file (truncated?)")

    def _read_dynamic(self) -> None:
        seg = self.dyn_seg
        if seg.filesz > MAX_DYNAMIC:
            raise self.fail(f"dynamic segment of {seg.filesz} bytes")
        self.dyn_slots = seg.filesz // self.dynsize
        raw = self.src.read_at(seg.offset, self.dyn_slots * self.dynsize)
        self.dyn: list[tuple[int, int]] = []
        for tag, val in struct.iter_unpack(self.dyn_fmt, raw):
            if tag == DT_NULL:
                break
            self.dyn.append((tag, val))
        else:
            raise self.fail("dynamic section without a DT_NULL terminator")
        tags = dict(self.dyn)  # the last of each tag, as glibc keeps it
        if not self.interp and self.e_type == ET_DYN and tags.get(DT_FLAGS_1, 0) & DF_1_PIE:
            raise self.fail("a static executable (static-pie, no PT_INTERP): nothing to patch")
        if DT_STRTAB not in tags:
            raise self.fail("dynamic section without DT_STRTAB")
        self.tags = tags
        self.strtab_addr = tags[DT_STRTAB]
        self.strtab_off = self.to_offset(self.strtab_addr)
        strsz = tags.get(DT_STRSZ)
        if strsz is None:
            raise self.fail("dynamic section without DT_STRSZ")
        self.strsz = strsz
        if self.strtab_off + strsz > self.src.size:
            raise self.fail("DT_STRSZ reaches beyond the end of the file (truncated?)")
        self.dynstr_sec = next((i for i, s in enumerate(self.secs) if s.type == SHT_STRTAB and s.flags & SHF_ALLOC
                                and s.addr == self.strtab_addr), None)
        self.dynamic_sec = next((i for i, s in enumerate(self.secs) if s.type == SHT_DYNAMIC
                                 and s.offset == seg.offset), None)

    def to_offset(self, addr: int) -> int:
        for s in self.loads:
            if s.vaddr <= addr < s.vaddr + s.filesz:
                return s.offset + (addr - s.vaddr)
        raise self.fail(f"address {addr:#x} is not inside any PT_LOAD segment")

    def string(self, off: int) -> bytes:
        """The NUL-terminated string at DT_STRTAB + off."""
        if off >= self.strsz:
            raise self.fail(f"string offset {off} beyond DT_STRSZ {self.strsz}")
        start = self.strtab_off + off
        out = b""
        chunk = 128
        while True:
            avail = self.strtab_off + self.strsz - start - len(out)
            if avail <= 0:
                raise self.fail("unterminated string in .dynstr")
            piece = self.src.read_at(start + len(out), min(chunk, avail))
            nul = piece.find(b"\0")
            if nul >= 0:
                return out + piece[:nul]
            out += piece
            if len(out) > MAX_STRING:
                raise self.fail(f"string longer than {MAX_STRING} bytes in .dynstr")
            chunk = min(chunk * 4, 4096)

    def run_start(self, off: int) -> int:
        """Where the NUL-free run holding DT_STRTAB + off begins (a string of which the one at
        `off` may be the tail)."""
        pos = off
        while pos > 0:
            step = min(256, pos)
            piece = self.src.read_at(self.strtab_off + pos - step, step)
            nul = piece.rfind(b"\0")
            if nul >= 0:
                return pos - step + nul + 1
            pos -= step
        return 0

    # -- the tables around .dynstr --------------------------------------------------------

    def nsyms(self) -> int | None:
        """How many dynamic symbols there are (None when nothing says)."""
        if self._nsyms != -1:
            return self._nsyms
        n: int | None = None
        sec = next((s for s in self.secs if s.type == SHT_DYNSYM and s.entsize), None)
        if sec is not None:
            n = sec.size // sec.entsize
        elif DT_GNU_HASH in self.tags:
            n = self._gnu_hash_nsyms(self.to_offset(self.tags[DT_GNU_HASH]))[0]
        elif DT_HASH in self.tags:
            _nbucket, n = self._sysv_hash_header()
        if n is not None and DT_SYMTAB in self.tags and (
                self.to_offset(self.tags[DT_SYMTAB]) + n * self.tags.get(DT_SYMENT, 16) > self.src.size):
            raise self.fail(f"{n} dynamic symbols do not fit in the file (truncated or corrupt hash table)")
        self._nsyms = n
        return n

    def _hash_entry(self) -> int:
        """The size of a DT_HASH word: its section header says (lld writes 4 everywhere);
        without one, 8 on 64-bit s390 and Alpha as GNU ld writes them, else 4."""
        sec = next((s for s in self.secs if s.type == SHT_HASH and s.entsize in (4, 8)), None)
        if sec is not None:
            return sec.entsize
        return 8 if self.is64 and self.e_machine in (22, 0x9026) else 4

    def _sysv_hash_header(self) -> tuple[int, int]:
        """(nbucket, nchain) of the DT_HASH table; nchain is the number of symbols."""
        fmt = self.e + ("QQ" if self._hash_entry() == 8 else "II")
        nbucket, nchain = self.unpack(fmt, self.to_offset(self.tags[DT_HASH]))
        return nbucket, nchain

    def _gnu_hash_nsyms(self, off: int) -> tuple[int, int]:
        """(symbol count, table size) of a DT_GNU_HASH table: the highest bucket's chain ends
        at the last symbol."""
        nbuckets, symoffset, bloom_size, _shift = self.unpack(self.e + "IIII", off)
        if nbuckets > MAX_CHAIN or bloom_size > MAX_CHAIN:
            raise self.fail("absurd GNU hash table")
        buckets_off = off + 16 + bloom_size * self.wsize
        buckets = array("I", self.read(buckets_off, nbuckets * 4))
        if self.e != ("<" if struct.pack("=I", 1) == struct.pack("<I", 1) else ">"):
            buckets.byteswap()
        top = max(buckets, default=0)
        chains_off = buckets_off + nbuckets * 4
        if top < symoffset:
            return symoffset, chains_off - off
        index = top
        for _ in range(MAX_CHAIN):
            (h,) = self.unpack(self.e + "I", chains_off + (index - symoffset) * 4)
            if h & 1:
                return index + 1, chains_off + (index + 1 - symoffset) * 4 - off
            index += 1
        raise self.fail("GNU hash chain does not end")

    def symbol_names_in(self, lo: int, hi: int) -> bool | None:
        """Whether some dynamic symbol's name starts within DT_STRTAB + [lo, hi] (None when the
        symbols cannot be counted). The st_name column is kept as bytes and searched for the
        values' high three bytes: a few searches in C, never a Python loop over the symbols."""
        column = self._name_column()
        if column is None:
            return None
        order: Literal["little", "big"] = "little" if self.e == "<" else "big"
        at = 1 if order == "little" else 0  # where the high three bytes sit in each word
        for prefix in range(lo >> 8, (hi >> 8) + 1):
            pattern = prefix.to_bytes(3, order)
            pos = column.find(pattern)
            while pos >= 0:
                if pos % 4 == at and lo <= int.from_bytes(column[pos - at:pos - at + 4], order) <= hi:
                    return True
                pos = column.find(pattern, pos + 1)
        return False

    def _name_column(self) -> bytes | None:
        if self._names is not None:
            return self._names
        n = self.nsyms()
        if n is None or DT_SYMTAB not in self.tags:
            return None
        syment = self.tags.get(DT_SYMENT, 24 if self.is64 else 16)
        if syment < (24 if self.is64 else 16) or syment % 4:
            raise self.fail(f"bad DT_SYMENT {syment}")
        off = self.to_offset(self.tags[DT_SYMTAB])
        per_chunk = max(1, CHUNK // syment)
        parts = []
        for first in range(0, n, per_chunk):
            count = min(per_chunk, n - first)
            chunk = self.src.read_at(off + first * syment, count * syment)
            parts.append(memoryview(chunk).cast("I")[::syment // 4].tobytes())  # st_name is each entry's first word
        self._names = b"".join(parts)
        return self._names

    def _walk(self, tag: int, num_tag: int, head: str, aux: str, next_field: int, aux_field: int,
              cnt_field: int) -> list[tuple[int, tuple[int, ...], list[tuple[int, tuple[int, ...]]]]]:
        """The records of a version table (needs or definitions), each with its aux records:
        [(offset, fields, [(aux offset, aux fields)])]."""
        if tag not in self.tags:
            return []
        start = self.to_offset(self.tags[tag])
        limit = self.tags.get(num_tag, MAX_VERSION_RECORDS)
        out = []
        off = start
        for _ in range(min(limit, MAX_VERSION_RECORDS)):
            rec = self.unpack(self.e + head, off)
            auxes = []
            a = off + rec[aux_field]
            for _ in range(min(rec[cnt_field], MAX_VERSION_RECORDS)):
                fields = self.unpack(self.e + aux, a)
                auxes.append((a, fields))
                if fields[-1] == 0:
                    break
                a += fields[-1]
            out.append((off, rec, auxes))
            if rec[next_field] == 0:
                break
            off += rec[next_field]
        return out

    def verneed(self) -> list[tuple[int, tuple[int, ...], list[tuple[int, tuple[int, ...]]]]]:
        # Elf_Verneed: vn_version, vn_cnt, vn_file, vn_aux, vn_next; Elf_Vernaux: hash, flags, other, name, next.
        if self._verneed is None:
            self._verneed = self._walk(DT_VERNEED, DT_VERNEEDNUM, "HHIII", "IHHII", 4, 3, 1)
        return self._verneed

    def verdef(self) -> list[tuple[int, tuple[int, ...], list[tuple[int, tuple[int, ...]]]]]:
        # Elf_Verdef: version, flags, ndx, cnt, hash, aux, next; Elf_Verdaux: name, next.
        if self._verdef is None:
            self._verdef = self._walk(DT_VERDEF, DT_VERDEFNUM, "HHHHIII", "II", 6, 5, 3)
        return self._verdef

    def unknown_strtab_users(self) -> bool:
        """A section other than the known kinds names .dynstr as its string table (or holds the
        section names): references we cannot enumerate, so no byte of it is reused."""
        if self.dynstr_sec is None:
            return False
        if self.dynstr_sec == self.e_shstrndx:
            return True
        known = {SHT_DYNSYM, SHT_DYNAMIC, SHT_GNU_VERNEED, SHT_GNU_VERDEF}
        return any(s.link == self.dynstr_sec and s.type not in known for s in self.secs)

    def table_extent(self, tag: int) -> int | None:
        """The size of the table a dynamic entry points at, when it can be known."""
        if tag == DT_STRTAB:
            return self.strsz
        n = self.nsyms()
        if tag == DT_SYMTAB:
            return None if n is None else n * self.tags.get(DT_SYMENT, 24 if self.is64 else 16)
        if tag == DT_VERSYM:
            return None if n is None else n * 2
        if tag == DT_HASH:
            # nchain is the symbol count: the word size that reads it back is the right one
            start = self.to_offset(self.tags[tag])
            for size in dict.fromkeys((self._hash_entry(), 4, 8)):
                nbucket, nchain = self.unpack(self.e + ("QQ" if size == 8 else "II"), start)
                extent = (2 + nbucket + nchain) * size
                if (n is None or nchain == n) and start + extent <= self.src.size:
                    return extent
            return None
        if tag == DT_GNU_HASH:
            return self._gnu_hash_nsyms(self.to_offset(self.tags[tag]))[1]
        records = self.verneed() if tag == DT_VERNEED else self.verdef() if tag == DT_VERDEF else None
        if not records:
            return None
        start = self.to_offset(self.tags[tag])
        aux_size = 16 if tag == DT_VERNEED else 8
        ends = [off + (16 if tag == DT_VERNEED else 20) for off, _r, _a in records]
        ends += [a + aux_size for _o, _r, auxes in records for a, _f in auxes]
        return max(ends) - start


# -- what the edits ask for ------------------------------------------------------------------


class _Ent:
    """One entry of the new dynamic table. `text` is the new string of a string entry whose
    string changes (`val` is then assigned when the string is placed), None when the entry
    keeps its value; `origin` is its index in the old table (None: a new entry)."""

    __slots__ = ("origin", "tag", "text", "val")

    def __init__(self, tag: int, val: int, text: bytes | None, origin: int | None) -> None:
        self.tag, self.val, self.text, self.origin = tag, val, text, origin


class _Want:
    """What the edits ask for: the new dynamic entries, the version needs that must name a
    renamed library ((file offset of a vn_file field, new name)), and the changes."""

    __slots__ = ("changes", "entries", "expect", "vn_files")

    def __init__(self) -> None:
        self.entries: list[_Ent] = []
        self.vn_files: list[tuple[int, bytes]] = []
        self.changes: list[Change] = []
        self.expect: dict[str, object] = {}  # what elf.read_elf must read back


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "surrogateescape")


def _enc(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


RPATH_OPS = ("set-rpath", "add-rpath", "remove-rpath", "replace-rpath", "remove-all-rpaths")


def _edit_path(entries: list[bytes] | None, ed: Edit) -> list[bytes] | None:
    """The RPATH/RUNPATH entries after one edit, or None when it changes nothing."""
    before = list(entries or [])
    if ed.op == "set-rpath":
        after = _enc(ed.arg).split(b":") if ed.arg else []
    elif ed.op == "add-rpath":
        after = before + ([] if _enc(ed.arg) in before else [_enc(ed.arg)])
    elif ed.op == "remove-rpath":
        after = [e for e in before if e != _enc(ed.arg)]
    elif ed.op == "replace-rpath":
        after = [_enc(ed.new) if e == _enc(ed.arg) else e for e in before]
    else:
        after = []
    if after != before:
        return after
    # an empty list asked for, on a file whose tag is present but empty: the tag goes
    if ed.op in ("set-rpath", "remove-all-rpaths") and entries is not None and not after:
        return after
    return None


def _wanted(elf: _Elf, edits: Sequence[Edit]) -> _Want:
    """Apply the edits, in order, to what the file says; the entries that result."""
    dyn = elf.dyn
    needed = [(i, elf.string(v)) for i, (t, v) in enumerate(dyn) if t == DT_NEEDED]
    soname_at = [i for i, (t, _v) in enumerate(dyn) if t == DT_SONAME]
    soname = elf.string(dyn[soname_at[-1]][1]) if soname_at else None
    old_path = {t: elf.string(v) for t, v in dyn if t in (DT_RPATH, DT_RUNPATH)}
    old_tags = [t for t, _v in dyn if t in (DT_RPATH, DT_RUNPATH)]
    # glibc reads DT_RUNPATH when both are present: the edits start from what it reads
    current = old_path.get(DT_RUNPATH, old_path.get(DT_RPATH))
    entries: list[bytes] | None = None if current is None else (current.split(b":") if current else [])
    touched = False
    tag_mode = "keep"
    names = [n for _i, n in needed]
    new_soname = soname
    for ed in edits:
        if ed.op in RPATH_OPS:
            after = _edit_path(entries, ed)
            if after is not None:
                entries, touched = after, True
        elif ed.op == "rpath-tag":
            if ed.arg not in ("keep", "rpath", "runpath"):
                raise EditError(f"{elf.name}: --rpath-tag takes keep, rpath or runpath, not {ed.arg!r}")
            tag_mode = ed.arg
        elif ed.op == "set-soname":
            if elf.e_type != ET_DYN:
                raise EditError(f"{elf.name}: an ET_EXEC executable takes no SONAME (not a shared library)")
            new_soname = _enc(ed.arg)
        elif ed.op == "replace-needed":
            names = [_enc(ed.new) if n == _enc(ed.arg) else n for n in names]
        elif ed.op in ("set-id", "change"):
            instead = "--set-soname" if ed.op == "set-id" else "--replace-needed"
            raise EditError(f"{elf.name}: --{ed.op} edits Mach-O files; for ELF use {instead}")
        else:
            raise EditError(f"{elf.name}: unknown edit {ed.op!r}")

    new_path = (b":".join(entries) if entries else None) if touched else current
    if new_path is None:
        tags: list[int] = []
    elif tag_mode == "rpath":
        tags = [DT_RPATH]
    elif tag_mode == "runpath":
        tags = [DT_RUNPATH]
    else:  # keep; a file with neither gets DT_RUNPATH, as patchelf gives it
        tags = sorted(set(old_tags), key=old_tags.index) or [DT_RUNPATH]

    want = _Want()
    out = want.entries
    renamed = {i: new for (i, _old), new in zip(needed, names)}
    last_needed = max(renamed, default=-1)
    slots = list(tags)
    anchor = -1  # new entries go after the last DT_NEEDED, SONAME, RPATH or RUNPATH
    for i, (t, v) in enumerate(dyn):
        if t == DT_NEEDED:
            new = renamed[i]
            out.append(_Ent(t, v, None if new == elf.string(v) else new, i))
        elif t == DT_SONAME:
            out.append(_Ent(t, v, None if new_soname == elf.string(v) else new_soname, i))
        elif t in (DT_RPATH, DT_RUNPATH):
            if not slots:
                continue  # removed
            tag = t if t in slots else slots[0]  # switched between RPATH and RUNPATH
            slots.remove(tag)
            out.append(_Ent(tag, v, None if new_path == old_path[t] else new_path, i))
        else:
            out.append(_Ent(t, v, None, i))
        if i <= last_needed or t in (DT_SONAME, DT_RPATH, DT_RUNPATH):
            anchor = len(out) - 1
    if new_soname is not None and soname is None:
        anchor += 1
        out.insert(anchor, _Ent(DT_SONAME, 0, new_soname, None))
    for tag in slots:
        anchor += 1
        out.insert(anchor, _Ent(tag, 0, new_path, None))

    # Version needs name the library file too, and glibc matches them against DT_NEEDED.
    renames = {old: new for (_i, old), new in zip(needed, names) if old != new}
    if renames:
        for off, rec, _aux in elf.verneed():
            name = elf.string(rec[2])
            if name in renames:
                want.vn_files.append((off + 4, renames[name]))

    want.expect = {"needed": tuple(_text(n) for n in names), "soname": _text(new_soname),
                   "rpath": _text(new_path) if DT_RPATH in tags else None,
                   "runpath": _text(new_path) if DT_RUNPATH in tags else None}
    ch = want.changes
    ch += [Change("needed", _text(old), _text(new)) for (_i, old), new in zip(needed, names) if old != new]
    if new_soname != soname:
        ch.append(Change("soname", _text(soname), _text(new_soname)))
    for t, what in ((DT_RPATH, "rpath"), (DT_RUNPATH, "runpath")):
        was, now = old_path.get(t), (new_path if t in tags else None)
        if was != now:
            ch.append(Change(what, _text(was), _text(now)))
    return want


# -- placing the strings ----------------------------------------------------------------------


class _Strings:
    """Where the new strings go: `overlays` (offset in .dynstr, bytes) over the strings they
    replace, `appended` after the old DT_STRSZ bytes (in a copy of the table), `vn_writes`
    (file offset of a vn_file field, new value)."""

    __slots__ = ("appended", "overlays", "vn_writes")

    def __init__(self) -> None:
        self.overlays: list[tuple[int, bytes]] = []
        self.appended = bytearray()
        self.vn_writes: list[tuple[int, int]] = []


def _place_strings(elf: _Elf, want: _Want) -> _Strings:
    out = _Strings()
    takers: dict[bytes, list[_Ent]] = {}
    for ent in want.entries:
        if ent.text is not None:
            takers.setdefault(ent.text, []).append(ent)
    vn_takers: dict[bytes, list[int]] = {}
    for field, name in want.vn_files:
        vn_takers.setdefault(name, []).append(field)
    refs = _version_references(elf)
    vn_now = {field: val for field, val in refs if field >= 0}
    for text, ents in takers.items():
        fields = vn_takers.get(text, [])
        spot = _reusable(elf, want, text, ents, fields, refs)
        if spot is not None:
            old_len = len(elf.string(spot))
            out.overlays.append((spot, text + b"\0" * (old_len - len(text) + 1)))
        else:
            spot = elf.strsz + len(out.appended)
            out.appended += text + b"\0"
        for ent in ents:
            ent.val = spot
        out.vn_writes += [(f, spot) for f in fields if vn_now.get(f) != spot]
    return out


def _version_references(elf: _Elf) -> list[tuple[int, int]]:
    """The references into .dynstr from the version tables, (field offset, value): a version
    need's file name carries its field's file offset (a renamed library rewrites it), the
    version names -1."""
    refs: list[tuple[int, int]] = []
    for off, rec, auxes in elf.verneed():
        refs.append((off + 4, rec[2]))
        refs += [(-1, f[3]) for _a, f in auxes]
    for _off, _rec, auxes in elf.verdef():
        refs += [(-1, f[0]) for _a, f in auxes]
    return refs


def _reusable(elf: _Elf, want: _Want, text: bytes, ents: list[_Ent], fields: list[int],
              refs: list[tuple[int, int]]) -> int | None:
    """The offset of an old string that `text` may be written over: an entry taking the text
    had it, it is at least as long, and every reference into its bytes (the linker shares
    string tails) is one being rewritten to this same text."""
    if elf.unknown_strtab_users():
        return None
    if elf.symbol_names_in(0, 0) is None:
        return None
    survivors = {e.origin: e for e in want.entries if e.origin is not None}
    for ent in ents:
        if ent.origin is None:
            continue
        old_off = elf.dyn[ent.origin][1]
        old_len = len(elf.string(old_off))
        if len(text) > old_len:
            continue
        lo, hi = elf.run_start(old_off), old_off + old_len
        ok = all(not (t in STRING_TAGS and lo <= v <= hi) or i not in survivors
                 or (survivors[i] in ents and v == old_off) for i, (t, v) in enumerate(elf.dyn))
        ok = ok and all(not lo <= v <= hi or (field in fields and v == old_off) for field, v in refs)
        ok = ok and not elf.symbol_names_in(lo, hi)
        if ok:
            return old_off
    return None


# -- the plan ------------------------------------------------------------------------------------


def plan_patch(src: ByteSource, edits: Sequence[Edit]) -> BytePatch:
    """The bytes to write for `edits` (applied in order) to the ELF file `src`.

    FormatError for a file that is not a dynamically linked ELF executable or library, or is
    malformed; EditError for an edit that cannot be made. The writes keep the file loadable
    after every one of them, and the last one switches to the new state (module docstring).
    """
    elf = _Elf(src)
    want = _wanted(elf, edits)
    if not want.changes:
        return BytePatch((), src.size, "unchanged", ())
    strings = _place_strings(elf, want)
    changes = tuple(want.changes)
    patch = None
    if not strings.appended:
        write = _in_place_write(elf, strings, want.entries)
        if write is not None:
            patch = BytePatch((write,), src.size, "in-place", changes)
    if patch is None:
        writes, size = _Grow(elf, strings, want.entries).plan()
        patch = BytePatch(writes, size, "grown", changes)
    _read_back(src, patch, want)
    return patch


def _read_back(src: ByteSource, patch: BytePatch, want: _Want) -> None:
    """Read the planned file with the reader every other part uses (elf.read_elf) and check
    it says what the edits asked for and, besides, what the old file said: a plan that would
    not is a bug, refused before anything is written."""
    from rpathfix.elf import read_elf
    from rpathfix.patch import PatchedSource

    before = read_elf(src)._asdict()
    try:
        after = read_elf(PatchedSource(src, patch))._asdict()
    except FormatError as e:
        raise EditError(f"{src.name}: the planned file would not read back ({e.reason}); nothing written") from None
    wrong = {k: after[k] for k in after if after[k] != want.expect.get(k, before[k])}
    if wrong:
        raise EditError(f"{src.name}: the planned file would read back differently ({wrong}); nothing written")


def _pack_dynamic(elf: _Elf, entries: list[_Ent], base_addr: int, slots: int) -> bytes:
    """The dynamic table at `base_addr`, padded with DT_NULL to `slots` entries (at least
    one). A MIPS DT_MIPS_RLD_MAP_REL is relative to its own entry's address: it follows it."""
    out = bytearray()
    mask = (1 << (8 * elf.wsize)) - 1
    for k, e in enumerate(entries):
        val = e.val
        if e.tag == DT_MIPS_RLD_MAP_REL and elf.e_machine == 8 and e.origin is not None:
            moved = (elf.dyn_seg.vaddr + e.origin * elf.dynsize) - (base_addr + k * elf.dynsize)
            val = (val + moved) & mask
        out += struct.pack(elf.dyn_fmt, e.tag, val)
    return bytes(out) + b"\0" * (max(slots, len(entries) + 1) * elf.dynsize - len(out))


def _in_place_write(elf: _Elf, strings: _Strings, entries: list[_Ent]) -> tuple[int, bytes] | None:
    """The whole edit as one write inside one page, when it can be (else None: grow)."""
    if len(entries) + 1 > elf.dyn_slots:
        return None
    pieces = [(elf.strtab_off + off, data) for off, data in strings.overlays]
    seg = elf.dyn_seg
    old = elf.src.read_at(seg.offset, elf.dyn_slots * elf.dynsize)
    new = _pack_dynamic(elf, entries, seg.vaddr, elf.dyn_slots)
    diff = [i for i in range(len(old)) if old[i] != new[i]]
    if diff:
        pieces.append((seg.offset + diff[0], new[diff[0]:diff[-1] + 1]))
    pieces += [(field, struct.pack(elf.e + "I", value)) for field, value in strings.vn_writes]
    if not pieces:
        return None
    lo = min(o for o, _d in pieces)
    hi = max(o + len(d) for o, d in pieces)
    if lo // PAGE != (hi - 1) // PAGE:
        return None
    buf = bytearray(elf.src.read_at(lo, hi - lo))
    for off, data in pieces:
        buf[off - lo: off - lo + len(data)] = data
    return lo, bytes(buf)


class _Grow:
    """The grown layout: new copies in new space at the end of the file, mapped by a new or
    an extended PT_LOAD; the ELF header and program header table switch to them last.

    The new space is a list of appending writes, not one buffer: a table is read once and
    goes into the patch as read, with its changed bytes as small writes over it (later
    writes win), so a 4.5 MB .dynstr costs 4.5 MB of memory, not a multiple of it."""

    def __init__(self, elf: _Elf, strings: _Strings, entries: list[_Ent]) -> None:
        self.elf = elf
        self.strings = strings
        self.entries = entries
        self.segs = [s.copy(elf.is64) for s in elf.segs]
        self.secs = [_Sec(s.fields()) for s in elf.secs]
        self.start = _align(elf.src.size, 16)  # where the new space begins
        self.cur = self.start  # where the next piece of it goes
        self.pieces: list[tuple[int, bytes]] = []
        self.max_align = max(max(s.align for s in elf.loads), 1)
        self.mapped = self.start  # where the mapped part of the new space begins
        self.base = 0  # the address of self.mapped
        self.shifts: dict[int, int] = {}  # section index -> how far it moved in memory
        # symbol tables to copy, their symbols in moved sections: (index, bytes, [(entry offset, section)])
        self.symbol_tables: list[tuple[int, bytes, list[tuple[int, int]]]] = []
        self.unmapped: dict[int, int] = {}  # non-allocated table copies: section index -> file offset

    def reserve(self, size: int, align: int = 8, congruent_to: int = 0) -> tuple[int, int]:
        """Room for `size` bytes whose offset is congruent to `congruent_to` modulo `align`;
        (its offset, its address)."""
        off = self.cur + (congruent_to - self.cur) % align
        self.cur = off + size
        return off, self.base + (off - self.mapped)

    def put(self, data: bytes, align: int = 8) -> tuple[int, int]:
        off, addr = self.reserve(len(data), align)
        self.pieces.append((off, data))
        return off, addr

    def plan(self) -> tuple[tuple[tuple[int, bytes], ...], int]:
        elf = self.elf
        last = max(elf.loads, key=lambda s: s.vaddr)
        last_end = last.offset + last.filesz
        # Extend the last PT_LOAD when it ends the file: no .bss, writable if it must hold
        # .dynamic, nothing after it but padding or a section header table (a file grown by
        # us or by patchelf).
        extend = (last.filesz == last.memsz and (bool(last.flags & PF_W) or not self.dynamic_writable())
                  and last_end == max(s.offset + s.filesz for s in elf.loads)
                  and last.vaddr + last.memsz == max(s.vaddr + s.memsz for s in elf.loads)
                  and last_end <= elf.src.size and self.start - last_end < self.max_align
                  and not any(s.type not in (SHT_NULL, SHT_NOBITS) and s.size and s.offset >= last_end
                              and s.flags & SHF_ALLOC for s in elf.secs))
        block = None if extend else _block_to_move(elf)
        # Copies of non-allocated symbol tables (.symtab) go first, before the mapped part: a
        # later edit then finds the mapped part at the end of the file and extends it.
        self.find_symbols(self.moving_sections(block))
        for i, _table, _fixes in self.symbol_tables:
            if not elf.secs[i].flags & SHF_ALLOC:
                self.unmapped[i], _addr = self.reserve(elf.secs[i].size)
        self.mapped = self.cur = _align(self.cur, 16)
        if extend:
            self.base = last.vaddr + (self.mapped - last.offset)
            phnum = elf.e_phnum
        else:
            top = max(s.vaddr + s.memsz for s in elf.loads)
            self.base = _align(top, max(self.max_align, elf.page)) + self.mapped % self.max_align
            phnum = elf.e_phnum + 1
            self.move_block(block)
        self.copy_dynstr()
        self.copy_verneed()
        self.write_dynamic()
        end = self.cur
        if extend:
            for s in self.segs:
                if s.type == PT_LOAD and (s.offset, s.vaddr) == (last.offset, last.vaddr):
                    s.filesz = s.memsz = end - s.offset
        else:
            # writable when the dynamic table it now holds was (ld.so relocates it in place,
            # except where it is read-only, as on MIPS)
            flags = PF_R | (PF_W if self.dynamic_writable() else 0)
            self.segs.append(_Seg((PT_LOAD, flags, self.mapped, self.base, self.base, end - self.mapped,
                                   end - self.mapped, self.max_align), True))
            for s in self.segs:
                if s.type == PT_PHDR:
                    s.filesz = s.memsz = phnum * elf.e_phentsize
        # After the mapped space: the section header table.
        shoff = elf.e_shoff
        if self.secs:
            sht = bytearray(elf.sht_raw)
            for i, sec in enumerate(self.secs):
                if sec.fields() != elf.secs[i].fields():
                    struct.pack_into(elf.sh_fmt, sht, i * elf.e_shentsize, *sec.fields())
            shoff, _addr = self.put(bytes(sht))
        return tuple(self.pieces + self.switch(shoff, phnum)), self.cur

    def switch(self, shoff: int, phnum: int) -> list[tuple[int, bytes]]:
        """The ELF header and the program header table: one write when both lie in the first
        page (always, for what linkers make), else two (and patch.py then writes a copy)."""
        elf = self.elf
        ehdr = bytearray(elf.src.read_at(0, elf.ehsize))
        fields = list(struct.unpack_from(elf.ehdr_fmt, ehdr, 16))
        fields[5], fields[9] = shoff, phnum
        struct.pack_into(elf.ehdr_fmt, ehdr, 16, *fields)
        pht = bytearray(phnum * elf.e_phentsize)
        pht[:len(elf.pht_raw)] = elf.pht_raw
        for i, s in enumerate(self.segs):
            struct.pack_into(elf.ph_fmt, pht, i * elf.e_phentsize, *s.fields(elf.is64))
        pht_end = elf.e_phoff + len(pht)
        if elf.e_phoff >= elf.ehsize and pht_end <= PAGE:
            gap = elf.src.read_at(elf.ehsize, elf.e_phoff - elf.ehsize)
            return [(0, bytes(ehdr) + gap + bytes(pht))]
        return [(0, bytes(ehdr)), (elf.e_phoff, bytes(pht))]

    def dynamic_writable(self) -> bool:
        seg = self.elf.dyn_seg
        return any(s.flags & PF_W for s in self.elf.loads if s.vaddr <= seg.vaddr < s.vaddr + s.memsz)

    def moved(self, index: int | None, d_addr: int) -> None:
        """Note that section `index` now lies `d_addr` bytes higher in memory (its symbols follow)."""
        if index is not None and d_addr and self.elf.secs[index].flags & SHF_ALLOC:
            self.shifts[index] = self.shifts.get(index, 0) + d_addr

    def moving_sections(self, block: tuple[int, int, int] | None) -> set[int]:
        """The allocated sections this plan moves: the block after the program headers, the
        copied .dynstr and version needs, and .dynamic (always)."""
        elf = self.elf
        out = {elf.dynamic_sec} if elf.dynamic_sec is not None else set()
        if elf.dynstr_sec is not None and (self.strings.overlays or self.strings.appended):
            out.add(elf.dynstr_sec)
        if self.strings.vn_writes and DT_VERNEED in elf.tags:
            vn_start = elf.to_offset(elf.tags[DT_VERNEED])
            out |= {i for i, sec in enumerate(elf.secs) if sec.type == SHT_GNU_VERNEED and sec.offset == vn_start}
        if block is not None:
            lo, hi, _ = block
            out |= {i for i, sec in enumerate(elf.secs) if sec.type not in (SHT_NULL, SHT_NOBITS) and sec.size
                    and lo <= sec.offset and sec.offset + sec.size <= hi}
        return {i for i in out if elf.secs[i].flags & SHF_ALLOC}

    def find_symbols(self, moving: set[int]) -> None:
        """The symbol tables with symbols defined in a moving section (_DYNAMIC in .dynamic,
        __abi_tag in a note): they are copied, with those symbols' values moved."""
        elf = self.elf
        if not moving:
            return
        for i, sec in enumerate(elf.secs):
            if sec.type in (SHT_SYMTAB, SHT_DYNSYM) and sec.size:
                table = elf.read(sec.offset, sec.size)
                fixes = _symbols_in(elf, table, sec.entsize, moving)
                if fixes:
                    self.symbol_tables.append((i, table, fixes))

    def move_block(self, block: tuple[int, int, int] | None) -> None:
        """Copy what follows the program header table to the new space, with every pointer to
        it, so that the table can take one more entry."""
        elf = self.elf
        holder = next((s for s in elf.loads if s.offset <= elf.e_phoff < s.offset + s.filesz), None)
        need_end = elf.e_phoff + (elf.e_phnum + 1) * elf.e_phentsize
        if holder is None or need_end > holder.offset + holder.filesz:
            raise EditError(f"{elf.name}: the program header table cannot grow inside its segment")
        if block is None:
            return
        lo, hi, align = block
        if not holder.offset <= lo < hi <= holder.offset + holder.filesz:
            raise EditError(f"{elf.name}: what follows the program headers spans two segments")
        off, addr = self.reserve(hi - lo, min(align, self.max_align), lo)
        self.pieces.append((off, elf.read(lo, hi - lo)))
        d_off = off - lo
        old_addr = holder.vaddr + (lo - holder.offset)
        d_addr = addr - old_addr
        for s in self.segs:
            if s.type not in (PT_LOAD, PT_PHDR) and s.filesz and lo <= s.offset and s.offset + s.filesz <= hi:
                s.offset += d_off
                s.vaddr += d_addr
                s.paddr += d_addr
        for i, sec in enumerate(self.secs):
            if sec.type not in (SHT_NULL, SHT_NOBITS) and sec.size and lo <= sec.offset and sec.offset + sec.size <= hi:
                sec.offset += d_off
                if sec.flags & SHF_ALLOC:
                    sec.addr += d_addr
                    self.moved(i, d_addr)
        for e in self.entries:
            if e.tag in ADDRESS_TAGS and old_addr <= e.val < old_addr + (hi - lo):
                if e.tag not in MOVABLE_TABLE_TAGS:
                    raise EditError(f"{elf.name}: cannot make room for a program header: dynamic tag "
                                    f"{e.tag:#x} points into the bytes that must move")
                e.val += d_addr

    def copy_dynstr(self) -> None:
        """A copy of .dynstr with the rewritten strings over their old bytes and the new
        strings after the old ones: every offset into it stays valid."""
        elf, st = self.elf, self.strings
        if not st.overlays and not st.appended:
            return
        size = elf.strsz + len(st.appended)
        off, addr = self.reserve(size)
        self.pieces.append((off, elf.read(elf.strtab_off, elf.strsz)))
        self.pieces += [(off + rel, data) for rel, data in st.overlays]
        if st.appended:
            self.pieces.append((off + elf.strsz, bytes(st.appended)))
        for e in self.entries:
            if e.tag == DT_STRTAB:
                e.val = addr
            elif e.tag == DT_STRSZ:
                e.val = size
        if elf.dynstr_sec is not None:
            sec = self.secs[elf.dynstr_sec]
            self.moved(elf.dynstr_sec, addr - sec.addr)
            sec.offset, sec.addr, sec.size = off, addr, size

    def copy_verneed(self) -> None:
        """A copy of the version needs when one must name a renamed library by a new string."""
        elf = self.elf
        if not self.strings.vn_writes:
            return
        vn_addr = elf.tags[DT_VERNEED]
        vn_start = elf.to_offset(vn_addr)
        extent = elf.table_extent(DT_VERNEED)
        if extent is None:
            raise EditError(f"{elf.name}: cannot find the extent of the version needs")
        vn = bytearray(elf.read(vn_start, extent))
        for field, value in self.strings.vn_writes:
            struct.pack_into(elf.e + "I", vn, field - vn_start, value)
        off, addr = self.put(bytes(vn))
        for e in self.entries:
            if e.tag == DT_VERNEED:
                e.val = addr
        for i, sec in enumerate(self.secs):
            if sec.type == SHT_GNU_VERNEED and elf.secs[i].offset == vn_start:
                self.moved(i, addr - sec.addr)
                sec.offset, sec.addr = off, addr

    def write_dynamic(self) -> None:
        """The new dynamic table (always: its pointers changed), with PT_DYNAMIC and the
        .dynamic section header pointing at it; then the symbols that follow moved sections."""
        elf = self.elf
        size = (len(self.entries) + 1) * elf.dynsize
        off, addr = self.reserve(size)  # filled in last: fix_symbols may move DT_SYMTAB
        for s in self.segs:
            if s.type == PT_DYNAMIC:
                s.offset, s.vaddr, s.paddr = off, addr, addr
                s.filesz = s.memsz = size
        if elf.dynamic_sec is not None:
            sec = self.secs[elf.dynamic_sec]
            self.moved(elf.dynamic_sec, addr - sec.addr)
            sec.offset, sec.addr, sec.size = off, addr, size
        self.fix_symbols()
        self.pieces.append((off, _pack_dynamic(elf, self.entries, addr, 0)))

    def fix_symbols(self) -> None:
        """Write the copies of the symbol tables find_symbols chose, with the values of the
        symbols in moved sections moved: .dynsym into the mapped space (DT_SYMTAB follows),
        .symtab into the room reserved before it."""
        elf = self.elf
        value_fmt = elf.e + ("Q" if elf.is64 else "I")
        value_at = 8 if elf.is64 else 4
        mask = (1 << (8 * elf.wsize)) - 1
        for i, table, fixes in self.symbol_tables:
            sec = elf.secs[i]
            writes = [(0, table)]
            for at, index in fixes:
                (value,) = struct.unpack_from(value_fmt, table, at + value_at)
                value = (value + self.shifts.get(index, 0)) & mask
                writes.append((at + value_at, struct.pack(value_fmt, value)))
            if sec.flags & SHF_ALLOC:
                off, addr = self.reserve(sec.size)
                for e in self.entries:
                    if e.tag == DT_SYMTAB and e.val == sec.addr:
                        e.val = addr
                self.secs[i].offset, self.secs[i].addr = off, addr
            else:
                off = self.unmapped[i]
                self.secs[i].offset = off
            self.pieces += [(off + rel, data) for rel, data in writes]


def _symbols_in(elf: _Elf, table: bytes, entsize: int, sections: set[int]) -> list[tuple[int, int]]:
    """(byte offset in the table, section index) of every symbol defined in one of
    `sections`. The indices are found as byte patterns in the st_shndx column, so a million
    symbols cost a few searches in C, not a Python loop over each."""
    entsize = entsize or (24 if elf.is64 else 16)
    if entsize % 2 or entsize < (24 if elf.is64 else 16):
        raise elf.fail(f"bad symbol table entry size {entsize}")
    count = len(table) // entsize
    shndx_at = 6 if elf.is64 else 14
    column = memoryview(table)[:count * entsize].cast("H")[shndx_at // 2::entsize // 2].tobytes()
    out = []
    for index in sections:
        pattern = struct.pack(elf.e + "H", index)
        pos = column.find(pattern)
        while pos >= 0:
            if pos % 2 == 0:
                out.append((pos // 2 * entsize, index))
            pos = column.find(pattern, pos + 1)
    return sorted(out)


def _objects(elf: _Elf) -> list[_Obj]:
    """Everything that may stand right after the program header table: sections, the
    segments the loader reads, the tables dynamic entries point at."""
    objs: list[_Obj] = []
    interp = next((s for s in elf.segs if s.type == PT_INTERP), None)
    for i, s in enumerate(elf.secs):
        if i == 0 or s.type in (SHT_NULL, SHT_NOBITS) or not s.size:
            continue
        movable = (s.type in MOVABLE_SECTION_TYPES or (s.type == SHT_STRTAB and i == elf.dynstr_sec)
                   or (s.type == SHT_PROGBITS and interp is not None and s.offset == interp.offset))
        objs.append(_Obj(s.offset, s.size, f"section {i} (type {s.type:#x})", movable, s.addralign))
    for seg in elf.segs:
        if seg.type not in (PT_LOAD, PT_PHDR) and seg.filesz:
            objs.append(_Obj(seg.offset, seg.filesz, f"a segment of type {seg.type:#x}",
                             seg.type in MOVABLE_SEGMENT_TYPES, seg.align))
    for tag in sorted(MOVABLE_TABLE_TAGS | {7, 17, 23, 36}):  # and RELA, REL, JMPREL, RELR
        if tag in elf.tags:
            extent = elf.table_extent(tag) if tag in MOVABLE_TABLE_TAGS else None
            objs.append(_Obj(elf.to_offset(elf.tags[tag]), extent or 1, f"the table of dynamic tag {tag:#x}",
                             extent is not None, 8))
    return objs


def _block_to_move(elf: _Elf) -> tuple[int, int, int] | None:
    """The bytes after the program header table that must move for it to take one more
    entry: (start, end, alignment), or None when those bytes are free already."""
    need_lo = elf.e_phoff + elf.e_phnum * elf.e_phentsize
    hi = need_lo + elf.e_phentsize
    objs = _objects(elf)
    inside: list[_Obj] = []
    grew = True
    while grew:  # whatever overlaps moves whole, and may overlap more
        grew = False
        for o in objs:
            if o in inside or not (o.off < hi and o.end > need_lo):
                continue
            if not o.movable:
                raise EditError(f"{elf.name}: cannot make room for one more program header: {o.what} at "
                                f"offset {o.off:#x} follows the table and cannot move")
            if o.off < need_lo:
                raise EditError(f"{elf.name}: {o.what} overlaps the program header table")
            inside.append(o)
            if o.end > hi:
                hi, grew = o.end, True
    if not inside:
        if not elf.secs and any(elf.src.read_at(need_lo, elf.e_phentsize)):
            raise EditError(f"{elf.name}: cannot make room for one more program header: bytes of unknown "
                            f"use follow the table (and no section headers say what they are)")
        return None
    lo = min(o.off for o in inside)
    hi = max(o.end for o in inside)
    align = 1
    for o in inside:
        align = max(align, o.align)
    return lo, hi, min(max(align, 8), PAGE)


__all__ = ["plan_patch"]
