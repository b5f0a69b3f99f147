"""A static simple repository of a directory of wheels (`rpathfix index`).

OUT gets, for the wheels of DIR:
- `simple/index.html` and `simple/<project>/index.html`: the PEP 503 HTML API (project names
  normalized as PEP 503 says; links carry `#sha256=` fragments, `data-requires-python`
  (HTML-escaped), and `data-dist-info-metadata` / `data-core-metadata` (PEP 658, renamed by
  PEP 714: both are written, older pip reads the first), with the PEP 629 version meta tag);
- `simple/index.json` and `simple/<project>/index.json`: the same in the PEP 691 JSON form
  (api-version 1.1: PEP 700's `versions` and `size`). A static server serves HTML from the
  directory URL; clients that ask for JSON (Accept: application/vnd.pypi.simple.v1+json) get it
  only where the server maps that Accept header to index.json (docs/repair.md shows how);
  pip and uv accept HTML and decide by the response's Content-Type;
- `<wheel>.metadata` beside each wheel: its METADATA, so that pip and uv resolve without
  downloading the wheel (PEP 658). When OUT is not DIR, each wheel is hard-linked (else copied)
  into OUT, so the links are relative and OUT can be served, synced to a bucket, or moved whole.

Incremental: `.rpathfix-index.json` in OUT remembers each wheel's size, mtime, sha256 and
METADATA digest, so only new or changed wheels are read; every file is written only when its
bytes change (fileio.write_if_changed: an unchanged page keeps its mtime, and a new wheel
rewrites only its project's page and, for a new project, the root list). Atomic: each file is
written beside its destination and renamed into place, and a page is written only after the
files it links to, so a client never reads a half-written page or follows a link to nothing.
Deterministic: sorted, no timestamps.
"""

from __future__ import annotations

import html
import json
import os
import stat
from collections.abc import Sequence
from urllib.parse import quote

from rpathfix.errors import FormatError, UsageError
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import BinaryIO

STATE = ".rpathfix-index.json"
STATE_SCHEMA = "rpathfix.index-state/1"
SIMPLE = "simple"
API_VERSION = "1.1"
JSON_TYPE = "application/vnd.pypi.simple.v1+json"


class IndexedWheel(NamedTuple):
    """What the index says about one wheel."""

    filename: str
    project: str  # PEP 503-normalized
    version: str
    size: int
    mtime_ns: int
    sha256: str
    metadata_sha256: str
    requires_python: str | None


class IndexResult(NamedTuple):
    written: list[str]  # files written (relative to OUT), in the order written
    removed: list[str]
    projects: int
    wheels: int
    read: int  # wheels whose bytes were read (new or changed)


def _read_wheel(path: str, st: os.stat_result) -> tuple[IndexedWheel, bytes]:
    """The index's facts about a wheel, and its METADATA bytes."""
    import hashlib

    from rpathfix.names import parse_wheel_filename
    from rpathfix.wheelfile import WheelArchive, metadata_field

    project, version = parse_wheel_filename(path)
    with WheelArchive(path) as arc:
        metadata = arc.read(f"{arc.dist_info()}/METADATA")
    names = metadata_field(metadata, "Name")
    if not names:
        raise FormatError(path, "METADATA has no Name field")
    from rpathfix.names import canonicalize_name

    if canonicalize_name(names[0]) != project:
        raise FormatError(path, f"METADATA names {names[0]!r}, the file name {project!r}")
    rp = metadata_field(metadata, "Requires-Python")
    from rpathfix.fileio import sha256_file

    return IndexedWheel(os.path.basename(path), project, version, st.st_size, st.st_mtime_ns,
                        sha256_file(path), hashlib.sha256(metadata).hexdigest(), rp[0] if rp else None), metadata


def _load_state(out: str) -> dict[str, IndexedWheel]:
    try:
        with open(os.path.join(out, STATE), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("schema") != STATE_SCHEMA or not isinstance(raw.get("wheels"), list):
        return {}
    out_state: dict[str, IndexedWheel] = {}
    for w in raw["wheels"]:
        try:
            iw = IndexedWheel(**w)
        except TypeError:
            continue
        out_state[iw.filename] = iw
    return out_state


def _state_json(wheels: Iterable[IndexedWheel]) -> bytes:
    data = {"schema": STATE_SCHEMA, "wheels": [w._asdict() for w in sorted(wheels, key=lambda w: w.filename)]}
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode("utf-8")


def _version_key(version: str) -> tuple[int, object]:
    from packaging.version import InvalidVersion, Version

    try:
        return (0, Version(version))
    except InvalidVersion:
        return (1, version)


def _sorted_files(wheels: Sequence[IndexedWheel]) -> list[IndexedWheel]:
    return sorted(wheels, key=lambda w: (_version_key(w.version), w.filename))


def _href(w: IndexedWheel) -> str:
    return "../../" + quote(w.filename)


def project_html(project: str, wheels: Sequence[IndexedWheel]) -> bytes:
    """The PEP 503 page of one project."""
    e = html.escape
    lines = ["<!DOCTYPE html>", "<html>", "  <head>",
             f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
             f"    <title>Links for {e(project)}</title>", "  </head>", "  <body>",
             f"    <h1>Links for {e(project)}</h1>"]
    for w in _sorted_files(wheels):
        attrs = f'href="{e(_href(w))}#sha256={w.sha256}"'
        if w.requires_python:
            attrs += f' data-requires-python="{e(w.requires_python)}"'
        attrs += f' data-dist-info-metadata="sha256={w.metadata_sha256}"'
        attrs += f' data-core-metadata="sha256={w.metadata_sha256}"'
        lines.append(f"    <a {attrs}>{e(w.filename)}</a><br>")
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def project_json(project: str, wheels: Sequence[IndexedWheel]) -> bytes:
    """The PEP 691 (api-version 1.1) form of one project's page."""
    files = []
    for w in _sorted_files(wheels):
        f: dict[str, object] = {"filename": w.filename, "url": _href(w), "hashes": {"sha256": w.sha256}}
        if w.requires_python:
            f["requires-python"] = w.requires_python
        f["core-metadata"] = {"sha256": w.metadata_sha256}
        f["dist-info-metadata"] = {"sha256": w.metadata_sha256}
        f["size"] = w.size
        f["yanked"] = False
        files.append(f)
    versions = sorted({w.version for w in wheels}, key=_version_key)
    data = {"meta": {"api-version": API_VERSION}, "name": project, "versions": versions, "files": files}
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def root_html(projects: Sequence[str]) -> bytes:
    e = html.escape
    lines = ["<!DOCTYPE html>", "<html>", "  <head>",
             f'    <meta name="pypi:repository-version" content="{API_VERSION}">',
             "    <title>Simple index</title>", "  </head>", "  <body>"]
    lines += [f'    <a href="{e(quote(p))}/">{e(p)}</a><br>' for p in sorted(projects)]
    lines += ["  </body>", "</html>", ""]
    return "\n".join(lines).encode("utf-8")


def root_json(projects: Sequence[str]) -> bytes:
    data = {"meta": {"api-version": API_VERSION}, "projects": [{"name": p} for p in sorted(projects)]}
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def _list_wheels(src: str) -> list[str]:
    try:
        names = os.listdir(src)
    except OSError as e:
        raise UsageError(f"{src}: {e.strerror or e}; pass a directory of wheels") from None
    out = []
    for n in sorted(names):
        if not n.endswith(".whl") or n.startswith("."):
            continue  # hidden names: temporary files of a writer (fileio's, or an upload in progress)
        try:
            st = os.stat(os.path.join(src, n))
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.append(n)
    return out


def _place_wheel(src: str, dest: str) -> bool:
    """Make `dest` hold the wheel at `src` (a hard link when the file system allows, else a
    copy), replacing a different file atomically; True when something was written."""
    from rpathfix.fileio import replace_file, sha256_file, temp_path

    try:
        s, d = os.stat(src), os.stat(dest)
        if (s.st_dev, s.st_ino) == (d.st_dev, d.st_ino):
            return False
        if s.st_size == d.st_size and sha256_file(src) == sha256_file(dest):
            return False
    except FileNotFoundError:
        pass
    tmp = temp_path(dest)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        def copy(f: BinaryIO) -> None:
            with open(src, "rb") as r:
                shutil.copyfileobj(r, f, 1 << 20)

        replace_file(dest, copy, mode=0o644)
        return True
    try:
        os.rename(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def _subdirs(d: str) -> list[str]:
    try:
        return [e.path for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _clean_dir(d: str) -> None:
    """Remove what killed runs left in `d` (fileio's temporary names whose writer is gone)."""
    from rpathfix.fileio import clean_leftovers

    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        if n.startswith(".") and ".rpathfix-" in n:
            clean_leftovers(os.path.join(d, n[1:n.index(".rpathfix-")]))


def build_index(src: str, out: str | None = None) -> IndexResult:
    """Write (or bring up to date) the static simple repository of the wheels in `src` into
    `out` (default: `src` itself)."""
    from rpathfix.fileio import remove_tree, write_if_changed

    src = os.path.abspath(src)
    out = os.path.abspath(out) if out is not None else src
    if not os.path.isdir(src):
        raise UsageError(f"{src}: not a directory; pass a directory of wheels")
    try:
        os.makedirs(os.path.join(out, SIMPLE), exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: {e.strerror or e}") from None
    for d in (out, os.path.join(out, SIMPLE), *_subdirs(os.path.join(out, SIMPLE))):
        _clean_dir(d)
    state = _load_state(out)
    names = _list_wheels(src)
    wheels: dict[str, IndexedWheel] = {}
    metadata: dict[str, bytes] = {}
    read = 0
    for n in names:
        path = os.path.join(src, n)
        st = os.stat(path)
        known = state.get(n)
        meta_path = os.path.join(out, n + ".metadata")
        if known is not None and (known.size, known.mtime_ns) == (st.st_size, st.st_mtime_ns) \
                and os.path.isfile(meta_path):
            wheels[n] = known
            continue
        info, meta = _read_wheel(path, st)
        read += 1
        wheels[n] = info
        metadata[n] = meta
    written: list[str] = []
    removed: list[str] = []

    def put(rel: str, data: bytes) -> None:
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if write_if_changed(dest, data, mode=0o644):
            written.append(rel)

    # The files pages link to come first: wheels (when OUT is elsewhere) and metadata.
    for n, w in wheels.items():
        if out != src:
            dest = os.path.join(out, n)
            unchanged = n not in metadata and os.path.isfile(dest) and os.path.getsize(dest) == w.size
            if not unchanged and _place_wheel(os.path.join(src, n), dest):
                written.append(n)
        if n in metadata:
            put(n + ".metadata", metadata[n])
    by_project: dict[str, list[IndexedWheel]] = {}
    for w in wheels.values():
        by_project.setdefault(w.project, []).append(w)
    for project, ws in sorted(by_project.items()):
        put(f"{SIMPLE}/{project}/index.html", project_html(project, ws))
        put(f"{SIMPLE}/{project}/index.json", project_json(project, ws))
    put(f"{SIMPLE}/index.html", root_html(list(by_project)))
    put(f"{SIMPLE}/index.json", root_json(list(by_project)))
    # What no page links to any more goes last: pages of projects without wheels (only
    # directories holding nothing but pages), metadata files without their wheel, and the
    # wheels this index placed in OUT whose source is gone.
    simple = os.path.join(out, SIMPLE)
    for project in sorted(os.listdir(simple)):
        d = os.path.join(simple, project)
        if project in by_project or not os.path.isdir(d) or os.path.islink(d):
            continue
        if set(os.listdir(d)) <= {"index.html", "index.json"}:
            remove_tree(d)
            removed.append(f"{SIMPLE}/{project}/")
    for n in sorted(os.listdir(out)):
        if n.endswith(".whl.metadata") and n[: -len(".metadata")] not in wheels:
            os.unlink(os.path.join(out, n))
            removed.append(n)
    if out != src:
        for n in sorted(set(state) - set(wheels)):
            if os.path.isfile(os.path.join(out, n)):
                os.unlink(os.path.join(out, n))
                removed.append(n)
    state_bytes = _state_json(wheels.values())
    if write_if_changed(os.path.join(out, STATE), state_bytes, mode=0o644):
        written.append(STATE)
    return IndexResult(written, removed, len(by_project), len(wheels), read)


__all__ = ["IndexResult", "IndexedWheel", "build_index", "project_html", "project_json", "root_html", "root_json"]
