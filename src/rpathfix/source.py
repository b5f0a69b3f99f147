"""Random-access byte sources for the readers: a file on disk or a member of a wheel.

Readers ask for small byte ranges (headers, load commands, one dynamic segment), so
a 500 MB library costs a few kilobytes of reads. Every read is bounds-checked here,
once, and a short read becomes a FormatError: readers never see partial data.
"""

from __future__ import annotations

import os

from rpathfix.errors import FormatError
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    import zipfile  # imported where used: scanning a directory never needs it
    from typing import IO, Protocol

# The largest single read any reader may request. Anything bigger comes from a
# corrupt count or size field; refusing it keeps memory independent of file size.
MAX_READ = 16 * 1024 * 1024


if TYPE_CHECKING:  # an interface for the type checker; nothing subclasses it (static.py)

    class ByteSource(Protocol):
        """What readers need: a name for messages, a size and bounded reads at offsets."""

        @property
        def name(self) -> str: ...

        @property
        def size(self) -> int: ...

        def read_at(self, offset: int, size: int) -> bytes: ...

        def close(self) -> None: ...

    class SupportsWrite(Protocol):
        """Where a writer streams bytes, in order, in chunks of any size (a file, a zip
        member being deflated, a hash)."""

        def write(self, data: bytes | memoryview, /) -> object: ...


def _check(name: str, total: int, offset: int, size: int) -> None:
    if offset < 0 or size < 0:
        raise FormatError(name, f"negative offset or size ({offset}, {size})")
    if size > MAX_READ:
        raise FormatError(name, f"refusing a {size}-byte read at offset {offset} (corrupt size field?)")
    if offset + size > total:
        raise FormatError(name, f"truncated: needs bytes {offset}..{offset + size} but the file has {total}")


class FileSource:
    """A file on disk read with pread; usable as a context manager."""

    def __init__(self, path: str) -> None:
        self._path = path
        try:
            self._fd = os.open(path, os.O_RDONLY)
            self._size = os.fstat(self._fd).st_size
        except OSError as e:
            raise FormatError(path, e.strerror or str(e)) from None

    @property
    def name(self) -> str:
        return self._path

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        _check(self._path, self._size, offset, size)
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as e:
            raise FormatError(self._path, e.strerror or str(e)) from None
        if len(data) != size:
            raise FormatError(self._path, f"short read at offset {offset}")
        return data

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BytesSource:
    """An in-memory buffer (tests, small members)."""

    def __init__(self, name: str, data: bytes) -> None:
        self._name = name
        self._data = data

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return len(self._data)

    def read_at(self, offset: int, size: int) -> bytes:
        _check(self._name, len(self._data), offset, size)
        return self._data[offset : offset + size]

    def close(self) -> None:
        pass


class ZipMemberSource:
    """A member of a zip (wheel), read in place without extracting it to disk.

    Deflated members are not randomly addressable; ZipExtFile.seek re-inflates from the
    start when asked to go backwards. Readers go forward except for one jump back to the
    string table, which lies near the start, so the cost stays about one pass.
    """

    def __init__(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, display: str) -> None:
        self._name = display
        self._size = info.file_size
        self._fh: IO[bytes] = zf.open(info)

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    def read_at(self, offset: int, size: int) -> bytes:
        _check(self._name, self._size, offset, size)
        from zipfile import BadZipFile

        try:
            self._fh.seek(offset)
            data = self._fh.read(size)
        except (OSError, BadZipFile, EOFError) as e:
            raise FormatError(self._name, f"cannot read zip member: {e}") from None
        if len(data) != size:
            raise FormatError(self._name, f"short read at offset {offset}")
        return data

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ZipMemberSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
