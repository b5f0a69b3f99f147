"""The venv writer on hand-made plans over fake distribution roots, run with the real interpreter."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from rpathfix.errors import UsageError
from rpathfix.launchers import HEADER, entry_point_launcher, python_launcher
from rpathfix.model import PlanEntry
from rpathfix.venv import kind_dirs, python_info, write_venv

INFO = python_info(sys.executable)
V = INFO.version_short
SITE = f"lib/python{V}/site-packages"
PY_LINKS = {"bin/python", "bin/python3", f"bin/python{V}"}

CLI = '''\
import sys


def main():
    print("alpha-run", sys.argv[1:], sys.prefix)
    return 0


class App:
    @staticmethod
    def run():
        print("alpha-gui", sys.argv[1:])
        return 3
'''

TOOL = '''\
#!/usr/bin/python3.0-nonexistent
# -*- coding: utf-8 -*-
import sys
import alpha.cli
print("alpha-tool", sys.argv[1:], alpha.cli.__name__)
'''


def _write(path: Path, data: str | bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def world(tmp_path: Path) -> Path:
    """tmp/world/{roots/alpha, roots/beta} (OUT goes into tmp/world/out)."""
    w = tmp_path / "world"
    a = w / "roots" / "alpha"
    b = w / "roots" / "beta"
    _write(a / "site-packages" / "alpha" / "__init__.py", "")
    _write(a / "site-packages" / "alpha" / "cli.py", CLI)
    _write(a / "site-packages" / "alpha" / "_native.so", b"\x7fELF fake extension", 0o755)
    _write(a / "site-packages" / "alpha" / "macho.so", b"\xcf\xfa\xed\xfe fake", 0o755)
    data = a / "site-packages" / "alpha" / "data"
    _write(data / "one.txt", "one\n")
    _write(data / "sub" / "two.txt", "two\n", 0o600)
    os.symlink("sub/two.txt", data / "inner-link")  # stays inside the dir target
    _write(a / "shared.txt", "outside\n")
    os.symlink("../../../shared.txt", data / "outer-link")  # leaves the dir target
    _write(a / "bin" / "alpha-tool", TOOL, 0o755)
    _write(a / "bin" / "native-tool", "#!/bin/sh\necho native-tool \"$@\"\n", 0o755)
    _write(a / "include" / "alpha.h", "#define ALPHA 1\n")
    _write(a / "data" / "share" / "alpha" / "readme.txt", "readme\n")
    _write(b / "site-packages" / "beta" / "__init__.py", "VALUE = 'beta'\n")
    _write(b / "site-packages" / "beta" / "util.py", "X = 1\n")
    return w


def entries(w: Path) -> list[PlanEntry]:
    a = w / "roots" / "alpha"
    b = w / "roots" / "beta"
    sp = a / "site-packages"
    return [
        PlanEntry("site-packages", "alpha/__init__.py", str(sp / "alpha" / "__init__.py"), "alpha"),
        PlanEntry("site-packages", "alpha/_native.so", str(sp / "alpha" / "_native.so"), "alpha"),
        PlanEntry("site-packages", "alpha/cli.py", str(sp / "alpha" / "cli.py"), "alpha"),
        PlanEntry("site-packages", "alpha/data", str(sp / "alpha" / "data"), "alpha"),
        PlanEntry("site-packages", "alpha/macho.so", str(sp / "alpha" / "macho.so"), "alpha", method="copy"),
        PlanEntry("site-packages", "beta", str(b / "site-packages" / "beta"), "beta"),
        PlanEntry("bin", "alpha-tool", str(a / "bin" / "alpha-tool"), "alpha"),
        PlanEntry("bin", "native-tool", str(a / "bin" / "native-tool"), "alpha"),
        PlanEntry("include", "alpha.h", str(a / "include" / "alpha.h"), "alpha"),
        PlanEntry("data", "share/alpha/readme.txt", str(a / "data" / "share" / "alpha" / "readme.txt"), "alpha"),
    ]


SCRIPTS = [("console_scripts", "alpha-run", "alpha.cli:main"), ("gui_scripts", "alpha-gui", "alpha.cli:App.run")]


def build(w: Path, out: Path | None = None, mode: str = "symlink") -> Path:
    out = out or w / "out"
    assert write_venv(out, entries(w), python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed is True
    return out


Row = tuple[str, str, "str | None", "bytes | None", int]


def listing(out: Path) -> list[Row]:
    rows: list[Row] = []
    for dirpath, dirnames, filenames in os.walk(out):
        dirnames.sort()
        for n in sorted(dirnames + filenames):
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, out)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                rows.append((rel, "link", os.readlink(p), None, 0))
            elif stat.S_ISDIR(st.st_mode):
                rows.append((rel, "dir", None, None, stat.S_IMODE(st.st_mode)))
            else:
                rows.append((rel, "file", None, Path(p).read_bytes(), stat.S_IMODE(st.st_mode)))
    return sorted(rows)


def links(out: Path) -> dict[str, str]:
    return {rel: str(text) for rel, kind, text, _, _ in listing(out) if kind == "link"}


def run(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    full_env.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=60)
    assert p.returncode in (0, 3), (cmd, p.returncode, p.stdout, p.stderr)
    return p.stdout


def check_target_bytes(w: Path, out: Path) -> None:
    """Every file reached through the venv reads the bytes of its target."""
    for e in entries(w):
        dirs = kind_dirs(str(out), INFO)
        here = Path(dirs[e.kind]) / e.venv_path
        if e.kind == "bin" and e.venv_path == "alpha-tool":
            continue
        if Path(e.target).is_dir():
            want = sorted(str(p.relative_to(e.target)) for p in Path(e.target).rglob("*") if p.is_file())
            got = sorted(str(p.relative_to(here)) for p in here.rglob("*") if p.is_file())
            assert got == want
            for r in want:
                assert (here / r).read_bytes() == (Path(e.target) / r).read_bytes()
        else:
            assert here.read_bytes() == Path(e.target).read_bytes(), e


# ---------------------------------------------------------------- layout


def test_symlink_layout(world: Path) -> None:
    out = build(world)
    assert (out / "pyvenv.cfg").read_text() == (
        f"home = {os.path.dirname(INFO.base_executable)}\ninclude-system-site-packages = false\n"
        f"version = {INFO.version}\n")
    ls = links(out)
    assert ls.pop("bin/python") == INFO.base_executable
    assert os.path.isabs(INFO.base_executable)
    assert ls.pop("bin/python3") == "python"
    assert ls.pop(f"bin/python{V}") == "python"
    assert all(not os.path.isabs(t) for t in ls.values()), ls
    # directory targets are one relative link; files are links; method "copy" is a real copy
    assert f"{SITE}/beta" in ls and f"{SITE}/alpha/data" in ls and "bin/native-tool" in ls
    assert ls[f"{SITE}/alpha/cli.py"] == "../../../../../roots/alpha/site-packages/alpha/cli.py"
    assert not (out / "include" / "site").is_symlink()
    assert (out / "include" / "site" / f"python{V}" / "alpha.h").is_symlink()
    assert (out / "share" / "alpha" / "readme.txt").is_symlink()
    copied = out / SITE / "alpha" / "macho.so"
    assert not copied.is_symlink() and stat.S_IMODE(copied.stat().st_mode) == 0o755
    assert copied.stat().st_ino != (world / "roots/alpha/site-packages/alpha/macho.so").stat().st_ino
    assert stat.S_IMODE((out / SITE / "alpha" / "_native.so").stat().st_mode) == 0o755
    check_target_bytes(world, out)
    # the Python launcher of a root's bin/ became a relocatable launcher
    tool = out / "bin" / "alpha-tool"
    assert not tool.is_symlink() and stat.S_IMODE(tool.stat().st_mode) == 0o755
    text = tool.read_text()
    assert text.startswith(HEADER) and "nonexistent" not in text and 'print("alpha-tool"' in text
    for name in ("alpha-run", "alpha-gui"):
        assert stat.S_IMODE((out / "bin" / name).lstat().st_mode) == 0o755
    for rel, kind, _, _, mode in listing(out):
        if kind == "dir":
            assert mode == 0o755, rel
    assert sorted(p.name for p in out.parent.iterdir()) == ["out", "roots"]  # no temp left


def test_kind_dirs_and_python_info(world: Path) -> None:
    d = kind_dirs("/v", INFO)
    assert d == {"site-packages": f"/v/lib/python{V}/site-packages", "bin": "/v/bin",
                 "include": f"/v/include/site/python{V}", "data": "/v"}
    assert INFO.version.startswith(V + ".")
    base_dir = os.path.dirname(INFO.base_executable)
    assert not os.path.exists(os.path.join(base_dir, "pyvenv.cfg"))
    assert not os.path.exists(os.path.join(os.path.dirname(base_dir), "pyvenv.cfg"))
    # a subprocess answer agrees with the in-process one; a venv's python gives the real base
    other = python_info(INFO.base_executable)
    assert (other.base_executable, other.version) == (INFO.base_executable, INFO.version)
    out = build(world)
    via_venv = python_info(str(out / "bin" / "python"))
    assert via_venv.executable == str(out / "bin" / "python")
    assert via_venv.base_executable == INFO.base_executable
    bad = _write(world / "notpython", "#!/bin/sh\nexit 1\n", 0o755)
    for p in (str(bad), str(world / "missing")):
        with pytest.raises(UsageError, match="not a runnable Python interpreter") as ei:
            python_info(p)
        assert "\n" not in str(ei.value)


# ---------------------------------------------------------------- launchers for real


def test_launchers_run(world: Path, tmp_path: Path) -> None:
    out = build(world)
    assert run([str(out / "bin" / "python"), "-c", "import sys; print(sys.prefix)"]).strip() == str(out)
    got = run([str(out / "bin" / "alpha-run"), "x", "y z"])
    assert got == f"alpha-run ['x', 'y z'] {out}\n"
    assert run([str(out / "bin" / "alpha-gui"), "g"]) == "alpha-gui ['g']\n"
    assert run([str(out / "bin" / "alpha-tool"), "t"]) == "alpha-tool ['t'] alpha.cli\n"
    assert run([str(out / "bin" / "native-tool"), "n"]) == "native-tool n\n"
    # through PATH holding nothing but OUT/bin (the sh part must use builtins only)
    assert run(["alpha-run", "p"], env={"PATH": str(out / "bin")}) == f"alpha-run ['p'] {out}\n"
    # a relative path from another working directory, and `sh NAME` in bin/
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    rel = os.path.relpath(out / "bin" / "alpha-run", elsewhere)
    assert run([rel, "r"], cwd=elsewhere) == f"alpha-run ['r'] {out}\n"
    assert run(["/bin/sh", "alpha-tool"], cwd=out / "bin") == "alpha-tool [] alpha.cli\n"
    # OUT moved (with the roots, as a Bazel output tree moves): everything still works
    moved = tmp_path / "moved"
    os.rename(world, moved)
    out2 = moved / "out"
    assert run([str(out2 / "bin" / "alpha-run"), "m"]) == f"alpha-run ['m'] {out2}\n"
    assert run([str(out2 / "bin" / "alpha-tool")]) == "alpha-tool [] alpha.cli\n"
    assert run([str(out2 / "bin" / "python"), "-c", "import beta; print(beta.VALUE)"]) == "beta\n"


def test_launcher_through_runfiles_tree(world: Path, tmp_path: Path) -> None:
    """A Bazel runfiles tree: real directories, every file an absolute link to the output."""
    out = build(world)
    rf = tmp_path / "runfiles" / "_main" / "venv"
    for dirpath, dirnames, filenames in os.walk(out):
        rel = os.path.relpath(dirpath, out)
        (rf / rel).mkdir(parents=True, exist_ok=True)
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            os.symlink(os.path.join(dirpath, n), rf / rel / n)
    # The launcher is a symlink into the venv: the python beside its real file runs it.
    got = run([str(rf / "bin" / "alpha-run"), "q"])
    assert got == f"alpha-run ['q'] {out}\n"


def test_launcher_reached_through_a_symlink(world: Path, tmp_path: Path) -> None:
    """`ln -s OUT/bin/tool ~/bin/`: the launcher finds OUT's python through the link, run
    by path, from PATH, through a chain of two links (one relative), and as `sh NAME`.
    The control: the link's own directory holds no python, which is where the launcher
    looked before it resolved its own path ("python: not found")."""
    out = build(world)
    home_bin = tmp_path / "home" / "bin"
    home_bin.mkdir(parents=True)
    os.symlink(out / "bin" / "alpha-run", home_bin / "ar")
    os.symlink(out / "bin" / "alpha-tool", home_bin / "at")
    os.symlink("ar", home_bin / "ar2")  # relative, to the first link
    assert not (home_bin / "python").exists()  # the control
    assert run([str(home_bin / "ar"), "x"]) == f"alpha-run ['x'] {out}\n"
    assert run([str(home_bin / "at")]) == "alpha-tool [] alpha.cli\n"
    assert run([str(home_bin / "ar2"), "y"]) == f"alpha-run ['y'] {out}\n"
    assert run(["ar2", "p"], env={"PATH": f"{home_bin}:/usr/bin:/bin"}) == f"alpha-run ['p'] {out}\n"
    assert run(["/bin/sh", "ar"], cwd=home_bin) == f"alpha-run [] {out}\n"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run([os.path.relpath(home_bin / "ar", elsewhere)], cwd=elsewhere) == f"alpha-run [] {out}\n"
    # sys.argv[0] is the path the user ran, as with pip's launchers
    argv0 = _write(world / "roots" / "alpha" / "bin" / "argv0", "#!/usr/bin/python3\nimport sys\nprint(sys.argv[0])\n",
                   0o755)
    out2 = world / "out2"
    assert write_venv(out2, [*entries(world), PlanEntry("bin", "argv0", str(argv0), "alpha")],
                      python=sys.executable).changed
    os.symlink(out2 / "bin" / "argv0", home_bin / "a0")
    assert run([str(home_bin / "a0")]) == f"{home_bin / 'a0'}\n"


def test_launcher_texts_are_valid_sh_and_python(tmp_path: Path) -> None:
    for text in (entry_point_launcher("a.b", "c.d"), python_launcher("#!/usr/bin/python\nprint(1)\n"),
                 python_launcher("print(2)")):
        compile(text, "launcher", "exec")
        sh_part = "".join(text.splitlines(keepends=True)[:2])  # sh never reads past line 2 (exec)
        f = _write(tmp_path / "l", sh_part, 0o755)
        assert subprocess.run(["/bin/sh", "-n", str(f)], capture_output=True).returncode == 0
    assert python_launcher("#!/usr/bin/python\nprint(1)\n") == HEADER + "print(1)\n"


# ---------------------------------------------------------------- hardlink and copy


@pytest.mark.parametrize("mode", ["hardlink", "copy"])
def test_hardlink_and_copy_modes(world: Path, mode: str) -> None:
    out = build(world, mode=mode)
    ls = links(out)
    assert set(ls) == PY_LINKS | {f"{SITE}/alpha/data/inner-link"}
    assert ls[f"{SITE}/alpha/data/inner-link"] == "sub/two.txt"  # kept: it stays inside the target
    outer = out / SITE / "alpha" / "data" / "outer-link"
    assert outer.is_file() and not outer.is_symlink() and outer.read_text() == "outside\n"  # resolved
    check_target_bytes(world, out)
    sp = world / "roots" / "alpha" / "site-packages" / "alpha"
    for name in ("_native.so", "cli.py", "macho.so", "data/sub/two.txt"):
        src, dst = (sp / name).stat(), (out / SITE / "alpha" / name).stat()
        assert stat.S_IMODE(dst.st_mode) == stat.S_IMODE(src.st_mode), name
        same_inode = (src.st_dev, src.st_ino) == (dst.st_dev, dst.st_ino)
        assert same_inode == (mode == "hardlink" and name != "macho.so"), name
    assert run([str(out / "bin" / "alpha-run")]) == f"alpha-run [] {out}\n"
    assert run([str(out / "bin" / "native-tool")]) == "native-tool\n"


# ---------------------------------------------------------------- idempotence, determinism, safety


def snapshot(out: Path) -> dict[str, tuple[int, int, int, int]]:
    snap = {}
    for p in [out, *out.rglob("*")]:
        st = os.lstat(p)
        snap[str(p)] = (st.st_ino, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
    return snap


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_idempotent(world: Path, mode: str) -> None:
    out = build(world, mode=mode)
    before = snapshot(out)
    parent_before = os.lstat(world).st_mtime_ns
    assert write_venv(out, entries(world), python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed is False
    assert snapshot(out) == before
    assert os.lstat(world).st_mtime_ns == parent_before
    # a changed entry is applied, and the swap leaves nothing beside OUT
    extra = _write(world / "roots" / "beta" / "site-packages" / "gamma.py", "G = 7\n")
    changed = [*entries(world), PlanEntry("site-packages", "gamma.py", str(extra), "beta")]
    assert write_venv(out, changed, python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed is True
    # running it leaves __pycache__/ in real directories: a cache, not a difference
    assert run([str(out / "bin" / "python"), "-c", "import gamma; print(gamma.G)"]) == "7\n"
    assert (out / SITE / "__pycache__").is_dir()
    assert sorted(p.name for p in world.iterdir()) == ["out", "roots"]
    assert write_venv(out, changed, python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed is False
    # a dropped entry is removed
    assert write_venv(out, entries(world), python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed is True
    assert not os.path.lexists(out / SITE / "gamma.py")
    if mode == "copy":  # changed bytes of a copied target are noticed
        (world / "roots/alpha/site-packages/alpha/cli.py").write_text(CLI + "# changed\n")
        assert write_venv(out, entries(world), python=sys.executable, link_mode=mode, entry_points=SCRIPTS).changed
        assert (out / SITE / "alpha" / "cli.py").read_text().endswith("# changed\n")


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_deterministic(world: Path, mode: str) -> None:
    one = build(world, world / "out", mode=mode)
    two = build(world, world / "out2", mode=mode)
    assert listing(one) == listing(two)


def test_refuses_to_replace_a_non_venv(world: Path) -> None:
    """Only a directory rpathfix wrote (it holds .rpathfix-venv) or an empty one is
    replaced: a venv made by `python -m venv` (pip's kind) and a directory of the user's
    are one-line refusals and stay as they were. The control: rpathfix's own venv, and an
    empty directory (what Bazel's declare_directory hands over), are written."""
    pip_venv = world / "pipvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(pip_venv)], check=True)
    (pip_venv / "mine.txt").write_text("keep\n")
    precious = world / "precious"
    _write(precious / "keep.txt", "keep\n")
    for target, what in ((pip_venv, "a venv that rpathfix did not write"),
                         (precious, "was not written by rpathfix")):
        before = sorted(str(p) for p in target.rglob("*"))
        with pytest.raises(UsageError, match=what) as ei:
            write_venv(target, entries(world), python=sys.executable)
        assert "\n" not in str(ei.value) and ".rpathfix-venv" in str(ei.value)
        assert sorted(str(p) for p in target.rglob("*")) == before
    assert (pip_venv / "mine.txt").read_text() == "keep\n" and (pip_venv / "pyvenv.cfg").is_file()
    empty = world / "empty"
    empty.mkdir()
    assert write_venv(empty, entries(world), python=sys.executable).changed is True
    assert (empty / ".rpathfix-venv").is_file()
    extra = _write(world / "roots" / "beta" / "site-packages" / "gamma.py", "G = 7\n")
    changed = [*entries(world), PlanEntry("site-packages", "gamma.py", str(extra), "beta")]
    assert write_venv(empty, changed, python=sys.executable).changed is True  # ours: replaced
    assert run([str(empty / "bin" / "python"), "-c", "import gamma; print(gamma.G)"]) == "7\n"
    with pytest.raises(UsageError, match="written twice"):
        write_venv(world / "dup", [*entries(world), entries(world)[0]], python=sys.executable)
    assert not (world / "dup").exists()
    assert not [p for p in world.iterdir() if p.name.startswith(".")]


def test_refuses_a_pip_venv_from_the_command_line(world: Path) -> None:
    """The same through the CLI: exit 2, one line; the pip venv is intact."""
    from conftest import rpathfix

    pip_venv = world / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(pip_venv)], check=True)
    before = sorted(str(p) for p in pip_venv.rglob("*"))
    proc = rpathfix("venv", str(pip_venv), str(world / "roots" / "alpha"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "a venv that rpathfix did not write" in proc.stderr
    assert sorted(str(p) for p in pip_venv.rglob("*")) == before


READER = """
import os, sys, time
out, stop = sys.argv[1], sys.argv[2]
seen, missing, stats = set(), 0, 0
open(stop + ".ready", "w").close()
while not os.path.exists(stop):
    stats += 1
    try:
        os.stat(os.path.join(out, "pyvenv.cfg"))
        with open(os.path.join(out, "version.txt")) as f:
            seen.add(f.read())
    except OSError:
        missing += 1
print(missing, stats, len(seen))
"""


def test_a_reader_never_sees_out_missing_while_it_is_replaced(world: Path) -> None:
    """Another process stats OUT in a loop while OUT is replaced 60 times (two versions in
    turn): it never finds OUT or a file of it missing, and it saw both versions (so it did
    watch the swaps). The writer of rpathfix before this change left OUT absent between
    two renames, and this reader caught it."""
    out = world / "out"
    versions = []
    for v in ("one", "two"):
        f = _write(world / "roots" / "beta" / f"version-{v}.txt", v)
        versions.append([*entries(world), PlanEntry("data", "version.txt", str(f), "beta")])
    write_venv(out, versions[0], python=sys.executable)
    stop = world / "stop"
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out), str(stop)], stdout=subprocess.PIPE,
                              text=True)
    try:
        while not os.path.exists(str(stop) + ".ready"):
            assert reader.poll() is None
        for i in range(60):
            write_venv(out, versions[(i + 1) % 2], python=sys.executable)
    finally:
        stop.touch()
        stdout, _ = reader.communicate(timeout=60)
    missing, stats, seen = map(int, stdout.split())
    assert missing == 0, f"OUT was missing for {missing} of {stats} looks"
    assert seen == 2
    assert sorted(p.name for p in world.iterdir() if p.name.startswith(".out")) == []


KILLED_WRITER = """
import os, sys
import rpathfix.venv as v
from rpathfix.model import PlanEntry
def die(root, tree):  # the tree is built beside OUT: killed before the swap
    os.kill(os.getpid(), 9)
v._check_links = die
v.write_venv(sys.argv[1], [PlanEntry("site-packages", "beta", sys.argv[2], "beta")], python=sys.executable)
"""


def test_leftovers_of_a_killed_run_are_removed_by_the_next(world: Path) -> None:
    """A writer killed (SIGKILL) after building its tree beside OUT leaves it there; the
    next run removes it, and the untagged .out.tmp-*/.out.old-* of older versions too,
    but not the temporary tree of a writer that still runs."""
    out = world / "out"
    beta = world / "roots" / "beta" / "site-packages" / "beta"
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(out), str(beta)])
    assert killed.returncode == -9
    left = [p.name for p in world.iterdir() if p.name.startswith(".out.rpathfix-")]
    assert len(left) == 1 and (world / left[0] / "pyvenv.cfg").is_file()  # the control: it is there
    for name in (".out.tmp-0123456789ab", ".out.old-ba9876543210"):
        _write(world / name / "pyvenv.cfg", "")
    alive = subprocess.Popen(["sleep", "60"])
    try:
        busy = world / f".out.rpathfix-{alive.pid}-00000000"
        busy.mkdir()
        build(world)
        assert sorted(p.name for p in world.iterdir() if p.name.startswith(".")) == [busy.name]
    finally:
        alive.kill()
        alive.wait()
    assert (out / ".rpathfix-venv").is_file()


def test_renamed_out_still_works(world: Path) -> None:
    """OUT renamed at the same depth: its relative links still reach the roots."""
    out = build(world)
    dest = world / "renamed"
    os.rename(out, dest)
    assert run([str(dest / "bin" / "alpha-run")]) == f"alpha-run [] {dest}\n"
    assert run([str(dest / "bin" / "python"), "-c", "import beta; print(beta.VALUE)"]) == "beta\n"



def test_a_destination_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """The file system refusing (here /proc, where nothing can be created) is a one-line
    error with exit code 2, never a traceback, and leaves nothing behind."""
    from conftest import rpathfix

    site = tmp_path / "alpha" / "site-packages"
    (site / "alpha").mkdir(parents=True)
    (site / "alpha" / "__init__.py").write_text("")
    (site / "alpha-1.0.dist-info").mkdir()
    (site / "alpha-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: alpha\nVersion: 1.0\n")
    proc = rpathfix("venv", "/proc/rpathfix-cannot-be-here", str(tmp_path / "alpha"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("rpathfix venv: error: /proc/")


def test_a_link_text_that_leads_nowhere_is_caught_before_out_exists(world: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The written links are followed before the rename: a wrong relative text (here one
    `..` short) is an error, and OUT is not created. The control: the right text passes."""
    import rpathfix.venv as venv_mod

    build(world, world / "good")
    right = venv_mod.VenvTree._link

    def one_short(self: venv_mod.VenvTree, rel: str, head: str, name: str):  # type: ignore[no-untyped-def]
        node = right(self, rel, head, name)
        return node._replace(link=node.link.replace("../", "", 1)) if node.link else node

    monkeypatch.setattr(venv_mod.VenvTree, "_link", one_short)
    with pytest.raises(UsageError, match="leads nowhere"):
        build(world, world / "bad")
    assert not (world / "bad").exists()
    assert [p.name for p in world.iterdir() if p.name.startswith(".bad")] == []  # no temp left


def test_long_link_texts_go_through_hub_links(tmp_path: Path) -> None:
    """A link text of 60 bytes or more costs ext4 a data block; such links go through one
    hub per target directory (OUT/.r/<n>) and still reach the very same files. The control:
    with short paths nothing goes through a hub."""
    deep = tmp_path / ("d" * 40) / "roots" / "alpha"
    for name in ("one.py", "two.py"):
        _write(deep / "site-packages" / "alpha" / "sub" / name, f"X = {name!r}\n")
    targets = {f"alpha/sub/{n}": deep / "site-packages" / "alpha" / "sub" / n for n in ("one.py", "two.py")}
    plan = [PlanEntry("site-packages", rel, str(t), "alpha") for rel, t in targets.items()]
    out = tmp_path / "venv"
    assert write_venv(out, plan, python=sys.executable).changed is True
    site = next(out.glob("lib/python*/site-packages"))
    for rel, target in targets.items():
        text = os.readlink(site / rel)
        assert len(text) < 60 and "/.r/" in text, text
        assert os.path.samefile(site / rel, target)
    hubs = sorted(p.name for p in (out / ".r").iterdir())
    assert hubs == ["0"] and not os.path.isabs(os.readlink(out / ".r" / "0"))  # one hub, relative
    moved = tmp_path / "moved"
    os.rename(out, moved)  # relocatable: OUT moves, the roots stay where they are relative to it
    assert (moved / site.relative_to(out) / "alpha/sub/one.py").read_text() == "X = 'one.py'\n"
    # Control: short paths, direct links, no hub.
    near = tmp_path / "r" / "a"
    _write(near / "one.py", "X = 1\n")
    out2 = tmp_path / "v"
    assert write_venv(out2, [PlanEntry("site-packages", "one.py", str(near / "one.py"), "a")],
                      python=sys.executable).changed is True
    assert not (out2 / ".r").exists()
    assert "/.r/" not in os.readlink(next(out2.glob("lib/python*/site-packages")) / "one.py")


def test_a_distribution_that_ships_the_hub_name_keeps_direct_links(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / "alpha"
    _write(deep / "site-packages" / "alpha.py", "X = 1\n")
    _write(deep / "data" / ".r" / "notes.txt", "mine\n")
    plan = [PlanEntry("site-packages", "alpha.py", str(deep / "site-packages" / "alpha.py"), "alpha"),
            PlanEntry("data", ".r", str(deep / "data" / ".r"), "alpha")]
    out = tmp_path / "venv"
    assert write_venv(out, plan, python=sys.executable).changed is True
    assert (out / ".r" / "notes.txt").read_text() == "mine\n"
    link = os.readlink(next(out.glob("lib/python*/site-packages")) / "alpha.py")
    assert "/.r/" not in link and len(link) >= 60


def test_writer_threads_build_the_same_tree_and_hand_back_a_failure(world: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With every entry written from threads (each taking whole directories), the tree is
    the one a single writer makes; and when one creation fails in a thread, that error
    reaches the caller after every writer has stopped, and neither OUT nor a temp
    directory is left. The control for the failure: the same build without it succeeds."""
    import rpathfix.venv as venv_mod

    single = listing(build(world, world / "single"))
    monkeypatch.setattr(venv_mod, "_WRITERS", 3)
    monkeypatch.setattr(venv_mod, "_THREADED", 0)
    assert listing(build(world, world / "threaded")) == single

    real_create = venv_mod._create

    def failing(p: str, node: object, copied: object) -> None:
        if p.endswith("/pyvenv.cfg"):
            raise OSError(28, "No space left on device", p)
        real_create(p, node, copied)  # type: ignore[arg-type]

    monkeypatch.setattr(venv_mod, "_create", failing)
    with pytest.raises(OSError, match="No space left"):
        build(world, world / "broken")
    assert not (world / "broken").exists()
    assert [p.name for p in world.iterdir() if p.name.startswith(".broken")] == []


# ---------------------------------------------------------------- the check reads what is written


EXT_C = """#define PY_SSIZE_T_CLEAN
#include <Python.h>
int {dep}(void);
static struct PyModuleDef def = {{PyModuleDef_HEAD_INIT, "{full}", NULL, -1, NULL}};
PyMODINIT_FUNC PyInit_{name}(void) {{ {dep}(); return PyModule_Create(&def); }}
"""


def _gcc(out: Path, source: str, *, needs: tuple[str, ...] = (), link_dir: Path | None = None,
         runpath: str | None = None, include: bool = False) -> Path:
    import sysconfig

    out.parent.mkdir(parents=True, exist_ok=True)
    c = out.parent / (out.name.split(".")[0] + ".c")
    c.write_text(source)
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-o", str(out), str(c), f"-Wl,-soname,{out.name}"]
    if include:
        cmd.append(f"-I{sysconfig.get_paths()['include']}")
    if link_dir is not None:
        cmd += [f"-L{link_dir}", "-Wl,--no-as-needed", *[f"-l:{n}" for n in needs]]
    if runpath is not None:
        cmd += ["-Wl,--enable-new-dtags", f"-Wl,-rpath,{runpath}"]
    subprocess.run(cmd, check=True, capture_output=True)
    c.unlink()
    return out


def _extension(site: Path, pkg: str, name: str, dep: str, link_dir: Path, runpath: str) -> Path:
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    _write(site / pkg / "__init__.py", f"from {pkg} import {name}\n")
    src = EXT_C.format(dep=dep, full=f"{pkg}.{name}", name=name)
    return _gcc(site / pkg / f"{name}{suffix}", src, needs=(f"lib{dep}.so",), link_dir=link_dir, runpath=runpath,
                include=True)


def _dist_info(site: Path, dist: str, files: list[str]) -> None:
    di = site / f"{dist}-1.0.dist-info"
    _write(di / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    _write(di / "RECORD", "".join(f"{f},,\n" for f in [*files, f"{di.name}/METADATA", f"{di.name}/RECORD"]))


def climb_out_of_site_packages(top: Path) -> list[Path]:
    """xa/_xa needs libxa_dep.so through RUNPATH $ORIGIN/../../xlibs, a directory of its root
    beside site-packages. Through the symlinked xa/ the climb lands in the root and finds
    it; from a real xa/ (hard links, copies) it lands in OUT/lib and does not."""
    root = top / "xa"
    dep = _gcc(root / "xlibs" / "libxa_dep.so", "int xa_dep(void) { return 1; }\n")
    _extension(root / "site-packages", "xa", "_xa", "xa_dep", dep.parent, "$ORIGIN/../../xlibs")
    return [root]


def symlinked_library_directory(top: Path) -> list[Path]:
    """xb/lib is a symlink (to ../../store/lib) in its root, and libxb_dep.so there needs
    libxc.so from another root through RUNPATH $ORIGIN/../../xc. Through the symlinked lib/
    the kernel climbs from store/lib, in xb's root, and misses; in a real lib/ (hard links,
    copies) the climb stays in the venv and finds xc."""
    xb, xc = top / "xb", top / "xc"
    libxc = _gcc(xc / "site-packages" / "xc" / "libxc.so", "int xc(void) { return 1; }\n")
    _write(xc / "site-packages" / "xc" / "__init__.py", "")
    _dist_info(xc / "site-packages", "xc", ["xc/__init__.py", "xc/libxc.so"])
    store = xb / "store" / "lib"
    _gcc(store / "libxb_dep.so", "int xc(void);\nint xb_dep(void) { return xc(); }\n", needs=("libxc.so",),
         link_dir=libxc.parent, runpath="$ORIGIN/../../xc")
    ext = _extension(xb / "site-packages", "xb", "_xb", "xb_dep", store, "$ORIGIN/lib")
    os.symlink("../../store/lib", xb / "site-packages" / "xb" / "lib")
    _dist_info(xb / "site-packages", "xb", ["xb/__init__.py", f"xb/{ext.name}", "xb/lib/libxb_dep.so"])
    return [xb, xc]


@pytest.mark.parametrize("layout, works_in", [
    (climb_out_of_site_packages, {"symlink"}),
    (symlinked_library_directory, {"hardlink", "copy"}),
])
def test_the_check_before_writing_agrees_with_the_real_loader_in_every_link_mode(
        tmp_path: Path, layout: object, works_in: set[str]) -> None:
    """For each link mode: `rpathfix venv` (the loader model on the tree it is about to
    write) accepts exactly when the real interpreter can import the extension module from
    the venv written with --no-verify in that mode. Each layout loads in some modes and
    not in others (the control: a check that models one mode for all gets one wrong)."""
    from conftest import rpathfix

    roots = [str(r) for r in layout(tmp_path / "roots")]  # type: ignore[operator]
    module = Path(roots[0]).name
    verdicts, real = {}, {}
    for mode in ("symlink", "hardlink", "copy"):
        checked = rpathfix("venv", str(tmp_path / f"checked-{mode}"), *roots, "--link-mode", mode)
        assert checked.returncode in (0, 1), checked.stderr
        verdicts[mode] = checked.returncode == 0
        if not verdicts[mode]:
            assert "will not load" in checked.stderr and not (tmp_path / f"checked-{mode}").exists()
        out = tmp_path / f"written-{mode}"
        written = rpathfix("venv", str(out), *roots, "--link-mode", mode, "--no-verify")
        assert written.returncode == 0, written.stderr
        imported = subprocess.run([str(out / "bin" / "python"), "-c", f"import {module}"], capture_output=True,
                                  text=True, env={"PATH": "/usr/bin:/bin"})
        real[mode] = imported.returncode == 0
        assert real[mode] or "cannot open shared object file" in imported.stderr, imported.stderr
    assert verdicts == real
    assert {m for m, ok in real.items() if ok} == works_in


# ---------------------------------------------------------------- Ctrl-C, failures, link mode


def test_ctrl_c_while_writers_run_stops_them_before_cleaning_up(world: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT reaches the main thread while the writer threads create entries: the
    KeyboardInterrupt reaches the caller only after every writer has stopped, so the
    cleanup does not race them: no writer creates anything after it, and neither OUT nor
    a temporary tree is left. (Before, the interrupted wait returned at once and the
    writers went on creating entries in the tree being deleted.)"""
    import signal
    import threading
    import time

    import rpathfix.venv as venv_mod

    monkeypatch.setattr(venv_mod, "_WRITERS", 2)
    monkeypatch.setattr(venv_mod, "_THREADED", 0)
    real_create = venv_mod._create
    main = threading.main_thread().ident
    assert main is not None
    created: list[str] = []

    def slow(p: str, node: object, *copied: object) -> None:
        if not created:
            signal.pthread_kill(main, signal.SIGINT)  # a real signal, to the main thread
        time.sleep(0.005)
        real_create(p, node, *copied)  # type: ignore[arg-type]
        created.append(p)

    monkeypatch.setattr(venv_mod, "_create", slow)
    many = [PlanEntry("site-packages", f"m{i}.py", str(world / "roots/beta/site-packages/beta/util.py"), "beta")
            for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        write_venv(world / "out", [*entries(world), *many], python=sys.executable)
    n = len(created)
    time.sleep(0.5)  # a writer still running would create more meanwhile
    assert len(created) == n < 40
    assert not (world / "out").exists()
    assert [p.name for p in world.iterdir() if p.name.startswith(".")] == []


def test_hardlink_mode_says_when_it_copies(world: Path, tmp_path: Path) -> None:
    """Roots on another file system (/dev/shm, tmpfs) cannot be hard-linked into OUT: the
    files are copied and one note on stderr says so; the link mode never changes
    silently. The control: roots on OUT's file system are hard-linked, with no note."""
    from conftest import rpathfix

    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the temp directory")
    import shutil
    import tempfile

    far = Path(tempfile.mkdtemp(dir=shm, prefix="rpathfix-test-"))
    try:
        shutil.copytree(world / "roots" / "beta", far / "beta", symlinks=True)
        for roots, copied in (([str(world / "roots" / "beta")], False), ([str(far / "beta")], True)):
            out = tmp_path / f"out-{copied}"
            proc = rpathfix("venv", str(out), *roots, "--link-mode", "hardlink")
            assert proc.returncode == 0, proc.stderr
            notes = [ln for ln in proc.stderr.splitlines() if "copied instead" in ln]
            assert len(notes) == (1 if copied else 0), proc.stderr
            site = next(out.glob("lib/python*/site-packages"))
            same = os.path.samestat(os.stat(site / "beta" / "util.py"), os.stat(Path(roots[0]) / "site-packages/beta/util.py"))
            assert same is not copied
        assert "Invalid cross-device link" in notes[0] and "2 file(s)" in notes[0]
    finally:
        shutil.rmtree(far)
