"""Bazel rules for rpathfix: per-binary venvs whose native libraries load through their own RPATHs.

Only Bazel built-ins are used (no rules_python, no rules_cc); works with Bazel 4.2.3 and
avoids APIs removed in later Bazel versions. See docs/bazel.md.

    load("@rpathfix//rules:defs.bzl", "rpathfix_wheel", "rpathfix_dist", "rpathfix_venv",
         "py_venv_binary", "py_venv_test", "rpathfix_verify_test", "RpathfixDistInfo")

Two interpreters are involved:
  * the rpathfix interpreter runs `python -m rpathfix` (with PYTHONPATH set to this
    repository's src/); it needs rpathfix's dependencies (packaging, installer). It is the
    `rpathfix_python` attribute, else the environment variable RPATHFIX_PYTHON, else "python3".
  * the venv interpreter becomes the venv's bin/python (and compiles the wheels' bytecode). It
    is the `python` attribute, else the base interpreter of the rpathfix interpreter.
rpathfix_wheel resolves both when the repository is fetched and records them in
RpathfixDistInfo, so build and test actions do not depend on the client environment.
"""

RpathfixDistInfo = provider(
    doc = "One distribution root made from one wheel: <root>/site-packages, bin, include, data.",
    fields = {
        "root": "exec path of the distribution root directory (the one holding site-packages/)",
        "files": "depset of the root's files",
        "python": "absolute path of the venv interpreter the root was unpacked for, or \"\"",
        "rpathfix_python": "absolute path of the interpreter that runs rpathfix, or \"\"",
    },
)

RpathfixVenvInfo = provider(
    doc = "A venv written by rpathfix_venv (a tree artifact).",
    fields = {
        "venv": "the venv directory (tree artifact File)",
        "python": "the venv interpreter (absolute path) or \"\"",
        "rpathfix_python": "the rpathfix interpreter (absolute path) or \"\"",
    },
)

_LINK_MODES = ["hardlink", "copy"]

# ---------------------------------------------------------------------------------------
# Repository rule: one wheel -> one distribution root (like rules_python's whl_library).
# ---------------------------------------------------------------------------------------

_PROBE = """
import sys
try:
    import installer, packaging  # noqa: F401  rpathfix unpack needs them
    import rpathfix
except ImportError as e:
    sys.stderr.write("rpathfix: %s cannot run rpathfix: %s (install rpathfix, or 'packaging' and 'installer')\\n" % (sys.executable, e))
    sys.exit(3)
print(sys.executable)
print(getattr(sys, "_base_executable", sys.executable))
"""

_MOVE = """
import os, sys
top = sys.argv[1]
names = sorted(os.listdir(top))
if len(names) != 1:
    sys.exit("rpathfix_wheel: expected one distribution root in %s, found %r" % (top, names))
root = os.path.join(top, names[0])
for child in sorted(os.listdir(root)):
    os.rename(os.path.join(root, child), child)
os.rmdir(root)
os.rmdir(top)
print(names[0])
"""

def _src_dir(rctx):
    # Label(...) with an explicit repository name: Bazel 4 resolves "//..." in Label() of an
    # external .bzl against the main repository. Under bzlmod "@rpathfix" is this module.
    return str(rctx.path(Label("@rpathfix//:WORKSPACE")).dirname) + "/src"

def _resolve_interpreter(rctx, name, what):
    if name.startswith("/"):
        return name
    if "/" in name:
        fail("rpathfix: %s %r must be an absolute path or a command name on PATH" % (what, name))
    found = rctx.which(name)
    if not found:
        fail("rpathfix: %s %r is not on PATH (set RPATHFIX_PYTHON or the rpathfix_python attribute)" % (what, name))
    return str(found)

def _rpathfix_wheel_repository_impl(rctx):
    if rctx.attr.wheel_label and rctx.attr.wheel_path:
        fail("rpathfix_wheel: give the wheel as a label or as an absolute path, not both")
    if rctx.attr.wheel_label:
        wheel = rctx.path(rctx.attr.wheel_label)
    elif rctx.attr.wheel_path.startswith("/"):
        wheel = rctx.path(rctx.attr.wheel_path)
    else:
        fail("rpathfix_wheel: wheel must be a label or an absolute path, got %r" % rctx.attr.wheel_path)
    if not wheel.exists:
        fail("rpathfix_wheel: wheel %s does not exist" % wheel)

    rpy_name = rctx.attr.rpathfix_python or rctx.os.environ.get("RPATHFIX_PYTHON", "") or "python3"
    rpy = _resolve_interpreter(rctx, rpy_name, "rpathfix interpreter")
    env = {"PYTHONPATH": _src_dir(rctx), "PYTHONDONTWRITEBYTECODE": "1"}

    probe = rctx.execute([rpy, "-c", _PROBE], environment = env)
    if probe.return_code != 0:
        fail("rpathfix_wheel(%s): the rpathfix interpreter %s does not work:\n%s%s" % (
            rctx.name,
            rpy,
            probe.stdout,
            probe.stderr,
        ))
    lines = probe.stdout.strip().split("\n")

    # The interpreter's own path, not a resolved symlink: a venv's bin/python must stay as is.
    rpathfix_python = rpy if rpy_name.startswith("/") else lines[0]
    python = rctx.attr.python
    if python:
        python = _resolve_interpreter(rctx, python, "venv interpreter")
    else:
        python = lines[1]

    cmd = [rpy, "-m", "rpathfix", "unpack", str(wheel), "--into", "_rpathfix_unpack", "--python", python]
    if rctx.attr.no_compile:
        cmd.append("--no-compile")
    res = rctx.execute(cmd, environment = env, quiet = rctx.attr.quiet)
    if res.return_code != 0:
        fail("rpathfix_wheel(%s): rpathfix unpack failed (exit %d):\n%s%s" % (
            rctx.name,
            res.return_code,
            res.stdout,
            res.stderr,
        ))
    moved = rctx.execute([rpy, "-c", _MOVE, "_rpathfix_unpack"], environment = env)
    if moved.return_code != 0:
        fail("rpathfix_wheel(%s): %s" % (rctx.name, moved.stderr))
    dist = moved.stdout.strip()

    rctx.file("WORKSPACE", "workspace(name = %s)\n" % repr(rctx.name))
    rctx.file("BUILD.bazel", """# Generated by @rpathfix//rules:defs.bzl rpathfix_wheel from {wheel}
load("@rpathfix//rules:defs.bzl", "rpathfix_dist")

package(default_visibility = ["//visibility:public"])

# Distribution {dist}: this repository's root is its distribution root.
filegroup(
    name = "files",
    # Bazel labels cannot hold some file names (spaces): such files are left out.
    srcs = glob(["site-packages/**", "bin/**", "include/**", "data/**"], exclude = ["**/* *"], allow_empty = True),
)

rpathfix_dist(
    name = "dist",
    srcs = [":files"],
    root = "",
    python = {python},
    rpathfix_python = {rpathfix_python},
)

alias(
    name = {name},
    actual = ":dist",
)
""".format(
        wheel = wheel.basename,
        dist = dist,
        name = repr(rctx.name),
        python = repr(python),
        rpathfix_python = repr(rpathfix_python),
    ))

rpathfix_wheel_repository = repository_rule(
    implementation = _rpathfix_wheel_repository_impl,
    doc = "Unpack one wheel with `rpathfix unpack` into a repository whose root is the distribution root.",
    attrs = {
        "wheel_label": attr.label(allow_single_file = [".whl"], doc = "the wheel as a label"),
        "wheel_path": attr.string(doc = "the wheel as an absolute path"),
        "python": attr.string(doc = "venv interpreter (absolute path or command on PATH); default: the base interpreter of the rpathfix interpreter"),
        "rpathfix_python": attr.string(doc = "interpreter that runs rpathfix; default: $RPATHFIX_PYTHON, else python3"),
        "no_compile": attr.bool(default = False, doc = "do not write .pyc files"),
        "quiet": attr.bool(default = True),
    },
    environ = ["RPATHFIX_PYTHON"],
)

def rpathfix_wheel(name, wheel, python = "", rpathfix_python = "", **kwargs):
    """Unpack `wheel` (a label, or an absolute path) into the repository @name.

    The repository's targets: `@name` (= `@name//:name`, the RpathfixDistInfo for rpathfix_venv
    deps), `@name//:dist` (the same) and `@name//:files` (all files of the root).
    """
    if wheel.startswith("/"):
        rpathfix_wheel_repository(name = name, wheel_path = wheel, python = python, rpathfix_python = rpathfix_python, **kwargs)
    else:
        rpathfix_wheel_repository(name = name, wheel_label = wheel, python = python, rpathfix_python = rpathfix_python, **kwargs)

# ---------------------------------------------------------------------------------------
# rpathfix_dist: files of a distribution root (from rpathfix_wheel, or rules_python).
# ---------------------------------------------------------------------------------------

def _rel(f):
    """A file's path without its output root (bazel-out/.../bin/) prefix."""
    if f.root.path:
        return f.path[len(f.root.path) + 1:]
    return f.path

def _rpathfix_dist_impl(ctx):
    if not ctx.attr.srcs:
        fail("rpathfix_dist: srcs is empty")
    base = ctx.attr.srcs[0].label.workspace_root
    root = ctx.attr.root.strip("/")
    if root:
        base = base + "/" + root if base else root
    prefix = base + "/" if base else ""

    transitive = []
    for t in ctx.attr.srcs:
        transitive.append(t[DefaultInfo].files)
        transitive.append(t[DefaultInfo].default_runfiles.files)
    kept = []
    out_roots = {}
    for f in depset(transitive = transitive).to_list():
        if f.is_directory:
            continue
        if _rel(f).startswith(prefix + "site-packages/") or (
            _rel(f).startswith(prefix) and _rel(f)[len(prefix):].split("/")[0] in ("bin", "include", "data")
        ):
            kept.append(f)
            out_roots[f.root.path] = True
    if not kept:
        fail("rpathfix_dist(%s): no file of srcs lies under %s/site-packages" % (ctx.label, base or "."))
    if len(out_roots) != 1:
        fail("rpathfix_dist(%s): the files under %s come from several output roots %s" % (
            ctx.label,
            base,
            sorted(out_roots.keys()),
        ))
    out_root = out_roots.keys()[0]
    exec_root = "/".join([p for p in [out_root, base] if p]) or "."
    files = depset(kept)
    return [
        DefaultInfo(files = files),
        RpathfixDistInfo(
            root = exec_root,
            files = files,
            python = ctx.attr.python,
            rpathfix_python = ctx.attr.rpathfix_python,
        ),
    ]

rpathfix_dist = rule(
    implementation = _rpathfix_dist_impl,
    doc = """A distribution root made of existing files, e.g. a rules_python whl_library repository.

`root` is the directory holding site-packages/, relative to the root of the repository of the
first target in `srcs` ("" = that repository's root, where whl_library and rpathfix_wheel put
site-packages/). Files of `srcs` (and of their runfiles) outside the root are ignored.""",
    attrs = {
        "srcs": attr.label_list(allow_files = True, mandatory = True),
        "root": attr.string(default = ""),
        "python": attr.string(doc = "venv interpreter the files were installed for (absolute path)"),
        "rpathfix_python": attr.string(doc = "interpreter that runs rpathfix (absolute path)"),
    },
    provides = [RpathfixDistInfo],
)

# ---------------------------------------------------------------------------------------
# rpathfix_venv: plan + verify + write, one action, one tree artifact.
# ---------------------------------------------------------------------------------------

def _agree(explicit, values, what, label):
    if explicit:
        return explicit
    found = sorted({v: True for v in values if v}.keys())
    if len(found) > 1:
        fail("rpathfix_venv(%s): deps disagree on the %s: %s; set the attribute" % (label, what, found))
    return found[0] if found else ""

def _rpathfix_src(files):
    """Exec path and runfiles path of the src/ directory holding the rpathfix package."""
    for f in files:
        if f.path.endswith("src/rpathfix/__init__.py") and f.basename == "__init__.py" and f.dirname.endswith("src/rpathfix"):
            return f
    fail("rpathfix: rpathfix sources not found in @rpathfix//:rpathfix_srcs")

def _dirname2(path):
    return path.rpartition("/")[0].rpartition("/")[0]

_VENV_CMD = """set -eu
RPY="$1"; PY="$2"; SRC="$3"; OUT="$4"; MODE="$5"; shift 5
if [ -z "$RPY" ]; then RPY="${RPATHFIX_PYTHON:-python3}"; fi
PYTHONPATH="$PWD/$SRC"; export PYTHONPATH
PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE
# Sandboxed actions see each input file as an absolute symlink into the execroot;
# `rpathfix venv` reads the binaries behind those links and writes hardlinks or copies
# of the real files (symlinks cannot leave a tree artifact).
if [ -n "$PY" ]; then
  "$RPY" -m rpathfix venv --link-mode "$MODE" --python "$PY" "$OUT" "$@"
else
  "$RPY" -m rpathfix venv --link-mode "$MODE" "$OUT" "$@"
fi
"""

def _rpathfix_venv_impl(ctx):
    dists = [d[RpathfixDistInfo] for d in ctx.attr.deps]
    python = _agree(ctx.attr.python, [d.python for d in dists], "venv interpreter (python)", ctx.label)
    rpy = _agree(ctx.attr.rpathfix_python, [d.rpathfix_python for d in dists], "rpathfix interpreter", ctx.label)
    src_init = _rpathfix_src(ctx.files._rpathfix_srcs)
    roots = {}
    for d in dists:
        if d.root in roots:
            fail("rpathfix_venv(%s): two deps share the root %s" % (ctx.label, d.root))
        roots[d.root] = True

    out = ctx.actions.declare_directory(ctx.label.name)
    args = ctx.actions.args()
    args.add_all([rpy, python, _dirname2(src_init.path), out.path, ctx.attr.link_mode])
    args.add_all([d.root for d in dists])
    ctx.actions.run_shell(
        command = _VENV_CMD,
        arguments = [args],
        inputs = depset(ctx.files._rpathfix_srcs, transitive = [d.files for d in dists]),
        outputs = [out],
        mnemonic = "RpathfixVenv",
        progress_message = "Writing and verifying venv %s" % ctx.label,
        # --action_env=RPATHFIX_PYTHON reaches the action when no dep recorded an interpreter.
        use_default_shell_env = True,
    )
    return [
        DefaultInfo(files = depset([out]), runfiles = ctx.runfiles(files = [out])),
        RpathfixVenvInfo(venv = out, python = python, rpathfix_python = rpy),
    ]

rpathfix_venv = rule(
    implementation = _rpathfix_venv_impl,
    doc = """A venv (tree artifact) merging the distribution roots of `deps`, written by one
`rpathfix venv` action that plans, verifies with the loader model and writes. The build fails
(printing the trace that names the missing library) when an extension module would not load.""",
    attrs = {
        "deps": attr.label_list(providers = [RpathfixDistInfo], mandatory = True),
        "python": attr.string(doc = "venv interpreter (absolute path); default: the one the deps were unpacked for"),
        "rpathfix_python": attr.string(doc = "interpreter that runs rpathfix; default: the deps', else $RPATHFIX_PYTHON (--action_env), else python3"),
        "link_mode": attr.string(default = "hardlink", values = _LINK_MODES, doc = "how files reach the tree artifact (symlinks are not allowed there)"),
        "_rpathfix_srcs": attr.label(default = Label("@rpathfix//:rpathfix_srcs"), allow_files = True),
    },
    provides = [RpathfixVenvInfo],
)

# ---------------------------------------------------------------------------------------
# Executables: py_venv_binary, py_venv_test, rpathfix_verify_test.
# ---------------------------------------------------------------------------------------

def _rlocation(ctx, f):
    """The path of `f` below the runfiles directory."""
    if f.short_path.startswith("../"):
        return f.short_path[3:]
    return ctx.workspace_name + "/" + f.short_path

_RUNFILES_PRELUDE = """#!/usr/bin/env bash
set -eu
if [ -z "${RUNFILES_DIR:-}" ]; then
  if [ -n "${TEST_SRCDIR:-}" ]; then RUNFILES_DIR="$TEST_SRCDIR"
  elif [ -d "$0.runfiles" ]; then RUNFILES_DIR="$0.runfiles"
  else echo "$0: cannot find the runfiles directory" >&2; exit 1
  fi
fi
"""

def _py_venv_executable_impl(ctx):
    venv = ctx.attr.venv[RpathfixVenvInfo].venv
    launcher = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.write(
        output = launcher,
        is_executable = True,
        content = _RUNFILES_PRELUDE + """# Generated by rpathfix py_venv_binary: the venv's own interpreter runs the main file;
# native libraries load through their RPATHs inside the venv (no LD_LIBRARY_PATH).
exec "$RUNFILES_DIR/{venv}/bin/python" "$RUNFILES_DIR/{main}" "$@"
""".format(venv = _rlocation(ctx, venv), main = _rlocation(ctx, ctx.file.main)),
    )
    runfiles = ctx.runfiles(files = [venv, ctx.file.main] + ctx.files.data)
    for d in ctx.attr.data:
        runfiles = runfiles.merge(d[DefaultInfo].default_runfiles)
    return [DefaultInfo(executable = launcher, files = depset([launcher]), runfiles = runfiles)]

_PY_VENV_ATTRS = {
    "main": attr.label(allow_single_file = [".py"], mandatory = True),
    "venv": attr.label(providers = [RpathfixVenvInfo], mandatory = True),
    "data": attr.label_list(allow_files = True),
}

py_venv_binary = rule(
    implementation = _py_venv_executable_impl,
    doc = "Run `main` with the interpreter of an rpathfix_venv (bazel run).",
    attrs = _PY_VENV_ATTRS,
    executable = True,
)

py_venv_test = rule(
    implementation = _py_venv_executable_impl,
    doc = "Run `main` with the interpreter of an rpathfix_venv as a test (exit 0 passes).",
    attrs = _PY_VENV_ATTRS,
    test = True,
)

def _rpathfix_verify_test_impl(ctx):
    info = ctx.attr.venv[RpathfixVenvInfo]
    src_init = _rpathfix_src(ctx.files._rpathfix_srcs)
    launcher = ctx.actions.declare_file(ctx.label.name)
    extra = " ".join(['"%s"' % a.replace('"', '\\"') for a in ctx.attr.verify_args])
    ctx.actions.write(
        output = launcher,
        is_executable = True,
        content = _RUNFILES_PRELUDE + """# Generated by rpathfix rpathfix_verify_test: `rpathfix verify` on the venv, at test time.
RPY="{rpy}"
if [ -z "$RPY" ]; then RPY="${{RPATHFIX_PYTHON:-python3}}"; fi
PYTHONPATH="$RUNFILES_DIR/{src}"; export PYTHONPATH
PYTHONDONTWRITEBYTECODE=1; export PYTHONDONTWRITEBYTECODE
exec "$RPY" -m rpathfix verify {extra} "$RUNFILES_DIR/{venv}"
""".format(
            rpy = info.rpathfix_python,
            src = _dirname2(_rlocation(ctx, src_init)),
            venv = _rlocation(ctx, info.venv),
            extra = extra,
        ),
    )
    runfiles = ctx.runfiles(files = [info.venv] + ctx.files._rpathfix_srcs)
    return [DefaultInfo(executable = launcher, files = depset([launcher]), runfiles = runfiles)]

rpathfix_verify_test = rule(
    implementation = _rpathfix_verify_test_impl,
    doc = "Run `rpathfix verify` on an rpathfix_venv at test time (exit 0 passes).",
    attrs = {
        "venv": attr.label(providers = [RpathfixVenvInfo], mandatory = True),
        "verify_args": attr.string_list(doc = "extra arguments, e.g. [\"--strict\"]"),
        "_rpathfix_srcs": attr.label(default = Label("@rpathfix//:rpathfix_srcs"), allow_files = True),
    },
    test = True,
)

# ---------------------------------------------------------------------------------------
# Offline Bazel 4 (e.g. Debian's bazel-bootstrap): every test rule depends on the coverage
# tools, which Bazel downloads (@remote_coverage_tools). Point the coverage flags at this
# do-nothing executable to run tests offline:
#   build --coverage_report_generator=@rpathfix//rules:no_coverage_tool
#   build --coverage_output_generator=@rpathfix//rules:no_coverage_tool
# ---------------------------------------------------------------------------------------

def _no_coverage_tool_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".sh")
    ctx.actions.write(
        output = out,
        is_executable = True,
        content = "#!/bin/sh\necho 'rpathfix: coverage tools are not available offline' >&2\nexit 0\n",
    )
    return [DefaultInfo(executable = out, files = depset([out]))]

no_coverage_tool = rule(
    implementation = _no_coverage_tool_impl,
    doc = "A do-nothing executable standing in for Bazel's downloaded coverage tools.",
    executable = True,
)
