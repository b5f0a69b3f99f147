"""Distribution roots: one directory per distribution, as rules_python and `rpathfix unpack` make.

A root is either `<root>/site-packages/...` with optional bin/, include/ and data/
beside it, or a site-packages directory itself. site_packages_in() decides which, for
the planner and for `verify` alike (../shared/DESIGN.md: one answer to "is this a root
or a site-packages directory?").
"""

from __future__ import annotations

import os
import posixpath

from rpathfix.errors import UsageError
from rpathfix.fstree import is_dir
from rpathfix.names import canonicalize_name, parse_dist_info_dirname
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree

# venv kinds and the directory of a root each one is read from.
KIND_DIRS = (("site-packages", "site-packages"), ("bin", "bin"), ("include", "include"), ("data", "data"))


class Root(NamedTuple):
    """One distribution root: its name, version and the directory of each kind present."""

    path: str
    dist: str
    version: str | None
    dirs: tuple[tuple[str, str], ...]  # (kind, absolute directory)

    def dir_for(self, kind: str) -> str | None:
        for k, d in self.dirs:
            if k == kind:
                return d
        return None


def site_packages_in(tree: FileTree, path: str) -> str | None:
    """`path`/site-packages when the directory `path` is a distribution root; None when it is
    a site-packages directory itself.

    A root holds site-packages/ and no .dist-info of its own: a directory with a .dist-info
    is where distributions are installed (a package there may well be named
    `site-packages`).
    """
    site = posixpath.join(path, "site-packages")
    if not is_dir(tree, site) or any(n.endswith(".dist-info") for n in tree.listdir(path)):
        return None
    return site


def load_root(tree: FileTree, path: str) -> Root:
    """Describe the root at `path` (absolute); UsageError when it is not a directory."""
    path = os.path.abspath(path)
    if not is_dir(tree, path):
        raise UsageError(f"{path}: not a directory; pass distribution roots (directories with site-packages/)")
    site_dir = site_packages_in(tree, path)
    if site_dir is not None:
        dirs = tuple((k, posixpath.join(path, d)) for k, d in KIND_DIRS if is_dir(tree, posixpath.join(path, d)))
        site = site_dir
    else:
        dirs = (("site-packages", path),)
        site = path
    infos = [parse_dist_info_dirname(n) for n in tree.listdir(site) if n.endswith(".dist-info")]
    found = sorted({i for i in infos if i is not None})
    if len(found) == 1:
        dist, version = found[0]
    else:
        # No dist-info, or a site-packages holding several distributions: name it by its directory.
        base = posixpath.basename(path)
        dist, version = canonicalize_name(base), None
    return Root(path=path, dist=dist, version=version, dirs=dirs)
