"""The glibc model against the real ld.so: every scenario runs both, and they must agree
on every resolution (ldd for closures; a real interpreter with ctypes for dlopen).

Rule numbers: 1-36 are ../shared/LOADERS.md's, 37 and up docs/loader-rules.md's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import NOBODY, as_nobody, rpathfix
from rpathfix.fstree import CachedTree, Credentials, RealTree
from rpathfix.hwcaps import glibc_hwcaps_levels, host_hwcap_subdirs, parse_hwcaps_help
from rpathfix.ldcache import load_cache
from rpathfix.loader_glibc import MULTIARCH, GlibcOptions, GlibcProcess, host_options, load_elf, started
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


def ldd_output(path: Path, llp: str | None = None, cwd: Path | None = None,
               wrap: Callable[[list[str]], list[str]] | None = None) -> tuple[list[tuple[str, str | None]], str | None]:
    """The real ldd: its (name, path) rows without vdso and the interpreter line, and the
    hard error that stopped the load ("PATH: only ET_DYN and ET_EXEC can be loaded"), if any.
    `wrap` runs ldd inside something (a mount namespace with another ld.so.cache)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    if llp is not None:
        env["LD_LIBRARY_PATH"] = llp
    argv = ["ldd", str(path)]
    proc = subprocess.run(wrap(argv) if wrap else argv, capture_output=True, text=True, env=env, cwd=cwd)
    m = re.search(r"error while loading shared libraries: (.*)$", proc.stdout + proc.stderr, re.M)
    if m:
        assert proc.returncode != 0
        # ld.so's own strerror has no texts: "Error 21" is what dlerror() calls "Is a directory".
        return [], re.sub(r"Error (\d+)$", lambda e: os.strerror(int(e.group(1))), m.group(1))
    rows: list[tuple[str, str | None]] = []
    for line in proc.stdout.splitlines():
        m = re.match(r"\s+(\S+) => (not found|(\S+) \(0x[0-9a-f]+\))$", line)
        if m:
            rows.append((m.group(1), None if m.group(2) == "not found" else m.group(3)))
            continue
        # "name (0x...)": the object was opened under exactly the name it was asked for
        # (a name with a slash, or a relative search path); skip the vdso and ld.so itself.
        m = re.match(r"\s+(\S+) \(0x[0-9a-f]+\)$", line)
        if m and not m.group(1).startswith("linux-vdso") and "/ld-linux" not in m.group(1):
            rows.append((m.group(1), m.group(1)))
    return rows, None


def real_ldd(path: Path, llp: str | None = None, cwd: Path | None = None) -> list[tuple[str, str | None]]:
    """(name, path) rows of the real ldd, which must not have stopped on a hard error."""
    rows, error = ldd_output(path, llp, cwd)
    assert error is None, error
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


def agree(path: Path, llp: str | None = None, *, options: GlibcOptions | None = None,
          wrap: Callable[[list[str]], list[str]] | None = None) -> list[tuple[str, str | None]]:
    """The model and the real ldd on one file: the same rows, or the same hard error."""
    result = load_elf(RealTree(), str(path), options or host_options(ld_library_path=llp))
    rows, error = ldd_output(path, llp, wrap=wrap)
    assert result.error == error, path
    if error is None:
        assert model_rows(result) == rows, path
    return rows


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
    rows, error = ldd_output(user)
    assert error == f"{bad}/libxw.so: invalid ELF header" and rows == []  # the real loader stops
    res = load_elf(RealTree(), str(user), host_options())
    r = next(r for r in res.resolutions if r.name == "libxw.so")
    assert r.path is None and r.error == error and res.error == error
    assert res.resolutions[-1] is r, "nothing is loaded after a hard error"


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


# ------------------------------------------------------------------ rule 37: files ld.so refuses


MAIN_C = "int main(void) { return 0; }\n"


def make_bad(path: Path, kind: str) -> str:
    """A candidate named like a library that ld.so refuses; returns the error it gives (after
    "<subject>: ")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = path.parent / "bad.c"
    src.write_text(MAIN_C)
    if kind == "rel":
        subprocess.run(["gcc", "-c", "-fPIC", "-o", str(path), str(src)], check=True)
        why = "only ET_DYN and ET_EXEC can be loaded"
    elif kind == "exec":
        subprocess.run(["gcc", "-no-pie", "-o", str(path), str(src)], check=True)
        why = "cannot dynamically load executable"
    elif kind == "pie":
        subprocess.run(["gcc", "-pie", "-fPIE", "-o", str(path), str(src)], check=True)
        why = "cannot dynamically load position-independent executable"
    elif kind == "dir":
        path.mkdir()
        why = "cannot read file data: Is a directory"
    elif kind == "short":
        path.write_bytes(b"\x7fELF\x02\x01\x01")
        why = "file too short"
    else:
        path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x03\x00\x3e\x00\x02\x00\x00\x00" + bytes(44))
        why = "ELF file version does not match current one"
    src.unlink()
    return why


REFUSED = ["rel", "exec", "pie", "dir", "short", "version"]


@pytest.mark.parametrize("where", ["first", "later"])
@pytest.mark.parametrize("kind", REFUSED)
def test_refused_candidate_stops_a_needed_search(tmp_path: Path, kind: str, where: str) -> None:
    """Rule 37: ld.so stops the whole load at such a candidate, though the next RPATH
    directory holds a good library; a wrong-class file there is skipped (the control)."""
    good = cc(tmp_path / "good", "libxw.so")
    bad = tmp_path / "bad" / "libxw.so"
    rpath = f"{bad.parent}:{good.parent}" if where == "first" else f"{tmp_path}/none:{bad.parent}:{good.parent}"
    user = cc(tmp_path / "u", "libxu.so", ("libxw.so",), libdirs=(good.parent,), rpath=rpath)
    bad.parent.mkdir()
    bad.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(60))
    assert ("libxw.so", str(good)) in agree(user)  # control: a file ld.so skips
    bad.unlink()
    why = make_bad(bad, kind)
    subject = "libxw.so" if kind in ("exec", "pie") else str(bad)  # mapping errors name the name asked for
    _rows, error = ldd_output(user)
    assert error == f"{subject}: {why}"
    agree(user)


PY_DLOPEN = r"""
import ctypes, sys
try:
    ctypes.CDLL(sys.argv[1])
    print("ok")
except OSError as e:
    print("error", e)
"""


def real_dlopen_error(name: str, llp: str) -> str | None:
    """dlopen(name) from a real interpreter started with LD_LIBRARY_PATH: dlerror() or None."""
    env = {**os.environ, "LD_LIBRARY_PATH": llp}
    out = subprocess.run([sys.executable, "-c", PY_DLOPEN, name], capture_output=True, text=True, env=env,
                         check=True).stdout.strip()
    return None if out == "ok" else out.removeprefix("error ")


def model_dlopen_error(name: str, llp: str) -> str | None:
    proc = GlibcProcess(RealTree(), host_options(ld_library_path=llp))
    proc.start(sys.executable)
    res, _ = proc.dlopen(name)
    return res.error


@pytest.mark.parametrize("kind", [*REFUSED, "noopen", "none"])
def test_refused_candidate_stops_a_dlopen(tmp_path: Path, kind: str) -> None:
    """Rule 37 for dlopen("libxw.so") from a real interpreter, searched through LD_LIBRARY_PATH;
    and DF_1_NOOPEN, refused by dlopen only ("none": nothing there, the good file loads)."""
    good = cc(tmp_path / "good", "libxw.so")
    bad = tmp_path / "bad" / "libxw.so"
    if kind == "noopen":
        bad.parent.mkdir()
        src = tmp_path / "n.c"
        src.write_text("int n(void) { return 0; }\n")
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(bad), str(src), "-Wl,-z,nodlopen"], check=True)
        why = "shared object cannot be dlopen()ed"
    elif kind != "none":
        why = make_bad(bad, kind)
    llp = f"{bad.parent}:{good.parent}"
    real = real_dlopen_error("libxw.so", llp)
    if kind == "none":
        assert real is None
    else:
        subject = "libxw.so" if kind in ("exec", "pie", "noopen") else str(bad)
        assert real == f"{subject}: {why}"
    assert model_dlopen_error("libxw.so", llp) == real


def test_the_main_program_is_matched_by_soname_not_by_file(tmp_path: Path) -> None:
    """Rule 37: ld.so has no file identity for the main program (rule 4 never matches it), so
    a DT_NEEDED that leads to its file maps it again and is refused; its DT_SONAME does
    match (rule 3), and then the program starts (the control)."""
    d = tmp_path / "e"
    d.mkdir()
    (d / "m.c").write_text(MAIN_C)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for soname, works in ((None, False), ("libxself.so", True)):
        exe = d / f"libxself{int(works)}.so"
        subprocess.run(["gcc", "-pie", "-fPIE", "-o", str(exe), str(d / "m.c"), f"-Wl,-rpath,{d}",
                        *([f"-Wl,-soname,{soname}"] if soname else [])], check=True)
        if not works:
            shutil.copy(exe, d / "libxself.so")  # the same bytes under the needed name
        subprocess.run(["patchelf", "--add-needed", "libxself.so", str(exe)], check=True, env=env)
        if not works:
            (d / "libxself.so").unlink()
            os.link(exe, d / "libxself.so")  # the very file of the main program
        proc = subprocess.run([str(exe)], capture_output=True, text=True)
        assert (proc.returncode == 0) == works, proc.stderr
        ours = GlibcProcess(RealTree(), host_options())
        ours.start(str(exe))
        if works:
            assert ours.failed is None and not [r for r in ours.resolutions if r.path is None]
        else:
            assert ours.failed is not None and ours.failed.error is not None
            assert ours.failed.error in proc.stderr  # "libxself.so: cannot dynamically load position-..."


# ------------------------------------------------------------------ rule 38: open() errors in a search


def _chain(d: Path, name: str, n: int, target: str) -> None:
    """d/name -> name.1 -> ... -> target: n symlinks."""
    d.mkdir(parents=True, exist_ok=True)
    links = [name] + [f"{name}.{i}" for i in range(1, n)]
    for a, b in zip(links, [*links[1:], target]):
        os.symlink(b, d / a)


@pytest.mark.parametrize(("links", "found"), [(40, True), (41, False), (45, False)])
def test_symlink_loop_in_the_first_rpath_dir_ends_the_list(tmp_path: Path, links: int, found: bool) -> None:
    """Rule 38: 41 links give ELOOP and ld.so does not try the next RPATH directory, which
    holds the library; 40 links open (the control)."""
    good = cc(tmp_path / "good", "libxw.so")
    _chain(tmp_path / "chain", "libxw.so", links, str(good))
    user = cc(tmp_path / "u", "libxu.so", ("libxw.so",), libdirs=(good.parent,),
              rpath=f"{tmp_path}/chain:{good.parent}")
    rows = agree(user)
    assert dict(rows)["libxw.so"] == (f"{tmp_path}/chain/libxw.so" if found else None)


def test_an_ended_list_leaves_the_other_lists(tmp_path: Path) -> None:
    """Rule 38: the loader's RPATH, then the cache and the default directories still answer."""
    good = cc(tmp_path / "good", "libxw.so")
    _chain(tmp_path / "chain", "libxw.so", 45, str(good))
    _chain(tmp_path / "chain", "libz.so.1", 45, "/nonexistent/libz.so.1")
    mid = cc(tmp_path / "mid", "libxmid.so", ("libxw.so", "libz.so.1"), libdirs=(good.parent,),
             rpath=f"{tmp_path}/chain:{good.parent}")
    top = cc(tmp_path / "top", "libxtop.so", ("libxmid.so",), libdirs=(mid.parent, good.parent),
             rpath=f"{mid.parent}:{good.parent}")
    rows = dict(agree(top))
    assert rows["libxw.so"] == str(good)  # through libxtop's own RPATH
    assert rows["libz.so.1"] is not None and "chain" not in rows["libz.so.1"]  # the cache or a default dir
    assert dict(agree(mid))["libxw.so"] is None  # alone, nothing else holds it: the control


@pytest.mark.parametrize(("case", "found"), [("hwcaps-loop", True), ("dangling", True), ("through-file", False),
                                             ("long-name", False), ("dir-is-a-file", True)])
def test_open_errors_in_a_search_list(tmp_path: Path, case: str, found: bool) -> None:
    """Rule 38: which open() errors end the list. A loop in a glibc-hwcaps subdirectory does not
    (DIR/NAME is tried after it); ENOENT does not; ENOTDIR and ENAMETOOLONG through a link do;
    a search "directory" that is a file is no directory at all."""
    good = cc(tmp_path / "good", "libxw.so")
    first = tmp_path / "first"
    first.mkdir()
    if case == "hwcaps-loop":
        levels = glibc_hwcaps_levels(host_hwcap_subdirs())
        if not levels:
            pytest.skip("this CPU supports no glibc-hwcaps level")
        _chain(first / "glibc-hwcaps" / levels[0], "libxw.so", 45, str(good))
    elif case == "dangling":
        os.symlink("missing.so", first / "libxw.so")
    elif case == "through-file":
        (first / "plain").write_text("x")
        os.symlink("plain/libxw.so", first / "libxw.so")
    elif case == "long-name":
        os.symlink("x" * 300, first / "libxw.so")
    else:
        first.rmdir()
        first.write_text("a file")
    user = cc(tmp_path / "u", "libxu.so", ("libxw.so",), libdirs=(good.parent,), rpath=f"{first}:{good.parent}")
    assert (dict(agree(user))["libxw.so"] == str(good)) == found


def test_files_the_user_may_not_read_are_skipped(world_dir: Path) -> None:
    """Rule 38 for EACCES, as an unprivileged user: a library it may not read, a directory it
    may not search (also reached through a link): ld.so goes on to the next directory."""
    good = cc(world_dir / "good", "libxw.so")
    (world_dir / "unreadable").mkdir()
    shutil.copy(good, world_dir / "unreadable/libxw.so")
    (world_dir / "unreadable/libxw.so").chmod(0o600)
    (world_dir / "private/sub").mkdir(parents=True)
    shutil.copy(good, world_dir / "private/sub/libxw.so")
    (world_dir / "private").chmod(0o700)
    (world_dir / "via").mkdir()
    os.symlink(world_dir / "private/sub/libxw.so", world_dir / "via/libxw.so")
    nobody = Credentials(NOBODY, frozenset({NOBODY}))
    for first in ("unreadable", "private/sub", "via"):
        user = cc(world_dir / "u" / first.replace("/", "_"), "libxu.so", ("libxw.so",), libdirs=(good.parent,),
                  rpath=f"{world_dir}/{first}:{good.parent}")
        os.chmod(user.parent, 0o755)
        proc = as_nobody("ldd", str(user))
        assert f"libxw.so => {good} " in proc.stdout, proc.stdout  # the real loader, as that user
        ours = load_elf(RealTree(), str(user), host_options(credentials=nobody))
        assert next(r for r in ours.resolutions if r.name == "libxw.so").path == str(good)
        # The control: as root, the first directory's copy is readable and wins.
        root = load_elf(RealTree(), str(user), host_options(credentials=None))
        assert next(r for r in root.resolutions if r.name == "libxw.so").path == f"{world_dir}/{first}/libxw.so"


# ------------------------------------------------------------------ rules 39-40: another ld.so.cache
#
# ldconfig writes a cache for the test's directories, and the real loader reads it in a mount
# namespace where it is bind-mounted over /etc/ld.so.cache: nothing outside changes.

LDCONFIG = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)


def in_namespace(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """sh -c SCRIPT ARGS in a private mount namespace (skips the test when that is not permitted)."""
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script, *args], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and ("unshare" in proc.stderr or "mount" in proc.stderr):
        pytest.skip(f"cannot make a mount namespace here: {proc.stderr.strip()}")
    return proc


def build_cache(tmp: Path, dirs: list[Path]) -> Path:
    """An ld.so.cache for `dirs` (and the system directories), written by the real ldconfig.
    -X: no links made in the directories it reads; its aux cache goes to a private tmpfs."""
    if LDCONFIG is None or shutil.which("unshare") is None:
        pytest.skip("needs ldconfig and unshare")
    conf, cache = tmp / "ld.so.conf", tmp / "ld.so.cache"
    conf.write_text("".join(f"{d}\n" for d in dirs))
    proc = in_namespace('mount -t tmpfs tmpfs /var/cache && exec "$0" -X -C "$1" -f "$2"', LDCONFIG, str(cache),
                        str(conf))
    assert proc.returncode == 0 and cache.exists(), proc.stderr
    return cache


def with_cache(cache: Path) -> Callable[[list[str]], list[str]]:
    """Wraps a command to run it with `cache` as /etc/ld.so.cache."""
    in_namespace("true")  # skips when namespaces are not permitted
    return lambda argv: ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/ld.so.cache && exec "$@"',
                         str(cache), *argv]


def test_cache_picks_the_supported_glibc_hwcaps_variant(tmp_path: Path) -> None:
    """Rule 40: the cache's x86-64-v3 variant is the file ld.so opens on a v3 machine."""
    levels = glibc_hwcaps_levels(host_hwcap_subdirs())
    if not levels:
        pytest.skip("this CPU supports no glibc-hwcaps level")
    lib = tmp_path / "hw"
    cc(lib, "libxhw.so.1")
    for level in levels:
        cc(lib / "glibc-hwcaps" / level, "libxhw.so.1")
    user = cc(tmp_path / "u", "libxu.so", ("libxhw.so.1",), libdirs=(lib,))  # no RPATH: the cache finds it
    cache = build_cache(tmp_path, [lib])
    options = host_options(cache=load_cache(str(cache)))
    rows = agree(user, options=options, wrap=with_cache(cache))
    assert dict(rows)["libxhw.so.1"] == f"{lib}/glibc-hwcaps/{levels[0]}/libxhw.so.1"
    # dlopen from a real interpreter reads the same cache.
    script = "import ctypes; ctypes.CDLL('libxhw.so.1'); print(open('/proc/self/maps').read())"
    maps = subprocess.run(with_cache(cache)([sys.executable, "-c", script]), capture_output=True, text=True,
                          check=True).stdout
    assert f"{lib}/glibc-hwcaps/{levels[0]}/libxhw.so.1" in maps
    # The control: on a CPU with no supported level the baseline file is the answer.
    plain = load_elf(RealTree(), str(user), options._replace(hwcap_subdirs=()))
    assert dict(model_rows(plain))["libxhw.so.1"] == f"{lib}/libxhw.so.1"


@pytest.mark.parametrize("subdirs", [("tls", "x86_64"), ("x86_64",), ("avx512_1",)])
def test_cache_legacy_hwcap_entries_as_glibc_236_reads_them(tmp_path: Path, subdirs: tuple[str, ...]) -> None:
    """Rule 40, legacy part: ldconfig 2.36 still records tls/ and x86_64/ copies, and ld.so
    2.36 takes the first whose hwcap bits it has; avx512_1/ only on a CPU that has it (not
    searched here: then the plain file is the control)."""
    if os.uname().machine != "x86_64":
        pytest.skip("the legacy hwcap names are x86-64's")
    lib = tmp_path / "leg"
    cc(lib, "libxleg.so.1")
    for sub in subdirs:
        cc(lib / sub, "libxleg.so.1")
    user = cc(tmp_path / "u", "libxu.so", ("libxleg.so.1",), libdirs=(lib,))
    cache = build_cache(tmp_path, [lib])
    rows = agree(user, options=host_options(cache=load_cache(str(cache))), wrap=with_cache(cache))
    searched = [s for s in subdirs if s in host_hwcap_subdirs()]
    assert dict(rows)["libxleg.so.1"] == (f"{lib}/{searched[0]}/libxleg.so.1" if searched else f"{lib}/libxleg.so.1")


def test_nodeflib_drops_cache_entries_below_the_system_dirs(tmp_path: Path) -> None:
    """Rule 39: with DF_1_NODEFLIB, a cache entry in a subdirectory of /usr/lib/<triplet> is
    dropped as well; without it the cache finds the library (the control)."""
    gconv = Path(f"/usr/lib/{MULTIARCH.get(os.uname().machine, '')}/gconv")
    if not (gconv / "libJIS.so").exists():
        pytest.skip(f"no {gconv}/libJIS.so (glibc's gconv modules) here")
    cache = build_cache(tmp_path, [gconv])
    options = host_options(cache=load_cache(str(cache)))
    src = tmp_path / "n.c"
    src.write_text("int n(void) { return 0; }\n")
    for flag, expected in (("", str(gconv / "libJIS.so")), ("-Wl,-z,nodefaultlib", None)):
        lib = tmp_path / f"libxnodef{len(flag)}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(src), "-Wl,--no-as-needed", f"-L{gconv}",
                        "-l:libJIS.so", *([flag] if flag else [])], check=True)
        rows = agree(lib, options=options, wrap=with_cache(cache))
        assert dict(rows)["libJIS.so"] == expected


# ------------------------------------------------------------------ secure mode (rules 22-24)
#
# A setuid-root copy of each program, run as an unprivileged user, gets AT_SECURE (as
# ../shared/loader-experiments/glibc_experiments.sh's X* checks do); `rpathfix ldd --secure`
# must say what that run loads, and plain `rpathfix ldd` what the plain program loads.


def build_c(out: Path, code: str, *flags: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    src = out.parent / f"{out.name}.c"
    src.write_text(code)
    subprocess.run(["gcc", "-o", str(out), str(src), *flags], check=True)
    src.unlink()
    return out


def tag_lib(d: Path, name: str, fn: str, *flags: str, calls: str | None = None) -> Path:
    """A library whose `fn` returns its directory's name (or `calls`' answer)."""
    body = f"extern const char *{calls}(void); const char *{fn}(void) {{ return {calls}(); }}" if calls else \
        f'const char *{fn}(void) {{ return "{d.name}"; }}'
    return build_c(d / name, body + "\n", "-shared", "-fPIC", f"-Wl,-soname,{name}", "-Wl,--no-as-needed", *flags)


def tag_main(out: Path, fn: str, *flags: str) -> Path:
    code = f"#include <stdio.h>\nextern const char *{fn}(void);\nint main(void) {{ puts({fn}()); return 0; }}\n"
    return build_c(out, code, "-Wl,--no-as-needed", *flags)


RU = "-Wl,--enable-new-dtags"


def secure_case(d: Path, case: str) -> tuple[Path, str, str | None]:
    """(program, the library name to compare, LD_LIBRARY_PATH)."""
    if case == "origin-exe":  # rule 24: the program's $ORIGIN outside a trusted directory
        tag_lib(d / "lib", "libxs.so", "x_id")
        return tag_main(d / "e", "x_id", f"-L{d}/lib", "-l:libxs.so", RU, "-Wl,-rpath,$ORIGIN/lib"), "libxs.so", None
    if case == "llp":  # rule 22: LD_LIBRARY_PATH ignored
        tag_lib(d / "L", "libxs.so", "x_id")
        tag_lib(d / "U", "libxs.so", "x_id")
        return tag_main(d / "e", "x_id", f"-L{d}/U", "-l:libxs.so", RU, f"-Wl,-rpath,{d}/U"), "libxs.so", f"{d}/L"
    # rule 24 is for the program only: a library's leading $ORIGIN expands ("origin-lib"); rule
    # 23: $ORIGIN anywhere else in an element drops it, in any object ("origin-not-first")
    runpath = "$ORIGIN/../leaf" if case == "origin-lib" else "/$ORIGIN/../leaf"
    tag_lib(d / "leaf", "libxleaf.so", "leaf_id")
    tag_lib(d / "top", "libxtop.so", "top_id", f"-L{d}/leaf", "-l:libxleaf.so", RU, f"-Wl,-rpath,{runpath}",
            calls="leaf_id")
    exe = tag_main(d / "e", "top_id", f"-L{d}/top", "-l:libxtop.so", f"-L{d}/leaf", RU, f"-Wl,-rpath,{d}/top")
    return exe, "libxleaf.so", None


@pytest.mark.parametrize(("case", "plain", "secure"), [
    ("origin-exe", "lib", None), ("llp", "L", "U"), ("origin-lib", "leaf", "leaf"), ("origin-not-first", "leaf", None)])
def test_secure_mode_agrees_with_a_setuid_program(world_dir: Path, case: str, plain: str, secure: str | None) -> None:
    exe, name, llp = secure_case(world_dir, case)
    suid = exe.with_name("e_suid")
    shutil.copy(exe, suid)
    suid.chmod(0o4755)
    subprocess.run(["chmod", "-R", "a+rX", str(world_dir)], check=True)
    for program, flag, expected in ((exe, [], plain), (suid, ["--secure"], secure)):
        env = {"PATH": os.environ["PATH"], **({"LD_LIBRARY_PATH": llp} if llp else {})}
        real = as_nobody(str(program), env=env)
        # The experiment's own claim: where the library comes from, or that the program fails.
        assert (real.stdout.strip() if real.returncode == 0 else None) == expected, real.stderr
        if expected is None:
            assert f"{name}: cannot open shared object file" in real.stderr
        args = ["ldd", "--json", str(program), *flag, *(["--ld-library-path", llp] if llp else [])]
        ours = rpathfix(*args)
        assert ours.returncode == (0 if expected else 1), ours.stderr
        rows = {r["name"]: r["path"] for r in json.loads(ours.stdout)["libraries"]}
        assert (Path(rows[name]).parent.name if rows[name] else None) == expected, (program, rows)


def test_secure_program_origin_under_a_trusted_directory(world_dir: Path) -> None:
    """Rule 24, the positive case: a setuid program's $ORIGIN element that lies under a trusted
    directory is kept ("$ORIGIN/sub"); one that climbs out of it is dropped though its text
    starts with the trusted directory, because ld.so normalizes it first. The program is
    bind-mounted into /usr/lib/<triplet>/gconv in a mount namespace; the model sees the same
    tree through an overlay."""
    from rpathfix.fstree import OverlayTree, Planned

    trusted = Path(f"/usr/lib/{MULTIARCH.get(os.uname().machine, '')}/gconv")
    if not trusted.is_dir() or shutil.which("unshare") is None:
        pytest.skip(f"no {trusted} to mount over")
    in_namespace("true")
    mnt = world_dir / "mnt"
    tag_lib(mnt / "sub", "libxs.so", "x_id")
    tag_lib(world_dir / "outside", "libxo.so", "o_id")
    climb = "$ORIGIN/" + "../" * len(trusted.parts[1:]) + str(world_dir.relative_to("/")) + "/outside"
    progs = {"libxs.so": tag_main(mnt / "e_in", "x_id", f"-L{mnt}/sub", "-l:libxs.so", RU, "-Wl,-rpath,$ORIGIN/sub"),
             "libxo.so": tag_main(mnt / "e_out", "o_id", f"-L{world_dir}/outside", "-l:libxo.so", RU,
                                  f"-Wl,-rpath,{climb}")}
    for p in progs.values():
        p.chmod(0o4755)
    subprocess.run(["chmod", "-R", "a+rX", str(world_dir)], check=True)
    entries = {f"{trusted}/sub": Planned("dir"), f"{trusted}/sub/libxs.so": Planned("file", str(mnt / "sub/libxs.so"))}
    for name, p in progs.items():
        entries[f"{trusted}/{p.name}"] = Planned("file", str(p), 0o4755)
        script = 'mount --bind "$0" "$1" && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$2"'
        real = in_namespace(script, str(mnt), str(trusted), f"{trusted}/{p.name}")
        found = real.returncode == 0
        assert found == (name == "libxs.so"), real.stderr  # kept inside, dropped when it climbs out
        tree = OverlayTree(RealTree(), str(trusted), entries)
        options = GlibcOptions(secure=True, cache=None)
        res = load_elf(tree, f"{trusted}/{p.name}", options)
        assert (next(r for r in res.resolutions if r.name == name).path is not None) == found


def test_secure_option_reaches_why_and_verify(world_dir: Path) -> None:
    """`rpathfix why --secure` and `verify --secure` simulate the same process as `ldd --secure`."""
    exe, name, _ = secure_case(world_dir, "origin-exe")
    plain = rpathfix("why", str(exe), name)
    secure = rpathfix("why", "--secure", str(exe), name)
    assert plain.returncode == 0 and secure.returncode == 1, (plain.stdout, secure.stdout)
    assert "skipped" in secure.stdout
    site = world_dir / "site-packages"
    shutil.copytree(world_dir / "lib", site / "pkg")
    ext = tag_lib(site / "pkg", "_xs.cpython-311-x86_64-linux-gnu.so", "PyInit__xs", f"-L{site}/pkg", "-l:libxs.so",
                  RU, "-Wl,-rpath,/$ORIGIN")  # rule 23: dropped under AT_SECURE
    assert ext.exists()
    ok = rpathfix("verify", "--json", str(site))
    bad = rpathfix("verify", "--json", "--secure", str(site))
    assert json.loads(ok.stdout)["errors"] == [] and ok.returncode == 0
    assert bad.returncode == 1 and any(e["name"] == "libxs.so" for e in json.loads(bad.stdout)["errors"])
