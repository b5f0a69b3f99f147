"""How the planner finds a root's native files: the index `rpathfix unpack` writes, the
root's RECORD, or a walk. All three must give the same plan; the index is trusted only
while the files it describes keep their size and mtime."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import rpathfix
from rpathfix.fstree import CachedTree, RealTree
from rpathfix.natives import INDEX, index_json, read_index
from rpathfix.plan import find_binaries, make_plan, plan_to_json
from rpathfix.roots import load_root

STACK = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink", "onnxstub", "scriptstub")


def unpack(stub_wheels: dict[str, Path], dists: tuple[str, ...], into: Path) -> list[Path]:
    proc = rpathfix("unpack", *[str(stub_wheels[d]) for d in dists if d in stub_wheels], "--into", str(into))
    assert proc.returncode == 0, proc.stderr
    return sorted(p for p in into.iterdir() if not p.name.startswith("."))


def plan_doc(roots: list[Path]) -> dict[str, Any]:
    tree = CachedTree(RealTree())
    return plan_to_json(make_plan(tree, [load_root(tree, str(r)) for r in roots]))


def test_index_record_and_walk_give_the_same_plan(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, (*STACK, "macstub", "macdep"), tmp_path / "roots")
    assert all((r / INDEX).is_file() for r in roots)
    with_index = plan_doc(roots)
    for r in roots:
        (r / INDEX).unlink()
    from_record = plan_doc(roots)
    for r in roots:
        for record in r.glob("site-packages/*.dist-info/RECORD"):
            record.unlink()
    walked = plan_doc(roots)
    assert with_index == from_record == walked
    real = {d["venv_path"] for d in with_index["real_directories"]}
    assert {"torchstub", "torchstub/lib"} <= real  # the climb was seen on every path


def test_index_lists_every_native_file_with_its_headers(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, (*STACK, "macstub", "macdep"), tmp_path / "roots")
    tree = RealTree()
    for r in roots:
        entries = read_index(tree, str(r))
        assert entries is not None
        site = f"{r}/site-packages"
        expect = [(b.rel, b.info) for b in find_binaries(tree, r.name, site)]  # no root: RECORD
        assert [(rel, info) for rel, _size, _mtime, info in entries] == expect
        for rel, size, mtime_ns, _info in entries:
            st = os.stat(f"{site}/{rel}")
            assert (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
    assert any(read_index(tree, str(r)) for r in roots)


def test_index_round_trip_and_bytes(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, (*STACK, "macstub", "macdep"), tmp_path / "roots")
    tree = RealTree()
    for r in roots:
        entries = read_index(tree, str(r))
        assert entries is not None
        assert index_json(entries) == (r / INDEX).read_text()  # decode(encode(x)) == x, byte for byte


def _lie_about(root: Path) -> None:
    """Rewrite the root's index as if no library had an RPATH (sizes and mtimes kept)."""
    doc = json.loads((root / INDEX).read_text())
    for entry in doc["files"]:
        fields = entry[3][1]
        fields[8] = fields[9] = None  # rpath, runpath
    (root / INDEX).write_text(json.dumps(doc))


def test_index_is_trusted_only_while_the_file_is_unchanged(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime"), tmp_path / "roots")
    torch = next(r for r in roots if r.name == "torchstub")
    lib = torch / "site-packages/torchstub/lib/libxtorch_cuda.so"  # climbs to nvidia/cu13/lib

    def real_dirs() -> set[str]:
        return {d["venv_path"] for d in plan_doc(roots)["real_directories"]}

    assert "torchstub/lib" in real_dirs()
    _lie_about(torch)
    assert "torchstub/lib" not in real_dirs()  # size and mtime match: the index answers
    st = lib.stat()
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # "patched": a new mtime
    assert "torchstub/lib" in real_dirs()  # the headers are read again


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"format": [], "files": []}',
    '{"format": "x", "files": [["a.so", 1, 2, ["elf", []]]]}',
])
def test_unusable_index_is_ignored(stub_wheels: dict[str, Path], tmp_path: Path, text: str) -> None:
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime"), tmp_path / "roots")
    good = plan_doc(roots)
    for r in roots:
        (r / INDEX).write_text(text)
        assert read_index(RealTree(), str(r)) is None
    assert plan_doc(roots) == good


@pytest.mark.parametrize("field, value", [(0, "64"), (1, 1), (7, "libc.so.6"), (7, [1]), (11, None), (3, None)])
def test_index_with_a_wrong_field_type_is_ignored(stub_wheels: dict[str, Path], tmp_path: Path,
                                                  field: int, value: object) -> None:
    roots = unpack(stub_wheels, ("torchstub",), tmp_path / "roots")
    doc = json.loads((roots[0] / INDEX).read_text())
    elf = next(e for e in doc["files"] if e[3][0] == "elf")
    elf[3][1][field] = value
    (roots[0] / INDEX).write_text(json.dumps(doc))
    assert read_index(RealTree(), str(roots[0])) is None


def test_root_copied_without_mtimes_reads_headers_again(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """A root copied without keeping mtimes (cp -r) has a stale index: every entry is re-read."""
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime"), tmp_path / "roots")
    good = plan_doc(roots)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "roots", copy, copy_function=shutil.copy)  # new mtimes
    copies = sorted(p for p in copy.iterdir() if not p.name.startswith("."))
    for r in copies:
        _lie_about(r)
    doc = plan_doc(copies)
    assert [d["venv_path"] for d in doc["real_directories"]] == [
        d["venv_path"] for d in good["real_directories"]]
