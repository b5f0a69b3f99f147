"""The dynamic-symbol reader against readelf: undefined symbols, version needs and
definitions, and hash-table lookups, on gcc- and zig-built objects (GNU and SysV hash,
32-bit and big-endian) and on this system's libraries; corrupt input ends in FormatError."""

from __future__ import annotations

import random
import re
import subprocess
from pathlib import Path

import pytest

from conftest import zig_cc
from rpathfix.elf_symbols import Version, gnu_hash, open_symbols, sysv_hash
from rpathfix.errors import FormatError
from rpathfix.source import BytesSource, FileSource

SYSTEM = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/bin/python3.11"]


class Row:
    __slots__ = ("bind", "kind", "name", "ndx", "value", "version", "vis")

    def __init__(self, value: int, kind: str, bind: str, vis: str, ndx: str, name: str, version: str | None) -> None:
        self.value, self.kind, self.bind, self.vis, self.ndx, self.name, self.version = \
            value, kind, bind, vis, ndx, name, version


def readelf_dynsyms(path: Path | str) -> list[Row]:
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*\d+: ([0-9a-f]+)\s+\d+\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", line)
        if not m:
            continue
        name = m.group(6)
        version = None
        if "@" in name:
            name, _, version = name.partition("@")
            version = version.lstrip("@").split(" ")[0]
        rows.append(Row(int(m.group(1), 16), m.group(2), m.group(3), m.group(4), m.group(5), name, version))
    return rows


def undefined(rows: list[Row]) -> set[tuple[str, str | None]]:
    return {(r.name, r.version) for r in rows
            if r.ndx == "UND" and r.name and r.bind != "LOCAL" and r.vis in ("DEFAULT", "PROTECTED")}


def ours_undefined(path: Path | str) -> set[tuple[str, str | None]]:
    st = open_symbols(FileSource(str(path)))
    try:
        return {(r.name, r.version.name if r.version else None) for r in st.references()}
    finally:
        st.close()


def build_pair(d: Path, *args: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "v.map").write_text("XL_1 { old_fn; shared_data; };\nXL_2 { new_fn; } XL_1;\n")
    (d / "l.c").write_text(
        "#include <stdio.h>\n#include <string.h>\nint shared_data = 3;\n"
        "int old_fn(void) { return puts(\"x\"); }\nint new_fn(void) { return (int)strlen(\"ab\"); }\n"
        "extern int undef_fn(void);\nextern int undef_data;\nextern int weak_fn(void) __attribute__((weak));\n"
        "int use(void) { return undef_fn() + undef_data + (weak_fn ? weak_fn() : 0); }\n"
        "__attribute__((visibility(\"protected\"))) int prot_fn(void) { return 4; }\n")
    lib = d / "libxl.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(d / "l.c"), f"-Wl,--version-script={d / 'v.map'}",
                    "-Wl,-soname,libxl.so", *args], check=True)
    return lib


@pytest.mark.parametrize("hash_style", ["gnu", "sysv", "both"])
def test_gcc_library_against_readelf(tmp_path: Path, hash_style: str) -> None:
    lib = build_pair(tmp_path, f"-Wl,--hash-style={hash_style}")
    rows = readelf_dynsyms(lib)
    assert ours_undefined(lib) == undefined(rows)
    assert ("undef_fn", None) in undefined(rows) and ("puts", "GLIBC_2.2.5") in undefined(rows)
    st = open_symbols(FileSource(str(lib)))
    try:
        assert [(v.file, v.name) for v in st.needs] == [("libc.so.6", "GLIBC_2.2.5")]
        assert {n for _h, n in st.defined_versions} == {"libxl.so", "XL_1", "XL_2"}
        weak = {r.name for r in st.references() if r.weak}
        assert weak == {r.name for r in rows if r.ndx == "UND" and r.bind == "WEAK"} and "weak_fn" in weak
        # Every defined global symbol is found through the hash table, under its version.
        defined = [r for r in rows if r.ndx not in ("UND", "ABS") and r.bind in ("GLOBAL", "WEAK") and r.name]
        assert len(defined) >= 4
        for r in defined:
            ver = None
            if r.version and r.version != "libxl.so":
                ver = Version(0, r.version, sysv_hash(r.version.encode()), "libxl.so")
            d = st.lookup(r.name, ver)
            assert d is not None and d.name == r.name, r.name
            assert (d.version or None) == (r.version or None), r.name
        assert st.lookup("new_fn", None) is not None  # the only version: an unversioned reference takes it
        assert st.lookup("old_fn", Version(0, "XL_2", sysv_hash(b"XL_2"), None)) is None
        assert st.lookup("no_such_fn", None) is None
        assert st.lookup("undef_fn", None) is None  # undefined here: not a definition
    finally:
        st.close()


@pytest.mark.parametrize("target", ["x86_64-linux-gnu.2.28", "x86-linux-gnu.2.28", "s390x-linux-gnu.2.28",
                                    "aarch64-linux-gnu.2.28"])
def test_zig_library_against_readelf(tmp_path: Path, target: str) -> None:
    """lld's output, 32-bit and big-endian objects: references and self-lookups agree."""
    (tmp_path / "z.c").write_text("extern int undef_fn(void);\nextern int undef_data;\n"
                                  "int zdef(void) { return undef_fn() + undef_data; }\nint zdata = 5;\n")
    zig_cc(tmp_path, target, "-shared", "-fPIC", "-o", "libxz.so", "z.c")
    lib = tmp_path / "libxz.so"
    rows = readelf_dynsyms(lib)
    assert ours_undefined(lib) == undefined(rows)
    st = open_symbols(FileSource(str(lib)))
    try:
        for name in ("zdef", "zdata"):
            d = st.lookup(name, None)
            assert d is not None and d.name == name
        assert st.lookup("undef_fn", None) is None
    finally:
        st.close()


@pytest.mark.parametrize("path", SYSTEM)
def test_system_objects_against_readelf(path: str) -> None:
    """libc, libstdc++ and a program (whose address-taken undefined functions are hashed)."""
    if not Path(path).exists():
        pytest.skip(f"{path} not on this machine")
    rows = readelf_dynsyms(path)
    assert ours_undefined(path) == undefined(rows)
    st = open_symbols(FileSource(path))
    try:
        sample = [r for r in rows if r.ndx not in ("UND", "ABS") and r.bind in ("GLOBAL", "WEAK", "UNIQUE")
                  and r.vis == "DEFAULT" and r.name and r.value != 0][::7]
        for r in sample[:300]:
            ver = Version(0, r.version, sysv_hash(r.version.encode()), None) if r.version else None
            assert st.lookup(r.name, ver) is not None, r.name
    finally:
        st.close()


def test_libc_versions_and_hidden_definitions() -> None:
    st = open_symbols(FileSource("/lib/x86_64-linux-gnu/libc.so.6"))
    try:
        names = {n for _h, n in st.defined_versions}
        assert {"GLIBC_2.2.5", "GLIBC_2.34"} <= names
        assert st.provides_version(Version(0, "GLIBC_2.34", sysv_hash(b"GLIBC_2.34"), "libc.so.6"))
        assert not st.provides_version(Version(0, "GLIBC_9.99", sysv_hash(b"GLIBC_9.99"), "libc.so.6"))
        # memcpy@GLIBC_2.2.5 is a non-default version, still bound by a versioned reference.
        old = st.lookup("memcpy", Version(0, "GLIBC_2.2.5", sysv_hash(b"GLIBC_2.2.5"), "libc.so.6"))
        new = st.lookup("memcpy", Version(0, "GLIBC_2.14", sysv_hash(b"GLIBC_2.14"), "libc.so.6"))
        assert old is not None and not old.default and old.version == "GLIBC_2.2.5"
        assert new is not None and new.default and new.version == "GLIBC_2.14"
        assert any("memcpy@GLIBC_2.2.5" in text for _i, text in st.named("memcpy"))
    finally:
        st.close()


def test_hashes() -> None:
    for name in (b"", b"a", b"printf", b"_ZN3c106detail23torchInternalAssertFailEPKcS2_jS2_RKSs" * 30):
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xFFFFFFFF
        assert gnu_hash(name) == h
    assert sysv_hash(b"GLIBC_2.2.5") == 0x09691A75


def test_relocation_order_and_eager_symbols(tmp_path: Path) -> None:
    lib = build_pair(tmp_path)
    st = open_symbols(FileSource(str(lib)))
    try:
        idx = {r.name: r.symndx for r in st.references()}
        eager = st.eager_symbols()
        assert idx["undef_data"] in eager and idx["undef_fn"] not in eager  # GLOB_DAT vs JUMP_SLOT
        order = st.relocation_order({idx["undef_fn"], idx["undef_data"]})
        assert order[idx["undef_data"]] < order[idx["undef_fn"]]
    finally:
        st.close()


def test_corrupt_files_raise_format_error_only(tmp_path: Path) -> None:
    """Random byte flips in a real library: every failure is a FormatError, nothing loops."""
    lib = build_pair(tmp_path)
    data = lib.read_bytes()
    rng = random.Random(13)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(0, min(len(bad), 0x1000))] = rng.randrange(256)
        try:
            st = open_symbols(BytesSource("bad.so", bytes(bad)))
            list(st.references())
            st.lookup("old_fn", None)
            st.lookup("undef_fn", Version(2, "XL_1", sysv_hash(b"XL_1"), "libxl.so"))
            st.eager_symbols()
            st.named("new_fn")
        except FormatError:
            pass
    with pytest.raises(FormatError):
        open_symbols(BytesSource("short.so", data[:200]))


def test_hot_tables_answer_as_reads_do() -> None:
    """After HOT_LOOKUPS lookups an object holds its symbol entries, chains and versions in
    memory (within a budget): every answer must stay the same, and without a budget (the
    control) nothing is held."""
    from rpathfix.elf_symbols import HOT_LOOKUPS, Budget

    path = "/lib/x86_64-linux-gnu/libstdc++.so.6"
    rows = [r for r in readelf_dynsyms(path) if r.name and r.ndx != "ABS"]
    queries = [(r.name, Version(0, r.version, sysv_hash(r.version.encode()), None) if r.version else None)
               for r in rows] + [("no_such_symbol_" + str(i), None) for i in range(50)]
    cold = open_symbols(FileSource(path))
    hot = open_symbols(FileSource(path))
    hot.budget = Budget(64 << 20)
    try:
        assert len(queries) > 4 * HOT_LOOKUPS
        assert [cold.lookup(n, v) for n, v in queries] == [hot.lookup(n, v) for n, v in queries]
        assert hot._hot_syms is not None and hot.budget.left < 64 << 20
        assert cold._hot_syms is None
    finally:
        cold.close()
        hot.close()
