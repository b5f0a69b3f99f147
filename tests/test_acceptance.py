"""The whole story on real stub wheels, a real interpreter and the real loader: `rpathfix
unpack` makes one root per wheel (rules_python's layout), the split layout fails (the
control), `rpathfix venv` writes the per-binary venv, and the same things work through it
with LD_LIBRARY_PATH unset."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import rpathfix

LINUX = ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink", "nvidia_xcublas_cu12",
         "nvidia_xcuda_runtime_cu12", "nvidia_xnvimgcodec_cu12", "onnxstub", "pthstub", "scriptstub")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


ASSUME = ("--assume-loaded", "onnxstub")


@pytest.fixture(scope="module")
def roots(stub_wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    into = tmp_path_factory.mktemp("roots")
    proc = rpathfix("unpack", *[str(stub_wheels[d]) for d in LINUX], "--into", str(into))
    assert proc.returncode == 0, proc.stderr
    return sorted(p for p in into.iterdir() if not p.name.startswith("."))


@pytest.fixture(scope="module")
def venv(roots: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("venv-parent") / "venv"
    # onnxstub's CUDA provider cannot reach the cu12 libraries by itself (the venv check would
    # refuse, naming --repair): here, as onnxruntime does, the package loads them first.
    proc = rpathfix("venv", str(out), *map(str, roots), *ASSUME)
    assert proc.returncode == 0, proc.stderr
    return out


def split_python(roots: list[Path], code: str) -> subprocess.CompletedProcess[str]:
    path = ":".join(str(r / "site-packages") for r in roots)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=path))


def venv_python(venv: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv / "bin" / "python"), *args, "-c", code], capture_output=True, text=True,
                          env=clean_env())


MAPS = """
import torchstub
print('answer', torchstub.cuda_answer())
for line in open('/proc/self/maps'):
    parts = line.split()
    if len(parts) >= 6 and 'libx' in parts[5]:
        print('map', parts[5])
"""


def test_torch_like_extension(roots: list[Path], venv: Path) -> None:
    split = split_python(roots, "import torchstub")
    assert split.returncode != 0 and "cannot open shared object file" in split.stderr  # control
    ok = venv_python(venv, MAPS)
    assert ok.returncode == 0, ok.stderr
    assert "answer 11" in ok.stdout
    maps = [ln[4:] for ln in ok.stdout.splitlines() if ln.startswith("map ")]
    assert {Path(m).name for m in maps} >= {"libxtorch_cuda.so", "libxcudart.so.13", "libxcublas.so.13",
                                             "libxnvjitlink.so.13"}
    # The kernel reports the real files (symlink targets) in the roots; every one reached through the venv.
    root_dirs = [str(r) for r in roots]
    assert all(any(m.startswith(r) for r in root_dirs) for m in maps), maps


def test_directories_are_real_only_where_needed(venv: Path) -> None:
    site = next((venv / "lib").glob("python*/site-packages"))
    assert not (site / "torchstub").is_symlink() and not (site / "torchstub" / "lib").is_symlink()
    assert not (site / "nvidia" / "cu13" / "lib").is_symlink()
    assert (site / "onnxstub").is_symlink(), "nothing climbs out of onnxstub: one symlink suffices"
    for p in venv.rglob("*"):
        if p.is_symlink() and p.parent.name != "bin":
            assert not os.readlink(p).startswith("/"), p


def test_namespace_package_with_mixed_init_files(roots: list[Path], venv: Path) -> None:
    code = "from nvidia import nvimgcodec; print(nvimgcodec.Decoder())"
    split = split_python(roots, code)
    assert split.returncode != 0  # control: an empty nvidia/__init__.py first on sys.path hides the others
    ok = venv_python(venv, code)
    assert ok.returncode == 0 and "decoder-1" in ok.stdout, ok.stderr


def test_pth_files_run(venv: Path) -> None:
    ok = venv_python(venv, "import os, pthstub_extra_mod; print(os.environ.get('PTHSTUB_HOOK_RAN'), "
                           "pthstub_extra_mod.VALUE)")
    assert ok.returncode == 0 and ok.stdout.strip() == "1 added by a .pth path line", ok.stderr
    # Control: the .pth does nothing on PYTHONPATH (site only runs .pth files of site dirs).
    assert venv_python(venv, "import os; print(os.environ.get('PTHSTUB_HOOK_RAN'))", "-S").stdout.strip() == "None"


def test_console_scripts_run_from_anywhere(venv: Path, tmp_path: Path) -> None:
    out = subprocess.run([str(venv / "bin" / "torchstubrun")], capture_output=True, text=True, env=clean_env(),
                         cwd=tmp_path)
    assert out.returncode == 0 and "cuda_answer() = 11" in out.stdout, out.stderr
    out = subprocess.run(["scriptstub"], capture_output=True, text=True,
                         env=clean_env(PATH=f"{venv / 'bin'}:/usr/bin:/bin"), cwd=tmp_path)
    assert out.stdout.strip() == "scriptstub main", out.stderr
    out = subprocess.run([str(venv / "bin" / "scriptstub-tool")], capture_output=True, text=True, env=clean_env())
    assert out.stdout.strip() == "scriptstub-tool ran", out.stderr


def test_renamed_venv_still_works(venv: Path) -> None:
    """Launchers find their interpreter by their own path, and links are relative: a copy
    beside the original (same distance to the roots) works without rewriting anything."""
    assert all(not os.readlink(p).startswith("/") for p in venv.rglob("*") if p.is_symlink() and p.name != "python")
    renamed = venv.with_name("venv-renamed")
    shutil.copytree(venv, renamed, symlinks=True)
    try:
        out = subprocess.run([str(renamed / "bin" / "torchstubrun")], capture_output=True, text=True, env=clean_env())
        assert out.returncode == 0 and "cuda_answer() = 11" in out.stdout, out.stderr
        prefix = subprocess.run([str(renamed / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                                capture_output=True, text=True, env=clean_env()).stdout.strip()
        assert prefix == str(renamed)
    finally:
        shutil.rmtree(renamed)


def test_bytecode_from_the_roots_is_used(venv: Path) -> None:
    out = venv_python(venv, "import torchstub", "-v")
    assert out.returncode == 0
    assert "__pycache__/__init__.cpython" in out.stderr and "code object from" in out.stderr
    line = next(ln for ln in out.stderr.splitlines() if "code object from" in ln and "torchstub" in ln)
    assert ".pyc" in line


def test_verify_reports_the_onnx_provider(venv: Path) -> None:
    proc = rpathfix("verify", "--json", str(venv))
    assert proc.returncode == 0
    import json

    warnings = json.loads(proc.stdout)["warnings"]
    assert any(Path(w["file"]).name == "libxonnxruntime_providers_cuda.so" for w in warnings)
    # And the real interpreter agrees: the provider does not load by itself.
    real = venv_python(venv, "import onnxstub; onnxstub.load_cuda_provider()")
    assert real.returncode != 0 and "libxcublas.so.12" in real.stderr


def listing(top: Path) -> list[tuple[str, str, str]]:
    rows = []
    for p in sorted(top.rglob("*")):
        rel = str(p.relative_to(top))
        if p.is_symlink():
            rows.append((rel, "link", os.readlink(p)))
        elif p.is_dir():
            rows.append((rel, "dir", oct(p.stat().st_mode & 0o777)))
        else:
            rows.append((rel, oct(p.stat().st_mode & 0o777), hashlib.sha256(p.read_bytes()).hexdigest()))
    return rows


def test_idempotent_and_deterministic(roots: list[Path], venv: Path, tmp_path: Path) -> None:
    before = listing(venv)
    mtime = venv.stat().st_mtime_ns
    again = rpathfix("venv", "-v", str(venv), *map(str, roots), *ASSUME)
    assert again.returncode == 0 and "up to date" in again.stdout
    assert venv.stat().st_mtime_ns == mtime and listing(venv) == before
    other = venv.with_name("venv-second")  # same distance to the roots: identical relative links
    assert rpathfix("venv", str(other), *map(str, roots), *ASSUME).returncode == 0
    assert [r for r in listing(other) if "__pycache__" not in r[0]] == \
        [r for r in listing(venv) if "__pycache__" not in r[0]]
    shutil.rmtree(other)


def test_refuses_a_layout_that_cannot_load(roots: list[Path], tmp_path: Path) -> None:
    torch_only = [r for r in roots if r.name == "torchstub"]
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *map(str, torch_only))
    assert proc.returncode == 1 and "libxcudart.so.13" in proc.stderr
    assert not out.exists(), "nothing is written when verification fails"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".venv")] == []  # nor left beside it
    deeper = tmp_path / "new-parent" / "venv"
    assert rpathfix("venv", str(deeper), *map(str, torch_only)).returncode == 1
    assert not deeper.parent.exists()  # not even OUT's parent
    # An existing venv is left exactly as it was.
    good = rpathfix("venv", str(out), *map(str, roots), *ASSUME)
    assert good.returncode == 0, good.stderr
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    again = rpathfix("venv", str(out), *map(str, torch_only))
    assert again.returncode == 1
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".venv")] == []


def test_refuses_to_replace_a_directory_that_is_not_a_venv(roots: list[Path], tmp_path: Path) -> None:
    keep = tmp_path / "important"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    proc = rpathfix("venv", str(keep), *map(str, roots))
    assert proc.returncode == 2 and "was not written by rpathfix" in proc.stderr and proc.stderr.count("\n") == 1
    assert (keep / "notes.txt").read_text() == "mine"


def _wheel_with_data(tmp: Path, dist: str, config: str) -> Path:
    import zipfile

    from test_unpack import make_wheel

    data = f"{dist}-1.0.data"
    extra = [
        (zipfile.ZipInfo(f"{data}/data/lib/pkgconfig/{dist}.pc"), f"Name: {dist}\n".encode()),
        (zipfile.ZipInfo(f"{data}/data/bin/{dist}-data-tool"), b"data, not a script\n"),
        (zipfile.ZipInfo(f"{data}/data/include/{dist}_data.h"), b"#define DATA 1\n"),
        (zipfile.ZipInfo(f"{data}/data/share/{dist}/notes.txt"), b"notes\n"),
        (zipfile.ZipInfo(f"{data}/headers/config.h"), f"#define WHO \"{config}\"\n".encode()),
    ]
    tmp.mkdir(parents=True, exist_ok=True)
    return make_wheel(tmp, dist=dist, extra=extra)


def test_data_and_headers_land_where_pip_puts_them(tmp_path: Path) -> None:
    """.data/data goes under the venv's prefix, merged into its own lib/, bin/ and include/
    (data/lib/pkgconfig/x.pc made `venv` fail with "lib is written twice"), and each
    wheel's .data/headers under include/site/pythonX.Y/<dist>/ (two wheels shipping
    config.h were refused as a conflict). The reference is pip itself: the same wheels
    installed by pip into a venv give the same files at the same places, and the venv
    still imports from its site-packages."""
    wheels = [_wheel_with_data(tmp_path / "wheels", d, d) for d in ("xdataone", "xdatatwo")]
    into = tmp_path / "roots"
    assert rpathfix("unpack", *map(str, wheels), "--into", str(into)).returncode == 0
    out = tmp_path / "venv"
    proc = rpathfix("venv", str(out), *[str(into / d) for d in ("xdataone", "xdatatwo")])
    assert proc.returncode == 0, proc.stderr
    pip_venv = tmp_path / "pipvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(pip_venv)], check=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(pip_venv / "bin" / "python"), "install",
                          "-q", "--no-index", "--no-deps", "--no-compile", *map(str, wheels)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr

    def placed(top: Path) -> dict[str, bytes]:
        """Every file the wheels' .data put under the prefix, by path relative to it."""
        names = ("xdataone", "xdatatwo", "config.h")
        out = {}
        for d, _dirs, files in os.walk(top, followlinks=True):
            for n in files:
                p = Path(d, n)
                # (lib64 is `python -m venv`'s alias of lib, which rpathfix's venv does not make)
                if any(x in n for x in names) and not {"site-packages", "lib64"} & set(p.parts):
                    out[str(p.relative_to(top))] = p.read_bytes()
        return out

    want = placed(pip_venv)
    v = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert want[f"include/site/python{v}/xdataone/config.h"] == b'#define WHO "xdataone"\n'  # pip's scheme
    assert "lib/pkgconfig/xdataone.pc" in want and "bin/xdataone-data-tool" in want
    assert placed(out) == want
    ok = subprocess.run([str(out / "bin" / "python"), "-c", "import xdataone, xdatatwo; print(xdataone.VALUE)"],
                        capture_output=True, text=True, env=clean_env())
    assert ok.stdout == "1\n", ok.stderr


def test_no_verify_says_what_it_did_not_check(roots: list[Path], tmp_path: Path) -> None:
    """--no-verify writes a layout the check refuses, and says on stderr how many
    extension modules it did not check (before, it said nothing). The control: without
    it, the same layout is refused."""
    torch_only = [str(r) for r in roots if r.name == "torchstub"]
    refused = rpathfix("venv", str(tmp_path / "checked"), *torch_only)
    assert refused.returncode == 1  # the control
    proc = rpathfix("venv", str(tmp_path / "unchecked"), *torch_only, "--no-verify")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "not checked" in ln]
    assert lines == [f"rpathfix venv: --no-verify: not checked: 1 extension module(s) (whether they load; "
                     f"`rpathfix verify {tmp_path / 'unchecked'}` checks them)"]


CUBLAS_EXT = """#define PY_SSIZE_T_CLEAN
#include <Python.h>
int stub_libxcublas(void);
static PyObject *answer(PyObject *self, PyObject *args) { return PyLong_FromLong(stub_libxcublas()); }
static PyMethodDef methods[] = {{"answer", answer, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "cupystub._cublas", NULL, -1, methods};
PyMODINIT_FUNC PyInit__cublas(void) { return PyModule_Create(&def); }
"""

CUPY_INIT = """import ctypes, os, nvidia
# What cupy does through cuda-pathfinder: find the wheel's library and load it first.
lib = os.path.join(nvidia.__path__[0], "xcublas", "lib")
ctypes.CDLL(os.path.join(lib, "libxcublasLt.so.12"), mode=ctypes.RTLD_GLOBAL)
ctypes.CDLL(os.path.join(lib, "libxcublas.so.12"), mode=ctypes.RTLD_GLOBAL)
from cupystub import _cublas
"""


def _cupy_like_root(top: Path, cublas_lib: Path) -> Path:
    """cupystub/_cublas needs libxcublas.so.12 with no RPATH: cupystub preloads it."""
    import sysconfig

    root = top / "cupystub"
    pkg = root / "site-packages" / "cupystub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(CUPY_INIT)
    (pkg / "_cublas.c").write_text(CUBLAS_EXT)
    ext = pkg / ("_cublas" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(["gcc", "-shared", "-fPIC", f"-I{sysconfig.get_paths()['include']}", "-o", str(ext),
                    str(pkg / "_cublas.c"), f"-L{cublas_lib}", "-Wl,--no-as-needed", "-l:libxcublas.so.12"],
                   check=True)
    (pkg / "_cublas.c").unlink()
    return root


def test_assume_loaded_reaches_the_loader_check(roots: list[Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Each --assume-loaded NAME is handed to the loader check (LoaderOptions.assume_loaded)."""
    import rpathfix.verify as verify
    from rpathfix.cli import main

    seen: list[tuple[str, ...]] = []
    real = verify.check_environment

    def spy(tree, env, options, **kw):  # type: ignore[no-untyped-def]
        seen.append(options.assume_loaded)
        return real(tree, env, options, **kw)

    monkeypatch.setattr(verify, "check_environment", spy)
    code = main(["venv", str(tmp_path / "v"), *map(str, roots), "--assume-loaded", "libxcublas.so.12",
                 "--assume-loaded", "nvidia-xcublas-cu12", *ASSUME])
    assert code == 0 and seen == [("libxcublas.so.12", "nvidia-xcublas-cu12", "onnxstub")]


def test_assume_loaded_accepts_a_package_that_preloads_its_libraries(roots: list[Path], tmp_path: Path) -> None:
    """A cupy-like extension module needs libxcublas.so.12 and has no RPATH: its package
    preloads the library from the nvidia wheel. `venv` refuses it (the control), and
    accepts it with --assume-loaded naming the library or its distribution, showing a
    warning; the real interpreter imports it from the written venv."""
    cublas = next(r for r in roots if r.name == "nvidia-xcublas-cu12")
    cupy = _cupy_like_root(tmp_path / "extra", cublas / "site-packages" / "nvidia" / "xcublas" / "lib")
    use = [str(cupy), str(cublas), *[str(r) for r in roots if r.name == "nvidia-xcuda-runtime-cu12"]]
    refused = rpathfix("venv", str(tmp_path / "refused"), *use)
    assert refused.returncode == 1 and "libxcublas.so.12" in refused.stderr  # the control
    for name in ("libxcublas.so.12", "nvidia-xcublas-cu12"):
        out = tmp_path / f"venv-{name}"
        proc = rpathfix("venv", str(out), *use, "--assume-loaded", name)
        assert proc.returncode == 0, proc.stderr
        assert "loaded by the package at run time" in proc.stderr
        ok = venv_python(out, "import cupystub; print(cupystub._cublas.answer())")
        assert ok.returncode == 0 and ok.stdout.strip() == "2", ok.stderr
