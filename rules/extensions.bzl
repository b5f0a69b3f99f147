"""bzlmod (Bazel >= 6) front of rpathfix_wheel. Not loadable by Bazel 4 (no module_extension).

MODULE.bazel:

    bazel_dep(name = "rpathfix", version = "0.1.0")
    rpathfix = use_extension("@rpathfix//rules:extensions.bzl", "rpathfix")
    rpathfix.wheel(name = "torch", wheel = "//third_party/wheels:torch-2.9.0-cp311-cp311-linux_x86_64.whl")
    rpathfix.wheel(name = "nvidia_cublas", wheel_path = "/abs/path/nvidia_cublas-13.1.0.3-py3-none-manylinux_2_27_x86_64.whl")
    use_repo(rpathfix, "torch", "nvidia_cublas")
"""

load(":defs.bzl", "rpathfix_wheel_repository")

_wheel = tag_class(attrs = {
    "name": attr.string(mandatory = True, doc = "repository name"),
    "wheel": attr.label(doc = "the wheel as a label"),
    "wheel_path": attr.string(doc = "the wheel as an absolute path"),
    "python": attr.string(doc = "venv interpreter"),
    "rpathfix_python": attr.string(doc = "interpreter that runs rpathfix (default: $RPATHFIX_PYTHON, else python3)"),
    "no_compile": attr.bool(default = False),
})

def _rpathfix_impl(mctx):
    for mod in mctx.modules:
        for w in mod.tags.wheel:
            rpathfix_wheel_repository(
                name = w.name,
                wheel_label = w.wheel,
                wheel_path = w.wheel_path,
                python = w.python,
                rpathfix_python = w.rpathfix_python,
                no_compile = w.no_compile,
            )

rpathfix = module_extension(
    implementation = _rpathfix_impl,
    tag_classes = {"wheel": _wheel},
)
