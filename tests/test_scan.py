"""`rpathfix scan` on the stub wheels, checked field for field against readelf -dW and
llvm-objdump, plus the directory-walk rules, the JSON schema and the exit codes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import rpathfix

SCAN_KEYS = {"path", "wheel", "format", "arch", "soname", "install_name", "needed", "rpath", "runpath",
             "is_extension", "dist", "version", "error"}
OBJDUMP = shutil.which("llvm-objdump-14") or shutil.which("llvm-objdump")


def scan_json(*args: str) -> dict:  # type: ignore[type-arg]
    proc = rpathfix("scan", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "rpathfix.scan/1"
    return doc  # type: ignore[no-any-return]


def readelf_fields(path: Path) -> dict[str, object]:
    out = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True, check=True).stdout
    fields: dict[str, object] = {"needed": [], "soname": None, "rpath": [], "runpath": []}
    for line in out.splitlines():
        m = re.search(r"\((NEEDED|SONAME|RPATH|RUNPATH)\)\s+\S+ \S+: \[(.*)\]$", line)
        if not m:
            continue
        tag, value = m.groups()
        if tag == "NEEDED":
            fields["needed"].append(value)  # type: ignore[union-attr]
        elif tag == "SONAME":
            fields["soname"] = value
        else:
            fields[tag.lower()] = value.split(":")
    return fields


def objdump_slices(path: Path) -> dict[str, dict[str, object]]:
    """arch -> {install_name, needed, rpath} from llvm-objdump --macho -p."""
    assert OBJDUMP
    out = subprocess.run([OBJDUMP, "--macho", "-p", "--arch=all", str(path)], capture_output=True, text=True,
                         check=True).stdout
    slices: dict[str, dict[str, object]] = {}
    arch = "thin"
    cmd = ""
    for line in out.splitlines():
        m = re.search(r"\(architecture (\S+)\):$", line)
        if m:
            arch = m.group(1)
            continue
        cur = slices.setdefault(arch, {"install_name": None, "needed": [], "rpath": []})
        s = line.strip()
        if s.startswith("cmd "):
            cmd = s.split()[1]
        elif s.startswith("name ") and cmd in ("LC_ID_DYLIB",):
            cur["install_name"] = s[5:].rsplit(" (offset", 1)[0]
        elif s.startswith("name ") and cmd in ("LC_LOAD_DYLIB", "LC_LOAD_WEAK_DYLIB", "LC_REEXPORT_DYLIB",
                                               "LC_LAZY_LOAD_DYLIB", "LC_LOAD_UPWARD_DYLIB"):
            cur["needed"].append(s[5:].rsplit(" (offset", 1)[0])  # type: ignore[union-attr]
        elif s.startswith("path ") and cmd == "LC_RPATH":
            cur["rpath"].append(s[5:].rsplit(" (offset", 1)[0])  # type: ignore[union-attr]
    return slices


def test_every_elf_stub_agrees_with_readelf(stub_wheels: dict[str, Path], stub_tree: Path) -> None:
    elf_wheels = [str(p) for d, p in stub_wheels.items() if d not in ("macstub", "macdep")]
    doc = scan_json(*elf_wheels)
    files = doc["files"]
    assert len(files) >= 15
    for rec in files:
        assert set(rec) == SCAN_KEYS
        assert rec["error"] is None and rec["format"] == "elf" and rec["arch"] == "x86_64"
        dist_dir = Path(rec["wheel"]).name.split("-")[0]
        ref = readelf_fields(stub_tree / dist_dir / rec["path"])
        got = {k: rec[k] for k in ("needed", "soname", "rpath", "runpath")}
        assert got == ref, rec["path"]


def test_macho_stubs_agree_with_llvm_objdump(stub_wheels: dict[str, Path], stub_tree: Path) -> None:
    if "macstub" not in stub_wheels or OBJDUMP is None:
        pytest.skip("the Mach-O stubs need zig and llvm-objdump (make test installs ziglang)")
    doc = scan_json(str(stub_wheels["macstub"]), str(stub_wheels["macdep"]))
    by_file: dict[str, list[dict]] = {}  # type: ignore[type-arg]
    for rec in doc["files"]:
        assert set(rec) == SCAN_KEYS and rec["format"] == "macho" and rec["error"] is None
        by_file.setdefault(rec["path"], []).append(rec)
    assert len(by_file["macdep/lib/libxmacdep.dylib"]) == 2, "a fat file gives one record per slice"
    for path, recs in by_file.items():
        dist = "macdep" if path.startswith("macdep") else "macstub"
        ref = objdump_slices(stub_tree / dist / path)
        for rec in recs:
            r = ref.get(rec["arch"]) or ref["thin"]
            assert rec["install_name"] == r["install_name"] or (
                rec["install_name"] is None and r["install_name"] is None), path
            # objdump lists LC_ID_DYLIB among "name" lines only under its own cmd; compare dylib loads.
            assert rec["needed"] == r["needed"], path
            assert rec["rpath"] == r["rpath"], path
    ext = by_file["macstub/_native.cpython-311-darwin.so"][0]
    assert ext["is_extension"] and ext["rpath"] == ["@loader_path/.libs"]
    assert by_file["macstub/.libs/libxmacstub.dylib"][0]["rpath"] == ["@loader_path/../../macdep/lib", "@loader_path"]


def test_dist_and_version_come_from_wheel_and_dist_info(stub_wheels: dict[str, Path], stub_tree: Path) -> None:
    from_wheel = scan_json(str(stub_wheels["nvidia_xcublas_cu12"]))["files"]
    assert {(r["dist"], r["version"]) for r in from_wheel} == {("nvidia-xcublas-cu12", "12.8.4.1")}
    from_dir = scan_json(str(stub_tree / "torchstub"))["files"]
    assert {(r["dist"], r["version"]) for r in from_dir} == {("torchstub", "2.14.1")}
    ext = [r for r in from_dir if r["is_extension"]]
    assert [Path(r["path"]).name.split(".")[0] for r in ext] == ["_C"]


def test_directory_walk_rules(tmp_path: Path, stub_tree: Path) -> None:
    lib = stub_tree / "torchstub" / "torchstub" / "lib" / "libxc10.so"
    (tmp_path / "sub").mkdir()
    shutil.copy(lib, tmp_path / "sub" / "libxc10.so.1")           # library-like name
    shutil.copy(lib, tmp_path / "tool")                          # exec bit, no suffix
    os.chmod(tmp_path / "tool", 0o755)
    shutil.copy(lib, tmp_path / "data.bin")                      # neither: only with --all-files
    os.chmod(tmp_path / "data.bin", 0o644)
    (tmp_path / "fake.so").write_text("not a library\n")         # named like one, magic says no
    os.symlink("sub/libxc10.so.1", tmp_path / "libxc10.so")      # a link: listed, not scanned twice
    doc = scan_json(str(tmp_path))
    assert sorted(Path(r["path"]).name for r in doc["files"]) == ["libxc10.so.1", "tool"]
    assert [(Path(lk["path"]).name, lk["target"], lk["dangling"]) for lk in doc["links"]] == [
        ("libxc10.so", "sub/libxc10.so.1", False)]
    doc = scan_json("--all-files", str(tmp_path))
    assert sorted(Path(r["path"]).name for r in doc["files"]) == ["data.bin", "libxc10.so.1", "tool"]


def test_corrupt_file_in_a_tree_is_a_record_not_a_crash(tmp_path: Path, stub_tree: Path) -> None:
    good = (stub_tree / "torchstub" / "torchstub" / "lib" / "libxc10.so").read_bytes()
    (tmp_path / "libgood.so").write_bytes(good)
    (tmp_path / "libcut.so").write_bytes(good[:100])
    proc = rpathfix("scan", "--json", str(tmp_path))
    assert proc.returncode == 0
    recs = {Path(r["path"]).name: r for r in json.loads(proc.stdout)["files"]}
    assert recs["libgood.so"]["error"] is None
    assert recs["libcut.so"]["error"] and recs["libcut.so"]["format"] == "elf"
    assert "libcut.so" in proc.stderr and "warning" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("make", ["missing", "not-a-zip", "empty-args"])
def test_bad_top_level_input_exits_2_with_one_line(tmp_path: Path, make: str) -> None:
    args: list[str]
    if make == "missing":
        args = [str(tmp_path / "nope.whl")]
    elif make == "not-a-zip":
        (tmp_path / "bad-1.0-py3-none-any.whl").write_text("garbage")
        args = [str(tmp_path / "bad-1.0-py3-none-any.whl")]
    else:
        args = []
    proc = rpathfix("scan", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if make != "empty-args":
        assert len(lines) == 1 and ("nope.whl" in lines[0] or "bad-1.0" in lines[0]), lines


def test_table_output_and_version() -> None:
    proc = rpathfix("--version")
    assert proc.returncode == 0 and re.match(r"rpathfix \d+\.\d+", proc.stdout)
    proc = rpathfix("scan", "--help")
    assert proc.returncode == 0 and "--all-files" in proc.stdout


def test_scan_output_is_deterministic(stub_wheels: dict[str, Path]) -> None:
    args = [str(p) for p in sorted(stub_wheels.values())]
    assert rpathfix("scan", "--json", *args).stdout == rpathfix("scan", "--json", *args).stdout


def _rows(doc: dict, top: Path) -> list[tuple[str, str | None, list[str], list[str], list[str]]]:  # type: ignore[type-arg]
    return [(str(Path(r["path"]).relative_to(top)), r["dist"], r["needed"], r["rpath"], r["runpath"])
            for r in doc["files"]]


def test_scan_of_a_venv_reports_what_it_holds(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """Issue 10 item 15: a venv rpathfix wrote is directory and file links into the roots
    (and hub links when texts are long). Scanning it reports the native files it holds,
    under its own paths, as scanning the same venv written as copies does."""
    deep = tmp_path.joinpath(*["deep"] * 12)  # long link texts: the writer adds .r/<n> hubs
    roots = deep / "roots"
    dists = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink", "onnxstub")
    assert rpathfix("unpack", *[str(stub_wheels[d]) for d in dists], "--into", str(roots)).returncode == 0
    root_dirs = sorted(str(p) for p in roots.iterdir() if not p.name.startswith("."))
    links, copies = tmp_path / "links", tmp_path / "copies"
    assert rpathfix("venv", str(links), *root_dirs).returncode == 0
    assert rpathfix("venv", str(copies), *root_dirs, "--link-mode", "copy").returncode == 0
    assert (links / ".r").is_dir() and any((links / ".r").iterdir())
    site = next(links.glob("lib/python*/site-packages"))
    assert (site / "torchstub").is_symlink() or (site / "torchstub" / "lib" / "libxc10.so").is_symlink()

    linked = scan_json(str(links))
    expected = _rows(scan_json(str(copies)), copies)
    assert _rows(linked, links) == expected
    here = rpathfix("scan", "--json", ".", cwd=links)  # the hubs found from a relative top too
    assert _rows(json.loads(here.stdout), Path(".")) == expected
    names = {Path(p).name.split(".")[0] for p, *_ in expected}
    assert {"_C", "_pybind_state", "libxcudart", "libxtorch_cuda", "libxonnxruntime_providers_cuda"} <= names
    assert {d for _, d, *_ in expected} >= {"torchstub", "nvidia-xcuda-runtime", "onnxstub"}
    assert not any("/.r/" in r["path"] for r in linked["files"])  # a hub is an alias, not a place
    table = rpathfix("scan", str(links)).stdout
    assert "no native libraries found" not in table and "torchstub/lib/libxtorch_cuda.so" in table


def test_scan_follows_links_out_of_the_tree_once_and_without_loops(tmp_path: Path, stub_tree: Path) -> None:
    lib = stub_tree / "torchstub" / "torchstub" / "lib" / "libxc10.so"
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    shutil.copy(lib, outside / "sub" / "libxout.so")
    os.symlink("..", outside / "sub" / "back")             # leads up, out of what was entered
    os.symlink("c2.so", outside / "sub" / "c1.so")         # a loop of file links
    os.symlink("c1.so", outside / "sub" / "c2.so")
    top = tmp_path / "tree"
    top.mkdir()
    shutil.copy(lib, top / "libxin.so")
    os.symlink(".", top / "self")                          # into the tree: walked in place, not again
    os.symlink(str(outside / "sub"), top / "ext")          # out of the tree: entered
    os.symlink(str(outside / "sub"), top / "ext2")         # the same directory again: not entered twice
    os.symlink(str(outside / "sub" / "libxout.so"), top / "libxfile.so")  # a file link to what ext holds
    doc = scan_json(str(top))
    assert sorted(str(Path(r["path"]).relative_to(top)) for r in doc["files"]) == ["ext/libxout.so", "libxin.so"]
    assert sorted((str(Path(lk["path"]).relative_to(top)), lk["dangling"]) for lk in doc["links"]) == [
        ("ext/c1.so", True), ("ext/c2.so", True), ("libxfile.so", False)]
