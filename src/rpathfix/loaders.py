"""One entry point to both loader models: pick glibc or dyld by the file's magic bytes.

ldd, why and verify call these, so the ELF/Mach-O split lives in one place.
"""

from __future__ import annotations

import posixpath

from rpathfix.errors import FormatError, UsageError
from rpathfix.fstree import resolve
from rpathfix.resolution import LoadResult, Resolution
from rpathfix.sniff import HEAD_SIZE, binary_format
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.resolution import SymbolProblem, SymbolTrace


class ProcessSpec(NamedTuple):
    """What the simulated process looks like, for either loader."""

    executable: str | None = None  # the program that dlopen()s the file (a Python interpreter)
    library_path: str | None = None  # LD_LIBRARY_PATH, or DYLD_LIBRARY_PATH for Mach-O
    cache_path: str | None = "/etc/ld.so.cache"  # None: no ld.so.cache
    cwd: str = "/"
    arch: str | None = None  # Mach-O slice to simulate
    secure: bool = False  # a setuid/setgid/capability program: AT_SECURE for glibc, restricted for dyld


def file_format(tree: FileTree, path: str) -> str:
    """"elf" or "macho" for an existing binary; UsageError (exit 2) for anything else."""
    real = resolve(tree, path)
    if real is None:
        raise UsageError(f"{path}: no such file")
    node = tree.lstat(real)
    if node is None or node.kind != "file":
        raise UsageError(f"{path}: not a regular file; pass a shared library, extension module or executable")
    src = tree.open(real)
    try:
        fmt = binary_format(src.read_at(0, min(HEAD_SIZE, src.size)))
    finally:
        src.close()
    if fmt is None:
        raise UsageError(f"{path}: neither ELF nor Mach-O; pass a shared library, extension module or executable")
    return fmt


def _glibc_options(spec: ProcessSpec):  # type: ignore[no-untyped-def]
    from rpathfix.ldcache import load_cache
    from rpathfix.loader_glibc import host_options

    cache = load_cache(spec.cache_path) if spec.cache_path else None
    return host_options(ld_library_path=spec.library_path, cache=cache, cwd=spec.cwd, executable=spec.executable,
                        secure=spec.secure)


def _dyld_options(spec: ProcessSpec):  # type: ignore[no-untyped-def]
    from rpathfix.loader_dyld import DyldOptions

    dirs = tuple(d for d in (spec.library_path or "").split(":") if d)
    return DyldOptions(arch=spec.arch, executable=spec.executable, dyld_library_path=dirs, cwd=spec.cwd,
                       restricted=spec.secure)  # rule 34: a setuid process is restricted


def load(tree: FileTree, path: str, spec: ProcessSpec) -> LoadResult:
    """The closure of `path`: as ldd shows it, or as spec.executable's dlopen() loads it."""
    path = _absolute(path, spec.cwd)
    try:
        if file_format(tree, path) == "elf":
            from rpathfix.loader_glibc import load_elf

            return load_elf(tree, path, _glibc_options(spec))
        from rpathfix.loader_dyld import load_macho

        return load_macho(tree, path, _dyld_options(spec), dlopen=spec.executable is not None)
    except FormatError as e:
        raise UsageError(str(e)) from None


def explain(tree: FileTree, path: str, name: str, spec: ProcessSpec) -> tuple[Resolution, LoadResult]:
    """How `name` resolves when `path` asks for it, with the closure it was resolved in."""
    path = _absolute(path, spec.cwd)
    try:
        if file_format(tree, path) == "elf":
            from rpathfix.loader_glibc import explain as glibc_explain

            return glibc_explain(tree, path, name, _glibc_options(spec))
        from rpathfix.loader_dyld import explain as dyld_explain
        from rpathfix.loader_dyld import load_macho

        opts = _dyld_options(spec)
        return dyld_explain(tree, path, name, opts), load_macho(tree, path, opts, dlopen=spec.executable is not None)
    except FormatError as e:
        raise UsageError(str(e)) from None


def load_checked(tree: FileTree, path: str, spec: ProcessSpec, *, bind: bool = False) -> tuple[LoadResult, list[SymbolProblem]]:
    """load(), and whether the load then binds (bind_glibc, bind_dyld). ELF: version needs
    always (ldd checks them too); every undefined symbol with `bind` (`ldd -r`) and always
    for spec.executable's dlopen (an import binds with RTLD_NOW). Mach-O: with `bind` or
    an executable."""
    path = _absolute(path, spec.cwd)
    try:
        if file_format(tree, path) == "elf":
            from rpathfix.bind_glibc import SymbolTables, check_program, load_and_bind
            from rpathfix.loader_glibc import GlibcProcess

            options = _glibc_options(spec)
            tables = SymbolTables(tree)
            try:
                if spec.executable:
                    return load_and_bind(tree, path, options, tables)
                proc = GlibcProcess(tree, options)
                proc.start(path, as_ldd=True)
                result = proc.result(path)
                return result, check_program(proc, tables, bind=bind)
            finally:
                tables.close()
        from rpathfix.loader_dyld import load_macho

        opts = _dyld_options(spec)
        if not bind and spec.executable is None:
            return load_macho(tree, path, opts), []
        from rpathfix.bind_dyld import MachoTables
        from rpathfix.bind_dyld import load_and_bind as dyld_bind

        mtables = MachoTables(tree)
        try:
            return dyld_bind(tree, path, opts, mtables)
        finally:
            mtables.close()
    except FormatError as e:
        raise UsageError(str(e)) from None


def explain_symbol(tree: FileTree, path: str, symbol: str, spec: ProcessSpec) -> tuple[SymbolTrace, LoadResult]:
    """How `symbol`, imported by `path`, binds (`rpathfix why FILE SYMBOL`)."""
    path = _absolute(path, spec.cwd)
    try:
        if file_format(tree, path) == "elf":
            from rpathfix.bind_glibc import explain_symbol as glibc_symbol

            return glibc_symbol(tree, path, symbol, _glibc_options(spec))
        from rpathfix.bind_dyld import explain_symbol as dyld_symbol

        return dyld_symbol(tree, path, symbol, _dyld_options(spec))
    except FormatError as e:
        raise UsageError(str(e)) from None


def _absolute(path: str, cwd: str) -> str:
    return path if path.startswith("/") else posixpath.normpath(posixpath.join(cwd, path))
