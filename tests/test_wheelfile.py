"""wheelfile: the safe zip reader and the wheel writer, checked with zipfile, pip, `wheel unpack`
and twine on real wheels (the gcc-built stubs and wheels made here)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from rpathfix.errors import FormatError, UsageError
from rpathfix.wheelfile import (
    WheelArchive,
    add_requires_dist,
    parse_wheel_name,
    repaired_name,
    rewrite_wheel,
    set_wheel_build,
)

DIST_INFO = "onnxgpustub-1.31.1.dist-info"


def raw_record(arc: WheelArchive, name: str) -> bytes:
    e = arc.by_name[name]
    return arc.pread(e.header_offset, e.record_end - e.header_offset)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_wheel(path: Path, files: dict[str, bytes], *, name: str = "demo", version: str = "1.0",
               metadata_extra: str = "", compression: int = zipfile.ZIP_DEFLATED, mode: int = 0o644) -> Path:
    """A small real wheel (pure Python unless told), written with zipfile, RECORD last."""
    import base64

    dist_info = f"{name}-{version}.dist-info"
    files = dict(files)
    files[f"{dist_info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                      f"{metadata_extra}").encode()
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    rows = []
    for n, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{n},sha256={digest},{len(data)}\n")
    rows.append(f"{dist_info}/RECORD,,\n")
    files[f"{dist_info}/RECORD"] = "".join(rows).encode()
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for n, data in files.items():
            info = zipfile.ZipInfo(n, date_time=(2020, 2, 2, 2, 2, 2))
            info.external_attr = (0o100000 | mode) << 16
            info.compress_type = compression
            zf.writestr(info, data)
    return path


# ---------------------------------------------------------------- names and metadata text


def test_repaired_name_sorts_above_the_original_and_below_a_rebuild() -> None:
    from packaging.utils import parse_wheel_filename

    plain = "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.whl"
    assert repaired_name(plain).filename == "onnxruntime_gpu-1.31.1-0rpathfix-cp312-cp312-manylinux_2_27_x86_64.whl"
    built = "torch-2.9.0+cu130-1-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert repaired_name(built).build == "1rpathfix"
    again = repaired_name(repaired_name(built).filename)
    assert again.build == "1rpathfix", "repairing a repaired wheel keeps its name"
    key = [parse_wheel_filename(n)[2] for n in (plain, repaired_name(plain).filename, built,
                                                repaired_name(built).filename,
                                                "torch-2.9.0+cu130-2-cp312-cp312-manylinux_2_28_x86_64.whl")]
    assert key[0] < key[1]  # () < (0, "rpathfix"): pip's and uv's order
    assert key[2] < key[3] < key[4]  # (1, "") < (1, "rpathfix") < (2, "")
    with pytest.raises(FormatError):
        parse_wheel_name("not-a-wheel.zip")


def test_add_requires_keeps_every_other_byte() -> None:
    meta = (b"Metadata-Version: 2.1\r\nName: onnx\r\nVersion: 1\r\nRequires-Dist: numpy>=1.21\r\n"
            b"Requires-Dist: coloredlogs\r\nDescription-Content-Type: text/markdown\r\n\r\n"
            b"# Body\r\nRequires-Dist: not a header\r\n")
    out = add_requires_dist(meta, ["nvidia-cublas~=13.1", "nvidia-cuda-runtime~=13.0"])
    assert out == meta.replace(b"Requires-Dist: coloredlogs\r\n", b"Requires-Dist: coloredlogs\r\n"
                               b"Requires-Dist: nvidia-cublas~=13.1\r\nRequires-Dist: nvidia-cuda-runtime~=13.0\r\n")
    extra = add_requires_dist(b"Metadata-Version: 2.1\nName: x\nVersion: 1\nProvides-Extra: cuda\n"
                              b'Requires-Dist: a; extra == "cuda"\nSummary: s\n', ["b~=1.0"], "cuda")
    assert extra == (b"Metadata-Version: 2.1\nName: x\nVersion: 1\nProvides-Extra: cuda\n"
                     b'Requires-Dist: a; extra == "cuda"\nRequires-Dist: b~=1.0; extra == "cuda"\nSummary: s\n')
    new_extra = add_requires_dist(b"Metadata-Version: 2.1\nName: x\nVersion: 1\n", ["b~=1.0"], "gpu")
    assert new_extra == (b"Metadata-Version: 2.1\nName: x\nVersion: 1\nProvides-Extra: gpu\n"
                         b'Requires-Dist: b~=1.0; extra == "gpu"\n')
    assert set_wheel_build(b"Wheel-Version: 1.0\nTag: py3-none-any\n", "0rpathfix") == \
        b"Wheel-Version: 1.0\nTag: py3-none-any\nBuild: 0rpathfix\n"
    assert set_wheel_build(b"Wheel-Version: 1.0\nBuild: 1\nTag: py3-none-any\n", "1rpathfix") == \
        b"Wheel-Version: 1.0\nTag: py3-none-any\nBuild: 1rpathfix\n"


# ---------------------------------------------------------------- rewriting


def test_metadata_rewrite_copies_members_byte_for_byte(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    src = stub_wheels["onnxgpustub"]
    result = rewrite_wheel(str(src), str(tmp_path), requires=["nvidia-xcublas~=13.1"])
    out = Path(result.path)
    assert out.name == "onnxgpustub-1.31.1-0rpathfix-cp311-cp311-linux_x86_64.whl"
    assert set(result.changed) == {f"{DIST_INFO}/METADATA", f"{DIST_INFO}/WHEEL", f"{DIST_INFO}/RECORD"}
    with WheelArchive(str(src)) as a, WheelArchive(str(out)) as b:
        assert [e.name for e in b.entries][-1] == f"{DIST_INFO}/RECORD"
        assert sorted(e.name for e in a.entries) == sorted(e.name for e in b.entries)
        for e in a.entries:
            if e.name not in result.changed:
                assert raw_record(a, e.name) == raw_record(b, e.name), e.name
            assert b.by_name[e.name].external_attr == e.external_attr, "modes and attributes kept"
            assert (b.by_name[e.name].dos_date, b.by_name[e.name].dos_time) == (e.dos_date, e.dos_time)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert b"Requires-Dist: nvidia-xcublas~=13.1\n" in zf.read(f"{DIST_INFO}/METADATA")
        assert zf.read(f"{DIST_INFO}/WHEEL").endswith(b"Build: 0rpathfix\n")


def test_tools_accept_a_rewritten_wheel_and_reject_a_stale_record(stub_wheels: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    out = Path(rewrite_wheel(str(stub_wheels["onnxgpustub"]), str(tmp_path / "out"),
                             requires=["nvidia-xcublas~=13.1"], extra="cuda").path)
    unpack = subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp_path / "u"), str(out)],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    twine = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(out)],
                           capture_output=True, text=True)
    assert "ERROR" not in twine.stdout + twine.stderr, twine.stdout
    target = tmp_path / "target"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--isolated",
                          "--target", str(target), str(out)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    installed = (target / DIST_INFO / "METADATA").read_text()
    assert 'Requires-Dist: nvidia-xcublas~=13.1; extra == "cuda"' in installed
    # Control: the same METADATA change with the old RECORD is refused by `wheel unpack`.
    stale = tmp_path / "stale" / out.name
    stale.parent.mkdir()
    with zipfile.ZipFile(stub_wheels["onnxgpustub"]) as zin, zipfile.ZipFile(stale, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/METADATA"):
                data += b"Requires-Dist: nvidia-xcublas~=13.1\n"
            zout.writestr(info, data)
    bad = subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp_path / "u2"), str(stale)],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "hash" in (bad.stdout + bad.stderr).lower()


def test_two_runs_with_other_umask_tz_and_locale_give_the_same_bytes(stub_wheels: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, sys
        os.umask(int(sys.argv[3], 8))
        from rpathfix.wheelfile import rewrite_wheel
        def edit(src, out):  # a streamed edit: the content, one byte changed
            data = bytearray(src.read_at(0, src.size)); data[-1] ^= 1; out.write(bytes(data))
        rewrite_wheel(sys.argv[1], sys.argv[2], requires=["a~=1.0"],
                      member_edits={"onnxgpustub/capi/libxonnxruntime.so.1": edit})
    """)
    outs = []
    for i, (umask, tz, lc) in enumerate((("022", "UTC", "C"), ("077", "Asia/Kolkata", "C.UTF-8"))):
        env = {**os.environ, "TZ": tz, "LC_ALL": lc, "LANG": lc}
        env.pop("SOURCE_DATE_EPOCH", None)
        d = tmp_path / f"run{i}"
        subprocess.run([sys.executable, "-c", script, str(stub_wheels["onnxgpustub"]), str(d), umask],
                       check=True, env=env)
        (whl,) = d.glob("*.whl")
        outs.append(whl)
        assert (whl.stat().st_mode & 0o777) == 0o644, "the wheel's own mode does not follow the umask"
    assert sha(outs[0]) == sha(outs[1])
    with zipfile.ZipFile(outs[0]) as zf:
        assert zf.testzip() is None
        info = zf.getinfo("onnxgpustub/capi/libxonnxruntime.so.1")
        assert (info.external_attr >> 16) & 0o777 == 0o755


def test_a_second_run_writes_nothing(stub_wheels: dict[str, Path], tmp_path: Path) -> None:
    first = rewrite_wheel(str(stub_wheels["onnxgpustub"]), str(tmp_path), requires=["a~=1.0"])
    os.utime(first.path, ns=(1_000_000_000, 1_000_000_000))
    ino = os.stat(first.path).st_ino
    second = rewrite_wheel(str(stub_wheels["onnxgpustub"]), str(tmp_path), requires=["a~=1.0"])
    assert first.written and not second.written
    st = os.stat(second.path)
    assert (st.st_mtime_ns, st.st_ino) == (1_000_000_000, ino)
    assert [p.name for p in tmp_path.iterdir()] == [Path(first.path).name], "no temporary file left"
    third = rewrite_wheel(str(stub_wheels["onnxgpustub"]), str(tmp_path), requires=["b~=1.0"])
    assert third.written and os.stat(third.path).st_ino != ino, "a change is a new file renamed into place"


def test_streamed_edit_of_a_large_member_uses_bounded_memory(tmp_path: Path) -> None:
    size = 160 * 1024 * 1024
    block = hashlib.sha256(b"x").digest() * 2048  # 64 KiB, compressible: the wheel stays small
    src = tmp_path / "big-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(zipfile.ZipInfo("big/blob.bin", date_time=(2020, 1, 1, 0, 0, 0)), "w") as f:
            for _ in range(size // len(block)):
                f.write(block)
        zf.writestr("big-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: big\nVersion: 1.0\n")
        zf.writestr("big-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("big-1.0.dist-info/RECORD", "big/blob.bin,,\n")
    script = textwrap.dedent("""
        import sys
        from rpathfix.wheelfile import rewrite_wheel
        def streamed(src, out):
            off = 0
            while off < src.size:
                n = min(1 << 20, src.size - off)
                chunk = src.read_at(off, n)
                out.write(chunk.upper() if off == 0 else chunk)
                off += n
        def whole(src, out):  # the control: the whole member in memory at once
            parts = [src.read_at(off, min(1 << 24, src.size - off)) for off in range(0, src.size, 1 << 24)]
            out.write(b"".join(parts))
        edit = streamed if sys.argv[3] == "streamed" else whole
        rewrite_wheel(sys.argv[1], sys.argv[2], member_edits={"big/blob.bin": edit})
        # VmHWM: this process's own peak. ru_maxrss carries the parent's across a vfork+exec,
        # and pytest may have grown by then.
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(int(hwm.split()[1]) // 1024)
    """)
    peaks = {}
    for mode in ("streamed", "whole"):
        proc = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / mode), mode],
                              capture_output=True, text=True, check=True)
        peaks[mode] = int(proc.stdout.strip())
    assert peaks["streamed"] < 80, peaks
    assert peaks["whole"] > 160, peaks  # the measure sees a whole member in memory
    (out,) = (tmp_path / "streamed").glob("*.whl")
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        with zf.open("big/blob.bin") as f:
            assert f.read(len(block)) == block.upper()
        record = zf.read("big-1.0.dist-info/RECORD").decode()
    per_chunk = (1 << 20) // len(block)  # the edit changed the first 1 MiB chunk
    h = hashlib.sha256(block.upper() * per_chunk)
    for _ in range(size // len(block) - per_chunk):
        h.update(block)
    import base64

    digest = base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()
    assert f"big/blob.bin,sha256={digest},{size}" in record


def test_zip64_and_data_descriptors_are_copied(tmp_path: Path) -> None:
    """More than 65,535 members (zip64 end records) and members written with data descriptors
    (a zip streamed to a pipe): both are read and written back valid."""
    src = tmp_path / "many-1.0-py3-none-any.whl"
    with zipfile.ZipFile(src, "w", compression=zipfile.ZIP_STORED) as zf:
        for i in range(66_000):
            zf.writestr(f"many/f{i}.txt", b"")
        zf.writestr("many-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: many\nVersion: 1.0\n")
        zf.writestr("many-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("many-1.0.dist-info/RECORD", "")
    out = Path(rewrite_wheel(str(src), str(tmp_path / "o"), requires=["a~=1.0"]).path)
    with zipfile.ZipFile(out) as zf:
        assert len(zf.infolist()) == 66_003 and zf.testzip() is None
    streamed = tmp_path / "desc-1.0-py3-none-any.whl"
    r, w = os.pipe()
    with os.fdopen(w, "wb") as pipe_out:
        pid = os.fork()
        if pid == 0:
            os.close(r)
            with zipfile.ZipFile(pipe_out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr("desc/a.py", b"print('a')\n" * 100)
                zf.writestr("desc-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: desc\nVersion: 1.0\n")
                zf.writestr("desc-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
                zf.writestr("desc-1.0.dist-info/RECORD", "")
            pipe_out.flush()
            os._exit(0)
    with os.fdopen(r, "rb") as pipe_in:
        streamed.write_bytes(pipe_in.read())
    os.waitpid(pid, 0)
    with WheelArchive(str(streamed)) as arc:
        assert arc.by_name["desc/a.py"].flags & 0x8, "written with a data descriptor"
        desc_record = raw_record(arc, "desc/a.py")
    out = Path(rewrite_wheel(str(streamed), str(tmp_path / "o2"), requires=["a~=1.0"]).path)
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None and zf.read("desc/a.py") == b"print('a')\n" * 100
    with WheelArchive(str(out)) as arc:
        assert raw_record(arc, "desc/a.py") == desc_record


# ---------------------------------------------------------------- hostile input


def corrupt(path: Path, old: bytes, new: bytes, count: int = 1) -> None:
    data = path.read_bytes()
    assert data.count(old) >= count, old
    path.write_bytes(data.replace(old, new, count))


@pytest.mark.parametrize("case", ["truncated", "local-name", "dotdot", "duplicate", "prefix", "encrypted",
                                  "overlap", "not-zip", "crc"])
def test_malformed_wheels_are_format_errors(case: str, tmp_path: Path) -> None:
    p = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/a.py": b"A = 1\n" * 50, "demo/b.py": b"B\n"},
                   compression=zipfile.ZIP_STORED if case == "crc" else zipfile.ZIP_DEFLATED)
    data = p.read_bytes()
    if case == "truncated":
        p.write_bytes(data[: len(data) // 2])
    elif case == "local-name":
        corrupt(p, b"demo/a.py", b"demo/x.py")  # the first occurrence is the local header's
    elif case == "dotdot":
        corrupt(p, b"demo/b.py", b"../../b.py", 2)
    elif case == "duplicate":
        corrupt(p, b"demo/b.py", b"demo/a.py", 2)
    elif case == "prefix":
        p.write_bytes(b"#!/bin/sh\nexit 0\n" + data)  # offsets no longer match: data before the archive
    elif case == "encrypted":
        i = data.index(b"PK\x01\x02")
        p.write_bytes(data[: i + 8] + bytes([data[i + 8] | 1]) + data[i + 9:])
    elif case == "overlap":
        # The second central record points at the first member's local header.
        with zipfile.ZipFile(p) as zf:
            first = zf.infolist()[0].header_offset
        i = data.index(b"PK\x01\x02")
        j = data.index(b"PK\x01\x02", i + 4)
        p.write_bytes(data[: j + 42] + first.to_bytes(4, "little") + data[j + 46:])
    elif case == "not-zip":
        p.write_bytes(b"<html>not found</html>")
    elif case == "crc":
        corrupt(p, b"A = 1\n", b"A = 2\n")
    with pytest.raises(FormatError) as e, WheelArchive(str(p)) as arc:
        for entry in arc.entries:
            if not entry.is_dir:
                arc.read(entry.name)
        if case == "crc":  # stored members are read in place; a streamed copy checks them
            rewrite_wheel(str(p), str(tmp_path / "out"), member_edits={"demo/a.py": _copy})
    assert str(p) in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _copy(src: object, out: object) -> None:
    data = src.read_at(0, src.size)  # type: ignore[attr-defined]
    out.write(data)  # type: ignore[attr-defined]


def test_crc_of_a_deflated_member_is_checked(tmp_path: Path) -> None:
    p = make_wheel(tmp_path / "demo-1.0-py3-none-any.whl", {"demo/a.py": b"A = 1\n" * 50})
    with zipfile.ZipFile(p) as zf:
        crc = zf.getinfo("demo/a.py").CRC
    corrupt(p, crc.to_bytes(4, "little"), (crc ^ 1).to_bytes(4, "little"), 2)
    with WheelArchive(str(p)) as arc, pytest.raises(FormatError, match="CRC"):
        arc.read("demo/a.py")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "demo-1.0-py3-none-any.whl"
    bad.write_bytes(b"not a zip at all, just text that is long enough to look like something")
    proc = subprocess.run([sys.executable, "-m", "rpathfix", "repair", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(UsageError):
        rewrite_wheel(str(make_wheel(tmp_path / "ok-1.0-py3-none-any.whl", {}, name="ok")), str(tmp_path),
                      new_name="ok-2.0-py3-none-any.whl")
