"""fstree.resolve must agree with the kernel (os.path.realpath) on real trees, and the
overlay must answer for a planned tree exactly as the written tree would."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import NOBODY, as_nobody
from rpathfix.fstree import (
    CachedTree,
    Credentials,
    OverlayTree,
    Planned,
    RealTree,
    is_dir,
    is_file,
    lookup,
    resolve,
)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    # store/wheel/site-packages/torch/lib/libt.so and store/other/site-packages/nvidia/lib/libn.so
    t = tmp_path / "store/wheel/site-packages/torch/lib"
    t.mkdir(parents=True)
    (t / "libt.so").write_text("t")
    n = tmp_path / "store/other/site-packages/nvidia/lib"
    n.mkdir(parents=True)
    (n / "libn.so").write_text("n")
    venv = tmp_path / "venv/site-packages"
    venv.mkdir(parents=True)
    os.symlink("../../store/wheel/site-packages/torch", venv / "torch")  # directory symlink
    (venv / "nvidia").mkdir()
    os.symlink("../../store/other/site-packages/nvidia/lib", venv / "nvidia/lib")
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink("missing", tmp_path / "dangling")
    return tmp_path


CASES = [
    "venv/site-packages/torch/lib/libt.so",
    "venv/site-packages/torch/lib/../../nvidia/lib/libn.so",  # climbs from the link's target: missing
    "venv/site-packages/torch/lib/..",
    "venv/site-packages/nvidia/lib/libn.so",
    "venv/site-packages/nvidia/lib/../lib/libn.so",
    "venv/site-packages/./nvidia//lib/",
    "loop1",
    "dangling",
    "venv/site-packages/torch/lib/libt.so/x",
    "store/wheel/site-packages/../../other/site-packages/nvidia",
]


@pytest.mark.parametrize("cached", [False, True], ids=["walk", "cached"])
@pytest.mark.parametrize("rel", CASES)
def test_resolve_agrees_with_kernel(store: Path, rel: str, cached: bool) -> None:
    path = str(store / rel)
    expect = os.path.realpath(path) if os.path.exists(path) else None
    tree = CachedTree(RealTree()) if cached else RealTree()
    assert resolve(tree, path) == expect
    assert resolve(tree, path) == expect  # the second answer comes from the cache


def test_symlinked_directory_climbs_from_target(store: Path) -> None:
    """LOADERS.md rule 17 / O2b: `..` under a symlinked directory leaves the venv."""
    got = resolve(RealTree(), str(store / "venv/site-packages/torch/lib/.."))
    assert got == str(store / "store/wheel/site-packages/torch")


def test_overlay_matches_written_tree(store: Path, tmp_path: Path) -> None:
    root = str(tmp_path / "planned")
    entries = {
        f"{root}/sp/torch": Planned("dir"),
        f"{root}/sp/torch/lib": Planned("dir"),
        f"{root}/sp/torch/lib/libt.so": Planned("link", "../../../../store/wheel/site-packages/torch/lib/libt.so"),
        f"{root}/sp/nvidia": Planned("link", "../../store/other/site-packages/nvidia"),
    }
    ov = OverlayTree(RealTree(), root, entries)
    # In the plan, torch is real, so $ORIGIN/../../nvidia stays inside the planned tree.
    got = resolve(ov, f"{root}/sp/torch/lib/../../nvidia/lib/libn.so")
    assert got == str(store / "store/other/site-packages/nvidia/lib/libn.so")
    assert is_dir(ov, f"{root}/sp/torch/lib")
    assert is_file(ov, f"{root}/sp/torch/lib/libt.so")
    assert not is_file(ov, f"{root}/sp/absent")
    assert ov.listdir(f"{root}/sp") == ["nvidia", "torch"]
    # Write the same tree for real and compare every resolution.
    for path, e in sorted(entries.items()):
        if e.kind == "dir":
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(str(e.target), path)
    for probe in ["sp/torch/lib/libt.so", "sp/nvidia/lib/libn.so", "sp/torch/lib/../../nvidia/lib", "sp/x"]:
        p = f"{root}/{probe}"
        assert resolve(ov, p) == resolve(RealTree(), p)


# ------------------------------------------------------------------ errno as the kernel gives it
#
# lookup() is the one resolver: each case is opened for real (open(2) with O_RDONLY) and the
# errno, or the physical path of the opened file, must be what lookup() says.


def _chain(d: Path, name: str, n: int, target: str) -> None:
    """d/name -> name.1 -> ... -> name.(n-1) -> target: n symlinks."""
    links = [name] + [f"{name}.{i}" for i in range(1, n)]
    for a, b in zip(links, [*links[1:], target]):
        os.symlink(b, d / a)


def build_maze(top: Path) -> list[str]:
    """A tree with every way a path walk can fail; returns the paths to try (relative)."""
    (top / "real").mkdir()
    (top / "real/lib.so").write_text("x")
    (top / "file").write_text("f")
    for n in (39, 40, 41, 45):
        d = top / f"chain{n}"
        d.mkdir()
        _chain(d, "lib.so", n, "../real/lib.so")
    os.symlink("loop2", top / "loop1")
    os.symlink("loop1", top / "loop2")
    os.symlink("missing", top / "dangling")
    os.symlink("file/x", top / "through-file")
    os.symlink("a" * 300 + "/x", top / "long-target")
    # 30 directory links to real/, then 10 or 11 more links to the file inside it: the
    # walk counts them all (40 opens, 41 does not).
    _chain(top, "dchain", 30, "real")
    _chain(top / "real", "l10", 10, "lib.so")
    _chain(top / "real", "l11", 11, "lib.so")
    os.symlink("real", top / "rl")
    return ["real/lib.so", "chain39/lib.so", "chain40/lib.so", "chain41/lib.so", "chain45/lib.so", "loop1",
            "loop1/x", "dangling", "file/x", "file/", "file/.", "through-file", "real/", "real/.",
            "a" * 300, "long-target", "dchain/lib.so", "dchain/l10", "dchain/l11", "real/l11", "rl/../file",
            "dchain/../file", "missing/../file", "real/lib.so/..", "nope/x"]


def kernel_open(path: str) -> tuple[str | None, int]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        return None, e.errno
    try:
        return os.readlink(f"/proc/self/fd/{fd}"), 0
    finally:
        os.close(fd)


@pytest.mark.parametrize("cached", [False, True], ids=["walk", "cached"])
def test_lookup_gives_the_kernels_errno(tmp_path: Path, cached: bool) -> None:
    rels = build_maze(tmp_path)
    tree = CachedTree(RealTree()) if cached else RealTree()
    expected = {rel: kernel_open(str(tmp_path / rel)) for rel in rels}
    # The control: the maze has every errno the walk can give, and both sides of the limit.
    assert {e for _, e in expected.values()} == {0, errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG}
    assert expected["chain40/lib.so"][1] == 0 and expected["chain41/lib.so"][1] == errno.ELOOP
    assert expected["dchain/l10"][1] == 0 and expected["dchain/l11"][1] == errno.ELOOP
    # Both orders: what a cached tree remembers from one walk must not change another's answer.
    for rel in rels + rels[::-1]:
        found = lookup(tree, str(tmp_path / rel), read=True)
        assert (found.path, found.error) == expected[rel], rel
        assert resolve(tree, str(tmp_path / rel)) == expected[rel][0], rel


def test_lookup_counts_links_like_the_kernel(tmp_path: Path) -> None:
    build_maze(tmp_path)
    assert lookup(RealTree(), str(tmp_path / "chain40/lib.so")).links == 40
    assert lookup(RealTree(), str(tmp_path / "dchain/l10")).links == 40
    assert lookup(RealTree(), str(tmp_path / "real/lib.so")).links == 0


PROBE_AS_USER = r"""
import json, os, sys
out = []
for p in sys.argv[1:]:
    try:
        fd = os.open(p, os.O_RDONLY)
    except OSError as e:
        out.append([None, e.errno])
        continue
    out.append([os.readlink(f"/proc/self/fd/{fd}"), 0])
    os.close(fd)
print(json.dumps(out))
"""


def test_lookup_gives_eacces_as_the_kernel_does_for_another_user(world_dir: Path) -> None:
    rels = build_maze(world_dir)
    for mode, name in ((0o700, "private"), (0o711, "searchonly"), (0o644, "readonly-dir")):
        d = world_dir / name
        d.mkdir()
        (d / "lib.so").write_text("x")
        (d / "lib.so").chmod(0o644)
        d.chmod(mode)
    (world_dir / "secret.so").write_text("s")
    (world_dir / "secret.so").chmod(0o600)
    (world_dir / "mine.so").write_text("m")
    os.chown(world_dir / "mine.so", NOBODY, NOBODY)
    (world_dir / "mine.so").chmod(0o044)  # the owner's own bits deny, though others may read
    os.symlink("private/lib.so", world_dir / "into-private")
    rels += ["private/lib.so", "private", "searchonly/lib.so", "searchonly", "readonly-dir/lib.so", "secret.so",
             "mine.so", "into-private", "private/../file"]
    paths = [str(world_dir / rel) for rel in rels]
    r = as_nobody(sys.executable, "-c", PROBE_AS_USER, *paths)
    assert r.returncode == 0, r.stderr
    expected = dict(zip(rels, (tuple(x) for x in json.loads(r.stdout))))
    assert sum(1 for _, e in expected.values() if e == errno.EACCES) >= 6  # the control
    nobody = Credentials(NOBODY, frozenset({NOBODY}))
    for tree in (RealTree(), CachedTree(RealTree())):
        for rel in rels:
            found = lookup(tree, str(world_dir / rel), cred=nobody, read=True)
            assert (found.path, found.error) == expected[rel], rel
    # Without credentials (root) the same walk gets through.
    assert lookup(RealTree(), str(world_dir / "private/lib.so"), read=True).error == 0


def test_remembered_prefixes_keep_trailing_slashes_apart(tmp_path: Path) -> None:
    """A walk of "file//x" must not leave "file/" remembered as the file (open gives ENOTDIR)."""
    (tmp_path / "file").write_text("f")
    tree = CachedTree(RealTree())
    assert lookup(tree, f"{tmp_path}/file//x").error == errno.ENOTDIR
    assert lookup(tree, f"{tmp_path}/file/").error == errno.ENOTDIR
    assert lookup(tree, f"{tmp_path}//file").path == f"{tmp_path}/file"
