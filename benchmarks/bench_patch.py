"""Time `rpathfix patch` against patchelf and LIEF making the same RPATH edit of the real
libtorch_cuda.so (503 MB), side by side in one run.

Usage (as in benchmarks/README.md):
    pip download torch==2.14.1 --no-deps -d benchmarks/work/wh
    .venv/bin/python benchmarks/bench_patch.py --wheels benchmarks/work/wh --work benchmarks/work

The library is unpacked once from the wheel (only that member). Every run edits a fresh
copy of it (the copy is not timed) after `sync`, so no tool pays for flushing another's
dirty pages; every tool is a fresh process (start-up included) and its peak RSS is the
child's own (GNU time's %M). The median of --repeat runs is shown, after one warm-up run of each.

The edits, each made by all three tools to the same result (patchelf with --force-rpath,
so that it keeps DT_RPATH as the others do; without it patchelf turns it into DT_RUNPATH):
- fits, remove: one entry of the DT_RPATH list goes;
- fits, replace: one entry becomes another of the same length;
- grows: a new 35-byte entry is appended (no room in the old string);
- grows, hard-linked: the same, on a file with a second hard link (rpathfix writes a new
  file so that the other link keeps the old bytes; patchelf and LIEF do what they always do).

Rows marked "in process" time only rpathfix's plan and apply inside the child (no
interpreter start-up, no imports): the cost of the work itself.
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
import zipfile
from pathlib import Path

PY = sys.executable
MEMBER = "torch/lib/libtorch_cuda.so"
PATCHELF = str(Path(PY).with_name("patchelf"))

LIEF = """
import sys, lief
lief.logging.disable()
path, value = sys.argv[1], sys.argv[2]
b = lief.parse(path)
for e in b.dynamic_entries:
    if e.tag == lief.ELF.DynamicEntry.TAG.RPATH:
        e.rpath = value
b.write(path + ".lief")
"""
IN_PROCESS = """
import os, sys, time
from rpathfix.elf_write import plan_patch
from rpathfix.model import Edit
from rpathfix.patch import apply
from rpathfix.source import FileSource
path, op, arg, new = sys.argv[1:5]
t = time.perf_counter()
st = os.stat(path)
with FileSource(path) as s:
    patch = plan_patch(s, [Edit(op, arg, new)])
apply(path, patch, expect=st)
print(time.perf_counter() - t)
"""


def extract(wheels: Path, work: Path) -> Path:
    out = work / "patch" / "libtorch_cuda.so.orig"
    if out.exists():
        return out
    whl = next(iter(sorted(wheels.glob("torch-*.whl"))), None)
    if whl is None:
        sys.exit(f"no torch wheel in {wheels}: pip download torch==2.14.1 --no-deps -d {wheels}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as zf, zf.open(MEMBER) as src, open(str(out) + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    os.chmod(str(out) + ".tmp", 0o755)
    os.rename(str(out) + ".tmp", out)
    return out


def rpath_of(path: Path) -> tuple[str, str]:
    """(tag, value) of the path list, as readelf shows it."""
    out = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        for tag in ("RPATH", "RUNPATH"):
            if f"({tag})" in line:
                return tag, line.rsplit("[", 1)[1].rstrip("]")
    return "", ""


TIME = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one child process. The peak RSS comes from
    GNU time when there is one: a child forked from this (larger) process counts this
    process's pages until it execs, which wait4's figure would include."""
    wrapped = [TIME, "-f", "%M", *cmd] if TIME else cmd
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        proc = subprocess.Popen(wrapped, env=env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        errors = err.read().decode()
        if proc.returncode != 0:
            sys.exit(f"{cmd} failed: {errors}")
        rss = int(errors.split()[-1]) / 1024 if TIME else usage.ru_maxrss / 1024
        out.seek(0)
        return seconds, rss, out.read().decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    orig = extract(args.wheels, args.work)
    target = args.work / "patch" / "libtorch_cuda.so"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(args.work / "pycache")
    tag, old = rpath_of(orig)
    assert tag == "RPATH", (tag, old)
    entries = old.split(":")
    gone = "$ORIGIN/../../nvidia/nccl/lib"
    swapped = ("$ORIGIN/../../nvidia/cu13/lib", "$ORIGIN/../../nvidia/cu12/lib")
    added = "$ORIGIN/../../nvidia/cusparse/lib"
    edits = {
        "fits, remove": (("remove-rpath", gone, ""), ":".join(e for e in entries if e != gone)),
        "fits, replace": (("replace-rpath", *swapped), ":".join(swapped[1] if e == swapped[0] else e for e in entries)),
        "grows": (("add-rpath", added, ""), old + ":" + added),
        "grows, hard-linked": (("add-rpath", added, ""), old + ":" + added),
    }
    print(f"# {orig.stat().st_size:,} bytes, DT_RPATH {len(old)} bytes; median of {args.repeat} runs, fresh copy + sync each")
    print("| edit | tool | seconds | peak RSS MB | size change | tag after |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for name, ((op, arg, new), expect) in edits.items():
        cli_arg = f"{arg}={new}" if op == "replace-rpath" else arg
        tools = {
            "rpathfix patch": [PY, "-m", "rpathfix", "patch", str(target), f"--{op}", cli_arg],
            "rpathfix (in process)": [PY, "-c", IN_PROCESS, str(target), op, arg, new],
            "patchelf 0.19": [PATCHELF, "--force-rpath", "--set-rpath", expect, str(target)],
            "LIEF 1.0": [PY, "-c", LIEF, str(target), expect],
        }
        for tool, cmd in tools.items():
            times, rss, inner = [], [], []
            for i in range(args.repeat + 1):
                shutil.copy2(orig, target)
                link = target.with_name("hardlink")
                if link.exists():
                    link.unlink()
                if "hard-linked" in name:
                    os.link(target, link)
                os.sync()
                seconds, mb, out = timed(cmd, env)
                result = Path(str(target) + ".lief") if tool.startswith("LIEF") else target
                got = rpath_of(result)
                assert got[1] == expect, (tool, name, got)
                size = result.stat().st_size - orig.stat().st_size
                if i:  # the first run warms caches
                    times.append(seconds)
                    rss.append(mb)
                    if tool.endswith("(in process)"):
                        inner.append(float(out))
                if result != target:
                    result.unlink()
            shown = statistics.median(inner) if inner else statistics.median(times)
            print(f"| {name} | {tool} | {shown:.4f} | {statistics.median(rss):.1f} | {size:+,} | {got[0]} |",
                  flush=True)
    for ref, cmd in (("ref: python -c pass", [PY, "-c", "pass"]),
                     ("ref: python -m rpathfix --version", [PY, "-m", "rpathfix", "--version"])):
        runs = [timed(cmd, env) for _ in range(args.repeat + 1)][1:]
        print(f"| - | {ref} | {statistics.median(r[0] for r in runs):.4f} | "
              f"{statistics.median(r[1] for r in runs):.1f} | | |")
    for p in (target, target.with_name("hardlink")):
        if p.exists():
            p.unlink()


if __name__ == "__main__":
    main()
