"""`rpathfix unpack`: layout, scripts, bytecode, idempotence, determinism and bad wheels."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import rpathfix
from rpathfix.errors import FormatError, UsageError
from rpathfix.unpack import MARKER, unpack_wheel


def _tree(top: Path) -> dict[str, tuple[int, bytes | None]]:
    """relative path -> (mode, contents or None for directories)."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for p in sorted(top.rglob("*")):
        st = p.lstat()
        out[p.relative_to(top).as_posix()] = (st.st_mode, None if p.is_dir() else p.read_bytes())
    return out


def _mtimes(top: Path) -> dict[str, int]:
    return {p.as_posix(): p.lstat().st_mtime_ns for p in [top, *top.rglob("*")]}


def _pyc_flags(pyc: Path) -> int:
    return int.from_bytes(pyc.read_bytes()[4:8], "little")


def _hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(path: Path, dist: str = "tiny", version: str = "1.0",
               extra: list[tuple[zipfile.ZipInfo, bytes]] | None = None,
               bad_hash_for: str | None = None, wheel_file: bool = True) -> Path:
    """A small valid wheel (pure, one module) plus `extra` members, all listed in RECORD."""
    di = f"{dist}-{version}.dist-info"
    members: list[tuple[zipfile.ZipInfo, bytes]] = [
        (zipfile.ZipInfo(f"{dist}/__init__.py"), b"VALUE = 1\n"),
        (zipfile.ZipInfo(f"{di}/METADATA"), f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()),
    ]
    if wheel_file:
        members.append((zipfile.ZipInfo(f"{di}/WHEEL"),
                        b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"))
    members += extra or []
    lines = []
    for info, data in members:
        h = _hash(b"tampered" if info.filename == bad_hash_for else data)
        lines.append(f"{info.filename},{h},{len(data)}")
    lines.append(f"{di}/RECORD,,")
    members.append((zipfile.ZipInfo(f"{di}/RECORD"), ("\n".join(lines) + "\n").encode()))
    whl = path / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for info, data in members:
            if not info.external_attr:
                info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, data)
    return whl


def test_scriptstub_layout_and_scripts(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(stub_wheels["scriptstub"]), "--into", str(into), "-v")
    assert r.returncode == 0, r.stderr
    root = into / "scriptstub"
    assert r.stdout == f"unpacked {stub_wheels['scriptstub']} -> {root}\n"
    for rel in ("bin/scriptstub", "bin/scriptstub-gui", "bin/scriptstub-tool"):
        assert os.access(root / rel, os.X_OK), rel
        assert (root / rel).read_bytes().startswith(f"#!{sys.executable}\n".encode())
    assert (root / "include/scriptstub.h").read_text() == "#define SCRIPTSTUB 1\n"
    assert (root / "data/share/scriptstub/readme.txt").read_text() == "data file\n"
    site = root / "site-packages"
    assert (site / "scriptstub/__init__.py").is_file()
    dist_info = site / "scriptstub-1.0.dist-info"
    assert {"METADATA", "WHEEL", "RECORD", "INSTALLER", "entry_points.txt"} <= {p.name for p in dist_info.iterdir()}
    assert "../bin/scriptstub," in (dist_info / "RECORD").read_text()
    assert (root / MARKER).read_text().startswith(f"wheel: {stub_wheels['scriptstub'].name}\nsha256: ")
    assert sorted(p.name for p in into.iterdir()) == ["scriptstub"]

    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([str(root / "bin/scriptstub")], capture_output=True, text=True, env=env, timeout=60)
    assert (run.returncode, run.stdout) == (0, "scriptstub main\n"), run.stderr
    run = subprocess.run([str(root / "bin/scriptstub-tool")], capture_output=True, text=True, env=env, timeout=60)
    assert (run.returncode, run.stdout) == (0, "scriptstub-tool ran\n"), run.stderr


def test_torchstub_exec_bits_and_hash_pycs(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    root, changed = unpack_wheel(str(stub_wheels["torchstub"]), str(tmp_path))
    assert changed
    pkg = Path(root) / "site-packages/torchstub"
    libs = sorted((pkg / "lib").glob("*.so"))
    assert libs
    for so in [*libs, *pkg.glob("_C*.so")]:
        assert stat.S_IMODE(so.stat().st_mode) == 0o755, so
    assert stat.S_IMODE((pkg / "cli.py").stat().st_mode) == 0o644
    pycs = sorted((pkg / "__pycache__").glob("*.pyc"))
    assert {p.name.split(".")[0] for p in pycs} == {"__init__", "cli"}
    for pyc in pycs:
        assert _pyc_flags(pyc) == 3, pyc  # hash-based, checked against the source
    assert os.access(Path(root) / "bin/torchstubrun", os.X_OK)


def test_no_compile(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    r = rpathfix("unpack", str(stub_wheels["scriptstub"]), "--into", str(tmp_path), "--no-compile")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.rglob("*.pyc"))


def test_other_python_compiles_in_subprocess(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    py = tmp_path / "py" / "python3"
    py.parent.mkdir()
    py.symlink_to(sys.executable)
    root, _ = unpack_wheel(str(stub_wheels["scriptstub"]), str(tmp_path / "roots"), python=str(py))
    assert (Path(root) / "bin/scriptstub").read_bytes().startswith(f"#!{py}\n".encode())
    assert (Path(root) / "bin/scriptstub-tool").read_bytes().startswith(f"#!{py}\n".encode())
    pycs = list((Path(root) / "site-packages").rglob("*.pyc"))
    assert pycs and all(_pyc_flags(p) == 3 for p in pycs)


def test_idempotent(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    whl = str(stub_wheels["torchstub"])
    assert rpathfix("unpack", whl, "--into", str(tmp_path)).returncode == 0
    before = _mtimes(tmp_path)
    r = rpathfix("unpack", whl, "--into", str(tmp_path), "--verbose")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"up to date: {tmp_path / 'torchstub'}\n"
    assert _mtimes(tmp_path) == before
    quiet = rpathfix("unpack", whl, "--into", str(tmp_path))  # quiet success: nothing at all without -v
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_deterministic(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    for whl in (stub_wheels["torchstub"], stub_wheels["scriptstub"]):
        a, _ = unpack_wheel(str(whl), str(tmp_path / "a"))
        b, _ = unpack_wheel(str(whl), str(tmp_path / "b"))
        ta, tb = _tree(Path(a)), _tree(Path(b))
        assert ta == tb
        assert any(k.endswith(".pyc") for k in ta)


def test_source_date_epoch(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800"}
    r = rpathfix("unpack", str(stub_wheels["scriptstub"]), "--into", str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    root = tmp_path / "scriptstub"
    assert {p.lstat().st_mtime for p in [root, *root.rglob("*")]} == {315532800}


def test_replaces_root_from_another_wheel(tmp_path: Path) -> None:
    into = tmp_path / "roots"
    w1 = make_wheel(tmp_path, version="1.0")
    w2 = make_wheel(tmp_path, version="2.0")
    root, changed = unpack_wheel(str(w1), str(into))
    assert changed
    root2, changed = unpack_wheel(str(w2), str(into))
    assert (root2, changed) == (root, True)
    assert sorted(p.name for p in (Path(root) / "site-packages").iterdir()) == ["tiny", "tiny-2.0.dist-info"]
    assert sorted(p.name for p in into.iterdir()) == ["tiny"]
    assert unpack_wheel(str(w2), str(into)) == (root, False)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "roots" / "tiny").mkdir(parents=True)
    (tmp_path / "roots" / "tiny" / "mine.txt").write_text("keep\n")
    with pytest.raises(UsageError):
        unpack_wheel(str(make_wheel(tmp_path)), str(tmp_path / "roots"))
    assert (tmp_path / "roots" / "tiny" / "mine.txt").read_text() == "keep\n"


def _symlink_member() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("tiny/link.py")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


BAD_WHEELS = {
    "zip-slip": dict(extra=[(zipfile.ZipInfo("../evil.py"), b"x = 1\n")]),
    "zip-slip-data": dict(extra=[(zipfile.ZipInfo("tiny-1.0.data/data/../../../evil"), b"x\n")]),
    "backslash": dict(extra=[(zipfile.ZipInfo("..\\evil.py"), b"x = 1\n")]),
    "absolute": dict(extra=[(zipfile.ZipInfo("/etc/x"), b"x\n")]),
    "symlink": dict(extra=[(_symlink_member(), b"/etc/passwd")]),
    "record-mismatch": dict(bad_hash_for="tiny/__init__.py"),
    "no-WHEEL": dict(wheel_file=False),
    "entry-point-escape": dict(extra=[(zipfile.ZipInfo("tiny-1.0.dist-info/entry_points.txt"),
                                       b"[console_scripts]\n../../evil.py = tiny:VALUE\n")]),
}


@pytest.mark.parametrize("kind", sorted(BAD_WHEELS))
def test_bad_wheels(kind: str, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    whl = make_wheel(tmp_path / "src", **BAD_WHEELS[kind])  # type: ignore[arg-type]
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(whl), "--into", str(into))
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"rpathfix unpack: error: {whl}: ")
    assert not into.exists() or list(into.iterdir()) == []
    assert not (tmp_path / "etc").exists() and not (tmp_path / "evil.py").exists()


def test_not_a_zip_and_unreadable(tmp_path: Path) -> None:
    junk = tmp_path / "junk-1.0-py3-none-any.whl"
    junk.write_bytes(b"not a zip at all\n")
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(junk), "--into", str(into))
    assert r.returncode == 2
    assert r.stderr.startswith(f"rpathfix unpack: error: {junk}: not a zip archive") and r.stderr.count("\n") == 1
    assert list(into.iterdir()) == []
    missing = tmp_path / "gone-1.0-py3-none-any.whl"
    r = rpathfix("unpack", str(missing), "--into", str(into))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(missing) in r.stderr
    with pytest.raises(FormatError):
        unpack_wheel(str(tmp_path / "notawheel.zip"), str(into))


def test_failure_keeps_existing_root(tmp_path: Path) -> None:
    into = tmp_path / "roots"
    good = make_wheel(tmp_path, version="1.0")
    root, _ = unpack_wheel(str(good), str(into))
    before = _tree(Path(root))
    (tmp_path / "bad").mkdir()
    bad = make_wheel(tmp_path / "bad", version="2.0", bad_hash_for="tiny/__init__.py")
    with pytest.raises(FormatError):
        unpack_wheel(str(bad), str(into))
    assert _tree(Path(root)) == before
    assert sorted(p.name for p in into.iterdir()) == ["tiny"]


def test_record_check_is_stricter_than_pip_and_can_be_turned_off(tmp_path: Path) -> None:
    """A member missing from RECORD, or a wrong hash: rpathfix refuses in one line naming
    the wheel, the member and --no-verify-record; pip installs both wheels (the control
    that rpathfix is the stricter one); --no-verify-record installs them. A root made that
    way is not taken as up to date by a later run that verifies."""
    (tmp_path / "unlisted").mkdir()
    unlisted = make_wheel(tmp_path / "unlisted", dist="tiny")
    with zipfile.ZipFile(unlisted, "a") as zf:
        zf.writestr("tiny/extra.py", "EXTRA = 1\n")
    (tmp_path / "tampered").mkdir()
    tampered = make_wheel(tmp_path / "tampered", dist="tiny", bad_hash_for="tiny/__init__.py")
    for whl, why in ((unlisted, "tiny/extra.py is not mentioned in RECORD"),
                     (tampered, "hash / size of tiny/__init__.py didn't match RECORD")):
        into = tmp_path / f"roots-{whl.parent.name}"
        r = rpathfix("unpack", str(whl), "--into", str(into))
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert r.stderr.startswith(f"rpathfix unpack: error: {whl}: {why}") and "--no-verify-record" in r.stderr
        assert "pip installs it" in r.stderr
        venv = tmp_path / f"pip-{whl.parent.name}"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                              "--no-index", "--no-deps", str(whl)], capture_output=True, text=True)
        assert pip.returncode == 0, pip.stderr  # the control: pip installs it
        r = rpathfix("unpack", str(whl), "--into", str(into), "--no-verify-record")
        assert r.returncode == 0, r.stderr
        assert (into / "tiny" / "site-packages" / "tiny" / "__init__.py").is_file()
        assert "record: not verified" in (into / "tiny" / MARKER).read_text()
        again = rpathfix("unpack", str(whl), "--into", str(into), "--no-verify-record", "-v")
        assert again.returncode == 0 and again.stdout.startswith("up to date")
        strict = rpathfix("unpack", str(whl), "--into", str(into))
        assert strict.returncode == 2 and "--no-verify-record" in strict.stderr
    assert (tmp_path / "roots-unlisted" / "tiny" / "site-packages" / "tiny" / "extra.py").is_file()


# ---------------------------------------------------------------- the one-pass installer (issue 14)

SET_MODULE = b'def f(x):\n    return x in {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"}\n'


def _deflated(name: str, mode: int = 0o644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | mode) << 16
    return info


def rich_wheel(path: Path, big: int = 3 << 20) -> Path:
    """A wheel with every kind of member: deflated and stored, a large one (the thread pool
    takes it), an executable library, .data scripts (one with "#!python"), headers, data,
    purelib, entry points, a module with a set constant, one that does not compile."""
    di = "tiny-1.0.dist-info"
    blob = b"".join(b"line %d of a large member\n" % i for i in range(big // 26))
    extra = [
        (_deflated("tiny/mod.py"), SET_MODULE),
        (_deflated("tiny/sub/deep.py"), b"import os\nX = [os.sep, '[', ']']\n"),
        (_deflated("tiny/broken.py"), b"def (:\n"),
        (_deflated("tiny/big.bin"), blob),
        (_deflated("tiny/libfast.so", 0o755), b"\x7fELF" + bytes(range(256)) * 64),
        (zipfile.ZipInfo("tiny/stored.txt"), b"stored as is\n"),
        (_deflated("tiny-1.0.data/scripts/tool", 0o755), b"#!python\nprint('tool')\n"),
        (_deflated("tiny-1.0.data/scripts/plain"), b"#!/bin/sh\necho plain\n"),
        (_deflated("tiny-1.0.data/scripts/short"), b"#!py"),
        (_deflated("tiny-1.0.data/headers/tiny.h"), b"#define TINY 1\n"),
        (_deflated("tiny-1.0.data/data/share/tiny/readme.txt"), b"data\n"),
        (_deflated("tiny-1.0.data/purelib/tiny_extra.py"), b"EXTRA = {1, 2, 3}\n"),
        (_deflated(f"{di}/entry_points.txt"), b"[console_scripts]\ntinyrun = tiny.mod:f\n"
                                              b"[gui_scripts]\ntinygui = tiny:VALUE\n"),
    ]
    return make_wheel(path, extra=extra)


def _reference_install(whl: Path, top: Path, python: str) -> None:
    """What the code before issue 14 wrote: pypa's installer, then compileall.compile_dir over
    site-packages (checked-hash, ddir "site-packages") in a fresh interpreter with a fixed hash
    seed and no site, then the fixed modes."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    from rpathfix.unpack import SCHEME_DIRS

    class Destination(SchemeDictionaryDestination):  # type: ignore[misc]
        def write_file(self, scheme, path, stream, is_executable):  # type: ignore[no-untyped-def]
            return super().write_file(scheme, path, stream, is_executable or scheme == "scripts")

    dest = Destination(scheme_dict={k: str(top / d) for k, d in SCHEME_DIRS.items()},
                       interpreter=python, script_kind="posix")
    with zipfile.ZipFile(whl) as zf:
        install(WheelFile(zf), dest, {"INSTALLER": b"rpathfix\n"})
    code = ("import compileall, py_compile, sys; compileall.compile_dir(sys.argv[1], ddir='site-packages', quiet=2, "
            "workers=1, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)")
    subprocess.run([python, "-S", "-c", code, str(top / "site-packages")], check=True,
                   env={**os.environ, "PYTHONHASHSEED": "0"})
    for p in [top, *top.rglob("*")]:
        p.chmod(0o755 if p.is_dir() or p.stat().st_mode & 0o111 else 0o644)


def _content(top: Path) -> dict[str, tuple[int, bytes | None]]:
    """_tree without rpathfix's own files (marker, natives index)."""
    return {k: v for k, v in _tree(top).items() if not k.startswith(".rpathfix")}


def test_same_tree_as_installer_and_compileall(tmp_path: Path) -> None:
    """Every file installer wrote (launchers, "#!python" scripts, .data schemes, RECORD,
    INSTALLER, exec bits) and every .pyc compileall wrote, byte for byte; the module that
    does not compile has no .pyc, as before."""
    whl = rich_wheel(tmp_path)
    root, _ = unpack_wheel(str(whl), str(tmp_path / "roots"))
    ref = tmp_path / "ref"
    _reference_install(whl, ref, sys.executable)
    assert _content(Path(root)) == _content(ref)
    site = Path(root) / "site-packages"
    assert (Path(root) / "bin/tool").read_bytes() == f"#!{sys.executable}\nprint('tool')\n".encode()
    assert (Path(root) / "bin/short").read_bytes() == b"#!py"
    assert {p.name for p in (site / "tiny/__pycache__").iterdir()} == {"__init__.cpython-311.pyc",
                                                                       "mod.cpython-311.pyc"}
    assert "../bin/tinyrun," in (site / "tiny-1.0.dist-info/RECORD").read_text()


def test_pyc_bytes_do_not_depend_on_the_running_process(tmp_path: Path) -> None:
    """marshal flags a string as interned when the compiling process has interned it, so a
    .pyc compiled in-process (as before issue 14) depended on what that process had run:
    the bytes changed with PYTHONHASHSEED, and between --python this interpreter (in-process)
    and another path to it (a subprocess). The control shows the mechanism; rpathfix's
    workers start the same way every time, so all these give the same .pyc bytes."""
    src = tmp_path / "m.py"
    src.write_bytes(b"X = ['[', ']']\n")
    seen = set()
    for pre in ("", "sys.intern('[');"):
        out = tmp_path / "m.pyc"
        subprocess.run([sys.executable, "-S", "-c", f"import py_compile, sys; {pre} py_compile.compile(sys.argv[1], "
                        "sys.argv[2], invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)",
                        str(src), str(out)], check=True)
        seen.add(out.read_bytes())
    assert len(seen) == 2  # the control: the process's state changes the bytes
    whl = rich_wheel(tmp_path, big=1000)
    other = tmp_path / "other" / "python3"
    other.parent.mkdir()
    other.symlink_to(sys.executable)
    pycs = []
    for seed, python in (("1", sys.executable), ("2", sys.executable), ("3", str(other))):
        into = tmp_path / f"roots{seed}"
        r = rpathfix("unpack", str(whl), "--into", str(into), "--python", python,
                     env={**os.environ, "PYTHONHASHSEED": seed})
        assert r.returncode == 0, r.stderr
        pycs.append({k: v for k, v in _tree(into / "tiny").items() if k.endswith(".pyc")})
    assert len(pycs[0]) == 4
    assert pycs[0] == pycs[1] == pycs[2]


def _children() -> set[int]:
    """Pids of this process's children (Linux: /proc/self/task/*/children)."""
    out: set[int] = set()
    for f in Path("/proc/self/task").glob("*/children"):
        out.update(int(p) for p in f.read_text().split())
    return out


@pytest.mark.parametrize("inflate", ["zlib", "isal"])
def test_parallel_same_as_serial(inflate: str, stub_wheels: dict[str, Path], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Several wheels at once with every member in the thread pool give the same roots as one
    wheel at a time with every member in the calling thread; isal and zlib the same bytes."""
    if inflate == "isal":
        pytest.importorskip("isal")
    import threading

    from rpathfix import wheelinstall
    from rpathfix.unpack import iter_unpack

    wheels = [str(rich_wheel(tmp_path)), *(str(stub_wheels[k]) for k in ("torchstub", "scriptstub",
                                                                          "nvidia_xcublas"))]
    threads, children = threading.active_count(), _children()
    serial = tmp_path / "serial"
    monkeypatch.setattr(wheelinstall, "BIG", 1 << 40)  # nothing is large: all in the calling thread
    got = list(iter_unpack(wheels, str(serial), jobs=1, inflate="zlib"))
    assert [w for w, _r, _c in got] == wheels and all(c for _w, _r, c in got)
    parallel = tmp_path / "parallel"
    monkeypatch.setattr(wheelinstall, "BIG", 0)  # everything is large: all in the pool
    list(iter_unpack(wheels, str(parallel), jobs=4, inflate=inflate))
    assert sorted(p.name for p in serial.iterdir()) == sorted(p.name for p in parallel.iterdir())
    for root in serial.iterdir():
        assert _tree(root) == _tree(parallel / root.name), root.name
    assert threading.active_count() == threads and _children() == children


def _corrupt_member(whl: Path, member: str) -> None:
    """Overwrite the middle of `member`'s deflated bytes (the central directory stays valid)."""
    with zipfile.ZipFile(whl) as zf:
        info = zf.getinfo(member)
    with open(whl, "r+b") as f:
        f.seek(info.header_offset + 26)
        n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        start = info.header_offset + 30 + n + m
        f.seek(start + info.compress_size // 3)
        f.write(b"\xff" * 64)


@pytest.mark.parametrize("verify", [True, False])
def test_corrupt_member_one_line_and_nothing_left(verify: bool, tmp_path: Path) -> None:
    whl = rich_wheel(tmp_path)
    _corrupt_member(whl, "tiny/big.bin")
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(whl), "--into", str(into), *([] if verify else ["--no-verify-record"]))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"rpathfix unpack: error: {whl}") and "tiny/big.bin" in r.stderr
    assert list(into.iterdir()) == []


def test_truncated_wheel(tmp_path: Path) -> None:
    whl = rich_wheel(tmp_path)
    data = whl.read_bytes()
    whl.write_bytes(data[: len(data) // 2])
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(whl), "--into", str(into))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert list(into.iterdir()) == []


def test_failure_in_the_pool_stops_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A corrupt member in a pool thread, among good wheels unpacked at the same time: one
    error naming it, no temporary directory, every thread and worker process gone."""
    import threading

    from rpathfix import wheelinstall
    from rpathfix.unpack import iter_unpack

    (tmp_path / "a").mkdir()
    bad = rich_wheel(tmp_path / "a")
    _corrupt_member(bad, "tiny/big.bin")
    (tmp_path / "b").mkdir()
    good = make_wheel(tmp_path / "b", dist="other", extra=[(_deflated("other/m.py"), SET_MODULE)])
    monkeypatch.setattr(wheelinstall, "BIG", 0)
    threads, children = threading.active_count(), _children()
    into = tmp_path / "roots"
    with pytest.raises(FormatError, match=r"tiny/big\.bin"):
        list(iter_unpack([str(good), str(bad)], str(into), jobs=2))
    assert not [p for p in into.iterdir() if ".tmp-" in p.name]
    assert not (into / "tiny").exists()
    assert threading.active_count() == threads and _children() == children


def test_failing_bytecode_worker_leaves_nothing(tmp_path: Path) -> None:
    """An interpreter whose compiler dies: one line, exit 2, no root, no temporary directory."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    into = tmp_path / "roots"
    r = rpathfix("unpack", str(rich_wheel(tmp_path)), "--into", str(into), "--python", str(fake))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "bytecode compiler" in r.stderr
    assert list(into.iterdir()) == []


@pytest.mark.parametrize("n", [1, 2])
def test_ctrl_c_stops_workers_and_removes_the_temporary_root(n: int, tmp_path: Path) -> None:
    """SIGINT while the bytecode workers run (an interpreter that hangs), with one wheel or two
    unpacked at once: exit 130, every worker killed and reaped, nothing left in --into."""
    import signal
    import time

    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    pidfile = tmp_path / "worker.pid"
    fake.write_text(f"#!/bin/sh\necho $$ >> {pidfile}\nexec sleep 600\n")
    fake.chmod(0o755)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    wheels = [str(rich_wheel(tmp_path / "a")),
              str(make_wheel(tmp_path / "b", dist="other", extra=[(_deflated("other/m.py"), SET_MODULE)]))][:n]
    into = tmp_path / "roots"
    proc = subprocess.Popen([sys.executable, "-m", "rpathfix", "unpack", *wheels, "--into", str(into),
                             "--python", str(fake), "--jobs", "2"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pidfile.exists() or len(pidfile.read_text().split()) < n:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    workers = [int(p) for p in pidfile.read_text().split()]
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err == "rpathfix: interrupted\n"
    assert list(into.iterdir()) == []
    for worker in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(worker, 0)


def test_memory_does_not_grow_with_a_member(tmp_path: Path) -> None:
    """A 256 MB member (deflated zeros, 250 KB in the wheel) is streamed: the unpacking
    process's peak RSS stays far below the member's size (the control: holding it would
    need 256 MB), and the content is right."""
    size = 256 << 20
    di = "huge-1.0.dist-info"
    whl = tmp_path / "huge-1.0-py3-none-any.whl"
    h = hashlib.sha256()
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(whl, "w") as zf:
        info = _deflated("huge/zeros.bin")
        with zf.open(info, "w", force_zip64=True) as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
                h.update(chunk)
        small = {f"{di}/METADATA": b"Metadata-Version: 2.1\nName: huge\nVersion: 1.0\n",
                 f"{di}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
        for name, data in small.items():
            zf.writestr(_deflated(name), data)
        lines = [f"huge/zeros.bin,sha256="
                 f"{base64.urlsafe_b64encode(h.digest()).rstrip(b'=').decode()},{size}"]
        lines += [f"{name},{_hash(data)},{len(data)}" for name, data in small.items()]
        lines.append(f"{di}/RECORD,,")
        zf.writestr(_deflated(f"{di}/RECORD"), "\n".join(lines) + "\n")
    into = tmp_path / "roots"
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:])\n"
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "rpathfix", "unpack", str(whl),
                          "--into", str(into), "--no-compile"], capture_output=True, text=True, timeout=300)
    rc, peak_kb = (int(x) for x in out.stdout.split())
    assert rc == 0, out.stderr
    assert peak_kb < 128 * 1024, peak_kb
    target = into / "huge" / "site-packages" / "huge" / "zeros.bin"
    assert target.stat().st_size == size
