#!/usr/bin/env python3
"""Build small but real wheels that mimic the layouts of the torch / nvidia CUDA stack.

Every library is compiled here with gcc (ELF) or zig (Mach-O), so the loader sees real
DT_NEEDED, DT_RPATH, DT_RUNPATH, LC_RPATH and install names. Library names carry an
"x" (libxcudart, libxtorch_cuda) so nothing collides with this machine's ld.so.cache
(/usr/local/cuda-13.0/lib is in it): a test that wants a collision builds the
cudart-shadow wheel, which ships the real SONAME libcudart.so.13.

Wheels are deterministic (fixed timestamps, sorted members) so a rebuild from the
same compiler gives the same bytes. The layouts, and why each exists:

  nvidia-xcublas-cu12, nvidia-xcuda-runtime-cu12, nvidia-xnvimgcodec-cu12
      CUDA 12 style: one wheel per component under nvidia/<component>/lib, each with its
      own nvidia/__init__.py (empty, or the pkgutil extend_path shim that
      nvidia-nvimgcodec-cu12 ships).
  nvidia-xcuda-runtime, nvidia-xcublas, nvidia-xnvjitlink
      CUDA 13 style: all install into the one directory nvidia/cu13/lib, no __init__.py;
      libxcublas needs libxcudart from another wheel; libxcublasLt has no rpath and needs
      libxnvjitlink, found only through the requester chain.
  torchstub
      torch-like: torchstub/_C (extension) -> lib/libxtorch_python.so whose DT_RPATH is
      $ORIGIN/../../nvidia/cu13/lib:$ORIGIN (climbs out of the wheel), libxtorch_cpu.so
      with DT_RUNPATH instead, a console script.
  onnxstub
      onnxruntime-like: the CUDA provider library has no rpath at all and needs the cu12
      libraries (today users set LD_LIBRARY_PATH).
  onnxgpustub
      onnxruntime-gpu 1.31-like (CUDA 13): the provider has no rpath and needs libxcublasLt,
      libxcublas and libxcudart from the cu13 wheels; its `cuda` extra requires only
      nvidia-xcuda-runtime, not nvidia-xcublas (as the real one). What `rpathfix repair` fixes.
  pthstub
      a .pth file that must run at start-up and one that adds a directory.
  scriptstub
      console and gui scripts, .data/scripts, .data/headers and .data/data.
  cudart-shadow
      ships libcudart.so.13 (the real SONAME) to test the ld.so.cache collision.
  macstub, macdep (Mach-O, built with zig when available)
      @rpath install names, @loader_path LC_RPATHs that cross wheels, a fat library.

A second set, "edge" (build.py --set edge), holds layouts found in review where `verify`
said yes and the program failed; tests build it into a directory of its own, so the
demo and the tests that take every stub wheel keep their set:

  nvidia-xcux, toolx
      ELF executables. toolx/bin/xtool has DT_RUNPATH $ORIGIN/../../nvidia/cux/lib (it
      climbs to another wheel, like a CUDA tool); the .data/scripts program xscript has
      $ORIGIN/../lib/pythonX.Y/site-packages/toolx/lib (it works only where pip puts
      scripts, in the venv's own bin/). The kernel takes an executable's $ORIGIN from its
      resolved path (LOADERS.md rule 18), so neither runs through a symlink into its root.
      A console script, xtool-run, execs toolx/bin/xtool as cmake's and ninja's do.
  cupystub
      cupy-like: the extension module cupystub/_libs/xblas has no RPATH and needs
      libxcublas.so.12 (nvidia-xcublas-cu12 of the first set), which the package loads
      itself by path before importing the module.

Usage: build.py --out DIR [--set edge]   (prints the wheel paths; reuses a build whose inputs match)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE / "src"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
LINUX_TAG = "linux_x86_64"


@dataclass
class Lib:
    """One shared library: its file name, SONAME, what it links and how it searches."""

    name: str  # file name in the wheel, e.g. libxcublas.so.13
    needs: list[str] = field(default_factory=list)  # file names of other Libs
    rpath: str | None = None  # DT_RPATH
    runpath: str | None = None  # DT_RUNPATH
    soname: str | None = None  # defaults to name

    @property
    def symbol(self) -> str:
        return symbol_for(self.name)


def symbol_for(file_name: str) -> str:
    """The one function a stub library exports: stub_<stem> (libxcublas.so.13 -> stub_libxcublas)."""
    stem = file_name.split(".so")[0].split(".dylib")[0]
    return "stub_" + stem.replace("-", "_")


@dataclass
class Wheel:
    name: str
    version: str
    tag: str
    files: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # arcname -> (data, mode)
    entry_points: str | None = None
    requires: list[str] = field(default_factory=list)  # Requires-Dist values (markers allowed)
    extras: list[str] = field(default_factory=list)  # Provides-Extra

    @property
    def dist(self) -> str:
        return self.name.replace("-", "_")

    @property
    def filename(self) -> str:
        return f"{self.dist}-{self.version}-{self.tag}.whl"


def run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"build.py: command failed: {' '.join(cmd)}\n{proc.stderr}")


def lib_source(lib: Lib) -> str:
    """C for one stub library: its function returns 1 plus the sum of its dependencies'."""
    deps = [symbol_for(n) for n in lib.needs]
    protos = "".join(f"int {d}(void);\n" for d in deps)
    body = " + ".join([f"{d}()" for d in deps] + ["1"])
    return f"{protos}int {lib.symbol}(void) {{ return {body}; }}\n"


def build_elf_libs(libs: list[Lib], work: Path) -> dict[str, bytes]:
    """Compile libs in dependency order; returns file name -> bytes."""
    out: dict[str, bytes] = {}
    work.mkdir(parents=True, exist_ok=True)
    for lib in libs:  # listed in dependency order
        c = work / (lib.symbol + ".c")
        c.write_text(lib_source(lib))
        cmd = ["gcc", "-shared", "-fPIC", "-O1", "-o", lib.name, c.name, f"-Wl,-soname,{lib.soname or lib.name}",
               "-Wl,--no-as-needed", "-L."]
        cmd += [f"-l:{n}" for n in lib.needs]
        if lib.rpath is not None:
            cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{lib.rpath}"]
        if lib.runpath is not None:
            cmd += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{lib.runpath}"]
        run(cmd, work)
        out[lib.name] = (work / lib.name).read_bytes()
    return out


def build_extension(source: str, module: str, needs: list[str], rpath: str | None, work: Path) -> tuple[str, bytes]:
    """A real CPython extension module for the running interpreter."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    include = sysconfig.get_paths()["include"]
    fname = module + suffix
    cmd = ["gcc", "-shared", "-fPIC", "-O1", f"-I{include}", "-o", fname, str(SRC / source),
           "-Wl,--no-as-needed", "-L."] + [f"-l:{n}" for n in needs]
    if rpath is not None:
        cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
    run(cmd, work)
    return fname, (work / fname).read_bytes()


def py_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


# --------------------------------------------------------------------------- wheels


def text(s: str) -> tuple[bytes, int]:
    return (s.encode(), 0o644)


def binary(b: bytes) -> tuple[bytes, int]:
    return (b, 0o755)


def nvidia_cu12(work: Path) -> list[Wheel]:
    blas = [
        Lib("libxcublasLt.so.12", rpath="$ORIGIN"),
        Lib("libxcublas.so.12", needs=["libxcublasLt.so.12"], rpath="$ORIGIN"),
    ]
    cudart = [Lib("libxcudart.so.12", rpath="$ORIGIN")]
    codec = [Lib("libxnvimgcodec.so.0", rpath="$ORIGIN")]
    b = build_elf_libs(blas, work / "cu12-blas")
    r = build_elf_libs(cudart, work / "cu12-rt")
    c = build_elf_libs(codec, work / "cu12-codec")
    pkgutil_shim = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
    w1 = Wheel("nvidia-xcublas-cu12", "12.8.4.1", f"py3-none-{LINUX_TAG}")
    w1.files = {"nvidia/__init__.py": text(""), "nvidia/xcublas/__init__.py": text(""),
                "nvidia/xcublas/include/xcublas.h": text("int stub_libxcublas(void);\n")}
    w1.files.update({f"nvidia/xcublas/lib/{k}": binary(v) for k, v in b.items()})
    w2 = Wheel("nvidia-xcuda-runtime-cu12", "12.8.90", f"py3-none-{LINUX_TAG}")
    w2.files = {"nvidia/__init__.py": text(""), "nvidia/xcuda_runtime/__init__.py": text("")}
    w2.files.update({f"nvidia/xcuda_runtime/lib/{k}": binary(v) for k, v in r.items()})
    w3 = Wheel("nvidia-xnvimgcodec-cu12", "0.6.0.32", f"py3-none-{LINUX_TAG}")
    w3.files = {
        "nvidia/__init__.py": text(pkgutil_shim),
        "nvidia/nvimgcodec/__init__.py": text(
            "import ctypes, os\n"
            "_lib = ctypes.CDLL(os.path.join(os.path.dirname(__file__), 'lib', 'libxnvimgcodec.so.0'))\n\n"
            "def Decoder() -> str:\n    return 'decoder-%d' % _lib.stub_libxnvimgcodec()\n"),
    }
    w3.files.update({f"nvidia/nvimgcodec/lib/{k}": binary(v) for k, v in c.items()})
    return [w1, w2, w3]


def nvidia_cu13(work: Path) -> list[Wheel]:
    """Three wheels that share nvidia/cu13/lib; built against each other in one directory."""
    libs = [
        Lib("libxcudart.so.13", rpath="$ORIGIN"),
        Lib("libxnvjitlink.so.13", rpath="$ORIGIN"),
        Lib("libxcublasLt.so.13", needs=["libxnvjitlink.so.13"]),  # no rpath: found via its requester chain
        Lib("libxcublas.so.13", needs=["libxcublasLt.so.13", "libxcudart.so.13"], rpath="$ORIGIN"),
    ]
    built = build_elf_libs(libs, work / "cu13")
    owner = {"libxcudart.so.13": 0, "libxnvjitlink.so.13": 1, "libxcublasLt.so.13": 2, "libxcublas.so.13": 2}
    wheels = [
        Wheel("nvidia-xcuda-runtime", "13.0.96", f"py3-none-{LINUX_TAG}"),
        Wheel("nvidia-xnvjitlink", "13.0.88", f"py3-none-{LINUX_TAG}"),
        Wheel("nvidia-xcublas", "13.1.0.3", f"py3-none-{LINUX_TAG}",
              requires=["nvidia-xcuda-runtime", "nvidia-xnvjitlink"]),
    ]
    for name, data in built.items():
        wheels[owner[name]].files[f"nvidia/cu13/lib/{name}"] = binary(data)
    wheels[0].files["nvidia/cu13/include/xcuda_runtime.h"] = text("int stub_libxcudart(void);\n")
    return wheels


def torchstub(work: Path) -> Wheel:
    d = work / "torch"
    d.mkdir(parents=True, exist_ok=True)
    for n in ("libxcudart.so.13", "libxcublas.so.13", "libxcublasLt.so.13", "libxnvjitlink.so.13"):
        shutil.copy(work / "cu13" / n, d / n)
    cu13 = "$ORIGIN/../../nvidia/cu13/lib:$ORIGIN"
    libs = [
        Lib("libxc10.so", rpath="$ORIGIN"),
        Lib("libxtorch_cpu.so", needs=["libxc10.so"], runpath="$ORIGIN"),
        Lib("libxtorch_cuda.so", needs=["libxtorch_cpu.so", "libxcublas.so.13", "libxcudart.so.13"], rpath=cu13),
        Lib("libxtorch_python.so", needs=["libxtorch_cuda.so", "libxtorch_cpu.so"], rpath=cu13),
    ]
    built = build_elf_libs(libs, d)
    ext_name, ext = build_extension("torchstub_C.c", "_C", ["libxtorch_python.so"], "$ORIGIN/lib", d)
    w = Wheel("torchstub", "2.14.1", f"{py_tag()}-{py_tag()}-{LINUX_TAG}",
              requires=["nvidia-xcublas==13.1.0.3", "nvidia-xcuda-runtime==13.0.96"])
    w.files = {
        "torchstub/__init__.py": text(
            '"""A torch-like package: importing it loads the CUDA stub libraries."""\n'
            "from torchstub._C import cuda_answer\n\n__all__ = ['cuda_answer']\n"),
        "torchstub/cli.py": text(
            "import torchstub\n\n\ndef main() -> None:\n"
            "    print('torchstubrun: cuda_answer() =', torchstub.cuda_answer())\n"),
        f"torchstub/{ext_name}": binary(ext),
    }
    w.files.update({f"torchstub/lib/{k}": binary(v) for k, v in built.items()})
    w.entry_points = "[console_scripts]\ntorchstubrun = torchstub.cli:main\n"
    return w


def onnxstub(work: Path) -> Wheel:
    d = work / "onnx"
    d.mkdir(parents=True, exist_ok=True)
    for n in ("libxcublas.so.12", "libxcublasLt.so.12"):
        shutil.copy(work / "cu12-blas" / n, d / n)
    shutil.copy(work / "cu12-rt" / "libxcudart.so.12", d / "libxcudart.so.12")
    libs = [
        Lib("libxonnxruntime.so.1", rpath="$ORIGIN"),
        # The provider: no rpath at all, it needs the cu12 wheels' libraries.
        Lib("libxonnxruntime_providers_cuda.so", needs=["libxcublas.so.12", "libxcudart.so.12"]),
    ]
    built = build_elf_libs(libs, d)
    ext_name, ext = build_extension("onnxstub_state.c", "_pybind_state", ["libxonnxruntime.so.1"], "$ORIGIN", d)
    w = Wheel("onnxstub", "1.23.0", f"{py_tag()}-{py_tag()}-{LINUX_TAG}")
    w.files = {
        "onnxstub/__init__.py": text(
            '"""An onnxruntime-like package whose CUDA provider is dlopen()ed by path."""\n'
            "import ctypes, os\nfrom onnxstub.capi._pybind_state import version\n\n"
            "def load_cuda_provider() -> int:\n"
            "    here = os.path.join(os.path.dirname(__file__), 'capi', 'libxonnxruntime_providers_cuda.so')\n"
            "    return ctypes.CDLL(here).stub_libxonnxruntime_providers_cuda()\n"),
        "onnxstub/capi/__init__.py": text(""),
        f"onnxstub/capi/{ext_name}": binary(ext),
    }
    w.files.update({f"onnxstub/capi/{k}": binary(v) for k, v in built.items()})
    return w


def onnxgpustub(work: Path) -> Wheel:
    d = work / "onnxgpu"
    d.mkdir(parents=True, exist_ok=True)
    for n in ("libxcublas.so.13", "libxcublasLt.so.13", "libxcudart.so.13", "libxnvjitlink.so.13"):
        shutil.copy(work / "cu13" / n, d / n)
    libs = [
        Lib("libxonnxruntime.so.1", rpath="$ORIGIN"),
        # The provider: no rpath at all; it needs the cu13 wheels' libraries.
        Lib("libxonnxruntime_providers_cuda.so", needs=["libxcublasLt.so.13", "libxcublas.so.13", "libxcudart.so.13"]),
    ]
    built = build_elf_libs(libs, d)
    ext_name, ext = build_extension("onnxstub_state.c", "_pybind_state", ["libxonnxruntime.so.1"], "$ORIGIN", d)
    w = Wheel("onnxgpustub", "1.31.1", f"{py_tag()}-{py_tag()}-{LINUX_TAG}",
              requires=['nvidia-xcuda-runtime==13.*; extra == "cuda"'], extras=["cuda"])
    w.files = {
        "onnxgpustub/__init__.py": text(
            '"""An onnxruntime-gpu-like package whose CUDA provider is dlopen()ed by path."""\n'
            "import ctypes, os\nfrom onnxgpustub.capi._pybind_state import version\n\n"
            "def load_cuda_provider() -> int:\n"
            "    here = os.path.join(os.path.dirname(__file__), 'capi', 'libxonnxruntime_providers_cuda.so')\n"
            "    return ctypes.CDLL(here).stub_libxonnxruntime_providers_cuda()\n"),
        "onnxgpustub/capi/__init__.py": text(""),
        f"onnxgpustub/capi/{ext_name}": binary(ext),
    }
    w.files.update({f"onnxgpustub/capi/{k}": binary(v) for k, v in built.items()})
    return w


def pthstub() -> Wheel:
    w = Wheel("pthstub", "0.1.0", "py3-none-any")
    w.files = {
        "pthstub_hook.py": text("import os\nos.environ['PTHSTUB_HOOK_RAN'] = '1'\n"),
        "pthstub.pth": text("import pthstub_hook\npthstub_extra\n"),
        "pthstub_extra/pthstub_extra_mod.py": text("VALUE = 'added by a .pth path line'\n"),
    }
    return w


def scriptstub() -> Wheel:
    w = Wheel("scriptstub", "1.0", "py3-none-any")
    w.files = {
        "scriptstub/__init__.py": text("def main() -> None:\n    print('scriptstub main')\n\n"
                                       "def gui() -> None:\n    print('scriptstub gui')\n"),
        "scriptstub-1.0.data/scripts/scriptstub-tool": (b"#!python\nprint('scriptstub-tool ran')\n", 0o755),
        "scriptstub-1.0.data/headers/scriptstub.h": text("#define SCRIPTSTUB 1\n"),
        "scriptstub-1.0.data/data/share/scriptstub/readme.txt": text("data file\n"),
    }
    w.entry_points = "[console_scripts]\nscriptstub = scriptstub:main\n\n[gui_scripts]\nscriptstub-gui = scriptstub:gui\n"
    return w


def cudart_shadow(work: Path) -> Wheel:
    libs = [Lib("libcudart.so.13", rpath="$ORIGIN")]
    built = build_elf_libs(libs, work / "shadow")
    w = Wheel("cudart-shadow", "13.0.0", f"py3-none-{LINUX_TAG}")
    w.files = {f"nvidia/cu13/lib/{k}": binary(v) for k, v in built.items()}
    return w


def build_executable(name: str, needs: str, runpath: str, work: Path) -> bytes:
    """A PIE executable printing stub_<needs>() (its one library), with DT_RUNPATH `runpath`."""
    cmd = ["gcc", "-O1", "-o", name, str(SRC / "xtool_main.c"), f"-DSTUB_SYMBOL={symbol_for(needs)}",
           f'-DTOOL_NAME="{name}"', "-Wl,--no-as-needed", "-L.", f"-l:{needs}",
           "-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
    run(cmd, work)
    return (work / name).read_bytes()


def toolx(work: Path) -> list[Wheel]:
    d = work / "toolx"
    d.mkdir(parents=True, exist_ok=True)
    built = build_elf_libs([Lib("libxcux.so.1", rpath="$ORIGIN"), Lib("libxtoolx.so", rpath="$ORIGIN")], d)
    py = f"python{sys.version_info.major}.{sys.version_info.minor}"
    xtool = build_executable("xtool", "libxcux.so.1", "$ORIGIN/../../nvidia/cux/lib", d)
    xscript = build_executable("xscript", "libxtoolx.so", f"$ORIGIN/../lib/{py}/site-packages/toolx/lib", d)
    cux = Wheel("nvidia-xcux", "13.0.0", f"py3-none-{LINUX_TAG}")
    cux.files = {"nvidia/cux/lib/libxcux.so.1": binary(built["libxcux.so.1"])}
    tool = Wheel("toolx", "1.0", f"{py_tag()}-none-{LINUX_TAG}", requires=["nvidia-xcux"])
    tool.files = {
        "toolx/__init__.py": text(
            '"""Runs its bundled program, as the cmake and ninja wheels do."""\n'
            "import os, sys\n\n\ndef main() -> None:\n"
            "    exe = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'bin', 'xtool')\n"
            "    os.execv(exe, [exe, *sys.argv[1:]])\n"),
        "toolx/bin/xtool": binary(xtool),
        "toolx/lib/libxtoolx.so": binary(built["libxtoolx.so"]),
        "toolx-1.0.data/scripts/xscript": binary(xscript),
    }
    tool.entry_points = "[console_scripts]\nxtool-run = toolx:main\n"
    return [cux, tool]


def cupystub(work: Path) -> Wheel:
    d = work / "cupy"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "cu12-blas" / "libxcublas.so.12", d / "libxcublas.so.12")
    shutil.copy(work / "cu12-blas" / "libxcublasLt.so.12", d / "libxcublasLt.so.12")
    ext_name, ext = build_extension("cupystub_xblas.c", "xblas", ["libxcublas.so.12"], None, d)
    w = Wheel("cupystub", "13.6.0", f"{py_tag()}-{py_tag()}-{LINUX_TAG}", requires=["nvidia-xcublas-cu12"])
    w.files = {
        "cupystub/__init__.py": text(
            '"""cupy-like: load the CUDA library by path (cuda-pathfinder\'s job), then the module."""\n'
            "import ctypes, importlib.util, os\n\n"
            "_spec = importlib.util.find_spec('nvidia.xcublas')\n"
            "ctypes.CDLL(os.path.join(os.path.dirname(_spec.origin), 'lib', 'libxcublas.so.12'))\n"
            "from cupystub._libs.xblas import answer  # noqa: E402\n"),
        "cupystub/_libs/__init__.py": text(""),
        f"cupystub/_libs/{ext_name}": binary(ext),
    }
    return w


def edge_wheels(work: Path) -> list[Wheel]:
    nvidia_cu12(work)  # the cu12 libraries cupystub links against
    return [*toolx(work), cupystub(work)]


# --------------------------------------------------------------------------- Mach-O


def zig_available() -> bool:
    try:
        proc = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def zig_dylib(work: Path, target: str, out: str, source: str, install_name: str | None, rpaths: list[str],
              links: list[str], bundle: bool = False) -> None:
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", target, "-shared", "-o", out, source, "-L."]
    if install_name:
        cmd += [f"-Wl,-install_name,{install_name}"]
    for r in rpaths:
        cmd += [f"-Wl,-rpath,{r}"]
    cmd += [f"-l{n}" for n in links]
    if bundle:
        cmd += ["-Wl,-undefined,dynamic_lookup"]
    run(cmd, work)


def macho_wheels(work: Path) -> list[Wheel]:
    d = work / "macho"
    d.mkdir(parents=True, exist_ok=True)
    (d / "dep.c").write_text("int stub_macdep(void) { return 1; }\n")
    (d / "lib.c").write_text("int stub_macdep(void);\nint stub_macstub(void) { return stub_macdep() + 1; }\n")
    (d / "ext.c").write_text("int stub_macstub(void);\nvoid *PyInit__native(void) { stub_macstub(); return 0; }\n")
    # macdep: a fat (arm64 + x86_64) library with an @rpath install name.
    for target, out in (("aarch64-macos", "libxmacdep.arm64"), ("x86_64-macos", "libxmacdep.x86_64")):
        zig_dylib(d, target, out, "dep.c", "@rpath/libxmacdep.dylib", [], [])
    run(["llvm-lipo-14", "-create", "libxmacdep.arm64", "libxmacdep.x86_64", "-output", "libxmacdep.dylib"], d)
    shutil.copy(d / "libxmacdep.arm64", d / "libxmacdep_thin.dylib")
    # Link against a thin copy named like the install name so -lxmacdep resolves for arm64.
    shutil.copy(d / "libxmacdep.arm64", d / "libxmacdep.tbd.dylib")
    zig_dylib(d, "aarch64-macos", "libxmacstub.dylib", "lib.c", "@rpath/libxmacstub.dylib",
              ["@loader_path/../../macdep/lib", "@loader_path"], ["xmacdep"])
    zig_dylib(d, "aarch64-macos", "_native.cpython-311-darwin.so", "ext.c", None, ["@loader_path/.libs"],
              ["xmacstub"], bundle=True)
    dep = Wheel("macdep", "1.0", "py3-none-macosx_11_0_universal2")
    dep.files = {"macdep/__init__.py": text(""), "macdep/lib/libxmacdep.dylib": binary((d / "libxmacdep.dylib").read_bytes())}
    stub = Wheel("macstub", "1.0", "cp311-cp311-macosx_11_0_arm64", requires=["macdep"])
    stub.files = {
        "macstub/__init__.py": text(""),
        "macstub/_native.cpython-311-darwin.so": binary((d / "_native.cpython-311-darwin.so").read_bytes()),
        "macstub/.libs/libxmacstub.dylib": binary((d / "libxmacstub.dylib").read_bytes()),
    }
    return [dep, stub]


# --------------------------------------------------------------------------- writing


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def write_wheel(w: Wheel, out_dir: Path) -> Path:
    """A valid, deterministic wheel: sorted members, fixed dates, RECORD last."""
    dist_info = f"{w.dist}-{w.version}.dist-info"
    files = dict(w.files)
    meta = f"Metadata-Version: 2.1\nName: {w.name}\nVersion: {w.version}\nSummary: rpathfix test stub\n"
    meta += "".join(f"Provides-Extra: {e}\n" for e in w.extras)
    meta += "".join(f"Requires-Dist: {r}\n" for r in w.requires)
    files[f"{dist_info}/METADATA"] = text(meta)
    purelib = "true" if w.tag.endswith("-any") else "false"
    files[f"{dist_info}/WHEEL"] = text(
        f"Wheel-Version: 1.0\nGenerator: rpathfix-stubs\nRoot-Is-Purelib: {purelib}\nTag: {w.tag}\n")
    if w.entry_points:
        files[f"{dist_info}/entry_points.txt"] = text(w.entry_points)
    names = sorted(files)
    record = "".join(f"{n},{_record_hash(files[n][0])},{len(files[n][0])}\n" for n in names)
    record += f"{dist_info}/RECORD,,\n"
    path = out_dir / w.filename
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n in [*names, f"{dist_info}/RECORD"]:
            data, mode = files[n] if n in files else (record.encode(), 0o644)
            info = zipfile.ZipInfo(n, date_time=ZIP_DATE)
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    os.replace(tmp, path)
    return path


def input_digest(with_macho: bool, wheel_set: str = "stubs") -> str:
    h = hashlib.sha256()
    for p in sorted([Path(__file__), *SRC.iterdir()]):
        h.update(p.name.encode() + p.read_bytes())
    h.update(f"{sys.version_info[:2]} {sysconfig.get_config_var('EXT_SUFFIX')} {with_macho} {wheel_set}".encode())
    return h.hexdigest()


WHEEL_SETS = ("stubs", "edge")


def build(out_dir: Path, with_macho: bool | None = None, wheel_set: str = "stubs") -> list[Path]:
    """Build a set of stub wheels ("stubs": every one above; "edge": the second set) into
    out_dir (reused when the inputs have not changed)."""
    if wheel_set not in WHEEL_SETS:
        raise ValueError(f"unknown wheel set {wheel_set!r}")
    if with_macho is None:
        with_macho = wheel_set == "stubs" and zig_available() and shutil.which("llvm-lipo-14") is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = out_dir / ".inputs"
    digest = input_digest(with_macho, wheel_set)
    if stamp.exists() and stamp.read_text() == digest:
        return sorted(out_dir.glob("*.whl"))
    for old in out_dir.glob("*.whl"):
        old.unlink()
    with tempfile.TemporaryDirectory(prefix="rpathfix-stubs-") as tmp:
        work = Path(tmp)
        if wheel_set == "edge":
            wheels = edge_wheels(work)
        else:
            wheels = nvidia_cu12(work) + nvidia_cu13(work)
            wheels += [torchstub(work), onnxstub(work), onnxgpustub(work), pthstub(), scriptstub(), cudart_shadow(work)]
        if with_macho:
            wheels += macho_wheels(work)
        paths = [write_wheel(w, out_dir) for w in wheels]
    stamp.write_text(digest)
    return sorted(paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--no-macho", action="store_true", help="skip the zig-built Mach-O wheels")
    ap.add_argument("--set", choices=WHEEL_SETS, default="stubs", help="which set of wheels to build")
    args = ap.parse_args()
    for p in build(args.out, with_macho=False if args.no_macho else None, wheel_set=args.set):
        print(p)


if __name__ == "__main__":
    main()
