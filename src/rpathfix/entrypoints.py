"""Console and GUI script entry points read from a distribution's entry_points.txt.

Used when a root has no bin/ of its own (rules_python's whl_library does not always
generate launchers), so the venv still gets working console scripts.
"""

from __future__ import annotations

import posixpath

from rpathfix.fstree import read_small
from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from rpathfix.fstree import FileTree

SCRIPT_GROUPS = ("console_scripts", "gui_scripts")


def parse_entry_points(text: str) -> list[tuple[str, str, str]]:
    """(group, name, "module:attr") for the script groups, in file order."""
    if not any(g in text for g in SCRIPT_GROUPS):
        return []  # most entry_points.txt files hold plugins only: no parser needed
    import configparser

    cp = configparser.ConfigParser(delimiters=("=",), interpolation=None, strict=False)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        cp.read_string(text)
    except configparser.Error:
        return []
    out: list[tuple[str, str, str]] = []
    for group in SCRIPT_GROUPS:
        if cp.has_section(group):
            for name, value in cp.items(group):
                out.append((group, name.strip(), value.strip()))
    return out


def root_entry_points(tree: FileTree, site_dir: str) -> list[tuple[str, str, str]]:
    """Script entry points of every .dist-info directly in site_dir."""
    out: list[tuple[str, str, str]] = []
    for name in tree.listdir(site_dir):
        if not name.endswith(".dist-info"):
            continue
        data = read_small(tree, posixpath.join(site_dir, name, "entry_points.txt"), 1 << 20)
        if data is not None:
            out.extend(parse_entry_points(data.decode("utf-8", "replace")))
    return out
