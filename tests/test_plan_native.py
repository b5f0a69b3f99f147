"""The planner's native rules on real binaries: which directories must stay real for
`$ORIGIN/..` (ELF, gcc-built) and which Mach-O files must be copies for `@loader_path/..`
(zig-built), checked with the loader models on the written venv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import rpathfix


def unpack(stub_wheels: dict[str, Path], dists: tuple[str, ...], into: Path) -> list[str]:
    proc = rpathfix("unpack", *[str(stub_wheels[d]) for d in dists], "--into", str(into))
    assert proc.returncode == 0, proc.stderr
    return sorted(str(p) for p in into.iterdir() if not p.name.startswith("."))


def plan_json(roots: list[str]) -> dict:  # type: ignore[type-arg]
    proc = rpathfix("plan", "--json", *roots)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def test_elf_climb_makes_exactly_the_climbed_directories_real(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink",
                                 "onnxstub"), tmp_path / "roots")
    doc = plan_json(roots)
    assert doc["schema"] == "rpathfix.plan/1"
    real = {d["venv_path"] for d in doc["real_directories"] if d["kind"] == "site-packages"}
    assert {"torchstub", "torchstub/lib", "nvidia", "nvidia/cu13", "nvidia/cu13/lib"} <= real
    assert "onnxstub" not in real and "onnxstub/capi" not in real  # $ORIGIN only, no climb: one symlink
    links = {e["venv_path"]: e for e in doc["entries"]}
    assert links["onnxstub"]["link_to_path"].endswith("onnxstub/site-packages/onnxstub")
    assert set(links["onnxstub"]) == {"kind", "venv_path", "link_to_path", "dist", "method", "reason"}
    assert links["torchstub/lib/libxtorch_cuda.so"]["method"] == "symlink"
    # Without the nvidia wheels nothing is climbed *to*: torchstub can be one symlink again.
    alone = plan_json([r for r in roots if r.endswith("torchstub")])
    assert {e["venv_path"] for e in alone["entries"]} >= {"torchstub"}


def test_plan_is_deterministic(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime"), tmp_path / "r")
    a = rpathfix("plan", "--json", *roots).stdout
    b = rpathfix("plan", "--json", *reversed(roots)).stdout
    assert a == b


def test_macho_cross_wheel_loader_path_is_copied(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    if "macstub" not in stub_wheels:
        pytest.skip("Mach-O stubs need zig")
    roots = unpack(stub_wheels, ("macstub", "macdep"), tmp_path / "roots")
    doc = plan_json(roots)
    methods = {e["venv_path"]: e["method"] for e in doc["entries"]}
    # libxmacstub climbs @loader_path/../../macdep/lib: dyld takes the real path, so a copy;
    # the extension reaches libxmacstub through @loader_path/.libs, so it must be a copy too.
    assert methods["macstub/.libs/libxmacstub.dylib"] == "copy"
    assert methods["macstub/_native.cpython-311-darwin.so"] == "copy"
    assert methods["macdep"] == "symlink"
    ext_split = Path(roots[1]) / "site-packages" / "macstub" / "_native.cpython-311-darwin.so"
    control = rpathfix("ldd", str(ext_split))
    assert control.returncode == 1 and "@rpath/libxmacdep.dylib => not found" in control.stdout
    out = tmp_path / "venv"
    assert rpathfix("venv", str(out), *roots).returncode == 0
    ext = next(out.glob("lib/python*/site-packages/macstub/_native.cpython-311-darwin.so"))
    assert not ext.is_symlink()
    ldd = rpathfix("ldd", "--json", str(ext))
    assert ldd.returncode == 0, ldd.stdout
    rows = {r["name"]: r for r in json.loads(ldd.stdout)["libraries"]}
    assert rows["@rpath/libxmacdep.dylib"]["found_via"] == "rpath"


def test_symlinked_directory_would_break_the_climb(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    """The control for the planner's choice: link torchstub/ as one directory and ld.so fails."""
    roots = unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink"),
                   tmp_path / "roots")
    out = tmp_path / "venv"
    assert rpathfix("venv", str(out), *roots).returncode == 0
    site = next(out.glob("lib/python*/site-packages"))
    lib = site / "torchstub" / "lib" / "libxtorch_cuda.so"
    assert rpathfix("ldd", str(lib)).returncode == 0
    real = subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout
    assert "not found" not in real
    # Replace the real torchstub/ by one directory symlink: both our model and ld.so now fail.
    import shutil

    shutil.rmtree(site / "torchstub")
    (site / "torchstub").symlink_to(Path(roots[-1]) / "site-packages" / "torchstub")
    assert rpathfix("ldd", str(lib)).returncode == 1
    assert "libxcudart.so.13 => not found" in subprocess.run(["ldd", str(lib)], capture_output=True, text=True).stdout


@pytest.mark.parametrize("mode", ["symlink", "hardlink"])
def test_roots_made_of_symlinks(stub_wheels: dict[str, Path], tmp_path: Path, mode: str) -> None:
    """Bazel's sandbox shows each input file as an absolute symlink: the planner must read the
    binaries behind them, or it would link torchstub/ as one directory and break the climb."""
    unpack(stub_wheels, ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink"),
           tmp_path / "roots")
    links = tmp_path / "sandbox"
    subprocess.run(["cp", "-rs", str(tmp_path / "roots"), str(links)], check=True)
    link_roots = sorted(str(p) for p in links.iterdir() if not p.name.startswith("."))
    assert (Path(link_roots[-1]) / "site-packages" / "torchstub" / "lib" / "libxtorch_cuda.so").is_symlink()
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *link_roots, "--link-mode", mode)
    assert proc.returncode == 0, proc.stderr
    ok = subprocess.run([str(out / "bin" / "python"), "-c", "import torchstub; print(torchstub.cuda_answer())"],
                        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert ok.stdout.strip() == "11", ok.stderr


def _run(cmd: list[str], path: Path) -> subprocess.CompletedProcess[str]:
    """Run a program as a user would: by name through PATH, LD_LIBRARY_PATH unset."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{path}:/usr/bin:/bin", "HOME": str(path)})


def test_executables_run_from_the_venv_as_from_pip(edge_wheels: dict[str, Path], tmp_path: Path) -> None:
    """Issue 10 item 2: toolx/bin/xtool climbs $ORIGIN/../../nvidia/cux/lib, and the
    .data/scripts program xscript reaches $ORIGIN/../lib/pythonX.Y/site-packages/toolx/lib.
    The kernel gives a program the $ORIGIN of its resolved path (LOADERS.md rule 18): both
    must be real files in the venv, as pip installs them."""
    import sys

    roots = unpack(edge_wheels, ("toolx", "nvidia_xcux"), tmp_path / "roots")
    # The behaviour to match: uv installs the wheels into a venv, where both programs run.
    pipv = tmp_path / "pipv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(pipv)], check=True)
    uv = subprocess.run([sys.executable, "-m", "uv", "pip", "install", "--python", str(pipv / "bin" / "python"),
                         "--no-index", "--find-links", str(edge_wheels["toolx"].parent), "--cache-dir",
                         str(tmp_path / "uv-cache"), "toolx"], capture_output=True, text=True, timeout=300)
    assert uv.returncode == 0, uv.stderr
    assert _run(["xscript"], pipv / "bin").stdout == "xscript: 1\n"
    assert _run(["xtool-run"], pipv / "bin").stdout == "xtool: 1\n"

    methods = {(e["kind"], e["venv_path"]): e["method"] for e in plan_json(roots)["entries"]}
    assert methods[("site-packages", "toolx/bin/xtool")] == "copy"
    assert methods[("bin", "xscript")] == "copy"
    assert methods[("site-packages", "toolx/lib")] == "symlink"
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *roots)
    assert proc.returncode == 0, proc.stderr
    xtool = next(out.glob("lib/python*/site-packages/toolx/bin/xtool"))
    for cmd, expect in ((["xscript"], "xscript: 1\n"), (["xtool-run"], "xtool: 1\n"), ([str(xtool)], "xtool: 1\n")):
        ran = _run(cmd, out / "bin")
        assert (ran.returncode, ran.stdout) == (0, expect), ran.stderr
    assert rpathfix("verify", str(out)).returncode == 0

    # The control: the programs linked into their roots, as the planner placed them before.
    # They fail to start, and verify, which runs them by their resolved path, says so.
    (out / "bin" / "xscript").unlink()
    (out / "bin" / "xscript").symlink_to(Path(roots[1]) / "bin" / "xscript")
    xtool.unlink()
    xtool.symlink_to(Path(roots[1]) / "site-packages" / "toolx" / "bin" / "xtool")
    for cmd in (["xscript"], ["xtool-run"]):
        ran = _run(cmd, out / "bin")
        assert ran.returncode != 0 and "cannot open shared object file" in ran.stderr, ran
    doc = json.loads(rpathfix("verify", "--json", str(out)).stdout)
    assert {(Path(e["file"]).name, e["name"]) for e in doc["errors"]} == {
        ("xscript", "libxtoolx.so"), ("xtool", "libxcux.so.1")}


def test_the_check_before_writing_runs_executables(edge_wheels: dict[str, Path], tmp_path: Path) -> None:
    """A program that cannot find a library the environment holds, in any layout (no
    RUNPATH at all), makes `venv` refuse, as a module would; a program needing what nothing
    here provides (a system library) is a warning."""
    roots = unpack(edge_wheels, ("nvidia_xcux",), tmp_path / "roots")
    lib = Path(roots[0]) / "site-packages" / "nvidia" / "cux" / "lib"
    site = tmp_path / "roots" / "norunpath" / "site-packages"
    (site / "norunpath" / "bin").mkdir(parents=True)
    (site / "norunpath-1.0.dist-info").mkdir()
    (site / "norunpath-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: norunpath\nVersion: 1.0\n")
    src = tmp_path / "main.c"
    src.write_text('#include <stdio.h>\nint stub_libxcux(void);\nint main(void) { printf("%d\\n", stub_libxcux()); }\n')
    exe = site / "norunpath" / "bin" / "xnorunpath"
    subprocess.run(["gcc", "-o", str(exe), str(src), f"-L{lib}", "-l:libxcux.so.1"], check=True)
    ran = subprocess.run([str(exe)], capture_output=True, text=True)
    assert "libxcux.so.1: cannot open shared object file" in ran.stderr
    out = tmp_path / "venv"
    refused = rpathfix("venv", str(out), str(tmp_path / "roots" / "norunpath"), *roots)
    assert refused.returncode == 1 and not out.exists()
    assert "executable xnorunpath will not start: libxcux.so.1 not found" in refused.stdout + refused.stderr
    # Without nvidia-xcux nothing here provides the library: the machine's business, a warning.
    alone = rpathfix("venv", str(out), str(tmp_path / "roots" / "norunpath"))
    assert alone.returncode == 0, alone.stderr
    assert "[missing-library]" in alone.stderr and "xnorunpath" in alone.stderr


def test_macho_files_sharing_a_directory_with_another_wheel(tmp_path: Path) -> None:
    """Issue 10 item 4: two wheels install into one directory macx/; macxa's extension has
    LC_RPATH @loader_path and needs macxb's @rpath/libxb.dylib. No `..` climbs, but dyld
    takes @loader_path from the real path (LOADERS.md rule 31): through a link it looks in
    macxa's root, which holds no libxb.dylib. The extension must be a copy."""
    from conftest import zig_available, zig_cc

    if not zig_available():
        pytest.skip("Mach-O test binaries need zig")
    work = tmp_path / "build"
    work.mkdir()
    (work / "xb.c").write_text("int stub_xb(void) { return 2; }\n")
    (work / "xa.c").write_text("int stub_xb(void);\nvoid *PyInit__xa(void) { stub_xb(); return 0; }\n")
    zig_cc(work, "aarch64-macos", "-shared", "-o", "libxb.dylib", "xb.c", "-Wl,-install_name,@rpath/libxb.dylib")
    ext = "_xa.cpython-311-darwin.so"
    zig_cc(work, "aarch64-macos", "-shared", "-o", ext, "xa.c", "-L.", "-lxb", "-Wl,-rpath,@loader_path",
           "-Wl,-undefined,dynamic_lookup")
    roots = []
    for dist, name in (("macxa", ext), ("macxb", "libxb.dylib")):
        site = tmp_path / "roots" / dist / "site-packages"
        (site / "macx").mkdir(parents=True)
        (site / "macx" / name).write_bytes((work / name).read_bytes())
        (site / f"{dist}-1.0.dist-info").mkdir()
        (site / f"{dist}-1.0.dist-info" / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        roots.append(str(site.parent))
    methods = {e["venv_path"]: e["method"] for e in plan_json(roots)["entries"]}
    assert methods[f"macx/{ext}"] == "copy"
    assert methods["macx/libxb.dylib"] == "symlink"  # dyld opens it by the path that reaches it
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *roots)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    placed = next(out.glob(f"lib/python*/site-packages/macx/{ext}"))
    assert not placed.is_symlink()
    assert rpathfix("verify", str(out)).returncode == 0
    # The control: the extension linked into its root, as the planner placed it before.
    placed.unlink()
    placed.symlink_to(Path(roots[0]) / "site-packages" / "macx" / ext)
    doc = json.loads(rpathfix("verify", "--json", str(out)).stdout)
    assert [(Path(e["file"]).name, e["name"]) for e in doc["errors"]] == [(ext, "@rpath/libxb.dylib")]
