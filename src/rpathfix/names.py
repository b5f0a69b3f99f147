"""Distribution names, versions and wheel file names, normalized as pip and PyPI do.

Small pure functions. scan imports these on its start-up path, so they avoid
importing packaging.tags (which pulls in sysconfig and platform probing).
"""

from __future__ import annotations

import re

from rpathfix.errors import FormatError

_NORMALIZE = re.compile(r"[-_.]+")
# {distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl (PEP 427)
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-(?P<build>\d[^-]*))?-[^-]+-[^-]+-[^-]+\.whl$")
_DIST_INFO = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)\.dist-info$")


def canonicalize_name(name: str) -> str:
    """PEP 503 normalization: runs of -, _ and . become one '-', lower case."""
    return _NORMALIZE.sub("-", name).lower()


def normalize_version(version: str) -> str:
    """PEP 440 normal form ("2.14.1+CU130" -> "2.14.1+cu130"); unparsable versions stay as they are."""
    if _is_plain_release(version):
        return version  # already normal; spares scan the import of packaging.version
    from packaging.version import InvalidVersion, Version

    try:
        return str(Version(version))
    except InvalidVersion:
        return version


def _is_plain_release(version: str) -> bool:
    """True for "1", "2.14.1", "2026.9.0": dot-separated ASCII numbers without leading zeros."""
    for part in version.split("."):
        if not (part.isascii() and part.isdigit()) or (part[0] == "0" and len(part) > 1):
            return False
    return True


def parse_wheel_filename(path: str) -> tuple[str, str]:
    """(normalized name, normalized version) of a wheel file name; FormatError when it is not one."""
    base = path.rsplit("/", 1)[-1]
    m = _WHEEL.match(base)
    if m is None:
        raise FormatError(path, "not a wheel file name (expected name-version-python-abi-platform.whl)")
    return canonicalize_name(m["name"]), normalize_version(m["version"])


def parse_dist_info_dirname(dirname: str) -> tuple[str, str] | None:
    """(normalized name, normalized version) of a `name-version.dist-info` directory name."""
    m = _DIST_INFO.match(dirname)
    if m is None:
        return None
    return canonicalize_name(m["name"]), normalize_version(m["version"])
