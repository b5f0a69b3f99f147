"""Findings: what is wrong with a Python environment, why, and the command that fixes it.

`verify` and `doctor` both end here. A Problem is one fact (one file, one needed name,
one cause); a Finding groups the Problems of one cause in one distribution, so that "11
libraries torch needs are in other wheels" is said once, not eleven times with eleven
traces. Each cause is an entry of CAUSES (its code, the sentence that explains it, the
command that fixes it): a new kind of problem (a symbol version the host lacks, an
undefined symbol, a library assumed loaded) slots in by adding its code there, and a code
that is not there yet is still grouped and shown, with a generic sentence.

Plain data and pure functions: the checks that produce Problems live in causes.py
(verify's findings, by cause), namespaces.py and doctor.py; report.py prints Findings.
"""

from __future__ import annotations

import shlex

from rpathfix.static import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from rpathfix.resolution import Attempt

SEVERITIES = ("error", "warning", "info")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class Problem(NamedTuple):
    """One fact about the environment.

    file: the file (or directory) concerned, as an absolute path in the environment.
    name: what it concerns: the needed library, the symbol version, the hidden package.
    provider / provider_dist: a file in the environment that provides `name`, and its
    distribution label ("nvidia-cublas 13.1.1.3").
    stops: the extension module or program that will not load because of it (for a
    dependency deep in an import's closure, the module being imported).
    cause: for a problem said in terms of how it works today (LD_LIBRARY_PATH, a preload
    in Python code), the structural cause whose fix applies ("split-layout").
    """

    code: str
    severity: str
    file: str
    dist: str | None = None
    version: str | None = None
    name: str | None = None
    provider: str | None = None
    provider_dist: str | None = None
    stops: str | None = None
    detail: str = ""
    cause: str | None = None
    trace: tuple[Attempt, ...] = ()


class Finding(NamedTuple):
    """The Problems of one cause in one distribution, explained once, with one fix."""

    code: str
    severity: str
    dist: str | None
    version: str | None
    subjects: tuple[str, ...]  # the files concerned, absolute, sorted
    explanation: str
    fix: str | None
    problems: tuple[Problem, ...]

    @property
    def names(self) -> list[str]:
        """The distinct names the problems concern, in order of first appearance."""
        return list(dict.fromkeys(p.name or p.file for p in self.problems))


class FixContext(NamedTuple):
    """What a fix command needs to be runnable as printed.

    paths: the sys.path directories as the user named them (for `rpathfix venv OUT PATH...`),
    split: whether they form a split layout (several directories that are not one site-packages).
    roots: distribution -> its directory as the user named it (for `rpathfix repair --with`).
    out: a directory name that does not exist yet, for a new venv.
    """

    paths: tuple[str, ...] = ()
    split: bool = False
    roots: tuple[tuple[str, str], ...] = ()
    out: str = "venv"
    sites: tuple[str, ...] = ()  # the sys.path directories, absolute, in the order of `paths`
    python: str | None = None  # the interpreter a new venv is for (None: rpathfix's default)
    words: tuple[str, ...] = ()  # `paths` as a command line writes them (causes.compact_paths)
    # The check of a venv about to be written: the `rpathfix venv --repair ...` command that
    # writes it with patched copies of the files that cannot reach their providers.
    venv_repair: str | None = None

    def root_of(self, dist: str | None) -> str | None:
        for d, path in self.roots:
            if d == dist:
                return path
        return None


def _venv_fix(problems: Sequence[Problem], ctx: FixContext) -> str | None:
    """Merge the per-wheel directories into one venv: what every split-layout problem needs."""
    if not ctx.split or not ctx.paths:
        return None
    python = ["--python", shlex.quote(ctx.python)] if ctx.python else []
    words = ctx.words or tuple(shlex.quote(p) for p in ctx.paths)
    return " ".join(["rpathfix", "venv", shlex.quote(ctx.out), *words, *python])


def _repair_fix(problems: Sequence[Problem], ctx: FixContext) -> str | None:
    """Give the distribution's libraries a path to the wheels that provide what they need.

    The installed environment does not hold the wheel, so the command fetches it first;
    the providers are named by their directories (repair takes roots as siblings). In the
    check of a venv about to be written, the same venv with --repair: patched copies there."""
    if ctx.venv_repair is not None:
        return ctx.venv_repair
    first = problems[0]
    if first.dist is None:
        return None
    siblings: list[str] = []
    for p in problems:
        pdist = p.provider_dist.split(" ")[0] if p.provider_dist else None
        if p.provider is None or pdist == first.dist:
            continue  # a library of the wheel itself: repair finds it without being told
        where = ctx.root_of(pdist) or _site_of(p.provider, ctx)
        if where is not None and where not in siblings:
            siblings.append(where)
    pin = f"{first.dist}=={first.version}" if first.version else first.dist
    stem = first.dist.replace("-", "_")
    wheel = f"wheels/{stem}-{first.version}-*.whl" if first.version else f"wheels/{stem}-*.whl"
    cmd = f"pip download {shlex.quote(pin)} --no-deps -d wheels && rpathfix repair {wheel}"
    for s in siblings:
        cmd += f" --with {shlex.quote(s)}"
    return cmd + " --out wheels/repaired"


def _venv_repair_fix(problems: Sequence[Problem], ctx: FixContext) -> str | None:
    """In the check of a venv about to be written: its --repair command (a patched copy
    reaches the library on its own); elsewhere nothing needs fixing."""
    return ctx.venv_repair


def _site_of(path: str, ctx: FixContext) -> str | None:
    """The directory holding `path`, as the user named it when they named it."""
    for i, s in enumerate(ctx.sites):
        if path.startswith(s.rstrip("/") + "/"):
            return ctx.paths[i] if i < len(ctx.paths) and len(ctx.paths) == len(ctx.sites) else s
    return None


def _cause_fix(problems: Sequence[Problem], ctx: FixContext) -> str | None:
    """The fix of the structural cause (a problem said as "works because of LD_LIBRARY_PATH")."""
    cause = problems[0].cause
    entry = CAUSES.get(cause) if cause else None
    return entry.fix(problems, ctx) if entry is not None and entry.fix is not None else None


class Cause(NamedTuple):
    """How one code is explained and fixed.

    title: a sentence with {n} (how many distinct names), {dist} (the distribution, or "the
    environment"), {names} and {a|b} (a when n is 1, else b).
    fix: builds the command from the group's problems (None: no command fixes it).
    who: how the files concerned are introduced ("needed by libtorch_cuda.so"); None when
    the details already name them.
    show: "providers" lists the names with the wheels that provide them; "details" lists
    each problem's own line (a shadowed library: which copy loads, with both versions).
    """

    title: str
    fix: Callable[[Sequence[Problem], FixContext], str | None] | None = None
    who: str | None = "in"
    show: str = "providers"


_LIBS = "{n} {library|libraries} that {dist} needs"
_NEEDED = "needed by"
CAUSES: dict[str, Cause] = {
    # Loading (causes.py, from verify's findings)
    "split-layout": Cause(_LIBS + " {is in another wheel|are in other wheels}, not on its RPATH", _venv_fix,
                          _NEEDED),
    "no-path-to-provider": Cause(
        _LIBS + " {is|are} in this environment, but no search path of its own leads there",
        _repair_fix, _NEEDED),
    "runpath-not-transitive": Cause(
        _LIBS + " {is|are} only on the RUNPATH of the library that loads it, and ld.so does not pass RUNPATH on",
        _repair_fix, _NEEDED),
    "inherited-rpath": Cause(
        _LIBS + " {is|are} found only through the RPATH of the library that loads it (fine when loaded that way)",
        _venv_repair_fix, _NEEDED),
    "missing-library": Cause(_LIBS + " {is|are} in no wheel of this environment and not on this system",
                             None, _NEEDED),
    "shadowed": Cause("{n} {library|libraries} that {dist} needs {resolves|resolve} to a system copy, "
                      "not the wheel's", _cause_fix, _NEEDED, "details"),
    "duplicate-soname": Cause("{n} {SONAME is|SONAMEs are} provided by several different files; "
                              "whichever loads first serves every later request", None, None),
    "assumed-loaded": Cause(_LIBS + " {is|are} not found, and taken as loaded by the package at run time "
                                    "(--assume-loaded)", None, _NEEDED),
    # Symbol binding (from verify, once it binds symbols)
    "version-not-found": Cause("{n} symbol {version|versions} that {dist} needs {is|are} not provided "
                               "by the libraries it loads (a newer glibc or library is needed)", None, _NEEDED),
    "undefined-symbol": Cause("{n} {symbol|symbols} that {dist} needs {is|are} defined by no library it loads",
                              None, _NEEDED),
    # Python's view of the directories (namespaces.py)
    "namespace-shadowed": Cause("{dist} ships a regular package that hides {n} {package|packages} of other "
                                "wheels in a split sys.path", _venv_fix, "hidden by"),
    "pth-not-run": Cause("{n} .pth {file|files} will not run: {its|their} directory is not a site directory",
                         _venv_fix, None),
    # What works today only because of something outside the wheels (doctor.py)
    "needs-ld-library-path": Cause(_LIBS + " {is|are} found only through LD_LIBRARY_PATH", _cause_fix, _NEEDED),
    "needs-ld-preload": Cause(_LIBS + " {is|are} found only because LD_PRELOAD loads {it|them}", _cause_fix,
                              _NEEDED),
    "preloaded-by-python": Cause(_LIBS + " {is|are} found only because its Python code loads {it|them} first; "
                                         "the library on its own does not load", _cause_fix, _NEEDED),
    "cuda-mixed": Cause("wheels of {n} CUDA major versions are installed together; a process loads "
                        "both only if their libraries never meet", None, None),
    "no-gpu-driver": Cause("no GPU driver library ({names}) on this host: CUDA will be unavailable "
                           "(not an rpath problem)", None, _NEEDED),
}
_GENERIC = Cause("{n} {problem|problems} of kind {code} in {dist}")


def title_of(code: str, n: int, dist: str | None, names: Sequence[str] = ()) -> str:
    """The explanation sentence of a cause for n names."""
    template = CAUSES.get(code, _GENERIC).title
    out: list[str] = []
    i = 0
    while i < len(template):
        j = template.find("{", i)
        if j < 0:
            out.append(template[i:])
            break
        out.append(template[i:j])
        k = template.index("}", j)
        field = template[j + 1:k]
        if field == "n":
            out.append(str(n))
        elif field == "dist":
            out.append(dist or "the environment")
        elif field == "code":
            out.append(code)
        elif field == "names":
            out.append(", ".join(names))
        elif "|" in field:
            one, many = field.split("|", 1)
            out.append(one if n == 1 else many)
        else:
            out.append(template[j:k + 1])
        i = k + 1
    return "".join(out)


def worst(severities: Iterable[str]) -> str:
    return min(severities, key=lambda s: _RANK.get(s, len(SEVERITIES)), default="info")


def group(problems: Iterable[Problem], ctx: FixContext | None = None) -> list[Finding]:
    """One Finding per (code, distribution), worst first; problems keep their order."""
    ctx = ctx or FixContext()
    groups: dict[tuple[str, str | None], list[Problem]] = {}
    for p in problems:
        groups.setdefault((p.code, p.dist), []).append(p)
    out: list[Finding] = []
    for (code, dist), members in groups.items():
        unique = list(dict.fromkeys(members))
        names = list(dict.fromkeys(p.name or p.file for p in unique))
        cause = CAUSES.get(code)
        fix = cause.fix(unique, ctx) if cause is not None and cause.fix is not None else None
        out.append(Finding(
            code=code,
            severity=worst(p.severity for p in unique),
            dist=dist,
            version=next((p.version for p in unique if p.version), None),
            subjects=tuple(sorted({p.file for p in unique})),
            explanation=title_of(code, len(names), dist, names),
            fix=fix,
            problems=tuple(unique),
        ))
    out.sort(key=lambda f: (_RANK.get(f.severity, len(SEVERITIES)), f.dist or "", f.code))
    return out


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each severity."""
    out = {s: 0 for s in SEVERITIES}
    for f in findings:
        out[f.severity] = out.get(f.severity, 0) + 1
    return out
