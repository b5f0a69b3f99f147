"""Mach-O code signatures: read one, verify it, and keep it valid across a header edit.

arm64 macOS kills a process that maps a page whose hash does not match the signature
(../shared/LOADERS.md rule 36), and editing a load command changes page 0. So every edit
of a signed slice comes with new hashes for the pages it changed, here.

Layout (always big-endian, whatever the slice's byte order). LC_CODE_SIGNATURE points at a
SuperBlob {magic 0xfade0cc0, length, count, then count (type, offset) pairs}. Its blobs:
  - the CodeDirectory (type 0) and alternates (0x1000-0x1004; older signers add a SHA-1
    directory beside the SHA-256 one). Each holds one hash per page of the slice below its
    codeLimit (the code slots) and, just in front of those, the hashes of the other blobs
    (special slot n at hashOffset - n * hashSize: 2 requirements, 5 and 7 entitlements);
  - requirements (type 2), entitlements (5, 7);
  - the CMS signature (0x10000): empty or absent when the signature is ad hoc.
An ad-hoc signature is one whose CodeDirectory has CS_ADHOC: the kernel checks the hashes,
nobody vouches for them. Linkers write such signatures (CS_LINKER_SIGNED too).

A header edit leaves codeLimit (the signature's own offset), execSegBase/execSegLimit (the
__TEXT segment) and the page count as they were, so the signature keeps its size and only
the changed pages' hashes change: nothing else in the file moves. A signature that was not
ad hoc (a Developer ID one) cannot survive an edit; it becomes ad hoc in the same space: its
CMS blob emptied, CS_ADHOC set, the team identifier dropped, the requirements emptied (their
designated requirement names the certificate that no longer signs).

Only the pages an edit touches are read and hashed: the hashes of the other pages are kept
as they are, so a signature that was already wrong elsewhere stays wrong there (verify()
says so). The structural checks follow xnu's cs_validate_codedirectory and
cs_validate_csblob (bsd/kern/ubc_subr.c); nothing here comes from Apple's code.
"""

from __future__ import annotations

import struct

from rpathfix.errors import FormatError
from rpathfix.macho import LC_CODE_SIGNATURE, LC_SEGMENT, LC_SEGMENT_64, read_load_commands, slice_ranges
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from rpathfix.macho import LoadCommands
    from rpathfix.source import ByteSource

CSMAGIC_EMBEDDED_SIGNATURE = 0xFADE0CC0
CSMAGIC_CODEDIRECTORY = 0xFADE0C02
CSMAGIC_REQUIREMENTS = 0xFADE0C01
CSMAGIC_BLOBWRAPPER = 0xFADE0B01  # the CMS signature
CSMAGIC_EMBEDDED_ENTITLEMENTS = 0xFADE7171

CSSLOT_CODEDIRECTORY = 0
CSSLOT_REQUIREMENTS = 2
CSSLOT_ENTITLEMENTS = 5
CSSLOT_ALTERNATE_CODEDIRECTORIES = 0x1000
CSSLOT_ALTERNATE_CODEDIRECTORY_LIMIT = 0x1005
CSSLOT_SIGNATURESLOT = 0x10000

CS_ADHOC = 0x2
CS_LINKER_SIGNED = 0x20000

# CodeDirectory versions: each adds fields to the fixed header.
CS_SUPPORTSNONE = 0x20001  # xnu's earliest
CS_SUPPORTSSCATTER = 0x20100
CS_SUPPORTSTEAMID = 0x20200
CS_SUPPORTSCODELIMIT64 = 0x20300
CS_SUPPORTSEXECSEG = 0x20400
CS_COMPATIBILITY_LIMIT = 0x2F000  # codesign refuses a directory at or beyond this version

# hashType -> (digest size stored in hashSize, hashlib name, bytes kept)
HASH_TYPES = {1: (20, "sha1"), 2: (32, "sha256"), 3: (20, "sha256"), 4: (48, "sha384")}
HASH_NAMES = {1: "sha1", 2: "sha256", 3: "sha256-truncated", 4: "sha384"}

# xnu accepts 4 KiB code pages up to its own page size (16 KiB on arm64).
PAGE_SHIFT_MIN, PAGE_SHIFT_MAX = 12, 14

SUPERBLOB_HEADER = 12
CD_FIXED = 44  # the CodeDirectory's fields up to spare2, in every version
HASH_CHUNK = 1 << 20  # bytes hashed per read in verify()
MAX_PROBLEMS = 8  # per slice: one corrupt file must not make a page of output per page


class CodeDirectory(NamedTuple):
    """One CodeDirectory of a signature, its offsets relative to the SuperBlob."""

    slot: int  # its type in the SuperBlob index (0, or 0x1000.. for an alternate)
    offset: int  # where the blob starts in the SuperBlob
    length: int
    version: int
    flags: int
    hash_offset: int  # from the blob's start to code slot 0
    n_special: int
    n_code: int
    code_limit: int  # codeLimit64 when that is set
    hash_size: int
    hash_type: int
    page_shift: int
    team_offset: int  # 0: none (or a version without the field)
    exec_seg_base: int | None  # None before version 0x20400
    exec_seg_limit: int | None
    identifier: str

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    def code_slot(self, page: int) -> int:
        """Offset in the SuperBlob of the hash of `page`."""
        return self.offset + self.hash_offset + page * self.hash_size

    def special_slot(self, n: int) -> int:
        """Offset in the SuperBlob of special slot n (1 <= n <= n_special)."""
        return self.offset + self.hash_offset - n * self.hash_size


class Signature(NamedTuple):
    """A slice's embedded signature: where LC_CODE_SIGNATURE puts it, and what it holds."""

    dataoff: int  # relative to the slice
    datasize: int
    blob: bytes  # the SuperBlob, `length` bytes (datasize may leave zeros after it)
    entries: tuple[tuple[int, int], ...]  # the SuperBlob index: (type, offset), in order
    directories: tuple[CodeDirectory, ...]

    @property
    def adhoc(self) -> bool:
        """Ad hoc: every directory says so and no CMS blob carries a signature."""
        cms = self.blob_of(CSSLOT_SIGNATURESLOT)
        return all(cd.flags & CS_ADHOC for cd in self.directories) and (cms is None or len(cms) <= 8)

    def blob_of(self, slot: int) -> bytes | None:
        for typ, off in self.entries:
            if typ == slot:
                (length,) = struct.unpack_from(">I", self.blob, off + 4)
                return self.blob[off : off + length]
        return None


class Verdict(NamedTuple):
    """verify()'s answer for one slice; `problems` is empty when the signature is valid
    (or when the slice has none: an unsigned slice is not a broken one)."""

    arch: str
    signed: bool
    adhoc: bool
    identifier: str | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def signature_command(name: str, lcs: LoadCommands) -> tuple[int, int] | None:
    """(dataoff, datasize) of the slice's LC_CODE_SIGNATURE, or None when it is unsigned."""
    for raw in lcs.commands:
        cmd, cmdsize = struct.unpack_from(lcs.endian + "II", raw, 0)
        if cmd == LC_CODE_SIGNATURE:
            if cmdsize < 16:
                raise FormatError(name, f"{lcs.arch}: LC_CODE_SIGNATURE of {cmdsize} bytes")
            dataoff, datasize = struct.unpack_from(lcs.endian + "II", raw, 8)
            return dataoff, datasize
    return None


def text_segment(lcs: LoadCommands) -> tuple[int, int] | None:
    """(fileoff, filesize) of __TEXT: what execSegBase and execSegLimit describe."""
    for raw in lcs.commands:
        (cmd,) = struct.unpack_from(lcs.endian + "I", raw, 0)
        if cmd in (LC_SEGMENT, LC_SEGMENT_64) and raw[8:24].rstrip(b"\0") == b"__TEXT":
            if cmd == LC_SEGMENT_64 and len(raw) >= 72:
                fileoff, filesize = struct.unpack_from(lcs.endian + "QQ", raw, 40)
                return fileoff, filesize
            if cmd == LC_SEGMENT and len(raw) >= 56:
                fileoff, filesize = struct.unpack_from(lcs.endian + "II", raw, 32)
                return fileoff, filesize
    return None


def read_signature(src: ByteSource, lcs: LoadCommands) -> Signature | None:
    """The slice's signature, parsed and checked as xnu checks it before use; None when the
    slice has no LC_CODE_SIGNATURE. FormatError when it is malformed."""
    name = src.name
    found = signature_command(name, lcs)
    if found is None:
        return None
    dataoff, datasize = found
    if datasize < SUPERBLOB_HEADER or dataoff + datasize > lcs.size:
        raise FormatError(name, f"{lcs.arch}: code signature {dataoff}..{dataoff + datasize} outside the "
                                f"{lcs.size}-byte slice")
    data = src.read_at(lcs.offset + dataoff, datasize)
    return parse_signature(name, data, dataoff, datasize)


def parse_signature(name: str, data: bytes, dataoff: int, datasize: int) -> Signature:
    """Parse a SuperBlob (data: the LC_CODE_SIGNATURE bytes); FormatError when malformed."""

    def bad(reason: str) -> FormatError:
        return FormatError(name, f"code signature: {reason}")

    magic, length, count = struct.unpack_from(">III", data, 0)
    if magic != CSMAGIC_EMBEDDED_SIGNATURE:
        raise bad(f"magic {magic:#010x} is not an embedded signature")
    if not SUPERBLOB_HEADER <= length <= len(data):
        raise bad(f"SuperBlob length {length} outside its {len(data)}-byte LC_CODE_SIGNATURE")
    if (length - SUPERBLOB_HEADER) // 8 < count:
        raise bad(f"{count} blobs do not fit a {length}-byte SuperBlob")
    blob = data[:length]
    index = []
    directories = []
    for i in range(count):
        typ, off = struct.unpack_from(">II", blob, SUPERBLOB_HEADER + 8 * i)
        if off + 8 > length:
            raise bad(f"blob {i} at {off} outside the {length}-byte SuperBlob")
        _bmagic, blen = struct.unpack_from(">II", blob, off)
        if blen < 8 or off + blen > length:
            raise bad(f"blob {i} ({blen} bytes at {off}) outside the {length}-byte SuperBlob")
        index.append((typ, off))
        if typ == CSSLOT_CODEDIRECTORY or CSSLOT_ALTERNATE_CODEDIRECTORIES <= typ < CSSLOT_ALTERNATE_CODEDIRECTORY_LIMIT:
            directories.append(_parse_directory(bad, blob, typ, off, blen))
    if not directories:
        raise bad("no CodeDirectory")
    kinds = [cd.hash_type for cd in directories]
    if len(set(kinds)) != len(kinds):  # xnu: "multiple hash=N CodeDirectories in signature; rejecting"
        raise bad("two CodeDirectories with the same hash type")
    return Signature(dataoff=dataoff, datasize=datasize, blob=blob, entries=tuple(index),
                     directories=tuple(directories))


def _parse_directory(bad: Callable[[str], FormatError], blob: bytes, slot: int, off: int,
                     length: int) -> CodeDirectory:
    if length < CD_FIXED:
        raise bad(f"CodeDirectory of {length} bytes")
    (magic, _len, version, flags, hash_offset, ident_offset, n_special, n_code, code_limit, hash_size, hash_type,
     _platform, page_shift, _spare2) = struct.unpack_from(">IIIIIIIIIBBBBI", blob, off)
    if magic != CSMAGIC_CODEDIRECTORY:
        raise bad(f"CodeDirectory magic {magic:#010x}")
    if not CS_SUPPORTSNONE <= version < CS_COMPATIBILITY_LIMIT:
        raise bad(f"CodeDirectory version {version:#x} unsupported")
    if hash_type not in HASH_TYPES:
        raise bad(f"unknown hash type {hash_type}")
    if hash_size != HASH_TYPES[hash_type][0]:
        raise bad(f"hash size {hash_size} for {HASH_NAMES[hash_type]}")
    if not PAGE_SHIFT_MIN <= page_shift <= PAGE_SHIFT_MAX:
        raise bad(f"page size 2^{page_shift} (the kernel takes 2^{PAGE_SHIFT_MIN}..2^{PAGE_SHIFT_MAX})")
    if hash_offset > length or hash_offset // hash_size < n_special or (length - hash_offset) // hash_size < n_code:
        raise bad(f"{n_special} special and {n_code} code slots do not fit the {length}-byte CodeDirectory")

    def field(fmt: str, at: int, since: int) -> int:
        if version < since:
            return 0
        if at + struct.calcsize(fmt) > length:
            raise bad(f"version {version:#x} CodeDirectory of {length} bytes is too short")
        value: int = struct.unpack_from(">" + fmt, blob, off + at)[0]
        return value

    scatter = field("I", 44, CS_SUPPORTSSCATTER)
    if scatter:  # pre-10.7 scatter vectors: nothing current writes them, and pages would not be linear
        raise bad("scatter vectors are not supported")
    team_offset = field("I", 48, CS_SUPPORTSTEAMID)
    code_limit64 = field("Q", 56, CS_SUPPORTSCODELIMIT64)
    exec_base = exec_limit = None
    if version >= CS_SUPPORTSEXECSEG:
        exec_base, exec_limit = field("Q", 64, CS_SUPPORTSEXECSEG), field("Q", 72, CS_SUPPORTSEXECSEG)
    identifier = ""
    for what, at in (("identifier", ident_offset), ("team identifier", team_offset)):
        if at:
            end = blob.find(b"\0", off + at, off + length)
            if at >= length or end < 0:
                raise bad(f"{what} at {at} not terminated inside the CodeDirectory")
            if what == "identifier":
                identifier = blob[off + at : end].decode("utf-8", "replace")
    return CodeDirectory(
        slot=slot, offset=off, length=length, version=version, flags=flags, hash_offset=hash_offset,
        n_special=n_special, n_code=n_code, code_limit=code_limit64 or code_limit, hash_size=hash_size,
        hash_type=hash_type, page_shift=page_shift, team_offset=team_offset, exec_seg_base=exec_base,
        exec_seg_limit=exec_limit, identifier=identifier)


def _hash(hash_type: int, data: bytes) -> bytes:
    import hashlib

    size, algo = HASH_TYPES[hash_type]
    return hashlib.new(algo, data).digest()[:size]


# --------------------------------------------------------------------------- verify


def verify(src: ByteSource) -> tuple[Verdict, ...]:
    """Check the signature of every slice: structure (as xnu does), that it covers the slice
    up to itself, that execSeg matches __TEXT, every page hash and every special-slot hash
    of a blob it carries. Reads the whole file once in bounded chunks. FormatError only when
    the file is not a well-formed Mach-O; a bad signature is a problem in the verdict."""
    _fat, ranges = slice_ranges(src)
    return tuple(_verify_slice(src, read_load_commands(src, off, size)) for off, size in ranges)


def _verify_slice(src: ByteSource, lcs: LoadCommands) -> Verdict:
    try:
        sig = read_signature(src, lcs)
    except FormatError as e:
        return Verdict(lcs.arch, signed=True, adhoc=False, identifier=None, problems=(e.reason,))
    if sig is None:
        return Verdict(lcs.arch, signed=False, adhoc=False, identifier=None, problems=())
    problems: list[str] = []
    text = text_segment(lcs)
    for cd in sig.directories:
        what = f"{HASH_NAMES[cd.hash_type]} CodeDirectory"
        if cd.code_limit != sig.dataoff:
            problems.append(f"{what}: codeLimit {cd.code_limit} is not the signature's offset {sig.dataoff}")
        pages = -(-cd.code_limit // cd.page_size)
        if cd.n_code != pages:
            problems.append(f"{what}: {cd.n_code} code slots for {pages} pages")
        if cd.exec_seg_limit is not None and text is not None and (cd.exec_seg_base, cd.exec_seg_limit) != text:
            problems.append(f"{what}: execSeg {cd.exec_seg_base}+{cd.exec_seg_limit} is not __TEXT's "
                            f"{text[0]}+{text[1]}")
        for slot in range(1, cd.n_special + 1):
            blob = sig.blob_of(slot)
            stored = sig.blob[cd.special_slot(slot) : cd.special_slot(slot) + cd.hash_size]
            if blob is not None and _hash(cd.hash_type, blob) != stored:
                problems.append(f"{what}: special slot {slot} does not match its blob")
        if cd.n_code == pages and cd.code_limit <= lcs.size:
            problems.extend(_check_pages(src, lcs.offset, sig, cd, what))
    cms = sig.blob_of(CSSLOT_SIGNATURESLOT)
    if cms is not None and struct.unpack_from(">I", cms, 0)[0] != CSMAGIC_BLOBWRAPPER:
        problems.append("the signature slot does not hold a CMS wrapper blob")
    return Verdict(lcs.arch, signed=True, adhoc=sig.adhoc, identifier=sig.directories[0].identifier,
                   problems=tuple(problems[:MAX_PROBLEMS]))


def _check_pages(src: ByteSource, base: int, sig: Signature, cd: CodeDirectory, what: str) -> list[str]:
    bad: list[int] = []
    ps = cd.page_size
    chunk = max(ps, HASH_CHUNK - HASH_CHUNK % ps)
    for start in range(0, cd.code_limit, chunk):
        data = src.read_at(base + start, min(chunk, cd.code_limit - start))
        for rel in range(0, len(data), ps):
            page = (start + rel) // ps
            slot = cd.code_slot(page)
            if _hash(cd.hash_type, data[rel : rel + ps]) != sig.blob[slot : slot + cd.hash_size]:
                bad.append(page)
    if not bad:
        return []
    return [f"{what}: {len(bad)} of {cd.n_code} page hashes do not match (first: page {bad[0]}, "
            f"bytes {bad[0] * ps}..{min((bad[0] + 1) * ps, cd.code_limit)})"]


# --------------------------------------------------------------------------- re-sign


def plan_resign(src: ByteSource, lcs: LoadCommands, edits: Sequence[tuple[int, bytes]],
                sig: Signature | None = None) -> list[tuple[int, bytes]]:
    """Writes (file offsets) that make the slice's signature valid again after `edits`
    ((slice offset, new bytes), all below the signature) are applied; [] for an unsigned slice.
    `sig` is the slice's read_signature() when the caller has it already.

    Only pages an edit touches are read and hashed; an ad-hoc signature changes only in
    those pages' hash slots. A signature that was not ad hoc is rewritten as an ad-hoc one
    in the same LC_CODE_SIGNATURE space (module docstring), so no size, no LC_CODE_SIGNATURE
    field and no __LINKEDIT field changes either way.
    """
    if sig is None:
        sig = read_signature(src, lcs)
    if sig is None or not edits:
        return []
    end = max(off + len(data) for off, data in edits)
    if end > sig.dataoff:
        raise FormatError(src.name, f"{lcs.arch}: an edit reaches into the code signature at {sig.dataoff}")
    for cd in sig.directories:
        if cd.code_limit > sig.dataoff:  # it would hash the signature itself (or the next slice)
            raise FormatError(src.name, f"{lcs.arch}: the code signature covers {cd.code_limit} bytes but starts "
                                        f"at {sig.dataoff}")
    blob = bytearray(sig.blob)
    slots: list[tuple[int, int]] = []  # (offset in the SuperBlob, size) of the hashes that changed
    for cd in sig.directories:
        ps = cd.page_size
        first = min(off for off, _ in edits) // ps
        for page in range(first, min(-(-end // ps), cd.n_code)):
            lo, hi = page * ps, min((page + 1) * ps, cd.code_limit)
            if not any(off < hi and off + len(data) > lo for off, data in edits):
                continue
            content = bytearray(src.read_at(lcs.offset + lo, hi - lo))
            for off, data in edits:
                a, b = max(off, lo), min(off + len(data), hi)
                if a < b:
                    content[a - lo : b - lo] = data[a - off : b - off]
            slot = cd.code_slot(page)
            new_hash = _hash(cd.hash_type, bytes(content))
            if blob[slot : slot + cd.hash_size] != new_hash:
                blob[slot : slot + cd.hash_size] = new_hash
                slots.append((slot, cd.hash_size))
    if not sig.adhoc:
        new = _as_adhoc(sig, bytes(blob))
        if len(new) > sig.datasize:  # only when blobs overlapped or were shorter than their minimum
            raise FormatError(src.name, f"{lcs.arch}: the code signature's blobs overlap; cannot re-sign it ad hoc")
        return [(lcs.offset + sig.dataoff, new + bytes(sig.datasize - len(new)))]
    writes: list[tuple[int, bytes]] = []  # whole hash slots; adjacent ones in one write
    for slot, size in sorted(slots):
        at = lcs.offset + sig.dataoff + slot
        if writes and writes[-1][0] + len(writes[-1][1]) == at:
            writes[-1] = (writes[-1][0], writes[-1][1] + bytes(blob[slot : slot + size]))
        else:
            writes.append((at, bytes(blob[slot : slot + size])))
    return writes


EMPTY_REQUIREMENTS = struct.pack(">III", CSMAGIC_REQUIREMENTS, 12, 0)
EMPTY_CMS = struct.pack(">II", CSMAGIC_BLOBWRAPPER, 8)


def _as_adhoc(sig: Signature, blob: bytes) -> bytes:
    """The SuperBlob rebuilt as an ad-hoc signature: same blobs in the same order, the CMS
    one emptied, requirements emptied, every directory with CS_ADHOC and no team. Never
    longer than the original (both replaced blobs shrink to their minimum)."""
    parts: list[bytes] = []
    for _typ, off in sig.entries:
        (length,) = struct.unpack_from(">I", blob, off + 4)
        parts.append(blob[off : off + length])
    requirements_hash: dict[int, bytes] = {}
    for i, (typ, _off) in enumerate(sig.entries):
        if typ == CSSLOT_SIGNATURESLOT:
            parts[i] = EMPTY_CMS
        elif typ == CSSLOT_REQUIREMENTS:
            parts[i] = EMPTY_REQUIREMENTS
    for cd in sig.directories:
        requirements_hash[cd.slot] = _hash(cd.hash_type, EMPTY_REQUIREMENTS)
    by_slot = {cd.slot: cd for cd in sig.directories}
    for i, (typ, _off) in enumerate(sig.entries):
        found = by_slot.get(typ)
        if found is None:
            continue
        cd = found
        d = bytearray(parts[i])
        struct.pack_into(">I", d, 12, cd.flags | CS_ADHOC)
        if cd.version >= CS_SUPPORTSTEAMID:
            struct.pack_into(">I", d, 48, 0)
        if cd.n_special >= CSSLOT_REQUIREMENTS and sig.blob_of(CSSLOT_REQUIREMENTS) is not None:
            at = cd.hash_offset - CSSLOT_REQUIREMENTS * cd.hash_size
            d[at : at + cd.hash_size] = requirements_hash[cd.slot]
        parts[i] = bytes(d)
    head = SUPERBLOB_HEADER + 8 * len(parts)
    out = bytearray()
    offsets = []
    for part in parts:
        offsets.append(head + len(out))
        out += part
    index = b"".join(struct.pack(">II", typ, off) for (typ, _), off in zip(sig.entries, offsets))
    return struct.pack(">III", CSMAGIC_EMBEDDED_SIGNATURE, head + len(out), len(parts)) + index + bytes(out)
