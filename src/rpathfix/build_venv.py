"""The `venv` job: plan, check the plan with the loader model, write, check again.

The check before writing runs verify over an OverlayTree of the planned venv, so a
layout in which an extension module would not load is refused before anything is
written; the check after writing runs the same verify on the real tree.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rpathfix.entrypoints import root_entry_points
from rpathfix.errors import RpathfixError
from rpathfix.fstree import CachedTree, FileTree, OverlayTree, Planned, RealTree
from rpathfix.names import canonicalize_name
from rpathfix.plan import Plan, make_plan
from rpathfix.roots import Root, load_root
from rpathfix.verify import LoaderOptions, Report, format_report, verify


@dataclass
class BuildResult:
    changed: bool = False
    entries: int = 0
    real_dirs: int = 0
    refused: str | None = None
    warnings: list[str] = field(default_factory=list)


def planned_tree(out: str, plan: Plan, kind_dirs: dict[str, str], python: str,
                 entry_points: Sequence[tuple[str, str, str]], base: FileTree | None = None) -> OverlayTree:
    """The venv as it will be written, for the loader model to check before writing."""
    entries: dict[str, Planned] = {posixpath.join(out, "pyvenv.cfg"): Planned("file", None, 0o644)}
    for name in ("python", "python3"):
        entries[posixpath.join(out, "bin", name)] = Planned("link", python)
    for e in plan.entries:
        path = posixpath.join(kind_dirs[e.kind], e.venv_path)
        entries[path] = Planned("file", e.target, 0o755) if e.method == "copy" else Planned("link", e.target)
    for _group, name, _value in entry_points:
        entries[posixpath.join(out, "bin", name)] = Planned("file", None, 0o755)
    return OverlayTree(base if base is not None else RealTree(), out, entries)


def scripts_without_bin(tree: FileTree, roots: Sequence[Root]) -> list[tuple[str, str, str]]:
    """Entry points of the roots that came without launchers of their own."""
    out: list[tuple[str, str, str]] = []
    for r in roots:
        site = r.dir_for("site-packages")
        if r.dir_for("bin") is None and site is not None:
            out.extend(root_entry_points(tree, site))
    return sorted(set(out), key=lambda t: (t[1], t[0], t[2]))


def build_venv(out: str, root_paths: Sequence[str], *, python: str, link_mode: str = "symlink",
               prefer: Sequence[str] = (), verify_layout: bool = True,
               ld_library_path: str | None = None) -> BuildResult:
    from rpathfix.venv import check_destination, python_info, write_venv
    from rpathfix.venv import kind_dirs as venv_kind_dirs

    check_destination(out)
    tree = CachedTree(RealTree())  # shared by the plan and both checks: the roots are walked once
    roots = [load_root(tree, r) for r in root_paths]
    plan = make_plan(tree, roots, precedence=[canonicalize_name(p) for p in prefer])
    info = python_info(python)
    scripts = scripts_without_bin(tree, roots)
    dirs = venv_kind_dirs(out, info)
    options = LoaderOptions(interpreter=posixpath.join(out, "bin", "python"), ld_library_path=ld_library_path)
    result = BuildResult(entries=len(plan.entries), real_dirs=len(plan.real_dirs))
    result.warnings += [f"note: {n}" for n in plan.notes]
    if verify_layout:
        report = verify(planned_tree(out, plan, dirs, info.base_executable, scripts, tree), [out], options)
        if report.errors:
            result.refused = format_report(report)
            return result
        result.warnings += _warning_lines(report)
    result.changed = write_venv(Path(out), list(plan.entries), python=python, link_mode=link_mode,
                                entry_points=scripts)
    if verify_layout:
        tree.forget(out)
        after = verify(tree, [out], options)
        if after.errors:
            raise RpathfixError(f"{out}: the written venv fails verification although its plan passed "
                                f"(please report this):\n{format_report(after)}")
    return result


def _warning_lines(report: Report) -> list[str]:
    return [f"warning [{w.code}] {w.file}: {w.message}" for w in report.warnings]
