"""ELF reader: only what ld.so itself reads.

The ELF header, the program headers, PT_INTERP, the PT_DYNAMIC segment and the strings
it points at. Dynamic-section addresses are mapped to file offsets through the PT_LOAD
segments, because stripped files may have no section headers at all. Whether a file is
a CPython extension module is answered by looking up the one symbol PyInit_<name> in
the GNU or SysV hash table: a few reads, not a pass over the whole symbol table. So a
540 MB library costs a few kilobytes of reads, and memory never grows with file size.
"""

from __future__ import annotations

import posixpath
import struct
from operator import mul

from rpathfix.errors import FormatError
from rpathfix.model import ElfInfo
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.source import ByteSource

ELF_MAGIC = b"\x7fELF"

PT_LOAD, PT_DYNAMIC, PT_INTERP = 1, 2, 3
DT_NULL, DT_NEEDED, DT_HASH, DT_STRTAB, DT_SYMTAB, DT_STRSZ = 0, 1, 4, 5, 6, 10
DT_SONAME, DT_RPATH, DT_RUNPATH = 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
DT_GNU_HASH = 0x6FFFFEF5
SHN_UNDEF = 0

MAX_PHNUM = 4096
MAX_DYNAMIC = 1 << 20  # bytes of dynamic segment
MAX_STRING = 1 << 16
MAX_INTERP = 4096
MAX_CHAIN = 1 << 20  # hash-chain steps before we call it a loop

MACHINES = {
    2: "sparc", 3: "i386", 8: "mips", 20: "ppc", 22: "s390x", 40: "arm", 43: "sparcv9", 62: "x86_64",
    183: "aarch64", 258: "loongarch64",
}
TYPES = {1: "rel", 2: "exec", 3: "dyn", 4: "core"}


def is_elf(head: bytes) -> bool:
    return head[:4] == ELF_MAGIC


def _arch(machine: int, is64: bool, little: bool) -> str:
    if machine == 21:
        return "ppc64le" if little else "ppc64"
    if machine == 243:
        return "riscv64" if is64 else "riscv32"
    return MACHINES.get(machine, f"machine-{machine}")


class _Reader:
    def __init__(self, src: ByteSource) -> None:
        self.src = src
        head = src.read_at(0, 16) if src.size >= 16 else b""
        if not is_elf(head):
            raise FormatError(src.name, "not an ELF file (bad magic)")
        cls, data = head[4], head[5]
        if cls not in (1, 2) or data not in (1, 2):
            raise FormatError(src.name, f"bad ELF class {cls} or data encoding {data}")
        self.is64 = cls == 2
        self.little = data == 1
        self.e = "<" if self.little else ">"
        self.word = "Q" if self.is64 else "I"
        self.wsize = 8 if self.is64 else 4

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        fmt = self.e + fmt
        return struct.unpack(fmt, self.src.read_at(offset, struct.calcsize(fmt)))

    def fail(self, reason: str) -> FormatError:
        return FormatError(self.src.name, reason)


def read_elf(src: ByteSource) -> ElfInfo:
    """Parse the headers and dynamic segment of an ELF file; FormatError when malformed."""
    r = _Reader(src)
    if r.is64:
        e_type, e_machine, _v, _entry, e_phoff, _sh, _fl, _eh, e_phentsize, e_phnum = r.unpack("HHIQQQIHHH", 16)
        ph_fmt, ph_size = "IIQQQQQQ", 56
    else:
        e_type, e_machine, _v, _entry, e_phoff, _sh, _fl, _eh, e_phentsize, e_phnum = r.unpack("HHIIIIIHHH", 16)
        ph_fmt, ph_size = "IIIIIIII", 32
    if e_phnum > MAX_PHNUM:
        raise r.fail(f"absurd program header count {e_phnum}")
    if e_phnum and e_phentsize < ph_size:
        raise r.fail(f"program header entry size {e_phentsize} too small")
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp: str | None = None
    table = src.read_at(e_phoff, e_phnum * e_phentsize) if e_phnum else b""
    for i in range(e_phnum):
        fields = struct.unpack_from(r.e + ph_fmt, table, i * e_phentsize)
        if r.is64:
            p_type, _flags, p_offset, p_vaddr, _pa, p_filesz = fields[:6]
        else:
            p_type, p_offset, p_vaddr, _pa, p_filesz = fields[:5]
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
        elif p_type == PT_INTERP:
            if p_filesz > MAX_INTERP:
                raise r.fail(f"PT_INTERP of {p_filesz} bytes")
            interp = src.read_at(p_offset, p_filesz).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    tags = _dynamic_tags(r, dynamic)
    machine_name = _arch(e_machine, r.is64, r.little)
    base = ElfInfo(
        elf_class=64 if r.is64 else 32, little_endian=r.little, machine=e_machine, arch=machine_name,
        elf_type=TYPES.get(e_type, f"type-{e_type}"), interp=interp, soname=None, needed=(), rpath=None,
        runpath=None, flags_1=0, is_extension=False,
    )
    if not tags:
        return base
    strtab_addr = _last(tags, DT_STRTAB)
    strsz = _last(tags, DT_STRSZ)
    strtab = None if strtab_addr is None else _to_offset(r, loads, strtab_addr)

    def string(off: int) -> str:
        if strtab is None:
            raise r.fail("dynamic strings without a DT_STRTAB inside a PT_LOAD segment")
        if strsz is not None and off >= strsz:
            raise r.fail(f"string offset {off} beyond DT_STRSZ {strsz}")
        return _cstring(r, strtab + off)

    needed = tuple(string(v) for t, v in tags if t == DT_NEEDED)
    soname_off, rpath_off, runpath_off = _last(tags, DT_SONAME), _last(tags, DT_RPATH), _last(tags, DT_RUNPATH)
    name = posixpath.basename(src.name.rsplit("!", 1)[-1])
    module = name.split(".", 1)[0]
    is_ext = False
    if module and strtab is not None:
        is_ext = _defines(r, loads, tags, strtab, strsz, "PyInit_" + module)
    return ElfInfo(
        elf_class=base.elf_class, little_endian=r.little, machine=e_machine, arch=machine_name,
        elf_type=base.elf_type, interp=interp,
        soname=None if soname_off is None else string(soname_off),
        needed=needed,
        rpath=None if rpath_off is None else string(rpath_off),
        runpath=None if runpath_off is None else string(runpath_off),
        flags_1=_last(tags, DT_FLAGS_1) or 0,
        is_extension=is_ext,
    )


def _last(tags: list[tuple[int, int]], tag: int) -> int | None:
    """The value of the last entry with this tag: glibc's get-dynamic-info keeps the last one."""
    value = None
    for t, v in tags:
        if t == tag:
            value = v
    return value


def _dynamic_tags(r: _Reader, dynamic: tuple[int, int] | None) -> list[tuple[int, int]]:
    if dynamic is None:
        return []
    offset, size = dynamic
    if size > MAX_DYNAMIC:
        raise r.fail(f"dynamic segment of {size} bytes")
    entsize = 2 * r.wsize
    data = r.src.read_at(offset, size - size % entsize)
    fmt = r.e + ("qQ" if r.is64 else "iI")
    tags = []
    for tag, value in struct.iter_unpack(fmt, data):
        if tag == DT_NULL:
            break
        tags.append((tag & 0xFFFFFFFFFFFFFFFF if r.is64 else tag & 0xFFFFFFFF, value))
    return tags


def _to_offset(r: _Reader, loads: list[tuple[int, int, int]], addr: int) -> int:
    for vaddr, offset, filesz in loads:
        if vaddr <= addr < vaddr + filesz:
            return offset + (addr - vaddr)
    raise r.fail(f"address {addr:#x} is not inside any PT_LOAD segment")


def _cstring(r: _Reader, offset: int) -> str:
    """A NUL-terminated string, read in growing bounded chunks."""
    out = b""
    chunk = 64
    while True:
        avail = r.src.size - offset - len(out)
        if avail <= 0:
            raise r.fail("unterminated string at end of file")
        piece = r.src.read_at(offset + len(out), min(chunk, avail))
        nul = piece.find(b"\0")
        if nul >= 0:
            return (out + piece[:nul]).decode("utf-8", "surrogateescape")
        out += piece
        if len(out) > MAX_STRING:
            raise r.fail(f"string longer than {MAX_STRING} bytes at offset {offset}")
        chunk = min(chunk * 4, 4096)


def _sym(r: _Reader, symtab: int, index: int) -> tuple[int, int]:
    """(st_name, st_shndx) of symbol `index`."""
    if r.is64:
        st_name, _info, _other, st_shndx = r.unpack("IBBH", symtab + index * 24)
    else:
        st_name, _value, _size, _info, _other, st_shndx = r.unpack("IIIBBH", symtab + index * 16)
    return st_name, st_shndx


def _defines(r: _Reader, loads: list[tuple[int, int, int]], tags: list[tuple[int, int]], strtab: int,
             strsz: int | None, symbol: str) -> bool:
    symtab_addr = _last(tags, DT_SYMTAB)
    if symtab_addr is None:
        return False
    symtab = _to_offset(r, loads, symtab_addr)
    want = symbol.encode()

    def matches(index: int) -> bool:
        st_name, shndx = _sym(r, symtab, index)
        if shndx == SHN_UNDEF or (strsz is not None and st_name >= strsz):
            return False
        raw = r.src.read_at(strtab + st_name, min(len(want) + 1, r.src.size - strtab - st_name))
        return raw == want + b"\0"

    gnu = _last(tags, DT_GNU_HASH)
    if gnu is not None:
        return _gnu_lookup(r, _to_offset(r, loads, gnu), want, matches)
    sysv = _last(tags, DT_HASH)
    if sysv is not None:
        return _sysv_lookup(r, _to_offset(r, loads, sysv), want, matches)
    return False


def _gnu_lookup(r: _Reader, off: int, name: bytes, matches: object) -> bool:
    nbuckets, symoffset, bloom_size, bloom_shift = r.unpack("IIII", off)
    if nbuckets == 0:
        return False
    h = gnu_hash(name)
    bits = r.wsize * 8
    bloom_off = off + 16
    if bloom_size:
        (word,) = r.unpack(r.word, bloom_off + ((h // bits) % bloom_size) * r.wsize)
        mask = (1 << (h % bits)) | (1 << ((h >> bloom_shift) % bits))
        if word & mask != mask:
            return False
    buckets_off = bloom_off + bloom_size * r.wsize
    (index,) = r.unpack("I", buckets_off + (h % nbuckets) * 4)
    if index == 0:
        return False
    if index < symoffset:
        raise r.fail("GNU hash bucket points below symoffset")
    chains_off = buckets_off + nbuckets * 4
    for _ in range(MAX_CHAIN):
        (ch,) = r.unpack("I", chains_off + (index - symoffset) * 4)
        if (ch | 1) == (h | 1) and matches(index):  # type: ignore[operator]
            return True
        if ch & 1:
            return False
        index += 1
    raise r.fail("GNU hash chain does not end")


def _sysv_lookup(r: _Reader, off: int, name: bytes, matches: object) -> bool:
    nbucket, nchain = r.unpack("II", off)
    if nbucket == 0:
        return False
    h = sysv_hash(name)
    (index,) = r.unpack("I", off + 8 + (h % nbucket) * 4)
    chain_off = off + 8 + nbucket * 4
    for _ in range(min(nchain, MAX_CHAIN) + 1):
        if index == 0:
            return False
        if index >= nchain:
            raise r.fail("SysV hash chain index out of range")
        if matches(index):  # type: ignore[operator]
            return True
        (index,) = r.unpack("I", chain_off + index * 4)
    raise r.fail("SysV hash chain does not end")


def gnu_hash(name: bytes) -> int:
    """dl_new_hash (DJB: h * 33 + c): the hash of DT_GNU_HASH tables."""
    n = len(name)
    if n >= _POW_LIMIT:
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xFFFFFFFF
        return h
    powers, reversed_powers = _powers()
    # h = 5381 * 33^n + sum(c_i * 33^(n-1-i)), mod 2^32: one C-level pass instead of a
    # Python loop per character (the loop costs several microseconds per mangled name).
    total: int = sum(map(mul, name, reversed_powers[_POW_LIMIT - n:]))
    return (5381 * powers[n] + total) & 0xFFFFFFFF


def sysv_hash(name: bytes) -> int:
    """_dl_elf_hash: the hash of DT_HASH tables and of vna_hash / vd_hash."""
    h = 0
    for c in name:
        h = ((h << 4) + c) & 0xFFFFFFFF
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
        h &= ~g & 0xFFFFFFFF
    return h


# Powers of 33 mod 2^32 for gnu_hash, made on first use: the symbol checks hash thousands
# of names, but most commands hash none and should not pay for the table at start-up.
_POW_LIMIT = 1024
_POWERS: tuple[list[int], list[int]] | None = None


def _powers() -> tuple[list[int], list[int]]:
    """(33^i, reversed) for i < _POW_LIMIT; two threads may both build it, with equal results."""
    global _POWERS
    if _POWERS is None:
        p, powers = 1, []
        for _ in range(_POW_LIMIT):
            powers.append(p)
            p = (p * 33) & 0xFFFFFFFF
        _POWERS = (powers, powers[::-1])
    return _POWERS
