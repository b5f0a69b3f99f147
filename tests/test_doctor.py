"""`rpathfix doctor` (and verify's grouped report): each finding on stub wheels or gcc-built
libraries, each with its control, and the real interpreter asked whether the import works.

Libraries built here are named libx* so that nothing collides with this machine's
ld.so.cache (which holds a real libcudart.so.13 from /usr/local/cuda-13.0).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import rpathfix

CU13 = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink")
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
EXT_C = """
#include <Python.h>
{protos}
static PyObject *answer(PyObject *self, PyObject *args) {{ return PyLong_FromLong({calls}); }}
static PyMethodDef methods[] = {{{{"answer", answer, METH_NOARGS, ""}}, {{0}}}};
static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{name}", 0, -1, methods}};
PyMODINIT_FUNC PyInit_{name}(void) {{ return PyModule_Create(&def); }}
"""


# ---------------------------------------------------------------- building blocks


def gcc_lib(out: Path, soname: str, needs: tuple[Path, ...] = (), *, rpath: str | None = None,
            runpath: str | None = None, symbol: str | None = None) -> Path:
    """A shared library exporting x_<symbol>() that calls its dependencies' functions."""
    out.parent.mkdir(parents=True, exist_ok=True)
    sym = symbol or soname.split(".so")[0].replace("-", "_")
    deps = [d.name.split(".so")[0].replace("-", "_") for d in needs]
    src = out.with_suffix(out.suffix + ".c")
    src.write_text("".join(f"int x_{d}(void);\n" for d in deps)
                   + f"int x_{sym}(void) {{ return 1{''.join(f' + x_{d}()' for d in deps)}; }}\n")
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(out), str(src), f"-Wl,-soname,{soname}", "-Wl,--no-as-needed"]
    for d in needs:
        cmd += [f"-L{d.parent}", f"-l:{d.name}"]
    if rpath is not None:
        cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
    if runpath is not None:
        cmd += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
    subprocess.run(cmd, check=True)
    src.unlink()
    return out


def gcc_ext(pkg_dir: Path, name: str, needs: tuple[Path, ...] = (), *, rpath: str | None = None) -> Path:
    """A real CPython extension module pkg_dir/<name><EXT_SUFFIX> whose answer() calls its libraries."""
    pkg_dir.mkdir(parents=True, exist_ok=True)
    deps = [d.name.split(".so")[0].replace("-", "_") for d in needs]
    src = pkg_dir / f"{name}.c"
    src.write_text(EXT_C.format(protos="".join(f"int x_{d}(void);\n" for d in deps),
                                calls=" + ".join([f"x_{d}()" for d in deps] or ["0"]), name=name))
    out = pkg_dir / f"{name}{EXT_SUFFIX}"
    cmd = ["gcc", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-o", str(out), str(src),
           "-Wl,--no-as-needed"]
    for d in needs:
        cmd += [f"-L{d.parent}", f"-l:{d.name}"]
    if rpath is not None:
        cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
    subprocess.run(cmd, check=True)
    src.unlink()
    return out


def root(top: Path, dist: str, version: str) -> Path:
    """A distribution root (one wheel per directory): its site-packages, with a dist-info."""
    site = top / dist / "site-packages"
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return site


def python_env(pythonpath: list[Path] | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "VIRTUAL_ENV", "NO_COLOR")}
    if pythonpath is not None:
        env["PYTHONPATH"] = ":".join(map(str, pythonpath))
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str], python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def doctor(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    proc = rpathfix("doctor", "--json", *args, env=env, cwd=cwd)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["schema"] == "rpathfix.doctor/1"
    return proc.returncode, doc


def codes(doc: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    """code -> the finding (the first of that code)."""
    out: dict[str, dict] = {}  # type: ignore[type-arg]
    for f in doc["findings"]:
        out.setdefault(f["code"], f)
    return out


def names(finding: dict) -> set[str]:  # type: ignore[type-arg]
    return {p["name"] for p in finding["problems"]}


# ---------------------------------------------------------------- split layout


def test_split_layout_says_venv_and_the_fix_runs(stub_tree: Path, tmp_path: Path) -> None:
    roots = [str(stub_tree / d) for d in CU13]
    code, doc = doctor(*roots, cwd=tmp_path)
    assert code == 1
    f = next(f for f in doc["findings"] if f["code"] == "split-layout" and f["dist"] == "torchstub")
    assert f["severity"] == "error" and names(f) == {"libxcublas.so.13", "libxcudart.so.13"}
    assert {p["provider_dist"] for p in f["problems"]} == {"nvidia-xcublas 13.1.0.3", "nvidia-xcuda-runtime 13.0.96"}
    assert f["fix"].startswith("rpathfix venv venv ")
    # The command is runnable as printed (from the directory doctor ran in) ...
    made = subprocess.run(f["fix"].replace("rpathfix", f"{sys.executable} -m rpathfix", 1), shell=True,
                          cwd=tmp_path, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    # ... and fixes it: the real import works there, and doctor has nothing left to say about it.
    ok = run_python("import torchstub; print(torchstub.cuda_answer())", python_env(),
                    str(tmp_path / "venv" / "bin" / "python"))
    assert ok.returncode == 0, ok.stderr
    after_code, after = doctor(str(tmp_path / "venv"))
    assert after_code == 0 and "split-layout" not in codes(after)
    # Control: the real interpreter fails the same way in the split layout.
    bad = run_python("import torchstub", python_env([Path(r) for r in roots]))
    assert bad.returncode != 0 and "libxcublas.so.13" in bad.stderr


def test_python_mode_reads_the_interpreters_sys_path(stub_tree: Path, tmp_path: Path) -> None:
    sites = [stub_tree / d for d in CU13]
    code, doc = doctor("--python", sys.executable, env=python_env(sites), cwd=tmp_path)
    assert code == 1
    assert doc["python"]["executable"] == sys.executable and doc["python"]["glibc"].startswith("glibc ")
    assert all(str(s) in doc["paths"] for s in sites)
    f = codes(doc)["split-layout"]
    assert f["fix"].startswith("rpathfix venv venv ") and f"--python {sys.executable}" in f["fix"]
    # VIRTUAL_ENV names the default interpreter; the control is that without PYTHONPATH nothing is split.
    venv = tmp_path / "v"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code, doc = doctor(env=python_env(sites, VIRTUAL_ENV=str(venv)), cwd=tmp_path)
    assert doc["python"]["python"] == str(venv / "bin" / "python") and code == 1
    code, doc = doctor(env=python_env(None, VIRTUAL_ENV=str(venv)), cwd=tmp_path)
    assert "split-layout" not in codes(doc)


# The torch-like story of the stub wheels: torch, its CUDA 13 wheels, the CUDA 12 wheels and
# the onnxruntime-like package that needs them, a .pth and a scripts wheel.
TORCH_LIKE = (*CU13, "nvidia_xcublas_cu12", "nvidia_xcuda_runtime_cu12", "nvidia_xnvimgcodec_cu12", "onnxstub",
              "pthstub", "scriptstub")


def test_verify_is_grouped_and_short(stub_tree: Path, tmp_path: Path) -> None:
    roots = [str(stub_tree / d) for d in TORCH_LIKE]
    proc = rpathfix("verify", *roots, cwd=tmp_path, env=python_env())
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert len(lines) <= 25, proc.stdout
    assert "2 libraries that torchstub needs are in other wheels, not on its RPATH" in proc.stdout
    assert "nvidia-xcublas-cu12 ships a regular package that hides" in proc.stdout
    assert "libxcudart.so.13 (nvidia-xcuda-runtime 13.0.96)" in proc.stdout
    assert sum(1 for ln in lines if ln.startswith("fix: rpathfix venv venv ")) == 1
    assert str(stub_tree) + "/torchstub/torchstub" not in proc.stdout  # paths relative to the directories
    assert "\033[" not in proc.stdout and "tried " not in proc.stdout
    explained = rpathfix("verify", "--explain", *roots, cwd=tmp_path)
    assert "tried torchstub/lib/../../nvidia/cu13/lib/libxcudart.so.13" in explained.stdout
    assert len(explained.stdout.splitlines()) > len(lines)
    # The JSON keeps one entry per file and name, as before.
    doc = json.loads(rpathfix("verify", "--json", *roots).stdout)
    assert doc["schema"] == "rpathfix.verify/1" and len(doc["errors"]) >= 3


# ---------------------------------------------------------------- no path to a provider, LD_LIBRARY_PATH


def _onnx_site(stub_tree: Path, dest: Path) -> Path:
    for d in ("onnxstub", "nvidia_xcublas_cu12", "nvidia_xcuda_runtime_cu12"):
        shutil.copytree(stub_tree / d, dest, dirs_exist_ok=True)
    return dest


def test_provider_without_a_path_says_repair(stub_tree: Path, tmp_path: Path) -> None:
    site = _onnx_site(stub_tree, tmp_path / "site-packages")
    code, doc = doctor(str(site))
    f = codes(doc)["no-path-to-provider"]
    assert code == 0 and f["severity"] == "warning" and f["dist"] == "onnxstub"
    assert names(f) == {"libxcublas.so.12", "libxcudart.so.12"}
    assert f["fix"].startswith("pip download onnxstub==1.23.0 --no-deps -d wheels && rpathfix repair "
                               "wheels/onnxstub-1.23.0-*.whl --with ")
    # Control: the provider really does not load by itself.
    lib = site / "onnxstub" / "capi" / "libxonnxruntime_providers_cuda.so"
    bad = run_python(f"import ctypes; ctypes.CDLL({str(lib)!r})", python_env())
    assert bad.returncode != 0 and "libxcublas.so.12" in bad.stderr


def test_loads_only_because_of_ld_library_path(stub_tree: Path, tmp_path: Path) -> None:
    sites = [stub_tree / d for d in CU13]
    llp = ":".join(str(stub_tree / d / "nvidia" / "cu13" / "lib")
                   for d in ("nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink"))
    code, doc = doctor("--python", sys.executable, env=python_env(sites, LD_LIBRARY_PATH=llp), cwd=tmp_path)
    found = codes(doc)
    assert code == 0 and doc["ld_library_path"] == llp
    f = found["needs-ld-library-path"]
    assert f["severity"] == "warning" and "libxcudart.so.13" in names(f)
    assert f["fix"].startswith("rpathfix venv ") and "split-layout" not in found  # the cause's fix
    real = run_python("import torchstub; print(torchstub.cuda_answer())", python_env(sites, LD_LIBRARY_PATH=llp))
    assert real.returncode == 0, real.stderr
    # Control: without it, it is an error, and the real import fails.
    code, doc = doctor("--python", sys.executable, env=python_env(sites), cwd=tmp_path)
    assert code == 1 and "needs-ld-library-path" not in codes(doc)


# ---------------------------------------------------------------- preloads


def _preload_layout(top: Path, *, preload_code: bool) -> list[Path]:
    """xprestub's extension needs libxpre.so (no RPATH), which nvidia-xpre ships; with
    preload_code its __init__.py loads it by hand first, as torch does for CUDA."""
    lib_site = root(top, "nvidia-xpre", "1.0")
    lib = gcc_lib(lib_site / "nvidia" / "xpre" / "lib" / "libxpre.so", "libxpre.so")
    ext_site = root(top, "xprestub", "2.0")
    gcc_ext(ext_site / "xprestub", "_xpre", (lib,))
    preload = ("import ctypes, os, sys\n"
               "for _p in sys.path:\n"
               "    _lib = os.path.join(_p, 'nvidia', 'xpre', 'lib', 'libxpre.so')\n"
               "    if os.path.exists(_lib):\n"
               "        ctypes.CDLL(_lib, mode=ctypes.RTLD_GLOBAL)\n"
               "        break\n") if preload_code else ""
    (ext_site / "xprestub" / "__init__.py").write_text(preload + "from xprestub._xpre import answer\n")
    return [ext_site, lib_site]


def test_loads_only_because_python_code_preloads(tmp_path: Path) -> None:
    sites = _preload_layout(tmp_path / "with", preload_code=True)
    assert run_python("import xprestub; print(xprestub.answer())", python_env(sites)).returncode == 0
    code, doc = doctor(*map(str, sites))
    f = codes(doc)["preloaded-by-python"]
    assert code == 0 and f["severity"] == "warning" and names(f) == {"libxpre.so"}
    assert "xprestub/__init__.py:3" in f["problems"][0]["detail"]  # where it names the library
    # Control: the same package without the preload fails for real, and doctor says error.
    sites = _preload_layout(tmp_path / "without", preload_code=False)
    assert run_python("import xprestub", python_env(sites)).returncode != 0
    code, doc = doctor(*map(str, sites))
    assert code == 1 and "preloaded-by-python" not in codes(doc)
    assert codes(doc)["no-path-to-provider"]["severity"] == "error"


def test_loads_only_because_of_ld_preload(tmp_path: Path) -> None:
    sites = _preload_layout(tmp_path, preload_code=False)
    lib = sites[1] / "nvidia" / "xpre" / "lib" / "libxpre.so"
    env = python_env(sites, LD_PRELOAD=str(lib))
    assert run_python("import xprestub; print(xprestub.answer())", env).returncode == 0
    code, doc = doctor("--python", sys.executable, env=env, cwd=tmp_path)
    assert code == 0 and codes(doc)["needs-ld-preload"]["severity"] == "warning"
    code, doc = doctor("--python", sys.executable, env=python_env(sites), cwd=tmp_path)  # control
    assert code == 1 and "needs-ld-preload" not in codes(doc)


# ---------------------------------------------------------------- RUNPATH is not transitive


def _runpath_layout(top: Path, *, runpath: bool) -> Path:
    site = root(top, "xrun", "1.0")
    deps = site / "xrun" / "lib" / "deps"
    c = gcc_lib(deps / "libxrpc.so", "libxrpc.so")
    b = gcc_lib(deps / "libxrpb.so", "libxrpb.so", (c,))  # no path of its own: relies on its loader's
    kw = {"runpath": "$ORIGIN/deps"} if runpath else {"rpath": "$ORIGIN/deps"}
    a = gcc_lib(site / "xrun" / "lib" / "libxrpa.so", "libxrpa.so", (b,), **kw)
    gcc_ext(site / "xrun", "_ext", (a,), rpath="$ORIGIN/lib")
    (site / "xrun" / "__init__.py").write_text("from xrun._ext import answer\n")
    return site


def test_dependency_found_only_through_a_parents_runpath(tmp_path: Path) -> None:
    site = _runpath_layout(tmp_path / "runpath", runpath=True)
    real = run_python("import xrun", python_env([site]))
    assert real.returncode != 0 and "libxrpc.so" in real.stderr
    code, doc = doctor(str(site))
    f = codes(doc)["runpath-not-transitive"]
    assert code == 1 and f["severity"] == "error" and names(f) == {"libxrpc.so"}
    assert "rpathfix repair" in f["fix"]
    # Control: with DT_RPATH (inherited) the same layout loads, and doctor finds nothing.
    site = _runpath_layout(tmp_path / "rpath", runpath=False)
    assert run_python("import xrun; print(xrun.answer())", python_env([site])).returncode == 0
    code, doc = doctor(str(site))
    assert code == 0 and doc["errors"] == 0 and "runpath-not-transitive" not in codes(doc)


# ---------------------------------------------------------------- system copies, duplicates, CUDA


def _ld_cache(top: Path, libdir: Path) -> Path:
    """top/etc/ld.so.cache listing libdir (and the trusted directories), made by ldconfig."""
    (top / "etc").mkdir(parents=True, exist_ok=True)
    conf = top / "ld.so.conf"
    conf.write_text(f"{libdir}\n")
    subprocess.run(["ldconfig", "-C", str(top / "etc" / "ld.so.cache"), "-f", str(conf)], check=True,
                   capture_output=True)
    return top


def test_system_copy_shadows_the_wheels_with_both_versions(tmp_path: Path) -> None:
    system = tmp_path / "system"
    gcc_lib(system / "libxshadow.so.1.2.3", "libxshadow.so.1")
    cache_root = _ld_cache(tmp_path / "sysroot", system)
    site = root(tmp_path / "roots", "xshadow", "1.5.0")
    own = gcc_lib(site / "xshadow" / "lib" / "libxshadow.so.1", "libxshadow.so.1")
    gcc_ext(site / "xshadow", "_ext", (own,), rpath="$ORIGIN/../nvidia/lib")  # misses its own copy
    code, doc = doctor(str(site), "--cache-root", str(cache_root))
    f = codes(doc)["shadowed"]
    detail = f["problems"][0]["detail"]
    assert code == 0 and f["severity"] == "warning"
    assert "1.2.3" in detail and "xshadow 1.5.0" in detail and str(system) in detail
    # Control: without that cache nothing shadows it, and the module does not load at all.
    code, doc = doctor(str(site), "--no-cache")
    assert code == 1 and "shadowed" not in codes(doc)


def test_two_files_one_soname(tmp_path: Path) -> None:
    a = root(tmp_path / "roots", "xdupa", "1.0")
    b = root(tmp_path / "roots", "xdupb", "1.0")
    gcc_lib(a / "xdupa" / "libxdup.so.1", "libxdup.so.1", symbol="one")
    gcc_lib(b / "xdupb" / "libxdup.so.1", "libxdup.so.1", symbol="two")
    code, doc = doctor(str(a), str(b))
    f = codes(doc)["duplicate-soname"]
    assert code == 0 and names(f) == {"libxdup.so.1"} and len(f["subjects"]) == 2
    code, doc = doctor(str(a))  # control
    assert "duplicate-soname" not in codes(doc)


def test_cuda_12_and_13_wheels_together(stub_tree: Path) -> None:
    mixed = [str(stub_tree / d) for d in ("nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xcuda_runtime_cu12")]
    _, doc = doctor(*mixed)
    f = codes(doc)["cuda-mixed"]
    details = " ".join(p["detail"] for p in f["problems"])
    assert names(f) == {"CUDA 12", "CUDA 13"} and "nvidia-xcuda-runtime-cu12 12.8.90" in details
    _, doc = doctor(*mixed[:2])  # control
    assert "cuda-mixed" not in codes(doc)


def test_no_gpu_driver_on_this_host(tmp_path: Path) -> None:
    from rpathfix.ldcache import load_cache

    host = load_cache()
    if host is not None and host.lookup("libcuda.so.1", "x86_64", 64) is not None:
        pytest.skip("this host has a GPU driver")
    drv = tmp_path / "driver"
    stand_in = gcc_lib(drv / "libcuda.so.1", "libcuda.so.1", symbol="cuInit")
    site = root(tmp_path / "roots", "xgpu", "1.0")
    gcc_ext(site / "xgpu", "_ext", (stand_in,))
    code, doc = doctor(str(site))
    f = codes(doc)["no-gpu-driver"]
    assert code == 0 and f["severity"] == "warning" and names(f) == {"libcuda.so.1"}
    assert "not an rpath problem" in f["explanation"]
    code, doc = doctor(str(site), "--cache-root", str(_ld_cache(tmp_path / "gpuhost", drv)))  # control
    assert "no-gpu-driver" not in codes(doc)


# ---------------------------------------------------------------- Python's view: namespaces, .pth


def test_regular_package_hides_the_namespace(stub_tree: Path, tmp_path: Path) -> None:
    split = [stub_tree / d for d in ("nvidia_xcublas_cu12", "nvidia_xcuda_runtime_cu12")]
    real = run_python("import nvidia.xcuda_runtime", python_env(split))
    assert real.returncode != 0 and "No module named 'nvidia.xcuda_runtime'" in real.stderr
    proc = rpathfix("verify", "--json", *map(str, split))
    assert proc.returncode == 1  # verify said 0 errors here before
    err = next(e for e in json.loads(proc.stdout)["errors"] if e["code"] == "namespace-shadowed")
    assert err["name"] == "nvidia.xcuda_runtime" and err["file"].endswith("nvidia_xcublas_cu12/nvidia/__init__.py")
    human = rpathfix("verify", *map(str, split)).stdout
    assert "nvidia-xcublas-cu12 ships a regular package that hides 1 package of other wheels" in human
    code, doc = doctor(*map(str, split))
    assert code == 1 and codes(doc)["namespace-shadowed"]["fix"].startswith("rpathfix venv ")
    # Controls: a pkgutil shim first on sys.path joins the portions (what rules_python writes) ...
    shim = [stub_tree / d for d in ("nvidia_xnvimgcodec_cu12", "nvidia_xcuda_runtime_cu12")]
    assert run_python("import nvidia.xcuda_runtime", python_env(shim)).returncode == 0
    assert rpathfix("verify", *map(str, shim)).returncode == 0
    # ... and one site-packages has one nvidia/ directory.
    merged = tmp_path / "site-packages"
    for d in split:
        shutil.copytree(d, merged, dirs_exist_ok=True)
    assert run_python("import nvidia.xcuda_runtime", python_env([merged])).returncode == 0
    assert rpathfix("verify", str(merged)).returncode == 0


def test_pth_files_outside_site_directories(stub_tree: Path, tmp_path: Path) -> None:
    split = [stub_tree / d for d in ("pthstub", "scriptstub")]
    real = run_python("import os; print(os.environ.get('PTHSTUB_HOOK_RAN'))",
                      python_env(split))
    assert real.stdout.strip() == "None"
    code, doc = doctor(*map(str, split))
    f = codes(doc)["pth-not-run"]
    assert code == 0 and names(f) == {"pthstub.pth"} and "pthstub_hook" in f["problems"][0]["detail"]
    # Control: in a site directory it runs, and doctor is quiet about it.
    venv = tmp_path / "venv"
    assert rpathfix("venv", str(venv), *map(str, split)).returncode == 0
    ran = run_python("import os; print(os.environ.get('PTHSTUB_HOOK_RAN'))", python_env(),
                     str(venv / "bin" / "python"))
    assert ran.stdout.strip() == "1"
    code, doc = doctor("--python", str(venv / "bin" / "python"), env=python_env(), cwd=tmp_path)
    assert code == 0 and "pth-not-run" not in codes(doc)


# ---------------------------------------------------------------- output, exit codes


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    for args in (["--python", str(tmp_path / "nope")], [str(tmp_path / "nope")], ["--cache-root", "/nonexistent"]):
        proc = rpathfix("doctor", *args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, args


def test_colour_only_on_a_terminal_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from rpathfix.report import use_color

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty())  # type: ignore[arg-type]
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())  # type: ignore[arg-type]
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not use_color(Tty())  # type: ignore[arg-type]


def test_colour_on_a_real_terminal(stub_tree: Path) -> None:
    """A pty as stdout: escapes appear, and NO_COLOR removes them."""
    import pty

    def through_pty(env: dict[str, str]) -> bytes:
        main, sub = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "rpathfix", "verify", str(stub_tree / "torchstub"),
                                 str(stub_tree / "nvidia_xcublas")], stdout=sub, stderr=subprocess.DEVNULL, env=env)
        os.close(sub)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        proc.wait(timeout=60)
        os.close(main)
        return b"".join(chunks)

    assert b"\033[1;31merror\033[0m" in through_pty(python_env(TERM="xterm"))
    assert b"\033[" not in through_pty(python_env(TERM="xterm", NO_COLOR="1"))


# ---------------------------------------------------------------- symbol binding (from the symbol-binding work)


def test_symbol_findings_group_by_code() -> None:
    """version-not-found and undefined-symbol (verify's codes once it binds symbols) group and
    read like the others; an unknown code still groups, with a generic sentence."""
    from rpathfix.findings import Problem, group

    probs = [Problem("version-not-found", "error", "/s/torch/_C.so", "torch", "2.0", "GLIBC_2.99 (libc.so.6)"),
             Problem("version-not-found", "error", "/s/torch/lib/a.so", "torch", "2.0", "GLIBCXX_3.4.40"),
             Problem("undefined-symbol", "error", "/s/torch/_C.so", "torch", "2.0", "cuInitX"),
             Problem("some-future-code", "warning", "/s/x.so", "x", "1", "thing")]
    found = {f.code: f for f in group(probs)}
    assert found["version-not-found"].explanation.startswith("2 symbol versions that torch needs are not provided")
    assert found["undefined-symbol"].explanation == "1 symbol that torch needs is defined by no library it loads"
    assert found["some-future-code"].explanation == "1 problem of kind some-future-code in x"


def test_symbol_version_end_to_end(tmp_path: Path) -> None:
    """A module built against a library version the installed copy does not have: the real
    import fails naming the version, and doctor says version-not-found."""
    site = root(tmp_path / "roots", "xsym", "1.0")
    lib_dir = site / "xsym" / "lib"
    lib_dir.mkdir(parents=True)
    (tmp_path / "v2.map").write_text("XSYM_2.0 { global: x_libxsym; local: *; };\n")
    (tmp_path / "v1.map").write_text("XSYM_1.0 { global: x_libxsym; local: *; };\n")
    (tmp_path / "s.c").write_text("int x_libxsym(void) { return 1; }\n")
    build = ["gcc", "-shared", "-fPIC", "-Wl,-soname,libxsym.so", str(tmp_path / "s.c")]
    subprocess.run([*build, f"-Wl,--version-script={tmp_path / 'v2.map'}", "-o", str(tmp_path / "libxsym.so")],
                   check=True)
    gcc_ext(site / "xsym", "_ext", (tmp_path / "libxsym.so",), rpath="$ORIGIN/lib")
    subprocess.run([*build, f"-Wl,--version-script={tmp_path / 'v1.map'}", "-o", str(lib_dir / "libxsym.so")],
                   check=True)
    real = run_python("import xsym._ext", python_env([site]))
    assert real.returncode != 0 and "XSYM_2.0" in real.stderr
    code, doc = doctor(str(site))
    assert code == 1 and "XSYM_2.0" in json.dumps(codes(doc)["version-not-found"])
    # The control: the copy it was built against loads, and doctor finds nothing of the kind.
    (lib_dir / "libxsym.so").write_bytes((tmp_path / "libxsym.so").read_bytes())
    assert run_python("import xsym._ext", python_env([site])).returncode == 0
    code, doc = doctor(str(site))
    assert "version-not-found" not in codes(doc)


# ---------------------------------------------------------------- venv, plan, unpack: one voice, quiet success


def test_venv_check_and_verify_count_and_say_the_same(stub_tree: Path, tmp_path: Path) -> None:
    roots = [str(stub_tree / d) for d in ("torchstub", "nvidia_xcublas", "nvidia_xnvjitlink")]  # no cudart
    out = tmp_path / "venv"
    refused = rpathfix("venv", str(out), *roots)
    assert refused.returncode == 1 and not out.exists()
    assert rpathfix("venv", "--no-verify", str(out), *roots).returncode == 0
    verified = rpathfix("verify", str(out))
    assert verified.returncode == 1

    def files(text: str) -> str:
        first = text.splitlines()[0]
        return first[first.index(" in ") + 4:first.index(" in 1 directory")]

    assert files(refused.stderr) == files(verified.stdout)  # e.g. "11 native files (1 extension module)"
    entry = "  error [missing-library] 1 library that torchstub needs is in no wheel of this environment"
    assert entry in refused.stderr and entry in verified.stdout


def _climbing_root(top: Path) -> Path:
    site = root(top, "xclimb", "1.0")
    for n in ("a", "b", "c"):
        gcc_lib(site / "xclimb" / "lib" / f"libxclimb{n}.so", f"libxclimb{n}.so", rpath="$ORIGIN/../../../outside")
    return site


def test_plan_notes_once_per_case_and_quiet_success(stub_tree: Path, tmp_path: Path) -> None:
    site = _climbing_root(tmp_path / "roots")
    roots = [str(site), str(stub_tree / "scriptstub")]
    quiet = rpathfix("plan", *roots)
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout  # the plan is the answer
    verbose = rpathfix("plan", "-v", *roots)
    notes = [ln for ln in verbose.stderr.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "3 files of xclimb" in notes[0] and "'../../../outside'" in notes[0]
    assert "fails only if a library is found nowhere else" in notes[0]
    venv = rpathfix("venv", str(tmp_path / "venv"), *roots)
    assert venv.returncode == 0 and venv.stdout == "" and venv.stderr == ""  # quiet success
    again = rpathfix("venv", "-v", str(tmp_path / "venv"), *roots)
    assert "nothing fails because of it" in again.stderr and again.stdout.startswith("up to date: ")


def test_unpack_progress_only_on_a_terminal(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    import pty

    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "rpathfix", "unpack", str(stub_wheels["scriptstub"]),
                             "--into", str(tmp_path / "a")], stdout=subprocess.PIPE, stderr=sub)
    os.close(sub)
    seen = b""
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        seen += data
    out, _ = proc.communicate(timeout=120)
    os.close(main)
    assert proc.returncode == 0 and out == b"" and b"unpacking 1/1: scriptstub" in seen
    piped = rpathfix("unpack", str(stub_wheels["scriptstub"]), "--into", str(tmp_path / "b"))  # control
    assert piped.returncode == 0 and piped.stderr == "" and piped.stdout == ""
