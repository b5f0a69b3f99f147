"""Decide what a file is by its magic bytes (never by name) and read it with the right reader."""

from __future__ import annotations

import re

from rpathfix.model import BinaryInfo
from rpathfix.source import ByteSource

# Names that look like shared libraries or loadable modules: .so, .so.12, .so.12.1.3,
# .dylib, .bundle. Executables have no suffix and are candidates through their exec bit.
LIBRARY_NAME = re.compile(r"\.so(\.[0-9][0-9A-Za-z_]*)*$|\.dylib$|\.bundle$")

HEAD_SIZE = 8


def looks_like_library(name: str) -> bool:
    return LIBRARY_NAME.search(name) is not None


def binary_format(head: bytes) -> str | None:
    """"elf", "macho" or None, from the first bytes of a file."""
    from rpathfix import elf, macho

    if elf.is_elf(head):
        return "elf"
    if macho.is_macho(head):
        return "macho"
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
