"""Helpers for the Mach-O writer and code-signature tests: zig-built inputs, the peer tool
(llvm-install-name-tool-14), llvm-objdump's view of the load commands, and an independent
ad-hoc signer (hashlib straight from the format, not rpathfix.codesign) to make inputs with
signatures that no linker here writes: SHA-1 + SHA-256 directories, requirements,
entitlements, a team identifier and a CMS blob."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from pathlib import Path

from conftest import LIPO, zig_cc
from rpathfix.model import BytePatch, Edit
from rpathfix.source import FileSource

INSTALL_NAME_TOOL = shutil.which("llvm-install-name-tool-14") or shutil.which("llvm-install-name-tool")
OBJDUMP = shutil.which("llvm-objdump-14") or shutil.which("llvm-objdump")

SOURCES = {
    "dep.c": "int xdep(void) { return 1; }\n",
    "a.c": "int xdep(void);\nint xa(void) { return xdep() + 1; }\n",
    "main.c": "int xa(void);\nint main(void) { return xa(); }\n",
    "big.c": "const char xbig[4 << 20] = {1};\nint xb(void) { return xbig[7]; }\n",
}
TARGETS = {"arm64": "aarch64-macos", "x86_64": "x86_64-macos"}
RPATHS = ("@loader_path/../lib", "@loader_path")


def build_inputs(top: Path) -> dict[str, Path]:
    """Every input the tests edit, linked with zig; "fat" only when a lipo is installed."""
    out: dict[str, Path] = {}
    for arch, target in TARGETS.items():
        d = top / arch
        d.mkdir()
        for name, text in SOURCES.items():
            (d / name).write_text(text)
        zig_cc(d, target, "-shared", "-o", "libxdep.dylib", "dep.c", "-Wl,-install_name,@rpath/libxdep.dylib")
        rpath_flags = [f"-Wl,-rpath,{r}" for r in RPATHS]
        zig_cc(d, target, "-shared", "-o", "libxa.dylib", "a.c", "-L.", "-lxdep",
               "-Wl,-install_name,@rpath/libxa.dylib", "-Wl,-headerpad_max_install_names", *rpath_flags)
        out[f"dylib-{arch}"] = d / "libxa.dylib"
    d = top / "arm64"
    zig_cc(d, "aarch64-macos", "-shared", "-o", "libxtight.dylib", "a.c", "-L.", "-lxdep",
           "-Wl,-install_name,@rpath/libxtight.dylib", "-Wl,-headerpad,0", "-Wl,-rpath,@loader_path")
    out["tight"] = d / "libxtight.dylib"
    zig_cc(d, "aarch64-macos", "-o", "xexe", "main.c", "-L.", "-lxa", "-Wl,-rpath,@executable_path")
    out["exe"] = d / "xexe"
    zig_cc(d, "aarch64-macos", "-shared", "-o", "libxbig.dylib", "big.c", "-Wl,-install_name,@rpath/libxbig.dylib",
           "-Wl,-rpath,@loader_path")
    out["big"] = d / "libxbig.dylib"
    if LIPO is not None:
        fat = top / "fat" / "libxa.dylib"
        fat.parent.mkdir()
        subprocess.run([LIPO, "-create", str(out["dylib-arm64"]), str(out["dylib-x86_64"]), "-output", str(fat)],
                       check=True, capture_output=True, timeout=120)
        out["fat"] = fat
    return out


def apply(path: Path, patch: BytePatch) -> None:
    """Apply a planned patch to a file in place, in the planned order (what patch.py does
    safely through fileio; here the file is a scratch copy)."""
    with open(path, "r+b") as f:
        for off, data in patch.writes:
            f.seek(off)
            f.write(data)
        f.truncate(patch.size)


def plan(path: Path, *edits: Edit) -> BytePatch:
    from rpathfix.macho_write import plan_patch

    with FileSource(str(path)) as src:
        return plan_patch(src, edits)


def copy_to(src: Path, d: Path) -> Path:
    """A copy under the same base name (llvm signs with the output's base name as identifier)."""
    d.mkdir(parents=True, exist_ok=True)
    dst = d / src.name
    shutil.copy2(src, dst)
    return dst


def install_name_tool(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert INSTALL_NAME_TOOL is not None
    return subprocess.run([INSTALL_NAME_TOOL, *args, str(path)], capture_output=True, text=True, timeout=120)


def normalize(path: Path) -> None:
    """Let llvm-install-name-tool lay the file out its way once (segments page-rounded, string
    table rebuilt, a fresh 4 KiB-page signature): its output is a fixed point of its own
    rewrite, so edits of this file can be compared byte for byte."""
    assert install_name_tool(path, "-add_rpath", "/normalize").returncode == 0
    assert install_name_tool(path, "-delete_rpath", "/normalize").returncode == 0


EDITED_KINDS = {"LC_ID_DYLIB", "LC_LOAD_DYLIB", "LC_LOAD_WEAK_DYLIB", "LC_REEXPORT_DYLIB", "LC_LAZY_LOAD_DYLIB",
                "LC_LOAD_UPWARD_DYLIB", "LC_RPATH"}


def objdump_view(path: Path) -> dict[str, tuple[str, list[str], list[str]]]:
    """Per architecture, from `llvm-objdump --macho --private-headers --arch=all`: the mach
    header line (ncmds, sizeofcmds), the text of every install-name and LC_RPATH command with
    its index, and the kind of every command in order."""
    assert OBJDUMP is not None
    r = subprocess.run([OBJDUMP, "--macho", "--private-headers", "--arch=all", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    views: dict[str, tuple[str, list[str], list[str]]] = {}
    chunks = re.split(r"^(?:.*\(architecture (\S+)\)|\S[^\n]*):\nMach header\n", r.stdout, flags=re.M)
    # chunks: [prefix, arch-or-None, body, arch-or-None, body, ...]
    for i in range(1, len(chunks), 2):
        arch, body = chunks[i] or "thin", chunks[i + 1]
        lines = body.split("\n")
        header = " ".join(lines[1].split())
        blocks = re.split(r"^(?=Load command \d+$)", body, flags=re.M)[1:]
        kinds = [re.search(r"^\s*cmd (\S+)", b, flags=re.M).group(1) for b in blocks]  # type: ignore[union-attr]
        edited = [b.strip() for b, k in zip(blocks, kinds) if k in EDITED_KINDS]
        views[arch] = (header, edited, kinds)
    return views


# --------------------------------------------------------------------------- an independent signer

CS_ADHOC, CS_LINKER_SIGNED = 0x2, 0x20000
HASHES = {1: ("sha1", 20), 2: ("sha256", 32)}


def _digest(hash_type: int, data: bytes) -> bytes:
    algo, size = HASHES[hash_type]
    return hashlib.new(algo, data).digest()[:size]


def superblob(code: bytes, ident: str, *, hash_types: tuple[int, ...] = (2,), page_shift: int = 12,
              flags: int = CS_ADHOC | CS_LINKER_SIGNED, team: str | None = None, requirements: bytes | None = None,
              entitlements: bytes | None = None, cms: bytes | None = None,
              exec_seg: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """An embedded signature for `code` (the slice's bytes up to the signature), built from the
    format: one version-0x20400 CodeDirectory per hash type (the first in slot 0, the others
    in the alternate slots), then the requirements, entitlements and CMS blobs given."""
    specials = {2: requirements, 5: entitlements}
    n_special = max([k for k, v in specials.items() if v is not None], default=0)
    ps = 1 << page_shift
    blobs: list[tuple[int, bytes]] = []
    for i, ht in enumerate(hash_types):
        hs = HASHES[ht][1]
        ident_b = ident.encode() + b"\0"
        team_b = team.encode() + b"\0" if team else b""
        ident_off = 88
        team_off = 88 + len(ident_b) if team else 0
        hash_off = 88 + len(ident_b) + len(team_b) + n_special * hs
        special = b"".join(_digest(ht, specials[k]) if specials.get(k) is not None else bytes(hs)  # type: ignore[arg-type]
                           for k in range(n_special, 0, -1))
        pages = [code[p : p + ps] for p in range(0, len(code), ps)]
        hashes = b"".join(_digest(ht, p) for p in pages)
        length = hash_off + len(hashes)
        head = struct.pack(">IIIIIIIIIBBBBIIIIQQQQ", 0xFADE0C02, length, 0x20400, flags, hash_off, ident_off,
                           n_special, len(pages), len(code), hs, ht, 0, page_shift, 0, 0, team_off, 0, 0, *exec_seg)
        assert len(head) == 88
        blobs.append((0 if i == 0 else 0x1000 + i - 1, head + ident_b + team_b + special + hashes))
    if requirements is not None:
        blobs.append((2, requirements))
    if entitlements is not None:
        blobs.append((5, entitlements))
    if cms is not None:
        blobs.append((0x10000, struct.pack(">II", 0xFADE0B01, 8 + len(cms)) + cms))
    head_len = 12 + 8 * len(blobs)
    index, body = b"", b""
    for typ, blob in blobs:
        index += struct.pack(">II", typ, head_len + len(body))
        body += blob
    return struct.pack(">III", 0xFADE0CC0, head_len + len(body), len(blobs)) + index + body


def resign(path: Path, **kwargs: object) -> None:
    """Replace the signature of a thin 64-bit little-endian file (zig puts it last) with
    superblob(**kwargs), and fix LC_CODE_SIGNATURE's datasize and __LINKEDIT's sizes."""
    data = bytearray(path.read_bytes())
    ncmds = struct.unpack_from("<I", data, 16)[0]
    pos, sig_cmd, linkedit, text = 32, None, None, (0, 0)
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, pos)
        if cmd == 0x1D:
            sig_cmd = pos
        elif cmd == 0x19 and data[pos + 8 : pos + 24].rstrip(b"\0") == b"__LINKEDIT":
            linkedit = pos
        elif cmd == 0x19 and data[pos + 8 : pos + 24].rstrip(b"\0") == b"__TEXT":
            text = struct.unpack_from("<QQ", data, pos + 40)
        pos += size
    assert sig_cmd is not None and linkedit is not None
    dataoff = struct.unpack_from("<I", data, sig_cmd + 8)[0]
    kwargs.setdefault("exec_seg", (text[0], text[1], 0))
    blob = superblob(bytes(data[:dataoff]), **kwargs)  # type: ignore[arg-type]
    datasize = -(-len(blob) // 16) * 16
    struct.pack_into("<I", data, sig_cmd + 12, datasize)
    fileoff = struct.unpack_from("<Q", data, linkedit + 40)[0]
    filesize = dataoff + datasize - fileoff
    struct.pack_into("<Q", data, linkedit + 32, -(-filesize // 0x4000) * 0x4000)  # vmsize
    struct.pack_into("<Q", data, linkedit + 48, filesize)
    # header changed (datasize, __LINKEDIT): sign again over the final header
    blob = superblob(bytes(data[:dataoff]), **kwargs)  # type: ignore[arg-type]
    path.write_bytes(bytes(data[:dataoff]) + blob.ljust(datasize, b"\0"))


def find_command(data: bytes, wanted: int) -> int:
    """Offset of the first load command of kind `wanted` in a thin 64-bit little-endian file."""
    ncmds = struct.unpack_from("<I", data, 16)[0]
    pos = 32
    for _ in range(ncmds):
        cmd, size = struct.unpack_from("<II", data, pos)
        if cmd == wanted:
            return pos
        pos += size
    raise AssertionError(f"no load command {wanted:#x}")


def synthetic_32(little_endian: bool) -> bytes:
    """A minimal 32-bit dylib (i386 little-endian, or ppc big-endian), for what no installed
    linker writes: LC_SEGMENT with one section at 0x1000 (so 4 KiB of header padding),
    LC_ID_DYLIB, LC_LOAD_DYLIB, LC_RPATH and an empty LC_SYMTAB; load commands 4-aligned as
    ld64 makes them in 32-bit files."""
    e = "<" if little_endian else ">"

    def lc_str(cmd: int, fixed: int, s: str, extra: bytes = b"") -> bytes:
        raw = s.encode()
        size = -(-(fixed + len(raw) + 1) // 4) * 4
        return struct.pack(e + "III", cmd, size, fixed) + extra + raw.ljust(size - fixed, b"\0")

    versions = struct.pack(e + "III", 2, 0x10000, 0x10000)
    sect = struct.pack(e + "16s16sIIIIIIIII", b"__text", b"__TEXT", 0x1000, 16, 0x1000, 2, 0, 0, 0x80000400, 0, 0)
    cmds = [
        struct.pack(e + "II16sIIIIiiII", 1, 56 + 68, b"__TEXT", 0, 0x2000, 0, 0x1010, 5, 5, 1, 0) + sect,
        lc_str(0xD, 24, "@rpath/libx32.dylib", versions),
        lc_str(0xC, 24, "/usr/lib/libSystem.B.dylib", versions),
        lc_str(0x8000001C, 12, "@loader_path"),
        struct.pack(e + "IIIIII", 2, 24, 0, 0, 0, 0),
    ]
    body = b"".join(cmds)
    cputype = 7 if little_endian else 18
    hdr = struct.pack(e + "IiiIIII", 0xFEEDFACE, cputype, 3 if little_endian else 0, 6, len(cmds), len(body),
                      0x100085)
    return (hdr + body).ljust(0x1000, b"\0") + b"\x90" * 16
