"""`rpathfix doctor`: what a Python interpreter would load, what will fail, why, and the
command that fixes each thing.

The interpreter is asked once (a small script: sys.path, its site directories, the host's
glibc, LD_LIBRARY_PATH and LD_PRELOAD as it sees them); nothing of the environment is
imported. Then, without executing anything more, the loader models load every native
file of its sys.path (as `verify` does), and the findings are sorted by cause
(causes.py). On top of verify's checks, doctor says:

- what works only because of LD_LIBRARY_PATH: the files are loaded a second time without
  it, and what is then not found is "needs-ld-library-path" (with the fix of the cause);
- what works only because of LD_PRELOAD: a name not found whose SONAME a preloaded
  library has (ld.so matches loaded objects by SONAME, LOADERS.md rule 3);
- what works only because Python code loads it first (torch's _preload_cuda_deps,
  onnxruntime's preload_dlls, cuda-pathfinder): see PRELOAD below;
- wheels of two CUDA major versions in one environment;
- no GPU driver library on this host (CUDA will be unavailable; not a layout problem);
- .pth files in sys.path directories that are not site directories (they never run);
- packages hidden by another wheel's regular package in a split sys.path (namespaces.py).

PRELOAD, the heuristic (static, so it can only say "probably"): a library L that is not
found by the loader counts as preloaded when the top-level package being imported (or
holding the library) has, in one of its .py files at most two directories deep, both a
call that loads libraries by hand (ctypes.CDLL, cdll.LoadLibrary, dlopen,
load_nvidia_dynamic_lib, preload_dlls, _preload_cuda_deps) and the name of a library of the
environment (libcublas.so, cublas): then that library and everything it needs (its
DT_NEEDED closure, within the environment) count as loaded before the import. torch's
`'cublas': 'libcublas.so.*[0-9]'` thereby covers libcublasLt, which libcublas needs. A
name is only covered when the environment has a file that provides it: the preload must
find it somewhere.
"""

from __future__ import annotations

import os
import posixpath
import re

from rpathfix.causes import Context, classify, compact_paths, fix_context
from rpathfix.environment import NativeFile, collect
from rpathfix.errors import UsageError
from rpathfix.findings import Problem, group
from rpathfix.fstree import as_cached, is_file, read_small, resolve, scan
from rpathfix.model import ElfInfo
from rpathfix.namespaces import hidden_findings, unrun_pth_files
from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rpathfix.environment import Environment
    from rpathfix.findings import Finding
    from rpathfix.fstree import FileTree
    from rpathfix.progress import Progress
    from rpathfix.verify import Report

PROBE_MARK = "rpathfix-doctor-probe:"
_PROBE = f"""
import json, os, site, sys, sysconfig
sites = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if getattr(site, "ENABLE_USER_SITE", False):
    sites.append(site.getusersitepackages())
try:
    libc = os.confstr("CS_GNU_LIBC_VERSION")
except (ValueError, OSError, AttributeError):
    libc = None
paths = sysconfig.get_paths()
print({PROBE_MARK!r} + json.dumps({{
    "executable": sys.executable,
    "version": ".".join(str(v) for v in sys.version_info[:3]),
    "sys_path": sys.path,
    "site_dirs": sites,
    "stdlib": [paths.get("stdlib"), paths.get("platstdlib")],
    "no_site": bool(sys.flags.no_site),
    "ld_library_path": os.environ.get("LD_LIBRARY_PATH"),
    "ld_preload": os.environ.get("LD_PRELOAD"),
    "glibc": libc,
}}))
"""

# Things not found that still mean "fails": the causes the loader model's misses get.
NOT_FOUND = frozenset({"split-layout", "no-path-to-provider", "runpath-not-transitive", "missing-library"})
_LOADER_CALLS = (b"CDLL", b"LoadLibrary", b"dlopen", b"load_nvidia_dynamic_lib", b"preload_dlls",
                 b"_preload_cuda_deps", b"load_library", b"PyDLL")
_CUDA_NAME = re.compile(r"(?:^|-)(?:cu|cuda)(\d{2})x?(?:-|$)")
_CUDA_LOCAL = re.compile(r"\+cu(\d{2})\d")
_CUDA_DIR = re.compile(r"/nvidia/cu(\d{2})/")
_DRIVER = ("libcuda.so.1",)
MAX_SOURCE_FILES = 2000
MAX_SOURCE_BYTES = 32 << 20


class PythonInfo(NamedTuple):
    """What the interpreter said about itself."""

    python: str  # as the user named it
    executable: str
    version: str
    sys_path: tuple[str, ...]
    site_dirs: tuple[str, ...]
    stdlib: tuple[str, ...]
    ld_library_path: str | None
    ld_preload: str | None
    glibc: str | None


def default_python() -> str:
    """The active venv's python, else python3 on PATH."""
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        for name in ("python", "python3"):
            p = os.path.join(venv, "bin", name)
            if os.path.exists(p):
                return p
    import shutil

    found = shutil.which("python3")
    if found is None:
        raise UsageError("no Python: no active venv (VIRTUAL_ENV) and no python3 on PATH; pass --python PY or PATH")
    return found


def probe_python(python: str) -> PythonInfo:
    """Ask `python` for its sys.path, site directories, environment and glibc (one run)."""
    import json
    import subprocess

    try:
        proc = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise UsageError(f"{python}: not a runnable Python interpreter: {e}") from None
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith(PROBE_MARK)), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise UsageError(f"{python}: not a runnable Python interpreter: {last}")
    try:
        raw = json.loads(line[len(PROBE_MARK):])
        return PythonInfo(python, str(raw["executable"]), str(raw["version"]),
                          tuple(str(p) for p in raw["sys_path"]), tuple(str(p) for p in raw["site_dirs"]),
                          tuple(str(p) for p in raw["stdlib"] if p), raw["ld_library_path"], raw["ld_preload"],
                          raw["glibc"])
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{python}: not a runnable Python interpreter: unexpected answer ({e})") from None


def sys_path_dirs(info: PythonInfo) -> tuple[list[str], list[str]]:
    """(the sys.path entries to check, those skipped). Checked: directories that are site
    directories or hold an installed distribution (a .dist-info or .egg-info), in sys.path
    order. Skipped: the standard library, and directories with no installed distribution
    (the working directory, a source tree), whose every file would otherwise be read."""
    std = [os.path.normpath(s) for s in info.stdlib]
    sites = {os.path.normpath(s) for s in info.site_dirs}
    out: list[str] = []
    skipped: list[str] = []
    for p in info.sys_path:
        if not p or not os.path.isabs(p) or not os.path.isdir(p):
            continue
        n = os.path.normpath(p)
        if any(n == s or n.startswith(s + os.sep + "lib-dynload") for s in std) or n in out or n in skipped:
            continue
        if n in sites or _holds_distribution(n):
            out.append(n)
        else:
            skipped.append(n)
    return out, skipped


def _holds_distribution(d: str) -> bool:
    try:
        return any(name.endswith((".dist-info", ".egg-info")) for name in os.listdir(d))
    except OSError:
        return False


class Diagnosis(NamedTuple):
    findings: list[Finding]
    env: Environment
    context: Context
    python: PythonInfo | None
    interpreter: str  # the program that imports the modules, in the simulation
    ld_library_path: str | None
    ld_preload: str | None
    skipped: tuple[str, ...] = ()  # sys.path entries not checked (no installed distribution)


def diagnose(tree: FileTree, paths: Sequence[str], *, python: PythonInfo | None, interpreter: str,
             ld_library_path: str | None, ld_preload: str | None, site_dirs: Sequence[str],
             cache_root: str | None = None, use_cache: bool = True, named: Sequence[str] = (),
             progress: Progress | None = None) -> Diagnosis:
    """Check the environment at `paths` as `interpreter` would load it; site_dirs: which of
    them are site directories (their .pth files run)."""
    from rpathfix.verify import LoaderOptions, check_environment

    tree = as_cached(tree)
    if progress:
        progress.show(f"reading {len(paths)} director{'y' if len(paths) == 1 else 'ies'}")
    env = collect(tree, list(paths))
    options = LoaderOptions(interpreter=interpreter, ld_library_path=ld_library_path or None,
                            cache_root=cache_root, use_cache=use_cache)
    if progress:
        progress.show(f"loading {len(env.files)} native files")
    actual = check_environment(tree, env, options)
    actual.findings += hidden_findings(tree, env.site_dirs)
    ctx = Context(tree, env)
    problems = classify(ctx, actual.findings)
    if ld_library_path:
        if progress:
            progress.show(f"loading {len(env.files)} native files without LD_LIBRARY_PATH")
        problems += _only_with_llp(ctx, problems, check_environment(tree, env, options._replace(ld_library_path=None)))
    problems = _relabel_preloads(ctx, problems, ld_preload)
    problems += _pth_problems(ctx, env, site_dirs)
    problems += _cuda_problems(ctx)
    problems += _driver_problems(ctx, actual, cache_root if use_cache else "")
    fixes = fix_context(ctx, named)
    if python is not None:
        sites = {os.path.normpath(s) for s in site_dirs}
        # What a venv merges: the directories on sys.path that are not site directories and
        # hold one installed wheel each (a source tree or an egg stays as it is).
        loose = tuple(p for p in env.site_dirs if os.path.normpath(p) not in sites and ctx.owners.sole(p))
        fixes = fixes._replace(paths=loose, words=tuple(compact_paths(loose)), split=len(loose) > 1,
                               python=python.python,
                               roots=tuple((d, p) for d, p in fixes.roots if p in loose))
    if progress:
        progress.done()
    return Diagnosis(group(problems, fixes), env, ctx, python, interpreter, ld_library_path, ld_preload)


def _only_with_llp(ctx: Context, problems: list[Problem], base: Report) -> list[Problem]:
    """What is not found without LD_LIBRARY_PATH but is with it."""
    failing = {(p.file, p.name) for p in problems if p.code in NOT_FOUND}
    out = []
    for p in classify(ctx, base.findings):
        if p.code in NOT_FOUND and (p.file, p.name) not in failing and p.severity != "info":
            out.append(p._replace(code="needs-ld-library-path", severity="warning", stops=None, cause=p.code))
            failing.add((p.file, p.name))
    return out


def _relabel_preloads(ctx: Context, problems: list[Problem], ld_preload: str | None) -> list[Problem]:
    """Misses that LD_PRELOAD or the package's own Python code makes good."""
    preloaded = _ld_preload_names(ctx, ld_preload)
    sources = _PreloadSources(ctx, {(p.file, p.name) for p in problems if p.code in NOT_FOUND and p.name})
    out = []
    for p in problems:
        if p.code in NOT_FOUND and p.name and p.severity in ("error", "warning"):
            leaf = posixpath.basename(p.name)
            if leaf in preloaded:
                p = p._replace(code="needs-ld-preload", severity="warning", stops=None, cause=p.code,
                               detail=f"{leaf}: LD_PRELOAD has {preloaded[leaf]}")
            elif p.provider is not None:
                where = sources.loads(p.stops or p.file, leaf)
                if where is not None:
                    p = p._replace(code="preloaded-by-python", severity="warning", stops=None, cause=p.code,
                                   detail=f"{leaf}: {where}")
        out.append(p)
    return out


def _ld_preload_names(ctx: Context, ld_preload: str | None) -> dict[str, str]:
    """Names the LD_PRELOAD objects answer to (file name and SONAME), to the entry given."""
    from rpathfix.sniff import read_binary_in

    out: dict[str, str] = {}
    for entry in (ld_preload or "").replace(":", " ").split():
        out.setdefault(posixpath.basename(entry), entry)
        real = resolve(ctx.tree, entry) if entry.startswith("/") else None
        info = read_binary_in(ctx.tree, real) if real else None
        if isinstance(info, ElfInfo) and info.soname:
            out.setdefault(info.soname, entry)
    return out


class _PreloadSources:
    """The PRELOAD heuristic of the module docstring, one package at a time."""

    def __init__(self, ctx: Context, failing: set[tuple[str, str]]) -> None:
        self.ctx = ctx
        self.failing = failing  # (file, name): what a file does not find when it is loaded by itself
        self._by_package: dict[str, dict[str, str]] = {}

    def loads(self, path: str, name: str) -> str | None:
        """Where the package holding `path` loads `name` (or a library needing it) by hand."""
        site = self.ctx.owners.site_of(path)
        if site is None:
            return None
        top = path[len(site.rstrip("/")) + 1:].split("/", 1)[0]
        key = f"{site}/{top}"
        if key not in self._by_package:
            self._by_package[key] = self._scan(key)
        return self._by_package[key].get(name)

    def _scan(self, package: str) -> dict[str, str]:
        texts = self._loader_texts(package)
        if not texts:
            return {}
        found: dict[str, str] = {}
        for name, files in sorted(self.ctx.by_name.items()):
            stem = _stem(name)
            if not stem or name in found:
                continue
            for rel, text in texts:
                at = _named_at(text, stem)
                if at is None:
                    continue
                line = text.count("\n", 0, at) + 1
                for covered in self._closure(files):
                    found.setdefault(covered, f"{rel}:{line} loads it" if covered == name else
                                     f"{rel}:{line} loads {name}, which needs it")
                break
        return found

    def _loader_texts(self, package: str) -> list[tuple[str, str]]:
        """(path relative to the site directory, text) of the package's .py files (its own
        and those one directory down) that call a library loader."""
        tree = self.ctx.tree
        site = posixpath.dirname(package)
        out: list[tuple[str, str]] = []
        budget_files, budget_bytes = MAX_SOURCE_FILES, MAX_SOURCE_BYTES
        candidates: list[str] = []
        if is_file(tree, package + ".py"):
            candidates.append(package + ".py")
        stack = [(package, 0)]
        while stack:
            d, depth = stack.pop()
            real = resolve(tree, d)
            if real is None or real == package + ".py":
                continue
            for name, kind in scan(tree, real):
                p = f"{d}/{name}"
                if kind == "dir" and depth < 1 and name != "__pycache__" and not name.startswith("."):
                    stack.append((p, depth + 1))
                elif name.endswith(".py"):
                    candidates.append(p)
        for p in sorted(candidates):
            if budget_files <= 0 or budget_bytes <= 0:
                break
            data = read_small(tree, p, 4 << 20)
            if data is None:
                continue
            budget_files -= 1
            budget_bytes -= len(data)
            if any(call in data for call in _LOADER_CALLS):
                out.append((p[len(site) + 1:], data.decode("utf-8", "replace")))
        return out

    def _closure(self, files: list[NativeFile]) -> list[str]:
        """The names of `files` and of what they load with them: loaded by path, a library's
        dependencies resolve from its own search path, so a dependency counts when the
        library finds it when loaded by itself (verify reported no miss for it)."""
        names: list[str] = []
        queue = list(files)
        seen: set[str] = set()
        while queue and len(seen) < 10_000:
            f = queue.pop()
            if f.path in seen:
                continue
            seen.add(f.path)
            names += list(f.names)
            info = f.info
            for n in info.needed if isinstance(info, ElfInfo) else ():
                if (f.path, n) not in self.failing:
                    queue += self.ctx.providers(n)
        return list(dict.fromkeys(names))


def _named_at(text: str, stem: str) -> int | None:
    """Where `text` first names the library: `stem` (cublas) or lib+stem (libcublas, as in
    'libcublas.so.*[0-9]') as a whole word."""
    start = 0
    while True:
        i = text.find(stem, start)
        if i < 0:
            return None
        begin = i - 3 if i >= 3 and text.startswith("lib", i - 3) else i
        end = i + len(stem)
        if (begin == 0 or not _is_word(text[begin - 1])) and (end == len(text) or not _is_word(text[end])):
            return begin
        start = i + 1


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _stem(name: str) -> str:
    """libcublasLt.so.13 -> cublasLt; a name too short or generic to search for gives ""."""
    base = posixpath.basename(name)
    stem = base.split(".so")[0].split(".dylib")[0]
    stem = stem[3:] if stem.startswith("lib") else stem
    return stem if len(stem) >= 4 and re.fullmatch(r"\w+", stem) else ""


def _pth_problems(ctx: Context, env: Environment, site_dirs: Sequence[str]) -> list[Problem]:
    out = []
    for pth in unrun_pth_files(ctx.tree, env.site_dirs, site_dirs):
        dist, version = ctx.dist(pth.path)
        says = []
        if pth.imports:
            says.append("its import lines will not run: "
                        + ", ".join(i if len(i) <= 40 else i[:37] + "..." for i in pth.imports))
        if pth.adds:
            says.append("will not add " + ", ".join(pth.adds) + " to sys.path")
        base = posixpath.basename(pth.path)
        out.append(Problem("pth-not-run", "warning", pth.path, dist, version, base,
                           detail=f"{base}: {'; '.join(says) or 'empty'}"))
    return out


def _cuda_problems(ctx: Context) -> list[Problem]:
    """Wheels built for different CUDA majors: by name (-cu12, cuda12x), local version
    (+cu130) or a nvidia/cuNN/ directory (CUDA 13 wheels share nvidia/cu13)."""
    majors: dict[str, dict[str, str]] = {}  # major -> {label: a file}
    for site in ctx.env.site_dirs:
        real = resolve(ctx.tree, site)
        if real is None:
            continue
        for name, _kind in scan(ctx.tree, real):
            if not name.endswith(".dist-info"):
                continue
            from rpathfix.names import parse_dist_info_dirname

            parsed = parse_dist_info_dirname(name)
            if parsed is None:
                continue
            m = _CUDA_NAME.search(parsed[0]) or _CUDA_LOCAL.search(parsed[1])
            if m is not None:
                majors.setdefault(m.group(1), {}).setdefault(f"{parsed[0]} {parsed[1]}", f"{site}/{name}")
    for f in ctx.env.files:
        m = _CUDA_DIR.search(f.path)
        label = ctx.owners.label(f.path)
        if m is not None and label is not None:
            majors.setdefault(m.group(1), {}).setdefault(label, f.path)
    if len(majors) < 2:
        return []
    out = []
    for major in sorted(majors):
        labels = sorted(majors[major])
        out.append(Problem("cuda-mixed", "warning", majors[major][labels[0]], None, None, f"CUDA {major}",
                           detail=f"CUDA {major}: {', '.join(labels)}"))
    return out


def _driver_problems(ctx: Context, report: Report, cache_root: str | None) -> list[Problem]:
    """No libcuda.so.1 on this host, while the environment uses CUDA."""
    from rpathfix.ldcache import load_cache
    from rpathfix.loader_glibc import default_dirs

    users: list[str] = []
    for f in ctx.env.files:
        info = f.info
        if isinstance(info, ElfInfo) and (any(n in _DRIVER for n in info.needed)
                                          or (info.soname or "").startswith("libcudart.so.")):
            users.append(f.path)
    if not users:
        return []
    cache = load_cache(posixpath.join(cache_root or "/", "etc/ld.so.cache")) if cache_root != "" else None
    arch = next((f.info.arch for f in ctx.env.files if isinstance(f.info, ElfInfo)), "x86_64")
    for name in _DRIVER:
        if cache is not None and cache.lookup(name, arch, 64) is not None:
            return []
        if any(is_file(ctx.tree, f"{d}/{name}") for d in default_dirs(arch)):
            return []
    out = []
    for path in users:
        out.append(Problem("no-gpu-driver", "warning", path, None, None, _DRIVER[0],
                           detail=f"{_DRIVER[0]} is installed with the NVIDIA driver, never with a wheel"))
    return out


def header_lines(diag: Diagnosis) -> tuple[str, ...]:
    info = diag.python
    llp = f"LD_LIBRARY_PATH={diag.ld_library_path}" if diag.ld_library_path else "LD_LIBRARY_PATH unset"
    pre = f"LD_PRELOAD={diag.ld_preload}" if diag.ld_preload else "LD_PRELOAD unset"
    if info is None:
        return (f"python: {diag.interpreter}, simulated for the PATHs given (--python PY alone asks a real one); "
                f"{llp}; {pre}",)
    glibc = f", {info.glibc}" if info.glibc else ""
    lines = [f"python: {info.python} ({info.executable}, Python {info.version}{glibc}); {llp}; {pre}"]
    if diag.skipped:
        lines.append(f"not checked (on sys.path, no installed distribution): {', '.join(diag.skipped)}")
    return tuple(lines)


def doctor_json(diag: Diagnosis) -> dict[str, object]:
    """rpathfix.doctor/1 (docs/schemas.md)."""
    from rpathfix.findings import counts
    from rpathfix.report import finding_to_json

    info = diag.python
    c = counts(diag.findings)
    dists: dict[tuple[str, str | None], dict[str, int]] = {}
    for f in diag.findings:
        if f.dist:
            dists.setdefault((f.dist, f.version), {"errors": 0, "warnings": 0, "info": 0})[
                {"error": "errors", "warning": "warnings"}.get(f.severity, "info")] += 1
    return {
        "schema": "rpathfix.doctor/1",
        "python": None if info is None else {
            "python": info.python, "executable": info.executable, "version": info.version, "glibc": info.glibc,
            "sys_path": list(info.sys_path), "site_dirs": list(info.site_dirs),
        },
        "interpreter": diag.interpreter,
        "ld_library_path": diag.ld_library_path,
        "ld_preload": diag.ld_preload,
        "paths": list(diag.env.site_dirs),
        "skipped": list(diag.skipped),
        "checked": len(diag.env.files),
        "extension_modules": sum(1 for f in diag.env.files if f.is_extension),
        "errors": c["error"], "warnings": c["warning"], "info": c["info"],
        "distributions": [{"name": n, "version": v, **k} for (n, v), k in dists.items()],
        "findings": [finding_to_json(f) for f in diag.findings],
    }
