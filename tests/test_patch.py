"""`rpathfix patch` and the action under it (patch.apply, patch.stream_patched): the real
CLI on gcc-built binaries, checked with the real ld.so.

Safety is proven by fault injection: RPATHFIX_FAULT_AFTER_WRITES=N makes the run SIGKILL
itself after its N-th write step, for every N, and each time the file must be the old one
(possibly with unreferenced bytes past its old end) or the new one, and load.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import rpathfix
from rpathfix import fileio
from rpathfix.model import BytePatch, Edit
from rpathfix.patch import FAULT_ENV, PatchedSource, atomic_in_place, pieces, stream_patched
from rpathfix.source import BytesSource, FileSource
from test_elf_write import BAR, FOO, MAIN, gcc, runs

SLEEPER = "#include <unistd.h>\nint bar(void);\nint main(){bar(); pause(); return 0;}\n"


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("patch-built")
    for sub in ("deps", "lib", "bin"):
        (d / sub).mkdir()
    gcc(d / "deps/libxfoo.so", FOO, "-shared", "-fPIC", "-Wl,-soname,libxfoo.so")
    gcc(d / "lib/libxbar.so", BAR, "-shared", "-fPIC", f"-L{d}/deps", "-lxfoo", "-Wl,-soname,libxbar.so",
        "-Wl,-rpath,$ORIGIN/../deps")
    exe = [f"-L{d}/lib", "-lxbar", f"-Wl,-rpath-link,{d}/deps"]
    gcc(d / "bin/main", MAIN, *exe)
    gcc(d / "bin/main_rpath", MAIN, *exe, "-Wl,-rpath,/nonexistent/placeholder", "-Wl,--disable-new-dtags")
    gcc(d / "bin/sleeper", SLEEPER, *exe)
    gcc(d / "bin/static", "int main(){return 0;}\n", "-static")
    return d


@pytest.fixture
def tree(built: Path, tmp_path: Path) -> Path:
    """A fresh copy of the built tree (modes kept)."""
    shutil.copytree(built, tmp_path / "t", symlinks=True)
    return tmp_path / "t"


def readelf_paths(path: Path) -> list[str]:
    out = subprocess.run(["readelf", "-dW", str(path)], capture_output=True, text=True, check=True).stdout
    return [line.split("(", 1)[1] for line in out.splitlines() if "(RPATH)" in line or "(RUNPATH)" in line]


def snapshot(path: Path) -> tuple[bytes, int, int, int]:
    st = os.stat(path)
    return path.read_bytes(), st.st_ino, st.st_mtime_ns, st.st_mode


# -- the command -----------------------------------------------------------------------------------


def test_patch_in_place_keeps_inode_mode_owner_and_loads(tree):
    main = tree / "bin/main"
    os.chmod(main, 0o751)
    os.chown(main, 1234, 2345)
    before = os.stat(main)
    assert runs(main).returncode != 0  # control
    r = rpathfix("patch", "bin/main", "--set-rpath", "$ORIGIN/../lib", cwd=tree)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("bin/main: patched, grown by ") and r.stdout.count("\n") == 1
    assert "runpath (none) -> $ORIGIN/../lib" in r.stdout
    after = os.stat(main)
    assert (after.st_ino, after.st_mode, after.st_uid, after.st_gid) == (
        before.st_ino, before.st_mode, before.st_uid, before.st_gid)
    assert runs(main).stdout == "43\n"
    assert not [n for n in os.listdir(tree / "bin") if n.startswith(".")]  # no temporary left


def test_hard_linked_file_is_replaced_and_the_other_link_keeps_the_old_bytes(tree):
    main, other = tree / "bin/main", tree / "other"
    os.link(main, other)
    old = main.read_bytes()
    r = rpathfix("patch", str(main), "--set-rpath", "$ORIGIN/../lib", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["files"][0]["written"] == "replaced"
    assert other.read_bytes() == old
    assert os.stat(main).st_ino != os.stat(other).st_ino and os.stat(main).st_nlink == 1
    assert os.stat(main).st_mode == os.stat(other).st_mode
    assert runs(main).stdout == "43\n"
    assert runs(other).returncode != 0


def test_read_only_file_needs_force(tree):
    main = tree / "bin/main"
    os.chmod(main, 0o555)
    before = snapshot(main)
    r = rpathfix("patch", str(main), "--set-rpath", "$ORIGIN/../lib")
    assert r.returncode == 1 and "read-only" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(main) == before
    r = rpathfix("patch", str(main), "--set-rpath", "$ORIGIN/../lib", "--force")
    assert r.returncode == 0, r.stderr
    assert os.stat(main).st_mode & 0o7777 == 0o555
    assert runs(main).stdout == "43\n"


def test_a_run_that_changes_nothing_writes_nothing(tree):
    lib = tree / "lib/libxbar.so"
    before = snapshot(lib)
    r = rpathfix("patch", str(lib), "--add-rpath", "$ORIGIN/../deps", "--rpath-tag", "keep")
    assert r.returncode == 0 and r.stdout == f"{lib}: unchanged\n"
    assert snapshot(lib) == before


def test_same_edit_twice_gives_the_same_bytes(tree, tmp_path):
    a, b = tree / "bin/main", tmp_path / "copy"
    shutil.copy2(a, b)
    for _ in range(2):
        for f in (a, b):
            assert rpathfix("patch", str(f), "--add-rpath", "$ORIGIN/../lib", "--add-rpath", "/x").returncode == 0
    assert a.read_bytes() == b.read_bytes()
    assert readelf_paths(a) == ["RUNPATH)            Library runpath: [$ORIGIN/../lib:/x]"]


def test_dry_run_prints_each_change_and_writes_nothing(tree):
    main = tree / "bin/main_rpath"
    before = snapshot(main)
    r = rpathfix("patch", str(main), "--set-rpath", "$ORIGIN/../lib", "--rpath-tag", "runpath", "--dry-run")
    assert r.returncode == 0, r.stderr
    # the new string and the tag lie in different pages: one write cannot do both, so it grows
    assert re.fullmatch(rf"{main}: would grow by [0-9,]+ bytes: rpath /nonexistent/placeholder -> \(none\); "
                        r"runpath \(none\) -> \$ORIGIN/\.\./lib\n", r.stdout), r.stdout
    r = rpathfix("patch", str(main), "--rpath-tag", "runpath", "--dry-run")
    assert r.stdout == (f"{main}: would patch in place: rpath /nonexistent/placeholder -> (none); "
                        "runpath (none) -> /nonexistent/placeholder\n")
    assert snapshot(main) == before


def test_json_schema(tree):
    r = rpathfix("patch", "bin/main_rpath", "lib/libxbar.so", "--set-rpath", "$ORIGIN/../lib", "--json", cwd=tree)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["schema"] == "rpathfix.patch/1" and doc["dry_run"] is False
    first, second = doc["files"]
    assert first == {"path": "bin/main_rpath", "format": "elf", "method": "in-place", "written": "in-place",
                     "size_before": first["size_before"], "size_after": first["size_before"],
                     "changes": [{"slice": None, "what": "rpath", "before": "/nonexistent/placeholder",
                                  "after": "$ORIGIN/../lib"}], "error": None}
    assert second["method"] == "in-place" and second["changes"][0]["what"] == "runpath"


@pytest.mark.parametrize("kind", ["text", "truncated", "static", "object", "machine", "directory"])
def test_bad_input_one_line_exit_2_nothing_written(tree, kind):
    main = tree / "bin/main"
    bad = tree / f"bad-{kind}"
    data = main.read_bytes()
    if kind == "text":
        bad.write_text("#!/bin/sh\necho not a binary\n")
    elif kind == "truncated":
        bad.write_bytes(data[:300])
    elif kind == "static":
        shutil.copy2(tree / "bin/static", bad)
    elif kind == "object":
        (tree / "x.c").write_text(FOO)
        subprocess.run(["gcc", "-c", "-o", str(bad), str(tree / "x.c")], check=True)
    elif kind == "machine":
        bad.write_bytes(data[:18] + (0x1234).to_bytes(2, "little") + data[20:])
    else:
        bad.mkdir()
    good_before = snapshot(main)
    bad_before = None if kind == "directory" else snapshot(bad)
    r = rpathfix("patch", str(main), str(bad), "--set-rpath", "$ORIGIN/../lib")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and str(bad) in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert snapshot(main) == good_before  # nothing written, not even to the good file
    if bad_before is not None:
        assert snapshot(bad) == bad_before


def test_an_edit_that_cannot_be_made_exits_1(tree):
    gcc(tree / "nopie", MAIN, "-no-pie", f"-L{tree}/lib", "-lxbar", f"-Wl,-rpath-link,{tree}/deps")
    before = snapshot(tree / "nopie")
    r = rpathfix("patch", str(tree / "nopie"), "--set-soname", "libx.so")
    assert r.returncode == 1 and "SONAME" in r.stderr and r.stderr.count("\n") == 1
    assert snapshot(tree / "nopie") == before
    assert rpathfix("patch", str(tree / "nopie")).returncode == 2  # no edit given
    r = rpathfix("patch", str(tree / "nopie"), "--replace-needed", "no-equals-sign")
    assert r.returncode == 2 and "OLD=NEW" in r.stderr


def test_running_executable_is_replaced_not_written(tree):
    """Linux refuses to open a running program for writing (ETXTBSY): it gets a new file,
    and the running process keeps its old inode."""
    sleeper = tree / "bin/sleeper"
    proc = subprocess.Popen([str(sleeper)], env={**os.environ, "LD_LIBRARY_PATH": str(tree / "lib")})
    try:
        r = rpathfix("patch", str(sleeper), "--set-rpath", "$ORIGIN/../lib", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["files"][0]["written"] == "replaced"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert readelf_paths(sleeper) == ["RUNPATH)            Library runpath: [$ORIGIN/../lib]"]


# -- kill -9 at every write -------------------------------------------------------------------------


def _killed_runs(path: Path, *args: str) -> list[tuple[int, bytes]]:
    """Run the patch once per N with a SIGKILL after write step N, each on a fresh copy of the
    original, until a run completes; (return code, bytes after) per run."""
    original = path.read_bytes()
    out = []
    for n in range(1, 100):
        path.write_bytes(original)
        env = {**os.environ, FAULT_ENV: str(n)}
        r = subprocess.run([sys.executable, "-m", "rpathfix", "patch", str(path), *args], env=env,
                           capture_output=True, text=True, timeout=120)
        out.append((r.returncode, path.read_bytes()))
        if r.returncode == 0:
            return out
        assert r.returncode == -signal.SIGKILL, r.stderr
    raise AssertionError("the run never completed")


@pytest.mark.parametrize(("exe", "edit", "value"), [
    ("main", "--set-rpath", "$ORIGIN/../lib"),  # grows
    ("main_rpath", "--set-rpath", "$ORIGIN/../lib"),  # fits
])
def test_kill_at_every_write_leaves_old_or_new_and_both_load(tree, exe, edit, value):
    main = tree / "bin" / exe
    original = main.read_bytes()
    results = _killed_runs(main, edit, value)
    final = results[-1][1]
    assert runs(main).stdout == "43\n"  # the new file finds lib/ through its new entry
    assert len(results) >= 2  # the kill did happen before the end at least once
    for code, data in results:
        main.write_bytes(data)
        if data == final:
            assert runs(main).stdout == "43\n", code
        else:
            assert data[:len(original)] == original  # the old file, maybe with bytes past its end
            assert runs(main).returncode != 0  # it still needs LD_LIBRARY_PATH, as before
            assert runs(main, {"LD_LIBRARY_PATH": str(tree / "lib")}).stdout == "43\n"


def test_kill_while_replacing_a_hard_linked_file(tree):
    main, other = tree / "bin/main", tree / "other"
    original = main.read_bytes()
    final = None
    for n in range(1, 100):
        if other.exists():
            other.unlink()
        main.unlink()
        main.write_bytes(original)
        os.chmod(main, 0o755)
        os.link(main, other)
        r = subprocess.run([sys.executable, "-m", "rpathfix", "patch", str(main), "--set-rpath", "$ORIGIN/../lib"],
                           env={**os.environ, FAULT_ENV: str(n)}, capture_output=True, text=True, timeout=120)
        assert other.read_bytes() == original
        data = main.read_bytes()
        if r.returncode == 0:
            final = data
            break
        assert r.returncode == -signal.SIGKILL
        assert data == original  # the new file is renamed into place whole, or not at all
        assert fileio.clean_leftovers(str(main))  # the half-written copy, beside it, is recognised
    assert final is not None and runs(main).stdout == "43\n"


# -- the action's pieces --------------------------------------------------------------------------


def test_stream_patched_into_a_wheel_gives_the_same_bytes(tree, tmp_path):
    from rpathfix.elf_write import plan_patch

    lib = tree / "lib/libxbar.so"
    with FileSource(str(lib)) as s:
        patch = plan_patch(s, [Edit("add-rpath", "$ORIGIN/a/new/and/long/entry")])
    whl = tmp_path / "x.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf, FileSource(str(lib)) as s, \
            zf.open("pkg/libxbar.so", "w") as member:
        stream_patched(s, patch, member)  # type: ignore[arg-type]
    with FileSource(str(lib)) as s:
        view = PatchedSource(s, patch).read_at(0, patch.size)  # the file as it will be, read before writing
    assert rpathfix("patch", str(lib), "--add-rpath", "$ORIGIN/a/new/and/long/entry").returncode == 0
    with zipfile.ZipFile(whl) as zf:
        assert zf.read("pkg/libxbar.so") == lib.read_bytes() == view


def test_pieces_later_writes_win_and_the_file_grows_with_zeros():
    patch = BytePatch(((2, b"abcd"), (4, b"XY"), (12, b"!")), 14, "grown", ())
    buf = io.BytesIO()
    stream_patched(BytesSource("x", b"0123456789"), patch, buf)  # type: ignore[arg-type]
    assert buf.getvalue() == b"01abXY6789\0\0!\0"
    assert [(o, n) for o, n, _d in pieces(10, patch)] == [(0, 2), (2, 2), (4, 2), (6, 4), (10, 2), (12, 1), (13, 1)]


def test_atomic_in_place_shapes():
    one_page = BytePatch(((4000, b"x" * 96),), 100_000, "in-place", ())
    across = BytePatch(((4000, b"x" * 97),), 100_000, "in-place", ())
    grown = BytePatch(((100_000, b"x" * 9000), (0, b"h" * 700)), 109_000, "grown", ())
    late = BytePatch(((0, b"h"), (100_000, b"x")), 100_001, "grown", ())
    assert atomic_in_place(one_page, 100_000) and atomic_in_place(grown, 100_000)
    assert not atomic_in_place(across, 100_000)  # one write over two pages can be cut between them
    assert not atomic_in_place(late, 100_000)  # a write into the old file before the last one


# ---------------------------------------------------------------- Mach-O through the CLI


@pytest.fixture(scope="session")
def macho_built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from conftest import zig_available
    from macho_helpers import build_inputs

    if not zig_available():
        pytest.skip("the Mach-O inputs need zig")
    return build_inputs(tmp_path_factory.mktemp("patch-macho"))


def _macho_copy(macho_built: dict[str, Path], kind: str, d: Path) -> Path:
    if kind not in macho_built:
        pytest.skip(f"no {kind} input (a fat file needs llvm-lipo)")
    from macho_helpers import copy_to

    return copy_to(macho_built[kind], d)


@pytest.mark.parametrize("kind", ["dylib-arm64", "dylib-x86_64", "fat"])
def test_macho_patch_matches_install_name_tool_and_stays_signed(macho_built, tmp_path, kind):
    """The CLI on a thin and a fat zig-built dylib: every slice edited, each signature valid
    again (codesign.verify), and llvm-install-name-tool-14 making the same edits gives the same
    load commands (llvm-objdump)."""
    from macho_helpers import INSTALL_NAME_TOOL, OBJDUMP, install_name_tool, objdump_view
    from rpathfix.codesign import verify

    ours = _macho_copy(macho_built, kind, tmp_path / "ours")
    theirs = _macho_copy(macho_built, kind, tmp_path / "theirs")
    mode = ours.stat().st_mode
    before = [(v.arch, v.signed, v.ok) for v in verify(FileSource(str(ours)))]
    r = rpathfix("patch", str(ours), "--add-rpath", "@loader_path/../../macdep/lib",
                 "--change", "@rpath/libxdep.dylib=@rpath/libxdep2.dylib", "--set-id", "@rpath/libxa2.dylib")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") == 1 and r.stdout.startswith(f"{ours}: patched")
    assert ours.stat().st_mode == mode
    with FileSource(str(ours)) as src:
        after = verify(src)
    assert [(v.arch, v.signed) for v in after] == [(a, s) for a, s, _ in before]
    assert all(v.ok for v in after), [v.problems for v in after]
    if INSTALL_NAME_TOOL is None or OBJDUMP is None:
        pytest.skip("llvm-install-name-tool-14 and llvm-objdump-14 cross-check the commands")
    assert install_name_tool(theirs, "-add_rpath", "@loader_path/../../macdep/lib", "-change",
                             "@rpath/libxdep.dylib", "@rpath/libxdep2.dylib", "-id",
                             "@rpath/libxa2.dylib").returncode == 0
    view = objdump_view(ours)
    assert view == objdump_view(theirs)
    for _header, edited, _kinds in view.values():
        text = "\n".join(edited)
        assert "@loader_path/../../macdep/lib" in text and "@rpath/libxdep2.dylib" in text
        assert "@rpath/libxa2.dylib" in text


def test_macho_dry_run_and_json(macho_built, tmp_path):
    fat = _macho_copy(macho_built, "fat", tmp_path)
    before = snapshot(fat)
    r = rpathfix("patch", str(fat), "--remove-rpath", "@loader_path", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"{fat}: would patch in place: [x86_64] lc_rpath @loader_path -> (none); "
                        "[arm64] lc_rpath @loader_path -> (none)\n"), r.stdout
    assert snapshot(fat) == before
    r = rpathfix("patch", str(fat), "--add-rpath", "@loader_path/../x", "--json", "--dry-run")
    doc = json.loads(r.stdout)
    (f,) = doc["files"]
    assert doc["dry_run"] is True and f["format"] == "macho" and f["written"] is None and f["error"] is None
    assert [(c["slice"], c["what"], c["before"], c["after"]) for c in f["changes"]] == [
        ("x86_64", "lc_rpath", None, "@loader_path/../x"), ("arm64", "lc_rpath", None, "@loader_path/../x")]
    assert snapshot(fat) == before
    again = rpathfix("patch", str(fat), "--add-rpath", "@loader_path", "--json")
    assert json.loads(again.stdout)["files"][0]["method"] == "unchanged" and snapshot(fat) == before


def test_macho_edit_that_does_not_fit_exits_1_naming_the_linker_flag(macho_built, tmp_path):
    tight = _macho_copy(macho_built, "tight", tmp_path)
    before = snapshot(tight)
    r = rpathfix("patch", str(tight), "--add-rpath", "@loader_path/" + "x" * 200)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "-headerpad_max_install_names" in r.stderr
    assert re.search(r"\d+ bytes missing", r.stderr) and str(tight) in r.stderr
    assert snapshot(tight) == before, "nothing written"
    # Control: the same edit on the same code linked with room for it.
    roomy = _macho_copy(macho_built, "dylib-arm64", tmp_path / "roomy")
    assert rpathfix("patch", str(roomy), "--add-rpath", "@loader_path/" + "x" * 200).returncode == 0
