"""The Mach-O edit planner against zig-built dylibs, cross-checked with llvm-install-name-tool-14.

Every edit is made twice, by plan_patch and by llvm-install-name-tool-14 on a copy:
  - on the file as zig linked it, llvm-objdump must show the same install-name and LC_RPATH
    commands (same index, cmdsize, strings) and the same header counts; the other bytes
    differ because llvm rewrites the whole file its way (segments page-rounded, the string
    table rebuilt, a new signature with 4 KiB pages and its own identifier), while the plan
    only touches the header and the changed page hashes (checked byte by byte here);
  - on a file llvm laid out once already (normalize()), the two outputs are byte-identical,
    signature included: the same bytes a peer tool writes, so the signature is what arm64
    macOS accepts from llvm's tools.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LIPO, zig_available
from macho_helpers import (
    INSTALL_NAME_TOOL,
    OBJDUMP,
    apply,
    build_inputs,
    copy_to,
    install_name_tool,
    normalize,
    objdump_view,
    plan,
    synthetic_32,
)
from rpathfix.codesign import read_signature, verify
from rpathfix.errors import EditError, FormatError, UsageError
from rpathfix.macho import read_load_commands, read_macho
from rpathfix.macho_write import plan_patch
from rpathfix.model import Change, Edit
from rpathfix.source import BytesSource, FileSource

if not zig_available():
    pytest.skip("`python -m ziglang` is not available: cannot link Mach-O test binaries", allow_module_level=True)
if INSTALL_NAME_TOOL is None or OBJDUMP is None:
    pytest.skip("llvm-install-name-tool-14 / llvm-objdump-14 are not installed", allow_module_level=True)

DEP = "@rpath/libxdep.dylib"
LONG = "@loader_path/../../a/much/longer/directory/than/before/lib"

# (id, our edits, the same edits as llvm-install-name-tool arguments)
CASES = [
    ("add-rpath", [Edit("add-rpath", "/opt/new/lib")], ["-add_rpath", "/opt/new/lib"]),
    ("remove-rpath", [Edit("remove-rpath", "@loader_path/../lib")], ["-delete_rpath", "@loader_path/../lib"]),
    ("replace-longer", [Edit("replace-rpath", "@loader_path/../lib", LONG)], ["-rpath", "@loader_path/../lib", LONG]),
    ("replace-shorter", [Edit("replace-rpath", "@loader_path/../lib", "@a")], ["-rpath", "@loader_path/../lib", "@a"]),
    ("remove-all", [Edit("remove-all-rpaths")], ["-delete_all_rpaths"]),
    ("set-rpath", [Edit("set-rpath", f"/x:{LONG}")], ["-rpath", "@loader_path/../lib", "/x", "-rpath", "@loader_path",
                                                       LONG]),
    ("set-id", [Edit("set-id", "@rpath/libxa.1.dylib")], ["-id", "@rpath/libxa.1.dylib"]),
    ("change", [Edit("change", DEP, "@loader_path/../deps/libxdep.dylib")],
     ["-change", DEP, "@loader_path/../deps/libxdep.dylib"]),
    ("add-and-change", [Edit("add-rpath", "@loader_path/../../nvidia/lib"), Edit("change", DEP, "@rpath/libxdep.2.dylib")],
     ["-add_rpath", "@loader_path/../../nvidia/lib", "-change", DEP, "@rpath/libxdep.2.dylib"]),
]
KINDS = ["dylib-arm64", "dylib-x86_64", "fat"]


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_inputs(tmp_path_factory.mktemp("macho-write"))


def _input(inputs: dict[str, Path], kind: str) -> Path:
    if kind not in inputs:
        pytest.skip(f"no {kind} input (no lipo?)")
    return inputs[kind]


def _signed_ranges(path: Path) -> list[tuple[int, int]]:
    """File ranges the plan may change in each slice: the header region and the code slots."""
    ranges = []
    with FileSource(str(path)) as src:
        for s in read_macho(src).slices:
            lcs = read_load_commands(src, s.offset, s.size)
            ranges.append((s.offset, s.offset + lcs.header_size + s.header_padding + lcs.sizeofcmds))
            sig = read_signature(src, lcs)
            if sig is not None:
                for cd in sig.directories:
                    start = s.offset + sig.dataoff + cd.code_slot(0)
                    ranges.append((start, start + cd.n_code * cd.hash_size))
    return ranges


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_same_load_commands_as_llvm(inputs: dict[str, Path], tmp_path: Path, kind: str,
                                    case: tuple[str, list[Edit], list[str]]) -> None:
    _id, edits, llvm_args = case
    original = _input(inputs, kind)
    ours, theirs = copy_to(original, tmp_path / "ours"), copy_to(original, tmp_path / "llvm")
    patch = plan(ours, *edits)
    assert patch.method == "in-place" and patch.size == original.stat().st_size
    apply(ours, patch)
    r = install_name_tool(theirs, *llvm_args)
    assert r.returncode == 0, r.stderr
    mine, peer, before = objdump_view(ours), objdump_view(theirs), objdump_view(original)
    assert mine.keys() == peer.keys()
    for arch in mine:
        assert mine[arch][0] == peer[arch][0], arch  # ncmds, sizeofcmds
        assert mine[arch][1] == peer[arch][1], arch  # the install-name and LC_RPATH commands, as text
        assert mine[arch][2] == peer[arch][2], arch  # the kind of every command, in order
        assert mine[arch] != before[arch]  # control: the edit shows
    # every signed slice is valid in both outputs; unsigned slices stay unsigned
    for path in (ours, theirs):
        verdicts = verify(FileSource(str(path)))
        assert all(v.ok for v in verdicts), verdicts
        assert [v.signed for v in verdicts] == [v.arch == "arm64" for v in verdicts]
    # ours changed nothing outside the header region and the page-hash slots; same size
    old, new = original.read_bytes(), ours.read_bytes()
    assert len(old) == len(new)
    allowed = _signed_ranges(original)
    changed = [i for i in range(len(old)) if old[i] != new[i]]
    assert changed
    assert all(any(a <= i < b for a, b in allowed) for i in changed)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_byte_identical_to_llvm_on_its_own_layout(inputs: dict[str, Path], tmp_path: Path, kind: str,
                                                  case: tuple[str, list[Edit], list[str]]) -> None:
    _id, edits, llvm_args = case
    base = copy_to(_input(inputs, kind), tmp_path / "base")
    normalize(base)
    ours, theirs = copy_to(base, tmp_path / "ours"), copy_to(base, tmp_path / "llvm")
    apply(ours, plan(ours, *edits))
    assert install_name_tool(theirs, *llvm_args).returncode == 0
    assert ours.read_bytes() == theirs.read_bytes()
    assert ours.read_bytes() != base.read_bytes()  # control


def test_commands_across_a_code_page(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Load commands that grow past 4 KiB on a file signed with 4 KiB pages: pages 0 and 1
    change, their two hash slots are rewritten (one write), and llvm agrees byte for byte."""
    base = copy_to(inputs["dylib-arm64"], tmp_path / "base")
    normalize(base)
    entries = [f"/opt/{i:02d}/" + "d" * 100 for i in range(28)]
    ours, theirs = copy_to(base, tmp_path / "ours"), copy_to(base, tmp_path / "llvm")
    with FileSource(str(ours)) as src:
        lcs = read_load_commands(src, 0, src.size)
        sig = read_signature(src, lcs)
    assert sig is not None and sig.directories[0].page_size == 4096
    assert lcs.header_size + lcs.sizeofcmds < 4096
    patch = plan(ours, *[Edit("add-rpath", e) for e in entries])
    header_end = patch.writes[0][0] + len(patch.writes[0][1])
    assert header_end > 4096
    assert [len(b) for _off, b in patch.writes[1:]] == [64]
    apply(ours, patch)
    args = [a for e in entries for a in ("-add_rpath", e)]
    assert install_name_tool(theirs, *args).returncode == 0
    assert ours.read_bytes() == theirs.read_bytes()
    assert verify(FileSource(str(ours)))[0].ok


def test_changes_reported(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    patch = plan(f, Edit("set-rpath", f"/x:{LONG}:/x:/y"), Edit("set-id", "@rpath/libxa.1.dylib"),
                 Edit("change", DEP, "@rpath/libxdep.2.dylib"), Edit("change", "@rpath/absent.dylib", "@rpath/b.dylib"))
    assert patch.changes == (
        Change("lc_rpath", "@loader_path/../lib", "/x", "arm64"),
        Change("lc_rpath", "@loader_path", LONG, "arm64"),
        Change("lc_rpath", None, "/y", "arm64"),  # the repeated /x is dropped: dyld refuses duplicate LC_RPATHs
        Change("id", "@rpath/libxa.dylib", "@rpath/libxa.1.dylib", "arm64"),
        Change("dylib", DEP, "@rpath/libxdep.2.dylib", "arm64"),
    )
    apply(f, patch)
    (s,) = read_macho(FileSource(str(f))).slices
    assert s.rpaths == ("/x", LONG, "/y")
    assert s.install_name == "@rpath/libxa.1.dylib"
    assert DEP not in [d.name for d in s.dylibs] and "@rpath/libxdep.2.dylib" in [d.name for d in s.dylibs]


def test_fat_every_slice(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(_input(inputs, "fat"), tmp_path)
    before = f.read_bytes()
    patch = plan(f, Edit("add-rpath", "/opt/lib"))
    assert sorted(c.slice or "" for c in patch.changes) == ["arm64", "x86_64"]
    apply(f, patch)
    after = f.read_bytes()
    assert after[:8 + 2 * 20] == before[:8 + 2 * 20]  # the fat header and arch table: same offsets and sizes
    r = subprocess.run([LIPO or "llvm-lipo-14", "-info", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "x86_64" in r.stdout and "arm64" in r.stdout
    info = read_macho(FileSource(str(f)))
    assert [s.rpaths[-1] for s in info.slices] == ["/opt/lib", "/opt/lib"]
    assert [(v.arch, v.signed, v.ok) for v in verify(FileSource(str(f)))] == [("x86_64", False, True),
                                                                              ("arm64", True, True)]


def test_signature_must_be_rewritten(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Control for the re-signing: the header write alone leaves page 0's hash wrong."""
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    patch = plan(f, Edit("add-rpath", "/opt/lib"))
    assert len(patch.writes) == 2  # the header, then page 0's hash slot
    header_only = patch._replace(writes=patch.writes[:1])
    apply(f, header_only)
    (v,) = verify(FileSource(str(f)))
    assert not v.ok and "page 0" in v.problems[0]
    apply(f, patch)
    assert verify(FileSource(str(f)))[0].ok


def test_executable(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["exe"], tmp_path)
    with FileSource(str(f)) as src:
        lcs = read_load_commands(src, 0, src.size)
        sig = read_signature(src, lcs)
    assert sig is not None and sig.directories[0].exec_seg_limit
    apply(f, plan(f, Edit("replace-rpath", "@executable_path", "@executable_path/../lib")))
    assert read_macho(FileSource(str(f))).slices[0].rpaths == ("@executable_path/../lib",)
    assert verify(FileSource(str(f)))[0].ok
    with pytest.raises(EditError, match="not a dylib"):
        plan(f, Edit("set-id", "@rpath/x"))


def test_padding_too_small(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["tight"], tmp_path)
    (s,) = read_macho(FileSource(str(f))).slices
    assert s.header_padding < 32
    entry = "/opt/a/rather/long/directory/name"
    need = -(-(12 + len(entry) + 1) // 8) * 8
    with pytest.raises(EditError) as e:
        plan(f, Edit("add-rpath", entry))
    assert f"{need - s.header_padding} bytes missing" in str(e.value)
    assert "-headerpad_max_install_names" in str(e.value)
    assert e.value.exit_code == 1
    # what shrinks still fits; the control: the padded build takes the same edit
    assert plan(f, Edit("remove-all-rpaths")).method == "in-place"
    assert plan(inputs["dylib-arm64"], Edit("add-rpath", entry)).method == "in-place"


def test_nothing_to_do_writes_nothing(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    for edits in ([Edit("add-rpath", "@loader_path")], [Edit("remove-rpath", "/absent")],
                  [Edit("change", "/absent", "/b")], [Edit("set-id", "@rpath/libxa.dylib")],
                  [Edit("set-rpath", ":".join(("@loader_path/../lib", "@loader_path")))],
                  [Edit("add-rpath", "/tmp/x"), Edit("remove-rpath", "/tmp/x")], []):
        patch = plan(f, *edits)
        assert (patch.writes, patch.method, patch.changes) == ((), "unchanged", ()), edits


def test_same_edit_twice_same_bytes(inputs: dict[str, Path], tmp_path: Path) -> None:
    a, b = copy_to(inputs["dylib-arm64"], tmp_path / "a"), copy_to(inputs["dylib-arm64"], tmp_path / "b")
    edits = [Edit("add-rpath", "/opt/lib"), Edit("change", DEP, "@rpath/y.dylib")]
    apply(a, plan(a, *edits))
    apply(b, plan(b, *edits))
    assert a.read_bytes() == b.read_bytes()
    assert plan(a, *edits).method == "unchanged"  # the second run has nothing to do


def test_replace_onto_existing_entry_drops_the_old(inputs: dict[str, Path], tmp_path: Path) -> None:
    f = copy_to(inputs["dylib-arm64"], tmp_path)
    patch = plan(f, Edit("replace-rpath", "@loader_path/../lib", "@loader_path"))
    assert patch.changes == (Change("lc_rpath", "@loader_path/../lib", None, "arm64"),)
    apply(f, patch)
    assert read_macho(FileSource(str(f))).slices[0].rpaths == ("@loader_path",)


@pytest.mark.parametrize("little_endian", [True, False], ids=["i386", "ppc"])
def test_32bit(tmp_path: Path, little_endian: bool) -> None:
    """32-bit slices: commands 4-aligned as ld64 makes them (llvm-install-name-tool pads to 8
    in every slice; both are valid, cmdsize need only be a multiple of 4 there)."""
    ours, theirs = tmp_path / "ours.dylib", tmp_path / "llvm.dylib"
    ours.write_bytes(synthetic_32(little_endian))
    theirs.write_bytes(synthetic_32(little_endian))
    apply(ours, plan(ours, Edit("add-rpath", "/opt/abcdefgh"), Edit("set-id", "@rpath/a")))
    assert install_name_tool(theirs, "-add_rpath", "/opt/abcdefgh", "-id", "@rpath/a").returncode == 0
    (s,) = read_macho(FileSource(str(ours))).slices
    (t,) = read_macho(FileSource(str(theirs))).slices
    assert (s.install_name, s.rpaths, s.dylibs) == (t.install_name, t.rpaths, t.dylibs)
    assert s.rpaths == ("@loader_path", "/opt/abcdefgh")
    mine, peer = objdump_view(ours)["thin"], objdump_view(theirs)["thin"]
    assert mine[2] == peer[2]
    assert "cmdsize 28\n         path /opt/abcdefgh" in "\n".join(mine[1])  # 12 + 14 -> 28 (4-aligned)
    assert "cmdsize 32\n         path /opt/abcdefgh" in "\n".join(peer[1])  # 8-aligned
    assert "cmdsize 36\n         name @rpath/a" in "\n".join(mine[1])


def test_elf_only_edits_are_usage_errors(inputs: dict[str, Path]) -> None:
    for op, option in (("set-soname", "--set-soname"), ("replace-needed", "--replace-needed"),
                       ("rpath-tag", "--rpath-tag")):
        with pytest.raises(UsageError, match=option):
            plan(inputs["dylib-arm64"], Edit(op, "x", "y"))  # type: ignore[arg-type]
    for edit in (Edit("add-rpath", ""), Edit("change", "", "x"), Edit("set-id", "a\0b"), Edit("set-rpath", "a::b"),
                 Edit("add-rpath", "\ud800")):
        with pytest.raises(UsageError):
            plan(inputs["dylib-arm64"], edit)


def test_bad_input(inputs: dict[str, Path], tmp_path: Path) -> None:
    edit = Edit("add-rpath", "/x")
    data = inputs["dylib-arm64"].read_bytes()
    for name, blob in (("elf", b"\x7fELF\x02\x01\x01" + b"\0" * 100), ("text", b"hello world\n"), ("empty", b""),
                       ("truncated", data[:100]), ("java", b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\0" * 64)):
        with pytest.raises(FormatError):
            plan_patch(BytesSource(name, blob), [edit])
    bad = bytearray(data)
    struct.pack_into("<I", bad, 36, 3)  # the first command's cmdsize
    with pytest.raises(FormatError):
        plan_patch(BytesSource("badcmd", bytes(bad)), [edit])
    bad = bytearray(data)
    struct.pack_into("<I", bad, 20, struct.unpack_from("<I", bad, 20)[0] + 8)  # sizeofcmds beyond the commands
    with pytest.raises(FormatError):
        plan_patch(BytesSource("sizeofcmds", bytes(bad)), [edit])


def test_reads_are_bounded(inputs: dict[str, Path]) -> None:
    """A 4 MiB dylib: the plan reads the header, one page per signature and the signature."""

    class Counting(FileSource):
        total = 0

        def read_at(self, offset: int, size: int) -> bytes:
            Counting.total += size
            return super().read_at(offset, size)

    f = inputs["big"]
    assert f.stat().st_size > 4 << 20
    with Counting(str(f)) as src:
        assert plan_patch(src, [Edit("add-rpath", "/opt/lib")]).method == "in-place"
    assert Counting.total < 64 * 1024


_DATA: dict[str, bytes] = {}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 1200), st.integers(0, 255)), min_size=1, max_size=6))
def test_mutated_headers_never_crash(inputs: dict[str, Path], flips: list[tuple[int, int]]) -> None:
    if "a" not in _DATA:
        _DATA["a"] = inputs["dylib-arm64"].read_bytes()
    data = bytearray(_DATA["a"])
    for pos, value in flips:
        data[pos] = value
    try:
        patch = plan_patch(BytesSource("m.dylib", bytes(data)), [Edit("add-rpath", "/x"), Edit("change", DEP, "/y")])
    except (FormatError, EditError):
        return
    assert patch.size == len(data)
    assert all(off >= 0 and off + len(b) <= len(data) for off, b in patch.writes)


def test_llvm_14_writes_over_code_when_padding_is_short(inputs: dict[str, Path], tmp_path: Path) -> None:
    """Why rpathfix refuses instead: llvm-install-name-tool-14 accepts this edit and writes the
    new command over __text (the file no longer parses); the plan says what is missing."""
    f = copy_to(inputs["tight"], tmp_path)
    r = install_name_tool(f, "-add_rpath", "/opt/a/rather/long/directory/name")
    if r.returncode != 0:
        pytest.skip("this llvm-install-name-tool refuses the edit itself")
    r = subprocess.run([str(OBJDUMP), "--macho", "--private-headers", str(f)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "not past the headers" in r.stderr
