"""Findings as text for a person, and as JSON for a program: one formatter for verify,
doctor and the check `rpathfix venv` makes before writing.

For a person: the answer first (how many errors and warnings in how many files), then
one line per distribution with problems, then one entry per cause (what, which names
and which wheels provide them, which files need them, the command that fixes it).
Paths are relative to the sys.path directory they are in (the distribution is named
beside them); the loader's traces only with --explain. Colour only on a terminal, and
never when NO_COLOR is set (https://no-color.org) or TERM is "dumb".
"""

from __future__ import annotations

import os
import posixpath
import re

from rpathfix.findings import CAUSES, SEVERITIES, counts
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TextIO

    from rpathfix.findings import Finding, Problem
    from rpathfix.resolution import Attempt

WIDTH = 120
INDENT = "      "
MAX_SUBJECTS = 3  # files listed under a finding before "and N more"
MAX_DETAILS = 4


def use_color(stream: TextIO) -> bool:
    """Colour for a terminal, unless NO_COLOR (any non-empty value) or TERM=dumb says no."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


_SGR = {"error": "1;31", "warning": "33", "info": "36", "dim": "2", "bold": "1"}


class Style:
    """ANSI colours when `color`, plain text otherwise."""

    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, kind: str) -> str:
        code = _SGR.get(kind)
        return f"\033[{code}m{text}\033[0m" if self.color and code else text


class Display:
    """Paths as a person reads them: relative to the sys.path directory they are in."""

    def __init__(self, sites: Sequence[str], label: Callable[[str], str | None] | None = None) -> None:
        self.sites = sorted((s.rstrip("/") for s in sites), key=len, reverse=True)
        self._label = label

    def path(self, p: str | None) -> str:
        if not p:
            return ""
        for s in self.sites:
            if p.startswith(s + "/"):
                return p[len(s) + 1:]
        return p

    def label(self, p: str) -> str | None:
        return self._label(p) if self._label else None


class Scope(NamedTuple):
    """What was checked, for the summary line."""

    files: int  # native files in the environment
    modules: int  # of which extension modules
    directories: int  # sys.path directories
    header: tuple[str, ...] = ()  # lines before the summary (doctor: the interpreter)
    what: str = "sys.path"  # "sys.path" or "venv (before writing)"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _counts_text(c: dict[str, int]) -> str:
    parts = []
    if c.get("error"):
        parts.append(_plural(c["error"], "error"))
    if c.get("warning"):
        parts.append(_plural(c["warning"], "warning"))
    return ", ".join(parts)


def summary_line(findings: Sequence[Finding], scope: Scope) -> str:
    c = counts(findings)
    where = (f"{_plural(scope.files, 'native file')} ({_plural(scope.modules, 'extension module')}) "
             f"in {_plural(scope.directories, 'directory', 'directories')}")
    if scope.what != "sys.path":
        where += f" of the {scope.what}"
    notes = f"; {_plural(c['info'], 'note')}" if c.get("info") else ""
    if not c.get("error") and not c.get("warning"):
        return f"no problems: {where}{notes}"
    return f"{_counts_text(c)} in {where}{notes}"


def _wrap(items: Sequence[str], indent: str, sep: str = "; ") -> list[str]:
    """Items joined by sep, in lines of at most WIDTH columns (an item is never split)."""
    lines: list[str] = []
    cur = indent
    for i, item in enumerate(items):
        piece = item + (sep.rstrip() if i < len(items) - 1 else "")
        if cur != indent and len(cur) + 1 + len(piece) > WIDTH:
            lines.append(cur)
            cur = indent
        cur += ("" if cur == indent else " ") + piece
    if cur != indent:
        lines.append(cur)
    return lines


def _items(f: Finding, d: Display, explain: bool = False) -> list[str]:
    """The names a finding concerns with the wheels that provide them (grouped by wheel, or
    by name when one name comes from several wheels), else its details."""
    probs = f.problems
    cause = CAUSES.get(f.code)
    if (cause is None or cause.show == "providers") and any(p.provider_dist or p.provider for p in probs):
        by_wheel: dict[str, list[str]] = {}
        by_name: dict[str, list[str]] = {}
        for p in probs:
            who = p.provider_dist or (d.path(p.provider) if p.provider else "nowhere")
            name = p.name or d.path(p.file)
            for key, value, table in ((who, name, by_wheel), (name, who, by_name)):
                values = table.setdefault(key, [])
                if value not in values:
                    values.append(value)
        if len(by_name) < len(by_wheel):
            return _wrap([f"{name} ({', '.join(w)})" for name, w in by_name.items()], INDENT)
        return _wrap([f"{', '.join(n)} ({who})" for who, n in by_wheel.items()], INDENT)
    details = list(dict.fromkeys(_relative(p.detail, d) for p in probs if p.detail))
    if details:
        limit = len(details) if explain else MAX_DETAILS
        shown = [INDENT + x for x in details[:limit]]
        if len(details) > limit:
            shown.append(f"{INDENT}and {len(details) - limit} more (--explain)")
        return shown
    names = [n for n in f.names if n not in f.subjects]
    return _wrap(names, INDENT, ", ") if names else []


_ABS = re.compile(r"(/[^\s,;:()']+)")


def _relative(text: str, d: Display) -> str:
    """Absolute paths inside a message, made relative as everywhere else."""
    return _ABS.sub(lambda m: d.path(m.group(1)), text)


def _subjects(f: Finding, d: Display, own: str | None) -> str | None:
    """Which files the finding concerns ("needed by ..."), and what will not load because of
    it when that belongs to another distribution (its own line says so for its own)."""
    cause = CAUSES.get(f.code)
    who = cause.who if cause is not None else "in"
    files = [d.path(s) for s in f.subjects]
    if who is None or (len(files) == 1 and files[0] in f.names):
        text = ""
    else:
        more = f" and {len(files) - MAX_SUBJECTS} more" if len(files) > MAX_SUBJECTS else ""
        text = f"{who} {', '.join(files[:MAX_SUBJECTS])}{more}"
    stops = list(dict.fromkeys(p.stops for p in f.problems if p.stops and d.label(p.stops) != own))
    if stops:
        text += ("; " if text else "") + f"so {', '.join(d.path(s) for s in stops)} will not {_verb(stops)}"
    return INDENT + text if text else None


def _verb(stops: Sequence[str]) -> str:
    """Modules load (Python imports them); programs start (the kernel runs them)."""
    from rpathfix.sniff import looks_like_library

    return "load" if any(looks_like_library(posixpath.basename(s)) for s in stops) else "start"


def _trace(p: Problem, d: Display) -> list[str]:
    lines = [f"{INDENT}{d.path(p.file)}{' needs ' + p.name if p.name else ''}:"]
    for a in p.trace:
        lines.append(f"{INDENT}  " + attempt_text(a, d))
    return lines


def attempt_text(a: Attempt, d: Display) -> str:
    src = f" of {posixpath.basename(a.contributor)}" if a.contributor else ""
    entry = f" '{a.entry}'" if a.entry and a.entry != a.path else ""
    note = f" ({a.note})" if a.note else ""
    return f"tried {d.path(a.path)}  [{a.rule}{src}{entry}] {a.result}{note}"


def _label(f: Finding) -> str:
    if not f.dist:
        return "the environment"
    return f"{f.dist} {f.version}" if f.version else f.dist


def by_distribution(findings: Sequence[Finding], d: Display, *, explain: bool = False) -> list[
        tuple[str, str, list[Finding]]]:
    """(distribution label, its summary, its findings) for each distribution with problems,
    those with errors first: the counts, and the modules that will not load."""
    order: list[str] = []
    mine: dict[str, list[Finding]] = {}
    stops: dict[str, list[str]] = {}
    for f in findings:
        if f.severity == "info" and not explain:
            continue
        label = _label(f)
        if label not in mine:
            order.append(label)
            mine[label] = []
        mine[label].append(f)
        for p in f.problems:
            if p.stops and f.severity == "error":
                owner = d.label(p.stops) or label
                if owner not in mine:
                    order.append(owner)
                    mine[owner] = []
                if p.stops not in stops.setdefault(owner, []):
                    stops[owner].append(p.stops)
    out = []
    for label in order:
        text = _counts_text(counts(mine[label]))
        if label in stops:
            mods = [d.path(s) for s in stops[label]]
            shown = ", ".join(mods[:2]) + (f" and {len(mods) - 2} more" if len(mods) > 2 else "")
            text += (": " if text else "") + f"{shown} will not {_verb(stops[label])}"
        out.append((label, text or "notes", mine[label]))
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    out.sort(key=lambda t: (min((rank[f.severity] for f in t[2]), default=0) if t[2] else 0,
                            t[0] == "the environment"))
    return out


def format_findings(findings: Sequence[Finding], scope: Scope, d: Display, *, explain: bool = False,
                    color: bool = False) -> str:
    """The human report: the answer, then each distribution with problems and its findings
    (one per cause), then the commands that fix them, each once."""
    style = Style(color)
    lines = list(scope.header)
    traced = any(p.trace for f in findings for p in f.problems)
    hint = ""
    parts = (["the notes"] if any(f.severity == "info" for f in findings) else []) + \
        (["every directory the loader tried"] if traced else [])
    if parts and not explain:
        hint = f" (--explain shows {' and '.join(parts)})"
    lines.append(summary_line(findings, scope) + hint)
    fixes: dict[str, list[str]] = {}
    for label, text, mine in by_distribution(findings, d, explain=explain):
        lines.append(f"{style(label, 'bold')}: {text}")
        for f in mine:
            lines.append(f"  {style(f.severity, f.severity)} {style('[' + f.code + ']', 'dim')} {f.explanation}")
            lines += _items(f, d, explain)
            subj = _subjects(f, d, label)
            if subj:
                lines.append(subj)
            if f.fix:
                who = fixes.setdefault(f.fix, [])
                if label not in who:
                    who.append(label.split(" ")[0])
            if explain:
                traced_here: set[tuple[str, str | None]] = set()
                for p in f.problems:
                    if p.trace and (p.file, p.name) not in traced_here:  # the first (an import's) is enough
                        traced_here.add((p.file, p.name))
                        lines += _trace(p, d)
    # The command that fixes most distributions first (merging the layout, usually).
    for cmd, who in sorted(fixes.items(), key=lambda kv: -len(set(kv[1]))):
        lines.append(f"fix: {style(cmd, 'bold')}   # {', '.join(dict.fromkeys(who))}")
    return "\n".join(lines)


def short_lines(findings: Sequence[Finding], d: Display) -> list[str]:
    """One line per finding (warnings a successful `rpathfix venv` reports once)."""
    out = []
    for f in findings:
        if f.severity == "info":
            continue
        names = f.names
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        cause = CAUSES.get(f.code)
        who = cause.who if cause is not None else "in"
        files = [d.path(x) for x in f.subjects if x not in names]
        where = f" ({who} {files[0]}{f' and {len(files) - 1} more' if len(files) > 1 else ''})" \
            if who and files else ""
        out.append(f"{f.severity} [{f.code}] {f.explanation}: {_relative(shown, d)}{where}")
    for cmd in dict.fromkeys(f.fix for f in findings if f.fix and f.severity != "info"):
        out.append(f"fix: {cmd}")
    return out


def finding_to_json(f: Finding) -> dict[str, object]:
    return {
        "code": f.code,
        "severity": f.severity,
        "dist": f.dist,
        "version": f.version,
        "explanation": f.explanation,
        "fix": f.fix,
        "subjects": list(f.subjects),
        "problems": [problem_to_json(p) for p in f.problems],
    }


def problem_to_json(p: Problem) -> dict[str, object]:
    return {
        "severity": p.severity, "file": p.file, "name": p.name, "provider": p.provider,
        "provider_dist": p.provider_dist, "stops": p.stops, "detail": p.detail or None, "cause": p.cause,
        "trace": [{"path": a.path, "rule": a.rule, "result": a.result, "entry": a.entry,
                   "contributor": a.contributor} for a in p.trace],
    }


# ---------------------------------------------------------------- plan notes

_CLIMB = re.compile(r"^(?P<rel>.+) \((?P<dist>[^()]+)\): '(?P<entry>.+)' climbs out of (?P<kind>[\w-]+); "
                    r"no layout can serve it$")


def plan_note_lines(notes: Sequence[str], *, checked: bool | None = None) -> list[str]:
    """The planner's notes, each distinct case once: an entry that climbs out of
    site-packages is said once per (distribution, entry) with how many files carry it, and
    in words that say whether anything fails (ld.so skips a directory that is not there;
    only a library found nowhere else fails, and the check says so). checked: True when the
    check of the venv passed, False when it did not run, None when it is not this one's to say."""
    climbs: dict[tuple[str, str, str], list[str]] = {}
    other: list[str] = []
    for n in notes:
        m = _CLIMB.match(n)
        if m is None:
            other.append(n)
            continue
        climbs.setdefault((m["dist"], m["entry"], m["kind"]), []).append(m["rel"])
    out = []
    for (dist, entry, kind), rels in climbs.items():
        files = rels[0] if len(rels) == 1 else f"{len(rels)} files of {dist} (first {rels[0]})"
        verdict = ("nothing fails because of it (the check found every library)" if checked else
                   "ld.so skips it; it fails only if a library is found nowhere else (the check says so)"
                   if checked is None else "ld.so skips it; this run did not check whether that matters")
        who = files if len(rels) > 1 else f"{files} ({dist})"
        out.append(f"note: '{entry}' in {who} leads out of {kind}, where no layout can put anything; {verdict}")
    return out + [f"note: {n}" for n in other]
