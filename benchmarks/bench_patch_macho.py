"""A Mach-O edit with re-signing on a real arm64 dylib, rpathfix against llvm-install-name-tool-14.

The file is libtorch_cpu.dylib (386 MB, ad-hoc signed, 16 KiB code pages) from the macOS
arm64 torch wheel. The edit is one --add-rpath and one --change. Each tool edits its own
fresh copy (copies made before the clock starts), in a fresh process, best of --repeat runs
with a warm page cache; peak RSS is the child's maximum RSS as GNU time reports it. Then both outputs are
checked: the signature with rpathfix.codesign.verify (every page hash), the load commands
with llvm-objdump-14 (the edited commands must be the same text in both).

Rows:
  rpathfix plan + writes   python -c: macho_write.plan_patch, then the planned writes into the
                           copy in place (what the apply step writes; it adds the crash-safe
                           copy and rename, whose cost is the `cp` reference row)
  rpathfix plan only       the pure planner alone (reads header, page 0, signature)
  rpathfix patch (CLI)     `python -m rpathfix patch --add-rpath ... --change ...`, when the
                           command exists on this branch
  llvm-install-name-tool   rewrites the whole file (and re-lays it out, see README)
  ref: cp                  copying the file once: the floor of any write-new-file-and-rename
  ref: python -c pass      interpreter start-up

Usage:
    pip download torch==2.14.1 --platform macosx_14_0_arm64 --only-binary=:all: --no-deps \\
        -d benchmarks/work/wh-mac
    .venv/bin/python benchmarks/bench_patch_macho.py --wheel benchmarks/work/wh-mac/torch-2.14.1-*.whl \\
        --work benchmarks/work
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from rpathfix.codesign import verify  # noqa: E402
from rpathfix.source import FileSource  # noqa: E402

PY = sys.executable
MEMBER = "torch/lib/libtorch_cpu.dylib"
ADD = "@loader_path/../../torch/.dylibs"
OLD, NEW = "@loader_path/libomp.dylib", "@rpath/libomp.dylib"
TOOL = shutil.which("llvm-install-name-tool-14") or "llvm-install-name-tool"
OBJDUMP = shutil.which("llvm-objdump-14") or "llvm-objdump"
TIME = "/usr/bin/time"  # GNU time (Debian package `time`)

PLAN_AND_WRITE = f"""
import os, sys
from rpathfix.macho_write import plan_patch
from rpathfix.model import Edit
from rpathfix.source import FileSource
path = sys.argv[1]
with FileSource(path) as src:
    patch = plan_patch(src, [Edit("add-rpath", {ADD!r}), Edit("change", {OLD!r}, {NEW!r})])
if sys.argv[2] == "write":
    fd = os.open(path, os.O_WRONLY)
    for off, data in patch.writes:
        os.pwrite(fd, data, off)
    os.close(fd)
print(sum(len(d) for _, d in patch.writes), len(patch.writes))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """(seconds, peak RSS in MB, stdout) of one child process, started through GNU time: a
    child forked straight from this process would count this process's RSS as its own
    (Linux carries the pre-exec high-water mark into ru_maxrss)."""
    t = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "maxrss_kb=%M", *cmd], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr}")
    rss_kb = int(re.findall(r"maxrss_kb=(\d+)", proc.stderr)[-1])
    return elapsed, rss_kb // 1024, proc.stdout


def edited_commands(path: Path) -> list[str]:
    out = subprocess.run([OBJDUMP, "--macho", "--private-headers", str(path)], capture_output=True, text=True,
                         check=True).stdout
    blocks = re.split(r"^(?=Load command \d+$)", out, flags=re.M)[1:]
    return [b.strip() for b in blocks if re.search(r"cmd (LC_RPATH|LC_\w*DYLIB)\b", b)]


def has_patch_command(env: dict[str, str]) -> bool:
    r = subprocess.run([PY, "-m", "rpathfix", "patch", "--help"], capture_output=True, env=env)
    return r.returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheel", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    work = args.work / "patch-macho"
    work.mkdir(parents=True, exist_ok=True)
    original = work / "orig" / "libtorch_cpu.dylib"
    if not original.exists():
        original.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(args.wheel) as zf, zf.open(MEMBER) as src, open(original, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    size = original.stat().st_size
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(args.work / "pycache")

    def fresh(name: str) -> Path:
        d = work / name
        d.mkdir(exist_ok=True)
        dst = d / original.name
        shutil.copyfile(original, dst)
        os.chmod(dst, 0o755)
        return dst

    rows: dict[str, list[tuple[float, int]]] = {}
    outputs: dict[str, Path] = {}
    cli = has_patch_command(env)
    for _ in range(args.repeat):
        target = fresh("ours")
        t, rss, out = run([PY, "-c", PLAN_AND_WRITE, str(target), "write"], env)
        rows.setdefault("rpathfix plan + writes", []).append((t, rss))
        outputs["rpathfix"] = target
        written = out.split()
        t, rss, _ = run([PY, "-c", PLAN_AND_WRITE, str(original), "plan"], env)
        rows.setdefault("rpathfix plan only", []).append((t, rss))
        if cli:
            target = fresh("cli")
            t, rss, _ = run([PY, "-m", "rpathfix", "patch", "--add-rpath", ADD, "--change", f"{OLD}={NEW}",
                             str(target)], env)
            rows.setdefault("rpathfix patch (CLI)", []).append((t, rss))
            outputs["cli"] = target
        target = fresh("llvm")
        t, rss, _ = run([TOOL, "-add_rpath", ADD, "-change", OLD, NEW, str(target)])
        rows.setdefault("llvm-install-name-tool-14", []).append((t, rss))
        outputs["llvm"] = target
        copy = work / "cp" / original.name
        copy.parent.mkdir(exist_ok=True)
        t, rss, _ = run(["cp", str(original), str(copy)])
        rows.setdefault("ref: cp (one full copy)", []).append((t, rss))
        t, rss, _ = run([PY, "-c", "pass"], env)
        rows.setdefault("ref: python -c pass", []).append((t, rss))

    print(f"libtorch_cpu.dylib: {size / 1e6:.0f} MB; rpathfix wrote {written[0]} bytes in {written[1]} writes")
    print(f"{'tool':32} {'best s':>8} {'median s':>9} {'peak RSS MB':>12}")
    for name, samples in rows.items():
        times = sorted(t for t, _ in samples)
        print(f"{name:32} {times[0]:8.3f} {times[len(times) // 2]:9.3f} {max(r for _, r in samples):12d}")

    print("\nchecks:")
    for name, path in outputs.items():
        start = time.perf_counter()
        with FileSource(str(path)) as src:
            (v,) = verify(src)
        print(f"  {name}: size {path.stat().st_size} ({path.stat().st_size - size:+d}), signature "
              f"{'valid' if v.ok else 'INVALID ' + '; '.join(v.problems)} (verify: {time.perf_counter() - start:.2f} s)")
    ours, theirs = edited_commands(outputs["rpathfix"]), edited_commands(outputs["llvm"])
    print(f"  edited load commands identical to llvm's: {ours == theirs} ({len(ours)} commands)")
    assert ours != edited_commands(original)
    changed = sum(1 for a, b in zip(original.read_bytes(), outputs["rpathfix"].read_bytes()) if a != b) \
        if size < 64 << 20 else None
    if changed is not None:
        print(f"  bytes changed by rpathfix: {changed}")


if __name__ == "__main__":
    main()
