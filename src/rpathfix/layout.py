"""Check a venv made of per-file links (`rpathfix layout`): the Bazel rules' links layout.

The Bazel rule `rpathfix_venv` (layout "links") never writes a venv: it asks Bazel for a
runfiles tree in which every directory is real and every file is a symlink to a file of a
distribution root (or to the interpreter, or to a generated pyvenv.cfg). The rule merges
the roots at analysis time and hands this module the result, a manifest (rpathfix.layout/1,
docs/schemas.md): venv path -> source file, one line per field.

check_layout() then, without writing anything:
1. derives the layout itself from the roots with rpathfix's own planner (plan.make_plan,
   the same precedence and namespace rules as `rpathfix plan` and `rpathfix venv`), each
   entry expanded to one link per file, and refuses every path on which the rule and
   rpathfix disagree ("rules and rpathfix disagree about <path>");
2. refuses the files that cannot work as links: those the planner must copy (an ELF
   executable whose $ORIGIN climbs into another wheel: the kernel takes a program's
   origin from its resolved path; a Mach-O file whose @loader_path reaches another
   wheel: dyld uses the real path); `layout = "tree"` writes them as real files;
3. describes the manifest as a venv.VenvTree (real directories, one absolute link per
   file) and runs the check `rpathfix venv` runs before writing (build_venv.check_plan
   over venv.planned_view), so a module that would not load fails the build naming the
   missing library.

The report written on success is deterministic (counts and venv-relative paths only):
Bazel caches it and the launcher's runfiles hold it, so no binary builds over a failed check.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

from rpathfix.errors import UsageError
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import CachedTree
    from rpathfix.plan import Plan
    from rpathfix.roots import Root
    from rpathfix.venv import VenvTree

SCHEMA = "rpathfix.layout/1"
# Each record of a manifest: its keyword and how many values follow it.
_ARITY = {"--name": 1, "--python-version": 1, "--prefer": 1, "--root": 1, "--file": 2, "--extra": 2,
          "--shadowed": 1, "--complete": 0, "--script": 3}


class Manifest(NamedTuple):
    """What the rule will create: venv path -> source (exec-root-relative paths)."""

    name: str
    python_version: str  # "3.11"
    roots: list[str]
    prefer: list[str]
    files: dict[str, str]  # venv path -> file of a root
    extras: dict[str, str]  # venv path -> any other file (bin/python, pyvenv.cfg)
    # The roots' files that the rule knows and does not link (they lost a conflict): with
    # `files`, every file of the roots the rule was given (record --complete says so, also
    # when there is none). None: the rule gave no such list.
    shadowed: list[str] | None = None
    # venv path -> file to write: a launcher for the Python script files[venv path]
    scripts: dict[str, str] | None = None


def parse_manifest(text: str, where: str) -> Manifest:
    """A manifest from its text (one field per line); UsageError naming `where` when malformed."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != SCHEMA:
        raise UsageError(f"{where}: not an {SCHEMA} manifest (first line {lines[0] if lines else ''!r}); "
                         "rebuild it with the rules of this rpathfix")
    name, version = "", ""
    roots: list[str] = []
    prefer: list[str] = []
    files: dict[str, str] = {}
    extras: dict[str, str] = {}
    shadowed: list[str] | None = None
    scripts: dict[str, str] = {}
    i = 1
    while i < len(lines):
        key = lines[i]
        n = _ARITY.get(key)
        if n is None or i + n >= len(lines):
            raise UsageError(f"{where}: line {i + 1}: bad record {key!r}")
        vals = lines[i + 1:i + 1 + n]
        i += 1 + n
        if key == "--name":
            name = vals[0]
        elif key == "--python-version":
            version = vals[0]
        elif key == "--prefer":
            prefer.append(vals[0])
        elif key == "--root":
            roots.append(vals[0].rstrip("/") or ".")
        elif key == "--shadowed":
            shadowed = (shadowed or []) + [vals[0]]
        elif key == "--complete":
            shadowed = shadowed or []
        else:
            rel = posixpath.normpath(vals[0])
            if rel.startswith(("/", "../")) or rel in (".", ".."):
                raise UsageError(f"{where}: bad venv path {vals[0]!r}")
            target = extras if key == "--extra" else files
            if rel in files or rel in extras:
                raise UsageError(f"{where}: {rel} is given twice")
            target[rel] = vals[1]
            if key == "--script":
                if not rel.startswith("bin/") or rel.count("/") != 1:
                    raise UsageError(f"{where}: a script's venv path must be bin/NAME, got {vals[0]!r}")
                scripts[rel] = vals[2]
    parts = version.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise UsageError(f"{where}: python version {version!r}: expected X.Y")
    if not roots:
        raise UsageError(f"{where}: no distribution root")
    return Manifest(name, version, roots, prefer, files, extras, shadowed, scripts)


def _expand(plan: Plan, roots: Sequence[Root], tree: CachedTree, version: str) -> dict[str, tuple[str, str]]:
    """rpathfix's own layout: venv path -> (source file, why), one link per file (every
    directory of the venv real), as the plan places the roots' files."""
    from rpathfix.fstree import scan
    from rpathfix.venv import interpreter_names, kind_prefixes

    prefixes = kind_prefixes(version)
    reserved = interpreter_names(version)
    out: dict[str, tuple[str, str]] = {}

    def put(rel: str, src: str, why: str) -> None:
        prev = out.get(rel)
        if prev is not None:
            raise UsageError(f"{rel}: placed twice, by {prev[1]} and {why}")
        out[rel] = (src, why)

    def walk(rel: str, src: str, why: str, depth: int = 0) -> None:
        node = tree.lstat(src)
        if node is not None and node.kind == "link":
            from rpathfix.fstree import resolve

            real = resolve(tree, src)
            node = tree.lstat(real) if real is not None else None
        if node is None or node.kind != "dir":
            put(rel, src, why)
            return
        if depth > 64:
            raise UsageError(f"{src}: directories nested too deep (a symlink loop?)")
        for name, _ in scan(tree, src):
            walk(f"{rel}/{name}" if rel else name, f"{src}/{name}", why, depth + 1)

    for e in plan.entries:
        if e.kind == "bin" and e.venv_path in reserved:
            continue  # the venv's own interpreter wins, as in `rpathfix venv`
        prefix = prefixes[e.kind]
        walk(posixpath.join(prefix, e.venv_path) if prefix else e.venv_path, e.target, f"{e.kind}:{e.venv_path} [{e.dist}]")
    return out


class LayoutResult(NamedTuple):
    """The outcome: errors (each one line, or a whole report) and warnings; the report text
    written on success."""

    errors: list[str]
    warnings: list[str]
    report: str


def check_layout(manifest: Manifest, *, cwd: str | None = None, assume_loaded: Sequence[str] = ()) -> LayoutResult:
    """Derive, compare and check the layout of `manifest` (module docstring). Paths in the
    manifest are relative to `cwd` (the exec root of a Bazel action)."""
    from rpathfix.build_venv import check_plan, loader_options
    from rpathfix.environment import file_digest
    from rpathfix.fstree import CachedTree, RealTree
    from rpathfix.names import canonicalize_name
    from rpathfix.plan import make_plan, namespace_marker
    from rpathfix.roots import load_root

    base = os.path.abspath(cwd or os.getcwd())

    def absolute(p: str) -> str:
        return posixpath.normpath(posixpath.join(base, p))

    tree = CachedTree(RealTree())
    roots = [load_root(tree, absolute(r)) for r in manifest.roots]
    plan = make_plan(tree, roots, precedence=[canonicalize_name(p) for p in manifest.prefer])
    derived = _expand(plan, roots, tree, manifest.python_version)
    unseen = 0
    if manifest.shadowed is not None:
        # A root may hold more than the rule was given (a file name Bazel labels cannot hold,
        # seen when the action runs unsandboxed): what the rule cannot link is not the venv's.
        known = {absolute(p) for p in manifest.shadowed}
        known.update(absolute(p) for p in manifest.files.values())
        for rel in [r for r, (src, _) in derived.items() if src not in known]:
            del derived[rel]
            unseen += 1

    errors: list[str] = []
    # 1. One source of truth: the rule's merge must be rpathfix's.
    given = {rel: absolute(src) for rel, src in manifest.files.items()}
    for rel in sorted(set(given) | set(derived)):
        mine = derived.get(rel)
        theirs = given.get(rel)
        if mine is not None and theirs is not None and mine[0] == theirs:
            continue
        if mine is None:
            errors.append(f"rules and rpathfix disagree about {rel}: the rule links it to {manifest.files[rel]}, "
                          "rpathfix places nothing there")
        elif theirs is None:
            errors.append(f"rules and rpathfix disagree about {rel}: rpathfix places "
                          f"{posixpath.relpath(mine[0], base)} ({mine[1]}), the rule links nothing there "
                          "(a file name Bazel labels cannot hold?)")
        elif file_digest(tree, mine[0]) == file_digest(tree, theirs):
            continue  # the same bytes: either file is the same venv
        elif posixpath.basename(rel) == "__init__.py" and namespace_marker(tree, mine[0]) \
                and namespace_marker(tree, theirs):
            continue  # both only mark a namespace package: either serves the merged directory
        else:
            errors.append(f"rules and rpathfix disagree about {rel}: the rule links {manifest.files[rel]}, rpathfix "
                          f"picks {posixpath.relpath(mine[0], base)}; set `prefer` on the rpathfix_venv")
    for rel in sorted(manifest.extras):
        if rel in derived:
            errors.append(f"{rel}: the rule's own file hides {posixpath.relpath(derived[rel][0], base)} of a root")
    # 2. Files that cannot work as links.
    for e in plan.entries:
        if e.method == "copy":
            errors.append(f"{posixpath.relpath(e.target, base)}: cannot be a link in a runfiles venv "
                          f"({e.reason or 'its loader takes its origin from its real path'}); "
                          "use layout = \"tree\" on the rpathfix_venv")
    if errors:
        return LayoutResult(errors, [], "")

    # 3. The loader check `rpathfix venv` runs, over the layout described as a VenvTree.
    venv = describe_links(absolute(f"_rpathfix_layout/{_safe(manifest.name)}"), manifest, base)
    report = check_plan(tree, venv, plan, loader_options(venv, assume_loaded=assume_loaded))
    named = [(r.dist, p) for r, p in zip(roots, manifest.roots)]
    if report.errors:
        from rpathfix.verify import format_report

        return LayoutResult([format_report(report, roots=named, what="runfiles venv of " + manifest.name)], [], "")
    from rpathfix.verify import format_warnings

    warnings = format_warnings(report, named)
    if unseen:
        warnings.append(f"note: {unseen} file(s) of the roots are not inputs of the rule (names Bazel labels "
                        "cannot hold?) and are not in the venv")
    modules = sum(1 for f in report.environment.files if f.is_extension)
    # Only what the layout decides: warnings depend on the host (a GPU driver or none), and
    # go to stderr, so the report is the same bytes on every machine.
    text = (f"{SCHEMA} {manifest.name}: ok\n"
            f"{len(manifest.files)} files linked from {len(roots)} distribution roots, "
            f"{len(manifest.extras)} of the rule's own; {modules} extension modules load\n")
    return LayoutResult([], warnings, text)


def script_launcher(path: str) -> bytes:
    """The launcher for the Python script at `path`: its body (without its `#!` line) under
    launchers.RUNFILES_HEADER. The same bytes on every host."""
    from rpathfix.launchers import RUNFILES_HEADER, python_launcher

    try:
        with open(path, "rb") as f:
            body = f.read()
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror}") from None
    text = python_launcher(body.decode("utf-8", "surrogateescape"), RUNFILES_HEADER)
    return text.encode("utf-8", "surrogateescape")


def write_launchers(manifest: Manifest, base: str) -> None:
    """Write each script's launcher (mode 0755) where the manifest says."""
    from rpathfix import fileio

    for rel, out in sorted((manifest.scripts or {}).items()):
        data = script_launcher(posixpath.join(base, manifest.files[rel]))
        fileio.write_bytes(posixpath.join(base, out), data, mode=0o755, durable=False)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).strip("._") or "venv"


def describe_links(final: str, manifest: Manifest, base: str) -> VenvTree:
    """The manifest as the venv Bazel makes of it: every directory real, every file a link
    (absolute text, as Bazel writes runfiles symlinks) to its source."""
    from rpathfix.venv import VenvNode, VenvTree, kind_prefixes

    prefixes = kind_prefixes(manifest.python_version)
    venv = VenvTree(final, prefixes, "symlink")
    for rel in sorted(set(manifest.files) | set(manifest.extras)):
        src = manifest.files.get(rel) or manifest.extras[rel]
        if manifest.scripts and rel in manifest.scripts:
            data = script_launcher(posixpath.join(base, src))
            venv.add(rel, VenvNode("data", data=data, mode=0o755), rel)
            continue
        venv.add(rel, VenvNode("link", link=posixpath.normpath(posixpath.join(base, src))), rel)
    venv.add(prefixes["site-packages"], VenvNode("dir"), "site-packages")
    return venv
