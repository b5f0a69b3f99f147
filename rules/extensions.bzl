"""bzlmod (Bazel >= 6) front of rpathfix_wheel and rpathfix_python. Not loadable by Bazel 4
(no module_extension): untested here; it calls the same repository rules as the WORKSPACE
macros, with the same `apparent_name`, so the generated BUILD files are the same.

MODULE.bazel:

    bazel_dep(name = "rpathfix", version = "0.1.0")
    rpathfix = use_extension("@rpathfix//rules:extensions.bzl", "rpathfix")
    rpathfix.python(name = "python_host", interpreter = "python3")
    rpathfix.wheel(name = "torch", wheel = "//third_party/wheels:torch-2.9.0-cp311-cp311-linux_x86_64.whl")
    rpathfix.wheel(name = "nvidia_cublas", wheel_path = "/abs/path/nvidia_cublas-13.1.0.3-py3-none-manylinux_2_27_x86_64.whl")
    use_repo(rpathfix, "python_host", "torch", "nvidia_cublas")

Under bzlmod a repository's own name (rctx.name) is its canonical name, not `torch`: the
generated `alias(name = "torch")` takes the name from `apparent_name`, so `@torch` (which
use_repo maps to that repository's `//:torch`) exists under both WORKSPACE and bzlmod.
"""

load(":defs.bzl", "rpathfix_python", "rpathfix_wheel_repository")

_wheel = tag_class(attrs = {
    "name": attr.string(mandatory = True, doc = "repository name"),
    "wheel": attr.label(doc = "the wheel as a label"),
    "wheel_path": attr.string(doc = "the wheel as an absolute path"),
    "missing": attr.string(doc = "what to say when the wheel does not exist"),
    "python": attr.string(doc = "interpreter the bytecode and launchers are made for"),
    "unpack_python": attr.string(doc = "interpreter that runs rpathfix unpack (default: $RPATHFIX_PYTHON, else python3)"),
    "no_compile": attr.bool(default = False),
})

_python = tag_class(attrs = {
    "name": attr.string(mandatory = True, doc = "repository name"),
    "interpreter": attr.string(default = "python3"),
})

def _rpathfix_impl(mctx):
    for mod in mctx.modules:
        for p in mod.tags.python:
            rpathfix_python(name = p.name, apparent_name = p.name, interpreter = p.interpreter)
        for w in mod.tags.wheel:
            rpathfix_wheel_repository(
                name = w.name,
                apparent_name = w.name,
                wheel_label = w.wheel,
                wheel_path = w.wheel_path,
                missing = w.missing,
                python = w.python,
                unpack_python = w.unpack_python,
                no_compile = w.no_compile,
            )

rpathfix = module_extension(
    implementation = _rpathfix_impl,
    tag_classes = {"wheel": _wheel, "python": _python},
)
