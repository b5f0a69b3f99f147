"""The `venv` job: plan, describe the venv, check that description with the loader model, write it.

The check runs the loader model over the planned view of the very VenvTree the writer
will carry out (venv.planned_view): links with their texts, hard links and copies as real
files, in every link mode. It is the simulation `rpathfix verify OUT` runs on the written
tree, over the same paths, so a layout in which an extension module would not load is
refused before anything is written. The plan names every native file it places, so the
check loads those files without walking the planned tree.

Check, then write, in one process and in that order: nothing to stop or reap when the
user presses Ctrl-C or a step fails, and a refused plan leaves nothing behind.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from rpathfix.entrypoints import root_entry_points
from rpathfix.errors import UsageError
from rpathfix.fstree import CachedTree, RealTree, resolve
from rpathfix.model import ElfInfo
from rpathfix.names import canonicalize_name
from rpathfix.plan import Plan, make_plan
from rpathfix.roots import Root, load_root
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo
    from rpathfix.venv import VenvTree
    from rpathfix.verify import LoaderOptions, Report


class BuildResult:
    """What `rpathfix venv` did: whether OUT changed, its size, why it was refused, how many
    extension modules went unchecked (--no-verify), warnings (what matters, said once), and
    the planner's notes (said with -v)."""

    __slots__ = ("changed", "entries", "notes", "real_dirs", "refused", "repaired", "unchecked", "warnings")

    def __init__(self, entries: int = 0, real_dirs: int = 0) -> None:
        self.changed = False
        self.repaired: list[str] = []  # site-packages paths that got a patched copy (--repair)
        self.entries = entries
        self.real_dirs = real_dirs
        self.refused: str | None = None
        self.unchecked = 0
        self.warnings: list[str] = []
        self.notes: list[str] = []


def check_plan(tree: CachedTree, venv: VenvTree, plan: Plan, options: LoaderOptions) -> Report:
    """Import every extension module the plan places, in the planned view of `venv`, with
    the loader model: what decides whether the venv works; and load every library no module
    reaches (a plugin), warning when its own paths miss a library that another file of the
    venv provides (what --repair fixes). (`rpathfix verify OUT` also reports
    every other library's problems, as warnings.)"""
    from rpathfix.environment import environment_of
    from rpathfix.venv import planned_view
    from rpathfix.verify import check_environment

    view = CachedTree(planned_view(venv, tree), memo=tree.memo)
    site = venv.path_of("site-packages")
    paths = [venv.path_of(b.kind, b.rel) for b in plan.binaries]
    lost = next((p for p in paths if resolve(view, p) is None), None)
    if lost is not None:  # a check that cannot see a module must not pass it
        raise UsageError(f"{lost}: placed by the plan but not found in the venv about to be written; "
                         "was a root changed while rpathfix ran?")
    env = environment_of(view, site, options.interpreter, paths)
    return check_environment(view, env, options, modules_only=True, providers_reachable=True)


def scripts_without_bin(tree: FileTree, roots: Sequence[Root]) -> list[tuple[str, str, str]]:
    """Entry points of the roots that came without launchers of their own."""
    out: list[tuple[str, str, str]] = []
    for r in roots:
        site = r.dir_for("site-packages")
        if r.dir_for("bin") is None and site is not None:
            out.extend(root_entry_points(tree, site))
    return sorted(set(out), key=lambda t: (t[1], t[0], t[2]))


def loader_options(venv: VenvTree, *, ld_library_path: str | None = None,
                   assume_loaded: Sequence[str] = ()) -> LoaderOptions:
    """The simulated process of the check: the venv's own bin/python, LD_LIBRARY_PATH as
    given, and the libraries or distributions the user says a package loads itself."""
    from rpathfix.verify import LoaderOptions

    # The layout decides which files a load finds, not which symbols they define: the
    # binding checks are `rpathfix verify OUT`'s, and stay off the build's critical path.
    return LoaderOptions(interpreter=posixpath.join(venv.final, "bin", "python"), ld_library_path=ld_library_path,
                         assume_loaded=tuple(assume_loaded), symbols=False)


def _is_extension(info: BinaryInfo) -> bool:
    if isinstance(info, ElfInfo):
        return info.is_extension
    return any(s.is_extension for s in info.slices)


def repair_venv(tree: CachedTree, venv: VenvTree, plan: Plan, *, rpath_tag_default: str = "rpath") -> list[str]:
    """Give each library of the plan whose own search path misses a library another file of
    the venv provides a patched copy in `venv` with the entries that reach it (repair_plan's
    rules, the binary rewriter's patch); every other file stays as described. Returns the
    site-packages paths patched. Nothing is written: the copies are VenvNodes of kind
    "patched" that the check reads and write_tree streams."""
    import os

    from rpathfix import elf_write, macho_write
    from rpathfix.repair_plan import plan_venv_repairs
    from rpathfix.source import FileSource

    done = []
    for fr in plan_venv_repairs(tree, plan, rpath_tag_default=rpath_tag_default):
        planner = elf_write if fr.format == "elf" else macho_write
        with FileSource(fr.member) as src:
            patch = planner.plan_patch(src, fr.edits)
        mode = os.stat(fr.member).st_mode & 0o7777
        venv.patched_copy(posixpath.join(venv.kind_dirs["site-packages"], fr.path), fr.member, patch, mode)
        done.append(fr.path)
    return done


def _repair_command(out: str, root_paths: Sequence[str]) -> str:
    """`rpathfix venv --repair OUT ROOT...`: the fix a refusal names for files that cannot
    reach their providers."""
    import shlex

    from rpathfix.causes import compact_paths

    return " ".join(["rpathfix", "venv", "--repair", shlex.quote(out), *compact_paths(list(root_paths))])


def build_venv(out: str, root_paths: Sequence[str], *, python: str, link_mode: str = "symlink",
               prefer: Sequence[str] = (), verify_layout: bool = True, ld_library_path: str | None = None,
               assume_loaded: Sequence[str] = (), repair: bool = False) -> BuildResult:
    """Plan the roots into a venv at OUT, check it (unless verify_layout is False), write it.

    repair: libraries whose own search paths miss a provider in the venv get patched copies
    (repair_venv) before the check. A refused check (result.refused) writes nothing.
    UsageError/PlanError/FormatError for bad input, before anything is written.
    """
    from rpathfix.hwcaps import start_hwcap_probe
    from rpathfix.venv import check_destination, describe_venv, write_tree

    check_destination(out)  # a refusal comes before any work
    if verify_layout:
        start_hwcap_probe()  # `ld.so --help`, read by the check; it runs while the plan is made
    tree = CachedTree(RealTree())  # shared by the plan and the check: each root file is read once
    roots = [load_root(tree, r) for r in root_paths]
    plan = make_plan(tree, roots, precedence=[canonicalize_name(p) for p in prefer])
    scripts = scripts_without_bin(tree, roots)
    venv = describe_venv(out, plan.entries, python=python, link_mode=link_mode, entry_points=scripts)
    result = BuildResult(entries=len(plan.entries), real_dirs=len(plan.real_dirs))
    result.notes = list(plan.notes)
    if repair:
        result.repaired = repair_venv(tree, venv, plan)
    if verify_layout:
        from rpathfix.verify import format_report, format_warnings

        report = check_plan(tree, venv, plan, loader_options(venv, ld_library_path=ld_library_path,
                                                             assume_loaded=assume_loaded))
        # Worded and counted as `rpathfix verify` words them; fix commands name the roots.
        named = [(r.dist, p) for r, p in zip(roots, root_paths)]
        if report.errors:
            result.refused = format_report(report, roots=named, what="venv about to be written",
                                           venv_repair=None if repair else _repair_command(out, root_paths))
            return result
        result.warnings += format_warnings(report, named, None if repair else _repair_command(out, root_paths))
    else:
        result.unchecked = sum(1 for b in plan.binaries if _is_extension(b.info))
    written = write_tree(venv)
    result.changed = written.changed
    result.warnings += written.notes
    return result
