"""rpathfix.deflate: a patched copy of a deflated member spliced into the original deflate
stream. Every output is inflated by zlib (and, in the wheel test, by Info-ZIP's unzip and
zipfile) and compared with the patched content built independently here; the controls are
the same edits deflated whole (wheelfile.SPLICE off)."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpathfix import deflate, wheelfile
from rpathfix.errors import FormatError
from rpathfix.model import BytePatch
from test_wheelfile import make_wheel

pytestmark = pytest.mark.skipif(not deflate.available(), reason="zlib cannot be loaded through ctypes here")


def content(seed: int, size: int) -> bytes:
    """Compressible bytes with incompressible stretches (as a binary's code and data are)."""
    rnd = random.Random(seed)
    words = [rnd.randbytes(rnd.randrange(3, 14)) for _ in range(200)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(words) if rnd.random() < 0.85 else rnd.randbytes(rnd.randrange(1, 64))
    return bytes(out[:size])


def compress(data: bytes, level: int, flush_every: int = 0, flush_mode: int = zlib.Z_SYNC_FLUSH) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, -15)
    if not flush_every:
        return z.compress(data) + z.flush()
    parts = []
    for i in range(0, len(data), flush_every):
        parts.append(z.compress(data[i:i + flush_every]) + z.flush(flush_mode))
    return b"".join(parts) + z.flush()


def patched(old: bytes, patch: BytePatch) -> bytes:
    new = bytearray(old[:patch.size]) + bytes(max(0, patch.size - len(old)))
    for off, data in patch.writes:
        new[off:off + len(data)] = data
    return bytes(new)


def run_splice(old: bytes, comp: bytes, patch: BytePatch) -> tuple[bytes, deflate.Spliced]:
    with tempfile.TemporaryFile() as src, tempfile.TemporaryFile() as dst:
        src.write(b"zip header" + comp)
        src.flush()
        dst.write(b"before")
        dst.flush()
        with deflate.Spool("m", src.fileno(), 10, len(comp), len(old), zlib.crc32(old)) as spool:
            r = deflate.splice(spool, patch, dst.fileno(), 6, 6)
        dst.seek(0)
        assert dst.read(6) == b"before"
        return dst.read(), r


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), size=st.sampled_from([0, 1, 900, 40_000, 200_000, 1_500_000]),
       level=st.sampled_from([0, 1, 6, 9]), flush=st.sampled_from([0, 0, 5000, 70_000]),
       mode=st.sampled_from([zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH, zlib.Z_BLOCK, zlib.Z_PARTIAL_FLUSH]),
       edits=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 300)), max_size=4),
       grow=st.sampled_from([0, 0, 1, 7000, -1, -3000]))
def test_splice_gives_the_patched_content(seed: int, size: int, level: int, flush: int, mode: int,
                                          edits: list[tuple[float, int]], grow: int) -> None:
    old = content(seed, size)
    comp = compress(old, level, flush, mode)
    new_size = max(0, size + grow)
    rnd = random.Random(seed)
    writes = []
    for where, n in edits:
        off = min(int(where * new_size), max(new_size - 1, 0))
        data = rnd.randbytes(min(n, new_size - off))
        if data:
            writes.append((off, data))
    if new_size > size and rnd.random() < 0.7:
        writes.append((size, rnd.randbytes(new_size - size)))
    patch = BytePatch(tuple(writes), new_size, "grown", ())
    out, r = run_splice(old, comp, patch)
    want = patched(old, patch)
    assert zlib.decompress(out, -15) == want
    assert (r.crc, r.size, r.sha256, r.compress_size) == (zlib.crc32(want), len(want),
                                                        hashlib.sha256(want).digest(), len(out))


def test_unchanged_blocks_are_copied_not_deflated_again() -> None:
    """An edit at the start and bytes appended at the end of 6 MB (the shape of a grown ELF
    edit): nearly all of the original compressed stream is reused, bit for bit."""
    old = content(7, 6 << 20)
    comp = compress(old, 9)
    patch = BytePatch(((6 << 20, b"appended" * 100), (0, b"\x7fELF-new-header" * 40)), (6 << 20) + 800, "grown", ())
    out, r = run_splice(old, comp, patch)
    assert zlib.decompress(out, -15) == patched(old, patch)
    assert r.reused > 0.95 * len(comp), (r.reused, len(comp))
    mid = len(comp) // 2
    assert comp[mid:mid + 4096] in out, "the original's compressed bytes, copied"


def test_a_corrupt_or_short_stream_is_a_format_error() -> None:
    old = content(3, 300_000)
    comp = bytearray(compress(old, 6))
    patch = BytePatch(((0, b"x"),), len(old), "in-place", ())
    with pytest.raises(FormatError, match=r"CRC-32 mismatch|corrupt"):
        run_splice(old, bytes(comp[:100] + bytes(b ^ 0x55 for b in comp[100:140]) + comp[140:]), patch)
    with pytest.raises(FormatError, match="ends before"):
        run_splice(old, bytes(comp[: len(comp) // 2]), patch)


def _wheel_with_binary(tmp: Path, data: bytes) -> Path:
    (tmp / "w").mkdir()
    return make_wheel(tmp / "w" / "big-1.0-py3-none-any.whl", {"big/__init__.py": b"", "big/libbig.so": data},
                      name="big")


def test_rewrite_wheel_splices_and_matches_a_whole_deflate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rewrite_wheel with a BytePatch: the member is spliced (its compressed size close to the
    original's), the wheel is valid for zipfile, Info-ZIP's unzip and wheel's RECORD check,
    the bytes are the same on a second run, and the content is what the control (the patched
    content deflated whole) holds."""
    data = content(11, 3 << 20)
    wheel = _wheel_with_binary(tmp_path, data)
    patch = BytePatch(((0, b"HEAD" * 64), (len(data), b"TAIL" * 1000)), len(data) + 4000, "grown", ())
    want = patched(data, patch)
    outs = []
    for run, splice in (("a", True), ("b", True), ("control", False)):
        monkeypatch.setattr(wheelfile, "SPLICE", splice)
        res = wheelfile.rewrite_wheel(str(wheel), str(tmp_path / run), member_edits={"big/libbig.so": patch})
        outs.append(Path(res.path))
        with zipfile.ZipFile(res.path) as zf:
            assert zf.testzip() is None and zf.read("big/libbig.so") == want
            info = zf.getinfo("big/libbig.so")
        if splice:
            with zipfile.ZipFile(wheel) as zf:
                assert info.compress_size < zf.getinfo("big/libbig.so").compress_size + 8000
    a, b, control = (p.read_bytes() for p in outs)
    assert a == b, "deterministic"
    assert a != control, "the control deflates the member again"
    if shutil.which("unzip"):
        assert subprocess.run(["unzip", "-tq", str(outs[0])], capture_output=True).returncode == 0
    unpack = subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", str(tmp_path / "u"), str(outs[0])],
                            capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr  # RECORD's sha256 and size are checked


# ---------------------------------------------------------------- the spool


def _source(tmp: Path, comp: bytes) -> int:
    (tmp / "member.z").write_bytes(b"zip header" + comp)
    return os.open(tmp / "member.z", os.O_RDONLY)


def test_a_spool_reads_the_content_and_inflates_only_what_is_read(tmp_path: Path) -> None:
    """Reads at any offset give the content; a read near the start inflates near the start
    only; tiny blocks are joined into units, so the index stays small."""
    old = content(5, 6 << 20)
    comp = compress(old, 6, flush_every=100)  # a block every 100 bytes: 63,000 blocks
    fd = _source(tmp_path, comp)
    try:
        with deflate.Spool("m", fd, 10, len(comp), len(old), zlib.crc32(old), str(tmp_path)) as sp:
            assert sp.read_at(0, 64) == old[:64]
            assert sp.inflated < len(old) // 2, "only what was read (and one buffer)"
            rnd = random.Random(1)
            for _ in range(50):
                off = rnd.randrange(len(old) - 5000)
                assert sp.read_at(off, 5000) == old[off:off + 5000]
            sp.finish()
            assert sp.inflated == len(old)
            assert len(sp.offsets) <= len(old) // deflate._MIN_UNIT + 2, len(sp.offsets)
            assert list(sp.offsets) == sorted(sp.offsets) and sp.offsets[-1] == len(old)
        assert os.listdir(tmp_path) == ["member.z"], "the spool file has no name"
    finally:
        os.close(fd)


def test_a_failed_write_to_the_spool_is_raised_and_leaves_no_thread(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer thread's error (a full disk) is raised by the read that needed it; the
    thread has ended; later reads say the member cannot be read instead of serving a hole."""
    import errno
    import threading

    from rpathfix import fileio

    old = content(9, 5 << 20)
    comp = compress(old, 6)
    fd = _source(tmp_path, comp)
    calls = []

    def full(out_fd: int, data: object, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(out_fd, data, offset)  # type: ignore[arg-type]

    real = fileio.pwrite_all
    monkeypatch.setattr(fileio, "pwrite_all", full)
    threads = threading.active_count()
    try:
        with deflate.Spool("m", fd, 10, len(comp), len(old), zlib.crc32(old), str(tmp_path)) as sp:
            with pytest.raises(OSError, match="No space") as err:
                sp.finish()
            assert err.value.filename == str(tmp_path), "the message names where the spool was"
            assert threading.active_count() == threads
            with pytest.raises(FormatError, match="earlier read"):
                sp.read_at(0, 10)
    finally:
        os.close(fd)


_REAL_SPOOL = deflate.Spool


def _counting(made: list[str]) -> object:
    """deflate.Spool, noting the member each spool inflates."""

    def spool(name: str, *a: object) -> deflate.Spool:
        made.append(name.rsplit("!", 1)[-1])
        return _REAL_SPOOL(name, *a)  # type: ignore[arg-type]

    return spool


def test_a_spooled_member_is_inflated_once_for_its_read_and_its_splice(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An archive with a spool directory keeps what a header read inflated (the end of a
    library: all of it), and rewrite_wheel given that archive splices from it: one inflate of
    the member. Control: rewrite_wheel opening the wheel itself inflates it again. Both give
    the same bytes, and neither leaves a file in the spool directory."""
    data = content(13, 3 << 20)
    wheel = _wheel_with_binary(tmp_path, data)
    patch = BytePatch(((0, b"HEAD" * 64), (len(data), b"TAIL" * 1000)), len(data) + 4000, "grown", ())
    made: list[str] = []
    monkeypatch.setattr(deflate, "Spool", _counting(made))
    spools = tmp_path / "spools"
    spools.mkdir()
    with wheelfile.WheelArchive(str(wheel), spool_dir=str(spools)) as arc:
        src = arc.source("big/libbig.so")
        assert src.read_at(len(data) - 100, 100) == data[-100:]  # as the ELF reader reads a dynamic section
        src.close()
        once = wheelfile.rewrite_wheel(str(wheel), str(tmp_path / "once"), member_edits={"big/libbig.so": patch},
                                       archive=arc)
    assert made == ["big/libbig.so"]
    twice = wheelfile.rewrite_wheel(str(wheel), str(tmp_path / "twice"), member_edits={"big/libbig.so": patch})
    assert made == ["big/libbig.so"] * 2, "the control spools the member again for its splice"
    assert Path(once.path).read_bytes() == Path(twice.path).read_bytes()
    assert os.listdir(spools) == [] and os.listdir(tmp_path / "once") == [Path(once.path).name]
    with zipfile.ZipFile(once.path) as zf:
        assert zf.read("big/libbig.so") == patched(data, patch)


def test_past_the_spool_limit_members_are_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SPOOL_LIMIT bounds the spooled bytes of an archive; a member past it is read with
    inflater checkpoints, and spooled only while its patch is written."""
    data = content(17, 2 << 20)
    wheel = _wheel_with_binary(tmp_path, data)
    monkeypatch.setattr(wheelfile, "SPOOL_LIMIT", 1 << 20)
    with wheelfile.WheelArchive(str(wheel), spool_dir=str(tmp_path)) as arc:
        src = arc.source("big/libbig.so")
        assert isinstance(src, wheelfile.MemberSource) and arc.spool("big/libbig.so") is None
        assert src.read_at(len(data) - 10, 10) == data[-10:]
    monkeypatch.setattr(wheelfile, "SPOOL_LIMIT", 4 << 20)
    with wheelfile.WheelArchive(str(wheel), spool_dir=str(tmp_path)) as arc:
        assert not isinstance(arc.source("big/libbig.so"), wheelfile.MemberSource)
        assert arc.spool("big/libbig.so") is not None


def test_a_bad_crc_lets_headers_be_read_and_stops_the_splice(tmp_path: Path) -> None:
    """A member whose CRC-32 does not match still reads (a header read does not check it, as
    before spooling), so its library is planned; finishing the spool for the splice refuses
    it. Control: the same spool with the right CRC-32 finishes."""
    old = content(21, 300_000)
    comp = compress(old, 6)
    fd = _source(tmp_path, comp)
    try:
        for crc, ok in ((zlib.crc32(old) ^ 1, False), (zlib.crc32(old), True)):
            with deflate.Spool("m", fd, 10, len(comp), len(old), crc, str(tmp_path)) as sp:
                assert sp.read_at(len(old) - 100, 100) == old[-100:]
                if ok:
                    sp.finish()
                else:
                    with pytest.raises(FormatError, match="CRC-32 mismatch"):
                        sp.finish()
        with deflate.Spool("m", fd, 10, len(comp), len(old) + 10, zlib.crc32(old), str(tmp_path)) as sp, \
                pytest.raises(FormatError, match="not as long"):
            sp.read_at(len(old), 10)
    finally:
        os.close(fd)


def test_a_long_copy_starts_the_writeback_and_its_error_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused run longer than PIECE is copied in pieces, and the output's writeback starts
    in a thread (fdatasync) as it goes; the output is the same. A writeback that fails (EIO)
    fails the splice. Control: with PIECE as large as the run, no writeback is started."""
    import errno

    old = content(23, 6 << 20)
    comp = compress(old, 9)
    patch = BytePatch(((0, b"HEAD" * 64),), len(old), "in-place", ())
    synced: list[int] = []
    real_sync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real_sync(fd))[1])
    monkeypatch.setattr(deflate, "PIECE", 1 << 30)
    control, _ = run_splice(old, comp, patch)
    assert synced == []
    monkeypatch.setattr(deflate, "PIECE", 256 << 10)
    out, r = run_splice(old, comp, patch)
    assert out == control and zlib.decompress(out, -15) == patched(old, patch)
    assert synced and r.reused > 0.95 * len(comp)

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError, match="Input/output"):
        run_splice(old, comp, patch)


def test_without_room_for_a_spool_the_patch_is_deflated_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the output's file system cannot keep SPOOL_RESERVE free beside a spool, nothing is
    spooled: the header read reads in place and the patched member is deflated whole, with
    the same content. Control: with room, the member is spooled once and spliced."""
    data = content(29, 2 << 20)
    wheel = _wheel_with_binary(tmp_path, data)
    patch = BytePatch(((0, b"HEAD" * 64), (len(data), b"TAIL" * 1000)), len(data) + 4000, "grown", ())
    made: list[str] = []
    monkeypatch.setattr(deflate, "Spool", _counting(made))
    outs = {}
    for case, reserve in (("tight", 1 << 62), ("room", 0)):
        monkeypatch.setattr(wheelfile, "SPOOL_RESERVE", reserve)
        with wheelfile.WheelArchive(str(wheel), spool_dir=str(tmp_path)) as arc:
            src = arc.source("big/libbig.so")
            assert src.read_at(len(data) - 10, 10) == data[-10:]
            res = wheelfile.rewrite_wheel(str(wheel), str(tmp_path / case), member_edits={"big/libbig.so": patch},
                                          archive=arc)
        with zipfile.ZipFile(res.path) as zf:
            assert zf.read("big/libbig.so") == patched(data, patch)
            outs[case] = zf.getinfo("big/libbig.so").compress_size
        assert made == ([] if case == "tight" else ["big/libbig.so"]), case
    assert outs["tight"] != outs["room"], "deflated whole, not spliced"
