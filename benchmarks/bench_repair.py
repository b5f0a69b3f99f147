"""Time `rpathfix repair` against `auditwheel repair --exclude ...` on the real
onnxruntime-gpu 1.31.1 wheel (256 MB; its 284 MB CUDA provider has no RPATH), side by side in
one run, and show `ldd` of the provider before and after.

Usage (as in benchmarks/README.md):
    pip download onnxruntime-gpu==1.31.1 --no-deps -d benchmarks/work/wh-ort
    pip download nvidia-cublas==13.1.1.3 nvidia-cuda-runtime==13.0.96 nvidia-curand==10.4.0.35 \\
        --no-deps -d benchmarks/work/wh          # or hard-link torch's CUDA 13 wheels there
    .venv/bin/python benchmarks/bench_repair.py --ort benchmarks/work/wh-ort --wheels benchmarks/work/wh \\
        --work benchmarks/work/repair

Rows (each a fresh process: start-up included; peak RSS is the child's own, from wait4):
- rpathfix repair, siblings as wheels: the three nvidia wheels read in place (their
  libraries' headers are inflated from the wheels: 730 MB of the 1 GB this row inflates);
- rpathfix repair, siblings as roots: the same wheels unpacked once by `rpathfix unpack`
  (what a Bazel or rules_python workspace already has); the unpack is not timed;
- the same with the whole patched member deflated again (RPATHFIX_NO_SPLICE=1, level 1):
  what splicing the deflate stream saves;
- auditwheel repair --exclude for every CUDA, cuDNN and TensorRT library (what it would
  otherwise try to vendor), --plat manylinux_2_28_x86_64: the peer tool.
The TensorRT provider needs libnvinfer/libnvonnxparser/libcudnn, which no wheel here provides:
rpathfix runs with --allow-unresolved (it repairs what the siblings serve and says so).
Median of --repeat runs for rpathfix (after one warm-up), one run of auditwheel.
Every rpathfix output is checked: `unzip -t`, `wheel unpack` (RECORD hashes), `twine check`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

PY = sys.executable
BIN = Path(PY).parent
PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
SIBLINGS = ("nvidia_cublas-13", "nvidia_cuda_runtime-13", "nvidia_curand-10")
# What auditwheel must not vendor: the CUDA 13 wheels' libraries, the driver's, cuDNN's and
# TensorRT's (the last two are in no wheel given here; without --exclude it stops on them).
EXCLUDE = ("libcublasLt.so.13", "libcublas.so.13", "libcurand.so.10", "libcudart.so.13", "libcufft.so.12",
           "libcuda.so.1", "libcudnn.so.9", "libnvinfer.so.10", "libnvonnxparser.so.10",
           "libnvinfer_plugin.so.10", "libnvrtc.so.13")
# PYTHONDONTWRITEBYTECODE is dropped (as the other benchmarks here do): the warm-up run writes
# rpathfix's .pyc files, as an installed package has them (auditwheel's came with pip).
CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}


def timed(cmd: list[str], repeat: int, env: dict[str, str] | None = None, before=None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    times, peaks = [], []
    for i in range(repeat + 1):
        if before is not None:
            before()
        subprocess.run(["sync"], check=True)
        dt, rss, _out = run_isolated(cmd, env)
        if i:  # the first is a warm-up
            times.append(dt)
            peaks.append(rss)
    return statistics.median(times), max(peaks)


def run_isolated(cmd: list[str], env: dict[str, str] | None) -> tuple[float, int, str]:
    """run() in a child Python of its own, so RUSAGE_CHILDREN is this command's alone."""
    code = ("import json, os, subprocess, sys, time, resource\n"
            "t = time.perf_counter()\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
            "dt = time.perf_counter() - t\n"
            "print(json.dumps([dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode,"
            " p.stdout]))\n")
    import json

    raw = subprocess.run([PY, "-c", code, *cmd], capture_output=True, text=True, env=env or CLEAN).stdout
    dt, rss, rc, out = json.loads(raw)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed ({rc}):\n{out}")
    return dt, rss // 1024, out


def check_wheel(path: Path, work: Path) -> None:
    """The repaired wheel is valid: unzip -t, wheel unpack (RECORD), twine check."""
    assert subprocess.run(["unzip", "-tq", str(path)], capture_output=True).returncode == 0, "unzip -t"
    dest = work / "unpacked"
    shutil.rmtree(dest, ignore_errors=True)
    r = subprocess.run([PY, "-m", "wheel", "unpack", "-d", str(dest), str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(dest)
    r = subprocess.run([str(BIN / "twine"), "check", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def ldd(wheels: list[Path], target: Path) -> str:
    """`ldd` of the provider after pip installs these wheels into `target` (no deps)."""
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--isolated", "--no-deps", "--no-index", "--target",
                    str(target), *map(str, wheels)], check=True, env=CLEAN)
    out = subprocess.run(["ldd", str(target / PROVIDER)], capture_output=True, text=True, env=CLEAN).stdout
    keep = ("cublas", "curand", "cudart", "libcuda.")
    return "\n".join(line.replace(str(target), "SITE") for line in out.splitlines() if any(k in line for k in keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ort", type=Path, required=True, help="directory holding onnxruntime_gpu-1.31.1-*.whl")
    ap.add_argument("--wheels", type=Path, required=True, help="directory holding the nvidia CUDA 13 wheels")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-auditwheel", action="store_true")
    args = ap.parse_args()
    ort = next(args.ort.glob("onnxruntime_gpu-1.31.1-*.whl"))
    sibs = [next(args.wheels.glob(f"{s}*.whl")) for s in SIBLINGS]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    roots = work / "roots"
    if not roots.is_dir():
        subprocess.run([PY, "-m", "rpathfix", "unpack", *map(str, sibs), "--into", str(roots)], check=True)
    root_dirs = [str(p) for p in sorted(roots.iterdir()) if not p.name.startswith(".")]
    out = work / "out"

    def clean_out() -> None:
        shutil.rmtree(out, ignore_errors=True)

    rf = [PY, "-m", "rpathfix", "repair", str(ort), "--allow-unresolved", "--out", str(out), "--with"]
    rows = []
    print(f"{ort.name}: {ort.stat().st_size / 1e6:.0f} MB", flush=True)
    rows.append(("rpathfix repair, siblings as wheels", *timed(rf + list(map(str, sibs)), args.repeat,
                                                                 before=clean_out)))
    repaired = next(out.glob("*.whl"))
    check_wheel(repaired, work)
    rows.append(("rpathfix repair, siblings as unpacked roots", *timed(rf + root_dirs, args.repeat, before=clean_out)))
    check_wheel(next(out.glob("*.whl")), work)
    no_splice = {**CLEAN, "RPATHFIX_NO_SPLICE": "1"}
    rows.append(("same, member deflated whole (no splice)", *timed(rf + root_dirs, 1, env=no_splice,
                                                                   before=clean_out)))
    check_wheel(next(out.glob("*.whl")), work)
    clean_out()
    run_isolated(rf + root_dirs, None)
    made = next(out.glob("*.whl"))
    (work / "kept").mkdir(exist_ok=True)
    kept = work / "kept" / made.name
    shutil.copy(made, kept)
    sizes = {"input": ort.stat().st_size, "rpathfix": kept.stat().st_size}
    if not args.no_auditwheel:
        aw_out = work / "auditwheel"
        shutil.rmtree(aw_out, ignore_errors=True)
        cmd = [str(BIN / "auditwheel"), "repair", str(ort), "-w", str(aw_out), "--plat", "manylinux_2_28_x86_64"]
        for e in EXCLUDE:
            cmd += ["--exclude", e]
        env = {**CLEAN, "PATH": f"{BIN}:{CLEAN.get('PATH', '')}"}
        dt, rss, _o = run_isolated(cmd, env)
        rows.append(("auditwheel repair --exclude ... (1 run)", dt, rss))
        aw = next(aw_out.glob("*.whl"))
        sizes["auditwheel"] = aw.stat().st_size
    print("\n| tool | seconds | peak RSS (MB) |\n|---|---:|---:|")
    for name, dt, rss in rows:
        print(f"| {name} | {dt:.2f} | {rss} |")
    print("\nsizes (MB): " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in sizes.items()))
    print("\nldd before (pip install of the original and the siblings, LD_LIBRARY_PATH unset):")
    print(ldd([ort, *sibs], work / "site-before"))
    print("\nldd after (the repaired wheel instead):")
    print(ldd([kept, *sibs], work / "site-after"))
    for d in ("site-before", "site-after"):
        shutil.rmtree(work / d, ignore_errors=True)


if __name__ == "__main__":
    main()
