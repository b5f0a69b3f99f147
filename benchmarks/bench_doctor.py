"""`rpathfix doctor` (and verify's grouped report) on the real PyTorch CUDA-13 stack: the split
per-wheel layout (as rules_python lays it out) and a pip venv, with what the real interpreter
does in each, timed beside the manual diagnosis (`ldd` on every shared object) in one run.

Usage (after `pip download torch==2.14.1 -d benchmarks/work/wh`):
    .venv/bin/python benchmarks/bench_doctor.py --wheels benchmarks/work/wh --work benchmarks/work

The split layout is bench_scan.py's per-wheel unzip; the pip venv is bench_verify.py's. The
line count of verify before this report existed is measured with main's sources
(`git archive main src`), when the repository has a `main` branch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scan import shared_objects, unpack_split
from bench_verify import pip_venv

PY = sys.executable
ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH", "VIRTUAL_ENV")}
    env["NO_COLOR"] = "1"
    env.update(extra)
    return env


def timed(cmd: list[str], env: dict[str, str], repeat: int, cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    times = []
    proc = None
    for _ in range(repeat):
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
        times.append(time.perf_counter() - t)
    assert proc is not None
    return statistics.median(times), proc


def old_verify_lines(work: Path, roots: list[str]) -> int | None:
    """verify's line count with main's sources (before grouped output)."""
    src = work / "main-src"
    if not src.exists():
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "main", "src"], capture_output=True)
        if archive.returncode != 0:
            return None
        src.mkdir()
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    proc = subprocess.run([PY, "-m", "rpathfix", "verify", *roots], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=str(src / "src")), cwd=work)
    return len(proc.stdout.splitlines())


def import_torch(python: str, env: dict[str, str]) -> str:
    p = subprocess.run([python, "-c", "import torch; print('import torch: ok', torch.__version__)"],
                       capture_output=True, text=True, env=env)
    last = (p.stderr.strip().splitlines() or [""])[-1]
    return p.stdout.strip() if p.returncode == 0 else f"import torch: FAILS ({last[:90]})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    work = a.work.resolve()
    split = unpack_split(a.wheels.resolve(), work)
    roots = sorted(str(p.relative_to(work)) for p in split.iterdir() if p.is_dir())
    venv = pip_venv(a.wheels.resolve(), work)
    # The interpreter of a split layout, as rules_python runs it: nothing installed, the
    # per-wheel directories on PYTHONPATH.
    bare = work / "barevenv"
    if not (bare / "bin" / "python").exists():
        subprocess.run([PY, "-m", "venv", "--without-pip", str(bare)], check=True)
    rf = [PY, "-m", "rpathfix"]
    split_env = clean_env(PYTHONPATH=":".join(str(work / r) for r in roots))

    runs = [
        ("verify --json, split (reference)", [*rf, "verify", "--json", *roots], clean_env()),
        ("verify, split (human)", [*rf, "verify", *roots], clean_env()),
        ("doctor, split (PATH...)", [*rf, "doctor", *roots], clean_env()),
        ("doctor, split (--python, PYTHONPATH)", [*rf, "doctor", "--python", str(bare / "bin" / "python")],
         split_env),
        ("doctor, pip venv (--python)", [*rf, "doctor", "--python", str(venv / "bin" / "python")], clean_env()),
    ]
    elfs = shared_objects(split)
    outputs = []
    print(f"{'job':40} {'median s':>9} {'exit':>5} {'lines':>6}")
    for label, cmd, env in runs:
        sec, proc = timed(cmd, env, a.repeat, work)
        outputs.append((label, cmd, proc))
        print(f"{label:40} {sec:9.2f} {proc.returncode:5d} {len(proc.stdout.splitlines()):6d}")
    sec, _ = timed(["ldd", *elfs], clean_env(), a.repeat, work)
    print(f"{'ldd on the ' + str(len(elfs)) + ' shared objects (split)':40} {sec:9.2f}")
    old = old_verify_lines(work, roots)
    if old is not None:
        print(f"verify, split, before the grouped report: {old} lines")
    print(f"real interpreter, split (PYTHONPATH): {import_torch(str(bare / 'bin' / 'python'), split_env)}")
    print(f"real interpreter, pip venv:           {import_torch(str(venv / 'bin' / 'python'), clean_env())}")
    print(f"load average during the run: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    for label, cmd, proc in outputs:
        if "--json" in cmd:
            continue
        words = [c if not c.startswith(str(work)) else os.path.relpath(c, work) for c in cmd[3:]]
        shown = " ".join(w for w in words if w not in roots) + (" unzipped/*" if roots[0] in words else "")
        env = "PYTHONPATH=<every unzipped/*> " if "--python" in words and "barevenv" in " ".join(words) else ""
        print(f"\n$ {env}rpathfix {shown}   # {label}; exit {proc.returncode}")
        print(proc.stdout.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
