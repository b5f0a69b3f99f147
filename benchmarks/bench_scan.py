"""Time `rpathfix scan` against readelf -dW, pyelftools, auditwheel's lddtree and LIEF.

Usage (the PyTorch CUDA-13 stack, as in benchmarks/README.md):
    pip download torch==2.14.1 -d benchmarks/work/wh
    .venv/bin/python benchmarks/bench_scan.py --wheels benchmarks/work/wh --work benchmarks/work

Each wheel is unzipped into its own directory (the split layout). Every tool reads the
same list of shared objects; each is timed as a fresh process (start-up included),
best of --repeat runs for the fast ones. rpathfix walks the tree itself; the others are
handed the file list.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

PY = sys.executable

PYELFTOOLS = """
import sys
from elftools.elf.elffile import ELFFile
from elftools.elf.dynamic import DynamicSection
for p in sys.argv[1:]:
    with open(p, 'rb') as f:
        e = ELFFile(f)
        for s in e.iter_sections():
            if isinstance(s, DynamicSection):
                [t.entry.d_tag for t in s.iter_tags()]
"""
LDDTREE = """
import sys
from auditwheel.lddtree import lddtree
for p in sys.argv[1:]:
    lddtree(p)
"""
LIEF = """
import sys, lief
lief.logging.disable()
for p in sys.argv[1:]:
    b = lief.parse(p)
    [e.tag for e in b.dynamic_entries]
"""


def unpack_split(wheels: Path, work: Path) -> Path:
    split = work / "unzipped"
    for whl in sorted(wheels.glob("*.whl")):
        dest = split / whl.name[: -len(".whl")]
        if dest.exists():
            continue
        tmp = dest.with_name(dest.name + ".tmp")
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(tmp)
        tmp.rename(dest)
    return split


def shared_objects(top: Path) -> list[str]:
    out = []
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            if (".so" in f) and os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        out.append(p)
    return sorted(out)


def timed(cmd: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slow", action="store_true", help="also time lddtree and LIEF (tens of seconds)")
    a = ap.parse_args()
    split = unpack_split(a.wheels, a.work)
    files = shared_objects(split)
    rpathfix = [PY, "-m", "rpathfix", "scan", "--json", str(split)]
    rows = [
        ("readelf -dW (file list given)", ["readelf", "-dW", *files], a.repeat),
        ("rpathfix scan --json (walks the tree)", rpathfix, a.repeat),
        ("pyelftools dynamic section", [PY, "-c", PYELFTOOLS, *files], 1),
    ]
    if a.slow:
        rows += [("auditwheel lddtree", [PY, "-c", LDDTREE, *files], 1), ("LIEF parse", [PY, "-c", LIEF, *files], 1)]
    out = subprocess.run(rpathfix, check=True, capture_output=True, text=True).stdout
    import json

    scanned = len([f for f in json.loads(out)["files"] if f["format"] == "elf"])
    print(f"tree: {split} ({len(files)} ELF shared objects; rpathfix scan found {scanned} ELF files)")
    print(f"{'tool':42} {'seconds':>8}")
    for name, cmd, rep in rows:
        print(f"{name:42} {timed(cmd, rep):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
