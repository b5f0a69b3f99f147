"""The ELF reader against pyelftools and readelf: every stub library, a corpus of real
system files, and mutated or truncated copies that must fail cleanly."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import struct
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSegment
from elftools.elf.elffile import ELFFile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpathfix.elf import read_elf
from rpathfix.errors import FormatError
from rpathfix.model import ElfInfo
from rpathfix.source import BytesSource, FileSource


def reference(path: str) -> dict[str, object]:
    """What pyelftools says, through the program headers like ld.so (not the sections)."""
    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        out: dict[str, object] = {"class": elf.elfclass, "machine": elf["e_machine"], "needed": [], "soname": None,
                                  "rpath": None, "runpath": None, "flags_1": 0, "interp": None}
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_INTERP":
                out["interp"] = seg.get_interp_name()
            if isinstance(seg, DynamicSegment):
                for tag in seg.iter_tags():
                    t = tag.entry.d_tag
                    if t == "DT_NEEDED":
                        out["needed"].append(tag.needed)  # type: ignore[union-attr]
                    elif t == "DT_SONAME":
                        out["soname"] = tag.soname
                    elif t == "DT_RPATH":
                        out["rpath"] = tag.rpath
                    elif t == "DT_RUNPATH":
                        out["runpath"] = tag.runpath
                    elif t == "DT_FLAGS_1":
                        out["flags_1"] = tag.entry.d_val
        return out


def ours(path: str) -> dict[str, object]:
    with FileSource(path) as src:
        info = read_elf(src)
    return {"class": info.elf_class, "machine": MACHINE_NAMES.get(info.machine, info.machine),
            "needed": list(info.needed), "soname": info.soname, "rpath": info.rpath, "runpath": info.runpath,
            "flags_1": info.flags_1, "interp": info.interp}


MACHINE_NAMES = {62: "EM_X86_64", 3: "EM_386", 183: "EM_AARCH64", 40: "EM_ARM"}


def stub_libraries(stub_tree: Path) -> list[str]:
    return sorted(str(p) for p in stub_tree.rglob("*") if p.is_file() and ".so" in p.name
                  and p.read_bytes()[:4] == b"\x7fELF")


def test_stub_libraries_match_pyelftools(stub_tree: Path) -> None:
    libs = stub_libraries(stub_tree)
    assert len(libs) >= 15
    for path in libs:
        assert ours(path) == reference(path), path


def test_rpath_and_runpath_are_kept_apart(stub_tree: Path) -> None:
    lib = stub_tree / "torchstub" / "torchstub" / "lib"
    with FileSource(str(lib / "libxtorch_cuda.so")) as s:
        cuda = read_elf(s)
    with FileSource(str(lib / "libxtorch_cpu.so")) as s:
        cpu = read_elf(s)
    assert cuda.rpath == "$ORIGIN/../../nvidia/cu13/lib:$ORIGIN" and cuda.runpath is None
    assert cpu.runpath == "$ORIGIN" and cpu.rpath is None
    assert cuda.needed == ("libxtorch_cpu.so", "libxcublas.so.13", "libxcudart.so.13", "libc.so.6")


def test_extension_module_is_recognized_by_its_own_pyinit(stub_tree: Path) -> None:
    ext = next((stub_tree / "torchstub" / "torchstub").glob("_C.*.so"))
    with FileSource(str(ext)) as s:
        assert read_elf(s).is_extension
    # The same bytes under another name export no PyInit_<that name>.
    data = ext.read_bytes()
    assert not read_elf(BytesSource("/x/other.cpython-311-x86_64-linux-gnu.so", data)).is_extension
    with FileSource(str(stub_tree / "torchstub" / "torchstub" / "lib" / "libxc10.so")) as s:
        assert not read_elf(s).is_extension


def system_corpus(limit: int = 400) -> list[str]:
    files = sorted(glob.glob("/usr/lib/x86_64-linux-gnu/*.so*")) + sorted(glob.glob("/usr/bin/*"))
    out = []
    for f in files:
        if os.path.islink(f) or not os.path.isfile(f):
            continue
        with open(f, "rb") as fh:
            if fh.read(4) != b"\x7fELF":
                continue
        out.append(f)
    return out[:: max(1, len(out) // limit)]


def test_system_corpus_matches_pyelftools() -> None:
    corpus = system_corpus()
    assert len(corpus) > 50, "expected ELF files under /usr/lib and /usr/bin"
    for path in corpus:
        assert ours(path) == reference(path), path


def test_python_extension_modules_of_this_interpreter() -> None:
    import _ctypes  # a real extension module of the running interpreter

    path = _ctypes.__file__
    assert path is not None
    with FileSource(path) as s:
        assert read_elf(s).is_extension


def test_big_endian_and_32_bit_headers_are_parsed() -> None:
    """A hand-made 32-bit big-endian ELF with a dynamic segment (no compiler for those here)."""
    strtab = b"\0libfoo.so\0$ORIGIN/x\0libbar.so.1\0"
    dyn = struct.pack(">" + "iI" * 5, 1, 1, 29, 11, 14, 21, 5, 0x1000 + 200, 10, len(strtab)) + struct.pack(">iI", 0, 0)
    ehdr = b"\x7fELF" + bytes([1, 2, 1]) + bytes(9)
    ehdr += struct.pack(">HHIIIIIHHHHHH", 3, 8, 1, 0, 52, 0, 0, 52, 32, 2, 40, 0, 0)
    ph_load = struct.pack(">IIIIIIII", 1, 0, 0x1000, 0x1000, 400, 400, 5, 0x1000)
    ph_dyn = struct.pack(">IIIIIIII", 2, 120, 0x1000 + 120, 0x1000 + 120, len(dyn), len(dyn), 6, 4)
    data = bytearray(400)
    blob = ehdr + ph_load + ph_dyn
    data[: len(blob)] = blob
    data[120 : 120 + len(dyn)] = dyn
    data[200 : 200 + len(strtab)] = strtab
    info = read_elf(BytesSource("be32.so", bytes(data)))
    assert (info.elf_class, info.little_endian, info.arch) == (32, False, "mips")
    assert info.needed == ("libfoo.so",) and info.runpath == "$ORIGIN/x" and info.soname == "libbar.so.1"


@pytest.mark.parametrize("size", [0, 3, 16, 40, 63, 64, 100])
def test_truncated_headers_raise_format_error(size: int) -> None:
    data = Path("/usr/bin/ls").read_bytes()[:size]
    with pytest.raises(FormatError):
        read_elf(BytesSource("cut", data))


def test_absurd_counts_do_not_allocate() -> None:
    data = bytearray(Path("/usr/bin/ls").read_bytes()[:4096])
    struct.pack_into("<H", data, 56, 0xFFFF)  # e_phnum
    with pytest.raises(FormatError, match="absurd"):
        read_elf(BytesSource("phnum", bytes(data)))


@pytest.fixture(scope="module")
def sample(stub_tree: Path) -> bytes:
    return (stub_tree / "torchstub" / "torchstub" / "lib" / "libxtorch_cuda.so").read_bytes()


def _check(data: bytes) -> None:
    with contextlib.suppress(FormatError):
        assert isinstance(read_elf(BytesSource("fuzz.so", data)), ElfInfo)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_fail_cleanly(sample: bytes, data: st.DataObject) -> None:
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 12))):
        # Aim at the headers and the dynamic segment, where the reader actually looks.
        pos = data.draw(st.integers(0, min(len(buf) - 1, 16384)))
        buf[pos] = data.draw(st.integers(0, 255))
    _check(bytes(buf))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 20000))
def test_truncated_files_fail_cleanly(sample: bytes, cut: int) -> None:
    _check(sample[:cut])


def test_reads_are_small_for_a_big_file(tmp_path: Path, stub_tree: Path) -> None:
    """A 200 MB file costs a few KB of reads: the reader never reads the body."""
    lib = (stub_tree / "torchstub" / "torchstub" / "lib" / "libxtorch_cuda.so").read_bytes()
    big = tmp_path / "big.so"
    with open(big, "wb") as fh:
        fh.write(lib)
        fh.truncate(200 * 1024 * 1024)  # sparse tail
    read: list[int] = []

    class Counting(FileSource):
        def read_at(self, offset: int, size: int) -> bytes:
            read.append(size)
            return super().read_at(offset, size)

    with Counting(str(big)) as s:
        read_elf(s)
    assert sum(read) < 64 * 1024, read


def test_not_elf_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="not an ELF"):
        read_elf(BytesSource("x", io.BytesIO(b"#!/bin/sh\necho hi\n" * 4).getvalue()))
