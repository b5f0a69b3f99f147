"""The glibc binding model (version needs, undefined symbols) against the real ld.so.

Every scenario is loaded twice: by a real interpreter in a subprocess (ctypes.CDLL, which
dlopen()s with RTLD_NOW, or an import under sys.setdlopenflags) and by the model
(bind_glibc.load_and_bind with this interpreter as the executable). They must agree on
whether the load works and, when it fails, on ld.so's message. Each failing row has a
passing control that differs in one thing. Rules 42-47 are in docs/loader-rules.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import zig_cc
from rpathfix.bind_glibc import SymbolTables, check_program, explain_symbol, load_and_bind
from rpathfix.fstree import RealTree
from rpathfix.loader_glibc import GlibcProcess, host_options
from rpathfix.resolution import UNDEFINED_SYMBOL, VERSION_NOT_FOUND

PY_INCLUDE = sysconfig.get_paths()["include"]


def build(d: Path, name: str, src: str, *, cxx: bool = False, needs: tuple[str, ...] = (),
          script: str | None = None, soname: str | None = None, libdirs: tuple[Path, ...] = (),
          args: tuple[str, ...] = ()) -> Path:
    """A shared library built with gcc (g++ for cxx): DT_NEEDED as given, undefined symbols
    allowed (the default for -shared), an optional version script."""
    d.mkdir(parents=True, exist_ok=True)
    srcf = d / f"{name}.src{'.cc' if cxx else '.c'}"
    srcf.write_text(src)
    cmd = ["g++" if cxx else "gcc", "-shared", "-fPIC", "-o", str(d / name), str(srcf),
           f"-Wl,-soname,{soname or name}", "-Wl,--no-as-needed", f"-L{d}", f"-I{PY_INCLUDE}"]
    cmd += [f"-L{x}" for x in libdirs]
    if script is not None:
        (d / f"{name}.map").write_text(script)
        cmd.append(f"-Wl,--version-script={d / f'{name}.map'}")
    cmd += [f"-l:{n}" for n in needs]
    cmd += list(args)
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    srcf.unlink()
    return d / name


REAL = r"""
import ctypes, json, os, sys
steps = json.loads(sys.argv[1])
try:
    for path, mode in steps[:-1]:
        ctypes.CDLL(path, mode=getattr(os, mode))
    path, how = steps[-1]
    if how == "ctypes":
        ctypes.CDLL(path)
    else:
        sys.setdlopenflags(getattr(os, how))
        sys.path.insert(0, os.path.dirname(path))
        __import__(os.path.basename(path).split(".")[0])
except (OSError, ImportError) as e:
    print("FAIL", e)
else:
    print("OK")
"""


def real(target: Path, how: str = "ctypes", before: tuple[tuple[Path, str], ...] = ()) -> str | None:
    """None when the real interpreter loads `target`, else ld.so's message."""
    steps = [[str(p), m] for p, m in before] + [[str(target), how]]
    env = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "LD_BIND_NOW")}
    out = subprocess.run([sys.executable, "-c", REAL, json.dumps(steps)], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    line = out.stdout.strip()
    return None if line == "OK" else line.removeprefix("FAIL ")


def model(target: Path, how: str = "ctypes", before: tuple[tuple[Path, str], ...] = (),
          executable: str | None = None) -> str | None:
    """The model's answer in the same terms: None, or the first problem's message."""
    tree = RealTree()
    tables = SymbolTables(tree)
    try:
        result, problems = load_and_bind(tree, str(target), host_options(executable=executable or sys.executable),
                                         tables, lazy=how == "RTLD_LAZY",
                                         loaded_before=[(str(p), m == "RTLD_GLOBAL") for p, m in before])
    finally:
        tables.close()
    assert not result.missing, result.missing
    return problems[0].message if problems else None


def agree(target: Path, how: str = "ctypes", before: tuple[tuple[Path, str], ...] = ()) -> str | None:
    """Both answers, which must be equal; returns the message (None: it loads)."""
    theirs = real(target, how, before)
    ours = model(target, how, before)
    assert ours == theirs, (target, how)
    return theirs


# ------------------------------------------------------------------ version needs


def test_newer_glibc_version_need_zig(tmp_path: Path) -> None:
    """zig cc for glibc 2.38 calling strlcpy (new in 2.38) on this older glibc; the control
    calls strncpy (GLIBC_2.2.5) with the same target and loads."""
    (tmp_path / "s.c").write_text("#include <string.h>\n"
                                  "size_t f(char *d, const char *s, size_t n) { return strlcpy(d, s, n); }\n")
    (tmp_path / "c.c").write_text("#include <string.h>\n"
                                  "char *f(char *d, const char *s, size_t n) { return strncpy(d, s, n); }\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-shared", "-fPIC", "-o", "libxstrlcpy.so", "s.c")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-shared", "-fPIC", "-o", "libxstrncpy.so", "c.c")
    msg = agree(tmp_path / "libxstrlcpy.so")
    if msg is None:
        pytest.skip("this glibc has strlcpy (2.38 or later)")
    assert "version `GLIBC_2.38' not found (required by" in msg
    assert agree(tmp_path / "libxstrncpy.so") is None


GLIBCXX_SYMBOL = "_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE"


@pytest.mark.parametrize("version", ["GLIBCXX_3.4.32", "GLIBCXX_3.4.30"])
def test_newer_glibcxx_version_need(tmp_path: Path, version: str) -> None:
    """An extension linked against a newer libstdc++ (a link-time libstdc++.so.6 whose
    condition_variable::wait is GLIBCXX_3.4.32, as a newer toolchain's would be), run with
    this system's (3.4.30): the need fails. The control links against 3.4.30 and binds."""
    stub = build(tmp_path / "sdk", "libstdc++.so.6", f"void {GLIBCXX_SYMBOL}(void *m) {{ (void)m; }}\n",
                 script=f"GLIBCXX_3.4 {{ }}; {version} {{ {GLIBCXX_SYMBOL}; }} GLIBCXX_3.4;\n")
    ext = build(tmp_path / "ext", "libxuses_cxx.so",
                f"void {GLIBCXX_SYMBOL}(void *m);\nvoid g(void *m) {{ {GLIBCXX_SYMBOL}(m); }}\n",
                needs=("libstdc++.so.6",), libdirs=(stub.parent,))
    msg = agree(ext)
    if version == "GLIBCXX_3.4.32":
        assert msg is not None and f"version `{version}' not found (required by {ext})" in msg
    else:
        assert msg is None


def test_weak_version_need_may_be_missing(tmp_path: Path) -> None:
    """A need flagged VER_FLG_WEAK may be missing (ld.so only mentions it under ldd -v).
    No linker option asks for the flag, so it is set by hand in the built file. The
    runtime libxver.so defines versions, but not XVER_2, and an unversioned ver_fn (which
    a versioned reference accepts, rule 47)."""
    sdk = build(tmp_path / "sdk", "libxver.so", "int ver_fn(void) { return 1; }\n", script="XVER_2 { ver_fn; };\n")
    target = build(tmp_path / "run", "libxneedsver.so", "int ver_fn(void);\nint g(void) { return ver_fn(); }\n",
                   needs=("libxver.so",), libdirs=(sdk.parent,), args=("-Wl,-rpath,$ORIGIN",))
    build(tmp_path / "run", "libxver.so", "int ver_fn(void) { return 1; }\nint other(void) { return 2; }\n",
          script="XVER_1 { other; };\n")
    strong = agree(target)
    assert strong is not None and "version `XVER_2' not found" in strong
    _set_weak_flag(target, "XVER_2")
    assert agree(target) is None


def _set_weak_flag(path: Path, version: str) -> None:
    from rpathfix.elf_symbols import VER_FLG_WEAK, sysv_hash

    data = bytearray(path.read_bytes())
    h = sysv_hash(version.encode())
    # Vernaux: vna_hash (4), vna_flags (2), vna_other (2), vna_name (4), vna_next (4).
    at = data.find(h.to_bytes(4, "little"))
    assert at > 0
    data[at + 4:at + 6] = VER_FLG_WEAK.to_bytes(2, "little")
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ undefined symbols


def test_undefined_function_and_object(tmp_path: Path) -> None:
    """gcc: one undefined function (PLT), one undefined object (GLOB_DAT). ld.so names the
    object first (.rela.dyn before .rela.plt); the controls link the provider."""
    fn = build(tmp_path / "a", "libxundef_fn.so", "int missing_fn(void);\nint f(void) { return missing_fn(); }\n")
    var = build(tmp_path / "b", "libxundef_var.so", "extern int missing_var;\nint f(void) { return missing_var; }\n")
    both = build(tmp_path / "c", "libxundef_both.so",
                 "int missing_fn(void);\nextern int missing_var;\nint f(void) { return missing_fn() + missing_var; }\n")
    assert agree(fn) == f"{fn}: undefined symbol: missing_fn"
    assert agree(var) == f"{var}: undefined symbol: missing_var"
    assert agree(both) == f"{both}: undefined symbol: missing_var"
    prov = build(tmp_path / "p", "libxprovider.so", "int missing_var = 1;\nint missing_fn(void) { return 2; }\n")
    for name, src in (("libxfn_ok.so", "int missing_fn(void);\nint f(void) { return missing_fn(); }\n"),
                      ("libxvar_ok.so", "extern int missing_var;\nint f(void) { return missing_var; }\n")):
        ok = build(tmp_path / "p", name, src, needs=("libxprovider.so",), args=(f"-Wl,-rpath,{prov.parent}",))
        assert agree(ok) is None


def test_undefined_function_zig(tmp_path: Path) -> None:
    (tmp_path / "u.c").write_text("extern int missing_fn(void);\nextern int missing_var;\n"
                                  "int f(void) { return missing_fn() + missing_var; }\n")
    (tmp_path / "p.c").write_text("int missing_fn(void) { return 1; }\nint missing_var = 2;\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.28", "-shared", "-fPIC", "-o", "libxzundef.so", "u.c")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.28", "-shared", "-fPIC", "-o", "libxzprov.so", "p.c")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.28", "-shared", "-fPIC", "-o", "libxzok.so", "u.c", "-L.", "-lxzprov",
           f"-Wl,-rpath,{tmp_path}")
    msg = agree(tmp_path / "libxzundef.so")
    assert msg is not None and "undefined symbol: missing_" in msg
    assert agree(tmp_path / "libxzok.so") is None


def test_weak_undefined_loads(tmp_path: Path) -> None:
    weak = build(tmp_path, "libxweak.so",
                 "extern int missing_fn(void) __attribute__((weak));\n"
                 "int f(void) { return missing_fn ? missing_fn() : 0; }\n")
    strong = build(tmp_path, "libxstrong.so",
                   "extern int missing_fn(void);\nint f(void) { return missing_fn ? missing_fn() : 0; }\n")
    assert agree(weak) is None
    assert agree(strong) is not None


def test_symbol_from_a_later_library_in_breadth_first_order(tmp_path: Path) -> None:
    """top needs A and B; B uses c_fn, which only C (a dependency of A) defines: C is in
    top's search list, so B binds. B loaded alone does not."""
    c = build(tmp_path, "libxc.so", "int c_fn(void) { return 3; }\n")
    a = build(tmp_path, "libxa.so", "int a_fn(void) { return 1; }\n", needs=(c.name,), args=("-Wl,-rpath,$ORIGIN",))
    b = build(tmp_path, "libxb.so", "int c_fn(void);\nint b_fn(void) { return c_fn(); }\n")
    top = build(tmp_path, "libxtop.so", "int t(void) { return 0; }\n", needs=(a.name, b.name),
                args=(f"-Wl,-rpath,{tmp_path}",))
    assert agree(top) is None
    assert agree(b) == f"{b}: undefined symbol: c_fn"


@pytest.mark.parametrize("mode", ["RTLD_GLOBAL", "RTLD_LOCAL"])
def test_symbol_from_an_earlier_global_library(tmp_path: Path, mode: str) -> None:
    """P defines p_fn; Q uses it without needing P. P dlopen()ed first with RTLD_GLOBAL
    puts p_fn in the global scope; with RTLD_LOCAL it is in no scope of Q's load."""
    p = build(tmp_path, "libxp.so", "int p_fn(void) { return 1; }\n")
    q = build(tmp_path, "libxq.so", "int p_fn(void);\nint q_fn(void) { return p_fn(); }\n")
    msg = agree(q, before=((p, mode),))
    assert (msg is None) == (mode == "RTLD_GLOBAL")


V1 = "XV_1 { foo; bar; };\n"


@pytest.mark.parametrize("runtime", ["moved", "kept", "hidden-old"])
def test_versioned_reference_whose_version_exists_but_not_for_that_symbol(tmp_path: Path, runtime: str) -> None:
    """The extension is linked against foo@XV_1. Run with a library where foo moved to
    XV_2 (XV_1 still exists, for bar): "undefined symbol: foo, version XV_1". Controls:
    foo still @@XV_1; or foo@XV_1 kept as a non-default (hidden) version beside
    foo@@XV_2, which a versioned reference still binds to."""
    sdk = build(tmp_path / "sdk", "libxv.so", "int foo(void) { return 1; }\nint bar(void) { return 2; }\n", script=V1)
    ext = build(tmp_path / "run", "libxusesv.so", "int foo(void);\nint g(void) { return foo(); }\n",
                needs=("libxv.so",), libdirs=(sdk.parent,), args=("-Wl,-rpath,$ORIGIN",))
    srcs = {
        "moved": ("int foo(void) { return 1; }\nint bar(void) { return 2; }\n",
                  "XV_1 { bar; };\nXV_2 { foo; } XV_1;\n"),
        "kept": ("int foo(void) { return 1; }\nint bar(void) { return 2; }\n", V1),
        "hidden-old": ("int foo_old(void) { return 1; }\nint foo_new(void) { return 3; }\nint bar(void) { return 2; }\n"
                       "__asm__(\".symver foo_old,foo@XV_1\");\n__asm__(\".symver foo_new,foo@@XV_2\");\n",
                       "XV_1 { bar; };\nXV_2 { } XV_1;\n"),
    }
    src, script = srcs[runtime]
    build(tmp_path / "run", "libxv.so", src, script=script)
    msg = agree(ext)
    if runtime == "moved":
        assert msg == f"{ext}: undefined symbol: foo, version XV_1"
    else:
        assert msg is None


@pytest.mark.parametrize("runtime", ["only-hidden", "only-default", "oldest-hidden"])
def test_unversioned_reference_against_versioned_definitions(tmp_path: Path, runtime: str) -> None:
    """Rule 47 for an unversioned reference (linked against an unversioned libxu.so): a
    later version binds when it is the only non-hidden one (`foo@@XU_2`), not when it is
    hidden (`foo@XU_2`); the oldest version (index 2) binds even when hidden."""
    sdk = build(tmp_path / "sdk", "libxu.so", "int foo(void) { return 1; }\n")
    ext = build(tmp_path / "run", "libxusesu.so", "int foo(void);\nint g(void) { return foo(); }\n",
                needs=("libxu.so",), libdirs=(sdk.parent,), args=("-Wl,-rpath,$ORIGIN",))
    base = "int foo_impl(void) { return 1; }\nint other(void) { return 2; }\n"
    srcs = {
        "only-hidden": (base + "__asm__(\".symver foo_impl,foo@XU_2\");\n", "XU_1 { other; };\nXU_2 { } XU_1;\n"),
        "only-default": (base + "__asm__(\".symver foo_impl,foo@@XU_2\");\n", "XU_1 { other; };\nXU_2 { } XU_1;\n"),
        "oldest-hidden": (base + "__asm__(\".symver foo_impl,foo@XU_1\");\n", "XU_1 { other; };\nXU_2 { } XU_1;\n"),
    }
    src, script = srcs[runtime]
    build(tmp_path / "run", "libxu.so", src, script=script)
    msg = agree(ext)
    assert (msg is None) == (runtime != "only-hidden"), msg


def test_gnu_unique_definition_binds(tmp_path: Path) -> None:
    """A C++ template's static data member is STB_GNU_UNIQUE in the library that
    instantiates it; a reference from another library binds to it. Control: without it."""
    hdr = "template <class T> struct Box { static int value; };\ntemplate <class T> int Box<T>::value = 7;\n"
    prov = build(tmp_path, "libxuniq.so", hdr + "template struct Box<int>;\n", cxx=True)
    out = subprocess.run(["readelf", "--dyn-syms", "-W", str(prov)], capture_output=True, text=True).stdout
    assert re.search(r"UNIQUE .*_ZN3BoxIiE5valueE", out), out
    user_src = hdr.replace("= 7;", "= 7;\nextern template struct Box<int>;") + "int get() { return Box<int>::value; }\n"
    user = build(tmp_path, "libxuniquser.so", user_src, cxx=True, needs=(prov.name,),
                 args=(f"-Wl,-rpath,{tmp_path}",))
    lone = build(tmp_path, "libxuniqlone.so", user_src, cxx=True)
    assert agree(user) is None
    assert agree(lone) == f"{lone}: undefined symbol: _ZN3BoxIiE5valueE"


# ------------------------------------------------------------------ RTLD_LAZY


@pytest.mark.parametrize("flags", ["RTLD_LAZY", "RTLD_NOW"])
def test_lazy_import_leaves_functions_unbound_but_not_data(tmp_path: Path, flags: str) -> None:
    src = ("#include <Python.h>\nint missing_fn(void);\n"
           "static PyObject *call(PyObject *s, PyObject *a) { return PyLong_FromLong(missing_fn()); }\n"
           "static PyMethodDef m[] = {{\"call\", call, METH_NOARGS, 0}, {0}};\n"
           "static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"NAME\", 0, -1, m};\n"
           "PyMODINIT_FUNC PyInit_NAME(void) { return PyModule_Create(&d); }\n")
    fn = build(tmp_path, "xlazyfn.so", src.replace("NAME", "xlazyfn"))
    var = build(tmp_path, "xlazyvar.so", src.replace("NAME", "xlazyvar").replace(
        "int missing_fn(void);", "extern int missing_var;\nstatic int missing_fn(void) { return missing_var; }"))
    now = build(tmp_path, "xlazynow.so", src.replace("NAME", "xlazynow"), args=("-Wl,-z,now",))
    assert (agree(fn, flags) is None) == (flags == "RTLD_LAZY")
    assert agree(var, flags) is not None
    assert agree(now, flags) is not None  # DF_BIND_NOW: bound at load even under RTLD_LAZY


# ------------------------------------------------------------------ Python and torch-like


def test_extension_resolves_the_c_api_from_the_interpreter(tmp_path: Path) -> None:
    """An extension module built without -lpython binds PyLong_FromLong to the interpreter
    (or its libpython) through the global scope. The control: a plain C program that
    dlopen()s the same module fails, in the real process and in the model."""
    src = ("#include <Python.h>\nstatic struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"xcapi\", 0, -1, 0};\n"
           "PyMODINIT_FUNC PyInit_xcapi(void) { PyObject *m = PyModule_Create(&d);\n"
           "  PyModule_AddObject(m, \"answer\", PyLong_FromLong(42)); return m; }\n")
    ext = build(tmp_path, "xcapi.so", src)
    assert agree(ext, "RTLD_NOW") is None
    loader = tmp_path / "dlopener"
    (tmp_path / "dlopener.c").write_text(
        "#include <dlfcn.h>\n#include <stdio.h>\nint main(int c, char **v) {\n"
        "  if (!dlopen(v[1], RTLD_NOW)) { printf(\"%s\\n\", dlerror()); return 1; } puts(\"OK\"); return 0; }\n")
    subprocess.run(["gcc", "-o", str(loader), str(tmp_path / "dlopener.c"), "-ldl"], check=True)
    out = subprocess.run([str(loader), str(ext)], capture_output=True, text=True).stdout.strip()
    assert out.startswith(f"{ext}: undefined symbol: Py"), out
    assert model(ext, executable=str(loader)) == out


TORCH_V1 = ("namespace c10 { namespace impl { int dispatch(int k) { return k + 1; } } }\n"
            "namespace c10 { int version() { return 1; } }\n")
TORCH_V2 = ("namespace c10 { namespace impl { int dispatch(int k, bool fast) { return k + fast; } } }\n"
            "namespace c10 { int version() { return 2; } }\n")


@pytest.mark.parametrize("runtime", ["v1", "v2"])
def test_torch_like_extension_against_another_torch(tmp_path: Path, runtime: str) -> None:
    """An extension built against a "v1" stub libtorch (c10::impl::dispatch(int)) and run
    with a "v2" one, where the function takes another argument: "undefined symbol:
    _ZN3c104impl8dispatchEi". The control runs with v1."""
    sdk = build(tmp_path / "v1", "libxtorch.so", TORCH_V1, cxx=True)
    ext_src = ('#include <Python.h>\nnamespace c10 { namespace impl { int dispatch(int k); } }\n'
               'static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "xtorchext", 0, -1, 0};\n'
               'extern "C" PyMODINIT_FUNC PyInit_xtorchext(void) { PyObject *m = PyModule_Create(&d);\n'
               '  PyModule_AddObject(m, "v", PyLong_FromLong(c10::impl::dispatch(1))); return m; }\n')
    ext = build(tmp_path / "site", "xtorchext.so", ext_src, cxx=True, needs=("libxtorch.so",),
                libdirs=(sdk.parent,), args=("-Wl,-rpath,$ORIGIN/lib",))
    build(tmp_path / "site" / "lib", "libxtorch.so", TORCH_V1 if runtime == "v1" else TORCH_V2, cxx=True)
    msg = agree(ext, "RTLD_NOW")
    if runtime == "v1":
        assert msg is None
    else:
        assert msg == f"{ext}: undefined symbol: _ZN3c104impl8dispatchEi"


# ------------------------------------------------------------------ ldd mode and why


def ldd_r(path: Path) -> list[str]:
    """The error lines of the real `ldd -r` (version and undefined-symbol lines)."""
    out = subprocess.run(["ldd", "-r", str(path)], capture_output=True, text=True)
    lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines()]
    return [ln for ln in lines if "not found (required by" in ln or ln.startswith("undefined symbol:")]


def test_program_mode_matches_ldd_r(tmp_path: Path) -> None:
    """`ldd -r` reports every failing version need and every undefined symbol, of every
    object: the model's program mode reports the same set."""
    (tmp_path / "s.c").write_text("#include <string.h>\n"
                                  "size_t f(char *d, const char *s, size_t n) { return strlcpy(d, s, n); }\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-shared", "-fPIC", "-o", "libxstrlcpy.so", "s.c")
    dep = build(tmp_path, "libxdep.so", "int missing_fn(void);\nextern int missing_var;\n"
                "int d(void) { return missing_fn() + missing_var; }\n")
    top = build(tmp_path, "libxtop.so", "int t(void) { return 0; }\n", needs=(dep.name, "libxstrlcpy.so"),
                args=(f"-Wl,-rpath,{tmp_path}",))
    theirs = ldd_r(top)
    proc = GlibcProcess(RealTree(), host_options())
    proc.start(str(top), as_ldd=True)
    tables = SymbolTables(RealTree())
    try:
        problems = check_program(proc, tables, bind=True)
    finally:
        tables.close()
    ours = []
    for p in problems:
        if p.kind == VERSION_NOT_FOUND:
            ours.append(f"{top}: {p.message}")  # ldd puts the program's name first
        else:
            ours.append(f"undefined symbol: {p.symbol}{', version ' + p.version if p.version else ''}\t({p.requester})")
    if not any("GLIBC_2.38" in t for t in theirs):  # a glibc with strlcpy
        ours = [o for o in ours if "GLIBC_2.38" not in o]
    assert [t.replace("\t", " ") for t in theirs] == [o.replace("\t", " ") for o in ours]
    assert any(p.kind == UNDEFINED_SYMBOL and p.symbol == "missing_var" for p in problems)


def test_why_names_the_provider_ld_debug_names(tmp_path: Path) -> None:
    """Interposition: dup_fn is defined by A and by C (A's dependency); B's reference binds
    to A, the first in breadth-first order, as LD_DEBUG=bindings shows."""
    c = build(tmp_path, "libxc.so", "int dup_fn(void) { return 3; }\n")
    a = build(tmp_path, "libxa.so", "int dup_fn(void) { return 1; }\n", needs=(c.name,), args=("-Wl,-rpath,$ORIGIN",))
    b = build(tmp_path, "libxb.so", "int dup_fn(void);\nint b_fn(void) { return dup_fn(); }\n")
    top = build(tmp_path, "libxtop.so", "int t(void) { return 0; }\n", needs=(b.name, a.name),
                args=(f"-Wl,-rpath,{tmp_path}",))
    env = {**{k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}, "LD_DEBUG": "bindings"}
    out = subprocess.run([sys.executable, "-c", f"import ctypes; ctypes.CDLL({str(top)!r})"], capture_output=True,
                         text=True, env=env).stderr
    m = re.search(rf"binding file {re.escape(str(b))} \[0\] to (\S+) \[0\]: normal symbol `dup_fn'", out)
    assert m, out[-2000:]
    trace, _result = explain_symbol(RealTree(), str(top), "dup_fn", host_options(executable=sys.executable))
    assert trace.provider is None or trace.requester == str(top)
    trace, _result = explain_symbol(RealTree(), str(b), "dup_fn", host_options(executable=sys.executable))
    assert trace.provider is None  # b alone: nothing defines it (the control)
    # In top's load, b's reference: the model's ordered walk ends at A, as ld.so's does.
    from rpathfix.bind_glibc import global_scope, searchlist

    tables = SymbolTables(RealTree())
    try:
        proc = GlibcProcess(RealTree(), host_options(executable=sys.executable))
        proc.start(sys.executable)
        _res, obj = proc.dlopen(str(top))
        assert obj is not None
        order = global_scope(proc) + searchlist(proc, obj)
        first = next(o for o in order if tables.lookup(o.real, "dup_fn", None) is not None)
    finally:
        tables.close()
    assert first.path == m.group(1) == str(a)


# ------------------------------------------------------------------ the commands


def test_ldd_prints_one_not_found_row_per_requester(tmp_path: Path) -> None:
    """Two objects need libxgone.so and neither finds it: ldd(1) prints two rows (a faked
    entry per failed search), and so does `rpathfix ldd` (it used to keep one per name)."""
    gone = build(tmp_path / "gone", "libxgone.so", "int g(void) { return 0; }\n")
    dep = build(tmp_path, "libxdep2.so", "int d(void) { return 0; }\n", needs=(gone.name,), libdirs=(gone.parent,))
    top = build(tmp_path, "libxtop2.so", "int t(void) { return 0; }\n", needs=(dep.name, gone.name),
                libdirs=(gone.parent,), args=("-Wl,-rpath,$ORIGIN",))
    real_rows = subprocess.run(["ldd", str(top)], capture_output=True, text=True).stdout.count("libxgone.so => not found")
    assert real_rows == 2
    out = rpathfix("ldd", "--json", str(top))
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    rows = [r for r in doc["libraries"] if r["name"] == "libxgone.so"]
    assert sorted(r["needed_by"] for r in rows) == sorted([str(top), str(dep)])
    assert doc["problems"] == []


def test_ldd_r_and_why_through_the_cli(tmp_path: Path) -> None:
    dep = build(tmp_path, "libxdep3.so", "int missing_fn(void);\nint d(void) { return missing_fn(); }\n")
    out = rpathfix("ldd", str(dep))
    assert out.returncode == 0, out.stdout  # ldd without -r binds nothing
    out = rpathfix("ldd", "-r", "--json", str(dep))
    assert out.returncode == 1
    (p,) = json.loads(out.stdout)["problems"]
    assert (p["kind"], p["symbol"], p["required_by"]) == ("undefined-symbol", "missing_fn", str(dep))
    assert p["loader_message"] == f"{dep}: undefined symbol: missing_fn"
    assert str(dep) in p["searched"] and any("libc.so.6" in s for s in p["searched"])
    why = rpathfix("why", str(dep), "missing_fn")
    assert why.returncode == 1 and "NOT DEFINED" in why.stdout and "libc.so.6" in why.stdout
    why = rpathfix("why", str(dep), "puts")
    assert why.returncode == 0 and re.search(r"bound to \S*libc\.so\.6: (GLOBAL|WEAK) FUNC puts@@GLIBC_2\.2\.5", why.stdout)


def rpathfix(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rpathfix", *args], capture_output=True, text=True, timeout=300)


def test_verify_reports_versions_and_symbols_as_the_real_import_does(tmp_path: Path) -> None:
    """A site-packages with three extension modules: one needing GLIBC_2.38 (zig), one built
    against a v1 stub libtorch and shipped with v2 (C++: the message demangles), one fine.
    verify reports the first two with the new codes and keys; a real interpreter imports
    only the third. The control: --no-symbols reports nothing."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (tmp_path / "e.c").write_text(
        "#include <Python.h>\n#include <string.h>\n"
        "static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"xnewglibc\", 0, -1, 0};\n"
        "PyMODINIT_FUNC PyInit_xnewglibc(void) { char b[4]; strlcpy(b, \"ab\", 4); return PyModule_Create(&d); }\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-shared", "-fPIC", f"-I{PY_INCLUDE}", "-o",
           str(site / "xnewglibc.cpython-311-x86_64-linux-gnu.so"), "e.c")
    sdk = build(tmp_path / "v1", "libxtorch.so", TORCH_V1, cxx=True)
    ext_src = ('#include <Python.h>\nnamespace c10 { namespace impl { int dispatch(int k); } }\n'
               'static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "xtorchext", 0, -1, 0};\n'
               'extern "C" PyMODINIT_FUNC PyInit_xtorchext(void) { PyObject *m = PyModule_Create(&d);\n'
               '  PyModule_AddObject(m, "v", PyLong_FromLong(c10::impl::dispatch(1))); return m; }\n')
    build(site, "xtorchext.cpython-311-x86_64-linux-gnu.so", ext_src, cxx=True, needs=("libxtorch.so",),
          libdirs=(sdk.parent,), args=("-Wl,-rpath,$ORIGIN/xtorch_lib",))
    build(site / "xtorch_lib", "libxtorch.so", TORCH_V2, cxx=True)
    build(site, "xfine.cpython-311-x86_64-linux-gnu.so",
          '#include <Python.h>\nstatic struct PyModuleDef d = {PyModuleDef_HEAD_INIT, "xfine", 0, -1, 0};\n'
          'PyMODINIT_FUNC PyInit_xfine(void) { return PyModule_Create(&d); }\n')
    out = rpathfix("verify", "--json", str(site))
    doc = json.loads(out.stdout)
    assert out.returncode == 1, out.stderr
    by_module = {Path(e["file"]).name.split(".")[0]: e for e in doc["errors"]}
    real_fails = set()
    for mod in ("xnewglibc", "xtorchext", "xfine"):
        r = subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True, text=True,
                           env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
        if r.returncode != 0:
            real_fails.add(mod)
            assert by_module[mod]["loader_message"] in r.stderr, r.stderr
    if "xnewglibc" not in real_fails:
        pytest.skip("this glibc has strlcpy (2.38 or later)")
    assert set(by_module) == real_fails == {"xnewglibc", "xtorchext"}
    v = by_module["xnewglibc"]
    assert (v["code"], v["name"], v["version"], v["symbol"]) == ("version-not-found", "GLIBC_2.38", "GLIBC_2.38", None)
    assert v["provider"].endswith("libc.so.6") and "the newest GLIBC version it defines is GLIBC_2.3" in v["message"]
    t = by_module["xtorchext"]
    assert (t["code"], t["symbol"]) == ("undefined-symbol", "_ZN3c104impl8dispatchEi")
    if shutil.which("c++filt"):
        assert t["demangled"] == "c10::impl::dispatch(int)" and "c10::impl::dispatch(int)" in t["message"]
    assert set(t) >= {"file", "name", "code", "message", "trace", "symbol", "demangled", "version", "required_by",
                      "provider", "searched", "loader_message"}
    control = json.loads(rpathfix("verify", "--json", "--no-symbols", str(site)).stdout)
    assert control["errors"] == []


def test_few_open_files_same_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With only two symbol-table files open at once (the least recently used closed and
    opened again on demand), every answer is the one of an unbounded run."""
    import rpathfix.bind_glibc as bg

    libs = [build(tmp_path, f"libxp{i}.so", f"int p{i}(void) {{ return {i}; }}\n") for i in range(4)]
    calls = "".join(f"int p{i}(void);\n" for i in range(5)) + "int t(void) { return p0()+p1()+p2()+p3()+p4(); }\n"
    top = build(tmp_path, "libxtopn.so", calls, needs=tuple(p.name for p in libs), args=("-Wl,-rpath,$ORIGIN",))
    want = model(top)
    assert want == f"{top}: undefined symbol: p4"
    monkeypatch.setattr(bg, "MAX_OPEN", 2)
    assert model(top) == want


def test_symbols_a_gpu_driver_library_could_define_are_not_reported(tmp_path: Path) -> None:
    """libcuda.so.1 comes with the driver: the model does not open it (DRIVER_LIBS), so an
    undefined cuInit of a library that needs it is not an error; with driver_libs off the
    name is missing instead (the control: the load fails before any binding)."""
    stub = build(tmp_path / "stubs", "libcuda.so.1", "int cuInit(unsigned f) { return (int)f; }\n")
    user = build(tmp_path, "libxusescuda.so", "int cuInit(unsigned);\nint f(void) { return cuInit(0); }\n",
                 needs=("libcuda.so.1",), libdirs=(stub.parent,))
    tree = RealTree()
    tables = SymbolTables(tree)
    try:
        if host_options().cache is not None and host_options().cache.lookup("libcuda.so.1", "x86_64", 64):
            pytest.skip("this machine has a libcuda.so.1 in its ld.so.cache")
        result, problems = load_and_bind(tree, str(user), host_options(executable=sys.executable), tables)
        assert not result.missing and problems == []
        result, problems = load_and_bind(tree, str(user), host_options(executable=sys.executable, driver_libs=False),
                                         tables)
        assert [r.name for r in result.missing] == ["libcuda.so.1"] and problems == []
    finally:
        tables.close()


def test_extension_using_a_newer_c_api_function(tmp_path: Path) -> None:
    """A module built against a newer Python's C API (PyLong_AsInt arrived in 3.13) fails
    to import in this interpreter with "undefined symbol: PyLong_AsInt"; the control
    calls PyLong_AsLong, which every version has."""
    if sys.version_info >= (3, 13):
        pytest.skip("this interpreter has PyLong_AsInt")
    src = ("#include <Python.h>\nint PyLong_AsInt(PyObject *);\n"
           "static struct PyModuleDef d = {PyModuleDef_HEAD_INIT, \"NAME\", 0, -1, 0};\n"
           "PyMODINIT_FUNC PyInit_NAME(void) { PyObject *m = PyModule_Create(&d);\n"
           "  PyModule_AddObject(m, \"v\", PyLong_FromLong(CALL(PyLong_FromLong(1)))); return m; }\n")
    new = build(tmp_path, "xnewapi.so", src.replace("NAME", "xnewapi").replace("CALL", "PyLong_AsInt"))
    old = build(tmp_path, "xoldapi.so", src.replace("NAME", "xoldapi").replace("CALL", "PyLong_AsLong"))
    assert agree(new, "RTLD_NOW") == f"{new}: undefined symbol: PyLong_AsInt"
    assert agree(old, "RTLD_NOW") is None


# ------------------------------------------------------------------ programs


def run_program(prog: Path, bind_now: bool = False) -> str | None:
    """None when the program starts (and exits 0), else what ld.so printed."""
    env = {"PATH": "/usr/bin:/bin", **({"LD_BIND_NOW": "1"} if bind_now else {})}
    r = subprocess.run([str(prog)], capture_output=True, text=True, env=env)
    return None if r.returncode == 0 else r.stderr.strip()


def model_program(prog: Path, bind_now: bool = False) -> str | None:
    proc = GlibcProcess(RealTree(), host_options())
    proc.start(str(prog))
    tables = SymbolTables(RealTree())
    try:
        problems = check_program(proc, tables, bind=True, lazy=not bind_now, trace=False)
    finally:
        tables.close()
    return problems[0].message if problems else None


def test_programs_start_as_ld_so_starts_them(tmp_path: Path) -> None:
    """A program is bound lazily at start-up: an undefined function it never calls does
    not stop it (it does with LD_BIND_NOW, the control), an undefined object does, and so
    does a version need of a newer glibc (zig, strlcpy)."""
    sdk = build(tmp_path / "sdk", "libxprov.so", "int gone_fn(void) { return 1; }\nint gone_var = 2;\n")
    build(tmp_path / "bin", "libxprov.so", "int other(void) { return 0; }\n")
    progs = {}
    for name, body in (("xfn", "int gone_fn(void);\nint main(int c, char **v) { return c > 5 ? gone_fn() : 0; }\n"),
                       ("xvar", "extern int gone_var;\nint main(int c, char **v) { return c > 5 ? gone_var : 0; }\n")):
        (tmp_path / f"{name}.c").write_text(body)
        subprocess.run(["gcc", "-o", str(tmp_path / "bin" / name), str(tmp_path / f"{name}.c"), f"-L{sdk.parent}",
                        "-l:libxprov.so", "-Wl,-rpath,$ORIGIN", "-Wl,-z,lazy"], check=True)
        progs[name] = tmp_path / "bin" / name
    for name, bind_now, fails in (("xfn", False, False), ("xfn", True, True), ("xvar", False, True)):
        theirs, ours = run_program(progs[name], bind_now), model_program(progs[name], bind_now)
        assert (theirs is not None) == fails == (ours is not None), (name, bind_now, theirs, ours)
        if ours is not None:
            assert theirs is not None and theirs.endswith(ours), (theirs, ours)
    (tmp_path / "s.c").write_text("#include <string.h>\n"
                                  "int main(void) { char b[4]; return (int)strlcpy(b, \"ab\", 4) - 2; }\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-o", "xnewglibc", "s.c")
    theirs, ours = run_program(tmp_path / "xnewglibc"), model_program(tmp_path / "xnewglibc")
    if theirs is None:
        pytest.skip("this glibc has strlcpy (2.38 or later)")
    assert ours is not None and theirs.endswith(ours) and "GLIBC_2.38" in ours


def test_verify_reports_a_program_that_will_not_start(tmp_path: Path) -> None:
    """verify runs a site-packages' programs as the kernel does: a zig-built tool needing
    GLIBC_2.38 is an error (and fails for real); the same tool calling strncpy is not."""
    site = tmp_path / "site-packages" / "xtool"
    site.mkdir(parents=True)
    (tmp_path / "s.c").write_text("#include <string.h>\n"
                                  "int main(void) { char b[4]; return (int)strlcpy(b, \"ab\", 4) - 2; }\n")
    (tmp_path / "c.c").write_text("#include <string.h>\n"
                                  "int main(void) { char b[4]; return strncpy(b, \"ab\", 4) != b; }\n")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-o", str(site / "xnew"), "s.c")
    zig_cc(tmp_path, "x86_64-linux-gnu.2.38", "-o", str(site / "xold"), "c.c")
    if run_program(site / "xnew") is None:
        pytest.skip("this glibc has strlcpy (2.38 or later)")
    assert run_program(site / "xold") is None
    doc = json.loads(rpathfix("verify", "--json", str(tmp_path / "site-packages")).stdout)
    errors = {(Path(e["file"]).name, e["code"], e["name"]) for e in doc["errors"]}
    assert errors == {("xnew", "version-not-found", "GLIBC_2.38")}
    (e,) = doc["errors"]
    assert "executable xnew will not start" in e["message"] and e["loader_message"] in run_program(site / "xnew")
