"""`rpathfix repair`: the plan (which entry each native file of a wheel gets, from the planner and
the loader model), the check of the repaired layout, the metadata, and the whole story with real
pip, uv, an index, `rpathfix venv` and the real loader. The byte edits are the real rewriter's
(elf_write, macho_write through `rpathfix.repair.binary_member_patch`); the written headers are
compared with what the check loaded (FileRepair.after)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import rpathfix, zig_available, zig_cc
from rpathfix.model import Edit
from rpathfix.repair import WheelOutcome, repair_wheels
from rpathfix.repair_plan import compatible_release
from test_index import CLEAN_ENV, new_venv, pip, pypiserver, serve, uv
from test_wheelfile import make_wheel

CU13 = ("nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink")
PROVIDER = "onnxgpustub/capi/libxonnxruntime_providers_cuda.so"
LOAD = "import onnxgpustub; print(onnxgpustub.load_cuda_provider())"


def plan_of(stub_wheels: dict[str, Path], wheel: str, siblings: tuple[str, ...], **kw: object) -> WheelOutcome:
    (o,) = repair_wheels([str(stub_wheels[wheel])], [str(stub_wheels[s]) for s in siblings], None,
                         dry_run=True, **kw)  # type: ignore[arg-type]
    return o


# ---------------------------------------------------------------- the plan


def test_provider_gets_one_entry_to_the_cu13_wheels(stub_wheels: dict[str, Path]) -> None:
    o = plan_of(stub_wheels, "onnxgpustub", CU13)
    (f,) = o.plan.files
    assert f.path == PROVIDER and f.member == PROVIDER and f.tag == "rpath"
    assert f.edits == (Edit("rpath-tag", "rpath"), Edit("add-rpath", "$ORIGIN/../../nvidia/cu13/lib"))
    assert [(a.name, a.dist, a.provider) for a in f.added] == [
        ("libxcublasLt.so.13", "nvidia-xcublas", "nvidia/cu13/lib/libxcublasLt.so.13"),
        ("libxcublas.so.13", "nvidia-xcublas", "nvidia/cu13/lib/libxcublas.so.13"),
        ("libxcudart.so.13", "nvidia-xcuda-runtime", "nvidia/cu13/lib/libxcudart.so.13")]
    assert (f.before.rpath, f.before.runpath) == (None, None)  # type: ignore[union-attr]
    assert (f.after.rpath, f.after.runpath) == ("$ORIGIN/../../nvidia/cu13/lib", None)  # type: ignore[union-attr]
    assert o.plan.errors == [] and o.plan.checked == 3
    assert o.new_name == "onnxgpustub-1.31.1-0rpathfix-cp311-cp311-linux_x86_64.whl"
    reqs = {r.dist: (r.requirement, r.status, r.extras) for r in o.plan.requirements}
    assert reqs == {"nvidia-xcublas": ("nvidia-xcublas~=13.1", "missing", ()),
                    "nvidia-xcuda-runtime": ("nvidia-xcuda-runtime~=13.0", "extra", ("cuda",))}
    assert o.requires_missing == ("nvidia-xcublas~=13.1", "nvidia-xcuda-runtime~=13.0")
    under_cuda = plan_of(stub_wheels, "onnxgpustub", CU13, extra="cuda")
    assert under_cuda.requires_missing == ("nvidia-xcublas~=13.1",), "the cuda extra already has the runtime"


def test_without_the_siblings_the_repair_is_refused_with_the_trace(stub_wheels: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = rpathfix("repair", str(stub_wheels["onnxgpustub"]), "--with", str(stub_wheels["nvidia_xcuda_runtime"]),
                    "--out", str(out))
    assert proc.returncode == 1, proc.stderr
    assert "repaired library libxonnxruntime_providers_cuda.so will not load: libxcublasLt.so.13 not found" \
        in proc.stderr
    assert "tried site-packages/onnxgpustub/capi/../../nvidia/cu13/lib/libxcublasLt.so.13  [rpath" in proc.stderr
    assert not out.exists(), "nothing written"
    dry = rpathfix("repair", str(stub_wheels["onnxgpustub"]), "--with", str(stub_wheels["nvidia_xcuda_runtime"]),
                   "--dry-run", "--json")
    doc = json.loads(dry.stdout)
    assert dry.returncode == 1 and doc["wheels"][0]["status"] == "refused"


def test_a_wheel_that_loads_needs_nothing(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    o = plan_of(stub_wheels, "torchstub", CU13)
    assert o.plan.files == () and o.plan.errors == [] and o.requires_missing == ()
    assert {r.dist: r.status for r in o.plan.requirements} == {"nvidia-xcublas": "required",
                                                               "nvidia-xcuda-runtime": "required"}
    proc = rpathfix("repair", str(stub_wheels["torchstub"]), "--with", *[str(stub_wheels[s]) for s in CU13],
                    "--out", str(tmp_path / "out"))
    assert proc.returncode == 0 and "nothing to repair; not written" in proc.stdout
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_dry_run_prints_the_edits_and_json_has_the_schema(stub_wheels: dict[str, Path]) -> None:
    args = [str(stub_wheels["onnxgpustub"]), "--with", *[str(stub_wheels[s]) for s in CU13], "--dry-run"]
    human = rpathfix("repair", *args)
    assert human.returncode == 0, human.stderr
    assert (f"  {PROVIDER}: DT_RPATH += $ORIGIN/../../nvidia/cu13/lib  (libxcublasLt.so.13 from nvidia-xcublas, "
            "libxcublas.so.13 from nvidia-xcublas, libxcudart.so.13 from nvidia-xcuda-runtime)") in human.stdout
    assert "  METADATA: Requires-Dist nvidia-xcublas~=13.1" in human.stdout
    doc = json.loads(rpathfix("repair", *args, "--json", "--add-requires=cuda").stdout)
    assert doc["schema"] == "rpathfix.repair/1"
    (w,) = doc["wheels"]
    assert set(w) == {"wheel", "dist", "version", "status", "output_name", "output", "files", "skipped",
                      "requirements", "requires_missing", "requires_added", "extra", "checked", "errors",
                      "warnings", "notes"}
    (f,) = w["files"]
    assert f["search_before"] == [] and f["search_after"] == ["$ORIGIN/../../nvidia/cu13/lib"]
    assert f["edits"][1] == {"op": "add-rpath", "arg": "$ORIGIN/../../nvidia/cu13/lib", "new": ""}
    assert w["extra"] == "cuda" and w["requires_missing"] == ["nvidia-xcublas~=13.1"] and w["status"] == "planned"


def test_compatible_release() -> None:
    assert compatible_release("13.1.0.3") == "~=13.1"
    assert compatible_release("2.9.0+cu130") == "~=2.9"
    assert compatible_release("7") == "~=7.0"
    assert compatible_release(None) == "" and compatible_release("not a version") == ""


# ---------------------------------------------------------------- gcc-built wheels for the rules


def gcc_lib(d: Path, name: str, needs: tuple[str, ...] = (), *, rpath: str | None = None,
            runpath: str | None = None, libdirs: tuple[Path, ...] = ()) -> bytes:
    d.mkdir(parents=True, exist_ok=True)
    src = d / (name.replace(".", "_") + ".c")
    src.write_text(f"int f_{name.replace('.', '_').replace('-', '_').replace('+', '_')}(void) {{ return 1; }}\n")
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(d / name), str(src), f"-Wl,-soname,{name}", "-Wl,--no-as-needed",
           f"-L{d}", *[f"-L{x}" for x in libdirs], *[f"-l:{n}" for n in needs]]
    if rpath is not None:
        cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
    if runpath is not None:
        cmd += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
    subprocess.run(cmd, check=True, capture_output=True)
    return (d / name).read_bytes()


def lib_wheel(tmp: Path, name: str, libs: dict[str, bytes], metadata_extra: str = "") -> Path:
    d = tmp / "wheels"
    d.mkdir(exist_ok=True)
    return make_wheel(d / f"{name}-1.0-py3-none-any.whl", {f"{name}/__init__.py": b"", **libs}, name=name,
                      metadata_extra=metadata_extra, mode=0o755)


def test_driver_and_system_libraries_get_no_path(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """A sibling shipping libcuda.so.1 (the driver's) and libstdc++.so.6 (the system's) gets no
    entry for them; the one real sibling library does."""
    build = tmp_path / "build"
    gcc_lib(build, "libcuda.so.1")  # only to link against: the driver provides it at run time
    shutil.copy(stub_wheels["nvidia_xcuda_runtime"], tmp_path)
    with zipfile.ZipFile(stub_wheels["nvidia_xcuda_runtime"]) as zf:
        (build / "libxcudart.so.13").write_bytes(zf.read("nvidia/cu13/lib/libxcudart.so.13"))
    lib = gcc_lib(build, "libxgpu.so", ("libcuda.so.1", "libstdc++.so.6", "libxcudart.so.13"))
    gpu = lib_wheel(tmp_path, "gpuwheel", {"gpuwheel/lib/libxgpu.so": lib})
    bundle = lib_wheel(tmp_path, "bundler", {"gpudrv/lib/libcuda.so.1": (build / "libcuda.so.1").read_bytes(),
                                             "gpudrv/lib/libstdc++.so.6": gcc_lib(build / "s", "libstdc++.so.6")})
    (o,) = repair_wheels([str(gpu)], [str(bundle), str(tmp_path / stub_wheels["nvidia_xcuda_runtime"].name)], None,
                         dry_run=True)
    (f,) = o.plan.files
    assert [a.name for a in f.added] == ["libxcudart.so.13"]
    assert f.edits[-1] == Edit("add-rpath", "$ORIGIN/../../nvidia/cu13/lib")
    assert {(s.name, s.reason) for s in o.plan.skipped} == {("libcuda.so.1", "driver"), ("libstdc++.so.6", "system")}
    assert o.plan.errors == [], "libcuda.so.1 is the driver's: not missing"
    assert [r.dist for r in o.plan.requirements] == ["nvidia-xcuda-runtime"], "the bundler is not needed"


def test_the_tag_follows_the_file_then_the_wheel_then_the_option(stub_wheels: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    build = tmp_path / "build"
    with zipfile.ZipFile(stub_wheels["nvidia_xcuda_runtime"]) as zf:
        (build / "x").mkdir(parents=True)
        (build / "x" / "libxcudart.so.13").write_bytes(zf.read("nvidia/cu13/lib/libxcudart.so.13"))
    dirs = (build / "x",)
    sibling = str(stub_wheels["nvidia_xcuda_runtime"])
    own_runpath = gcc_lib(build / "a", "libown.so", ("libxcudart.so.13",), runpath="/opt/keep:$ORIGIN", libdirs=dirs)
    bare = gcc_lib(build / "b", "libbare.so", ("libxcudart.so.13",), libdirs=dirs)
    runpath_peer = gcc_lib(build / "c", "libpeer.so", runpath="$ORIGIN")

    w1 = lib_wheel(tmp_path, "ownrunpath", {"ownrunpath/libown.so": own_runpath})
    (o,) = repair_wheels([str(w1)], [sibling], None, dry_run=True)
    (f,) = o.plan.files
    assert f.tag == "runpath" and f.edits == (Edit("add-rpath", "$ORIGIN/../nvidia/cu13/lib"),)
    assert f.after.runpath == "/opt/keep:$ORIGIN:$ORIGIN/../nvidia/cu13/lib", "existing entries stay, in order"  # type: ignore[union-attr]

    w2 = lib_wheel(tmp_path, "peers", {"peers/libbare.so": bare, "peers/libpeer.so": runpath_peer})
    (o,) = repair_wheels([str(w2)], [sibling], None, dry_run=True)
    (f,) = o.plan.files
    assert f.path == "peers/libbare.so" and f.edits[0] == Edit("rpath-tag", "runpath")
    assert f.after.runpath == "$ORIGIN/../nvidia/cu13/lib" and f.after.rpath is None  # type: ignore[union-attr]

    w3 = lib_wheel(tmp_path, "alone", {"alone/libbare.so": bare})
    (o,) = repair_wheels([str(w3)], [sibling], None, dry_run=True, rpath_tag_default="runpath")
    assert o.plan.files[0].edits[0] == Edit("rpath-tag", "runpath")
    (o,) = repair_wheels([str(w3)], [sibling], None, dry_run=True)
    assert o.plan.files[0].edits[0] == Edit("rpath-tag", "rpath"), "the default is DT_RPATH"


def written(wheel: str, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(member)


def test_the_written_elf_headers_are_the_checked_ones(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """What elf_write writes for each tag case is what the check loaded (FileRepair.after):
    a file with neither tag gets `rpath-tag` first and then its entries, in that tag; one
    with DT_RUNPATH keeps it and its entries, in order. readelf agrees."""
    from rpathfix.elf import read_elf
    from rpathfix.source import BytesSource

    build = tmp_path / "build"
    with zipfile.ZipFile(stub_wheels["nvidia_xcuda_runtime"]) as zf:
        (build / "x").mkdir(parents=True)
        (build / "x" / "libxcudart.so.13").write_bytes(zf.read("nvidia/cu13/lib/libxcudart.so.13"))
    dirs = (build / "x",)
    sibling = str(stub_wheels["nvidia_xcuda_runtime"])
    cases = {
        "ownrunpath": ({"ownrunpath/libown.so": gcc_lib(build / "a", "libown.so", ("libxcudart.so.13",),
                                                         runpath="/opt/keep:$ORIGIN", libdirs=dirs)}, "rpath"),
        "peers": ({"peers/libbare.so": gcc_lib(build / "b", "libbare.so", ("libxcudart.so.13",), libdirs=dirs),
                   "peers/libpeer.so": gcc_lib(build / "c", "libpeer.so", runpath="$ORIGIN")}, "rpath"),
        "alone": ({"alone/libbare.so": (build / "b" / "libbare.so").read_bytes()}, "rpath"),
        "alonerun": ({"alonerun/libbare.so": (build / "b" / "libbare.so").read_bytes()}, "runpath"),
    }
    seen = {}
    for name, (libs, default) in cases.items():
        w = lib_wheel(tmp_path, name, libs)
        (o,) = repair_wheels([str(w)], [sibling], str(tmp_path / "out"), rpath_tag_default=default)
        (f,) = o.plan.files
        assert o.output is not None
        data = written(o.output, f.member)
        after = read_elf(BytesSource(f.member, data))
        assert (after.rpath, after.runpath, after.needed, after.soname) == (
            f.after.rpath, f.after.runpath, f.after.needed, f.after.soname), name  # type: ignore[union-attr]
        lib = tmp_path / "check" / name / posixpath_basename(f.member)
        lib.parent.mkdir(parents=True)
        lib.write_bytes(data)
        dyn = subprocess.run(["readelf", "-dW", str(lib)], capture_output=True, text=True).stdout
        seen[name] = [line.split()[1] for line in dyn.splitlines() if "(RPATH)" in line or "(RUNPATH)" in line]
    assert seen == {"ownrunpath": ["(RUNPATH)"], "peers": ["(RUNPATH)"], "alone": ["(RPATH)"],
                    "alonerun": ["(RUNPATH)"]}


def posixpath_basename(member: str) -> str:
    return member.rsplit("/", 1)[-1]


def test_the_repair_inflates_each_library_once_and_reads_headers_in_threads(
        stub_wheels: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """repair spools the libraries of the wheel it repairs as their headers are read (here
    every deflated member: SPOOL_MIN is 0) and writes the patched provider from that spool:
    no member is inflated twice, and the siblings, only read, are not spooled. The header
    reads in two threads give the same headers as one thread. Control: a repair that lets
    rewrite_wheel open the wheel again inflates the provider a second time, for the same
    bytes."""
    from rpathfix import deflate, wheelfile, wheeltree

    real = deflate.Spool
    made: list[str] = []

    def spool(name: str, *a: object) -> deflate.Spool:
        made.append(name)
        return real(name, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(deflate, "Spool", spool)
    monkeypatch.setattr(wheelfile, "SPOOL_MIN", 0)
    wheel, siblings = str(stub_wheels["onnxgpustub"]), [str(stub_wheels[s]) for s in CU13]
    (o,) = repair_wheels([wheel], siblings, str(tmp_path / "once"))
    assert o.status == "repaired" and o.output is not None
    assert f"{os.path.abspath(wheel)}!{PROVIDER}" in made
    assert len(made) == len(set(made)), made
    assert all(n.startswith(os.path.abspath(wheel) + "!") for n in made), "siblings are read, not spooled"
    assert sorted(os.listdir(tmp_path / "once")) == [posixpath_basename(o.output)]

    made.clear()
    rewrite = wheelfile.rewrite_wheel

    def without_archive(*a: object, archive: object = None, **kw: object) -> object:
        return rewrite(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(wheelfile, "rewrite_wheel", without_archive)
    (control,) = repair_wheels([wheel], siblings, str(tmp_path / "twice"))
    assert made.count(f"{os.path.abspath(wheel)}!{PROVIDER}") == 2, "the control inflates the provider again"
    assert control.output is not None
    assert Path(control.output).read_bytes() == Path(o.output).read_bytes()

    from rpathfix.fstree import RealTree
    from rpathfix.wheelfile import WheelArchive

    memos = []
    for readers in (1, 2):
        monkeypatch.setattr(wheeltree, "READERS", readers)
        archives = [WheelArchive(w) for w in [wheel, *siblings]]
        try:
            memos.append(wheeltree.WheelTree(RealTree(), archives).read_headers())
        finally:
            for a in archives:
                a.close()
    assert memos[0] == memos[1] and len(memos[0]) >= 4


@pytest.mark.skipif(not zig_available(), reason="the Mach-O stubs need zig")
def test_macho_gets_a_loader_path_rpath(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """A zig-built arm64 dylib that needs macdep's @rpath/libxmacdep.dylib, with only
    @loader_path as LC_RPATH: it gets the LC_RPATH that reaches macdep's wheel."""
    with zipfile.ZipFile(stub_wheels["macdep"]) as zf:
        (tmp_path / "libxmacdep.dylib").write_bytes(zf.read("macdep/lib/libxmacdep.dylib"))
    (tmp_path / "fix.c").write_text("int stub_macdep(void);\nint stub_macfix(void) { return stub_macdep() + 1; }\n")
    zig_cc(tmp_path, "aarch64-macos", "-shared", "-o", "libxmacfix.dylib", "fix.c", "-L.", "-lxmacdep",
           "-Wl,-install_name,@rpath/libxmacfix.dylib", "-Wl,-rpath,@loader_path")
    wheel = lib_wheel(tmp_path, "macfixstub", {"macfixstub/.libs/libxmacfix.dylib":
                                               (tmp_path / "libxmacfix.dylib").read_bytes()})
    (o,) = repair_wheels([str(wheel)], [str(stub_wheels["macdep"])], None, dry_run=True)
    (f,) = o.plan.files
    assert f.format == "macho" and f.tag is None
    assert f.edits == (Edit("add-rpath", "@loader_path/../../macdep/lib"),)
    assert f.after.slices[0].rpaths == ("@loader_path", "@loader_path/../../macdep/lib")  # type: ignore[union-attr]
    assert o.plan.errors == [] and o.plan.checked == 1, "loaded with the LC_RPATH the edit adds"
    (control,) = repair_wheels([str(wheel)], [], None, dry_run=True)
    assert control.plan.files == () and control.plan.warnings, "alone, nothing provides libxmacdep"

    # Written: the real Mach-O rewriter, re-signed; llvm-objdump reads the commands the check
    # loaded, and llvm-install-name-tool making the same edit gives the same ones.
    from macho_helpers import INSTALL_NAME_TOOL, OBJDUMP, install_name_tool, objdump_view
    from rpathfix.codesign import verify
    from rpathfix.macho import read_macho
    from rpathfix.source import BytesSource

    (done,) = repair_wheels([str(wheel)], [str(stub_wheels["macdep"])], str(tmp_path / "out"))
    assert done.status == "repaired" and done.output is not None
    with zipfile.ZipFile(done.output) as zf:
        data = zf.read("macfixstub/.libs/libxmacfix.dylib")
    def seen_by_dyld(info: object) -> list[tuple[object, ...]]:
        return [(s.arch, s.filetype, s.install_name, s.dylibs, s.rpaths, s.has_code_signature)
                for s in info.slices]  # type: ignore[attr-defined]

    assert seen_by_dyld(read_macho(BytesSource("x", data))) == seen_by_dyld(f.after)
    (verdict,) = verify(BytesSource("x", data))
    assert verdict.signed and verdict.ok, verdict.problems
    ours = tmp_path / "ours" / "libxmacfix.dylib"
    ours.parent.mkdir()
    ours.write_bytes(data)
    if OBJDUMP is not None and INSTALL_NAME_TOOL is not None:
        theirs = tmp_path / "theirs" / "libxmacfix.dylib"
        theirs.parent.mkdir()
        shutil.copy(tmp_path / "libxmacfix.dylib", theirs)
        assert install_name_tool(theirs, "-add_rpath", "@loader_path/../../macdep/lib").returncode == 0
        ((_h, edited, _kinds),) = objdump_view(ours).values()
        assert [re.search(r"path (\S+)", e).group(1) for e in edited if "LC_RPATH" in e] == [  # type: ignore[union-attr]
            "@loader_path", "@loader_path/../../macdep/lib"]
        assert objdump_view(ours) == objdump_view(theirs)


@pytest.mark.skipif(not zig_available(), reason="the Mach-O stubs need zig")
def test_a_repaired_macho_file_is_checked_with_its_new_headers(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """The dyld model reads headers through the header memo, so the check loads the repaired
    file as the edit makes it: a library that gets the path to macdep but also needs a dylib
    no wheel provides is refused (it was skipped, unchecked, while dyld read only the file)."""
    with zipfile.ZipFile(stub_wheels["macdep"]) as zf:
        (tmp_path / "libxmacdep.dylib").write_bytes(zf.read("macdep/lib/libxmacdep.dylib"))
    (tmp_path / "gone.c").write_text("int xgone(void) { return 1; }\n")
    zig_cc(tmp_path, "aarch64-macos", "-shared", "-o", "libxgone.dylib", "gone.c",
           "-Wl,-install_name,@rpath/libxgone.dylib")
    (tmp_path / "fix.c").write_text("int stub_macdep(void);\nint xgone(void);\n"
                                    "int stub_macfix(void) { return stub_macdep() + xgone(); }\n")
    zig_cc(tmp_path, "aarch64-macos", "-shared", "-o", "libxmacfix.dylib", "fix.c", "-L.", "-lxmacdep", "-lxgone",
           "-Wl,-install_name,@rpath/libxmacfix.dylib", "-Wl,-rpath,@loader_path")
    wheel = lib_wheel(tmp_path, "macgone", {"macgone/.libs/libxmacfix.dylib":
                                            (tmp_path / "libxmacfix.dylib").read_bytes()})
    (o,) = repair_wheels([str(wheel)], [str(stub_wheels["macdep"])], None, dry_run=True)
    (f,) = o.plan.files
    assert f.edits == (Edit("add-rpath", "@loader_path/../../macdep/lib"),)
    (err,) = o.plan.errors
    assert err.name == "@rpath/libxgone.dylib" and "repaired library libxmacfix.dylib will not load" in err.message
    assert not any("not checked" in n for n in o.plan.notes)
    # Control: a sibling that provides libxgone too; the same check then passes.
    gone = lib_wheel(tmp_path, "gonewheel", {"gonewheel/lib/libxgone.dylib": (tmp_path / "libxgone.dylib").read_bytes()})
    (ok,) = repair_wheels([str(wheel)], [str(stub_wheels["macdep"]), str(gone)], None, dry_run=True)
    assert ok.plan.errors == [] and len(ok.plan.files[0].edits) == 2


def test_metadata_only_repair_is_accepted_by_pip_wheel_and_twine(stub_wheels: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """A wheel whose library already reaches the sibling (DT_RPATH) but whose METADATA does not
    require it: --add-requires rewrites METADATA only (every other member byte for byte)."""
    build = tmp_path / "build"
    with zipfile.ZipFile(stub_wheels["nvidia_xcuda_runtime"]) as zf:
        (build / "x").mkdir(parents=True)
        (build / "x" / "libxcudart.so.13").write_bytes(zf.read("nvidia/cu13/lib/libxcudart.so.13"))
    lib = gcc_lib(build / "m", "libmeta.so", ("libxcudart.so.13",), rpath="$ORIGIN/../nvidia/cu13/lib",
                  libdirs=(build / "x",))
    wheel = lib_wheel(tmp_path, "metaonly", {"metaonly/libmeta.so": lib}, "Summary: s\n")
    sibling = str(stub_wheels["nvidia_xcuda_runtime"])
    out = tmp_path / "out"
    told = rpathfix("repair", str(wheel), "--with", sibling, "--out", str(out))
    assert told.returncode == 0 and "METADATA lacks nvidia-xcuda-runtime~=13.0" in told.stderr
    assert not out.exists(), "without --add-requires there is nothing to write"
    proc = rpathfix("repair", "--add-requires", str(wheel), "--with", sibling, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (new,) = out.glob("*.whl")
    assert new.name == "metaonly-1.0-0rpathfix-py3-none-any.whl"
    with zipfile.ZipFile(new) as zf:
        assert b"Requires-Dist: nvidia-xcuda-runtime~=13.0\n" in zf.read("metaonly-1.0.dist-info/METADATA")
        assert zf.read("metaonly/libmeta.so") == lib
    assert subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp_path / "u"), str(new)],
                          capture_output=True).returncode == 0
    twine = subprocess.run([sys.executable, "-m", "twine", "check", str(new)], capture_output=True, text=True)
    assert twine.returncode == 0 and "ERROR" not in twine.stdout, twine.stdout
    target = tmp_path / "target"
    assert pip("install", "-q", "--no-deps", "--no-index", "--target", str(target), str(new)).returncode == 0
    again = rpathfix("repair", "--add-requires", str(wheel), "--with", sibling, "--out", str(out))
    assert again.returncode == 0 and "up to date" in again.stdout, "the same repair twice writes nothing"


# ---------------------------------------------------------------- the whole story


def ldd_missing(lib: Path) -> list[str]:
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, env=CLEAN_ENV).stdout
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


@pytest.fixture
def repaired_index(stub_wheels: dict[str, Path], tmp_path: Path) -> Path:
    """The original and the repaired onnxgpustub, and the cu13 wheels, in one static repository."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for n in ("onnxgpustub", *CU13):
        shutil.copy(stub_wheels[n], wheels)
    (o,) = repair_wheels([str(stub_wheels["onnxgpustub"])], [str(stub_wheels[s]) for s in CU13], str(wheels),
                         add_requires=True)
    assert o.status == "repaired" and o.output is not None
    assert Path(o.output).name == "onnxgpustub-1.31.1-0rpathfix-cp311-cp311-linux_x86_64.whl"
    from rpathfix.index import build_index

    build_index(str(wheels))
    return wheels


@pytest.mark.slow
def test_pip_and_uv_install_the_repaired_wheel_which_loads(stub_wheels: dict[str, Path], tmp_path: Path,
                                                           repaired_index: Path) -> None:
    # Control: the original wheel, installed with its siblings by pip, does not load its provider.
    control = new_venv(tmp_path / "control")
    for n in CU13:
        assert pip("--python", str(control), "install", "-q", "--no-deps", str(stub_wheels[n])).returncode == 0
    assert pip("--python", str(control), "install", "-q", "--no-deps",
               str(stub_wheels["onnxgpustub"])).returncode == 0
    site = next((tmp_path / "control" / "lib").glob("python*/site-packages"))
    assert sorted(ldd_missing(site / PROVIDER)) == ["libxcublas.so.13", "libxcublasLt.so.13", "libxcudart.so.13"]
    run = subprocess.run([str(control), "-c", LOAD], capture_output=True, text=True, env=CLEAN_ENV)
    assert run.returncode != 0 and "libxcublasLt.so.13" in run.stderr

    with serve(repaired_index, tmp_path / "http.log") as server:
        index = server.url + "/simple/"
        py = new_venv(tmp_path / "pipvenv")
        proc = pip("--python", str(py), "install", "-q", "--index-url", index, "onnxgpustub")
        assert proc.returncode == 0, proc.stderr
        venv = tmp_path / "uvvenv"
        new_venv(venv)
        proc = uv("pip", "install", "--index-url", index, "onnxgpustub", venv=venv, cache=tmp_path / "uvcache")
        assert proc.returncode == 0, proc.stderr
    for root in (tmp_path / "pipvenv", venv):
        site = next((root / "lib").glob("python*/site-packages"))
        wheel_file = (site / "onnxgpustub-1.31.1.dist-info" / "WHEEL").read_text()
        assert "Build: 0rpathfix" in wheel_file, f"{root.name} chose the repaired wheel over the original"
        assert (site / "nvidia" / "cu13" / "lib" / "libxcublas.so.13").exists(), "requirements pulled the siblings"
        assert ldd_missing(site / PROVIDER) == []
        run = subprocess.run([str(root / "bin" / "python"), "-c", LOAD], capture_output=True, text=True,
                             env=CLEAN_ENV)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == "8"


@pytest.mark.slow
def test_the_repaired_wheel_through_rpathfix_venv_and_pypiserver(stub_wheels: dict[str, Path], tmp_path: Path,
                                                                repaired_index: Path) -> None:
    repaired = repaired_index / "onnxgpustub-1.31.1-0rpathfix-cp311-cp311-linux_x86_64.whl"
    siblings = [str(stub_wheels[s]) for s in CU13]
    roots = tmp_path / "roots"
    assert rpathfix("unpack", str(repaired), *siblings, "--into", str(roots)).returncode == 0
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *[str(p) for p in sorted(roots.iterdir())])
    assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(out / "bin" / "python"), "-c", LOAD], capture_output=True, text=True, env=CLEAN_ENV)
    assert run.returncode == 0 and run.stdout.strip() == "8", run.stderr

    packages = tmp_path / "packages"
    packages.mkdir()
    with pypiserver(packages, tmp_path / "pypiserver.log") as url:
        up = subprocess.run([str(Path(sys.executable).parent / "twine"), "upload", "--non-interactive",
                             "--disable-progress-bar", "--repository-url", url + "/", "-u", "x", "-p", "x",
                             str(repaired), *siblings], capture_output=True, text=True, env=CLEAN_ENV)
        assert up.returncode == 0, up.stdout + up.stderr
        py = new_venv(tmp_path / "fromserver")
        proc = pip("--python", str(py), "install", "-q", "--index-url", url + "/simple/", "onnxgpustub")
        assert proc.returncode == 0, proc.stderr
    run = subprocess.run([str(py), "-c", LOAD], capture_output=True, text=True, env=CLEAN_ENV)
    assert run.returncode == 0 and run.stdout.strip() == "8", run.stderr
    assert "LD_LIBRARY_PATH" not in CLEAN_ENV and os.environ.get("LD_PRELOAD") is None


# ---------------------------------------------------------------- rpathfix venv --repair


def test_venv_repair_patches_copies_of_the_provider_only(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """The onnxruntime-gpu-like case as one root per wheel: without --repair the venv is
    written (pip's site-packages fails the same way) with one warning naming `rpathfix venv
    --repair`, and the provider does not load from it; with it, the provider (and the
    cublasLt-like library that finds nvjitlink only through its loader's RPATH) are patched
    copies, every other file is a link, the roots are untouched, and the provider loads with
    ctypes from the venv with LD_LIBRARY_PATH unset, every library from inside the venv."""
    roots = tmp_path / "roots"
    assert rpathfix("unpack", *[str(stub_wheels[n]) for n in ("onnxgpustub", *CU13)], "--into",
                    str(roots)).returncode == 0
    args = [str(p) for p in sorted(roots.iterdir()) if not p.name.startswith(".")]
    out = tmp_path / "venv"
    warned = rpathfix("venv", str(out), *args)
    assert warned.returncode == 0 and out.exists(), warned.stderr
    assert "warning [no-path-to-provider]" in warned.stderr and "libxonnxruntime_providers_cuda.so" in warned.stderr
    assert f"fix: rpathfix venv --repair {out} " in warned.stderr
    unrepaired = subprocess.run([str(out / "bin" / "python"), "-c", LOAD], capture_output=True, text=True,
                                env=CLEAN_ENV)
    assert unrepaired.returncode != 0, "the control: without --repair the provider does not load"

    provider_root = roots / "onnxgpustub" / "site-packages" / PROVIDER
    root_bytes = provider_root.read_bytes()
    proc = rpathfix("venv", "-v", "--repair", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    site = out / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    copies = sorted(str(p.relative_to(site)) for p in site.rglob("*")
                    if p.is_file() and not p.is_symlink() and "__pycache__" not in p.parts)
    assert copies == ["nvidia/cu13/lib/libxcublasLt.so.13", PROVIDER]
    assert f"patched copy: {PROVIDER} (--repair)" in proc.stderr
    assert (site / "onnxgpustub" / "__init__.py").is_symlink() and (site / "onnxgpustub" / "capi").is_dir()
    assert provider_root.read_bytes() == root_bytes, "the roots are not changed"
    assert (site / PROVIDER).stat().st_mode & 0o777 == provider_root.stat().st_mode & 0o777
    dyn = subprocess.run(["readelf", "-dW", str(site / PROVIDER)], capture_output=True, text=True).stdout
    assert "(RPATH)" in dyn and "[$ORIGIN/../../nvidia/cu13/lib]" in dyn

    ldd = subprocess.run(["ldd", str(site / PROVIDER)], capture_output=True, text=True, env=CLEAN_ENV).stdout
    libs = {line.split()[0]: line.split("=> ")[1].split(" (")[0] for line in ldd.splitlines() if "=> " in line}
    ours = {n: p for n, p in libs.items() if n.startswith("libx")}
    assert sorted(ours) == ["libxcublas.so.13", "libxcublasLt.so.13", "libxcudart.so.13", "libxnvjitlink.so.13"]
    assert all(p.startswith(str(out) + "/") for p in ours.values()), ours
    run = subprocess.run([str(out / "bin" / "python"), "-c", LOAD], capture_output=True, text=True, env=CLEAN_ENV)
    assert run.returncode == 0 and run.stdout.strip() == "8", run.stderr
    control = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(provider_root)!r})"],
                             capture_output=True, text=True, env=CLEAN_ENV)
    assert control.returncode != 0 and "libxcublasLt.so.13" in control.stderr, "the root's copy does not load"
    assert "LD_LIBRARY_PATH" not in CLEAN_ENV

    verify = rpathfix("verify", str(out))
    assert verify.returncode == 0 and "no-path-to-provider" not in verify.stdout, verify.stdout
    again = rpathfix("venv", "-v", "--repair", str(out), *args)
    assert again.returncode == 0 and "up to date" in again.stdout, "the patched copies compare equal"


def test_venv_repair_in_copy_mode_and_the_tree_node(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """The patched copy is a VenvNode of its own (source + BytePatch, no bytes held): the
    planned view reads it through PatchedSource, and write_tree streams it; in copy mode
    (every directory real) only the node's kind changes."""
    from rpathfix.build_venv import repair_venv
    from rpathfix.elf import read_elf
    from rpathfix.fstree import CachedTree, RealTree
    from rpathfix.plan import make_plan
    from rpathfix.roots import load_root
    from rpathfix.venv import describe_venv, planned_view, write_tree

    roots = tmp_path / "roots"
    assert rpathfix("unpack", *[str(stub_wheels[n]) for n in ("onnxgpustub", *CU13)], "--into",
                    str(roots)).returncode == 0
    tree = CachedTree(RealTree())
    plan = make_plan(tree, [load_root(tree, str(p)) for p in sorted(roots.iterdir())])
    for mode in ("symlink", "copy"):
        out = tmp_path / f"venv-{mode}"
        venv = describe_venv(str(out), plan.entries, python=sys.executable, link_mode=mode)
        done = repair_venv(tree, venv, plan)
        assert sorted(done) == ["nvidia/cu13/lib/libxcublasLt.so.13", PROVIDER]
        rel = posixpath_join(venv.kind_dirs["site-packages"], PROVIDER)
        node = venv.nodes[rel]
        assert node.kind == "patched" and node.data is None and node.patch is not None
        assert len(node.patch.writes) < 10 and node.source == str(roots / "onnxgpustub" / "site-packages" / PROVIDER)
        view = planned_view(venv, RealTree())
        src = view.open(str(out / rel))
        try:
            assert read_elf(src).rpath == "$ORIGIN/../../nvidia/cu13/lib"
        finally:
            src.close()
        assert write_tree(venv).changed
        assert read_elf_path(out / rel).rpath == "$ORIGIN/../../nvidia/cu13/lib"
        run = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(out / rel)!r})"],
                             capture_output=True, text=True, env=CLEAN_ENV)
        assert run.returncode == 0, run.stderr


def posixpath_join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p)


def read_elf_path(path: Path):  # type: ignore[no-untyped-def]
    from rpathfix.elf import read_elf
    from rpathfix.source import FileSource

    with FileSource(str(path)) as src:
        return read_elf(src)
