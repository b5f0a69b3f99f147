"""Time `rpathfix scan` against readelf -dW, pyelftools, auditwheel's lddtree and LIEF.

Usage (the PyTorch CUDA-13 stack, as in benchmarks/README.md):
    pip download torch==2.14.1 -d benchmarks/work/wh
    .venv/bin/python benchmarks/bench_scan.py --wheels benchmarks/work/wh --work benchmarks/work

Each wheel is unzipped into its own directory (the split layout). Every tool reads the
same list of shared objects; each is timed as a fresh process (start-up included),
best of --repeat runs for the fast ones, after one warm-up run (warm page cache).
rpathfix walks the tree itself; the others are handed the file list.

Reference rows put the numbers in proportion: the interpreter's own start-up, rpathfix's
start-up (--version), and `find -type f -perm /111`, which like rpathfix lists the tree
and lstat()s every regular file (a file is a candidate when it has an exec bit), in C.

Child Pythons get a bytecode cache (PYTHONPYCACHEPREFIX=WORK/pycache, with
PYTHONDONTWRITEBYTECODE removed), as an installed package has its .pyc files; without
one every start-up compiles rpathfix from source. --no-bytecode-cache keeps the
environment as it is.
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


def timed(cmd: list[str], repeat: int, env: dict[str, str]) -> float:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--slow", action="store_true", help="also time lddtree and LIEF (tens of seconds)")
    ap.add_argument("--no-bytecode-cache", action="store_true",
                    help="run child Pythons in the environment as it is (see the module docstring)")
    a = ap.parse_args()
    env = dict(os.environ)
    if not a.no_bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str((a.work / "pycache").resolve())
    split = unpack_split(a.wheels, a.work)
    files = shared_objects(split)
    rpathfix = [PY, "-m", "rpathfix", "scan", "--json", str(split)]
    script = Path(PY).with_name("rpathfix")
    rows = [
        ("readelf -dW (file list given)", ["readelf", "-dW", *files], a.repeat),
        ("rpathfix scan --json (walks the tree)", rpathfix, a.repeat),
    ]
    if script.exists():
        rows.append(("  same, console script", [str(script), "scan", "--json", str(split)], a.repeat))
    rows += [
        ("pyelftools dynamic section", [PY, "-c", PYELFTOOLS, *files], 1),
        ("ref: python -c pass", [PY, "-c", "pass"], a.repeat),
        ("ref: python -S -c pass (no site)", [PY, "-S", "-c", "pass"], a.repeat),
        ("ref: python -m rpathfix --version", [PY, "-m", "rpathfix", "--version"], a.repeat),
        ("ref: find -type f -perm /111 (lstat all)", ["find", str(split), "-type", "f", "-perm", "/111"], a.repeat),
    ]
    if a.slow:
        rows += [("auditwheel lddtree", [PY, "-c", LDDTREE, *files], 1), ("LIEF parse", [PY, "-c", LIEF, *files], 1)]
    out = subprocess.run(rpathfix, check=True, capture_output=True, text=True, env=env).stdout
    import json

    scanned = len([f for f in json.loads(out)["files"] if f["format"] == "elf"])
    nfiles = sum(len(fs) for _, _, fs in os.walk(split))
    print(f"tree: {split} ({nfiles} files; {len(files)} ELF shared objects; rpathfix scan found {scanned} ELF files)")
    print(f"bytecode cache: {'as in the environment' if a.no_bytecode_cache else env['PYTHONPYCACHEPREFIX']}")
    print(f"{'tool':44} {'seconds':>8} {'x readelf':>9}")
    base = None
    for name, cmd, rep in rows:
        t = timed(cmd, rep, env)
        base = base or t
        print(f"{name:44} {t:8.3f} {t / base:9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
