"""The ELF edit planner (elf_write.plan_patch), checked on real gcc- and zig-built binaries.

Every output is checked as the issue asks: `readelf -dW` shows exactly the requested
entries and everything else it shows is unchanged (except table addresses that moved),
the dynamic symbols, notes, version names and interpreter are unchanged, eu-elflint
reports nothing the input did not, strip (llvm-strip for foreign machines) still works
when it worked on the input, and the real ld.so runs the result and finds its libraries
through the new paths, where a control run before the edit fails.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import zig_available, zig_cc
from rpathfix import elf_write
from rpathfix.errors import EditError, FormatError
from rpathfix.model import BytePatch, Edit
from rpathfix.patch import stream_patched
from rpathfix.source import BytesSource, FileSource

FOO = "int foo(void){return 42;}\n"
BAR = "int foo(void);\nint bar(void){return foo()+1;}\n"
MAIN = '#include <stdio.h>\nint bar(void);\nint main(){printf("%d\\n",bar());return 0;}\n'
# A library whose dynamic string table shares bytes: the linker stores the symbol names
# "xfoo.so" and "zz_tail_sym" as the tails of "libxfoo.so" and of the RPATH string.
TAILS = ('int weird __asm__("\\"xfoo.so\\"") = 1;\nint zz_tail_sym = 2;\nint foo(void);\n'
         "int bar(void){return foo()+weird+zz_tail_sym-3+1;}\n")
STRING_TAGS = {"NEEDED", "SONAME", "RPATH", "RUNPATH"}
# Entries whose value is the address or size of a table the edit may move.
MOVABLE = {"STRTAB", "STRSZ", "SYMTAB", "VERNEED", "VERDEF", "VERSYM", "GNU_HASH", "HASH", "MIPS_RLD_MAP_REL"}


def run(*cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert r.returncode == 0 or not check, (cmd, r.stdout, r.stderr)
    return r


def gcc(out: Path, src: str, *flags: str) -> Path:
    c = out.with_suffix(out.suffix + ".c")
    c.write_text(src)
    run("gcc", "-o", out, c, *flags)
    c.unlink()
    return out


@pytest.fixture(scope="session")
def native(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """gcc-built binaries: a versioned libxfoo in deps/, libxbar (needs it) in lib/, and
    programs in bin/ that need libxbar, in the variants the issue names."""
    d = tmp_path_factory.mktemp("elfw")
    for sub in ("deps", "lib", "bin", "var"):
        (d / sub).mkdir()
    (d / "vers.map").write_text("FOO_1 { global: foo; local: *; };\n")
    gcc(d / "deps/libxfoo.so", FOO, "-shared", "-fPIC", "-Wl,-soname,libxfoo.so", f"-Wl,--version-script={d}/vers.map")
    lib = ["-shared", "-fPIC", f"-L{d}/deps", "-lxfoo"]
    out = {
        "lib": gcc(d / "lib/libxbar.so", BAR, *lib, "-Wl,-soname,libxbar.so"),
        "lib_rpath": gcc(d / "var/libxbar_rpath.so", BAR, *lib, "-Wl,-soname,libxbar.so",
                         "-Wl,-rpath,/nonexistent/placeholder/dir", "-Wl,--disable-new-dtags"),
        "lib_runpath": gcc(d / "var/libxbar_runpath.so", BAR, *lib, "-Wl,-soname,libxbar.so",
                           "-Wl,-rpath,/nonexistent/placeholder/dir", "-Wl,--enable-new-dtags"),
        "lib_sysv": gcc(d / "var/libxbar_sysv.so", BAR, *lib, "-Wl,-soname,libxbar.so", "-Wl,--hash-style=sysv"),
        "lib_both": gcc(d / "var/libxbar_both.so", BAR, *lib, "-Wl,-soname,libxbar.so", "-Wl,--hash-style=both"),
        "lib_tails": gcc(d / "var/libxbar_tails.so", TAILS, *lib, "-Wl,-soname,libxbar.so",
                         "-Wl,-rpath,/opt/zz_tail_sym", "-Wl,--disable-new-dtags"),
    }
    exe = [f"-L{d}/lib", "-lxbar", f"-Wl,-rpath-link,{d}/deps"]
    out["pie"] = gcc(d / "bin/main", MAIN, "-pie", "-fPIE", *exe)
    out["nopie"] = gcc(d / "var/main_nopie", MAIN, "-no-pie", *exe)
    out["pie_sysv"] = gcc(d / "var/main_sysv", MAIN, "-pie", "-fPIE", "-Wl,--hash-style=sysv", *exe)
    out["nopie_nophdr"] = without_pt_phdr(out["nopie"], d / "var/main_nopie_nophdr")
    for name in ("lib", "pie", "nopie"):
        stripped = d / "var" / (out[name].name + ".nosht")
        run("llvm-objcopy-14", "--strip-sections", out[name], stripped)
        out[name + "_nosht"] = stripped
    out["root"] = d
    return out


def without_pt_phdr(src: Path, dest: Path) -> Path:
    """A copy whose PT_PHDR entry is PT_NULL: no linker we have omits it from an executable,
    and a non-PIE one runs without it (glibc needs it only to find a PIE's load address)."""
    data = bytearray(src.read_bytes())
    phoff, phentsize, phnum = int.from_bytes(data[32:40], "little"), data[54], int.from_bytes(data[56:58], "little")
    for i in range(phnum):
        at = phoff + i * phentsize
        if int.from_bytes(data[at:at + 4], "little") == 6:  # PT_PHDR
            data[at:at + 4] = bytes(4)
    dest.write_bytes(bytes(data))
    shutil.copymode(src, dest)
    return dest


def write_patched(src: Path, dest: Path, patch: BytePatch) -> Path:
    """The patched file, written by streaming (the path wheels take), mode kept."""
    with FileSource(str(src)) as s, open(dest, "wb") as f:
        stream_patched(s, patch, f)
    shutil.copymode(src, dest)
    return dest


def edit(src: Path, dest: Path, *edits: Edit) -> BytePatch:
    with FileSource(str(src)) as s:
        patch = elf_write.plan_patch(s, edits)
    write_patched(src, dest, patch)
    return patch


def dynamic(path: Path) -> list[tuple[str, str]]:
    """(type, value) of every entry readelf -dW shows, strings unwrapped."""
    rows = []
    for line in run("readelf", "-dW", path).stdout.splitlines():
        m = re.match(r"\s*0x[0-9a-f]+ \((\w+)\)\s+(.*)$", line)
        if m:
            kind, value = m.groups()
            s = re.search(r"\[(.*)\]$", value)
            rows.append((kind, s.group(1) if s and kind in STRING_TAGS else value))
    return rows


def elflint(path: Path) -> collections.Counter[str]:
    out = run("eu-elflint", "--gnu-ld", path, check=False).stdout
    return collections.Counter(re.sub(r"entry \d+", "entry N", line) for line in out.splitlines())


def versions(path: Path) -> list[str]:
    return [re.sub(r"(Addr|Offset): 0x[0-9a-f]+", "", line) for line in run("readelf", "-VW", path).stdout.splitlines()]


def strips(path: Path, machine_native: bool, out: Path) -> bool:
    tool = "strip" if machine_native else "llvm-strip-14"
    return run(tool, "-o", out, path, check=False).returncode == 0


def check(before: Path, after: Path, *, expect: dict[str, list[str]], renamed: dict[str, str] | None = None,
          native_machine: bool = True) -> None:
    """Everything the issue asks of an output, but loading (the callers run those)."""
    b, a = dynamic(before), dynamic(after)
    assert {k: [v for t, v in a if t == k] for k in STRING_TAGS} == {
        k: expect.get(k, [v for t, v in b if t == k]) for k in STRING_TAGS}
    keep = [(t, v) for t, v in b if t not in STRING_TAGS]
    now = [(t, v) for t, v in a if t not in STRING_TAGS]
    assert [t for t, _v in keep] == [t for t, _v in now]
    assert [(t, v) for t, v in keep if t not in MOVABLE] == [(t, v) for t, v in now if t not in MOVABLE]
    assert run("readelf", "--dyn-syms", "-W", after).stdout == run("readelf", "--dyn-syms", "-W", before).stdout
    notes = re.compile(r"found at file offset 0x[0-9a-f]+")  # where a file without sections has them: they may move
    assert notes.sub("", run("readelf", "-nW", after).stdout) == notes.sub("", run("readelf", "-nW", before).stdout)
    interp = re.compile(r"\[Requesting program interpreter: .*\]")
    assert interp.findall(run("readelf", "-lW", after).stdout) == interp.findall(run("readelf", "-lW", before).stdout)
    old_versions = versions(before)
    for old, new in (renamed or {}).items():
        old_versions = [line.replace(f"File: {old} ", f"File: {new} ") for line in old_versions]
    assert versions(after) == old_versions
    new_complaints = elflint(after) - elflint(before)
    assert not new_complaints, new_complaints
    assert strips(after, native_machine, after.with_name(after.name + ".stripped")) == strips(
        before, native_machine, after.with_name(after.name + ".input-stripped"))


def runs(exe: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The program run by the real ld.so (with a clean library path unless given)."""
    base = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    return run(exe, env={**base, **(env or {})}, check=False)


def layout(native: dict[str, Path], tmp: Path, exe: str = "pie", lib: str = "lib") -> tuple[Path, Path]:
    """root/bin/<exe> needs lib/libxbar.so, which needs deps/libxfoo.so."""
    for sub in ("bin", "lib", "deps"):
        (tmp / sub).mkdir()
    shutil.copy2(native["root"] / "deps/libxfoo.so", tmp / "deps/libxfoo.so")
    shutil.copy2(native[lib], tmp / "lib/libxbar.so")
    shutil.copy2(native[exe], tmp / "bin/main")
    return tmp / "bin/main", tmp / "lib/libxbar.so"


# -- growing: a new string, new tables, a new (or extended) PT_LOAD ------------------------------


@pytest.mark.parametrize("exe", ["pie", "nopie", "pie_sysv", "pie_nosht", "nopie_nosht", "nopie_nophdr"])
def test_new_runpath_in_an_executable_loads_through_it(native, tmp_path, exe):
    main, lib = layout(native, tmp_path, exe=exe)
    lib_fixed = tmp_path / "lib/libxbar.fixed"
    edit(lib, lib_fixed, Edit("set-rpath", "$ORIGIN/../deps"))
    os.replace(lib_fixed, lib)
    assert runs(main).returncode != 0  # control: nothing tells ld.so where lib/ is
    assert runs(main, {"LD_LIBRARY_PATH": str(tmp_path / "lib")}).stdout == "43\n"
    out = tmp_path / "bin/main.new"
    patch = edit(main, out, Edit("set-rpath", "$ORIGIN/../lib"))
    assert patch.method == "grown"
    assert runs(out).stdout == "43\n"
    check(main, out, expect={"RUNPATH": ["$ORIGIN/../lib"]})
    assert os.stat(out).st_mode & 0o111
    if not exe.endswith("nosht"):  # strip keeps it loadable (a file without sections cannot be stripped)
        stripped = out.with_name(out.name + ".stripped")
        assert runs(stripped).stdout == "43\n"


@pytest.mark.parametrize("lib", ["lib", "lib_sysv", "lib_both", "lib_nosht", "lib_rpath", "lib_runpath"])
def test_library_gets_its_dependency_through_a_new_path(native, tmp_path, lib):
    main, target = layout(native, tmp_path, lib=lib)
    env = {"LD_LIBRARY_PATH": str(tmp_path / "lib")}
    assert runs(main, env).returncode != 0  # control: libxfoo is in deps/, which nothing names
    out = tmp_path / "libxbar.new"
    patch = edit(target, out, Edit("add-rpath", "$ORIGIN/../deps/and/more/bytes/than/fit/anywhere"),
                 Edit("add-rpath", "$ORIGIN/../deps"))
    assert patch.method == "grown"
    old = [v for t, v in dynamic(target) if t in ("RPATH", "RUNPATH")]
    tag = [t for t, _v in dynamic(target) if t in ("RPATH", "RUNPATH")] or ["RUNPATH"]
    value = ":".join([*old[:1], "$ORIGIN/../deps/and/more/bytes/than/fit/anywhere", "$ORIGIN/../deps"])
    check(target, out, expect={tag[0]: [value]})
    os.replace(out, target)
    assert runs(main, env).stdout == "43\n"


def test_grow_twice_extends_the_segment_it_added(native, tmp_path):
    """A file grown once (by us or patchelf) ends in a writable PT_LOAD without .bss: the
    second edit extends it instead of adding another program header."""
    one, two = tmp_path / "one.so", tmp_path / "two.so"
    edit(native["lib"], one, Edit("set-rpath", "$ORIGIN/first"))
    edit(one, two, Edit("set-rpath", "$ORIGIN/a/second/and/longer/path"))
    loads = [line for line in run("readelf", "-lW", two).stdout.splitlines() if line.strip().startswith("LOAD")]
    assert len(loads) == len([line for line in run("readelf", "-lW", one).stdout.splitlines()
                              if line.strip().startswith("LOAD")])
    check(native["lib"], two, expect={"RUNPATH": ["$ORIGIN/a/second/and/longer/path"]})


def test_soname_added_and_grown(native, tmp_path):
    out = tmp_path / "x.so"
    assert edit(native["lib"], out, Edit("set-soname", "libxbar-with-a-longer-name.so.1")).method == "grown"
    check(native["lib"], out, expect={"SONAME": ["libxbar-with-a-longer-name.so.1"]})
    nosoname = tmp_path / "nosoname.so"
    gcc(nosoname, BAR, "-shared", "-fPIC", f"-L{native['root']}/deps", "-lxfoo")
    assert edit(nosoname, out, Edit("set-soname", "libnew.so")).method == "grown"
    check(nosoname, out, expect={"SONAME": ["libnew.so"]})


def test_replace_needed_renames_the_version_need_too(native, tmp_path):
    """glibc matches a version need's file name against the loaded names: both change."""
    main, lib = layout(native, tmp_path)
    shutil.copy2(tmp_path / "deps/libxfoo.so", tmp_path / "deps/libxfoo-renamed.so.1")
    env = {"LD_LIBRARY_PATH": f"{tmp_path}/lib"}
    out = tmp_path / "libxbar.new"
    edit(lib, out, Edit("replace-needed", "libxfoo.so", "libxfoo-renamed.so.1"), Edit("set-rpath", "$ORIGIN/../deps"))
    check(lib, out, expect={"NEEDED": ["libxfoo-renamed.so.1"], "RUNPATH": ["$ORIGIN/../deps"]},
          renamed={"libxfoo.so": "libxfoo-renamed.so.1"})
    os.replace(out, lib)
    os.unlink(tmp_path / "deps/libxfoo.so")  # only the new name exists
    assert runs(main, env).stdout == "43\n"


# -- in place: the new string fits in the old one's bytes ---------------------------------------


def test_shorter_path_is_written_over_the_old_one_only(native, tmp_path):
    main, lib = layout(native, tmp_path, lib="lib_rpath")
    env = {"LD_LIBRARY_PATH": str(tmp_path / "lib")}
    assert runs(main, env).returncode != 0
    with FileSource(str(lib)) as s:
        patch = elf_write.plan_patch(s, [Edit("set-rpath", "$ORIGIN/../deps")])
    assert patch.method == "in-place" and patch.size == os.path.getsize(lib)
    assert len(patch.writes) == 1 and len(patch.writes[0][1]) == len("/nonexistent/placeholder/dir") + 1
    out = write_patched(lib, tmp_path / "new.so", patch)
    old, new = lib.read_bytes(), out.read_bytes()
    assert next(i for i in range(len(old)) if old[i] != new[i]) >= patch.writes[0][0]
    check(lib, out, expect={"RPATH": ["$ORIGIN/../deps"]})  # the tag stays DT_RPATH
    os.replace(out, lib)
    assert runs(main, env).stdout == "43\n"


@pytest.mark.parametrize(("edits", "expect"), [
    ([Edit("rpath-tag", "runpath")], {"RPATH": [], "RUNPATH": ["/nonexistent/placeholder/dir"]}),
    ([Edit("remove-all-rpaths")], {"RPATH": []}),
    ([Edit("remove-rpath", "/nonexistent/placeholder/dir")], {"RPATH": []}),
    ([Edit("replace-rpath", "/nonexistent/placeholder/dir", "/short")], {"RPATH": ["/short"]}),
    ([Edit("set-soname", "libxb.so")], {"SONAME": ["libxb.so"]}),
])
def test_in_place_edits(native, tmp_path, edits, expect):
    out = tmp_path / "x.so"
    patch = edit(native["lib_rpath"], out, *edits)
    assert patch.method == "in-place"
    check(native["lib_rpath"], out, expect=expect)


def test_replace_needed_in_place_when_shorter(native, tmp_path):
    main, lib = layout(native, tmp_path)
    shutil.copy2(tmp_path / "deps/libxfoo.so", tmp_path / "deps/libxf.so")
    out = tmp_path / "libxbar.new"
    assert edit(lib, out, Edit("replace-needed", "libxfoo.so", "libxf.so")).method == "in-place"
    check(lib, out, expect={"NEEDED": ["libxf.so"]}, renamed={"libxfoo.so": "libxf.so"})
    os.replace(out, lib)
    os.unlink(tmp_path / "deps/libxfoo.so")
    assert runs(main, {"LD_LIBRARY_PATH": f"{tmp_path}/lib:{tmp_path}/deps"}).stdout == "43\n"


def test_shared_string_tails_are_never_overwritten(native, tmp_path, monkeypatch):
    """A symbol name that is the tail of the RPATH string (or of a NEEDED name) keeps its
    bytes: the edit grows instead. The control plans with the symbol check switched off and
    shows the symbol name would be clobbered."""
    lib = native["lib_tails"]
    syms = run("readelf", "--dyn-syms", "-W", lib).stdout
    assert " xfoo.so" in syms and " zz_tail_sym" in syms
    edits = (Edit("set-rpath", "/o"), Edit("replace-needed", "libxfoo.so", "libxy.so"))
    out = tmp_path / "x.so"
    assert edit(lib, out, *edits).method == "grown"
    check(lib, out, expect={"RPATH": ["/o"], "NEEDED": ["libxy.so"]},
          renamed={"libxfoo.so": "libxy.so"})
    monkeypatch.setattr(elf_write._Elf, "symbol_names_in", lambda self, lo, hi: False)
    control = tmp_path / "control.so"
    assert edit(lib, control, *edits).method == "in-place"
    assert run("readelf", "--dyn-syms", "-W", control).stdout != syms


def test_a_plan_that_would_not_read_back_is_refused(native, monkeypatch):
    """The plan is read back with elf.read_elf before anything is written; the control
    breaks the in-place write (a string's first byte) and the plan is refused."""
    real = elf_write._in_place_write

    def broken(elf, strings, entries):  # type: ignore[no-untyped-def]
        off, data = real(elf, strings, entries)
        return off, b"X" + data[1:]

    with FileSource(str(native["lib_rpath"])) as s:
        assert elf_write.plan_patch(s, [Edit("set-rpath", "/short")]).method == "in-place"
        monkeypatch.setattr(elf_write, "_in_place_write", broken)
        with pytest.raises(EditError, match="read back differently"):
            elf_write.plan_patch(s, [Edit("set-rpath", "/short")])


def test_unchanged_and_idempotent(native, tmp_path):
    with FileSource(str(native["lib_rpath"])) as s:
        assert elf_write.plan_patch(s, [Edit("add-rpath", "/nonexistent/placeholder/dir")]).method == "unchanged"
        assert elf_write.plan_patch(s, [Edit("rpath-tag", "rpath")]).method == "unchanged"
        assert elf_write.plan_patch(s, [Edit("replace-needed", "libabsent.so", "x")]).method == "unchanged"
    once, twice = tmp_path / "once.so", tmp_path / "twice.so"
    edit(native["lib"], once, Edit("set-rpath", "$ORIGIN/one:$ORIGIN/two"))
    edit(native["lib"], twice, Edit("set-rpath", "$ORIGIN/one:$ORIGIN/two"))
    assert once.read_bytes() == twice.read_bytes()  # deterministic
    with FileSource(str(once)) as s:
        assert elf_write.plan_patch(s, [Edit("set-rpath", "$ORIGIN/one:$ORIGIN/two")]).method == "unchanged"


def test_edits_apply_in_order_and_keep_entry_order(native, tmp_path):
    out = tmp_path / "x.so"
    patch = edit(native["lib_runpath"], out, Edit("set-rpath", "/c:/a:/b"), Edit("add-rpath", "/a"),
                 Edit("replace-rpath", "/a", "/z"), Edit("remove-rpath", "/c"), Edit("add-rpath", "/d"))
    check(native["lib_runpath"], out, expect={"RUNPATH": ["/z:/b:/d"]})
    assert [(c.what, c.after) for c in patch.changes] == [("runpath", "/z:/b:/d")]


def test_rpath_tag_on_a_file_without_one_gives_what_was_asked(native, tmp_path):
    out = tmp_path / "x.so"
    edit(native["lib"], out, Edit("rpath-tag", "rpath"), Edit("set-rpath", "$ORIGIN"))
    check(native["lib"], out, expect={"RPATH": ["$ORIGIN"]})


# -- other machines: 32-bit, big endian, 64 KiB pages (zig cc; readelf and eu-elflint) ----------


ZIG_TARGETS = ["x86-linux-gnu", "aarch64-linux-gnu", "powerpc64-linux-musl", "mips-linux-gnueabihf",
               "s390x-linux-gnu"]


@pytest.fixture(scope="session")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not zig_available():
        pytest.skip("zig cc is not available")
    d = tmp_path_factory.mktemp("elfw-zig")
    (d / "foo.c").write_text(FOO)
    (d / "bar.c").write_text(BAR)
    (d / "main.c").write_text(MAIN)
    out = {}
    for t in ZIG_TARGETS:
        (d / t).mkdir()
        zig_cc(d, t, "-shared", "-fPIC", "-o", f"{t}/libxfoo.so", "foo.c", "-Wl,-soname,libxfoo.so")
        zig_cc(d, t, "-shared", "-fPIC", "-o", f"{t}/libxbar.so", "bar.c", f"-L{t}", "-lxfoo",
               "-Wl,-soname,libxbar.so", "-Wl,-rpath,/nonexistent/placeholder/dir")
        zig_cc(d, t, "-o", f"{t}/main", "main.c", f"-L{t}", "-lxbar", "-lxfoo")
        out[t + "/lib"] = d / t / "libxbar.so"
        out[t + "/exe"] = d / t / "main"
        out[t + "/lib_nosht"] = d / t / "libxbar.nosht.so"
        run("llvm-objcopy-14", "--strip-sections", out[t + "/lib"], out[t + "/lib_nosht"])
    return out


@pytest.mark.parametrize("target", ZIG_TARGETS)
@pytest.mark.parametrize("kind", ["lib", "exe", "lib_nosht"])
def test_other_machines(foreign, tmp_path, target, kind):
    src = foreign[f"{target}/{kind}"]
    out = tmp_path / "grown"
    assert edit(src, out, Edit("add-rpath", "$ORIGIN/../lib/a/longer/entry")).method == "grown"
    old = [v for t, v in dynamic(src) if t == "RUNPATH"]
    check(src, out, expect={"RUNPATH": [":".join([*old, "$ORIGIN/../lib/a/longer/entry"])]}, native_machine=False)
    if kind.startswith("lib"):
        fits = tmp_path / "fits"
        assert edit(src, fits, Edit("set-rpath", "$ORIGIN")).method == "in-place"
        check(src, fits, expect={"RUNPATH": ["$ORIGIN"]}, native_machine=False)


# -- bad input and impossible edits ------------------------------------------------------------------


def test_bad_input_is_a_format_error(native, tmp_path):
    data = native["lib"].read_bytes()
    cases = {
        "text": b"hello, not a binary\n" * 4,
        "truncated": data[:200],
        "object": b"",
        "machine": data[:18] + (0x1234).to_bytes(2, "little") + data[20:],
    }
    obj = tmp_path / "x.o"
    run("gcc", "-c", "-o", obj, "-x", "c", "-", check=False)
    (tmp_path / "x.c").write_text(FOO)
    run("gcc", "-c", "-o", obj, tmp_path / "x.c")
    cases["object"] = obj.read_bytes()
    gcc(tmp_path / "static", "int main(){return 0;}\n", "-static")
    cases["static"] = (tmp_path / "static").read_bytes()
    gcc(tmp_path / "static-pie", "int main(){return 0;}\n", "-static-pie")
    cases["static-pie"] = (tmp_path / "static-pie").read_bytes()
    reasons = {}
    for name, blob in cases.items():
        with pytest.raises(FormatError) as e:
            elf_write.plan_patch(BytesSource(name, blob), [Edit("set-rpath", "$ORIGIN")])
        reasons[name] = e.value.reason
    assert "not an ELF" in reasons["text"]
    assert "truncated" in reasons["truncated"] or "outside the file" in reasons["truncated"]
    assert "not an executable or shared library" in reasons["object"]
    assert "unknown machine" in reasons["machine"]
    assert "static" in reasons["static"] and "static" in reasons["static-pie"]


def test_edits_that_cannot_be_made(native):
    with FileSource(str(native["nopie"])) as s, pytest.raises(EditError, match="takes no SONAME"):
        elf_write.plan_patch(s, [Edit("set-soname", "x")])
    with FileSource(str(native["lib"])) as s, pytest.raises(EditError, match="Mach-O"):
        elf_write.plan_patch(s, [Edit("set-id", "x")])


def test_corrupt_files_give_format_or_edit_errors_only(native):
    """Mutated headers, tables and strings: every outcome is a plan, a FormatError or an
    EditError (one line for the user), never another exception or a hang."""
    import random
    import struct

    rnd = random.Random(7)
    originals = [native[k].read_bytes() for k in ("lib", "lib_rpath", "pie", "lib_nosht")]
    edits = [[Edit("set-rpath", "$ORIGIN/x")], [Edit("set-rpath", "/a/long/path/that/makes/the/file/grow")],
             [Edit("replace-needed", "libxfoo.so", "libq.so")], [Edit("remove-all-rpaths")]]
    for _ in range(600):
        data = bytearray(rnd.choice(originals))
        for _ in range(rnd.randint(1, 3)):
            pos = rnd.randrange(min(len(data), 0x1000) if rnd.random() < 0.7 else len(data)) & ~3
            word = rnd.choice([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(data), rnd.randrange(1 << 32)])
            struct.pack_into("<I", data, pos, word)
        with contextlib.suppress(FormatError, EditError):
            elf_write.plan_patch(BytesSource("x", bytes(data)), rnd.choice(edits))
