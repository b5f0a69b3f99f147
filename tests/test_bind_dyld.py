"""The dyld binding model (docs/loader-rules.md rules 48-51) on zig-built arm64 dylibs and real macOS wheels.

There is no Mac here: these are model-level tests. The readers are checked against
llvm-objdump (bind tables, export tries); the binding rules on small trees where one
thing differs between a row and its control (an export removed, a weak import, a
flat-namespace import with and without an interpreter that exports it).
"""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import zig_available, zig_cc
from rpathfix.bind_dyld import MachoTables, explain_symbol, load_and_bind
from rpathfix.fstree import RealTree
from rpathfix.loader_dyld import DyldOptions
from rpathfix.macho import read_macho
from rpathfix.macho_symbols import FLAT_LOOKUP, MAIN_EXECUTABLE, open_macho_symbols
from rpathfix.resolution import SymbolProblem
from rpathfix.source import BytesSource, FileSource

if not zig_available():
    pytest.skip("`python -m ziglang` is not available: cannot link Mach-O test binaries", allow_module_level=True)

ARM = "aarch64-macos"
OBJDUMP = "llvm-objdump-14"


def dylib(d: Path, name: str, src: str, *link: str, install: str | None = None) -> Path:
    (d / f"{name}.c").write_text(src)
    zig_cc(d, ARM, "-O2", "-shared", "-o", name, f"{name}.c", f"-Wl,-install_name,{install or '@rpath/' + name}",
           "-Wl,-rpath,@loader_path", *link)
    return d / name


def check(path: Path, executable: Path | None = None) -> list[SymbolProblem]:
    tables = MachoTables(RealTree())
    try:
        result, problems = load_and_bind(RealTree(), str(path),
                                         DyldOptions(arch="arm64", executable=str(executable) if executable else None),
                                         tables)
    finally:
        tables.close()
    assert not result.missing, result.missing
    return problems


A = "int a_fn(void) { return 1; }\nint a_data = 3;\n"
USER = ("extern int a_fn(void);\nextern int a_data;\n"
        "int use(void) { return a_fn() + a_data; }\n")


@pytest.mark.parametrize("runtime", ["full", "no-data", "no-function"])
def test_two_level_lookup_and_a_missing_export(tmp_path: Path, runtime: str) -> None:
    """The user imports _a_data (a non-lazy bind, ordinal 1) and _a_fn (a lazy bind) from
    liba. Run against a liba without _a_data: "Symbol not found: _a_data ... expected in
    liba". Without _a_fn only: the lazy bind goes to an abort stub and the load works."""
    dylib(tmp_path, "liba.dylib", A)
    user = dylib(tmp_path, "libuser.dylib", USER, "-L.", "-la")
    src = {"full": A, "no-data": "int a_fn(void) { return 1; }\n", "no-function": "int a_data = 3;\n"}[runtime]
    dylib(tmp_path, "liba.dylib", src)
    problems = check(user)
    if runtime == "no-data":
        assert [p.symbol for p in problems] == ["_a_data"]
        p = problems[0]
        assert p.provider == str(tmp_path / "liba.dylib") and p.file == "@rpath/liba.dylib"
        assert p.message == f"Symbol not found: _a_data, referenced from {user}, expected in {tmp_path / 'liba.dylib'}"
    else:
        assert problems == []


PY_EXT = ("extern int PyLong_Type;\nextern long PyLong_AsLong(void *);\n"
          "int probe(void) { return PyLong_Type + (int)PyLong_AsLong(0); }\n")


def test_dynamic_lookup_resolves_the_c_api_from_the_process(tmp_path: Path) -> None:
    """An extension linked with -undefined dynamic_lookup imports _PyLong_Type from the
    flat namespace. Without a modelled interpreter the C API is taken as present; with a
    Mach-O "python" that exports it, the flat lookup finds it there; with one that does
    not, the load fails ("symbol not found in flat namespace")."""
    ext = dylib(tmp_path, "ext.so", PY_EXT, "-Wl,-undefined,dynamic_lookup")
    imports = {i.name: i for i in open_macho_symbols(FileSource(str(ext)), read_macho(FileSource(str(ext))).slices[0]).imports()}
    assert imports["_PyLong_Type"].ordinal == FLAT_LOOKUP and not imports["_PyLong_Type"].lazy
    assert check(ext) == []
    (tmp_path / "py.c").write_text("int PyLong_Type = 1;\nlong PyLong_AsLong(void *o) { return 0; }\n"
                                   "int main(void) { return 0; }\n")
    zig_cc(tmp_path, ARM, "-o", "python", "py.c", "-rdynamic")
    (tmp_path / "nopy.c").write_text("int main(void) { return 0; }\n")
    zig_cc(tmp_path, ARM, "-o", "nopython", "nopy.c")
    assert check(ext, tmp_path / "python") == []
    problems = check(ext, tmp_path / "nopython")
    assert [p.symbol for p in problems] == ["_PyLong_Type"]
    assert problems[0].message == f"symbol not found in flat namespace '_PyLong_Type' (referenced from {ext})"
    # A flat import that is not the C API is looked up for real, interpreter or not.
    other = dylib(tmp_path, "other.so", "extern int not_python_data;\nint g(void) { return not_python_data; }\n",
                  "-Wl,-undefined,dynamic_lookup")
    assert [p.symbol for p in check(other)] == ["_not_python_data"]


def test_weak_import_may_be_missing(tmp_path: Path) -> None:
    dylib(tmp_path, "liba.dylib", A)
    weak = dylib(tmp_path, "libweak.dylib", "extern int gone_data __attribute__((weak_import));\n"
                 "extern int a_data;\nint g(void) { return (&gone_data ? gone_data : 0) + a_data; }\n",
                 "-L.", "-la", "-Wl,-undefined,dynamic_lookup")
    strong = dylib(tmp_path, "libstrong.dylib", "extern int gone_data;\nextern int a_data;\n"
                   "int g(void) { return gone_data + a_data; }\n", "-L.", "-la", "-Wl,-undefined,dynamic_lookup")
    assert check(weak) == []
    assert [p.symbol for p in check(strong)] == ["_gone_data"]


@pytest.mark.parametrize("present", [True, False])
def test_weak_dylib_that_is_not_there(tmp_path: Path, present: bool) -> None:
    """liba linked weakly (LC_LOAD_WEAK_DYLIB): the linker makes every import from it a weak
    import, so when it is missing the load goes on, its symbols bound to 0."""
    dylib(tmp_path, "liba.dylib", A)
    user = dylib(tmp_path, "libuser.dylib", USER, "-L.", "-Wl,-weak-la")
    st = open_macho_symbols(FileSource(str(user)), read_macho(FileSource(str(user))).slices[0])
    try:
        assert all(i.weak for i in st.imports() if i.name in ("_a_data", "_a_fn") and not i.lazy)
    finally:
        st.close()
    if not present:
        (tmp_path / "liba.dylib").unlink()
    assert check(user) == []


def test_reexported_dylib_is_searched(tmp_path: Path) -> None:
    """The user imports c_data two-level from libr (linked against an SDK libr that defines
    it). The runtime libr does not; it links libc2, which does. As a plain LC_LOAD_DYLIB,
    libc2 is not searched: "Symbol not found". As LC_REEXPORT_DYLIB it is (zig cannot link
    a re-export, so the command is rewritten: same layout, another command number)."""
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    dylib(sdk, "libr.dylib", "int c_data = 5;\n")
    user = dylib(tmp_path, "libuser.dylib", "extern int c_data;\nint g(void) { return c_data; }\n",
                 "-Lsdk", "-lr")
    dylib(tmp_path, "libc2.dylib", "int c_data = 5;\n")
    libr = dylib(tmp_path, "libr.dylib", "int r_fn(void) { return 1; }\n", "-L.", "-lc2")
    assert [(p.symbol, p.provider) for p in check(user)] == [("_c_data", str(libr))]
    raw = bytearray(libr.read_bytes())
    lc = raw.find(b"@rpath/libc2.dylib")
    assert lc > 0
    at = raw.rfind(struct.pack("<I", 0xC), 0, lc)
    assert at > 0 and struct.unpack_from("<I", raw, at + 8)[0] == lc - at  # the command's name offset
    raw[at:at + 4] = struct.pack("<I", 0x8000001F)
    libr.write_bytes(bytes(raw))
    assert check(user) == []


def test_why_a_symbol(tmp_path: Path) -> None:
    dylib(tmp_path, "liba.dylib", A)
    user = dylib(tmp_path, "libuser.dylib", USER, "-L.", "-la")
    trace, _ = explain_symbol(RealTree(), str(user), "a_data", DyldOptions(arch="arm64"))
    assert trace.symbol == "_a_data" and trace.provider == str(tmp_path / "liba.dylib") and trace.referenced
    dylib(tmp_path, "liba.dylib", "int a_fn(void) { return 1; }\n")
    trace, _ = explain_symbol(RealTree(), str(user), "_a_data", DyldOptions(arch="arm64"))
    assert trace.provider is None and trace.steps[0].result == "not defined"


# ------------------------------------------------------------------ readers against llvm-objdump


def objdump_binds(path: Path) -> set[tuple[str, str]]:
    """(dylib column, symbol) of the bind and lazy-bind tables."""
    out = subprocess.run([OBJDUMP, "--macho", "--bind", "--lazy-bind", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 5 or not f[0].startswith("__"):
            continue  # headers
        if f[-1] == "(weak_import)":
            f = f[:-1]
        rows.add((f[-2], f[-1]))
    return rows


def objdump_exports(path: Path) -> list[str]:
    out = subprocess.run([OBJDUMP, "--macho", "--exports-trie", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [m.group(1) for m in re.finditer(r"^0x[0-9A-Fa-f]+\s+(\S+)", out, re.M)]


def _macos_wheel(tmp_path_factory: pytest.TempPathFactory, spec: str, platform: str) -> Path:
    d = tmp_path_factory.mktemp("macwheel")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--platform",
                        platform, "--python-version", "3.11", spec, "-d", str(d)], capture_output=True, text=True,
                       timeout=300)
    wheels = list(d.glob("*.whl"))
    if r.returncode != 0 or not wheels:
        pytest.skip(f"cannot download a macOS wheel of {spec}: {r.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(d / "site")
    return d / "site"


@pytest.fixture(scope="module")
def numpy_macos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _macos_wheel(tmp_path_factory, "numpy==2.4.6", "macosx_14_0_arm64")


def test_real_macos_extension_modules_bind(numpy_macos: Path) -> None:
    """Every extension module of numpy's macOS arm64 wheel: the imports the reader finds are
    llvm-objdump's (flat-namespace C API, libSystem, libc++, Accelerate), and the model
    finds nothing missing (the C API from the interpreter, OS libraries in the cache)."""
    exts = sorted(numpy_macos.rglob("*.cpython-311-darwin.so"))
    assert len(exts) >= 10
    for ext in exts:
        sl = read_macho(FileSource(str(ext))).slices[0]
        st = open_macho_symbols(FileSource(str(ext)), sl)
        try:
            imports = list(st.imports())
        finally:
            st.close()
        names = [Path(d.name).name.split(".")[0] for d in sl.dylibs]
        ours = set()
        for i in imports:
            if i.weak_bind:
                continue
            col = {FLAT_LOOKUP: "flat-namespace", MAIN_EXECUTABLE: "main-executable"}.get(i.ordinal)
            ours.add((col or names[i.ordinal - 1], i.name))
        theirs = objdump_binds(ext)
        assert ours == theirs, ext
        assert any(i.ordinal == FLAT_LOOKUP and i.name.startswith("_Py") for i in imports)
        assert check(ext) == [], ext


def test_export_trie_lookups_agree_with_objdump(tmp_path: Path, numpy_macos: Path) -> None:
    lib = dylib(tmp_path, "liba.dylib", A + "int zz_last(void) { return 9; }\n")
    umath = next(numpy_macos.rglob("_multiarray_umath*.so"))
    for path in (lib, umath):
        exported = objdump_exports(path)
        assert exported
        st = open_macho_symbols(FileSource(str(path)), read_macho(FileSource(str(path))).slices[0])
        try:
            for name in exported:
                assert st.export(name) is not None, name
            assert st.export("_no_such_symbol") is None and st.export(exported[0] + "x") is None
        finally:
            st.close()


# ------------------------------------------------------------------ chained fixups


def _chained_dylib(imports: list[tuple[int, bool, str]], fmt: int, target: Path) -> bytes:
    """A minimal arm64 dylib: one LC_LOAD_DYLIB (`target`) and an LC_DYLD_CHAINED_FIXUPS
    whose imports table (format 1, 2 or 3 of <mach-o/fixup-chains.h>) lists `imports`
    as (lib_ordinal, weak_import, name)."""
    names = b""
    table = b""
    for ordinal, weak, name in imports:
        off = len(names)
        names += name.encode() + b"\0"
        if fmt == 3:
            table += struct.pack("<QQ", (ordinal & 0xFFFF) | (weak << 16) | (off << 32), 0)
        else:
            raw = (ordinal & 0xFF) | (weak << 8) | (off << 9)
            table += struct.pack("<I", raw) + (struct.pack("<i", 0) if fmt == 2 else b"")
    header_size = 28
    blob = struct.pack("<IIIIIII", 0, header_size, header_size, header_size + len(table), len(imports), fmt, 0)
    blob += table + names
    path = str(target).encode() + b"\0"
    dylib_cmd = struct.pack("<IIIIII", 0xC, 0, 24, 2, 0x10000, 0x10000) + path
    dylib_cmd += b"\0" * (-len(dylib_cmd) % 8)
    dylib_cmd = dylib_cmd[:4] + struct.pack("<I", len(dylib_cmd)) + dylib_cmd[8:]
    ncmds = 2
    sizeofcmds = len(dylib_cmd) + 16
    dataoff = 32 + sizeofcmds
    fixups_cmd = struct.pack("<IIII", 0x80000034, 16, dataoff, len(blob))
    header = struct.pack("<IiiIIIII", 0xFEEDFACF, 0x0100000C, 0, 6, ncmds, sizeofcmds, 0, 0)
    return header + dylib_cmd + fixups_cmd + blob


@pytest.mark.parametrize("fmt", [1, 2, 3])
def test_chained_fixups_imports(tmp_path: Path, fmt: int) -> None:
    lib = dylib(tmp_path, "liba.dylib", A, install=str(tmp_path / "liba.dylib"))
    want = [(1, False, "_a_data"), (1, True, "_gone"), (-2, False, "_PyLong_Type"), (1, False, "_a_missing")]
    data = _chained_dylib(want, fmt, lib)
    user = tmp_path / "libchained.dylib"
    user.write_bytes(data)
    sl = read_macho(BytesSource("x", data)).slices[0]
    got = [(i.ordinal, i.weak, i.name) for i in open_macho_symbols(BytesSource("x", data), sl).imports()]
    assert got == want
    # Every import is bound at load: the one missing non-weak import fails it.
    assert [p.symbol for p in check(user)] == ["_a_missing"]


def test_corrupt_imports_raise_format_error(tmp_path: Path) -> None:
    import random

    from rpathfix.errors import FormatError

    dylib(tmp_path, "liba.dylib", A)
    user = dylib(tmp_path, "libuser.dylib", USER, "-L.", "-la", "-Wl,-undefined,dynamic_lookup")
    data = user.read_bytes()
    sl = read_macho(BytesSource("u", data)).slices[0]
    st = open_macho_symbols(BytesSource("u", data), sl)
    assert st._dyld_info is not None
    bind_off = st._dyld_info[2]
    rng = random.Random(46)
    for _ in range(200):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            bad[bind_off + rng.randrange(0, 64)] = rng.randrange(256)
        try:
            s2 = open_macho_symbols(BytesSource("u", bytes(bad)), sl)
            list(s2.imports())
            s2.export("_use")
        except FormatError:
            pass


@pytest.mark.parametrize("runtime", ["full", "no-data"])
def test_verify_and_why_on_a_macos_site(tmp_path: Path, runtime: str) -> None:
    """A macOS site-packages: an extension module (C API through dynamic_lookup) importing
    _a_data from its liba. verify reports the missing export as undefined-symbol with the
    dyld fields; the control (liba complete) is clean. `why` names the image."""
    site = tmp_path / "site-packages"
    site.mkdir()
    dylib(site, "liba.dylib", A)
    ext_src = ("extern int a_data;\nextern void *PyModule_Create2(void *, int);\nstatic char def[128];\n"
               "void *PyInit_xmac(void) { return a_data ? PyModule_Create2(def, 1013) : 0; }\n")
    ext = dylib(site, "xmac.cpython-311-darwin.so", ext_src, "-L.", "-la", "-Wl,-undefined,dynamic_lookup")
    if runtime == "no-data":
        dylib(site, "liba.dylib", "int a_fn(void) { return 1; }\n")
    out = subprocess.run([sys.executable, "-m", "rpathfix", "verify", "--json", str(site)], capture_output=True,
                         text=True, timeout=300)
    import json

    doc = json.loads(out.stdout)
    why = subprocess.run([sys.executable, "-m", "rpathfix", "why", str(ext), "_a_data"], capture_output=True,
                         text=True, timeout=300)
    if runtime == "full":
        assert out.returncode == 0 and doc["errors"] == [], doc["errors"]
        assert why.returncode == 0 and f"bound to {site / 'liba.dylib'}" in why.stdout
        return
    assert out.returncode == 1
    (e,) = doc["errors"]
    assert (e["code"], e["symbol"], e["provider"], e["required_by"]) == \
        ("undefined-symbol", "_a_data", str(site / "liba.dylib"), str(ext))
    assert "liba.dylib" in e["message"]
    assert why.returncode == 1 and "not defined" in why.stdout
