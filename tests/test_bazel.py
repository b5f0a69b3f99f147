"""End-to-end tests of the Bazel rules (rules/defs.bzl) on the example workspace examples/bazel.

They run the real bazel (Debian's offline bazel-bootstrap 4.2.3 in CI) with one throw-away
output_user_root for the whole module, in the linux-sandbox, with the stub wheels built by
testdata/cuda_stubs/build.py. Controls: //:broken is the torch-like wheel without the CUDA
wheels, and must fail naming the missing library.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "bazel"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.bazel,
    pytest.mark.skipif(shutil.which("bazel") is None, reason="bazel is not on PATH (apt-get install bazel-bootstrap)"),
]


@dataclass
class Bazel:
    user_root: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        # The system rc is kept: Debian's bazel-bootstrap needs its --install_base from
        # /etc/bazel/bazelrc. The user's ~/.bazelrc is not read.
        startup = ["--nohome_rc", f"--output_user_root={self.user_root}"]
        command, rest = args[0], list(args[1:])
        if command in ("build", "run", "test"):
            strategy = os.environ.get("RPATHFIX_BAZEL_STRATEGY", "linux-sandbox")
            rest = [f"--spawn_strategy={strategy}", "--nosandbox_debug",
                    "--experimental_convenience_symlinks=ignore", *rest]
        return subprocess.run(["bazel", *startup, command, *rest], cwd=EXAMPLE, env=self.env,
                              capture_output=True, text=True, timeout=timeout)


def _rmtree(path: Path) -> None:
    """Bazel leaves read-only directories behind: make them writable, then remove."""
    def onerror(func, p, _exc):  # type: ignore[no-untyped-def]
        os.chmod(os.path.dirname(p), 0o755)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o755)
        func(p)

    shutil.rmtree(path, onerror=onerror)


@pytest.fixture(scope="module")
def bazel(stub_wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bazel]:
    assert "torchstub" in stub_wheels  # built into testdata/cuda_stubs/out, where the WORKSPACE looks
    user_root = tmp_path_factory.mktemp("bazel-root")
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME")}
    env["RPATHFIX_PYTHON"] = sys.executable  # has rpathfix's dependencies (packaging, installer)
    b = Bazel(user_root, env)
    try:
        yield b
    finally:
        b("shutdown", timeout=120)
        _rmtree(user_root)


def _show(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-8000:]}"


def test_run_app_loads_the_cuda_stack_through_rpaths(bazel: Bazel) -> None:
    p = bazel("run", "//:app")
    assert p.returncode == 0, _show(p)
    assert "rpathfix-example: ok" in p.stdout.splitlines(), _show(p)


def test_bazel_test_all_passes(bazel: Bazel) -> None:
    p = bazel("test", "//...")
    assert p.returncode == 0, _show(p)
    out = p.stdout + p.stderr
    for test in ("//:app_test", "//:bridge_test", "//:venv_verify_test"):
        assert test in out, _show(p)
    assert "3 tests pass" in out, _show(p)


def test_broken_venv_fails_the_build_naming_the_library(bazel: Bazel) -> None:
    p = bazel("build", "//:broken")
    assert p.returncode != 0, _show(p)
    out = p.stdout + p.stderr
    assert "[missing-library]" in out and ("libxcudart.so.13" in out or "libxcublas.so.13" in out), _show(p)
    assert "will not load" in out, _show(p)


def _listing(top: Path) -> list[str]:
    """Every entry of a tree: path, type, executable bit, and the symlink target or content hash."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = p.relative_to(top).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                rows.append(f"{rel} link {os.readlink(p)}")
            elif stat.S_ISDIR(st.st_mode):
                rows.append(f"{rel} dir")
            else:
                x = "x" if st.st_mode & 0o111 else "-"
                rows.append(f"{rel} file {x} {hashlib.sha256(p.read_bytes()).hexdigest()}")
    return rows


def test_two_clean_builds_give_identical_venvs(bazel: Bazel) -> None:
    info = bazel("info", "--experimental_convenience_symlinks=ignore", "bazel-bin")
    assert info.returncode == 0, _show(info)
    venv = Path(info.stdout.strip()) / "venv"
    listings = []
    for clean in (["clean"], ["clean", "--expunge"]):  # the second also re-unpacks the wheels
        c = bazel(*clean)
        assert c.returncode == 0, _show(c)
        p = bazel("build", "//:venv")
        assert p.returncode == 0, _show(p)
        listings.append(_listing(venv))
    assert listings[0] == listings[1]
    assert any(row.startswith("lib/python3.11/site-packages/nvidia/cu13/lib/libxcudart.so.13 file") for row in listings[0])

    # No absolute path in the outputs but the interpreter's (bin/python, pyvenv.cfg home).
    leaks = [str(bazel.user_root), str(EXAMPLE), "/sandbox/"]
    for f in sorted(venv.rglob("*")):
        if f.is_symlink() or not f.is_file():
            continue
        data = f.read_bytes()
        for leak in leaks:
            assert leak.encode() not in data, f"{f} contains {leak}"
