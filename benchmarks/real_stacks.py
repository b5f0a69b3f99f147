"""Does `rpathfix verify` agree with the real loader on real wheels' extension modules?

For each environment, verify (with symbol binding) names the extension modules that will
not load; then each extension module is dlopen()ed by a fresh real interpreter with
ctypes.CDLL (RTLD_NOW | RTLD_LOCAL, what an import's dlopen does, without running
PyInit), and the two answers are compared module by module.

Usage:
    .venv/bin/python benchmarks/real_stacks.py --work benchmarks/work [--torch benchmarks/work/pipvenv]
        [--torchvision 0.28.0 --torchvision 0.29.1]

It makes benchmarks/work/stacks-venv once (`pip install numpy scipy pillow`) and, with
--torch, also checks the pip-installed torch venv that bench_verify.py makes. Each
--torchvision version is installed (without dependencies) into a hard-linked copy of
that torch venv; its op libraries (loaded by torch.ops.load_library once torch is
imported, so: after torch's _C) are then checked by the binding model
(bind_glibc.load_and_bind with torch/_C loaded before) and by a real interpreter that
ctypes-loads torch/_C first: a torchvision built for another torch fails with
"undefined symbol: _ZN3c10...".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("numpy", "scipy", "pillow")

LOAD = r"""
import ctypes, sys
try:
    ctypes.CDLL(sys.argv[1])
except OSError as e:
    print(str(e))
"""


def stacks_venv(work: Path) -> Path:
    venv = work / "stacks-venv"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PACKAGES], check=True)
        (venv / ".complete").write_text("")
    return venv


def extension_modules(venv: Path) -> list[Path]:
    """The files that export PyInit_<their name>: what an import dlopen()s."""
    from rpathfix.environment import collect
    from rpathfix.fstree import RealTree

    return sorted(Path(f.path) for f in collect(RealTree(), [str(venv)]).files if f.is_extension)


def check(venv: Path) -> tuple[int, int, list[str], float]:
    py = str(venv / "bin" / "python")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "rpathfix", "verify", "--json", str(venv)], capture_output=True,
                         text=True)
    secs = time.perf_counter() - t
    doc = json.loads(out.stdout)
    model_fails = {e["file"]: e["message"] for e in doc["errors"]}
    exts = [p for p in extension_modules(venv)]
    disagree: list[str] = []
    real_fail_count = 0
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    for ext in exts:
        r = subprocess.run([py, "-c", LOAD, str(ext)], capture_output=True, text=True, env=env)
        real = r.stdout.strip() or None
        real_fail_count += real is not None
        model = next((m for f, m in model_fails.items() if os.path.realpath(f) == os.path.realpath(ext)), None)
        if (real is None) != (model is None):
            disagree.append(f"{ext}: real {real!r}, verify {model!r}")
    return len(exts), real_fail_count, disagree, secs


LOAD_AFTER_TORCH = r"""
import ctypes, sys
ctypes.CDLL(sys.argv[1])
try:
    ctypes.CDLL(sys.argv[2])
except OSError as e:
    print(str(e))
"""


def torchvision_rows(torch_venv: Path, work: Path, version: str) -> list[tuple[str, str | None, str | None]]:
    """(library, real loader's error, model's first problem) for each torchvision op library."""
    from rpathfix.bind_glibc import SymbolTables, load_and_bind
    from rpathfix.fstree import RealTree
    from rpathfix.loader_glibc import host_options

    venv = (work / f"torchvision-{version}").resolve()
    if not (venv / ".complete").exists():
        subprocess.run(["rm", "-rf", str(venv)], check=True)
        subprocess.run(["cp", "-al", str(torch_venv), str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                        f"torchvision=={version}"], check=True)
        (venv / ".complete").write_text("")
    site = next((venv / "lib").glob("python3*/site-packages"))
    torch_c = next((site / "torch").glob("_C.cpython-*.so"))
    tree = RealTree()
    tables = SymbolTables(tree)
    options = host_options(executable=str(venv / "bin" / "python"))
    rows = []
    try:
        for lib in sorted((site / "torchvision").glob("*.so")):
            r = subprocess.run([str(venv / "bin" / "python"), "-c", LOAD_AFTER_TORCH, str(torch_c), str(lib)],
                               capture_output=True, text=True)
            real = r.stdout.strip() or None
            result, problems = load_and_bind(tree, str(lib), options, tables, loaded_before=[(str(torch_c), False)])
            model = problems[0].message if problems else (result.missing[0].name + " not found"
                                                          if result.missing else None)
            rows.append((lib.name, real, model))
    finally:
        tables.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--torch", type=Path, help="the pip-installed torch venv (bench_verify.py's pipvenv)")
    ap.add_argument("--venv", type=Path, action="append", default=[], help="another venv to check as it is")
    ap.add_argument("--torchvision", action="append", default=[], metavar="VERSION",
                    help="check this torchvision's op libraries against the --torch venv")
    a = ap.parse_args()
    envs = [("numpy + scipy + pillow", stacks_venv(a.work))]
    if a.torch:
        envs.append(("torch 2.14.1 CUDA 13", a.torch))
    envs += [(v.name, v) for v in a.venv]
    bad = 0
    print(f"{'environment':24} {'modules':>8} {'real fails':>10} {'disagree':>8} {'verify s':>9}")
    for name, venv in envs:
        n, fails, disagree, secs = check(venv)
        bad += len(disagree)
        print(f"{name:24} {n:8} {fails:10} {len(disagree):8} {secs:9.2f}")
        for d in disagree:
            print("   ", d)
    for version in a.torchvision:
        if not a.torch:
            ap.error("--torchvision needs --torch")
        for lib, real, model in torchvision_rows(a.torch, a.work, version):
            same = real == model
            bad += not same
            print(f"torchvision {version} {lib}: real {real or 'loads'}; model {'agrees' if same else model}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
