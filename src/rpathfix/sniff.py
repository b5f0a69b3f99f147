"""Decide what a file is by its magic bytes (never by name) and read it with the right reader."""

from __future__ import annotations

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree
    from rpathfix.model import BinaryInfo
    from rpathfix.source import ByteSource

# Names that look like shared libraries or loadable modules: .so, .so.12, .so.12.1.3,
# .dylib, .bundle. Executables have no suffix and are candidates through their exec bit.
# The definition is this regular expression (re.search); looks_like_library computes the
# same answer with string methods, because scan asks it once for every file in a tree.
LIBRARY_NAME_PATTERN = r"\.so(\.[0-9][0-9A-Za-z_]*)*$|\.dylib$|\.bundle$"

HEAD_SIZE = 8
# The key under which a CachedTree's memo holds a file's parsed headers: (_MEMO_KIND, real path).
_MEMO_KIND = "binary"

_DIGITS = frozenset("0123456789")


def looks_like_library(name: str) -> bool:
    if ".so" not in name:
        return name.endswith((".dylib", ".bundle", ".dylib\n", ".bundle\n"))
    if name[-1:] == "\n":  # "$" also matches before one final newline
        name = name[:-1]
    if name.endswith((".so", ".dylib", ".bundle")):
        return True
    # Only the last ".so" can match: a later ".so" would have to start a ".<digit>..." group.
    rest = name[name.rfind(".so") + 3 :]
    if rest[:1] != ".":
        return False
    for part in rest[1:].split("."):
        if not part or part[0] not in _DIGITS or not part.isascii() or not part.replace("_", "0").isalnum():
            return False
    return True


def may_be_native(name: str) -> bool:
    """Worth a header read: a library's name, or no dot at all (an executable's; those
    also need an exec bit). The planner and the environment walk share this rule."""
    return "." not in name or looks_like_library(name)


# Thin Mach-O magics in either byte order, and the fat (universal) magics.
_MACHO_MAGICS = {b"\xfe\xed\xfa\xce", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xcf\xfa\xed\xfe"}
_FAT_MAGICS = {b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf"}


def binary_format(head: bytes) -> str | None:
    """"elf", "macho" or None, from the first bytes of a file."""
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[:4] in _MACHO_MAGICS:
        return "macho"
    if head[:4] in _FAT_MAGICS:
        from rpathfix.macho import is_macho  # tells a fat file from a Java class file

        return "macho" if is_macho(head) else None
    return None


def read_binary(src: ByteSource) -> BinaryInfo | None:
    """The parsed headers of src, or None when it is neither ELF nor Mach-O.

    Raises FormatError when the magic says ELF or Mach-O but the rest is malformed.
    """
    if src.size < 4:
        return None
    head = src.read_at(0, min(HEAD_SIZE, src.size))
    fmt = binary_format(head)
    if fmt == "elf":
        from rpathfix.elf import read_elf

        return read_elf(src)
    if fmt == "macho":
        from rpathfix.macho import read_macho

        return read_macho(src)
    return None


def read_binary_in(tree: FileTree, real: str) -> BinaryInfo | None:
    """The parsed headers of the file at physical path `real` in a tree; None when it cannot
    be read or is not a well-formed ELF or Mach-O file.

    On a CachedTree the answer is remembered: a venv build reads every binary's headers
    for the plan and for two checks, and each read should happen once.
    """
    from rpathfix.errors import FormatError

    memo = getattr(tree, "memo", None)
    key = (_MEMO_KIND, real)
    if memo is not None and key in memo:
        cached: BinaryInfo | None = memo[key]
        return cached
    info: BinaryInfo | None
    try:
        src = tree.open(real)
    except FormatError:
        info = None
    else:
        try:
            info = read_binary(src)
        except FormatError:
            info = None
        finally:
            src.close()
    if memo is not None:
        memo[key] = info
    return info


def remember_binary(tree: FileTree, real: str, info: BinaryInfo, *, replace: bool = False) -> None:
    """Tell a CachedTree the headers of `real` known from elsewhere (a root's index), so
    read_binary_in answers without reading the file. With replace, they win over headers
    already read: the repair check loads a file as its planned edits will make it."""
    memo = getattr(tree, "memo", None)
    if memo is not None:
        if replace:
            memo[(_MEMO_KIND, real)] = info
        else:
            memo.setdefault((_MEMO_KIND, real), info)


