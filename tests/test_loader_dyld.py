"""The dyld model (LOADERS.md Part B) against real arm64/x86_64 dylibs linked with zig.

There is no Mac to run them on, so each test builds a small tree that mimics unpacked
wheels and checks the simulated resolution, rule by rule: the rpath stack (rule 30),
@loader_path taking the real path (rule 31), the candidate order (rule 29), already
loaded images (rule 33) and the shared cache (rules 35 and 41). Rule numbers: 1-36 are
../shared/LOADERS.md's, 37 and up docs/loader-rules.md's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import LIPO, zig_available, zig_cc
from rpathfix.errors import FormatError
from rpathfix.fstree import RealTree
from rpathfix.loader_dyld import NO_RPATH_ERROR, DyldOptions, explain, load_macho, shared_cache_path
from rpathfix.resolution import Attempt, LoadResult, Resolution

if not zig_available():
    pytest.skip("`python -m ziglang` is not available: cannot link Mach-O test binaries", allow_module_level=True)

ARM, X86 = "aarch64-macos", "x86_64-macos"
SOURCES = {
    "b.c": "int xb(void) { return 2; }\n",
    "a.c": "int xb(void);\nint xa(void) { return xb() + 1; }\n",
    "t.c": "int xa(void);\nint top(void) { return xa(); }\n",
    "r.c": "int xa(void);\nint xb(void);\nint r(void) { return xa() + xb(); }\n",
    "m.c": "int main(void) { return 0; }\n",
}


def _dylib(cwd: Path, target: str, out: str, src: str, install: str, rpaths: tuple[str, ...] = (),
           *link: str) -> Path:
    args = ["-shared", "-o", out, src, *link, f"-Wl,-install_name,{install}"]
    args += [f"-Wl,-rpath,{r}" for r in rpaths]
    zig_cc(cwd, target, *args)
    return cwd / out


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dyld-build")
    for name, text in SOURCES.items():
        (d / name).write_text(text)
    out: dict[str, Path] = {}
    out["xb"] = _dylib(d, ARM, "libxb.dylib", "b.c", "@rpath/libxb.dylib")
    out["xa"] = _dylib(d, ARM, "libxa.dylib", "a.c", "@rpath/libxa.dylib", ("@loader_path/../../b/lib",), "-L.", "-lxb")
    out["xa_norpath"] = _dylib(d, ARM, "libxa_norpath.dylib", "a.c", "@rpath/libxa.dylib", (), "./libxb.dylib")
    out["xa_two"] = _dylib(d, ARM, "libxa_two.dylib", "a.c", "@rpath/libxa.dylib",
                           ("@loader_path/x86", "@loader_path/arm"), "./libxb.dylib")
    # A loader whose LC_RPATHs its dependency (xa_norpath) lacks.
    out["top"] = _dylib(d, ARM, "libtop.dylib", "t.c", "@rpath/libtop.dylib",
                        ("@loader_path", "@loader_path/../../b/lib"), "./libxa.dylib")
    out["xw"] = _dylib(d, ARM, "libxw.dylib", "a.c", "@rpath/libxw.dylib", (), "-L.", "-Wl,-weak-lxb")
    zig_cc(d, ARM, "-o", "python", "m.c", "-Wl,-rpath,@executable_path/../b/lib")
    out["exe"] = d / "python"
    # A file whose install name (@rpath/libxb.dylib) differs from the string its client
    # records: the client links a stub with install name @loader_path/libxb.dylib.
    (d / "stub").mkdir()
    stub = _dylib(d / "stub", ARM, "libxb.dylib", "../b.c", "@loader_path/libxb.dylib")
    out["xd"] = _dylib(d, ARM, "libxd.dylib", "a.c", "@loader_path/libxd.dylib", (), "./libxb.dylib")
    out["r"] = _dylib(d, ARM, "libr.dylib", "r.c", "@loader_path/libr.dylib", (), str(stub), "./libxd.dylib")
    # x86_64 builds, and fat (arm64 + x86_64) ones.
    (d / "x86").mkdir()
    (d / "x86" / "b.c").write_text(SOURCES["b.c"])
    (d / "x86" / "a.c").write_text(SOURCES["a.c"])
    out["xb_x86"] = _dylib(d / "x86", X86, "libxb.dylib", "b.c", "@rpath/libxb.dylib")
    out["xa_x86"] = _dylib(d / "x86", X86, "libxa.dylib", "a.c", "@rpath/libxa.dylib",
                           ("@loader_path/../../b/lib",), "-L.", "-lxb")
    if LIPO is not None:
        r = subprocess.run([LIPO, "-create", str(out["xb"]), str(out["xb_x86"]), "-output", "libxb_fat.dylib"],
                           cwd=d, capture_output=True, timeout=120)
        if r.returncode == 0:
            out["xb_fat"] = d / "libxb_fat.dylib"
    return out


def _place(root: Path, files: dict[str, Path]) -> None:
    for rel, src in files.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def _res(result: LoadResult, name: str, requester: Path | None = None) -> Resolution:
    hits = [r for r in result.resolutions
            if r.name == name and (requester is None or r.requester == os.path.realpath(requester))]
    assert len(hits) == 1, (name, result.resolutions)
    return hits[0]


def _wheels(tmp_path: Path, built: dict[str, Path]) -> Path:
    _place(tmp_path, {"a/lib/libxa.dylib": built["xa"], "b/lib/libxb.dylib": built["xb"]})
    return tmp_path


# (a) cross-wheel @rpath through @loader_path/../../b/lib ----------------------------------

def test_cross_wheel_rpath(tmp_path: Path, built: dict[str, Path]) -> None:
    t = _wheels(tmp_path, built)
    xa, xb = str(t / "a/lib/libxa.dylib"), str(t / "b/lib/libxb.dylib")
    result = load_macho(RealTree(), xa)
    r = _res(result, "@rpath/libxb.dylib")
    assert r.found and r.path == xb and r.found_via == "rpath" and r.requester == xa
    hit = r.attempts[-1]
    assert hit.result == "found" and hit.rule == "rpath"
    assert hit.entry == "@loader_path/../../b/lib" and hit.contributor == xa
    assert hit.path == f"{t}/a/lib/../../b/lib/libxb.dylib"
    assert [o.path for o in result.objects] == [xa, "/usr/lib/libSystem.B.dylib", xb]
    objs = {o.path: o for o in result.objects}
    assert objs[xa].loader is None and objs[xa].install_name == "@rpath/libxa.dylib"
    assert objs[xb].loader == xa and objs[xb].name == "@rpath/libxb.dylib" and objs[xb].realpath == xb
    assert result.missing == []
    # explain gives the same trace for one name.
    e = explain(RealTree(), xa, "@rpath/libxb.dylib")
    assert e.path == xb and e.attempts == r.attempts


# (b) @loader_path is the real path: a symlinked file does not see the venv's siblings ---

def test_loader_path_is_the_real_path(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"real/a/lib/libxa.dylib": built["xa"], "venv/b/lib/libxb.dylib": built["xb"]})
    link = tmp_path / "venv/a/lib/libxa.dylib"
    link.parent.mkdir(parents=True)
    link.symlink_to("../../../real/a/lib/libxa.dylib")
    result = load_macho(RealTree(), str(link))
    real = str(tmp_path / "real/a/lib/libxa.dylib")
    assert result.objects[0].path == real and result.objects[0].name == str(link)
    r = _res(result, "@rpath/libxb.dylib")
    assert not r.found and r.requester == real
    assert r.attempts[0].path == f"{tmp_path}/real/a/lib/../../b/lib/libxb.dylib"
    assert r.attempts[0].result == "missing"
    assert [m.name for m in result.missing] == ["@rpath/libxb.dylib"]
    # A real copy in the venv resolves (glibc's $ORIGIN would have worked with the symlink too).
    link.unlink()
    shutil.copy2(built["xa"], link)
    r = _res(load_macho(RealTree(), str(link)), "@rpath/libxb.dylib")
    assert r.path == str(tmp_path / "venv/b/lib/libxb.dylib") and r.found_via == "rpath"


# (c) the rpath stack: a dependency's @rpath is found through its loader's LC_RPATH -----

def test_rpath_stack_inherits_loader_rpaths(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"a/lib/libtop.dylib": built["top"], "a/lib/libxa.dylib": built["xa_norpath"],
                      "b/lib/libxb.dylib": built["xb"]})
    top, xa = str(tmp_path / "a/lib/libtop.dylib"), str(tmp_path / "a/lib/libxa.dylib")
    result = load_macho(RealTree(), top)
    ra = _res(result, "@rpath/libxa.dylib")
    assert ra.path == xa and ra.attempts[-1].entry == "@loader_path" and ra.attempts[-1].contributor == top
    r = _res(result, "@rpath/libxb.dylib")
    assert r.requester == xa and r.path == str(tmp_path / "b/lib/libxb.dylib") and r.found_via == "rpath"
    assert [(a.entry, a.contributor, a.result) for a in r.attempts if a.rule == "rpath"] == [
        ("@loader_path", top, "missing"), ("@loader_path/../../b/lib", top, "found")]
    assert {o.path: o.loader for o in result.objects}[r.path] == xa
    # On its own, libxa has no LC_RPATH at all.
    alone = explain(RealTree(), xa, "@rpath/libxb.dylib")
    assert not alone.found and alone.error == NO_RPATH_ERROR
    assert all(a.rule == "fallback" for a in alone.attempts)


# (d) dlopen() with a main executable: the stack is [root, executable] -------------------

def test_dlopen_stack_ends_at_executable(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"bin/python": built["exe"], "ext/libxa.dylib": built["xa_norpath"],
                      "b/lib/libxb.dylib": built["xb"]})
    exe, ext = str(tmp_path / "bin/python"), str(tmp_path / "ext/libxa.dylib")
    result = load_macho(RealTree(), ext, DyldOptions(executable=exe), dlopen=True)
    assert [o.path for o in result.objects][:3] == [exe, "/usr/lib/libSystem.B.dylib", ext]
    assert {o.path: o.loader for o in result.objects}[ext] is None
    r = _res(result, "@rpath/libxb.dylib")
    assert r.requester == ext and r.found_via == "rpath"
    assert r.attempts[-1].entry == "@executable_path/../b/lib" and r.attempts[-1].contributor == exe
    # libSystem was loaded by the executable: the extension's request is already satisfied.
    s = _res(result, "/usr/lib/libSystem.B.dylib", Path(ext))
    assert s.found_via == "loaded"
    # Without the executable, nothing supplies an LC_RPATH.
    alone = _res(load_macho(RealTree(), ext), "@rpath/libxb.dylib")
    assert not alone.found and alone.error == NO_RPATH_ERROR


# (e) DYLD_LIBRARY_PATH first (leaf name), fallbacks last -------------------------------

def test_dyld_library_path_wins_over_rpath(tmp_path: Path, built: dict[str, Path]) -> None:
    t = _wheels(tmp_path / "w", built)
    _place(tmp_path, {"env/libxb.dylib": built["xb"]})
    env = str(tmp_path / "env")
    opts = DyldOptions(dyld_library_path=(str(tmp_path / "nothing"), env))
    r = _res(load_macho(RealTree(), str(t / "a/lib/libxa.dylib"), opts), "@rpath/libxb.dylib")
    assert r.found_via == "dyld_library_path" and r.path == f"{env}/libxb.dylib"
    assert [(a.rule, a.result) for a in r.attempts] == [("dyld_library_path", "missing"),
                                                         ("dyld_library_path", "found")]
    # Restricted processes ignore DYLD_* variables (rule 34). The root is dlopen()ed by an
    # executable: in the main image itself, @loader_path in an LC_RPATH would not expand.
    _place(tmp_path, {"bin/python": built["exe"]})
    opts = DyldOptions(executable=str(tmp_path / "bin/python"), dyld_library_path=(env,), restricted=True)
    r = _res(load_macho(RealTree(), str(t / "a/lib/libxa.dylib"), opts, dlopen=True), "@rpath/libxb.dylib")
    assert r.found_via == "rpath" and r.path == str(t / "b/lib/libxb.dylib")
    r = _res(load_macho(RealTree(), str(t / "a/lib/libxa.dylib"), DyldOptions(restricted=True)),
             "@rpath/libxb.dylib")
    assert not r.found and r.attempts[0].result == "skipped" and r.error == NO_RPATH_ERROR


def test_fallback_paths(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"a/lib/libxa.dylib": built["xa"], "fb/libxb.dylib": built["xb"]})
    xa = str(tmp_path / "a/lib/libxa.dylib")
    r = _res(load_macho(RealTree(), xa, DyldOptions(dyld_fallback_library_path=(str(tmp_path / "fb"),))),
             "@rpath/libxb.dylib")
    assert r.found_via == "fallback" and r.path == str(tmp_path / "fb/libxb.dylib")
    assert [a.rule for a in r.attempts] == ["rpath", "fallback"] and r.attempts[-1].entry == str(tmp_path / "fb")
    # Unset: /usr/local/lib then /usr/lib, and a leaf guess is never presumed to be in the cache.
    r = _res(load_macho(RealTree(), xa), "@rpath/libxb.dylib")
    assert not r.found and r.error is None
    assert [(a.path, a.rule, a.result) for a in r.attempts[1:]] == [
        ("/usr/local/lib/libxb.dylib", "fallback", "missing"), ("/usr/lib/libxb.dylib", "fallback", "missing")]


# (f) weak dylibs may be missing ----------------------------------------------------------

def test_weak_missing_is_not_an_error(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"w/libxw.dylib": built["xw"], "a/lib/libxa.dylib": built["xa"]})
    weak = load_macho(RealTree(), str(tmp_path / "w/libxw.dylib"))
    r = _res(weak, "@rpath/libxb.dylib")
    assert r.weak and r.path is None and weak.missing == []
    strong = load_macho(RealTree(), str(tmp_path / "a/lib/libxa.dylib"))
    r = _res(strong, "@rpath/libxb.dylib")
    assert not r.weak and r.path is None and r.found_via is None
    assert strong.missing == [r]


# (g) the shared cache ---------------------------------------------------------------------

def test_libsystem_is_in_the_shared_cache(tmp_path: Path, built: dict[str, Path]) -> None:
    t = _wheels(tmp_path, built)
    result = load_macho(RealTree(), str(t / "b/lib/libxb.dylib"))
    r = _res(result, "/usr/lib/libSystem.B.dylib")
    assert r.found_via == "shared_cache" and r.path == "/usr/lib/libSystem.B.dylib"
    assert r.attempts[-1].rule == "absolute"
    assert [o.path for o in result.objects] == [str(t / "b/lib/libxb.dylib"), "/usr/lib/libSystem.B.dylib"]


def test_only_dylibs_the_shared_cache_holds_resolve_there(tmp_path: Path, built: dict[str, Path]) -> None:
    """Rule 41: LC_RPATH /usr/lib/swift finds @rpath/libswiftCore.dylib in the shared cache,
    but not @rpath/libxmissing.dylib, which no macOS has (the model took any missing path
    under /usr/lib for a cached one)."""
    d = tmp_path / "build"
    d.mkdir()
    (d / "s.c").write_text("int s(void) { return 0; }\n")
    (d / "u.c").write_text("int s(void);\nint u(void) { return s(); }\n")
    for stub in ("libswiftCore", "libxmissing"):
        _dylib(d, ARM, f"{stub}.dylib", "s.c", f"@rpath/{stub}.dylib")
    for stub in ("libswiftCore", "libxmissing"):
        user = _dylib(d, ARM, f"libxuses_{stub}.dylib", "u.c", f"@rpath/libxuses_{stub}.dylib", ("/usr/lib/swift",),
                      f"./{stub}.dylib")
        r = _res(load_macho(RealTree(), str(user)), f"@rpath/{stub}.dylib")
        if stub == "libswiftCore":
            assert r.found_via == "shared_cache" and r.path == "/usr/lib/swift/libswiftCore.dylib"
        else:
            assert not r.found, r
            assert r.attempts[0] == Attempt("/usr/lib/swift/libxmissing.dylib", "rpath", "missing", "/usr/lib/swift",
                                            str(user), "no such file, not in the dyld shared cache")


@pytest.mark.parametrize(("path", "cached"), [
    ("/usr/lib/libSystem.B.dylib", "/usr/lib/libSystem.B.dylib"), ("/usr/lib/libc.dylib", "/usr/lib/libSystem.B.dylib"),
    ("/usr/lib/libz.1.dylib", "/usr/lib/libz.1.dylib"), ("/usr/lib/libxmissing.dylib", None),
    ("/usr/lib/system/libsystem_kernel.dylib", "/usr/lib/system/libsystem_kernel.dylib"),
    ("/usr/lib/swift/libswiftFoundation.dylib", "/usr/lib/swift/libswiftFoundation.dylib"),
    ("/usr/lib/swift/libxswift.dylib", None),
    ("/System/Library/Frameworks/Accelerate.framework/Versions/A/Accelerate",
     "/System/Library/Frameworks/Accelerate.framework/Versions/A/Accelerate"),
    ("/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation",
     "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation"),
    ("/System/Library/Frameworks/Accelerate.framework/Versions/A/Frameworks/vecLib.framework/Versions/A/libBLAS.dylib",
     "/System/Library/Frameworks/Accelerate.framework/Versions/A/Frameworks/vecLib.framework/Versions/A/libBLAS.dylib"),
    ("/System/Library/Frameworks/Foo.framework/Versions/A/Bar", None), ("/usr/local/lib/libz.1.dylib", None)])
def test_shared_cache_names(path: str, cached: str | None) -> None:
    assert shared_cache_path(path) == cached


def test_a_cached_leaf_is_found_by_the_fallbacks(tmp_path: Path, built: dict[str, Path]) -> None:
    """Rule 41: the fallback /usr/lib/<leaf> is asked of the cache like any other candidate."""
    d = tmp_path / "build"
    d.mkdir()
    (d / "s.c").write_text("int s(void) { return 0; }\n")
    (d / "u.c").write_text("int s(void);\nint u(void) { return s(); }\n")
    _dylib(d, ARM, "libz.1.dylib", "s.c", "@rpath/libz.1.dylib")
    user = _dylib(d, ARM, "libxuser.dylib", "u.c", "@rpath/libxuser.dylib", (), "./libz.1.dylib")
    r = _res(load_macho(RealTree(), str(user)), "@rpath/libz.1.dylib")
    assert r.found_via == "shared_cache" and r.path == "/usr/lib/libz.1.dylib"
    assert [(a.path, a.rule, a.result) for a in r.attempts] == [
        ("/usr/local/lib/libz.1.dylib", "fallback", "missing"), ("/usr/lib/libz.1.dylib", "fallback", "found")]


# (h) architectures: fat files, and a wrong-arch candidate skipped ------------------------

def test_fat_library_serves_both_arches(tmp_path: Path, built: dict[str, Path]) -> None:
    if "xb_fat" not in built:
        pytest.skip("no lipo to build a fat file")
    _place(tmp_path, {"a/lib/libxa.dylib": built["xa"], "x/a/lib/libxa.dylib": built["xa_x86"],
                      "b/lib/libxb.dylib": built["xb_fat"], "x/b/lib/libxb.dylib": built["xb_fat"]})
    for root, arch in (("a/lib/libxa.dylib", "arm64"), ("x/a/lib/libxa.dylib", "x86_64")):
        r = _res(load_macho(RealTree(), str(tmp_path / root), DyldOptions(arch=arch)), "@rpath/libxb.dylib")
        assert r.found_via == "rpath" and r.path is not None and r.path.endswith("b/lib/libxb.dylib"), arch
    # Default arch: the root's only slice.
    r = _res(load_macho(RealTree(), str(tmp_path / "x/a/lib/libxa.dylib")), "@rpath/libxb.dylib")
    assert r.found
    with pytest.raises(FormatError, match="no arm64 slice"):
        load_macho(RealTree(), str(tmp_path / "x/a/lib/libxa.dylib"), DyldOptions(arch="arm64"))


def test_wrong_arch_candidate_is_skipped(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"lib/libxa.dylib": built["xa_two"], "lib/x86/libxb.dylib": built["xb_x86"],
                      "lib/arm/libxb.dylib": built["xb"], "lib/junk/libxb.dylib": built["xa"].parent / "a.c"})
    r = _res(load_macho(RealTree(), str(tmp_path / "lib/libxa.dylib")), "@rpath/libxb.dylib")
    assert [(a.entry, a.result) for a in r.attempts[:2]] == [("@loader_path/x86", "wrong-arch"),
                                                             ("@loader_path/arm", "found")]
    assert r.path == str(tmp_path / "lib/arm/libxb.dylib")
    # A file that is not Mach-O is skipped the same way.
    opts = DyldOptions(dyld_library_path=(str(tmp_path / "lib/junk"),))
    r = _res(load_macho(RealTree(), str(tmp_path / "lib/libxa.dylib"), opts), "@rpath/libxb.dylib")
    assert r.attempts[0].result == "bad-file" and r.path == str(tmp_path / "lib/arm/libxb.dylib")


# (i) already loaded, matched by install name ---------------------------------------------

def test_already_loaded_by_install_name(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"d/libr.dylib": built["r"], "d/libxb.dylib": built["xb"], "d/libxd.dylib": built["xd"]})
    result = load_macho(RealTree(), str(tmp_path / "d/libr.dylib"))
    xb, xd = str(tmp_path / "d/libxb.dylib"), str(tmp_path / "d/libxd.dylib")
    first = _res(result, "@loader_path/libxb.dylib")
    assert first.found_via == "loader_path" and first.path == xb
    r = _res(result, "@rpath/libxb.dylib")
    assert r.requester == xd and r.found_via == "loaded" and r.path == xb and r.error is None
    assert [o.path for o in result.objects].count(xb) == 1
    assert result.missing == []
    # Asked for by libxd alone, nothing has been loaded and there is no LC_RPATH.
    assert explain(RealTree(), xd, "@rpath/libxb.dylib").error == NO_RPATH_ERROR


def test_same_file_by_two_paths_is_loaded_once(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"a/lib/libtop.dylib": built["top"], "a/lib/libxa.dylib": built["xa"],
                      "b/lib/libxb.dylib": built["xb"]})
    (tmp_path / "alias").symlink_to("b")
    opts = DyldOptions(dyld_library_path=(str(tmp_path / "alias/lib"),))
    result = load_macho(RealTree(), str(tmp_path / "a/lib/libtop.dylib"), opts)
    r = _res(result, "@rpath/libxb.dylib")
    assert r.found_via == "dyld_library_path" and r.path == str(tmp_path / "b/lib/libxb.dylib")
    assert r.attempts[0].note == f"real path {tmp_path}/b/lib/libxb.dylib"
    assert len({o.path for o in result.objects}) == len(result.objects)


def test_executable_path_and_restricted(tmp_path: Path, built: dict[str, Path]) -> None:
    _place(tmp_path, {"bin/python": built["exe"], "ext/libxa.dylib": built["xa_norpath"],
                      "b/lib/libxb.dylib": built["xb"]})
    opts = DyldOptions(executable=str(tmp_path / "bin/python"), restricted=True)
    r = _res(load_macho(RealTree(), str(tmp_path / "ext/libxa.dylib"), opts, dlopen=True), "@rpath/libxb.dylib")
    assert not r.found and r.error == NO_RPATH_ERROR
    assert r.attempts[0].result == "skipped" and r.attempts[0].entry == "@executable_path/../b/lib"


def test_missing_root_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        load_macho(RealTree(), str(tmp_path / "nope.dylib"))
    (tmp_path / "text.dylib").write_text("hello")
    with pytest.raises(FormatError):
        load_macho(RealTree(), str(tmp_path / "text.dylib"))
