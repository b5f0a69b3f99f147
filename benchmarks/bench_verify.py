"""`rpathfix verify` on the real PyTorch CUDA-13 stack: the split per-wheel layout (errors
expected: torch's CUDA libraries are out of reach) and a pip-installed venv (no errors),
each checked against the real interpreter importing torch, and timed.

Usage (after `pip download torch==2.14.1 -d benchmarks/work/wh`):
    .venv/bin/python benchmarks/bench_verify.py --wheels benchmarks/work/wh --work benchmarks/work

The pip venv is made once (benchmarks/work/pipvenv, about a minute); the split layout is
the per-wheel unzip that bench_scan.py makes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import unpack_split

PY = sys.executable


def pip_venv(wheels: Path, work: Path) -> Path:
    venv = work / "pipvenv"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-index", "--find-links", str(wheels),
                        "torch==2.14.1"], check=True)
        (venv / ".complete").write_text("")
    return venv


def timed_verify(paths: list[str], repeat: int, *extra: str) -> tuple[float, dict]:  # type: ignore[type-arg]
    best = float("inf")
    doc: dict = {}  # type: ignore[type-arg]
    for _ in range(repeat):
        t = time.perf_counter()
        out = subprocess.run([PY, "-m", "rpathfix", "verify", "--json", *extra, *paths], capture_output=True,
                             text=True)
        best = min(best, time.perf_counter() - t)
        doc = json.loads(out.stdout)
    return best, doc


# torch/__init__.py preloads the nvidia libraries it finds on sys.path (_preload_cuda_deps),
# which hides the broken layout from `import torch`; loading torch's _C extension with ctypes
# asks ld.so alone, which is what rpathfix verify models.
LOAD_C = """
import ctypes, glob, importlib.util, os
spec = importlib.util.find_spec('torch')
ext = glob.glob(os.path.join(os.path.dirname(spec.origin), '_C.*.so'))[0]
ctypes.CDLL(ext)
print('loads')
"""


def real_load(python: str, pythonpath: str | None, code: str) -> tuple[bool, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    p = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env)
    last = (p.stderr.strip().splitlines() or [""])[-1]
    return p.returncode == 0, (p.stdout.strip() if p.returncode == 0 else last)[:100]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    split = unpack_split(a.wheels, a.work)
    roots = sorted(str(p) for p in split.iterdir() if p.is_dir())
    venv = pip_venv(a.wheels, a.work)
    print(f"{'layout':24} {'seconds':>8} {'no-sym s':>8} {'checked':>8} {'errors':>7} {'warnings':>8}  "
          "real ld.so: ctypes.CDLL(torch/_C) | import torch (with torch's preload hack)")
    for name, paths, python, pp in (
        ("split per-wheel layout", roots, PY, ":".join(roots)),
        ("pip-installed venv", [str(venv)], str(venv / "bin" / "python"), None),
    ):
        secs, doc = timed_verify(paths, a.repeat)
        plain, _doc = timed_verify(paths, a.repeat, "--no-symbols")  # without symbol binding, same run
        c_ok, c_msg = real_load(python, pp, LOAD_C)
        t_ok, t_msg = real_load(python, pp, "import torch; print(torch.__version__)")
        print(f"{name:24} {secs:8.3f} {plain:8.3f} {doc['checked']:8} {len(doc['errors']):7} {len(doc['warnings']):8}  "
              f"{c_msg if c_ok else 'FAILS: ' + c_msg} | {t_msg if t_ok else 'FAILS: ' + t_msg}")
        missing = sorted({e["name"] for e in doc["errors"]})
        if missing:
            print(f"{'':24} verify's errors name: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
