"""End-to-end tests of the Bazel rules (rules/defs.bzl) on the example workspace examples/bazel.

They run the real bazel (Debian's offline bazel-bootstrap 4.2.3 in CI) with one throw-away
output_user_root for the whole module, in the linux-sandbox, with the stub wheels built by
testdata/cuda_stubs/build.py. Controls: //:broken is the torch-like wheel without the CUDA
wheels, and must fail naming the missing library; the hermeticity test catches a target
whose action key holds its checkout's path; the size test compares the links venv with the
tree venv of copies.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bazel_aquery import aquery_actions

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

    def __call__(self, *args: str, timeout: float = 600, cwd: Path = EXAMPLE) -> subprocess.CompletedProcess[str]:
        # The system rc is kept: Debian's bazel-bootstrap needs its --install_base from
        # /etc/bazel/bazelrc. The user's ~/.bazelrc is not read.
        startup = ["--nohome_rc", f"--output_user_root={self.user_root}"]
        command, rest = args[0], list(args[1:])
        if command in ("build", "run", "test"):
            strategy = os.environ.get("RPATHFIX_BAZEL_STRATEGY", "linux-sandbox")
            rest = [f"--spawn_strategy={strategy}", "--nosandbox_debug",
                    "--experimental_convenience_symlinks=ignore", *rest]
        return subprocess.run(["bazel", *startup, command, *rest], cwd=cwd, env=self.env,
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
    env["RPATHFIX_PYTHON"] = sys.executable  # has rpathfix unpack's dependencies (packaging, installer)
    b = Bazel(user_root, env)
    workspaces: list[Path] = [EXAMPLE]
    b.workspaces = workspaces  # type: ignore[attr-defined]
    try:
        yield b
    finally:
        for ws in workspaces:  # one server per workspace
            b("shutdown", timeout=120, cwd=ws)
        _rmtree(user_root)


def _show(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-8000:]}"


def _bin(bazel: Bazel, cwd: Path = EXAMPLE) -> Path:
    info = bazel("info", "--experimental_convenience_symlinks=ignore", "bazel-bin", cwd=cwd)
    assert info.returncode == 0, _show(info)
    return Path(info.stdout.strip())


def test_run_app_loads_the_cuda_stack_through_links(bazel: Bazel) -> None:
    p = bazel("run", "//:app")
    assert p.returncode == 0, _show(p)
    assert "rpathfix-example: ok" in p.stdout.splitlines(), _show(p)
    assert "LD_LIBRARY_PATH" not in p.stdout  # the app says when it is set; the env has none
    # The venv is the runfiles tree: sys.prefix is app.runfiles/<ws>/venv, and the extension
    # and the CUDA-like libraries are links to the wheel repositories' files, not copies.
    assert "app.runfiles/rpathfix_example/venv" in p.stderr, _show(p)
    venv = _bin(bazel) / "app.runfiles" / "rpathfix_example" / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    ext = next((site / "torchstub").glob("_C*.so"))
    lib = site / "nvidia" / "cu13" / "lib" / "libxcudart.so.13"
    for f in (ext, lib, venv / "bin" / "python", venv / "pyvenv.cfg"):
        assert f.is_symlink(), f
    for d in (site / "nvidia", site / "nvidia" / "cu13" / "lib", site / "torchstub"):
        assert d.is_dir() and not d.is_symlink(), d  # real directories: $ORIGIN/.. climbs the venv
    assert "/external/nvidia_xcuda_runtime/" in os.readlink(lib)
    assert (venv / "pyvenv.cfg").read_text() == "include-system-site-packages = false\n"

    # The console script runs with the venv's python, also when found on PATH; control: the
    # wheel's own script names the fetch-time interpreter, which has no torchstub.
    env = {k: v for k, v in bazel.env.items() if k != "LD_LIBRARY_PATH"}
    for cmd, path in (([str(venv / "bin" / "torchstubrun")], env["PATH"]),
                      (["torchstubrun"], f"{venv / 'bin'}:/usr/bin:/bin")):
        run = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PATH": path}, cwd="/")
        assert run.returncode == 0 and "torchstubrun: cuda_answer() =" in run.stdout, (cmd, run.stderr)
    external = Path(os.readlink(lib).split("/external/")[0]) / "external"
    run = subprocess.run([str(external / "torchstub" / "bin" / "torchstubrun")], capture_output=True, text=True,
                         env=env)
    assert run.returncode != 0 and "torchstub" in run.stderr, (run.stdout, run.stderr)


def test_bazel_test_all_passes(bazel: Bazel) -> None:
    p = bazel("test", "//...")
    assert p.returncode == 0, _show(p)
    out = p.stdout + p.stderr
    for test in ("//:app_test", "//:bridge_test", "//:tree_test", "//:venv_verify_test"):
        assert test in out, _show(p)
    assert "4 tests pass" in out, _show(p)


def test_broken_venv_fails_the_build_naming_the_library(bazel: Bazel) -> None:
    p = bazel("build", "//:broken")
    assert p.returncode != 0, _show(p)
    out = p.stdout + p.stderr
    assert "Checking venv //:broken (rpathfix layout) failed" in out, _show(p)
    assert "[missing-library]" in out and ("libxcudart.so.13" in out or "libxcublas.so.13" in out), _show(p)
    assert "will not load" in out, _show(p)


def _aquery(bazel: Bazel, expr: str, cwd: Path = EXAMPLE) -> list[tuple[str, str, str]]:
    """(mnemonic, first output's path, action key) of every action of `expr`, sorted."""
    p = bazel("aquery", "--output=jsonproto", expr, cwd=cwd)
    assert p.returncode == 0, _show(p)
    return sorted((mnemonic, outputs[0], key) for mnemonic, outputs, key in aquery_actions(p.stdout))


def _output_bytes(bazel: Bazel, target: str) -> int:
    """Total size of the action outputs of `target`'s own actions (tree artifacts walked)."""
    top = _bin(bazel).parent.parent.parent  # the execroot/<ws>/
    total = 0
    for mnemonic, out, _ in _aquery(bazel, target):
        del mnemonic
        p = top / out
        files = [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()] if p.is_dir() else [p]
        total += sum(f.stat().st_size for f in files)
    return total


def test_the_links_venv_is_a_few_bytes_of_outputs(bazel: Bazel) -> None:
    p = bazel("build", "//:venv", "//:venv_tree")
    assert p.returncode == 0, _show(p)
    links = _output_bytes(bazel, "//:venv")
    tree = _output_bytes(bazel, "//:venv_tree")
    acts = _aquery(bazel, "//:venv")
    assert sorted(a[0] for a in acts) == ["FileWrite", "RpathfixLayout"], acts  # a constant number per venv
    assert 0 < links < 4096, links
    # Control: the tree venv copies every byte of the wheels' files.
    assert tree > 20 * links, (tree, links)


def _copy_checkout(dest: Path, with_wheels: bool = True) -> Path:
    """The rules, rpathfix's sources, the stub wheels and the example, at `dest`; returns the example."""
    for name in ("WORKSPACE", "BUILD.bazel", "MODULE.bazel"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "rules", dest / "rules")
    shutil.copytree(ROOT / "src" / "rpathfix", dest / "src" / "rpathfix",
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = dest / "testdata" / "cuda_stubs" / "out"
    out.mkdir(parents=True)
    if with_wheels:
        for whl in (ROOT / "testdata" / "cuda_stubs" / "out").glob("*.whl"):
            shutil.copy2(whl, out / whl.name)
    shutil.copytree(EXAMPLE, dest / "examples" / "bazel")
    return dest / "examples" / "bazel"


_PATH_DEPENDENT = """
# Added by the test: a deliberately path-dependent target (what the old rules did with the
# interpreter's absolute path), the control of the comparison.
genrule(
    name = "pathdep",
    outs = ["pathdep.txt"],
    cmd = "echo {path} > $@",
)
"""


def test_two_checkouts_give_identical_action_keys_and_outputs(bazel: Bazel, tmp_path: Path) -> None:
    examples = []
    for name in ("one", "elsewhere/two"):
        top = tmp_path / name
        top.mkdir(parents=True)
        ex = _copy_checkout(top)
        with open(ex / "BUILD.bazel", "a") as f:
            f.write(_PATH_DEPENDENT.format(path=top))
        bazel.workspaces.append(ex)  # type: ignore[attr-defined]
        examples.append(ex)
    keys, outputs = [], []
    for ex in examples:
        b = bazel("build", "//:app", "//:pathdep", cwd=ex)
        assert b.returncode == 0, _show(b)
        keys.append(_aquery(bazel, "deps(//:app) + //:pathdep", cwd=ex))
        bin_dir = _bin(bazel, cwd=ex)
        outputs.append({n: (bin_dir / n).read_bytes()
                        for n in ("app", "venv.layout-check.txt", "venv.pyvenv.cfg", "venv.venv-bin/torchstubrun",
                                  "pathdep.txt")})
    assert _bin(bazel, cwd=examples[0]) != _bin(bazel, cwd=examples[1])  # two output bases
    ours = [[k for k in ks if k[1] != "bazel-out/k8-fastbuild/bin/pathdep.txt"] for ks in keys]
    assert len(ours[0]) > 5
    assert ours[0] == ours[1]
    assert [k for k in ours[0] if k[0] == "RpathfixLayout"]
    # Control: the comparison sees a key that holds the checkout's path, and its output.
    dep = [[k for k in ks if k[1] == "bazel-out/k8-fastbuild/bin/pathdep.txt"] for ks in keys]
    assert dep[0] and dep[0] != dep[1]
    assert outputs[0]["pathdep.txt"] != outputs[1]["pathdep.txt"]
    for n in ("app", "venv.layout-check.txt", "venv.pyvenv.cfg", "venv.venv-bin/torchstubrun"):
        assert outputs[0][n] == outputs[1][n], n
    for n in ("app", "venv.layout-check.txt", "venv.pyvenv.cfg", "venv.venv-bin/torchstubrun"):
        for ex in examples:
            assert str(ex.parent.parent).encode() not in outputs[0][n]
            assert str(bazel.user_root).encode() not in outputs[0][n]


def test_generated_build_files_hold_no_host_path(bazel: Bazel) -> None:
    p = bazel("info", "output_base")
    assert p.returncode == 0, _show(p)
    external = Path(p.stdout.strip()) / "external"
    builds = [external / r / "BUILD.bazel" for r in ("python_host", "torchstub", "nvidia_xcublas")]
    for f in builds:
        text = f.read_text()
        assert "/" + "root" not in text and str(ROOT) not in text and sys.prefix not in text, (f, text)


def test_a_missing_wheel_says_what_to_run_first(bazel: Bazel, tmp_path: Path) -> None:
    ex = _copy_checkout(tmp_path, with_wheels=False)
    bazel.workspaces.append(ex)  # type: ignore[attr-defined]
    p = bazel("build", "//:app", cwd=ex)
    assert p.returncode != 0, _show(p)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if "make bazel-example" in ln]
    assert lines and "does not exist" in lines[0], _show(p)
    assert "Not a regular file" not in p.stderr, _show(p)


def _runpath(f: Path) -> str:
    p = subprocess.run(["readelf", "-d", str(f)], capture_output=True, text=True, check=True)
    return " ".join(ln for ln in p.stdout.splitlines() if "RPATH" in ln or "RUNPATH" in ln)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not on PATH")
def test_repair_gives_the_tree_venv_a_patched_copy_of_the_plugin(bazel: Bazel) -> None:
    p = bazel("build", "//:venv_repair")
    assert p.returncode == 0, _show(p)
    rel = Path("site-packages", "onnxgpustub", "capi", "libxonnxruntime_providers_cuda.so")
    patched = _bin(bazel) / "venv_repair" / "lib" / "python3.11" / rel
    o = bazel("info", "output_base")
    original = Path(o.stdout.strip()) / "external" / "onnxgpustub" / rel
    assert _runpath(original) == ""  # control: the wheel's provider has no search path
    assert "$ORIGIN/../../nvidia/cu13/lib" in _runpath(patched), _runpath(patched)


def test_one_root_twice_fails_the_analysis(bazel: Bazel) -> None:
    p = bazel("build", "//:twice")
    assert p.returncode != 0, _show(p)
    assert "rpathfix_venv(//:twice): two deps share the root external/torchstub" in p.stderr, _show(p)


def test_two_roots_of_one_distribution_fail_the_analysis(bazel: Bazel) -> None:
    """Two deps that are the same distribution from different roots: the analysis names
    both and says to keep one (one root twice is the test above)."""
    p = bazel("build", "//:two_copies")
    assert p.returncode != 0, _show(p)
    assert "rpathfix_venv(//:two_copies): two deps are the distribution torchstub:" in p.stderr, _show(p)
    assert "dup" in p.stderr and "external/torchstub" in p.stderr and "keep one" in p.stderr, _show(p)
