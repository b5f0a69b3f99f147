"""Does `rpathfix verify` agree with the real loader on real wheels' extension modules?

For each environment, verify (with symbol binding) names the extension modules that will
not load; then each extension module is dlopen()ed by a fresh real interpreter with
ctypes.CDLL (RTLD_NOW | RTLD_LOCAL, what an import's dlopen does, without running
PyInit), and the two answers are compared module by module.

Usage:
    .venv/bin/python benchmarks/real_stacks.py --work benchmarks/work [--torch benchmarks/work/pipvenv]

It makes benchmarks/work/stacks-venv once (`pip install numpy scipy pillow`) and, with
--torch, also checks the pip-installed torch venv that bench_verify.py makes.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--torch", type=Path, help="the pip-installed torch venv (bench_verify.py's pipvenv)")
    a = ap.parse_args()
    envs = [("numpy + scipy + pillow", stacks_venv(a.work))]
    if a.torch:
        envs.append(("torch 2.14.1 CUDA 13", a.torch))
    bad = 0
    print(f"{'environment':24} {'modules':>8} {'real fails':>10} {'disagree':>8} {'verify s':>9}")
    for name, venv in envs:
        n, fails, disagree, secs = check(venv)
        bad += len(disagree)
        print(f"{name:24} {n:8} {fails:10} {len(disagree):8} {secs:9.2f}")
        for d in disagree:
            print("   ", d)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
