"""The `venv` job: plan, check the plan with the loader model, write.

The check runs the loader model over an OverlayTree of the planned venv: the same
simulation `rpathfix verify OUT` runs on the written tree, over the same paths, so a
layout in which an extension module would not load is refused before anything is in
place. The plan names every native file it places, so the check loads those files
without walking the planned tree again.

The check runs in a forked child on the other core (Linux), while this process builds
the venv beside OUT; the build is renamed into place only when the check passes, so a
refused plan, or a failed write, leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import sys
from collections.abc import Callable, Sequence

from rpathfix.entrypoints import root_entry_points
from rpathfix.fstree import CachedTree, OverlayTree, Planned, RealTree
from rpathfix.names import canonicalize_name
from rpathfix.plan import Plan, make_plan
from rpathfix.roots import Root, load_root
from rpathfix.static import TYPE_CHECKING
from rpathfix.venv import PendingVenv, write_venv

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.verify import LoaderOptions, Report


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
    # The loader model is imported here, not at the top: `venv` runs this in a forked child,
    # so the parent, which writes meanwhile, never pays for those imports.
    from rpathfix.environment import environment_of
    from rpathfix.verify import check_environment

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
    from rpathfix.hwcaps import host_hwcap_subdirs, start_hwcap_probe
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
    if not verify_layout:
        result.changed = write_venv(out, list(plan.entries), python=python, link_mode=link_mode,
                                    entry_points=scripts)
        return result
    host_hwcap_subdirs()  # ld.so --help is this process's child: read its answer before forking

    def check() -> Report:
        from rpathfix.verify import LoaderOptions

        # The layout decides which files a load finds, not which symbols they define: the
        # binding checks are `rpathfix verify OUT`'s, and stay off the build's critical path.
        options = LoaderOptions(interpreter=posixpath.join(out, "bin", "python"), ld_library_path=ld_library_path,
                                symbols=False)
        return check_plan(tree, out, plan, venv_kind_dirs(out, info), info.base_executable, scripts, options)

    child = _ChildCheck(check)
    pending: PendingVenv | None = None
    try:
        try:
            pending = PendingVenv(out, list(plan.entries), python=python, link_mode=link_mode, entry_points=scripts)
            pending.build()  # beside OUT, while the child checks
        except BaseException:
            child.abandon()
            raise
        result.refused, lines = child.result()
        if result.refused is None:
            result.warnings += lines
            result.changed = pending.commit()
    finally:
        if pending is not None:
            pending.discard()  # after a refusal, or a failure: nothing stays beside OUT
    return result


class _Background:
    """Run one function in a thread; wait() joins it and re-raises what it raised."""

    def __init__(self, fn: Callable[[], object]) -> None:
        import threading

        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="rpathfix-probe", daemon=True)
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


class _ChildCheck:
    """check_plan in a forked child, on the other core, while this process writes the venv
    beside OUT; its verdict decides whether that is renamed into place or removed.

    Only on Linux (fork without exec is unsafe with some macOS system libraries), and only
    while this process runs no other thread. If the child fails, the check runs here, so a
    bug surfaces as it would without the fork.
    """

    def __init__(self, fn: Callable[[], Report]) -> None:
        self._fn = fn
        self._pid = -1
        self._read = -1
        if sys.platform.startswith("linux") and _threads_alive() == 1:
            read_end, write_end = os.pipe()
            self._pid = os.fork()
            if self._pid == 0:
                os.close(read_end)
                code = 1
                try:
                    from rpathfix.verify import format_report

                    report = fn()
                    text = format_report(report) if report.errors else "\n".join(_warning_lines(report))
                    data = (("R" if report.errors else "W") + text).encode("utf-8", "surrogateescape")
                    while data:
                        data = data[os.write(write_end, data):]
                    code = 0
                finally:
                    os._exit(code)
            os.close(write_end)
            self._read = read_end

    def result(self) -> tuple[str | None, list[str]]:
        """(the refusal report, or None; the warning lines)."""
        if self._pid > 0:
            chunks = []
            while chunk := os.read(self._read, 1 << 16):
                chunks.append(chunk)
            data = b"".join(chunks).decode("utf-8", "surrogateescape")
            status = self._reap()
            if status == 0 and data:
                return (data[1:], []) if data[0] == "R" else (None, data[1:].splitlines())
        from rpathfix.verify import format_report

        report = self._fn()  # no child, or it failed: check here (an error is raised here)
        if report.errors:
            return format_report(report), []
        return None, _warning_lines(report)

    def abandon(self) -> None:
        """Stop the child (this process is failing or interrupted) and reap it."""
        if self._pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self._pid, 9)
            self._reap()

    def _reap(self) -> int:
        os.close(self._read)
        _, status = os.waitpid(self._pid, 0)
        self._pid = -1
        return status


def _threads_alive() -> int:
    """Threads alive in this process (forking with others running is unsafe); 1 when the
    threading module was never imported, without importing it."""
    threading = sys.modules.get("threading")
    return threading.active_count() if threading is not None else 1


def _warning_lines(report: Report) -> list[str]:
    return [f"warning [{w.code}] {w.file}: {w.message}" for w in report.warnings]
