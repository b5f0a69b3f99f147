"""C++ symbol names for people: `_ZN3c104impl8dispatchEi` -> `c10::impl::dispatch(int)`.

A pure-Python Itanium demangler would be larger than the loader models it serves, so the
system's demangler does the work: binutils' `c++filt`, else LLVM's `llvm-cxxfilt` (both
come with the compilers this project builds with). One process demangles every name of a
report at once. Without either tool, or for a name that is not C++, nothing is returned
and the caller shows the name as stored. Mach-O names carry one more leading underscore
(`__ZN...`), which is dropped before demangling.
"""

from __future__ import annotations

from rpathfix.static import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

TOOLS = ("c++filt", "llvm-cxxfilt", "llvm-cxxfilt-14")
MAX_NAMES = 100_000


def _tool() -> str | None:
    import shutil

    for name in TOOLS:
        path = shutil.which(name)
        if path:
            return path
    return None


def demangle(names: Iterable[str]) -> dict[str, str]:
    """The demangled form of each C++ name among `names` that the system's demangler knows."""
    wanted = sorted({n for n in names if n.startswith(("_Z", "__Z")) and "\n" not in n})[:MAX_NAMES]
    if not wanted:
        return {}
    tool = _tool()
    if tool is None:
        return {}
    import subprocess

    plain = [n[1:] if n.startswith("__Z") else n for n in wanted]
    try:
        out = subprocess.run([tool], input="\n".join(plain) + "\n", capture_output=True, text=True, timeout=30,
                             errors="surrogateescape")
    except (OSError, subprocess.SubprocessError):
        return {}
    lines = out.stdout.splitlines()
    if out.returncode != 0 or len(lines) != len(wanted):
        return {}
    return {n: d for n, p, d in zip(wanted, plain, lines) if d and d != p}
