"""The per-binary venv on the real PyTorch CUDA-13 stack, against pip and uv.

Usage (after `pip download torch==2.14.1 -d benchmarks/work/wh`):
    .venv/bin/python benchmarks/bench_venv.py --wheels benchmarks/work/wh --work benchmarks/work

Steps, each printed with its result:
1. `rpathfix unpack` every wheel into its own root (what rules_python's whl_library does; once).
2. Control: in the split layout (roots on PYTHONPATH) libtorch_cuda.so does not load with ctypes.
3. `rpathfix venv OUT ROOTS` (timed, fresh OUT each run, best of --repeat; also --no-verify).
4. Through OUT/bin/python, LD_LIBRARY_PATH unset: libtorch_cuda.so loads, `import torch` works,
   setuptools' distutils-precedence.pth ran, bin/torchrun runs.
5. `import torch` time: rpathfix venv (the roots' hash-based .pyc), pip venv, and with no
   bytecode at all (an empty PYTHONPYCACHEPREFIX: every module compiles at start).
6. uv: `uv venv` + `uv pip install --no-index --find-links WHEELS torch==2.14.1` into a fresh
   venv from a warm cache (best of --repeat), uv installed into benchmarks/work/uvtool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_verify import pip_venv

PY = sys.executable
LOAD_CUDA = "import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('libtorch_cuda.so loaded')"
CHECKS = ("import sys, torch; print('torch', torch.__version__, 'cuda build', torch.version.cuda, "
          "'| .pth ran:', '_distutils_hack' in sys.modules)")


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONPYCACHEPREFIX")}
    e["PYTHONDONTWRITEBYTECODE"] = "1"  # as on this machine, and as in a read-only runfiles tree
    e.update(extra)
    return e


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    work = a.work.resolve()
    wheels = sorted(str(p) for p in a.wheels.resolve().glob("*.whl"))
    roots_dir = work / "roots"
    t = time.perf_counter()
    p = run([PY, "-m", "rpathfix", "unpack", *wheels, "--into", str(roots_dir)])
    assert p.returncode == 0, p.stderr
    print(f"1. unpack {len(wheels)} wheels into roots: {time.perf_counter() - t:.1f} s "
          "(once per wheel; 'up to date' when already there)")
    roots = sorted(str(r) for r in roots_dir.iterdir() if not r.name.startswith("."))
    torch_root = next(r for r in roots if r.endswith("/torch"))
    split_lib = f"{torch_root}/site-packages/torch/lib/libtorch_cuda.so"
    split = run([PY, "-c", LOAD_CUDA, split_lib],
                env=env(PYTHONPATH=":".join(f"{r}/site-packages" for r in roots)))
    print(f"2. split layout, ctypes.CDLL(libtorch_cuda.so): {'loads (unexpected!)' if split.returncode == 0 else 'FAILS'}"
          f" -- {(split.stderr.strip().splitlines() or [''])[-1][:120]}")

    out = work / "rfvenv"

    def build(*extra: str) -> None:
        shutil.rmtree(out, ignore_errors=True)
        p = run([PY, "-m", "rpathfix", "venv", str(out), *roots, *extra])
        assert p.returncode == 0, p.stderr

    t_build = best(build, a.repeat)
    t_noverify = best(lambda: build("--no-verify"), a.repeat)
    build()
    t_noop = best(lambda: run([PY, "-m", "rpathfix", "venv", str(out), *roots]), a.repeat)
    print(f"3. rpathfix venv: {t_build:.3f} s (verified before and after); --no-verify {t_noverify:.3f} s; "
          f"re-run with nothing to do {t_noop:.3f} s")
    py = str(out / "bin" / "python")
    site = next(out.glob("lib/python*/site-packages"))
    lib = run([py, "-c", LOAD_CUDA, str(site / "torch" / "lib" / "libtorch_cuda.so")], env=env())
    checks = run([py, "-c", CHECKS], env=env())
    torchrun = run([str(out / "bin" / "torchrun"), "--help"], env=env())
    print(f"4. venv: {lib.stdout.strip() or 'FAILED ' + lib.stderr[-200:]}; {checks.stdout.strip() or checks.stderr[-300:]}"
          f"; bin/torchrun --help exit {torchrun.returncode}")

    pipv = pip_venv(a.wheels.resolve(), work)
    with tempfile.TemporaryDirectory() as empty:
        rows = [
            ("rpathfix venv (roots' .pyc)", [py, "-c", "import torch"], env()),
            ("pip-installed venv", [str(pipv / "bin" / "python"), "-c", "import torch"], env()),
            ("rpathfix venv, no bytecode", [py, "-c", "import torch"], env(PYTHONPYCACHEPREFIX=empty)),
        ]
        print("5. import torch (best of 3):")
        for name, cmd, e in rows:
            secs = best(lambda cmd=cmd, e=e: run(cmd, env=e), 3)
            print(f"     {name:32} {secs:6.2f} s")

    uvtool = work / "uvtool"
    if not (uvtool / "bin" / "uv").exists():
        subprocess.run([PY, "-m", "venv", str(uvtool)], check=True)
        subprocess.run([str(uvtool / "bin" / "pip"), "install", "-q", "uv"], check=True)
    uv = str(uvtool / "bin" / "uv")
    target = work / "uvvenv"

    def uv_install() -> None:
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([uv, "venv", "-q", "--python", PY, str(target)], check=True, capture_output=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(target / "bin" / "python"), "--no-index",
                        "--find-links", str(a.wheels.resolve()), "torch==2.14.1"], check=True, capture_output=True)

    uv_install()  # warm the cache
    t_uv = best(uv_install, a.repeat)
    print(f"6. uv venv + uv pip install (warm cache): {t_uv:.3f} s; rpathfix venv / uv = {t_build / t_uv:.2f} "
          f"(target <= 0.25)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
