"""Install wheels into distribution roots: DIR/<name>/{site-packages,bin,include,data}.

Each wheel is installed with pypa's `installer` into its own root, the layout
`rpathfix.roots` reads. The install is safe (member paths, file types and RECORD are
checked before anything is written), atomic (built in DIR/.<name>.tmp-XXXX and renamed
into place, so a root is never half-written) and reproducible: file modes are
normalized (0755 for files the wheel marks executable and for scripts, 0644 otherwise,
0755 for directories), bytecode is hash-based (CHECKED_HASH) with root-relative
source paths, and with SOURCE_DATE_EPOCH set every mtime in the root is set to it.

A marker file, <root>/.rpathfix-wheel, names the wheel, its sha256 and the install
options; a second unpack of the same wheel with the same options writes nothing. An
index, <root>/.rpathfix-natives.json, lists the root's native files and their headers,
so that planning a venv need not find and read them again (natives.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator

from rpathfix.errors import FormatError, UsageError
from rpathfix.names import parse_wheel_filename
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import Any, BinaryIO

MARKER = ".rpathfix-wheel"
INSTALLER_NAME = b"rpathfix\n"
# Root-relative directory each installer scheme is written to.
SCHEME_DIRS = {
    "purelib": "site-packages",
    "platlib": "site-packages",
    "headers": "include",
    "scripts": "bin",
    "data": "data",
}
_FILE_MODE = 0o644
_EXEC_MODE = 0o755
_DIR_MODE = 0o755
_ZIP_EPOCH = 315532800  # 1980-01-01 00:00 UTC, the earliest time a zip entry can carry


def resolve_python(python: str | None) -> str:
    """The absolute interpreter path launchers name: `python` (a path or a name on PATH) or sys.executable."""
    if python is None:
        return sys.executable
    if os.sep in python:
        return os.path.abspath(python)
    found = shutil.which(python)
    if found is None:
        raise UsageError(f"--python {python}: not found on PATH")
    return os.path.abspath(found)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except IsADirectoryError:
        raise FormatError(path, "is a directory, not a wheel file") from None
    except OSError as e:
        raise FormatError(path, f"cannot read: {e.strerror or e}") from None
    return h.hexdigest()


def _marker_text(wheel: str, digest: str, python: str, compile_bytecode: bool, verify_record: bool = True) -> str:
    # "record: not verified" only when so: markers of verified installs stay as they were,
    # and a later run that verifies does not take an unverified root as up to date.
    return (f"wheel: {os.path.basename(wheel)}\nsha256: {digest}\npython: {python}\n"
            f"bytecode: {'checked-hash' if compile_bytecode else 'none'}\nnatives-index: 1\n"
            + ("" if verify_record else "record: not verified\n"))


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _check_members(wheel: str, zf: zipfile.ZipFile) -> None:
    """FormatError for a member that could escape the root, is not a plain file or directory, or repeats."""
    seen: set[str] = set()
    for info in zf.infolist():
        name = info.filename
        norm = name.replace("\\", "/")
        parts = norm.rstrip("/").split("/")
        if (not norm or norm.startswith("/") or "\0" in name or ".." in parts
                or (len(norm) > 1 and norm[1] == ":")):
            raise FormatError(wheel, f"unsafe member path {name!r} (escapes the install root)")
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "symlink" if kind == stat.S_IFLNK else f"special file (mode {mode:o})"
            raise FormatError(wheel, f"member {name!r} is a {what}; only regular files and directories are allowed")
        if not name.endswith("/"):
            if name in seen:
                raise FormatError(wheel, f"member {name!r} appears twice")
            seen.add(name)


def _first_issue(exc: BaseException, wheel: str) -> str:
    issues = getattr(exc, "issues", None)
    if isinstance(issues, list) and issues:
        first = str(issues[0]).removeprefix(f"In {wheel}, ")
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        return first + more
    return str(exc) or type(exc).__name__


def _destination_class() -> Any:
    from installer.destinations import SchemeDictionaryDestination

    class _Destination(SchemeDictionaryDestination):
        """Writes files with fixed modes (umask-independent) and makes every script executable."""

        def write_file(self, scheme: Any, path: Any, stream: BinaryIO, is_executable: bool) -> Any:
            return super().write_file(scheme, path, stream, is_executable or scheme == "scripts")

        def write_to_fs(self, scheme: Any, path: str, stream: BinaryIO, is_executable: bool) -> Any:
            entry = super().write_to_fs(scheme, path, stream, is_executable)
            os.chmod(self._path_with_destdir(scheme, path), _EXEC_MODE if is_executable else _FILE_MODE)
            return entry

    return _Destination


# Said with every RECORD refusal: the check is stricter than pip, and can be turned off.
RECORD_HINT = "pip installs it anyway; rpathfix unpack is stricter: --no-verify-record installs it too"


def _install(wheel: str, zf: zipfile.ZipFile, tmp_root: str, python: str, verify_record: bool = True) -> None:
    import warnings

    from installer import install
    from installer.sources import WheelFile

    try:
        source = WheelFile(zf)
        dist_info = source.dist_info_dir
        if "WHEEL" not in source.dist_info_filenames:
            raise FormatError(wheel, f"{dist_info}/WHEEL is missing")
        if "RECORD" not in source.dist_info_filenames:
            raise FormatError(wheel, f"{dist_info}/RECORD is missing")
    except FormatError:
        raise
    except Exception as e:  # installer's parsing errors are ValueError/InstallerError
        raise FormatError(wheel, _first_issue(e, wheel)) from None
    if verify_record:
        # Every member listed in RECORD with its hash and size, each hash right. pip
        # checks only the hashes of the members RECORD lists, and installs a wheel with
        # unlisted members; rpathfix refuses it unless asked not to (RECORD_HINT).
        try:
            source.validate_record()
        except Exception as e:  # installer's validation errors are ValueError/InstallerError
            raise FormatError(wheel, f"{_first_issue(e, wheel)} ({RECORD_HINT})") from None

    scheme = {k: os.path.join(tmp_root, d) for k, d in SCHEME_DIRS.items()}
    dest = _destination_class()(scheme_dict=scheme, interpreter=python, script_kind="posix")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # __pycache__ members in the wheel: skipped, as pip does
            install(source, dest, {"INSTALLER": INSTALLER_NAME})
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise FormatError(wheel, f"corrupt zip data: {e}") from None
    except (ValueError, FileExistsError, KeyError, UnicodeDecodeError) as e:
        raise FormatError(wheel, _first_issue(e, wheel)) from None
    except Exception as e:
        from installer.exceptions import InstallerError

        if isinstance(e, InstallerError):
            raise FormatError(wheel, _first_issue(e, wheel)) from None
        raise


def _compile(site: str, python: str) -> None:
    """Hash-based (checked) .pyc for every .py in `site`, for `python`; files that do not compile are skipped."""
    if not os.path.isdir(site):
        return
    # Embed root-relative source paths so the tree is the same wherever it is unpacked;
    # the import system replaces co_filename with the real path when it loads a pyc.
    ddir = "site-packages"
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        import compileall
        import py_compile

        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            compileall.compile_dir(site, ddir=ddir, quiet=2, workers=1,
                                   invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
        return
    cmd = [python, "-m", "compileall", "-qq", "--invalidation-mode", "checked-hash", "-d", ddir, site]
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=False, timeout=1800)
    except OSError as e:
        raise UsageError(f"--python {python}: cannot run: {e.strerror or e}") from None


def _normalize_tree(top: str) -> None:
    """Fixed modes for everything in `top` (pycs and directories come out umask-dependent); SOURCE_DATE_EPOCH mtimes."""
    epoch_s = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    epoch = int(epoch_s) if epoch_s.isdigit() else None
    for dirpath, _dirnames, filenames in os.walk(top):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, _EXEC_MODE if st.st_mode & 0o111 else _FILE_MODE)
                if epoch is not None:
                    os.utime(p, (epoch, epoch))
        os.chmod(dirpath, _DIR_MODE)
    if epoch is not None:
        for dirpath, _dirs, _files in os.walk(top, topdown=False):
            os.utime(dirpath, (epoch, epoch))


def _write_index(top: str) -> None:
    """<top>/.rpathfix-natives.json: the root's native files and their headers, with the size
    and mtime each file has, so `rpathfix venv` need not read them again while they match.

    Native files get a fixed mtime (SOURCE_DATE_EPOCH, else 1980-01-01, the zip epoch) so
    the index is the same bytes for the same wheel; a file patched later gets a new mtime
    and is read again. The index file and `top` follow the mode and mtime rules of the rest.
    """
    from rpathfix.fstree import RealTree
    from rpathfix.natives import INDEX, index_json
    from rpathfix.plan import find_binaries

    site = os.path.join(top, "site-packages")
    if not os.path.isdir(site):
        return
    epoch_s = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    epoch = int(epoch_s) if epoch_s.isdigit() else None
    stamp = epoch if epoch is not None else _ZIP_EPOCH
    entries = []
    for b in find_binaries(RealTree(), "", site):
        os.utime(b.real, (stamp, stamp))
        st = os.stat(b.real)
        entries.append((b.rel, st.st_size, st.st_mtime_ns, b.info))
    path = os.path.join(top, INDEX)
    with open(path, "w", encoding="utf-8") as f:
        f.write(index_json(entries))
    os.chmod(path, _FILE_MODE)
    if epoch is not None:
        os.utime(path, (epoch, epoch))
        os.utime(top, (epoch, epoch))


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _swap_in(tmp_root: str, root: str, name: str, into: str) -> None:
    """Rename `tmp_root` to `root`; an existing `root` is renamed aside first and deleted after."""
    if not os.path.lexists(root):
        os.rename(tmp_root, root)
        return
    old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=into)
    aside = os.path.join(old, "root")
    os.rename(root, aside)
    try:
        os.rename(tmp_root, root)
    except OSError:
        os.rename(aside, root)
        raise
    finally:
        _remove(old)


def unpack_wheel(wheel: str, into: str, *, python: str | None = None,
                 compile_bytecode: bool = True, verify_record: bool = True) -> tuple[str, bool]:
    """Install `wheel` into the root into/<canonical name>; (root path, whether anything changed).

    FormatError for a wheel that is unreadable, not a zip, unsafe or (unless verify_record
    is False) fails RECORD checks: a member missing from RECORD, a wrong hash or size;
    UsageError for a bad --into or --python. Nothing is left behind on error.
    """
    name, _version = parse_wheel_filename(wheel)
    interpreter = resolve_python(python)
    if not os.path.exists(wheel):
        raise FormatError(wheel, "no such file")
    digest = _sha256(wheel)
    into = os.path.abspath(into)
    try:
        os.makedirs(into, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--into {into}: {e.strerror or e}") from None
    root = os.path.join(into, name)
    marker = _marker_text(wheel, digest, interpreter, compile_bytecode, verify_record)

    if os.path.lexists(root):
        if not os.path.isdir(root) or os.path.islink(root):
            raise UsageError(f"{root}: exists and is not a directory; remove it or choose another --into")
        current = _read_text(os.path.join(root, MARKER))
        if current == marker:
            return root, False
        if current is None and os.listdir(root):
            raise UsageError(f"{root}: exists and was not made by `rpathfix unpack` (no {MARKER}); "
                             "remove it or choose another --into")

    try:
        zf = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise FormatError(wheel, "not a zip archive") from None
    except OSError as e:
        raise FormatError(wheel, f"cannot read: {e.strerror or e}") from None

    try:
        tmp_root = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=into)
    except OSError as e:
        zf.close()
        raise UsageError(f"--into {into}: {e.strerror or e}") from None
    try:
        with zf:
            _check_members(wheel, zf)
            _install(wheel, zf, tmp_root, interpreter, verify_record)
        if compile_bytecode:
            _compile(os.path.join(tmp_root, "site-packages"), interpreter)
        with open(os.path.join(tmp_root, MARKER), "w", encoding="utf-8") as f:
            f.write(marker)
        _normalize_tree(tmp_root)
        _write_index(tmp_root)
        _swap_in(tmp_root, root, name, into)
    except BaseException:
        _remove(tmp_root)
        raise
    return root, True


def iter_unpack(wheels: list[str], into: str, *, python: str | None = None,
                compile_bytecode: bool = True, verify_record: bool = True) -> Iterator[tuple[str, str, bool]]:
    """(wheel, root, changed) for each wheel, unpacked in order."""
    for w in wheels:
        root, changed = unpack_wheel(w, into, python=python, compile_bytecode=compile_bytecode,
                                     verify_record=verify_record)
        yield w, root, changed


__all__ = ["MARKER", "SCHEME_DIRS", "iter_unpack", "resolve_python", "unpack_wheel"]
