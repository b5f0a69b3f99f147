"""Shared fixtures: the stub wheels (built once per run with gcc and zig) and helpers."""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUBS_OUT = ROOT / "testdata" / "cuda_stubs" / "out"


@functools.lru_cache(maxsize=1)
def _builder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("cuda_stubs_build", ROOT / "testdata" / "cuda_stubs" / "build.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["cuda_stubs_build"] = mod
    spec.loader.exec_module(mod)
    return mod


def zig_available() -> bool:
    """Whether `python -m ziglang` links Mach-O test binaries here (the stub builder's own check)."""
    return bool(_builder().zig_available())


def zig_cc(cwd: Path, target: str, *args: str, check: bool = True) -> bool:
    """`python -m ziglang cc -target TARGET ARGS` in cwd: True when it linked. With check, a
    failure fails the test with the linker's message; without, it is the caller's answer."""
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", target, *args]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 or not check, r.stderr
    return r.returncode == 0


LIPO = next((p for p in (shutil.which(n) for n in ("llvm-lipo", "llvm-lipo-14", "lipo")) if p), None)


@pytest.fixture(scope="session")
def stub_wheels() -> dict[str, Path]:
    """Every stub wheel, keyed by distribution name (nvidia_xcublas, torchstub, macstub, ...)."""
    paths = _builder().build(STUBS_OUT)
    return {p.name.split("-")[0]: p for p in paths}


@pytest.fixture(scope="session")
def edge_wheels() -> dict[str, Path]:
    """The second set of stub wheels (build.py --set edge: ELF executables, cupy-like), keyed
    like stub_wheels; built into a directory of its own."""
    paths = _builder().build(STUBS_OUT / "edge", wheel_set="edge")
    return {p.name.split("-")[0]: p for p in paths}


@pytest.fixture(scope="session")
def stub_tree(stub_wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All stub wheels extracted into one directory each (modes kept), like rules_python's layout."""
    top = tmp_path_factory.mktemp("stubs-unzipped")
    for dist, whl in stub_wheels.items():
        dest = top / dist
        with zipfile.ZipFile(whl) as zf:
            for info in zf.infolist():
                zf.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode:
                    (dest / info.filename).chmod(mode)
    return top


def rpathfix(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (what users run)."""
    return subprocess.run([sys.executable, "-m", "rpathfix", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


NOBODY = 65534  # uid and gid of the unprivileged user the loader and permission tests run as


def as_nobody(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command as uid/gid 65534 with no groups (needs root and setpriv; skips otherwise).
    The tests run as root here and in CI, so a file's mode bits stop only this user."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a command as an unprivileged user")
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A fresh directory every user may enter (pytest's tmp_path is root's own, mode 0700)."""
    d = Path(tempfile.mkdtemp(prefix="rpathfix-world-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)  # as root: no mode bit stops it
