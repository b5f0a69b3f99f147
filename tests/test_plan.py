"""The planner's merge rules, on small real directory trees (no binaries here; the native
climbing rules are tested with gcc-built libraries in test_plan_native.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpathfix.errors import PlanError
from rpathfix.fstree import RealTree
from rpathfix.plan import climb, make_plan, plan_to_json
from rpathfix.roots import load_root

PKGUTIL = "__path__ = __import__('pkgutil').extend_path(__path__, __name__)\n"
PKG_RESOURCES = "__import__('pkg_resources').declare_namespace(__name__)\n"


def make_root(base: Path, dist: str, version: str, files: dict[str, str], *, bare: bool = False) -> Path:
    root = base / dist
    site = root if bare else root / "site-packages"
    for rel, text in files.items():
        p = site / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    di = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    di.mkdir(parents=True, exist_ok=True)
    (di / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    return root


def plan_of(*roots: Path, prefer: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    tree = RealTree()
    return make_plan(tree, [load_root(tree, str(r)) for r in roots], precedence=prefer)


def by_path(plan) -> dict[str, object]:  # type: ignore[no-untyped-def]
    return {e.venv_path: e for e in plan.entries if e.kind == "site-packages"}


def test_single_distribution_directory_is_one_link(tmp_path: Path) -> None:
    r = make_root(tmp_path, "alpha", "1.0", {"alpha/__init__.py": "", "alpha/sub/m.py": "x = 1\n"})
    entries = by_path(plan_of(r))
    assert set(entries) == {"alpha", "alpha-1.0.dist-info"}
    assert entries["alpha"].target == str(r / "site-packages/alpha")  # type: ignore[attr-defined]


def test_shared_namespace_is_real_and_merged(tmp_path: Path) -> None:
    """The seed issue: empty and pkgutil nvidia/__init__.py are namespace markers, not conflicts."""
    a = make_root(tmp_path, "nvidia-cublas-cu12", "12.1", {"nvidia/__init__.py": "", "nvidia/cublas/__init__.py": ""})
    b = make_root(tmp_path, "nvidia-nvimgcodec-cu12", "0.5",
                  {"nvidia/__init__.py": PKGUTIL, "nvidia/nvimgcodec/__init__.py": "X = 1\n"})
    plan = plan_of(a, b)
    entries = by_path(plan)
    assert "nvidia" not in entries
    assert entries["nvidia/cublas"].dist == "nvidia-cublas-cu12"  # type: ignore[attr-defined]
    assert entries["nvidia/nvimgcodec"].dist == "nvidia-nvimgcodec-cu12"  # type: ignore[attr-defined]
    # The pkgutil shim is preferred over the empty marker, whatever the argument order.
    assert entries["nvidia/__init__.py"].dist == "nvidia-nvimgcodec-cu12"  # type: ignore[attr-defined]
    assert by_path(plan_of(b, a))["nvidia/__init__.py"].dist == "nvidia-nvimgcodec-cu12"  # type: ignore[attr-defined]
    assert [d.venv_path for d in plan.real_dirs] == ["nvidia"]


@pytest.mark.parametrize("other", ["", "# comment only\n", '"""docstring"""\n', PKGUTIL, PKG_RESOURCES])
def test_namespace_marker_kinds(tmp_path: Path, other: str) -> None:
    a = make_root(tmp_path, "one", "1", {"ns/__init__.py": PKGUTIL + "\n", "ns/a/x.py": ""})
    b = make_root(tmp_path, "two", "1", {"ns/__init__.py": other, "ns/b/y.py": ""})
    assert "ns/__init__.py" in by_path(plan_of(a, b))


def test_real_conflict_names_both_distributions(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"shared/util.py": "A = 1\n"})
    b = make_root(tmp_path, "two", "1", {"shared/util.py": "A = 2\n"})
    with pytest.raises(PlanError) as e:
        plan_of(a, b)
    assert "one" in str(e.value) and "two" in str(e.value) and "--prefer" in str(e.value)
    # A non-marker __init__.py is a conflict too.
    c = make_root(tmp_path / "c", "three", "1", {"shared/__init__.py": "import os\n"})
    d = make_root(tmp_path / "d", "four", "1", {"shared/__init__.py": ""})
    with pytest.raises(PlanError):
        plan_of(c, d)


def test_precedence_picks_the_winner(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"shared/util.py": "A = 1\n"})
    b = make_root(tmp_path, "two", "1", {"shared/util.py": "A = 2\n"})
    plan = plan_of(a, b, prefer=("two",))
    assert by_path(plan)["shared/util.py"].dist == "two"  # type: ignore[attr-defined]
    assert any("precedence" in n for n in plan.notes)


def test_identical_files_are_one_entry(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"shared/LICENSE": "same\n", "shared/a.py": ""})
    b = make_root(tmp_path, "two", "1", {"shared/LICENSE": "same\n", "shared/b.py": ""})
    entries = by_path(plan_of(a, b))
    assert entries["shared/LICENSE"].dist == "one"  # type: ignore[attr-defined]


def test_two_versions_of_one_distribution(tmp_path: Path) -> None:
    a = make_root(tmp_path / "a", "torch", "2.13.0", {"torch/__init__.py": ""})
    b = make_root(tmp_path / "b", "torch", "2.14.1", {"torch/__init__.py": ""})
    with pytest.raises(PlanError, match="two versions of torch"):
        plan_of(a, b)


def test_file_versus_directory(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"thing": "file\n"})
    b = make_root(tmp_path, "two", "1", {"thing/x.py": ""})
    with pytest.raises(PlanError, match="is a file in one"):
        plan_of(a, b)


def test_pth_at_top_and_bytecode_follows_the_winning_source(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"hook.pth": "import os\n", "ns/__init__.py": "",
                                          "ns/__pycache__/__init__.cpython-311.pyc": "pyc-of-empty",
                                          "ns/a.py": "", "ns/__pycache__/a.cpython-311.pyc": "pyc-a"})
    b = make_root(tmp_path, "two", "1", {"ns/__init__.py": PKGUTIL,
                                          "ns/__pycache__/__init__.cpython-311.pyc": "pyc-of-shim"})
    entries = by_path(plan_of(a, b))
    assert entries["hook.pth"].dist == "one"  # type: ignore[attr-defined]
    assert entries["ns/__init__.py"].dist == "two"  # type: ignore[attr-defined]
    assert entries["ns/__pycache__/__init__.cpython-311.pyc"].dist == "two"  # type: ignore[attr-defined]
    assert entries["ns/__pycache__/a.cpython-311.pyc"].dist == "one"  # type: ignore[attr-defined]


def test_bin_include_data_kinds_and_json_order(tmp_path: Path) -> None:
    a = make_root(tmp_path, "one", "1", {"one/__init__.py": ""})
    (a / "bin").mkdir()
    (a / "bin/one-cli").write_text("#!/bin/sh\n")
    (a / "include/one").mkdir(parents=True)
    (a / "include/one/one.h").write_text("")
    (a / "data/share").mkdir(parents=True)
    (a / "data/share/x.txt").write_text("")
    doc = plan_to_json(plan_of(a))
    kinds = [(e["kind"], e["venv_path"]) for e in doc["entries"]]  # type: ignore[index,union-attr]
    assert kinds == sorted(kinds, key=lambda k: (["site-packages", "bin", "include", "data"].index(k[0]), k[1]))
    assert ("bin", "one-cli") in kinds and ("include", "one") in kinds and ("data", "share") in kinds
    assert doc["schema"] == "rpathfix.plan/1"


def test_bare_site_packages_root(tmp_path: Path) -> None:
    r = make_root(tmp_path, "bare", "3.0", {"bare/__init__.py": ""}, bare=True)
    entries = by_path(plan_of(r))
    assert entries["bare"].dist == "bare"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("lib_dir", "rel", "expect"),
    [
        ("torch/lib", "../../nvidia/cu13/lib", ("nvidia/cu13/lib", 0)),
        ("torch/lib", "", ("torch/lib", 2)),
        ("torch/lib", ".", ("torch/lib", 2)),
        ("pkg", "../pkg.libs", ("pkg.libs", 0)),
        ("a/b/c", "../d", ("a/b/d", 2)),
        ("a", "../../x", None),
    ],
)
def test_climb(lib_dir: str, rel: str, expect: tuple[str, int] | None) -> None:
    assert climb(lib_dir, rel) == expect


def test_root_or_site_packages_has_one_answer(tmp_path: Path) -> None:
    """A directory holding a .dist-info is a site-packages directory, even with a child
    named site-packages: the planner (load_root) and verify (layout_of) agree."""
    from rpathfix.environment import layout_of

    site = make_root(tmp_path, "gamma", "1.0", {"gamma/__init__.py": "", "site-packages/README": "data\n"}, bare=True)
    root = make_root(tmp_path, "delta", "2.0", {"delta/__init__.py": ""})
    tree = RealTree()
    assert load_root(tree, str(site)).dirs == (("site-packages", str(site)),)
    assert load_root(tree, str(root)).dir_for("site-packages") == str(root / "site-packages")
    assert layout_of(tree, [str(site), str(root)]).site_dirs == [str(site), str(root / "site-packages")]
