"""A/B timing of `rpathfix venv` between source trees (code variants), round by round.

Usage:
    git worktree add /tmp/old HEAD~1        # or: git archive REV src | tar -x -C /tmp/old
    .venv/bin/python -m compileall -q src /tmp/old/src
    .venv/bin/python benchmarks/ab_venv.py --roots benchmarks/work/roots new=src old=/tmp/old/src

Each variant runs `rpathfix venv` (the console entry, through PYTHONPATH=SRC) into a new
directory, the variants alternating (ABBA) for --rounds rounds after one warm-up round;
prints the median, quartiles and minimum wall time of each. Nothing is deleted until
all rounds are done (see README.md: on this VM, ext4 without a journal slows every inode
creation for minutes after a large delete), and with --keep not even then, so that runs
can follow each other; --after-delete N first creates and deletes N empty files, to time
the variants in that state on purpose.
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

ENTRY = "from rpathfix.cli import console; console()"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--roots", type=Path, required=True, help="the directory of distribution roots")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--after-delete", type=int, default=0, metavar="N")
    ap.add_argument("--keep", action="store_true", help="leave the venvs (their directory is printed)")
    ap.add_argument("variants", nargs="+", metavar="NAME=SRC")
    a = ap.parse_args()
    variants = [(n, str(Path(s).resolve())) for n, _, s in (v.partition("=") for v in a.variants)]
    roots = sorted(str(p) for p in a.roots.resolve().iterdir() if p.is_dir())
    work = Path(tempfile.mkdtemp(prefix="ab-", dir=a.roots.resolve().parent))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    times: dict[str, list[float]] = {n: [] for n, _ in variants}
    try:
        if a.after_delete:
            junk = work / "junk"
            junk.mkdir()
            for i in range(a.after_delete):
                (junk / str(i)).touch()
            shutil.rmtree(junk)
        for r in range(a.rounds + 1):
            for name, src in variants if r % 2 else variants[::-1]:
                cmd = [sys.executable, "-c", ENTRY, "venv", str(work / f"{name}-{r}"), *roots]
                t = time.perf_counter()
                p = subprocess.run(cmd, env={**env, "PYTHONPATH": src}, capture_output=True, text=True)
                took = time.perf_counter() - t
                if p.returncode != 0:
                    print(f"{name}: exit {p.returncode}: {p.stderr.strip()[-400:]}", file=sys.stderr)
                    return 1
                if r:  # round 0 warms the page cache
                    times[name].append(took * 1000)
    finally:
        if a.keep:
            print(f"venvs left in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4)
        print(f"{name:12s} median {statistics.median(ts):6.1f} ms  quartiles {q[0]:6.1f}-{q[2]:6.1f}  min {min(ts):6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
