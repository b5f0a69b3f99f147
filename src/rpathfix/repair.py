"""The `repair` job: make a wheel's libraries find its sibling wheels, and write it renamed.

For each WHEEL: plan the edits with the loader model (repair_plan.plan_repair, the wheels read
in place through a wheeltree.WheelTree), check the repaired layout (same module), and only when
every wheel passes (or --allow-unresolved), write each changed wheel into OUT under its new
name (wheelfile.rewrite_wheel): binaries patched (each patch planned and read back before
anything is written; a deflated member keeps its original compressed blocks where the patch
leaves them, rpathfix.deflate), METADATA given the missing requirements (--add-requires),
WHEEL and RECORD updated, every other member copied byte for byte. A wheel that needs nothing
is not written.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence

from rpathfix.errors import UsageError
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.model import BytePatch
    from rpathfix.repair_plan import FileRepair, RepairPlan
    from rpathfix.source import ByteSource
    from rpathfix.wheelfile import MemberEdit


class WheelOutcome(NamedTuple):
    """What `repair` did (or would do) with one wheel."""

    wheel: str  # the input wheel, as given
    plan: RepairPlan
    new_name: str  # the repaired wheel's file name
    requires_missing: tuple[str, ...]  # requirements METADATA lacks (what --add-requires adds)
    requires_added: tuple[str, ...]  # those added (with --add-requires)
    extra: str | None
    status: str  # "repaired", "up-to-date", "unchanged", "refused", "planned"
    output: str | None  # the written (or existing identical) wheel


def binary_member_patch(src: ByteSource, repair: FileRepair) -> BytePatch:
    """The byte patch of one native member: `repair.edits` planned by the binary rewriter
    (elf_write / macho_write) from the member's headers, before anything is written, and
    read back: the headers it produces must be the ones the check loaded (`repair.after`),
    else EditError. `src` is the member's content (a checkpointed MemberSource: the planner's
    scattered reads do not inflate the member again from its start)."""
    from rpathfix import elf_write, macho_write
    from rpathfix.errors import EditError
    from rpathfix.patch import PatchedSource
    from rpathfix.sniff import read_binary

    patch: BytePatch = (elf_write if repair.format == "elf" else macho_write).plan_patch(src, repair.edits)
    after = read_binary(PatchedSource(src, patch))
    if _as_loaded(after) != _as_loaded(repair.after):
        raise EditError(f"{repair.member}: the planned edit gives other headers than the check loaded "
                        f"({_as_loaded(after)} != {_as_loaded(repair.after)}); nothing written")
    return patch


def _as_loaded(info: object) -> tuple[object, ...]:
    """What the loader models read of a file's headers (not sizes or padding)."""
    from rpathfix.model import ElfInfo, MachoInfo

    if isinstance(info, ElfInfo):
        return ("elf", info.soname, info.needed, info.rpath, info.runpath)
    if isinstance(info, MachoInfo):
        return ("macho", tuple((sl.arch, sl.install_name, sl.dylibs, sl.rpaths) for sl in info.slices))
    return (None,)


def repair_wheels(wheels: Sequence[str], siblings: Sequence[str], out_dir: str | None, *,
                  add_requires: bool = False, extra: str | None = None, allow_unresolved: bool = False,
                  dry_run: bool = False, rpath_tag_default: str = "rpath") -> list[WheelOutcome]:
    """Plan (and unless dry_run, write) the repair of each wheel; every other WHEEL counts as a
    sibling of each. Nothing is written when any wheel is refused (unless allow_unresolved)."""
    from rpathfix.fstree import RealTree
    from rpathfix.names import parse_wheel_filename
    from rpathfix.repair_plan import plan_repair, requirements_to_add
    from rpathfix.wheelfile import WheelArchive, repaired_name
    from rpathfix.wheeltree import WheelTree

    if not wheels:
        raise UsageError("no WHEEL given; pass the wheels to repair")
    if not dry_run and out_dir is None:
        raise UsageError("--out DIR is required (or --dry-run)")
    for w in wheels:
        if not w.endswith(".whl"):
            raise UsageError(f"{w}: not a .whl file; pass the wheels to repair")
        parse_wheel_filename(w)
    archives: dict[str, WheelArchive] = {}
    sibling_roots: list[str] = []
    # The wheels to repair spool what their header reads inflate (wheelfile.WheelArchive), so
    # writing a patched member does not inflate it again; siblings are only read.
    spool_dir = None if dry_run else _existing_dir(out_dir)
    repairing = {os.path.abspath(w) for w in wheels}
    try:
        for p in [*wheels, *siblings]:
            ap = os.path.abspath(p)
            if ap in archives:
                continue
            if p.endswith(".whl"):
                if not os.path.isfile(p):
                    raise UsageError(f"{p}: no such wheel")
                archives[ap] = WheelArchive(ap, spool_dir=spool_dir if ap in repairing else None)
            elif os.path.isdir(p):
                if p in siblings:
                    sibling_roots.append(ap)
            else:
                raise UsageError(f"{p}: not a wheel or a distribution root directory")
        tree = WheelTree(RealTree(), list(archives.values()))
        mounts = {ap: tree.mount_path(a) for ap, a in archives.items()}
        wheel_mounts = [mounts[os.path.abspath(w)] for w in wheels]
        headers = tree.read_headers()  # every wheel's native headers, once for all the plans
        sibling_mounts = [mounts[os.path.abspath(s)] for s in siblings if os.path.abspath(s) in mounts
                          and os.path.abspath(s) not in {os.path.abspath(w) for w in wheels}]
        outcomes: list[WheelOutcome] = []
        for w, root in zip(wheels, wheel_mounts):
            arc = archives[os.path.abspath(w)]
            others = [m for m in wheel_mounts if m != root] + sibling_mounts + sibling_roots

            def member_of(rel: str, root: str = root) -> str | None:
                return tree.member(root, f"site-packages/{rel}")

            plan = plan_repair(tree, root, others, member_of=member_of,
                               metadata=arc.read(f"{arc.dist_info()}/METADATA"),
                               rpath_tag_default=rpath_tag_default, known=headers)
            missing = tuple(requirements_to_add(plan.requirements, extra))
            added = missing if add_requires else ()
            refused = bool(plan.errors) and not allow_unresolved
            status = "refused" if refused else "planned" if dry_run else \
                "repaired" if plan.files or added else "unchanged"
            outcomes.append(WheelOutcome(w, plan, repaired_name(w).filename, missing, added, extra, status, None))
        if dry_run or any(o.status == "refused" for o in outcomes):
            return outcomes
        assert out_dir is not None
        edits: list[dict[str, MemberEdit]] = []
        for o in outcomes:
            arc = archives[os.path.abspath(o.wheel)]
            edits.append({fr.member: binary_member_patch(arc.source(fr.member), fr) for fr in o.plan.files
                          if o.status == "repaired"})
        done = []
        for o, member_edits in zip(outcomes, edits):
            if o.status != "repaired":
                done.append(o)
                continue
            from rpathfix.wheelfile import rewrite_wheel

            result = rewrite_wheel(o.wheel, out_dir, member_edits=member_edits, requires=o.requires_added,
                                   extra=extra, new_name=o.new_name, archive=archives[os.path.abspath(o.wheel)])
            done.append(o._replace(output=result.path, status="repaired" if result.written else "up-to-date"))
        return done
    finally:
        for a in archives.values():
            a.close()


def _existing_dir(path: str | None) -> str | None:
    """`path` or its nearest existing ancestor: where spools go before OUT is made (OUT is
    made only when something is written)."""
    if path is None:
        return None
    d = os.path.abspath(path)
    while not os.path.isdir(d):
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    return d


# ---------------------------------------------------------------- output


def _search_list(info: object, tag: str | None) -> list[str]:
    from rpathfix.model import ElfInfo, split_path_list

    if isinstance(info, ElfInfo):
        return list(split_path_list(info.runpath if tag == "runpath" else info.rpath))
    slices = getattr(info, "slices", ())
    return list(slices[0].rpaths) if slices else []


def outcome_to_json(o: WheelOutcome) -> dict[str, object]:
    """One wheel of rpathfix.repair/1."""
    from rpathfix.verify import Finding

    def finding(x: Finding) -> dict[str, object]:
        return {"file": x.file, "name": x.name, "code": x.code, "message": x.message,
                "trace": [{"path": a.path, "rule": a.rule, "result": a.result, "entry": a.entry,
                           "contributor": a.contributor} for a in x.trace]}

    p = o.plan
    return {
        "wheel": o.wheel,
        "dist": p.dist,
        "version": p.version,
        "status": o.status,
        "output_name": o.new_name,
        "output": o.output,
        "files": [{
            "path": f.path, "member": f.member, "format": f.format, "tag": f.tag,
            "edits": [{"op": e.op, "arg": e.arg, "new": e.new} for e in f.edits],
            "added": [{"name": a.name, "entry": a.entry, "provider": a.provider, "dist": a.dist,
                       "version": a.version} for a in f.added],
            "search_before": _search_list(f.before, f.tag),
            "search_after": _search_list(f.after, f.tag),
        } for f in p.files],
        "skipped": [{"path": s.path, "name": s.name, "reason": s.reason} for s in p.skipped],
        "requirements": [{"dist": r.dist, "requirement": r.requirement, "status": r.status,
                          "extras": list(r.extras)} for r in p.requirements],
        "requires_missing": list(o.requires_missing),
        "requires_added": list(o.requires_added),
        "extra": o.extra,
        "checked": p.checked,
        "errors": [finding(x) for x in p.errors],
        "warnings": [finding(x) for x in p.warnings],
        "notes": list(p.notes),
    }


def outcomes_to_json(outcomes: Sequence[WheelOutcome]) -> dict[str, object]:
    return {"schema": "rpathfix.repair/1", "wheels": [outcome_to_json(o) for o in outcomes]}


def _findings_text(p: RepairPlan, *, traces: bool) -> list[str]:
    lines = []
    for x in p.findings:
        lines.append(f"  {x.level.upper()} [{x.code}] {x.file}: {x.message}")
        if traces and x.level == "error":
            for a in x.trace:
                src = f" from {a.contributor}" if a.contributor else ""
                entry = f" ({a.entry})" if a.entry else ""
                lines.append(f"      tried {a.path}  [{a.rule}{src}{entry}] {a.result}")
    return lines


def format_plan(o: WheelOutcome, *, explain: bool = False) -> str:
    """What --dry-run prints for one wheel: the edits, grouped by file, then what METADATA lacks."""
    p = o.plan
    base = posixpath.basename(o.wheel)
    lines = [f"{base} -> {o.new_name}" if (p.files or o.requires_missing) else f"{base}: nothing to repair"]
    for f in p.files:
        where = "LC_RPATH" if f.format == "macho" else f"DT_{(f.tag or 'rpath').upper()}"
        by_entry: dict[str, list[str]] = {}
        for a in f.added:
            by_entry.setdefault(a.entry, []).append(f"{posixpath.basename(a.name)} from {a.dist}")
        for entry, why in by_entry.items():
            lines.append(f"  {f.path}: {where} += {entry}  ({', '.join(why)})")
        if f.tag is not None and any(e.op == "rpath-tag" for e in f.edits):
            lines.append(f"  {f.path}: had no RPATH or RUNPATH; the entries go into DT_{f.tag.upper()}")
    for s in p.skipped:
        lines.append(f"  {s.path}: {s.name} left to the {'GPU driver' if s.reason == 'driver' else 'system'}")
    for r in o.requires_missing:
        lines.append(f"  METADATA: Requires-Dist {r}" + (f' ; extra == "{o.extra}"' if o.extra else ""))
    lines += _findings_text(p, traces=explain)
    if explain:
        lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)


def format_refusal(o: WheelOutcome) -> str:
    p = o.plan
    lines = [f"{posixpath.basename(o.wheel)}: would still not load after the repair:"]
    lines += _findings_text(p, traces=True)
    return "\n".join(lines)


__all__ = ["WheelOutcome", "binary_member_patch", "format_plan", "outcomes_to_json", "repair_wheels"]
