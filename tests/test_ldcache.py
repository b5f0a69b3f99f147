"""ld.so.cache reader: checked against ldconfig -p, against caches ldconfig -C writes, and fuzzed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpathfix.errors import FormatError
from rpathfix.ldcache import LdCache, load_cache, parse_cache

SYSTEM_CACHE = "/etc/ld.so.cache"
LDCONFIG = next((p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.path.exists(p)), None)
GCC = shutil.which("gcc")
LINE = re.compile(r"^\t(\S+) \(([^)]*)\) => (.+)$")

needs_cache = pytest.mark.skipif(not os.path.exists(SYSTEM_CACHE), reason="no /etc/ld.so.cache")
needs_ldconfig = pytest.mark.skipif(LDCONFIG is None, reason="no ldconfig")


def ldconfig_print(cache: str | None = None) -> list[tuple[str, list[str], str]]:
    """(name, annotations, path) per line of ldconfig -p, in its (file) order."""
    assert LDCONFIG is not None
    cmd = [LDCONFIG, "-p"] + (["-C", cache] if cache else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            rows.append((m.group(1), [a.strip() for a in m.group(2).split(",")], m.group(3)))
    return rows


def first_x86_64(rows: list[tuple[str, list[str], str]]) -> dict[str, str]:
    expected: dict[str, str] = {}
    for name, notes, path in rows:
        if notes[:2] == ["libc6", "x86-64"] and not any(n.startswith("hwcap:") for n in notes):
            expected.setdefault(name, path)
    return expected


@needs_cache
@needs_ldconfig
def test_matches_ldconfig_p() -> None:
    cache = load_cache(SYSTEM_CACHE)
    assert cache is not None
    rows = ldconfig_print()
    assert len(cache.entries) == len(rows)
    expected = first_x86_64(rows)
    if not expected:
        pytest.skip("no libc6,x86-64 entries in this machine's cache")
    for name, path in expected.items():
        assert cache.lookup(name, "x86_64", 64) == path, name
    assert cache.lookup("libc.so.6", "aarch64", 64) is None
    if "libcudart.so.13" not in expected:
        pytest.skip("ldconfig -p does not list libcudart.so.13 on this machine")
    found = cache.lookup("libcudart.so.13", "x86_64", 64)
    assert found is not None and found.startswith("/usr/local/cuda-13.0/")


def test_missing_file_is_none(tmp_path: Path) -> None:
    assert load_cache(str(tmp_path / "nope")) is None


def test_bad_magic() -> None:
    with pytest.raises(FormatError):
        parse_cache(b"not a cache at all, really")
    with pytest.raises(FormatError):
        parse_cache(b"")


def _build_lib(d: Path, soname: str) -> None:
    assert GCC is not None
    d.mkdir(parents=True, exist_ok=True)
    src = d / "x.c"
    src.write_text("int zz(void) { return 42; }\n")
    subprocess.run([GCC, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(d / soname), str(src)], check=True)


@needs_ldconfig
@pytest.mark.skipif(GCC is None, reason="no gcc")
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="lookup assertions are written for x86_64")
@pytest.mark.parametrize("fmt", ["new", "compat", "old"])
def test_synthetic_cache(tmp_path: Path, fmt: str) -> None:
    assert LDCONFIG is not None
    root = tmp_path / "root"
    _build_lib(root / "libs", "libzz.so.1")
    _build_lib(root / "libs" / "glibc-hwcaps" / "x86-64-v3", "libzz.so.1")
    (root / "etc").mkdir()
    (root / "etc" / "ld.so.conf").write_text("/libs\n")
    # -r: every path (conf, cache, aux cache, trusted dirs) is inside the tmp root, so
    # nothing under /etc or /var is read or written; -X: no symlink updates.
    proc = subprocess.run(
        [LDCONFIG, "-X", "-i", "-r", str(root), "-c", fmt, "-C", "/ld.so.cache", "-f", "/etc/ld.so.conf"],
        capture_output=True, text=True,
    )
    cache_file = root / "ld.so.cache"
    if proc.returncode != 0 or not cache_file.exists():
        pytest.skip(f"ldconfig -C failed: {proc.stderr.strip()}")
    cache = load_cache(str(cache_file))
    assert isinstance(cache, LdCache)
    assert cache == parse_cache(cache_file.read_bytes(), str(cache_file))
    rows = ldconfig_print(str(cache_file))
    # Same entries, same order, same hwcaps names as ldconfig -p prints.
    assert [(e.name, e.path) for e in cache.entries] == [(n, p) for n, _, p in rows]
    for e, (_, notes, _) in zip(cache.entries, rows):
        shown = [n.split(":", 1)[1].strip().strip('"') for n in notes if n.startswith("hwcap:")]
        assert (shown[0] if shown else None) == e.hwcaps_subdir
    for name, path in first_x86_64(rows).items():
        assert cache.lookup(name, "x86_64", 64) == path, name

    plain, v3 = "/libs/libzz.so.1", "/libs/glibc-hwcaps/x86-64-v3/libzz.so.1"
    assert cache.lookup("libzz.so.1", "i386", 32) is None
    assert cache.lookup("libzz.so.1", "x86_64", 64, hwcaps_supported=("x86-64-v2",)) == cache.lookup(
        "libzz.so.1", "x86_64", 64)
    assert cache.lookup("libzz.so.2", "x86_64", 64) is None
    if fmt == "old":
        # No hwcap field: the variant is a plain entry and, sorted first, wins (as in ld.so).
        assert all(e.hwcap == 0 and e.hwcaps_subdir is None for e in cache.entries)
        assert cache.lookup("libzz.so.1", "x86_64", 64) == v3
        return
    assert cache.lookup("libzz.so.1", "x86_64", 64) == plain
    variant = cache.entries[0]
    assert variant.path == v3 and variant.hwcaps_index is not None
    if fmt == "new":
        assert variant.hwcaps_subdir == "x86-64-v3"
        assert cache.lookup("libzz.so.1", "x86_64", 64, ("x86-64-v4", "x86-64-v3", "x86-64-v2")) == v3
    else:
        # compat: ldconfig writes the hwcaps name offsets relative to the new header but
        # ld.so reads them from the file start, so the variant is never chosen.
        assert cache.lookup("libzz.so.1", "x86_64", 64, ("x86-64-v3",)) == plain


_SYSTEM_DATA = Path(SYSTEM_CACHE).read_bytes() if os.path.exists(SYSTEM_CACHE) else b""


@needs_cache
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cut=st.one_of(st.none(), st.integers(0, max(len(_SYSTEM_DATA), 1))),
    edits=st.lists(
        st.tuples(st.one_of(st.integers(0, 63), st.integers(0, max(len(_SYSTEM_DATA) - 1, 0))), st.integers(0, 255)),
        max_size=8,
    ),
)
def test_fuzz_real_cache(cut: int | None, edits: list[tuple[int, int]]) -> None:
    data = bytearray(_SYSTEM_DATA)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    if cut is not None:
        del data[cut:]
    try:
        result = parse_cache(bytes(data))
    except FormatError:
        return
    assert isinstance(result, LdCache)
    for e in result.entries[:5]:
        result.lookup(e.name, "x86_64", 64, ("x86-64-v3",))
