"""ELF dynamic symbols and symbol versions: what ld.so's symbol lookup reads, read lazily.

The reader answers the two questions the binding model (bind_glibc) asks of an object:

- which symbols does it leave undefined (with their binding, type and required version),
  and which versions does it require from which file (.gnu.version_r, DT_VERNEED);
- does it define symbol S in a way that satisfies a reference with version V: a lookup
  through the object's own DT_GNU_HASH (or DT_HASH) table, judged as glibc's check_match
  judges it (elf/dl-lookup.c:59-163 in glibc 2.36), so a 500 MB library costs a few
  reads per lookup and its symbol table is never turned into Python objects.

Everything is located through the dynamic segment, as ld.so locates it (stripped files
have no section headers): DT_SYMTAB, DT_STRTAB, DT_VERSYM (.gnu.version), DT_VERNEED
(.gnu.version_r), DT_VERDEF (.gnu.version_d) and the hash tables, mapped to file offsets
through the PT_LOAD segments.

Undefined symbols are enumerated in bounded chunks. With DT_GNU_HASH only the symbols
below `symoffset` are read: the GNU hash table covers every symbol from `symoffset` on,
and linkers (ld.bfd, gold, lld, mold) hash only defined symbols, so every undefined
dynamic symbol lies below it (tests/test_elf_symbols.py checks that against readelf on
gcc- and zig-built objects). With only DT_HASH, nchain is the symbol count and all of
them are read. An object with neither has no symbols ld.so could look up and none the
model enumerates.
"""

from __future__ import annotations

import struct
import sys
from array import array

from rpathfix.elf import MAX_CHAIN, _cstring, _dynamic_tags, _last, _Reader, _to_offset
from rpathfix.elf import gnu_hash as gnu_hash
from rpathfix.elf import sysv_hash as sysv_hash
from rpathfix.errors import FormatError
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterator

    from rpathfix.source import ByteSource

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_PLTRELSZ, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_RELA, DT_RELASZ = 2, 4, 5, 6, 7, 8
DT_STRSZ, DT_SYMENT, DT_REL, DT_RELSZ, DT_PLTREL, DT_JMPREL = 10, 11, 17, 18, 20, 23
DT_BIND_NOW, DT_FLAGS = 24, 30
DT_RELACOUNT, DT_RELCOUNT = 0x6FFFFFF9, 0x6FFFFFFA
DT_GNU_HASH = 0x6FFFFEF5
DT_VERSYM, DT_VERDEF, DT_VERNEED = 0x6FFFFFF0, 0x6FFFFFFC, 0x6FFFFFFE
DT_FLAGS_1 = 0x6FFFFFFB
DF_BIND_NOW, DF_1_NOW = 0x8, 0x1

STB_LOCAL, STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE = 0, 1, 2, 10
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE, STT_COMMON, STT_TLS = 0, 1, 2, 3, 4, 5, 6
STT_GNU_IFUNC = 10
STV_DEFAULT, STV_INTERNAL, STV_HIDDEN, STV_PROTECTED = 0, 1, 2, 3
SHN_UNDEF, SHN_ABS = 0, 0xFFF1
VER_FLG_BASE, VER_FLG_WEAK = 0x1, 0x2

# R_<machine>_COPY by e_machine (elf.h): x86_64, i386, aarch64, arm, ppc, ppc64, s390, riscv.
COPY_RELOCATIONS = {62: 5, 3: 5, 183: 1024, 40: 20, 20: 19, 21: 19, 22: 9, 243: 4}

# dl-lookup.c:84-86: the symbol types that can be definitions.
ALLOWED_STT = frozenset({STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_COMMON, STT_TLS, STT_GNU_IFUNC})
BIND_NAMES = {STB_LOCAL: "LOCAL", STB_GLOBAL: "GLOBAL", STB_WEAK: "WEAK", STB_GNU_UNIQUE: "UNIQUE"}
TYPE_NAMES = {STT_NOTYPE: "NOTYPE", STT_OBJECT: "OBJECT", STT_FUNC: "FUNC", STT_COMMON: "COMMON",
              STT_TLS: "TLS", STT_GNU_IFUNC: "IFUNC", STT_SECTION: "SECTION", STT_FILE: "FILE"}

MAX_PHNUM = 4096
MAX_VERSION_ENTRIES = 1 << 16  # verneed/vernaux/verdef records walked before we call it a loop
SYM_CHUNK = 4096  # symbol entries per read while enumerating
NAME_WINDOW = 1 << 16  # names whose offsets lie this close are read in one go
NAME_SLACK = 256  # bytes read past the last name start of a window
MAX_REFERENCES = 1 << 20  # undefined symbols of one object (the largest real ones have tens of thousands)
RELOC_CHUNK = 1 << 20  # bytes of relocation entries per read
HOT_LOOKUPS = 64  # lookups reaching an object's symbol table before its tables are held in memory
MAX_HOT_TABLE = 8 << 20  # bytes of one object's symbol entries held in memory
CHAIN_BLOCK = 8  # GNU hash chain entries per read (chains are short: a few per bucket)


class Version(NamedTuple):
    """One entry of an object's version table (glibc's l_versions, dl-version.c:252-359).

    A need (.gnu.version_r) names the file that must define it; an object's own definitions
    (.gnu.version_d, the base version excepted) have file None.
    """

    ndx: int  # the value .gnu.version entries use for it (without the hidden bit)
    name: str
    hash: int  # vna_hash / vd_hash: the SysV hash of the name
    file: str | None  # vn_file: the DT_NEEDED name of the object that must define it
    hidden: bool = False  # vna_other & 0x8000
    weak: bool = False  # vna_flags & VER_FLG_WEAK: a missing weak version is not an error


class Reference(NamedTuple):
    """An undefined dynamic symbol: what the object's relocations ask ld.so to bind."""

    name: str
    symndx: int
    weak: bool  # STB_WEAK: may stay unbound (dl-lookup.c:781-802)
    kind: int  # STT_*
    version: Version | None  # l_versions[versym & 0x7fff] when its hash is non-zero, else None

    @property
    def display(self) -> str:
        return self.name if self.version is None else f"{self.name}@{self.version.name}"


class Definition(NamedTuple):
    """A symbol an object defines, as ld.so found it for one reference."""

    name: str
    symndx: int
    bind: int  # STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE
    kind: int
    visibility: int
    version: str | None  # the name of the version it is defined under; None when unversioned
    default: bool  # not hidden (`sym@@V` or unversioned), so an unversioned reference sees it

    def describe(self) -> str:
        bind = BIND_NAMES.get(self.bind, str(self.bind))
        kind = TYPE_NAMES.get(self.kind, str(self.kind))
        ver = "" if self.version is None else ("@@" if self.default else "@") + self.version
        return f"{bind} {kind} {self.name}{ver}"




class Budget:
    """Bytes of symbol tables that may still be held in memory, shared by the objects of one
    run (ElfSymbols._warm)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left


class _Sym(NamedTuple):
    name_off: int
    info: int
    other: int
    shndx: int
    value: int


class ElfSymbols:
    """The dynamic symbol tables of one ELF file, read on demand through a ByteSource.

    Owns the source (close() closes it). Holds in memory only what is small and asked
    for repeatedly: the version tables, and the GNU hash table's bloom filter and
    buckets (a few hundred kilobytes for the largest libraries).
    """

    def __init__(self, src: ByteSource) -> None:
        self.src = src
        self.name = src.name
        r = self._r = _Reader(src)
        loads, dynamic, self._program = _segments(r)
        (self._machine,) = r.unpack("H", 18)  # e_machine
        tags = _dynamic_tags(r, dynamic)
        self._tags = tags

        def offset(tag: int) -> int | None:
            addr = _last(tags, tag)
            return None if addr is None else _to_offset(r, loads, addr)

        self._symtab = offset(DT_SYMTAB)
        self._strtab = offset(DT_STRTAB)
        self._strsz = _last(tags, DT_STRSZ)
        self._syment = 24 if r.is64 else 16
        self._symfmt = r.e + ("IBBHQQ" if r.is64 else "IIIBBH")
        flags = _last(tags, DT_FLAGS) or 0
        flags_1 = _last(tags, DT_FLAGS_1) or 0
        # DF_BIND_NOW / DF_1_NOW / DT_BIND_NOW: the object is bound now even under RTLD_LAZY.
        self.bind_now = bool(flags & DF_BIND_NOW or flags_1 & DF_1_NOW or _last(tags, DT_BIND_NOW) is not None)
        self.needs: tuple[Version, ...] = self._read_needs(offset(DT_VERNEED))
        defs, bases = self._read_defs(offset(DT_VERDEF))
        self.has_verdef = _last(tags, DT_VERDEF) is not None
        # All definitions, the base version included: what match_symbol compares a need
        # with (dl-version.c:86-125), as (hash, name).
        self.defined_versions: frozenset[tuple[int, str]] = frozenset((v.hash, v.name) for v in defs)
        # l_versions: needs, then non-base definitions (dl-version.c:296-359).
        table: dict[int, Version] = {}
        high = 0
        for v in self.needs:
            table[v.ndx] = v
            high = max(high, v.ndx)
        for v, base in zip(defs, bases):
            high = max(high, v.ndx)
            if not base:
                table[v.ndx] = v
        self._versions = table
        # dl-version.c:274-294: the versym table is used only when some version index > 0.
        self._versym = offset(DT_VERSYM) if high > 0 else None
        self._hash: _GnuHash | _SysvHash | None = None
        self._hash_loaded = False
        self.budget: Budget | None = None  # set by the caller to allow _warm()
        self._lookups = 0
        self._hot_syms: bytes | None = None
        self._hot_count = 0
        self._hot_versym: array[int] | None = None
        self._hot_strings: bytes | None = None

    # ------------------------------------------------------------------ versions

    def _read_needs(self, off: int | None) -> tuple[Version, ...]:
        """Every (file, version) this object requires, in .gnu.version_r order."""
        if off is None:
            return ()
        r = self._r
        out: list[Version] = []
        steps = 0
        while True:
            vn_version, _cnt, vn_file, vn_aux, vn_next = r.unpack("HHIII", off)
            if vn_version != 1:
                raise r.fail(f"unsupported version {vn_version} of Verneed record")
            file = self._string(vn_file)
            aux = off + vn_aux
            while True:
                steps += 1
                if steps > MAX_VERSION_ENTRIES:
                    raise r.fail("version needs do not end")
                vna_hash, vna_flags, vna_other, vna_name, vna_next = r.unpack("IHHII", aux)
                out.append(Version(vna_other & 0x7FFF, self._string(vna_name), vna_hash, file,
                                   bool(vna_other & 0x8000), bool(vna_flags & VER_FLG_WEAK)))
                if vna_next == 0:
                    break
                aux += vna_next
            if vn_next == 0:
                return tuple(out)
            off += vn_next

    def _read_defs(self, off: int | None) -> tuple[tuple[Version, ...], tuple[bool, ...]]:
        """The versions this object defines (its base version, the SONAME, first), and which
        of them is the base version (VER_FLG_BASE)."""
        if off is None:
            return (), ()
        r = self._r
        out: list[Version] = []
        bases: list[bool] = []
        for _ in range(MAX_VERSION_ENTRIES):
            vd_version, vd_flags, vd_ndx, _cnt, vd_hash, vd_aux, vd_next = r.unpack("HHHHIII", off)
            if vd_version != 1:
                raise r.fail(f"unsupported version {vd_version} of Verdef record")
            (vda_name,) = r.unpack("I", off + vd_aux)
            out.append(Version(vd_ndx & 0x7FFF, self._string(vda_name), vd_hash, None))
            bases.append(bool(vd_flags & VER_FLG_BASE))
            if vd_next == 0:
                return tuple(out), tuple(bases)
            off += vd_next
        raise r.fail("version definitions do not end")

    def provides_version(self, need: Version) -> bool:
        """match_symbol (dl-version.c:52-150): does this object define the needed version?
        An object without any version definitions satisfies every need (glibc only
        mentions it under `ldd -v`)."""
        if not self.has_verdef:
            return True
        return (need.hash, need.name) in self.defined_versions

    def version_names(self) -> list[str]:
        """The versions this object defines, oldest first (GLIBC_2.2.5 before GLIBC_2.10)."""
        return sorted({name for _h, name in self.defined_versions}, key=_natural)

    # ------------------------------------------------------------------ reading

    def _string(self, off: int) -> str:
        if self._strtab is None:
            raise self._r.fail("dynamic strings without a DT_STRTAB inside a PT_LOAD segment")
        if self._strsz is not None and off >= self._strsz:
            raise self._r.fail(f"string offset {off} beyond DT_STRSZ {self._strsz}")
        return _cstring(self._r, self._strtab + off)

    def _sym(self, index: int) -> _Sym:
        assert self._symtab is not None
        hot = self._hot_syms
        if hot is not None and index < self._hot_count:
            f = struct.unpack_from(self._symfmt, hot, index * self._syment)
        else:
            f = struct.unpack(self._symfmt, self.src.read_at(self._symtab + index * self._syment, self._syment))
        if self._r.is64:
            return _Sym(f[0], f[1], f[2], f[3], f[4])
        return _Sym(f[0], f[3], f[4], f[5], f[1])

    def _versym_at(self, index: int) -> int | None:
        """The .gnu.version entry of symbol `index`."""
        if self._versym is None:
            return None
        table = self._hot_versym
        if table is not None and index < len(table):
            return int(table[index])
        (v,) = struct.unpack(self._r.e + "H", self.src.read_at(self._versym + 2 * index, 2))
        return int(v)

    def _warm(self) -> None:
        """At the HOT_LOOKUPS-th lookup that reached the symbol table, read this object's symbol entries, hash chains, .gnu.version and strings into memory (raw
        bytes and arrays, not Python objects; in a few sequential reads rather than a page
        fault per lookup when the file is not in the page cache), when they fit in
        `budget`: the few libraries most references bind to are then answered without a
        read per lookup."""
        if self.budget is None:
            return
        table = self._table()
        if not isinstance(table, _GnuHash) or self._symtab is None:
            return
        count = table.symbol_count()
        strings = self._strsz if self._strtab is not None and self._strsz is not None else 0
        size = count * self._syment + 4 * (count - table.symoffset) + (2 * count if self._versym is not None else 0)
        if size + strings > self.budget.left or max(count * self._syment, strings) > MAX_HOT_TABLE:
            return
        self.budget.left -= size + strings
        if strings and self._strtab is not None:
            self._hot_strings = self.src.read_at(self._strtab, strings)
        self._hot_syms = self.src.read_at(self._symtab, count * self._syment)
        self._hot_count = count
        table.chain_array = _words(self._r, table.chains, count - table.symoffset, "I")
        if self._versym is not None:
            self._hot_versym = _words(self._r, self._versym, count, "H")

    def _table(self) -> _GnuHash | _SysvHash | None:
        if not self._hash_loaded:
            self._hash_loaded = True
            gnu = _last(self._tags, DT_GNU_HASH)
            sysv = _last(self._tags, DT_HASH)
            loads, _dyn, _prog = _segments(self._r)
            if gnu is not None:
                self._hash = _GnuHash(self._r, _to_offset(self._r, loads, gnu))
            elif sysv is not None:
                self._hash = _SysvHash(self._r, _to_offset(self._r, loads, sysv))
        return self._hash

    def symbol_count_bound(self) -> int:
        """The end of the range of symbols that may be undefined (module docstring)."""
        table = self._table()
        if self._symtab is None or table is None:
            return 0
        if self._program and isinstance(table, _GnuHash):
            # A program's undefined functions whose address it takes have a value (the
            # canonical PLT entry) and are hashed like definitions: read them all.
            return table.symbol_count()
        return table.undefined_end()

    # ------------------------------------------------------------------ undefined symbols

    def references(self) -> Iterator[Reference]:
        """Every undefined, non-local dynamic symbol, in symbol-table order, read in chunks."""
        end = self.symbol_count_bound()
        if end <= 1 or self._symtab is None:
            return
        r = self._r
        count = 0
        for first in range(1, end, SYM_CHUNK):
            n = min(SYM_CHUNK, end - first)
            raw = self.src.read_at(self._symtab + first * self._syment, n * self._syment)
            picked: list[tuple[int, int, int, int]] = []  # (index, name offset, bind, type)
            for i, f in enumerate(struct.iter_unpack(self._symfmt, raw)):
                if r.is64:
                    name_off, info, other, shndx = f[0], f[1], f[2], f[3]
                else:
                    name_off, info, other, shndx = f[0], f[3], f[4], f[5]
                # dl-reloc.c:170-172: a local or hidden reference binds to the object itself.
                if shndx == SHN_UNDEF and info >> 4 != STB_LOCAL and other & 0x3 in (STV_DEFAULT, STV_PROTECTED):
                    picked.append((first + i, name_off, info >> 4, info & 0xF))
            if not picked:
                continue
            versyms: tuple[int, ...] | None = None
            if self._versym is not None:
                versyms = struct.unpack(f"{r.e}{n}H", self.src.read_at(self._versym + 2 * first, 2 * n))
            count += len(picked)
            if count > MAX_REFERENCES:
                raise r.fail(f"more than {MAX_REFERENCES} undefined symbols (a corrupt symbol table?)")
            names = self._names([p[1] for p in picked])
            for index, name_off, bind, kind in picked:
                version = None
                if versyms is not None:
                    v = self._versions.get(versyms[index - first] & 0x7FFF)
                    if v is not None and v.hash != 0:
                        version = v
                yield Reference(names[name_off], index, bind == STB_WEAK, kind, version)

    def _names(self, offsets: list[int]) -> dict[int, str]:
        """The strings at these DT_STRTAB offsets, read in a few windows (nearby names together)."""
        if self._strtab is None:
            raise self._r.fail("dynamic symbols without a DT_STRTAB inside a PT_LOAD segment")
        limit = self._strsz if self._strsz is not None else self.src.size - self._strtab
        out: dict[int, str] = {}
        todo = sorted(set(offsets))
        i = 0
        while i < len(todo):
            start = todo[i]
            if start >= limit:
                raise self._r.fail(f"string offset {start} beyond DT_STRSZ {limit}")
            j = i
            while j + 1 < len(todo) and todo[j + 1] - start < NAME_WINDOW:
                j += 1
            size = min(todo[j] - start + NAME_SLACK, limit - start, self.src.size - self._strtab - start)
            buf = self.src.read_at(self._strtab + start, size)
            for k in range(i, j + 1):
                o = todo[k] - start
                nul = buf.find(b"\0", o)
                if nul < 0:
                    out[todo[k]] = self._string(todo[k])  # longer than the window: read it alone
                else:
                    out[todo[k]] = buf[o:nul].decode("utf-8", "surrogateescape")
            i = j + 1
        return out

    # ------------------------------------------------------------------ lookup

    def lookup(self, name: str, version: Version | None, gnu: int | None = None,
               raw: bytes | None = None) -> Definition | None:
        """The definition this object contributes for a reference to `name` (with `version`),
        or None: do_lookup_x for one object (dl-lookup.c:379-497).

        `gnu` is gnu_hash(name) and `raw` the name's bytes when the caller has them. A
        definition with hidden or internal visibility binds locally only, so it counts as
        absent; so does a STB_LOCAL one. STB_WEAK, STB_GLOBAL and STB_GNU_UNIQUE bind
        (LD_DYNAMIC_WEAK unset).
        """
        table = self._hash if self._hash_loaded else self._table()
        if table is None or self._symtab is None:
            return None
        want = raw if raw is not None else name.encode("utf-8", "surrogateescape")
        candidates = table.candidates(table.hash_of(want, gnu))
        if not candidates:
            return None
        self._lookups += 1
        if self._lookups == HOT_LOOKUPS:
            self._warm()
        versioned: tuple[int, _Sym, int | None] | None = None
        num_versions = 0
        found: tuple[int, _Sym, int | None] | None = None
        for index in candidates:
            sym = self._sym(index)
            verdict, vs = self._check_match(want, sym, index, version)
            if verdict is _NO_MATCH:
                continue
            if verdict is _VERSIONED:
                # dl-lookup.c:145-157: an unversioned reference meets a later version:
                # remember the first non-hidden one, keep looking.
                if vs is not None and not vs & 0x8000:
                    num_versions += 1
                    if num_versions == 1:
                        versioned = (index, sym, vs)
                continue
            found = (index, sym, vs)
            break
        else:
            # dl-lookup.c:450-454: exactly one versioned definition and no default one.
            found = versioned if num_versions == 1 else None
        if found is None:
            return None
        index, sym, vsym = found
        visibility = sym.other & 0x3
        if visibility in (STV_HIDDEN, STV_INTERNAL):  # dl-lookup.c:459-461
            return None
        bind = sym.info >> 4
        if bind not in (STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE):  # dl-lookup.c:467-496
            return None
        vname = None
        if vsym is not None:
            v = self._versions.get(vsym & 0x7FFF)
            vname = v.name if v is not None else None
        return Definition(name, index, bind, sym.info & 0xF, visibility, vname, vsym is None or not vsym & 0x8000)

    def _check_match(self, want: bytes, sym: _Sym, index: int, version: Version | None) -> tuple[object, int | None]:
        """check_match (dl-lookup.c:59-163) for one hash-chain candidate: (_NO_MATCH,
        _VERSIONED (see lookup) or _MATCH, the candidate's .gnu.version entry).

        One difference: a SHN_UNDEF symbol never matches here. glibc accepts one with a
        non-zero value (an executable's canonical PLT entry) for a non-PLT relocation; that
        symbol is itself bound to a definition elsewhere in the process, which the scope
        search then finds.
        """
        kind = sym.info & 0xF
        if sym.value == 0 and sym.shndx != SHN_ABS and kind != STT_TLS:
            return _NO_MATCH, None
        if sym.shndx == SHN_UNDEF or kind not in ALLOWED_STT:
            return _NO_MATCH, None
        if not self._name_is(sym.name_off, want):
            return _NO_MATCH, None
        vs = self._versym_at(index)
        if vs is None:
            return _MATCH, vs
        if version is not None:
            v = self._versions.get(vs & 0x7FFF)
            same = v is not None and v.hash == version.hash and v.name == version.name
            # dl-lookup.c:114-122: the version must match, unless the definition is
            # unversioned (its table entry has no hash), not hidden, and the reference
            # is not hidden either.
            if not same and (version.hidden or (v is not None and v.hash) or vs & 0x8000):
                return _NO_MATCH, vs
            return _MATCH, vs
        # dl-lookup.c:145-158: an unversioned reference takes index 0, 1 (unversioned) or
        # 2 (the object's first, oldest version) at once.
        if (vs & 0x7FFF) >= 3:
            return _VERSIONED, vs
        return _MATCH, vs

    def _name_is(self, name_off: int, want: bytes) -> bool:
        assert self._strtab is not None
        if self._strsz is not None and name_off >= self._strsz:
            return False
        if self._hot_strings is not None:
            return self._hot_strings.startswith(want + b"\0", name_off)
        start = self._strtab + name_off
        size = min(len(want) + 1, self.src.size - start)
        return size > 0 and self.src.read_at(start, size) == want + b"\0"

    def named(self, name: str) -> list[tuple[int, str]]:
        """Every dynamic symbol called `name` in this object's hash table, described (binding,
        type, visibility, version), whether or not it can satisfy a reference: what `why`
        shows when a lookup passes over this object."""
        table = self._table()
        if table is None or self._symtab is None:
            return []
        want = name.encode("utf-8", "surrogateescape")
        out: list[tuple[int, str]] = []
        for index in table.candidates(table.hash_of(want, None)):
            sym = self._sym(index)
            if not self._name_is(sym.name_off, want):
                continue
            vs = self._versym_at(index)
            ver = ""
            if vs is not None:
                v = self._versions.get(vs & 0x7FFF)
                if v is not None and (vs & 0x7FFF) > 1:
                    ver = ("@" if vs & 0x8000 else "@@") + v.name
            bind = BIND_NAMES.get(sym.info >> 4, str(sym.info >> 4))
            kind = TYPE_NAMES.get(sym.info & 0xF, str(sym.info & 0xF))
            vis = {STV_DEFAULT: "", STV_INTERNAL: " INTERNAL", STV_HIDDEN: " HIDDEN",
                   STV_PROTECTED: " PROTECTED"}[sym.other & 0x3]
            where = " UND" if sym.shndx == SHN_UNDEF else ""
            out.append((index, f"{bind} {kind}{vis}{where} {name}{ver}"))
        return out

    def eager_symbols(self) -> frozenset[int]:
        """Symbol indices that relocations outside the PLT (DT_JMPREL) use: what ld.so binds
        at load time even under RTLD_LAZY (dl-reloc.c:217, 248-252; dynamic-link.h)."""
        return frozenset(sym for sym, plt, _t in self._relocated_symbols() if not plt)

    def relocation_order(self, wanted: set[int]) -> dict[int, int]:
        """For each symbol index in `wanted`, the position of the first relocation that uses
        it, in the order ld.so processes them (DT_RELA / DT_REL, then the PLT): which
        undefined symbol a failing dlopen names first."""
        out: dict[int, int] = {}
        for pos, (sym, _plt, _t) in enumerate(self._relocated_symbols()):
            if sym in wanted and sym not in out:
                out[sym] = pos
                if len(out) == len(wanted):
                    break
        return out

    def copy_references(self) -> list[Reference]:
        """The symbols of a program's copy relocations (R_*_COPY): defined in the program
        (its copy of the data), they must still be found in another object, which ld.so
        looks for in the scope without the program itself (dl-lookup.c:365-367). Only
        programs have them; empty for a machine without a known copy relocation."""
        copy_type = COPY_RELOCATIONS.get(self._machine)
        if copy_type is None or not self._program or self._symtab is None:
            return []
        indices = sorted({sym for sym, _plt, rtype in self._relocated_symbols() if rtype == copy_type})
        out: list[Reference] = []
        for index in indices[:MAX_REFERENCES]:
            sym = self._sym(index)
            vs = self._versym_at(index)
            version = None
            if vs is not None:
                v = self._versions.get(vs & 0x7FFF)
                version = v if v is not None and v.hash != 0 else None
            out.append(Reference(self._string(sym.name_off), index, sym.info >> 4 == STB_WEAK, sym.info & 0xF, version))
        return out

    def _relocated_symbols(self) -> Iterator[tuple[int, bool, int]]:
        """(symbol index, in the PLT?, relocation type) of every relocation that names a
        symbol, in processing order, read in chunks. The leading DT_RELACOUNT / DT_RELCOUNT relative relocations
        name no symbol and are not read."""
        r = self._r
        tags = self._tags
        loads, _dyn, _prog = _segments(r)
        plt = _last(tags, DT_JMPREL)
        plt_size = _last(tags, DT_PLTRELSZ) or 0
        plt_range = (plt, plt + plt_size) if plt is not None else (0, 0)
        plt_rela = (_last(tags, DT_PLTREL) or DT_RELA) == DT_RELA
        ranges: list[tuple[int, int, bool, bool]] = []  # (start, end, rela, plt)
        for addr_tag, size_tag, count_tag, rela in ((DT_REL, DT_RELSZ, DT_RELCOUNT, False),
                                                    (DT_RELA, DT_RELASZ, DT_RELACOUNT, True)):
            addr, size = _last(tags, addr_tag), _last(tags, size_tag) or 0
            if addr is None or size == 0:
                continue
            ent = (3 if rela else 2) * r.wsize
            skip = min(_last(tags, count_tag) or 0, size // ent)
            start, end = addr + skip * ent, addr + size - size % ent
            if plt_range[0] < end and start < plt_range[1]:  # the PLT relocations inside: leave them out
                end = max(start, min(end, plt_range[0]))
            if end > start:
                ranges.append((start, end, rela, False))
        if plt is not None and plt_size:
            ranges.append((plt, plt + plt_size, plt_rela, True))
        shift = 32 if r.is64 else 8
        mask = (1 << shift) - 1
        for start, end, rela, in_plt in ranges:
            ent = (3 if rela else 2) * r.wsize
            end -= (end - start) % ent
            fmt = r.e + (("QQq" if rela else "QQ") if r.is64 else ("IIi" if rela else "II"))
            off = _to_offset(r, loads, start)
            todo = end - start
            while todo > 0:
                n = min(todo, RELOC_CHUNK - RELOC_CHUNK % ent)
                for f in struct.iter_unpack(fmt, self.src.read_at(off, n)):
                    sym = f[1] >> shift
                    if sym:
                        yield sym, in_plt, f[1] & mask
                off += n
                todo -= n

    def close(self) -> None:
        self.src.close()


_NO_MATCH, _VERSIONED, _MATCH = object(), object(), object()


def _natural(name: str) -> tuple[object, ...]:
    """Sort key comparing the digit runs of a version name as numbers."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _segments(r: _Reader) -> tuple[list[tuple[int, int, int]], tuple[int, int] | None, bool]:
    """(PT_LOAD (vaddr, offset, filesz) list, PT_DYNAMIC (offset, filesz), whether it is a
    program: ET_EXEC, or with a PT_INTERP)."""
    if r.is64:
        fields = r.unpack("HHIQQQIHHH", 16)
        ph_fmt, ph_size = "IIQQQQQQ", 56
    else:
        fields = r.unpack("HHIIIIIHHH", 16)
        ph_fmt, ph_size = "IIIIIIII", 32
    e_phoff, e_phentsize, e_phnum = fields[4], fields[8], fields[9]
    if e_phnum > MAX_PHNUM:
        raise r.fail(f"absurd program header count {e_phnum}")
    if e_phnum and e_phentsize < ph_size:
        raise r.fail(f"program header entry size {e_phentsize} too small")
    loads: list[tuple[int, int, int]] = []
    dynamic = None
    program = fields[0] == 2
    table = r.src.read_at(e_phoff, e_phnum * e_phentsize) if e_phnum else b""
    for i in range(e_phnum):
        f = struct.unpack_from(r.e + ph_fmt, table, i * e_phentsize)
        if r.is64:
            p_type, p_offset, p_vaddr, p_filesz = f[0], f[2], f[3], f[5]
        else:
            p_type, p_offset, p_vaddr, p_filesz = f[0], f[1], f[2], f[4]
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            program = True
    return loads, dynamic, program


def _words(r: _Reader, offset: int, count: int, code: str) -> array[int]:
    """`count` integers of array type `code` at `offset`, in this machine's byte order."""
    a = array(code)
    a.frombytes(r.src.read_at(offset, count * a.itemsize))
    if r.little != (sys.byteorder == "little"):
        a.byteswap()
    return a


class _GnuHash:
    """DT_GNU_HASH: bloom filter and buckets in memory, chains read per lookup."""

    def __init__(self, r: _Reader, off: int) -> None:
        self.r = r
        self.nbuckets, self.symoffset, bloom_size, self.shift = r.unpack("IIII", off)
        if bloom_size and bloom_size & (bloom_size - 1):
            raise r.fail(f"GNU hash bloom size {bloom_size} is not a power of two")
        self.bits = 64 if r.is64 else 32
        self.bloom = _words(r, off + 16, bloom_size, "Q" if r.is64 else "I") if bloom_size else None
        self.bloom_mask = bloom_size - 1
        buckets_off = off + 16 + bloom_size * r.wsize
        self.buckets = _words(r, buckets_off, self.nbuckets, "I")
        self.chains = buckets_off + self.nbuckets * 4
        self.chain_array: array[int] | None = None  # the chains, once the object is hot

    def hash_of(self, name: bytes, gnu: int | None) -> int:
        return gnu if gnu is not None else gnu_hash(name)

    def candidates(self, h: int) -> list[int]:
        """Indices of the chain entries whose hash equals h (dl-lookup.c:392-427). Most
        lookups end at the bloom filter, in memory; a chain is read in blocks."""
        bloom = self.bloom
        if bloom is not None:
            bits = self.bits
            word = bloom[(h // bits) & self.bloom_mask]
            if not (word >> (h % bits)) & (word >> ((h >> self.shift) % bits)) & 1:
                return []
        if self.nbuckets == 0:
            return []
        index = self.buckets[h % self.nbuckets]
        if index == 0:
            return []
        if index < self.symoffset:
            raise self.r.fail("GNU hash bucket points below symoffset")
        out: list[int] = []
        chains = self.chain_array
        if chains is not None:
            at = index - self.symoffset
            for _ in range(MAX_CHAIN):
                if at >= len(chains):
                    raise self.r.fail("GNU hash chain runs past the end of the table")
                ch = chains[at]
                if (ch ^ h) >> 1 == 0:
                    out.append(at + self.symoffset)
                if ch & 1:
                    return out
                at += 1
            raise self.r.fail("GNU hash chain does not end")
        fmt = self.r.e + f"{CHAIN_BLOCK}I"
        size = self.r.src.size
        steps = 0
        while True:
            at = self.chains + (index - self.symoffset) * 4
            n = min(CHAIN_BLOCK, (size - at) // 4)
            if n <= 0:
                raise self.r.fail("GNU hash chain runs past the end of the file")
            block = self.r.src.read_at(at, 4 * n)
            for ch in (struct.unpack(fmt, block) if n == CHAIN_BLOCK else struct.unpack(f"{self.r.e}{n}I", block)):
                if (ch ^ h) >> 1 == 0:
                    out.append(index)
                if ch & 1:
                    return out
                index += 1
            steps += n
            if steps > MAX_CHAIN:
                raise self.r.fail("GNU hash chain does not end")

    def undefined_end(self) -> int:
        return self.symoffset

    def symbol_count(self) -> int:
        """One past the last hashed symbol: the end of the chain of the highest bucket."""
        top = max(self.buckets) if self.nbuckets else 0
        if top < self.symoffset:
            return self.symoffset
        index = top
        for _ in range(MAX_CHAIN):
            (ch,) = self.r.unpack("I", self.chains + (index - self.symoffset) * 4)
            index += 1
            if ch & 1:
                return index
        raise self.r.fail("GNU hash chain does not end")


class _SysvHash:
    """DT_HASH: buckets in memory, chains read per lookup."""

    def __init__(self, r: _Reader, off: int) -> None:
        self.r = r
        self.nbucket, self.nchain = r.unpack("II", off)
        self.buckets = _words(r, off + 8, self.nbucket, "I")
        self.chain_off = off + 8 + self.nbucket * 4

    def hash_of(self, name: bytes, gnu: int | None) -> int:
        return sysv_hash(name)

    def candidates(self, h: int) -> list[int]:
        """Every entry of the bucket's chain (the SysV table stores no hashes to compare)."""
        out: list[int] = []
        if self.nbucket == 0:
            return out
        index = self.buckets[h % self.nbucket]
        for _ in range(min(self.nchain, MAX_CHAIN) + 1):
            if index == 0:
                return out
            if index >= self.nchain:
                raise self.r.fail("SysV hash chain index out of range")
            out.append(index)
            (index,) = self.r.unpack("I", self.chain_off + index * 4)
        raise self.r.fail("SysV hash chain does not end")

    def undefined_end(self) -> int:
        return int(self.nchain)


def open_symbols(src: ByteSource) -> ElfSymbols:
    """ElfSymbols over src (which it then owns); FormatError, with src closed, when malformed."""
    try:
        return ElfSymbols(src)
    except FormatError:
        src.close()
        raise
    except (struct.error, ValueError, OverflowError) as e:
        src.close()
        raise FormatError(src.name, f"malformed symbol tables ({e})") from None
