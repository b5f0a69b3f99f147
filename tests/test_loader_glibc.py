"""The glibc model against the real ld.so: every scenario runs both, and they must agree
on every resolution (ldd for closures; a real interpreter with ctypes for dlopen)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rpathfix.fstree import CachedTree, RealTree
from rpathfix.hwcaps import parse_hwcaps_help
from rpathfix.loader_glibc import GlibcProcess, host_options, load_elf, started
from rpathfix.resolution import LoadResult


def cc(d: Path, name: str, needs: tuple[str, ...] = (), *, rpath: str | None = None, runpath: str | None = None,
       soname: str | None = None, libdirs: tuple[Path, ...] = ()) -> Path:
    """A real shared library built with gcc (DT_NEEDED kept even when unused)."""
    d.mkdir(parents=True, exist_ok=True)
    src = d / f"{name}.c"
    src.write_text(f"int f_{re.sub(r'[^A-Za-z0-9]', '_', name)}(void) {{ return 1; }}\n")
    cmd = ["gcc", "-shared", "-fPIC", "-o", str(d / name), str(src), f"-Wl,-soname,{soname or name}",
           "-Wl,--no-as-needed"]
    for ld in (d, *libdirs):
        cmd.append(f"-L{ld}")
    cmd += [f"-l:{n}" for n in needs]
    if rpath is not None:
        cmd += ["-Wl,--disable-new-dtags", f"-Wl,-rpath,{rpath}"]
    if runpath is not None:
        cmd += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
    subprocess.run(cmd, check=True, capture_output=True)
    src.unlink()
    return d / name


def real_ldd(path: Path, llp: str | None = None, cwd: Path | None = None) -> list[tuple[str, str | None]]:
    """(name, path) rows of the real ldd, without vdso and the interpreter line."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if llp is not None:
        env["LD_LIBRARY_PATH"] = llp
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env, cwd=cwd).stdout
    rows: list[tuple[str, str | None]] = []
    for line in out.splitlines():
        m = re.match(r"\s+(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))$", line)
        if m:
            rows.append((m.group(1), None if m.group(2) == "not found" else m.group(3)))
            continue
        # "name (0x...)": the object was opened under exactly the name it was asked for
        # (a name with a slash, or a relative search path); skip the vdso and ld.so itself.
        m = re.match(r"\s+(\S+) \(0x[0-9a-f]+\)$", line)
        if m and not m.group(1).startswith("linux-vdso") and "/ld-linux" not in m.group(1):
            rows.append((m.group(1), m.group(1)))
    return rows


def model_rows(result: LoadResult) -> list[tuple[str, str | None]]:
    """The model's closure in ldd's terms: a name with a slash is shown by its expanded path."""
    rows: list[tuple[str, str | None]] = []
    seen = set()
    for r in result.resolutions:
        if r.found_via in ("loaded", "driver"):
            continue
        row = (r.path, r.path) if "/" in r.name and r.path is not None else (r.name, r.path)
        if row not in seen:
            seen.add(row)
            rows.append(row)
    return rows


def agree(path: Path, llp: str | None = None) -> list[tuple[str, str | None]]:
    ours = model_rows(load_elf(RealTree(), str(path), host_options(ld_library_path=llp)))
    assert ours == real_ldd(path, llp), path
    return ours


# ------------------------------------------------------------------ the stub wheels


def test_every_stub_library_split_layout(stub_tree: Path) -> None:
    libs = [p for p in sorted(stub_tree.rglob("*.so*")) if p.read_bytes()[:4] == b"\x7fELF"]
    assert len(libs) >= 15
    missing = 0
    for lib in libs:
        missing += sum(1 for _, p in agree(lib) if p is None)
    assert missing > 0, "the split layout must miss cross-wheel libraries (control)"


def test_merged_layout_finds_everything_through_rpath(stub_tree: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for dist in ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink"):
        shutil.copytree(stub_tree / dist, site, dirs_exist_ok=True, symlinks=True)
    ext = next((site / "torchstub").glob("_C.*.so"))
    rows = agree(ext)
    assert all(p is not None for _, p in rows)
    assert ("libxcublasLt.so.13", str(site / "torchstub/lib/../../nvidia/cu13/lib/libxcublasLt.so.13")) in rows


def test_forked_interpreter_answers_as_a_fresh_process(stub_tree: Path, tmp_path: Path) -> None:
    """verify starts the interpreter once and forks it per module, sharing search results
    between forks: every module's load must still equal a fresh process's, in any order
    (no fork may see what another one loaded)."""
    site = tmp_path / "site-packages"
    for dist in ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink", "onnxstub"):
        shutil.copytree(stub_tree / dist, site, dirs_exist_ok=True, symlinks=True)
    libs = [str(p) for p in sorted(site.rglob("*.so*")) if p.read_bytes()[:4] == b"\x7fELF"]
    assert len(libs) >= 8
    options = host_options(executable=sys.executable)
    tree = CachedTree(RealTree())
    host = started(tree, options)
    for lib in libs + libs[::-1]:
        shared = load_elf(tree, lib, options, host=host)
        fresh = load_elf(RealTree(), lib, options)
        assert (shared.objects, shared.resolutions) == (fresh.objects, fresh.resolutions), lib
    # The control: loading every module into one process (what a leak between forks would
    # amount to) answers differently for some module, so the comparison above can fail.
    proc = started(RealTree(), options)
    differ = 0
    for lib in libs:
        skip = len(proc.resolutions)
        proc.dlopen(lib)
        fresh = load_elf(RealTree(), lib, options)
        differ += proc.resolutions[skip:] != fresh.resolutions
    assert differ > 0


# ------------------------------------------------------------------ search-order rules


def test_rpath_is_inherited_but_runpath_is_not(tmp_path: Path) -> None:
    deep = cc(tmp_path / "deep", "libxdeep.so")
    mid = cc(tmp_path / "mid", "libxmid.so", ("libxdeep.so",), libdirs=(deep.parent,))
    top_rpath = cc(tmp_path / "a", "libxtop.so", ("libxmid.so",), libdirs=(mid.parent, deep.parent),
                   rpath=f"{mid.parent}:{deep.parent}")
    top_runpath = cc(tmp_path / "b", "libxtop.so", ("libxmid.so",), libdirs=(mid.parent, deep.parent),
                     runpath=f"{mid.parent}:{deep.parent}")
    assert ("libxdeep.so", str(deep)) in agree(top_rpath)          # via the loader's DT_RPATH
    assert ("libxdeep.so", None) in agree(top_runpath)             # DT_RUNPATH is not inherited


def test_rpath_chain_walks_through_a_runpath_ancestor(tmp_path: Path) -> None:
    """LOADERS.md rule 8: an ancestor with DT_RUNPATH contributes nothing, the walk goes on."""
    deep = cc(tmp_path / "deep", "libxdeep.so")
    mid = cc(tmp_path / "mid", "libxmid.so", ("libxdeep.so",), libdirs=(deep.parent,))
    run = cc(tmp_path / "run", "libxrun.so", ("libxmid.so",), libdirs=(mid.parent, deep.parent),
             runpath=str(mid.parent))
    top = cc(tmp_path / "top", "libxtop.so", ("libxrun.so",), libdirs=(run.parent, mid.parent, deep.parent),
             rpath=f"{run.parent}:{deep.parent}")
    assert ("libxdeep.so", str(deep)) in agree(top)


@pytest.mark.parametrize("order", ["one", "two"])
def test_ld_library_path_order_and_precedence(tmp_path: Path, order: str) -> None:
    d1 = cc(tmp_path / "d1", "libxdup.so").parent
    d2 = cc(tmp_path / "d2", "libxdup.so").parent
    runp = cc(tmp_path / "r", "libxuser.so", ("libxdup.so",), libdirs=(d1,), runpath=str(d1))
    rp = cc(tmp_path / "p", "libxuser.so", ("libxdup.so",), libdirs=(d1,), rpath=str(d1))
    llp = f"{d2}:{d1}" if order == "two" else f"{d1};{d2}"
    first = d2 if order == "two" else d1
    assert ("libxdup.so", f"{first}/libxdup.so") in agree(runp, llp)   # LD_LIBRARY_PATH before DT_RUNPATH
    assert ("libxdup.so", f"{d1}/libxdup.so") in agree(rp, llp)        # DT_RPATH before LD_LIBRARY_PATH


def test_origin_under_a_symlinked_directory_climbs_from_the_target(stub_tree: Path, tmp_path: Path) -> None:
    real = tmp_path / "store"
    shutil.copytree(stub_tree / "torchstub", real, symlinks=True)
    venv = tmp_path / "venv"
    shutil.copytree(stub_tree / "nvidia_xcuda_runtime", venv, dirs_exist_ok=True)
    shutil.copytree(stub_tree / "nvidia_xcublas", venv, dirs_exist_ok=True)
    shutil.copytree(stub_tree / "nvidia_xnvjitlink", venv, dirs_exist_ok=True)
    (venv / "torchstub").symlink_to(real / "torchstub", target_is_directory=True)
    lib = venv / "torchstub" / "lib" / "libxtorch_cuda.so"
    rows = agree(lib)
    assert ("libxcudart.so.13", None) in rows, "a directory symlink must break $ORIGIN/.. (control)"
    # Real directories with per-file symlinks: the same climb stays in the venv.
    (venv / "torchstub").unlink()
    (venv / "torchstub" / "lib").mkdir(parents=True)
    for f in (real / "torchstub" / "lib").iterdir():
        (venv / "torchstub" / "lib" / f.name).symlink_to(f)
    rows = agree(lib)
    assert all(p is not None for _, p in rows)


def test_cache_finds_system_cudart_and_runpath_beats_it(stub_tree: Path, tmp_path: Path) -> None:
    """This machine's ld.so.cache has the CUDA 13 toolkit: a bare libcudart.so.13 resolves there."""
    plain = cc(tmp_path / "plain", "libxneedscudart.so", ("libcudart.so.13",),
               libdirs=(stub_tree / "cudart_shadow/nvidia/cu13/lib",))
    rows = agree(plain)
    path = dict(rows)["libcudart.so.13"]
    if path is None:
        pytest.skip("no libcudart.so.13 in this machine's ld.so.cache")
    assert "cudart_shadow" not in path
    shadow = stub_tree / "cudart_shadow" / "nvidia" / "cu13" / "lib"
    own = cc(tmp_path / "own", "libxneedscudart.so", ("libcudart.so.13",), libdirs=(shadow,), runpath=str(shadow))
    assert dict(agree(own))["libcudart.so.13"] == f"{shadow}/libcudart.so.13"


def test_without_cache_the_default_directories_answer(tmp_path: Path) -> None:
    lib = cc(tmp_path / "z", "libxz.so", ("libz.so.1",))
    res = load_elf(RealTree(), str(lib), host_options(cache=None))
    libz = next(r for r in res.resolutions if r.name == "libz.so.1")
    assert libz.found_via == "default" and libz.path is not None
    assert os.path.samefile(libz.path, dict(real_ldd(lib))["libz.so.1"] or "")


def test_wrong_class_is_skipped_and_bad_file_stops(tmp_path: Path) -> None:
    good = cc(tmp_path / "good", "libxw.so")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "libxw.so").write_bytes(b"\x7fELF" + bytes([1, 1, 1]) + bytes(60))  # 32-bit: skipped silently
    user = cc(tmp_path / "u", "libxu.so", ("libxw.so",), libdirs=(good.parent,), rpath=f"{bad}:{good.parent}")
    assert ("libxw.so", str(good)) in agree(user)
    (bad / "libxw.so").write_bytes(b"garbage, not an ELF file at all" * 4)
    res = load_elf(RealTree(), str(user), host_options())
    r = next(r for r in res.resolutions if r.name == "libxw.so")
    assert r.path is None and r.error and "invalid ELF header" in r.error
    assert ("libxw.so", None) in real_ldd(user) or real_ldd(user) == []


def test_system_libraries_agree_with_ldd() -> None:
    libs = sorted(Path("/usr/lib/x86_64-linux-gnu").glob("lib*.so.*"))
    libs = [p for p in libs if not p.is_symlink()][::7][:40]
    assert len(libs) > 10
    for lib in libs:
        agree(lib)


# ------------------------------------------------------------------ dlopen from a real interpreter


PROBE = r"""
import ctypes, sys
for p in sys.argv[1:]:
    try:
        ctypes.CDLL(p)
        print("ok", p)
    except OSError as e:
        print("fail", p)
with open("/proc/self/maps") as fh:
    for line in fh:
        parts = line.split()
        if len(parts) >= 6 and parts[5].startswith("/"):
            print("map", parts[5])
"""


def real_dlopen(*paths: Path) -> tuple[list[bool], set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, paths)], capture_output=True, text=True,
                         env=env, check=True).stdout
    oks = [ln.startswith("ok ") for ln in out.splitlines() if ln.startswith(("ok ", "fail "))]
    maps = {ln[4:] for ln in out.splitlines() if ln.startswith("map ")}
    return oks, maps


def test_already_loaded_soname_satisfies_a_later_dlopen(tmp_path: Path) -> None:
    provider = cc(tmp_path / "a", "libxcudartish.so.13")
    user = cc(tmp_path / "b", "libxuser.so", ("libxcudartish.so.13",), libdirs=(provider.parent,))
    # Control: alone, the user library does not load (no rpath, nothing in the cache).
    oks, _ = real_dlopen(user)
    proc = GlibcProcess(RealTree(), host_options())
    proc.start(sys.executable)
    _res, _ = proc.dlopen(str(user))
    assert oks == [False] and any(r.path is None for r in proc.resolutions if r.name == "libxcudartish.so.13")
    # Preloaded first (torch's _preload_cuda_deps trick): the SONAME matches, the load succeeds.
    oks, maps = real_dlopen(provider, user)
    proc = GlibcProcess(RealTree(), host_options())
    proc.start(sys.executable)
    proc.dlopen(str(provider))
    proc.dlopen(str(user))
    hit = [r for r in proc.resolutions if r.name == "libxcudartish.so.13"][-1]
    assert oks == [True, True]
    assert hit.found_via == "loaded" and hit.path == str(provider) and str(provider) in maps


def test_python_import_closure_matches_the_real_process(stub_tree: Path, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    for dist in ("torchstub", "nvidia_xcublas", "nvidia_xcuda_runtime", "nvidia_xnvjitlink"):
        shutil.copytree(stub_tree / dist, site, dirs_exist_ok=True)
    ext = next((site / "torchstub").glob("_C.*.so"))
    oks, maps = real_dlopen(ext)
    result = load_elf(RealTree(), str(ext), host_options(executable=sys.executable))
    assert oks == [True] and not result.missing
    ours = {os.path.realpath(o.path) for o in result.objects}
    assert ours <= {os.path.realpath(m) for m in maps}
    assert {os.path.realpath(m) for m in maps if str(site) in m} <= ours


def test_hwcaps_help_parsing() -> None:
    text = """Subdirectories of glibc-hwcaps directories, in priority order:
  x86-64-v4
  x86-64-v3 (supported, searched)
  x86-64-v2 (supported, searched)

Legacy HWCAP subdirectories under library search path directories:
  x86_64 (AT_PLATFORM; supported, searched)
  tls (supported, searched)
  avx512_1
  x86_64 (supported, searched)
"""
    assert parse_hwcaps_help(text) == (
        "glibc-hwcaps/x86-64-v3", "glibc-hwcaps/x86-64-v2", "tls/x86_64/x86_64", "tls/x86_64", "tls/x86_64", "tls",
        "x86_64/x86_64", "x86_64", "x86_64")


def test_hwcaps_subdirectory_wins_over_the_directory(tmp_path: Path) -> None:
    base = cc(tmp_path / "d", "libxhw.so")
    sub = cc(tmp_path / "d" / "glibc-hwcaps" / "x86-64-v2", "libxhw.so")
    user = cc(tmp_path / "u", "libxu.so", ("libxhw.so",), libdirs=(base.parent,), rpath=str(base.parent))
    rows = agree(user)
    assert ("libxhw.so", str(sub)) in rows


# ------------------------------------------------------------------ path-list syntax and tokens


def agree_in(path: Path, cwd: Path, llp: str | None = None) -> list[tuple[str, str | None]]:
    ours = model_rows(load_elf(RealTree(), str(path), host_options(ld_library_path=llp, cwd=str(cwd))))
    assert ours == real_ldd(path, llp, cwd=cwd), path
    return ours


@pytest.mark.parametrize("rpath", ["${ORIGIN}/../dep", "$ORIGIN/../dep/", "$ORIGINX/../dep:$ORIGIN/../dep",
                                   "/nonexistent/$LIB:$ORIGIN/../dep", "$PLATFORM:$ORIGIN/../dep"])
def test_origin_tokens(tmp_path: Path, rpath: str) -> None:
    """LOADERS.md rule 16: ${ORIGIN} and $ORIGIN, trailing '/', unknown tokens literal, $LIB, $PLATFORM."""
    dep = cc(tmp_path / "dep", "libxtok.so")
    user = cc(tmp_path / "lib", "libxuser.so", ("libxtok.so",), libdirs=(dep.parent,), rpath=rpath)
    assert dict(agree(user))["libxtok.so"] is not None


def test_empty_and_relative_elements_mean_the_cwd(tmp_path: Path) -> None:
    """Rules 14-15: an empty element is the cwd; a relative one is relative to the cwd, not $ORIGIN."""
    dep = cc(tmp_path / "work" / "sub", "libxcwd.so")
    empty = cc(tmp_path / "a", "libxa.so", ("libxcwd.so",), libdirs=(dep.parent,), rpath="/nonexistent:")
    relative = cc(tmp_path / "b", "libxb.so", ("libxcwd.so",), libdirs=(dep.parent,), rpath="sub")
    assert dict(agree_in(empty, dep.parent))["libxcwd.so"] == "libxcwd.so"  # cwd = work/sub: opened as "libxcwd.so"
    assert dict(agree_in(empty, tmp_path))["libxcwd.so"] is None              # cwd elsewhere: missing
    assert dict(agree_in(relative, tmp_path / "work"))["libxcwd.so"] is not None
    assert dict(agree_in(relative, tmp_path))["libxcwd.so"] is None


def test_needed_name_with_a_slash_is_opened_as_given(tmp_path: Path) -> None:
    """Rule 2: a DT_NEEDED with '/' (here via $ORIGIN) is one path, no search."""
    dep = cc(tmp_path / "d", "libxslash.so")
    src = tmp_path / "u.c"
    src.write_text("int u(void) { return 0; }\n")
    user = tmp_path / "d" / "libxu.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(user), str(src), "-Wl,--no-as-needed",
                    str(dep)], check=True)
    subprocess.run(["patchelf", "--replace-needed", "libxslash.so", "$ORIGIN/libxslash.so", str(user)], check=True,
                   env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    rows = agree(user)
    assert (str(tmp_path / "d" / "libxslash.so"),) * 2 in rows


def test_nodeflib_skips_cache_and_default_directories(tmp_path: Path) -> None:
    """DF_1_NODEFLIB (-z nodefaultlib): libz.so.1 is no longer found in the system dirs."""
    src = tmp_path / "n.c"
    src.write_text("int n(void) { return 0; }\n")
    lib = tmp_path / "libxnodef.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src), "-Wl,--no-as-needed", "-lz",
                    "-Wl,-z,nodefaultlib"], check=True)
    rows = agree(lib)
    assert dict(rows)["libz.so.1"] is None


def test_origin_in_ld_library_path_is_the_main_programs_directory(tmp_path: Path) -> None:
    """Rule 19: $ORIGIN in LD_LIBRARY_PATH expands to the main program's directory."""
    dep = cc(tmp_path / "dep", "libxllp.so")
    user = cc(tmp_path / "bin", "libxuser.so", ("libxllp.so",), libdirs=(dep.parent,))
    assert dict(agree(user, "$ORIGIN/../dep"))["libxllp.so"] == f"{tmp_path}/bin/../dep/libxllp.so"
    assert dict(agree(user, "$ORIGIN/../elsewhere"))["libxllp.so"] is None
