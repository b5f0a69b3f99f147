"""Error types. Every error a user can cause ends as one line and exit code 2.

Readers raise FormatError for anything malformed so that callers (scan, ldd, verify)
can turn a corrupt file into a record or a message instead of a traceback.
"""

from __future__ import annotations


class RpathfixError(Exception):
    """Base of every error rpathfix reports to the user as a one-line message."""

    exit_code = 2


class UsageError(RpathfixError):
    """Bad arguments or an unreadable top-level input."""


class FormatError(RpathfixError):
    """A file is not a well-formed ELF, Mach-O or wheel, or reading it would exceed sane bounds."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class PlanError(RpathfixError):
    """The distributions cannot be merged into one site-packages (conflicts, two versions)."""


class EditError(RpathfixError):
    """A requested edit of a binary cannot be made (for example: Mach-O header padding too
    small). Not bad input: the file is fine, the edit does not fit; exit code 1."""

    exit_code = 1
