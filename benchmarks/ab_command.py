"""A/B timing of one `rpathfix` command between source trees (code variants), ABBA.

Usage:
    git archive REV src | tar -x -C /tmp/old
    .venv/bin/python benchmarks/ab_command.py --rounds 8 new=src old=/tmp/old/src -- scan --json benchmarks/work/unzipped

Each variant runs `python -m rpathfix ARGS...` with PYTHONPATH=SRC (and a bytecode cache,
as bench_scan.py gives its children), alternating ABBA for --rounds rounds after one
warm-up run each. Prints, per variant, the best and median wall time and the best and
median CPU time (user + system of the child). On a loaded machine (other jobs on the two
cores) wall times spread widely; CPU time is the steadier figure to compare. ARGS may use
a shell-style glob (`"benchmarks/work/roots/*"`), expanded here in sorted order. A
command that exits non-zero (verify with errors) is timed all the same.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("variants", nargs="+", metavar="NAME=SRC")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="after --: the rpathfix command line")
    argv = sys.argv[1:]
    if "--" not in argv:
        ap.error("give the rpathfix command after --")
    cut = argv.index("--")
    a = ap.parse_args(argv[:cut])
    args = [x for arg in argv[cut + 1:] for x in (sorted(glob.glob(arg)) if "*" in arg else [arg])]
    variants = [(n, str(Path(s).resolve())) for n, _, s in (v.partition("=") for v in a.variants)]
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(Path("benchmarks/work/pycache").resolve()))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    wall: dict[str, list[float]] = {n: [] for n, _ in variants}
    cpu: dict[str, list[float]] = {n: [] for n, _ in variants}

    def run(name: str, src: str, record: bool = True) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rpathfix", *args], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=dict(env, PYTHONPATH=src))
        elapsed = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if record:
            wall[name].append(elapsed)
            cpu[name].append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)

    for n, s in variants:
        run(n, s, record=False)
    for i in range(a.rounds):
        for n, s in (variants + variants[::-1]) if i % 2 == 0 else (variants[::-1] + variants):
            run(n, s)
    print(f"rpathfix {' '.join(argv[cut + 1:])}  ({a.rounds} ABBA rounds; load average {os.getloadavg()[0]:.1f})")
    for n, _ in variants:
        w, c = wall[n], cpu[n]
        print(f"{n:8} wall best {min(w):.3f} median {statistics.median(w):.3f}   "
              f"cpu best {min(c):.3f} median {statistics.median(c):.3f}   (n={len(w)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
