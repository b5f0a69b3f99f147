"""Code signatures: the verifier against signatures written by zig's linker, by
llvm-install-name-tool-14 and by an independent signer (macho_helpers.superblob, hashlib
straight from the format), each with a corrupted copy as the control; and re-signing after
an edit for the shapes no linker here writes (SHA-1 + SHA-256 directories, a Developer-ID
style signature with a team, requirements, entitlements and a CMS blob)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import zig_available
from macho_helpers import (
    INSTALL_NAME_TOOL,
    apply,
    build_inputs,
    copy_to,
    find_command,
    normalize,
    plan,
    resign,
)
from rpathfix.codesign import (
    CS_ADHOC,
    CSMAGIC_BLOBWRAPPER,
    CSMAGIC_REQUIREMENTS,
    Signature,
    plan_resign,
    read_signature,
    text_segment,
    verify,
)
from rpathfix.errors import EditError, FormatError
from rpathfix.macho import read_load_commands
from rpathfix.macho_write import plan_patch
from rpathfix.model import Change, Edit
from rpathfix.source import BytesSource, FileSource

if not zig_available():
    pytest.skip("`python -m ziglang` is not available: cannot link Mach-O test binaries", allow_module_level=True)

LC_CODE_SIGNATURE = 0x1D
REQUIREMENTS = struct.pack(">III", CSMAGIC_REQUIREMENTS, 20, 1) + struct.pack(">II", 3, 0)  # one designated req.
ENTITLEMENTS = struct.pack(">II", 0xFADE7171, 8 + 11) + b"<plist/>\n\0\0"


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("codesign"))


def _sig(path: Path) -> Signature:
    with FileSource(str(path)) as src:
        sig = read_signature(src, read_load_commands(src, 0, src.size))
    assert sig is not None
    return sig


def _one(path: Path) -> tuple[bool, tuple[str, ...]]:
    (v,) = verify(FileSource(str(path)))
    return v.ok, v.problems


def test_zig_signature(inputs: dict[str, Path]) -> None:
    f = inputs["dylib-arm64"]
    (v,) = verify(FileSource(str(f)))
    assert v.ok and v.signed and v.adhoc and v.identifier == "libxa.dylib"
    sig = _sig(f)
    (cd,) = sig.directories
    assert (cd.hash_type, cd.page_shift, cd.code_limit) == (2, 14, sig.dataoff)
    with FileSource(str(f)) as src:
        text = text_segment(read_load_commands(src, 0, src.size))
    assert (cd.exec_seg_base, cd.exec_seg_limit) == text


def test_unsigned_slice(inputs: dict[str, Path]) -> None:
    (v,) = verify(FileSource(str(inputs["dylib-x86_64"])))
    assert (v.signed, v.ok, v.adhoc) == (False, True, False)
    with FileSource(str(inputs["dylib-x86_64"])) as src:
        assert plan_resign(src, read_load_commands(src, 0, src.size), [(0, b"x")]) == []


def test_llvm_signature(inputs: dict[str, Path], tmp_path: Path) -> None:
    if INSTALL_NAME_TOOL is None:
        pytest.skip("no llvm-install-name-tool")
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    normalize(f)
    assert _one(f) == (True, ())
    assert _sig(f).directories[0].page_shift == 12  # llvm signs 4 KiB pages, zig 16 KiB: both valid


@pytest.mark.parametrize("options", [
    {"hash_types": (2,), "page_shift": 12},
    {"hash_types": (2,), "page_shift": 13},
    {"hash_types": (1, 2), "page_shift": 12},
    {"hash_types": (2,), "page_shift": 14, "requirements": REQUIREMENTS, "entitlements": ENTITLEMENTS},
    {"hash_types": (1, 2), "page_shift": 12, "flags": 0, "team": "ABCDE12345", "requirements": REQUIREMENTS,
     "entitlements": ENTITLEMENTS, "cms": b"\x30\x80" + bytes(300)},
], ids=["sha256-4k", "sha256-8k", "sha1+sha256", "special-slots", "developer-id"])
def test_independent_signer_verifies(inputs: dict[str, Path], tmp_path: Path, options: dict[str, object]) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    resign(f, ident="libxa.dylib", **options)
    (v,) = verify(FileSource(str(f)))
    assert v.ok, v.problems
    assert v.adhoc == (options.get("flags", CS_ADHOC) != 0)


def _corrupt(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _cd_at(path: Path, index: int = 0) -> int:
    """File offset of the index-th CodeDirectory."""
    sig = _sig(path)
    return sig.dataoff + sig.directories[index].offset


CORRUPTIONS = [
    ("page", None, b"\xff", "page hashes do not match (first: page 1"),
    ("superblob magic", "sig", struct.pack(">I", 0xFADE0CC1), "not an embedded signature"),
    ("blob offset", "sig+16", struct.pack(">I", 0xFFFF), "outside"),
    ("cd magic", "cd", struct.pack(">I", 0xFADE0C03), "CodeDirectory magic"),
    ("version", "cd+8", struct.pack(">I", 0x20000), "version 0x20000 unsupported"),
    ("hash type", "cd+37", b"\x09", "unknown hash type 9"),
    ("hash size", "cd+36", b"\x14", "hash size 20 for sha256"),
    ("page size", "cd+39", b"\x0f", "page size 2^15"),
    ("code slots", "cd+28", struct.pack(">I", 1), "1 code slots for"),
    ("code limit", "cd+32", struct.pack(">I", 4096), "codeLimit 4096"),
    ("exec seg", "cd+72", struct.pack(">Q", 1), "execSeg"),
    ("ident", "cd+20", struct.pack(">I", 0xFFFFFF), "identifier"),
]


@pytest.mark.parametrize("field,at,value,message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_signature_is_reported(inputs: dict[str, Path], tmp_path: Path, field: str, at: str | None,
                                         value: bytes, message: str) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    assert _one(f) == (True, ())  # control
    sig = _sig(f)
    if at is None:
        offset = 16384 + 3  # a byte in page 1 (zig: 16 KiB pages)
    elif at.startswith("sig"):
        offset = sig.dataoff + int(at[4:] or 0)
    else:
        offset = _cd_at(f) + int(at[3:] or 0)
    _corrupt(f, offset, value)
    ok, problems = _one(f)
    assert not ok
    assert any(message in p for p in problems), problems


def test_special_slot_mismatch(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    resign(f, ident="libxa.dylib", requirements=REQUIREMENTS, entitlements=ENTITLEMENTS)
    assert _one(f) == (True, ())
    sig = _sig(f)
    ent = next(off for typ, off in sig.entries if typ == 5)
    _corrupt(f, sig.dataoff + ent + 9, b"X")
    ok, problems = _one(f)
    assert not ok and any("special slot 5" in p for p in problems)


def test_two_directories_with_one_hash_type(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    resign(f, ident="libxa.dylib", hash_types=(2, 2))
    ok, problems = _one(f)
    assert not ok and "same hash type" in problems[0]  # xnu rejects this


def test_signature_outside_slice(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    pos = find_command(f.read_bytes(), LC_CODE_SIGNATURE)
    _corrupt(f, pos + 12, struct.pack("<I", 1 << 20))
    ok, problems = _one(f)
    assert not ok and "outside" in problems[0]
    with pytest.raises(FormatError):
        plan(f, Edit("add-rpath", "/x"))


def test_resign_sha1_and_sha256(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    resign(f, ident="libxa.dylib", hash_types=(1, 2), page_shift=12, requirements=REQUIREMENTS)
    before = _sig(f)
    patch = plan(f, Edit("add-rpath", "/opt/lib"), Edit("set-id", "@rpath/libxa.2.dylib"))
    assert len(patch.writes) == 3  # the header, then slot 0 of each directory
    control = copy_to(f, tmp_path / "control")
    apply(control, patch._replace(writes=patch.writes[:1]))
    assert sum("page hashes do not match" in p for p in _one(control)[1]) == 2
    apply(f, patch)
    assert _one(f) == (True, ())
    after = _sig(f)
    assert after.blob != before.blob and len(after.blob) == len(before.blob)
    for cd in after.directories:
        slot0 = slice(cd.code_slot(0), cd.code_slot(0) + cd.hash_size)
        assert after.blob[slot0] != before.blob[slot0]
        rest = slice(cd.code_slot(1), cd.code_slot(cd.n_code))
        assert after.blob[rest] == before.blob[rest]  # only page 0 changed


def test_developer_id_signature_becomes_adhoc(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    resign(f, ident="libxa.dylib", hash_types=(1, 2), flags=0, team="ABCDE12345", requirements=REQUIREMENTS,
           entitlements=ENTITLEMENTS, cms=b"\x30\x80" + bytes(500))
    (v,) = verify(FileSource(str(f)))
    assert v.ok and not v.adhoc
    size, lc_before = f.stat().st_size, f.read_bytes()[find_command(f.read_bytes(), LC_CODE_SIGNATURE):][:16]
    patch = plan(f, Edit("add-rpath", "/opt/lib"))
    assert Change("signature", "signed", "ad-hoc", "arm64") in patch.changes
    apply(f, patch)
    (v,) = verify(FileSource(str(f)))
    assert v.ok and v.adhoc, v.problems
    assert f.stat().st_size == size
    data = f.read_bytes()
    assert data[find_command(data, LC_CODE_SIGNATURE):][:16] == lc_before  # same space, same LC_CODE_SIGNATURE
    sig = _sig(f)
    assert sig.blob_of(0x10000) == struct.pack(">II", CSMAGIC_BLOBWRAPPER, 8)
    assert sig.blob_of(2) == struct.pack(">III", CSMAGIC_REQUIREMENTS, 12, 0)
    assert sig.blob_of(5) == ENTITLEMENTS
    for cd in sig.directories:
        assert cd.flags & CS_ADHOC and cd.team_offset == 0
    assert data[sig.dataoff + len(sig.blob) : sig.dataoff + sig.datasize] == bytes(sig.datasize - len(sig.blob))
    # once ad hoc, the next edit only rewrites hashes
    assert all(len(b) <= 64 for _off, b in plan(f, Edit("add-rpath", "/opt/lib2")).writes[1:])


def test_verify_bad_input() -> None:
    with pytest.raises(FormatError):
        verify(BytesSource("x.txt", b"not a mach-o file"))


_DATA: dict[str, bytes] = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 247), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_signatures_never_crash(inputs: dict[str, Path], flips: list[tuple[int, int]]) -> None:
    if "a" not in _DATA:
        _DATA["a"] = inputs["dylib-arm64"].read_bytes()
    data = bytearray(_DATA["a"])
    dataoff = struct.unpack_from("<I", data, find_command(bytes(data), LC_CODE_SIGNATURE) + 8)[0]
    for pos, value in flips:
        data[dataoff + pos] = value
    verdicts = verify(BytesSource("m.dylib", bytes(data)))  # problems, never an exception
    assert len(verdicts) == 1
    try:
        patch = plan_patch(BytesSource("m.dylib", bytes(data)), [Edit("add-rpath", "/x")])
    except (FormatError, EditError):
        return
    assert all(off >= 0 and off + len(b) <= len(data) for off, b in patch.writes)
