"""The `venv` job: plan, check the plan with the loader model, write.

The check runs the loader model over an OverlayTree of the planned venv: the same
simulation `rpathfix verify OUT` runs on the written tree, over the same paths, so a
layout in which an extension module would not load is refused before anything is in
place. The plan names every native file it places, so the check loads those files
without walking the planned tree again.

Nothing is written before the check passes; then the venv is built beside OUT and
renamed into place, so a refused plan, or a failed write, leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import sys
from collections.abc import Callable, Sequence

from rpathfix.entrypoints import root_entry_points
from rpathfix.environment import environment_of
from rpathfix.fstree import CachedTree, FileTree, OverlayTree, Planned, RealTree
from rpathfix.names import canonicalize_name
from rpathfix.plan import Plan, make_plan
from rpathfix.roots import Root, load_root
from rpathfix.venv import write_venv
from rpathfix.verify import LoaderOptions, Report, check_environment, format_report


class BuildResult:
    """What `rpathfix venv` did: whether OUT changed, its size, or why it was refused."""

    __slots__ = ("changed", "entries", "real_dirs", "refused", "warnings")

    def __init__(self, entries: int = 0, real_dirs: int = 0) -> None:
        self.changed = False
        self.entries = entries
        self.real_dirs = real_dirs
        self.refused: str | None = None
        self.warnings: list[str] = []


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


def check_plan(tree: CachedTree, out: str, plan: Plan, kind_dirs: dict[str, str], python: str,
               entry_points: Sequence[tuple[str, str, str]], options: LoaderOptions) -> Report:
    """Import every extension module the plan places, in the planned venv, with the loader
    model: what decides whether the venv works. (`rpathfix verify OUT` also loads every
    other library, for its warnings.)"""
    view = CachedTree(planned_tree(out, plan, kind_dirs, python, entry_points, tree), memo=tree.memo)
    site = kind_dirs["site-packages"]
    env = environment_of(view, site, options.interpreter, [f"{site}/{b.rel}" for b in plan.binaries])
    return check_environment(view, env, options, modules_only=True)


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
    from rpathfix.loader_glibc import start_hwcap_probe
    from rpathfix.venv import check_destination, python_info
    from rpathfix.venv import kind_dirs as venv_kind_dirs

    check_destination(out)
    # Two questions answered by other programs, started now and answered while the plan is
    # made: `ld.so --help` (for the check), and the venv's interpreter when it is not this one.
    if verify_layout:
        start_hwcap_probe()
    probe = _Background(lambda: python_info(python)) if os.path.abspath(python) != sys.executable else None
    tree = CachedTree(RealTree())  # shared by the plan and the check: each root file is read once
    roots = [load_root(tree, r) for r in root_paths]
    plan = make_plan(tree, roots, precedence=[canonicalize_name(p) for p in prefer])
    if probe is not None:
        probe.wait()
    info = python_info(python)
    scripts = scripts_without_bin(tree, roots)
    result = BuildResult(entries=len(plan.entries), real_dirs=len(plan.real_dirs))
    result.warnings += [f"note: {n}" for n in plan.notes]
    if verify_layout:
        options = LoaderOptions(interpreter=posixpath.join(out, "bin", "python"), ld_library_path=ld_library_path)
        report = check_plan(tree, out, plan, venv_kind_dirs(out, info), info.base_executable, scripts, options)
        if report.errors:
            result.refused = format_report(report)
            return result
        result.warnings += _warning_lines(report)
    result.changed = write_venv(out, list(plan.entries), python=python, link_mode=link_mode, entry_points=scripts)
    return result


class _Background:
    """Run one function in a thread; wait() joins it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        import threading

        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="rpathfix-writer", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], object]) -> None:
        try:
            fn()
        except BaseException as e:  # handed to the caller by wait()
            self._error = e

    def wait(self, *, reraise: bool = True) -> None:
        self._thread.join()
        if reraise and self._error is not None:
            error, self._error = self._error, None
            raise error


def _warning_lines(report: Report) -> list[str]:
    return [f"warning [{w.code}] {w.file}: {w.message}" for w in report.warnings]
