"""Time `rpathfix unpack` against `uv pip install --offline --no-deps --compile-bytecode` from an
empty cache, side by side in one run, on the same wheels (issue 14, "Cold fetch"), and check
that the trees are the ones the code before this work wrote.

Usage (as in benchmarks/README.md):
    .venv/bin/python benchmarks/bench_unpack.py --wheels benchmarks/work/wh --work benchmarks/work/unpack \\
        --old e4a3e7b --rounds 2

Rows (each a fresh process, start-up included; rows rotate their order from round to round,
as other work on this 2-core machine comes and goes):
- uv: `uv pip install --offline --no-deps --compile-bytecode` into a fresh venv with a fresh,
  empty --cache-dir (uv unzips into its cache, links into the venv, compiles with one worker
  per core);
- rpathfix unpack: every wheel into its own root (RECORD hashes verified, checked-hash .pyc),
  with python-isal when it is installed, and with RPATHFIX_INFLATE=zlib;
- rpathfix unpack at --old REV (the code before this work, from `git archive`), one run.
SOURCE_DATE_EPOCH is set for every row (the roots' mtimes are part of what is compared).
rpathfix rows get `--python WORK/py/python3`, a symlink to this interpreter (the Bazel rule
always passes --python), so the markers, which name it, are comparable too.

Checks after the first round: every file of every root is compared with the old code's root
(mode and bytes); a .pyc whose bytes differ is loaded and its code object compared; the isal
and zlib roots must be identical. uv's .pyc are compared with ours: header flags (0: timestamp,
3: checked hash) and the file name compiled in.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import marshal
import os
import shutil
import stat
import statistics
import subprocess
import sys
from pathlib import Path

PY = sys.executable
BIN = Path(PY).parent
REPO = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RPATHFIX_INFLATE", "UV_CACHE_DIR")}
ENV["SOURCE_DATE_EPOCH"] = "315532800"


def run_isolated(cmd: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """(seconds, peak RSS in MB of the largest process, CPU seconds of all its processes) of
    `cmd`, run from a child Python of its own (RUSAGE_CHILDREN is then this command's alone)."""
    code = ("import json, resource, subprocess, sys, time\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
            "dt = time.perf_counter() - t\n"
            "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
            "print(json.dumps([dt, ru.ru_maxrss, ru.ru_utime + ru.ru_stime, p.returncode, p.stdout[-3000:]]))\n")
    raw = subprocess.run([PY, "-c", code, *cmd], capture_output=True, text=True, env=env).stdout
    dt, rss, cpu, rc, out = json.loads(raw)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed ({rc}):\n{out}")
    return dt, rss // 1024, cpu


def file_digest(p: str) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree(top: Path) -> dict[str, tuple[int, int, str | None]]:
    """relative path -> (mode, mtime, sha256 or None for a directory)."""
    out: dict[str, tuple[int, int, str | None]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            rel = os.path.relpath(p, top)
            out[rel] = (st.st_mode, int(st.st_mtime), None if stat.S_ISDIR(st.st_mode) else file_digest(p))
    return out


def same_code(a: Path, b: Path) -> bool:
    da, db = a.read_bytes(), b.read_bytes()
    return da[:16] == db[:16] and marshal.loads(da[16:]) == marshal.loads(db[16:])


def compare(new: Path, old: Path, label: str) -> None:
    ta, tb = tree(new), tree(old)
    differ = sorted(k for k in set(ta) | set(tb) if ta.get(k) != tb.get(k))
    pyc = [k for k in differ if k.endswith(".pyc") and k in ta and k in tb and ta[k][:2] == tb[k][:2]]
    other = [k for k in differ if k not in pyc]
    equal_code = sum(same_code(new / k, old / k) for k in pyc)
    n_pyc = sum(k.endswith(".pyc") for k in ta)
    print(f"  {label}: {len(ta)} entries; differ: {len(other)} non-pyc, {len(pyc)} of {n_pyc} .pyc "
          f"({equal_code} of those with equal code objects)")
    for k in other[:10]:
        print(f"    {k}: {ta.get(k)} vs {tb.get(k)}")


def pyc_summary(roots: Path, venv: Path) -> None:
    """Ours against uv's: the same .pyc names? header flags, the file name compiled in."""
    site = next(venv.glob("lib/python*/site-packages"))
    ours = {}
    for root in roots.iterdir():
        rs = root / "site-packages"
        if rs.is_dir():
            for p in rs.rglob("*.pyc"):
                ours[p.relative_to(rs).as_posix()] = p
    theirs = {p.relative_to(site).as_posix(): p for p in site.rglob("*.pyc")}
    both = sorted(set(ours) & set(theirs))
    flags = {}
    for k in both:
        fa = int.from_bytes(ours[k].read_bytes()[4:8], "little")
        fb = int.from_bytes(theirs[k].read_bytes()[4:8], "little")
        flags[(fa, fb)] = flags.get((fa, fb), 0) + 1
    same_bytes = sum(ours[k].read_bytes() == theirs[k].read_bytes() for k in both)
    sample = both[0] if both else None
    print(f"  .pyc: rpathfix {len(ours)}, uv {len(theirs)}, both {len(both)}, byte-identical {same_bytes}; "
          f"(our flags, uv flags): {flags}")
    if sample:
        ca = marshal.loads(ours[sample].read_bytes()[16:])
        cb = marshal.loads(theirs[sample].read_bytes()[16:])
        print(f"  {sample}: co_filename rpathfix {ca.co_filename!r}, uv {cb.co_filename!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheels", required=True, type=Path, help="directory of wheels (all *.whl are used)")
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--old", metavar="REV", help="also run (once) and compare with the code at this git revision")
    ap.add_argument("--only", metavar="SUBSTR", help="only wheels whose file name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the trees of the last round")
    args = ap.parse_args()
    wheels = sorted(str(p) for p in args.wheels.glob("*.whl") if not args.only or args.only in p.name)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = sum(os.path.getsize(w) for w in wheels)
    try:
        import isal  # noqa: F401
        have_isal = True
    except ImportError:
        have_isal = False
    print(f"{len(wheels)} wheels, {size / 1e9:.2f} GB; {os.cpu_count()} cores; python-isal: "
          f"{'yes' if have_isal else 'no'}")

    # rpathfix rows name the interpreter through a path of its own, as the Bazel rule does
    # (--python is the venv's interpreter): the code before this work compiled in a
    # subprocess then, and in-process only when --python was its own interpreter.
    py = work / "py" / "python3"
    py.parent.mkdir(exist_ok=True)
    if not py.is_symlink():
        py.symlink_to(PY)

    def uv_row(r: int) -> tuple[float, int, float]:
        venv, cache = work / f"uv-venv-{r}", work / f"uv-cache-{r}"
        for p in (venv, cache):
            shutil.rmtree(p, ignore_errors=True)
        subprocess.run([str(BIN / "uv"), "venv", "-q", "--offline", "--python", PY, str(venv)], check=True, env=ENV)
        cache.mkdir()
        return run_isolated([str(BIN / "uv"), "pip", "install", "-q", "--offline", "--no-deps", "--compile-bytecode",
                             "--cache-dir", str(cache), "--python", str(venv / "bin" / "python"), *wheels], ENV)

    def rp_row(into: Path, inflate: str | None, src: Path | None = None) -> tuple[float, int, float]:
        shutil.rmtree(into, ignore_errors=True)
        env = dict(ENV)
        if inflate:
            env["RPATHFIX_INFLATE"] = inflate
        if src is not None:
            env["PYTHONPATH"] = str(src)
        return run_isolated([PY, "-m", "rpathfix", "unpack", *wheels, "--into", str(into), "--python", str(py)], env)

    rows: dict[str, object] = {"uv pip install --compile-bytecode (empty cache)": lambda r: uv_row(r),
                               "rpathfix unpack, zlib": lambda r: rp_row(work / f"rp-zlib-{r}", "zlib")}
    if have_isal:
        rows["rpathfix unpack, python-isal"] = lambda r: rp_row(work / f"rp-isal-{r}", "isal")
    results: dict[str, list[tuple[float, int, float]]] = {k: [] for k in rows}
    old_src = None
    if args.old:
        old_src = work / "old-src"
        shutil.rmtree(old_src, ignore_errors=True)
        old_src.mkdir()
        tar = subprocess.run(["git", "-C", str(REPO), "archive", args.old, "src"], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=tar, check=True)
    names = list(rows)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            dt, rss, cpu = rows[name](r)  # type: ignore[operator]
            results[name].append((dt, rss, cpu))
            print(f"round {r + 1}: {name}: {dt:.1f} s, {cpu:.1f} CPU-s, {rss} MB; load {os.getloadavg()[0]:.1f}",
                  flush=True)
        if r == 0:
            if old_src is not None:
                dt, rss, cpu = rp_row(work / "rp-old", None, old_src / "src")
                results[f"rpathfix unpack before this work ({args.old})"] = [(dt, rss, cpu)]
                print(f"round 1: old: {dt:.1f} s, {cpu:.1f} CPU-s, {rss} MB", flush=True)
                compare(work / "rp-zlib-0", work / "rp-old", f"new (zlib) vs {args.old}")
                shutil.rmtree(work / "rp-old", ignore_errors=True)
            if have_isal:
                compare(work / "rp-isal-0", work / "rp-zlib-0", "isal vs zlib")
            pyc_summary(work / "rp-zlib-0", work / "uv-venv-0")
        if not (args.keep and r == args.rounds - 1):
            for p in work.iterdir():
                if p.name.endswith(f"-{r}"):
                    shutil.rmtree(p, ignore_errors=True)
    print()
    print("| row | seconds (each round) | median | CPU seconds (median) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|")
    for name, vals in results.items():
        med = statistics.median(dt for dt, _m, _c in vals)
        cpu = statistics.median(c for _d, _m, c in vals)
        print(f"| {name} | {', '.join(f'{dt:.1f}' for dt, _m, _c in vals)} | {med:.1f} | {cpu:.1f} | "
              f"{max(m for _d, m, _c in vals)} |")
    if old_src is not None:
        shutil.rmtree(old_src, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
