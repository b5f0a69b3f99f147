"""The real torch stack through the Bazel rules: the links venv against the tree venv, one run.

    .venv/bin/python benchmarks/bench_bazel.py [--wheels benchmarks/work/wh] [--skip-tree]

Runs each layout in a workspace and output root of its own under benchmarks/work/bazel/
(git ignores benchmarks/work/), one after the other in the same run: a WORKSPACE naming every
wheel by absolute path (rpathfix_wheel), and a BUILD with
  //:venv        rpathfix_venv of all wheels but one, layout "links" (the default) or "tree"
                 (the old writer: copies of every file), the peer
  //:check       a py_venv_binary that loads libtorch_cuda.so with ctypes (LD_LIBRARY_PATH
                 unset) and imports torch through the venv
  //:app0..9     ten binaries sharing //:venv
and measures: the fetch (rpathfix unpack of every wheel), the cold build of the venv, bytes
of its action outputs and its number of actions, a warm no-op build, loading + analysis,
the check alone, one and ten binaries, the rebuild after adding the last wheel. Each output
root is expunged and deleted at the end of its phase (the tree venv is 5.6 GB).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from bazel_aquery import aquery_actions  # noqa: E402  (shared with tests/test_bazel.py)

WORK = ROOT / "benchmarks" / "work" / "bazel"
LATE = "jinja2"  # left out of the first build, added for the rebuild figure

CHECK = '''import ctypes, os, sys
assert not os.environ.get("LD_LIBRARY_PATH"), os.environ.get("LD_LIBRARY_PATH")
site = os.path.join(sys.prefix, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
ctypes.CDLL(os.path.join(site, "torch", "lib", "libtorch_cuda.so"))
print("bench-check: libtorch_cuda.so loaded")
import torch
print("bench-check: import torch ok", torch.__version__, "prefix", sys.prefix)
'''


def repo_name(whl: Path) -> str:
    return "w_" + whl.name.split("-")[0].lower()


def write_workspace(ws: Path, wheels: list[Path], with_late: bool, layout: str, assume: str = "") -> None:
    ws.mkdir(parents=True, exist_ok=True)
    lines = [
        'workspace(name = "bench")',
        f'local_repository(name = "rpathfix", path = "{ROOT}")',
        'load("@rpathfix//rules:defs.bzl", "rpathfix_python", "rpathfix_wheel")',
        'rpathfix_python(name = "python_host", interpreter = "python3")',
    ]
    lines += [f'rpathfix_wheel(name = "{repo_name(w)}", wheel = "{w}")' for w in wheels]
    (ws / "WORKSPACE").write_text("\n".join(lines) + "\n")
    deps = [f'"@{repo_name(w)}"' for w in wheels if with_late or repo_name(w) != "w_" + LATE]
    build = [
        'load("@rpathfix//rules:defs.bzl", "py_venv_binary", "rpathfix_venv")',
        f'DEPS = [{", ".join(deps)}]',
        f'rpathfix_venv(name = "venv", python = "@python_host//:python", deps = DEPS, layout = "{layout}", '
        f'assume_loaded = [{repr(assume) if assume else ""}])',
        'py_venv_binary(name = "check", main = "check.py", venv = ":venv")',
    ]
    build += [f'py_venv_binary(name = "app{i}", main = "check.py", venv = ":venv")' for i in range(10)]
    (ws / "BUILD.bazel").write_text("\n".join(build) + "\n")
    (ws / "check.py").write_text(CHECK)
    (ws / ".bazelrc").write_text("build --spawn_strategy=linux-sandbox --nosandbox_debug\n")


class Bazel:
    def __init__(self, ws: Path, user_root: Path) -> None:
        self.ws = ws
        self.user_root = user_root
        self.env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
        self.env["RPATHFIX_PYTHON"] = sys.executable

    def __call__(self, *args: str, check: bool = True) -> tuple[float, subprocess.CompletedProcess[str]]:
        cmd = ["bazel", "--nohome_rc", f"--output_user_root={self.user_root}", *args]
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=self.ws, env=self.env, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if check and p.returncode != 0:
            sys.exit(f"bench_bazel: {' '.join(args)} failed (exit {p.returncode}):\n{p.stderr[-6000:]}")
        return dt, p


def actions(bz: Bazel, expr: str) -> list[tuple[str, str]]:
    _, p = bz("aquery", "--output=jsonproto", expr)
    return [(f"{mnemonic}#{i}", o) for i, (mnemonic, outputs, _) in enumerate(aquery_actions(p.stdout)) for o in outputs]


def describe(acts: list[tuple[str, str]]) -> str:
    """"N (mnemonics), M outputs" for actions() rows (one per output)."""
    names = sorted({m for m, _ in acts})
    return f"{len(names)} ({', '.join(n.split('#')[0] for n in names)}), {len(acts)} outputs"


def output_bytes(execroot: Path, acts: list[tuple[str, str]]) -> int:
    total = 0
    for _, out in acts:
        p = execroot / out
        if p.is_dir():
            total += sum(f.lstat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
        elif p.exists():
            total += p.lstat().st_size
    return total


def check_time(bz: Bazel, execroot: Path) -> float:
    """Run the venv's check action again by hand, in the execroot, with its param file."""
    bz("build", "--materialize_param_files", "//:venv")
    params = sorted((execroot / "bazel-out").glob("*/bin/venv.layout-check.txt-*.params"))
    if not params:
        return float("nan")
    cmd = ["external/python_host/bin/python" + sys.version.split()[0].rsplit(".", 1)[0], "-S", "-m", "rpathfix",
           "layout", str(params[0].relative_to(execroot))]
    env = {"PYTHONPATH": "external/rpathfix/src", "PYTHONDONTWRITEBYTECODE": "1"}
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        p = subprocess.run(cmd, cwd=execroot, env=env, capture_output=True, text=True)
        best = min(best, time.perf_counter() - t)
        if p.returncode != 0:
            sys.exit(f"bench_bazel: the check failed by hand:\n{p.stderr[-3000:]}")
    return best


def mb(n: int) -> str:
    if n < 1e6:
        return f"{n:,} bytes"
    return f"{n / 1e6:,.1f} MB" if n < 1e9 else f"{n / 1e9:,.2f} GB"


def phase(layout: str, wheels: list[Path], keep: bool) -> dict[str, str]:
    """Every figure of one layout, in a workspace and output root of its own (cold = cold)."""
    ws = WORK / f"ws-{layout}"
    user_root = WORK / f"root-{layout}"
    write_workspace(ws, wheels, with_late=False, layout=layout)
    bz = Bazel(ws, user_root)
    got: dict[str, str] = {}
    try:
        dt, _ = bz("fetch", "//:venv")
        got["fetch"] = f"{dt:.1f} s"
        _, p = bz("info", "execution_root")
        execroot = Path(p.stdout.strip())
        dt, _ = bz("build", "//:venv")
        got["cold"] = f"{dt:.1f} s"
        acts = actions(bz, "//:venv")
        got["actions"] = describe(acts)
        got["bytes"] = mb(output_bytes(execroot, acts))
        dt, _ = bz("build", "//:venv")
        got["noop"] = f"{dt:.2f} s"
        bz("shutdown")
        dt, _ = bz("build", "--nobuild", "//:venv")
        got["analysis"] = f"{dt:.1f} s"
        if layout == "links":
            got["check"] = f"{check_time(bz, execroot):.2f} s"
        dt, p = bz("run", "//:check", check=False)
        ok = "import torch ok" in p.stdout and "libtorch_cuda.so loaded" in p.stdout
        got["run"] = f"{'ok' if ok else 'FAILED'}, {dt:.1f} s"
        if not ok:
            print(p.stdout, p.stderr[-3000:], file=sys.stderr)
        _, p = bz("info", "bazel-bin")
        manifest = Path(p.stdout.strip()) / "check.runfiles_manifest"
        if manifest.exists():
            got["runfiles"] = f"{sum(1 for _ in manifest.open()):,} / {mb(manifest.stat().st_size)}"
        dt, _ = bz("build", "//:app0")
        got["one more"] = f"{dt:.1f} s"
        dt, _ = bz("build", *[f"//:app{i}" for i in range(1, 10)])
        got["nine more"] = f"{dt:.1f} s"
        app_acts = actions(bz, "deps(//:app1) - deps(//:venv)")
        got["per binary"] = describe(app_acts)
        # The venv action again with every input's digest known (a new action key: an
        # assume_loaded entry that matches nothing), sandboxed and not.
        write_workspace(ws, wheels, with_late=False, layout=layout, assume="libnothing-1.so")
        dt, _ = bz("build", "//:venv")
        got["rerun"] = f"{dt:.1f} s"
        write_workspace(ws, wheels, with_late=False, layout=layout, assume="libnothing-2.so")
        dt, _ = bz("build", "--spawn_strategy=local", "//:venv")
        got["rerun local"] = f"{dt:.1f} s"
        write_workspace(ws, wheels, with_late=True, layout=layout)
        dt, _ = bz("build", "//:venv")
        got["add one"] = f"{dt:.1f} s"
        dt, _ = bz("build", "//:venv")
        got["noop all"] = f"{dt:.2f} s"
    finally:
        if not keep:
            bz("clean", "--expunge", check=False)
            bz("shutdown", check=False)
            subprocess.run(["chmod", "-R", "u+w", str(user_root)], capture_output=True)
            shutil.rmtree(user_root, ignore_errors=True)
            shutil.rmtree(ws, ignore_errors=True)
    return got


ROWS = [
    ("fetch", "fetch: `rpathfix unpack` of {n} wheels (once per output base, the same for both)"),
    ("cold", "cold build of the venv ({n} wheels), after the fetch, fresh output base"),
    ("actions", "actions of the venv target"),
    ("bytes", "bytes of the venv target's action outputs"),
    ("noop", "warm no-op build"),
    ("analysis", "server start + loading + analysis (`--nobuild`)"),
    ("check", "the check action alone (`rpathfix layout` by hand, best of 3)"),
    ("rerun", "the venv action again, input digests known (new key: `assume_loaded`), linux-sandbox"),
    ("rerun local", "the same, `--spawn_strategy=local` (no sandbox to set up)"),
    ("run", "`bazel run //:check`: ctypes libtorch_cuda.so + `import torch`, LD_LIBRARY_PATH unset"),
    ("runfiles", "one binary's runfiles: entries / Bazel's runfiles manifest"),
    ("one more", "one more binary on the built venv"),
    ("nine more", "nine more binaries sharing the venv (ten in all)"),
    ("per binary", "actions per binary beyond the venv"),
    ("add one", "rebuild after adding one wheel ({late}, its fetch included)"),
    ("noop all", "warm no-op build (all wheels)"),
]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", default="benchmarks/work/wh")
    ap.add_argument("--skip-tree", action="store_true", help="do not measure the tree venv (5 GB of copies)")
    ap.add_argument("--keep", action="store_true", help="keep the output roots (for a look around)")
    args = ap.parse_args()
    wheels = sorted(Path(args.wheels).resolve().glob("*.whl"))  # rpathfix_wheel takes absolute paths
    if not wheels:
        sys.exit(f"bench_bazel: no wheel in {args.wheels}")
    if shutil.which("bazel") is None:
        sys.exit("bench_bazel: bazel is not on PATH (make setup installs bazel-bootstrap)")
    shutil.rmtree(WORK, ignore_errors=True)
    results = {"links": phase("links", wheels, args.keep)}
    if not args.skip_tree:
        results["tree"] = phase("tree", wheels, args.keep)
    print("\n| figure | links (default) | tree (the old writer) |\n|---|---:|---:|")
    for key, label in ROWS:
        text = label.format(n=len(wheels) - 1, late=LATE)
        print(f"| {text} | {results['links'].get(key, '-')} | {results.get('tree', {}).get(key, '-')} |")
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
