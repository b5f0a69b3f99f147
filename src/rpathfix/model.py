"""Plain typed data shared by readers, the loader models, the planner and the writers.

Nothing here does I/O. Readers produce these records; everything downstream consumes
them, so a planned (not yet written) layout can be checked with the same code.
"""

from __future__ import annotations

from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from typing import Literal

    DylibKind = Literal["load", "weak", "reexport", "lazy", "upward"]
    PlanKind = Literal["site-packages", "bin", "include", "data"]
    EditOp = Literal["set-rpath", "add-rpath", "remove-rpath", "replace-rpath", "remove-all-rpaths",
                     "rpath-tag", "set-soname", "replace-needed", "set-id", "change"]
    PatchMethod = Literal["in-place", "grown", "unchanged"]

# DT_FLAGS_1 bits the loader model needs.
DF_1_NODEFLIB = 0x800
DF_1_ORIGIN = 0x80


class ElfInfo(NamedTuple):
    """What ld.so reads from an ELF file's headers and dynamic segment.

    rpath and runpath keep the raw DT_RPATH / DT_RUNPATH strings (None when the tag
    is absent): the loader must know that an empty string is present-but-empty, and
    that a file may carry both (glibc then ignores DT_RPATH).
    """

    elf_class: int  # 32 or 64
    little_endian: bool
    machine: int  # e_machine
    arch: str  # "x86_64", "aarch64", "i386", "arm", "ppc64le", ... or "machine-<n>"
    elf_type: str  # "exec", "dyn", "rel", "core" or "type-<n>"
    interp: str | None  # PT_INTERP
    soname: str | None
    needed: tuple[str, ...]  # DT_NEEDED in order
    rpath: str | None
    runpath: str | None
    flags_1: int  # DT_FLAGS_1, 0 when absent
    is_extension: bool  # exports PyInit_<module name> for its own file name

    @property
    def nodeflib(self) -> bool:
        return bool(self.flags_1 & DF_1_NODEFLIB)


class DylibRef(NamedTuple):
    """One dylib load command: the install name as recorded, and its kind."""

    name: str
    kind: DylibKind


class MachoSlice(NamedTuple):
    """One architecture slice of a Mach-O file (a thin file has exactly one)."""

    arch: str  # "arm64", "x86_64", "arm64e", "i386", "armv7", ... or "cpu-<n>"
    cputype: int
    cpusubtype: int
    is_64: bool
    filetype: str  # "execute", "dylib", "bundle", "object", ... or "type-<n>"
    offset: int  # byte offset of this slice in the file (0 for thin files)
    size: int  # slice size in bytes
    install_name: str | None  # LC_ID_DYLIB
    dylibs: tuple[DylibRef, ...]  # dylib load commands in order
    rpaths: tuple[str, ...]  # LC_RPATH in order
    has_code_signature: bool  # LC_CODE_SIGNATURE present
    header_padding: int  # free bytes between the load commands and the first section
    is_extension: bool  # exports _PyInit_<module name>


class MachoInfo(NamedTuple):
    """A whole Mach-O file: fat (universal) or thin."""

    fat: bool
    slices: tuple[MachoSlice, ...]


if TYPE_CHECKING:  # an alias for annotations only (Python 3.9 has no `type | type` at run time)
    BinaryInfo = ElfInfo | MachoInfo


class ScanRecord(NamedTuple):
    """One row of `rpathfix scan`: one file, or one slice of a fat Mach-O file.

    The keys match the documented rpathfix.scan/1 JSON schema one to one.
    """

    path: str
    wheel: str | None
    format: str | None  # "elf" or "macho"; None when the file could not be read
    arch: str | None
    soname: str | None
    install_name: str | None
    needed: tuple[str, ...] = ()
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    is_extension: bool = False
    dist: str | None = None
    version: str | None = None
    is_link: bool = False
    link_target: str | None = None
    error: str | None = None


def split_path_list(value: str | None) -> tuple[str, ...]:
    """Split an RPATH/RUNPATH string on ':' exactly as stored (empty elements kept)."""
    if value is None or value == "":
        return ()
    return tuple(value.split(":"))


class PlanEntry(NamedTuple):
    """One entry of a per-binary venv plan (rpathfix.plan/1), mapping onto rules_python's
    PyInfo.venv_symlinks (kind, venv_path, link_to_path).

    venv_path is relative to the kind's directory in the venv (site-packages/, bin/,
    include/, data/). target is the absolute path in the distribution root that the
    entry links to (a file or a whole directory). Directories that must be real are
    not entries: they are the parents of entries. method "copy" marks files that must
    be real copies (Mach-O files whose @loader_path/.. climbs out of their wheel: dyld
    takes @loader_path from the real path, LOADERS.md rule 31).
    """

    kind: PlanKind
    venv_path: str
    target: str
    dist: str
    method: Literal["symlink", "copy"] = "symlink"
    reason: str | None = None


class Edit(NamedTuple):
    """One requested change to a binary: an option of `rpathfix patch`, or a step of a repair.

    `arg` is the value (a path list, an entry, a name, or "rpath"/"runpath"/"keep" for
    rpath-tag); for the OLD=NEW operations (replace-rpath, replace-needed, change) `arg`
    is OLD and `new` is NEW. Edits apply in the order given.
    """

    op: EditOp
    arg: str = ""
    new: str = ""


class Change(NamedTuple):
    """One change an edit makes, as `rpathfix.patch/1` reports it."""

    what: str  # "rpath", "runpath", "soname", "needed", "id", "dylib", "lc_rpath", "signature"
    before: str | None  # None: added
    after: str | None  # None: removed
    slice: str | None = None  # the Mach-O slice's arch; None for ELF


class BytePatch(NamedTuple):
    """A planned edit of one file, as bytes: pure data, checked before anything is written,
    then applied in place, to a new copy, or while streaming the file into a wheel.

    `writes` are (offset, bytes), in the order they must reach the file so that the file
    is loadable after every one of them (the last one switches to the new state); offsets
    at or beyond the original size append. `size` is the size after the edit.
    """

    writes: tuple[tuple[int, bytes], ...]
    size: int
    method: PatchMethod
    changes: tuple[Change, ...]
