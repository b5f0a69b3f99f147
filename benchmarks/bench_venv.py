"""The per-binary venv on the real PyTorch CUDA-13 stack, against pip and uv.

Usage (after `pip download torch==2.14.1 -d benchmarks/work/wh`):
    .venv/bin/python benchmarks/bench_venv.py --wheels benchmarks/work/wh --work benchmarks/work

Steps, each printed with its result:
1. `rpathfix unpack` every wheel into its own root (what rules_python's whl_library does; once).
2. Control: in the split layout (roots on PYTHONPATH) libtorch_cuda.so does not load with ctypes.
3. `rpathfix venv OUT ROOTS` against uv (`uv venv` + `uv pip install --no-index --find-links
   WHEELS torch==2.14.1` into a fresh venv from a warm cache; uv installed into
   benchmarks/work/uvtool), in alternating rounds (--rounds), each into a new directory,
   nothing deleted until all rounds are done; also --no-verify, a no-op re-run, and with
   --tmpfs both again with their outputs (and uv's cache) on /dev/shm.
4. Through OUT/bin/python, LD_LIBRARY_PATH unset: libtorch_cuda.so loads, `import torch` works,
   setuptools' distutils-precedence.pth ran, bin/torchrun runs, `rpathfix verify OUT` passes.
5. `import torch` time: rpathfix venv (the roots' hash-based .pyc), pip venv, and with no
   bytecode at all (an empty PYTHONPYCACHEPREFIX: every module compiles at start).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_verify import pip_venv

PY = sys.executable
# The command a user types: the console script beside this interpreter (no runpy), else -m.
_SCRIPT = Path(PY).parent / "rpathfix"
RPATHFIX = [str(_SCRIPT)] if _SCRIPT.exists() else [PY, "-m", "rpathfix"]
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
    ap.add_argument("--rounds", type=int, default=15, help="alternating uv / rpathfix rounds")
    ap.add_argument("--tmpfs", action="store_true", help="also time both with outputs (and uv's cache) on /dev/shm")
    ap.add_argument("--timing-only", action="store_true", help="stop after step 3 (repeat runs across the day)")
    ap.add_argument("--baseline-src", type=Path, help="also time an older rpathfix in the rounds: the src/ of a "
                    "checkout, e.g. `git archive 2c30b56 src | tar -x -C /tmp/old` then /tmp/old/src")
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
    uvtool = work / "uvtool"
    if not (uvtool / "bin" / "uv").exists():
        subprocess.run([PY, "-m", "venv", str(uvtool)], check=True)
        subprocess.run([str(uvtool / "bin" / "pip"), "install", "-q", "uv"], check=True)
    uv = str(uvtool / "bin" / "uv")
    target = work / "uvvenv"

    def rpathfix_venv(*extra: str, dest: Path = out) -> float:
        shutil.rmtree(dest, ignore_errors=True)
        t = time.perf_counter()
        p = run([*RPATHFIX, "venv", str(dest), *roots, *extra])
        took = time.perf_counter() - t
        assert p.returncode == 0, p.stderr
        return took

    def uv_install(dest: Path = target, env: dict[str, str] | None = None) -> float:
        shutil.rmtree(dest, ignore_errors=True)
        t = time.perf_counter()
        subprocess.run([uv, "venv", "-q", "--python", PY, str(dest)], check=True, capture_output=True, env=env)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(dest / "bin" / "python"), "--no-index",
                        "--find-links", str(a.wheels.resolve()), "torch==2.14.1"], check=True, capture_output=True,
                       env=env)
        return time.perf_counter() - t

    # Every timed run writes a fresh directory and nothing is deleted until all are done.
    # This ext4 has no journal, and without one ext4 does not reuse an inode deleted in the
    # last 60 s (300 s while its inode-table block is dirty): each new inode (a symlink, a
    # directory) first skips every recently deleted one. Deleting a venv (uv's holds 1,300
    # directories) right before the next run would slow that run's creations more and more.
    # The two tools still alternate, round by round, and are compared round by round.
    rounds_dir = work / "rounds"
    rounds_dir.mkdir(exist_ok=True)
    rounds_dir = Path(tempfile.mkdtemp(dir=rounds_dir))  # a leftover of an interrupted run is not touched
    rounds = []
    try:
        uv_install(rounds_dir / "uv-warm")  # warm uv's cache
        rpathfix_venv(dest=rounds_dir / "rf-warm")
        baseline: list[float] = []
        for i in range(a.rounds):
            rounds.append((uv_install(rounds_dir / f"uv-{i}"), rpathfix_venv(dest=rounds_dir / f"rf-{i}")))
            if a.baseline_src:
                t = time.perf_counter()
                p = run([PY, "-m", "rpathfix", "venv", str(rounds_dir / f"base-{i}"), *roots],
                        env={**os.environ, "PYTHONPATH": str(a.baseline_src.resolve())})
                assert p.returncode == 0, p.stderr
                baseline.append((time.perf_counter() - t) / rounds[-1][0])
        t_noverify = statistics.median(rpathfix_venv("--no-verify", dest=rounds_dir / f"nv-{i}")
                                       for i in range(a.repeat))
        rf_done = rounds_dir / "rf-0"
        t_noop = best(lambda: run([*RPATHFIX, "venv", str(rf_done), *roots]), a.repeat)
    finally:
        shutil.rmtree(rounds_dir, ignore_errors=True)
    ratios = sorted(r / u for u, r in rounds)
    t_uv = statistics.median(u for u, _ in rounds)
    t_build = statistics.median(r for _, r in rounds)
    print(f"3. {a.rounds} alternating rounds, medians: uv venv + uv pip install (warm cache) {t_uv:.3f} s; "
          f"rpathfix venv {t_build:.3f} s (checked before writing); rpathfix / uv per round: median "
          f"{statistics.median(ratios):.2f}, range {ratios[0]:.2f}-{ratios[-1]:.2f} (target <= 0.25)")
    print(f"   rpathfix venv --no-verify {t_noverify:.3f} s (median of {a.repeat}); re-run with nothing to do "
          f"{t_noop:.3f} s (best of {a.repeat})")
    if baseline:
        print(f"   baseline {a.baseline_src} / uv per round: median {statistics.median(baseline):.2f}")
    shm = Path("/dev/shm")
    if a.tmpfs and shm.is_dir():
        # Without the disk: OUT, and uv's cache and venv, on tmpfs (the roots stay where they are).
        shm_out = Path(tempfile.mkdtemp(dir=shm))
        try:
            uv_env = {**os.environ, "UV_CACHE_DIR": str(shm_out / "uvcache")}
            uv_install(shm_out / "uvvenv", uv_env)  # fills the tmpfs cache
            tm = [(uv_install(shm_out / f"uv-{i}", uv_env), rpathfix_venv(dest=shm_out / f"rf-{i}"))
                  for i in range(a.repeat)]
            print(f"   on tmpfs (no disk latency), medians of {a.repeat}: uv {statistics.median(u for u, _ in tm):.3f} s;"
                  f" rpathfix venv {statistics.median(r for _, r in tm):.3f} s")
        finally:
            shutil.rmtree(shm_out, ignore_errors=True)
    if a.timing_only:
        return 0
    rpathfix_venv()
    py = str(out / "bin" / "python")
    site = next(out.glob("lib/python*/site-packages"))
    lib = run([py, "-c", LOAD_CUDA, str(site / "torch" / "lib" / "libtorch_cuda.so")], env=env())
    checks = run([py, "-c", CHECKS], env=env())
    torchrun = run([str(out / "bin" / "torchrun"), "--help"], env=env())
    verified = run([PY, "-m", "rpathfix", "verify", str(out)])
    print(f"4. venv: {lib.stdout.strip() or 'FAILED ' + lib.stderr[-200:]}; {checks.stdout.strip() or checks.stderr[-300:]}"
          f"; bin/torchrun --help exit {torchrun.returncode}; rpathfix verify OUT: "
          f"{(verified.stdout.strip().splitlines() or ['?'])[-1]}")

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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
