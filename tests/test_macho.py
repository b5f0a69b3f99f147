"""The Mach-O reader against real dylibs built with zig, cross-checked with macholib.

The binaries are linked at test time (zig cc targets macOS from any host), so the tests
exercise what a real linker writes: LC_ID_DYLIB, LC_LOAD_DYLIB/LC_LOAD_WEAK_DYLIB,
LC_RPATH, the export trie and ad-hoc code signatures, thin and fat.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import LIPO, zig_available, zig_cc
from rpathfix.errors import FormatError
from rpathfix.macho import arch_name, is_macho, read_macho
from rpathfix.model import MachoInfo
from rpathfix.source import BytesSource, FileSource

macholib_macho = pytest.importorskip("macholib.MachO")

if not zig_available():
    pytest.skip("`python -m ziglang` is not available: cannot link Mach-O test binaries", allow_module_level=True)

SOURCES = {
    "a.c": "int xa(void) { return 1; }\n",
    "b.c": "int xa(void);\nint xb(void) { return xa() + 1; }\n",
    "ext.c": "void *PyInit_ext(void) { return 0; }\n",
}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("macho")
    for name, text in SOURCES.items():
        (d / name).write_text(text)
    out: dict[str, Path] = {}
    arm = "aarch64-macos"
    assert zig_cc(d, arm, "-shared", "-o", "libxa.dylib", "a.c", "-Wl,-install_name,@rpath/libxa.dylib",
               "-Wl,-rpath,@loader_path/../lib", "-Wl,-rpath,@loader_path")
    out["libxa"] = d / "libxa.dylib"
    assert zig_cc(d, arm, "-shared", "-o", "libxb.dylib", "b.c", "-L.", "-lxa",
               "-Wl,-install_name,@rpath/libxb.dylib", "-Wl,-rpath,@loader_path")
    out["libxb"] = d / "libxb.dylib"
    if zig_cc(d, arm, "-shared", "-o", "libxw.dylib", "b.c", "-L.", "-Wl,-weak-lxa", check=False):
        out["libxw"] = d / "libxw.dylib"
    assert zig_cc(d, arm, "-shared", "-o", "ext.so", "ext.c", "-Wl,-undefined,dynamic_lookup")
    out["ext"] = d / "ext.so"
    assert zig_cc(d, "x86_64-macos", "-shared", "-o", "libxa_x86.dylib", "a.c",
               "-Wl,-install_name,@rpath/libxa.dylib", "-Wl,-rpath,@loader_path")
    out["libxa_x86"] = d / "libxa_x86.dylib"
    assert zig_cc(d, "x86_64-macos", "-shared", "-o", "ext_x86.so", "ext.c", "-Wl,-undefined,dynamic_lookup")
    # named ext.so inside its own directory: the module name comes from the file name
    (d / "x86").mkdir()
    shutil.move(str(d / "ext_x86.so"), d / "x86" / "ext.so")
    out["ext_x86"] = d / "x86" / "ext.so"
    if LIPO is not None:
        r = subprocess.run([LIPO, "-create", "libxa.dylib", "libxa_x86.dylib", "-output", "fat.dylib"],
                           cwd=d, capture_output=True, timeout=120)
        if r.returncode == 0:
            out["fat"] = d / "fat.dylib"
    return out


def _read(path: Path) -> MachoInfo:
    with FileSource(str(path)) as src:
        return read_macho(src)


LC_ID_DYLIB, LC_CODE_SIGNATURE, LC_RPATH = 0xD, 0x1D, 0x8000001C
KINDS = {0xC: "load", 0x80000018: "weak", 0x8000001F: "reexport", 0x20: "lazy", 0x80000023: "upward"}


def _lc_str(lc: object, cmd: object, data: bytes, field_offset: int) -> str:
    """The string an lc_str points at, from macholib's (load_command, command, data) triple."""
    fixed = lc._size_ + cmd._size_  # type: ignore[attr-defined]
    name_off = int(cmd.name if hasattr(cmd, "name") else cmd.path)  # type: ignore[attr-defined]
    raw = data[name_off - fixed :]
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _expected(path: Path) -> list[dict[str, object]]:
    """What macholib reads, in the shape of MachoSlice fields."""
    m = macholib_macho.MachO(str(path))
    slices = []
    for h in m.headers:
        install_name = None
        dylibs: list[tuple[str, str]] = []
        rpaths: list[str] = []
        sig = False
        for lc, cmd, data in h.commands:
            if lc.cmd == LC_ID_DYLIB:
                install_name = _lc_str(lc, cmd, data, 8)
            elif lc.cmd in KINDS:
                dylibs.append((_lc_str(lc, cmd, data, 8), KINDS[lc.cmd]))
            elif lc.cmd == LC_RPATH:
                rpaths.append(_lc_str(lc, cmd, data, 8))
            elif lc.cmd == LC_CODE_SIGNATURE:
                sig = True
        slices.append({
            "offset": h.offset, "cputype": h.header.cputype, "cpusubtype": h.header.cpusubtype,
            "install_name": install_name, "dylibs": dylibs, "rpaths": rpaths, "sig": sig,
            "padding": max(0, h.low_offset - h.total_size), "filetype": h.filetype,
        })
    return slices


NAMES = ["libxa", "libxb", "libxw", "ext", "libxa_x86", "ext_x86", "fat"]


@pytest.mark.parametrize("name", NAMES)
def test_matches_macholib(built: dict[str, Path], name: str) -> None:
    if name not in built:
        pytest.skip(f"{name} could not be built with this toolchain")
    info = _read(built[name])
    expected = _expected(built[name])
    assert info.fat == (name == "fat")
    assert len(info.slices) == len(expected)
    for s, e in zip(info.slices, expected):
        assert s.offset == e["offset"]
        assert s.cputype == e["cputype"]
        assert s.cpusubtype == e["cpusubtype"]
        assert s.arch == arch_name(s.cputype, s.cpusubtype)
        assert s.install_name == e["install_name"]
        assert [(d.name, d.kind) for d in s.dylibs] == e["dylibs"]
        assert list(s.rpaths) == e["rpaths"]
        assert s.has_code_signature == e["sig"]
        assert s.header_padding == e["padding"]
        assert s.filetype == e["filetype"]
        assert s.is_64


def test_fields(built: dict[str, Path]) -> None:
    (xa,) = _read(built["libxa"]).slices
    assert xa.arch == "arm64"
    assert xa.filetype == "dylib"
    assert xa.install_name == "@rpath/libxa.dylib"
    assert xa.rpaths == ("@loader_path/../lib", "@loader_path")
    assert xa.offset == 0 and xa.size == built["libxa"].stat().st_size
    assert xa.header_padding > 0
    assert not xa.is_extension
    (xb,) = _read(built["libxb"]).slices
    assert ("@rpath/libxa.dylib", "load") in [(d.name, d.kind) for d in xb.dylibs]
    (x86,) = _read(built["libxa_x86"]).slices
    assert x86.arch == "x86_64"


def test_weak_dylib(built: dict[str, Path]) -> None:
    if "libxw" not in built:
        pytest.skip("the linker does not support -weak-l")
    (w,) = _read(built["libxw"]).slices
    assert ("@rpath/libxa.dylib", "weak") in [(d.name, d.kind) for d in w.dylibs]


@pytest.mark.parametrize("name", ["ext", "ext_x86"])
def test_is_extension(built: dict[str, Path], name: str) -> None:
    (s,) = _read(built[name]).slices
    assert s.is_extension
    # the module name comes from the file name: the same bytes under another name are not
    data = built[name].read_bytes()
    assert read_macho(BytesSource("ext.so", data)).slices[0].is_extension
    assert read_macho(BytesSource("dir/ext.cpython-312-darwin.so", data)).slices[0].is_extension
    assert not read_macho(BytesSource("other.so", data)).slices[0].is_extension


def _find_cmd(data: bytes, wanted: set[int]) -> int | None:
    """Offset of the first load command with one of these cmd values (thin 64-bit LE file)."""
    ncmds, _sizeofcmds = struct.unpack_from("<II", data, 16)
    pos = 32
    for _ in range(ncmds):
        cmd, cmdsize = struct.unpack_from("<II", data, pos)
        if cmd in wanted:
            return pos
        pos += cmdsize
    return None


def test_is_extension_symtab_fallback(built: dict[str, Path]) -> None:
    """Without an export trie the reader falls back to the nlist symbol table."""
    data = bytearray(built["ext"].read_bytes())
    pos = _find_cmd(bytes(data), {0x22, 0x80000022})
    if pos is None:
        pos = _find_cmd(bytes(data), {0x80000033})
        assert pos is not None
        struct.pack_into("<I", data, pos + 12, 0)  # datasize
    else:
        struct.pack_into("<I", data, pos + 44, 0)  # export_size
    assert read_macho(BytesSource("ext.so", bytes(data))).slices[0].is_extension
    assert not read_macho(BytesSource("nope.so", bytes(data))).slices[0].is_extension


def test_fat_slices(built: dict[str, Path]) -> None:
    if "fat" not in built:
        pytest.skip("no lipo to build a fat file")
    info = _read(built["fat"])
    assert info.fat
    assert sorted(s.arch for s in info.slices) == ["arm64", "x86_64"]
    size = built["fat"].stat().st_size
    for s in info.slices:
        assert s.offset > 0 and s.offset + s.size <= size
        assert s.install_name == "@rpath/libxa.dylib"


def test_is_macho() -> None:
    assert not is_macho(b"\xca\xfe\xba\xbe\x00\x00\x00\x34")  # Java class file, major 52
    assert not is_macho(b"\xca\xfe\xba\xbe\x00\x03\x00\x2d")
    assert not is_macho(b"\xca\xfe\xba\xbe\x00\x00\x00\x00")
    assert is_macho(b"\xca\xfe\xba\xbe\x00\x00\x00\x02")
    assert is_macho(b"\xca\xfe\xba\xbf\x00\x00\x00\x01")
    assert not is_macho(b"\xca\xfe\xba\xbe")  # cannot tell from Java with 4 bytes
    for magic in (b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe"):
        assert is_macho(magic + b"\0\0\0\0")
        assert is_macho(magic)
    assert not is_macho(b"\x7fELF\x02\x01\x01\x00")
    assert not is_macho(b"")


def test_java_class_is_format_error() -> None:
    with pytest.raises(FormatError):
        read_macho(BytesSource("A.class", b"\xca\xfe\xba\xbe\x00\x00\x00\x34" + b"\0" * 64))


def test_arch_names() -> None:
    assert arch_name(0x0100000C, 2) == "arm64e"
    assert arch_name(0x0100000C, 0x80000002) == "arm64e"
    assert arch_name(0x0100000C, 0) == "arm64"
    assert arch_name(0x0200000C, 1) == "arm64_32"
    assert arch_name(12, 9) == "armv7"
    assert arch_name(12, 11) == "armv7s"
    assert arch_name(12, 12) == "armv7k"
    assert arch_name(12, 6) == "arm"
    assert arch_name(7, 3) == "i386"
    assert arch_name(18, 0) == "ppc"
    assert arch_name(0x01000012, 0) == "ppc64"
    assert arch_name(99, 0) == "cpu-99"


def _thin64(cmds: list[bytes], ncmds: int | None = None, filetype: int = 6) -> bytes:
    body = b"".join(cmds)
    n = len(cmds) if ncmds is None else ncmds
    return struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, filetype, n, len(body), 0, 0) + body


def _dylib_cmd(cmd: int, name: bytes) -> bytes:
    raw = name + b"\0"
    raw += b"\0" * (-(24 + len(raw)) % 8)
    return struct.pack("<IIIIII", cmd, 24 + len(raw), 24, 2, 0x10000, 0x10000) + raw


def test_synthetic_commands() -> None:
    data = _thin64([
        _dylib_cmd(0xD, b"@rpath/libme.dylib"),
        _dylib_cmd(0xC, b"/usr/lib/libSystem.B.dylib"),
        _dylib_cmd(0x8000001F, b"@rpath/re.dylib"),
        _dylib_cmd(0x20, b"@rpath/lazy.dylib"),
        _dylib_cmd(0x80000023, b"@rpath/up.dylib"),
        _dylib_cmd(0x80000018, b"@rpath/caf\xc3\xa9\xff.dylib"),
        struct.pack("<III", 0x8000001C, 16, 12) + b"@a\0\0",
    ])
    (s,) = read_macho(BytesSource("libme.dylib", data)).slices
    assert s.install_name == "@rpath/libme.dylib"
    assert [d.kind for d in s.dylibs] == ["load", "reexport", "lazy", "upward", "weak"]
    assert s.dylibs[-1].name == "@rpath/caf\u00e9\udcff.dylib"
    assert s.rpaths == ("@a",)
    assert s.header_padding == 0
    assert not s.has_code_signature


@pytest.mark.parametrize("cmds,ncmds", [
    ([struct.pack("<II", 0xC, 0)], None),  # cmdsize 0 would loop forever
    ([struct.pack("<II", 0xC, 4)], None),  # below 8
    ([struct.pack("<III", 0x1B, 10, 0) + b"\0\0"], None),  # not a multiple of 4
    ([struct.pack("<II", 0x1B, 16)], None),  # runs past sizeofcmds
    ([struct.pack("<II", 0x1B, 8)], 5),  # more commands than sizeofcmds holds
    ([struct.pack("<IIII", 0xC, 16, 16, 0)], None),  # lc_str offset at the end of the command
    ([struct.pack("<IIII", 0xC, 16, 0xFFFFFFF0, 0)], None),  # lc_str offset far outside
    ([struct.pack("<II", 0xC, 8)], None),  # dylib command too short for its lc_str
    ([struct.pack("<II", 0x19, 8)], None),  # segment command too short
    ([struct.pack("<II16sQQQQiiII", 0x19, 72, b"__TEXT", 0, 0, 0, 0, 0, 0, 3, 0)], None),  # sections missing
], ids=["cmdsize0", "cmdsize4", "unaligned", "past-end", "ncmds", "lcstr-end", "lcstr-far", "short-dylib",
        "short-segment", "nsects"])
def test_malformed_load_commands(cmds: list[bytes], ncmds: int | None) -> None:
    with pytest.raises(FormatError):
        read_macho(BytesSource("bad.dylib", _thin64(cmds, ncmds)))


def test_absurd_sizes() -> None:
    head = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, 1, 17 * 1024 * 1024, 0, 0)
    with pytest.raises(FormatError):
        read_macho(BytesSource("big.dylib", head + b"\0" * 64))
    head = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, 200_000, 16, 0, 0)
    with pytest.raises(FormatError):
        read_macho(BytesSource("many.dylib", head + b"\0" * 64))
    fat = struct.pack(">II", 0xCAFEBABE, 1) + struct.pack(">iiIII", 7, 3, 4096, 1 << 30, 12)
    with pytest.raises(FormatError):
        read_macho(BytesSource("fat.dylib", fat + b"\0" * 64))
    with pytest.raises(FormatError):
        read_macho(BytesSource("short", b"\xcf\xfa\xed\xfe"))


def test_big_endian_32bit() -> None:
    name = b"@rpath/libbe.dylib\0\0"
    cmd = struct.pack(">IIIIII", 0xD, 24 + len(name), 24, 0, 0, 0) + name
    head = struct.pack(">IiiIIII", 0xFEEDFACE, 18, 0, 6, 1, len(cmd), 0)
    (s,) = read_macho(BytesSource("libbe.dylib", head + cmd)).slices
    assert (s.arch, s.is_64, s.install_name, s.filetype) == ("ppc", False, "@rpath/libbe.dylib", "dylib")


# --- robustness: mutated and truncated real files ------------------------------------

_SAMPLES: dict[str, bytes] = {}


def _samples(built: dict[str, Path]) -> dict[str, bytes]:
    if not _SAMPLES:
        for key in ("libxa", "libxb", "ext", "libxa_x86", "fat"):
            if key in built:
                _SAMPLES[key] = built[key].read_bytes()
    return _SAMPLES


def _check_total(src: BytesSource) -> None:
    start = time.monotonic()
    try:
        info = read_macho(src)
    except FormatError:
        pass
    else:
        assert isinstance(info, MachoInfo)
    assert time.monotonic() - start < 5.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.sampled_from(["libxa", "libxb", "ext", "libxa_x86", "fat"]),
    mutations=st.lists(
        st.tuples(st.one_of(st.integers(0, 4095), st.integers(0, 1 << 20)), st.integers(0, 255)),
        min_size=1, max_size=16,
    ),
    truncate=st.one_of(st.none(), st.integers(0, 1 << 20)),
    name=st.sampled_from(["ext.so", "libxa.dylib"]),
)
def test_mutations_only_format_error(built: dict[str, Path], which: str, mutations: list[tuple[int, int]],
                                     truncate: int | None, name: str) -> None:
    samples = _samples(built)
    if which not in samples:
        return
    data = bytearray(samples[which])
    for pos, value in mutations:
        if pos < len(data):
            data[pos] = value
    if truncate is not None:
        del data[truncate:]
    _check_total(BytesSource(name, bytes(data)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["libxa", "ext", "fat"]), cut=st.integers(0, 1 << 17))
def test_truncation_only_format_error(built: dict[str, Path], which: str, cut: int) -> None:
    samples = _samples(built)
    if which not in samples:
        return
    _check_total(BytesSource("ext.so", samples[which][:cut]))


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=512), st.sampled_from([b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xce",
                                                             b"\xca\xfe\xba\xbe\x00\x00\x00\x01"]))
def test_random_bytes_only_format_error(tail: bytes, magic: bytes) -> None:
    _check_total(BytesSource("ext.so", magic + tail))
