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
