"""The real torch stack through the Bazel rules: the links venv against the tree venv, one run.

    .venv/bin/python benchmarks/bench_bazel.py [--wheels /work/bench/wh] [--skip-tree]

Makes a workspace under benchmarks/work/bazel/ (git ignores benchmarks/work/) whose
WORKSPACE names every wheel by absolute path (rpathfix_wheel) and whose BUILD has:
  //:venv        rpathfix_venv of all wheels, layout "links" (the default)
  //:venv_tree   the same deps, layout "tree" (the old writer: copies of every file)
  //:check       a py_venv_binary that loads libtorch_cuda.so with ctypes (LD_LIBRARY_PATH
                 unset) and imports torch, through the links venv
  //:app0..9     ten binaries sharing //:venv
and measures: fetch (rpathfix unpack of every wheel, once), the cold build of each venv,
bytes of each venv target's action outputs and its number of actions, a warm no-op build,
the rebuild after adding one wheel, ten binaries against one, and runs //:check.
Everything runs with its own --output_user_root, shut down and deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
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


def write_workspace(ws: Path, wheels: list[Path], with_late: bool) -> None:
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
        'rpathfix_venv(name = "venv", python = "@python_host//:python", deps = DEPS)',
        'rpathfix_venv(name = "venv_tree", python = "@python_host//:python", deps = DEPS, layout = "tree", '
        'tags = ["manual"])',
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
    d = json.loads(p.stdout)
    frags = {f["id"]: f for f in d.get("pathFragments", [])}

    def path(fid: int) -> str:
        parts = []
        while fid:
            f = frags[fid]
            parts.append(f["label"])
            fid = f.get("parentId", 0)
        return "/".join(reversed(parts))

    arts = {a["id"]: path(a["pathFragmentId"]) for a in d.get("artifacts", [])}
    return [(a["mnemonic"], arts[o]) for a in d.get("actions", []) for o in a["outputIds"]]


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", default="/work/bench/wh")
    ap.add_argument("--skip-tree", action="store_true", help="do not build the tree venv (5 GB of copies)")
    ap.add_argument("--keep", action="store_true", help="keep the output root (for a look around)")
    args = ap.parse_args()
    wheels = sorted(Path(args.wheels).glob("*.whl"))
    if not wheels:
        sys.exit(f"bench_bazel: no wheel in {args.wheels}")
    if shutil.which("bazel") is None:
        sys.exit("bench_bazel: bazel is not on PATH (make setup installs bazel-bootstrap)")
    shutil.rmtree(WORK, ignore_errors=True)
    ws = WORK / "ws"
    user_root = WORK / "root"
    write_workspace(ws, wheels, with_late=False)
    bz = Bazel(ws, user_root)
    rows: list[tuple[str, str]] = []
    try:
        dt, _ = bz("fetch", "//:venv")
        rows.append((f"fetch: rpathfix unpack of {len(wheels) - 1} wheels (once per output base)", f"{dt:.1f} s"))
        _, p = bz("info", "execution_root")
        execroot = Path(p.stdout.strip())

        dt, _ = bz("build", "//:venv")
        rows.append((f"links venv ({len(wheels) - 1} wheels): cold build (analysis + check)", f"{dt:.1f} s"))
        acts = actions(bz, "//:venv")
        rows.append(("links venv: actions / bytes of action outputs",
                     f"{len(acts)} ({', '.join(sorted(m for m, _ in acts))}) / {mb(output_bytes(execroot, acts))}"))
        dt, _ = bz("build", "//:venv")
        rows.append(("links venv: warm no-op build", f"{dt:.2f} s"))
        bz("shutdown")
        dt, _ = bz("build", "--nobuild", "//:venv")
        rows.append(("links venv: server start + loading + analysis (the Starlark merge), --nobuild",
                     f"{dt:.1f} s"))
        rows.append(("links venv: the check action alone (rpathfix layout, best of 3)",
                     f"{check_time(bz, execroot):.2f} s"))

        dt, p = bz("run", "//:check", check=False)
        ok = "import torch ok" in p.stdout and "libtorch_cuda.so loaded" in p.stdout
        rows.append(("//:check: ctypes libtorch_cuda.so + import torch, LD_LIBRARY_PATH unset (build + run)",
                     f"{'ok' if ok else 'FAILED'} in {dt:.1f} s"))
        if not ok:
            print(p.stdout, p.stderr[-3000:], file=sys.stderr)
        _, p = bz("info", "bazel-bin")
        bin_dir = Path(p.stdout.strip())
        manifest = bin_dir / "check.runfiles_manifest"
        links = sum(1 for _ in manifest.open()) if manifest.exists() else 0
        rows.append(("one binary: runfiles links / its runfiles manifest (Bazel's, per binary)",
                     f"{links:,} / {mb(manifest.stat().st_size) if manifest.exists() else '?'}"))

        dt, _ = bz("build", "//:app0")
        rows.append(("1 more binary on the built venv (launcher + runfiles tree)", f"{dt:.1f} s"))
        dt, _ = bz("build", *[f"//:app{i}" for i in range(1, 10)])
        rows.append(("9 more binaries sharing the venv", f"{dt:.1f} s"))
        app_acts = actions(bz, "deps(//:app1) - deps(//:venv)")
        rows.append(("actions per binary beyond the venv",
                     f"{len(app_acts)} ({', '.join(sorted(m for m, _ in app_acts))})"))

        write_workspace(ws, wheels, with_late=True)
        dt, _ = bz("build", "//:venv")
        rows.append((f"links venv: rebuild after adding one wheel ({LATE}; its fetch included; "
                     f"{len(wheels)} wheels)", f"{dt:.1f} s"))
        dt, _ = bz("build", "//:venv")
        rows.append(("links venv: warm no-op build (all wheels)", f"{dt:.2f} s"))

        if not args.skip_tree:
            dt, _ = bz("build", "//:venv_tree")
            rows.append((f"tree venv ({len(wheels)} wheels, peer: the old writer): cold build", f"{dt:.1f} s"))
            acts = actions(bz, "//:venv_tree")
            rows.append(("tree venv: actions / bytes of action outputs",
                         f"{len(acts)} ({', '.join(sorted(m for m, _ in acts))}) / {mb(output_bytes(execroot, acts))}"))
            dt, _ = bz("build", "//:venv_tree")
            rows.append(("tree venv: warm no-op build", f"{dt:.2f} s"))
            bz("shutdown")
            dt, _ = bz("build", "--nobuild", "//:venv_tree")
            rows.append(("tree venv: server start + loading + analysis, --nobuild", f"{dt:.1f} s"))
    finally:
        print("\n| figure | value |\n|---|---|")
        for k, v in rows:
            print(f"| {k} | {v} |")
        if not args.keep:
            bz("clean", "--expunge", check=False)
            bz("shutdown", check=False)
            subprocess.run(["chmod", "-R", "u+w", str(user_root)], capture_output=True)
            shutil.rmtree(WORK, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
