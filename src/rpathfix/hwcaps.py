"""The hwcaps subdirectories this machine's ld.so searches, from `ld.so --help`.

glibc searches glibc-hwcaps/<level>/ (and, up to 2.36, legacy tls/, platform and hwcap
subdirectories) inside every search directory before the directory itself (LOADERS.md
rule 20). Which ones depends on the CPU and the glibc build, so the list is asked of
ld.so, never hard-coded. Asking takes a few milliseconds: start_hwcap_probe() starts it
early, and `rpathfix venv` reads the answer after its plan without importing the loader.
"""

from __future__ import annotations

import functools
import os

from rpathfix.spawn import Output

# The host's program interpreter, per machine (the loader model's default PT_INTERP too).
DEFAULT_INTERP = {"x86_64": "/lib64/ld-linux-x86-64.so.2", "aarch64": "/lib/ld-linux-aarch64.so.1"}

_hwcaps_probe: Output | None = None


def start_hwcap_probe() -> None:
    """Start `ld.so --help` now, so host_hwcap_subdirs() has the answer when it is needed."""
    global _hwcaps_probe
    if _hwcaps_probe is None:
        interp = next((i for i in DEFAULT_INTERP.values() if os.path.exists(i)), None)
        if interp is not None:
            _hwcaps_probe = Output([interp, "--help"])


@functools.lru_cache(maxsize=1)
def host_hwcap_subdirs() -> tuple[str, ...]:
    """This machine's search subdirectories, from `ld.so --help` (rule 20: never hard-coded)."""
    start_hwcap_probe()
    text = _hwcaps_probe.text() if _hwcaps_probe is not None else None
    return parse_hwcaps_help(text) if text else ()


def parse_hwcaps_help(text: str) -> tuple[str, ...]:
    """The subdirectory sequence ld.so tries in each search directory (before the directory itself).

    glibc-hwcaps levels first, in priority order, then the legacy subdirectories that glibc
    <= 2.36 still searches (rule 20): legacy names combine as ld.so's _dl_important_hwcaps
    does, from the most specific (tls/platform/x86_64) down to single names.
    """
    out: list[str] = []
    legacy: list[str] = []
    section = ""
    for line in text.splitlines():
        if line.startswith("Subdirectories of glibc-hwcaps"):
            section = "hwcaps"
            continue
        if line.startswith("Legacy HWCAP subdirectories"):
            section = "legacy"
            continue
        if not line.startswith("  "):
            section = "" if line.strip() == "" else section
            continue
        name, _, rest = line.strip().partition(" ")
        if "searched" not in rest:
            continue
        if section == "hwcaps":
            out.append(f"glibc-hwcaps/{name}")
        elif section == "legacy":
            legacy.append(name)
    if legacy:
        # ld.so: tls first, then the platform, then hwcap names; every subset, most specific first.
        tls = "tls" in legacy
        names = [n for n in legacy if n != "tls"]
        combos: list[list[str]] = []
        n = len(names)
        for mask in range((1 << n) - 1, 0, -1):
            combos.append([names[i] for i in range(n) if mask & (1 << (n - 1 - i))])
        for c in combos:
            if tls:
                out.append("/".join(["tls", *c]))
        if tls:
            out.append("tls")
        for c in combos:
            out.append("/".join(c))
    return tuple(out)


def glibc_hwcaps_levels(subdirs: tuple[str, ...]) -> tuple[str, ...]:
    """The glibc-hwcaps level names among search subdirectories, best first: what ld.so
    matches ld.so.cache's hwcaps variants against (LOADERS.md rule 21)."""
    prefix = "glibc-hwcaps/"
    return tuple(s[len(prefix):] for s in subdirs if s.startswith(prefix))
