"""fstree.resolve must agree with the kernel (os.path.realpath) on real trees, and the
overlay must answer for a planned tree exactly as the written tree would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rpathfix.fstree import CachedTree, OverlayTree, Planned, RealTree, is_dir, is_file, resolve


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
