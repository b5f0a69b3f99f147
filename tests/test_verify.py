"""`rpathfix verify`, `ldd` and `why` through the real CLI, on the stub wheels in the split
per-wheel layout (the control: torch-like imports fail) and merged into one site-packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import rpathfix

CU13 = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink")


def merged(stub_tree: Path, dest: Path, dists: tuple[str, ...]) -> Path:
    for d in dists:
        shutil.copytree(stub_tree / d, dest, dirs_exist_ok=True)
    return dest


def test_split_layout_reports_the_torch_extension(stub_tree: Path) -> None:
    roots = [str(stub_tree / d) for d in (*CU13, "onnxstub")]
    proc = rpathfix("verify", "--json", *roots)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "rpathfix.verify/1"
    errs = {(Path(e["file"]).name.split(".")[0], e["name"]) for e in doc["errors"]}
    assert ("_C", "libxcublas.so.13") in errs and ("_C", "libxcudart.so.13") in errs
    e = next(e for e in doc["errors"] if e["name"] == "libxcudart.so.13")
    assert set(e) == {"file", "name", "code", "message", "trace"} and e["code"] == "missing-library"
    assert any(t["entry"] == "$ORIGIN/../../nvidia/cu13/lib" for t in e["trace"])
    assert "nvidia_xcuda_runtime" in e["message"], "say which file in view provides it"
    # And the real interpreter agrees: the import fails in the split layout.
    env = {"PYTHONPATH": ":".join(roots), "PATH": "/usr/bin:/bin"}
    real = subprocess.run([sys.executable, "-c", "import torchstub"], capture_output=True, text=True, env=env)
    assert real.returncode != 0 and "cannot open shared object file" in real.stderr


def test_merged_site_packages_has_no_errors(stub_tree: Path, tmp_path: Path) -> None:
    site = merged(stub_tree, tmp_path / "site-packages", (*CU13, "onnxstub", "nvidia_xcublas_cu12",
                                                         "nvidia_xcuda_runtime_cu12"))
    proc = rpathfix("verify", "--json", str(site))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 0, doc["errors"]
    warned = {(Path(w["file"]).name, w["code"], w["name"]) for w in doc["warnings"]}
    # The onnxruntime-like provider has no rpath at all: a layout cannot fix that.
    assert ("libxonnxruntime_providers_cuda.so", "load-order", "libxcublas.so.12") in warned
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    real = subprocess.run([sys.executable, "-c", "import torchstub; print(torchstub.cuda_answer())"],
                          capture_output=True, text=True, env=env)
    assert real.returncode == 0, real.stderr


def test_shadowed_and_duplicate_sonames(stub_tree: Path, tmp_path: Path) -> None:
    site = merged(stub_tree, tmp_path / "site", ("cudart_shadow",))
    src = tmp_path / "ext.c"
    src.write_text("void *PyInit_shadowext(void) { return 0; }\n")
    shadow_dir = site / "nvidia" / "cu13" / "lib"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(site / "shadowext.so"), str(src), "-Wl,--no-as-needed",
                    f"-L{shadow_dir}", "-l:libcudart.so.13", "-l:libcuda.so.1" if False else "-lc"], check=True)
    copy = site / "other" / "libcudart.so.13"
    copy.parent.mkdir()
    copy.write_bytes(b"\x7fELF" + (shadow_dir / "libcudart.so.13").read_bytes()[4:] + b"\0")
    doc = json.loads(rpathfix("verify", "--json", str(site)).stdout)
    codes = {(w["code"], w["name"]) for w in doc["warnings"]}
    assert ("duplicate-soname", "libcudart.so.13") in codes
    from rpathfix.ldcache import load_cache

    cache = load_cache()
    if cache is None or cache.lookup("libcudart.so.13", "x86_64", 64) is None:
        pytest.skip("this machine's ld.so.cache has no libcudart.so.13")
    assert ("shadowed", "libcudart.so.13") in codes


def test_driver_libraries_are_not_missing(tmp_path: Path) -> None:
    # A stand-in libcuda.so.1 to link against, then removed: at run time the driver provides it.
    drv = tmp_path / "drv"
    drv.mkdir()
    (drv / "c.c").write_text("int cuInit(int f) { return f; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(drv / "libcuda.so.1"), str(drv / "c.c"),
                    "-Wl,-soname,libcuda.so.1"], check=True)
    site = tmp_path / "site"
    site.mkdir()
    (site / "e.c").write_text("int cuInit(int); void *PyInit_gpuext(void) { cuInit(0); return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(site / "gpuext.so"), str(site / "e.c"),
                    f"-L{drv}", "-l:libcuda.so.1"], check=True)
    shutil.rmtree(drv)
    proc = rpathfix("verify", str(site))
    assert proc.returncode == 0, proc.stdout
    ldd = rpathfix("ldd", str(site / "gpuext.so"))
    assert "libcuda.so.1 => provided by the GPU driver" in ldd.stdout and ldd.returncode == 0


def test_ldd_json_and_exit_codes(stub_tree: Path, tmp_path: Path) -> None:
    lib = stub_tree / "torchstub" / "torchstub" / "lib" / "libxtorch_cuda.so"
    proc = rpathfix("ldd", "--json", str(lib))
    assert proc.returncode == 1
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "rpathfix.ldd/1" and doc["root"] == str(lib)
    rows = {r["name"]: r for r in doc["libraries"]}
    assert rows["libxcudart.so.13"]["path"] is None and rows["libxtorch_cpu.so"]["found_via"] == "rpath"
    assert rows["libxc10.so"]["found_via"] == "runpath" and rows["libxc10.so"]["needed_by"].endswith("libxtorch_cpu.so")
    site = merged(stub_tree, tmp_path / "site-packages", CU13)
    ok = rpathfix("ldd", str(site / "torchstub" / "lib" / "libxtorch_cuda.so"))
    assert ok.returncode == 0 and "not found" not in ok.stdout
    (tmp_path / "notelf.so").write_text("hello")
    bad = rpathfix("ldd", str(tmp_path / "notelf.so"))
    assert bad.returncode == 2 and "notelf.so" in bad.stderr and "Traceback" not in bad.stderr
    assert rpathfix("ldd", str(tmp_path / "nope.so")).returncode == 2


def test_ldd_of_a_macho_extension(stub_tree: Path) -> None:
    if not (stub_tree / "macstub").exists():
        pytest.skip("Mach-O stubs need zig")
    site = stub_tree / "macstub"
    ext = site / "macstub" / "_native.cpython-311-darwin.so"
    doc = json.loads(rpathfix("ldd", "--json", str(ext)).stdout)
    rows = {r["name"]: r for r in doc["libraries"]}
    assert rows["@rpath/libxmacstub.dylib"]["found_via"] == "rpath"
    assert rows["/usr/lib/libSystem.B.dylib"]["found_via"] == "shared_cache"
    assert rows["@rpath/libxmacdep.dylib"]["path"] is None  # macdep is another wheel: split layout


def test_why_explains_and_names_the_providing_wheel(stub_tree: Path) -> None:
    lib = stub_tree / "torchstub" / "torchstub" / "lib" / "libxtorch_cuda.so"
    proc = rpathfix("why", str(lib), "libxcudart.so.13", "--view", str(stub_tree))
    assert proc.returncode == 1
    out = proc.stdout
    assert "rpath of libxtorch_cuda.so '$ORIGIN/../../nvidia/cu13/lib'" in out
    assert "NOT FOUND" in out
    assert "nvidia-xcuda-runtime 13.0.96" in out
    found = rpathfix("why", str(lib), "libxtorch_cpu.so")
    assert found.returncode == 0 and "via rpath" in found.stdout


def test_verify_bad_input() -> None:
    proc = rpathfix("verify", "/nonexistent/dir")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "/nonexistent/dir" in proc.stderr


def test_assume_loaded_turns_a_preloaded_library_into_a_warning(stub_wheels: dict[str, Path],
                                                                 edge_wheels: dict[str, Path], tmp_path: Path) -> None:
    """Issue 10 item 13: cupystub's extension module has no RPATH by design; the package
    loads libxcublas.so.12 by path before importing it (cupy through cuda-pathfinder)."""
    roots = tmp_path / "roots"
    unpacked = rpathfix("unpack", str(edge_wheels["cupystub"]), str(stub_wheels["nvidia_xcublas_cu12"]),
                        "--into", str(roots))
    assert unpacked.returncode == 0, unpacked.stderr
    split = [str(roots / "cupystub"), str(roots / "nvidia-xcublas-cu12")]
    # The real interpreter: the package imports (it preloads), the module alone does not.
    env = {"PYTHONPATH": ":".join(f"{r}/site-packages" for r in split), "PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-c", "import cupystub; print(cupystub.answer())"],
                        capture_output=True, text=True, env=env)
    assert ok.stdout == "2\n", ok.stderr
    ext = next((roots / "cupystub" / "site-packages" / "cupystub" / "_libs").glob("xblas*.so"))
    bare = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(ext)!r})"],
                          capture_output=True, text=True, env=env)
    assert "libxcublas.so.12: cannot open shared object file" in bare.stderr

    # The control: without --assume-loaded the module is an error.
    plain = rpathfix("verify", "--json", *split)
    assert plain.returncode == 1
    assert [(e["code"], e["name"]) for e in json.loads(plain.stdout)["errors"]] == [
        ("missing-library", "libxcublas.so.12")]
    # A library's file name, the module's distribution, or the provider's distribution covers it.
    for name in ("libxcublas.so.12", "cupystub", "CupyStub", "nvidia_xcublas_cu12"):
        proc = rpathfix("verify", "--json", "--assume-loaded", name, *split)
        assert proc.returncode == 0, (name, proc.stdout)
        warned = [(w["code"], w["name"], w["message"]) for w in json.loads(proc.stdout)["warnings"]]
        assert [(c, n) for c, n, _ in warned] == [("assumed-loaded", "libxcublas.so.12")]
        assert f"loaded by the package at run time (--assume-loaded {name})" in warned[0][2]
    # A name that covers nothing changes nothing.
    other = rpathfix("verify", "--assume-loaded", "libxother.so.1", "--assume-loaded", "torchstub", *split)
    assert other.returncode == 1 and "[assumed-loaded]" not in other.stdout


def test_identical_copies_of_one_soname_are_not_a_conflict(tmp_path: Path) -> None:
    """Issue 10 item 14: numpy.libs and scipy.libs vendor byte-identical libgfortran copies."""
    build = tmp_path / "build"
    build.mkdir()
    (build / "g.c").write_text("int stub_gfortran(void) { return 5; }\n")
    soname = "libxgfortran-040039e1.so.5.0.0"

    def compile_lib(out: Path, answer: int = 5, extra: str = "") -> None:
        (build / "g2.c").write_text(f"int stub_gfortran(void) {{ return {answer}; }}\n{extra}")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(out), str(build / "g2.c"), f"-Wl,-soname,{soname}"],
                       check=True)

    site = tmp_path / "site"
    for pkg in ("numpyx", "scipyx"):
        (site / f"{pkg}.libs").mkdir(parents=True)
        (site / pkg).mkdir()
        compile_lib(site / f"{pkg}.libs" / soname)
        (site / pkg / "m.c").write_text(f"int stub_gfortran(void);\nvoid *PyInit__{pkg}(void) {{ stub_gfortran(); return 0; }}\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(site / pkg / f"_{pkg}.so"), str(site / pkg / "m.c"),
                        f"-L{site / f'{pkg}.libs'}", f"-l:{soname}", "-Wl,--disable-new-dtags",
                        f"-Wl,-rpath,$ORIGIN/../{pkg}.libs"], check=True)
    a, b = (site / f"{p}.libs" / soname for p in ("numpyx", "scipyx"))
    assert a.read_bytes() == b.read_bytes()
    doc = json.loads(rpathfix("verify", "--json", str(site)).stdout)
    assert doc["errors"] == [] and doc["warnings"] == [], doc
    # The controls: two different files with that SONAME still warn, whether their sizes
    # differ or only their bytes do (then the digest tells them apart).
    for answer, extra in ((5, "int other(void) { return 6; }\n"), (7, "")):
        compile_lib(b, answer, extra)
        assert (a.stat().st_size == b.stat().st_size) == (answer == 7)
        doc = json.loads(rpathfix("verify", "--json", str(site)).stdout)
        assert [(w["code"], w["name"]) for w in doc["warnings"]] == [("duplicate-soname", soname)]
        assert "provided by 2 different files" in doc["warnings"][0]["message"]
    # A third copy, identical to the first: three files, two contents.
    (site / "third.libs").mkdir()
    (site / "third.libs" / soname).write_bytes(a.read_bytes())
    doc = json.loads(rpathfix("verify", "--json", str(site)).stdout)
    assert "provided by 3 files with 2 different contents" in doc["warnings"][0]["message"]
