"""Libraries that come from the system, never from a wheel: the GPU driver's and the manylinux
policy's. One list each, used by the loader model (a driver library is "provided at run time",
not missing) and by the repair (no rpath entry is ever added for them, nothing is vendored).

Why they are left alone:
- The GPU driver's libraries (libcuda.so.1, libnvidia-ml.so.1, ...) are installed with the
  kernel driver and must match it exactly; a copy from a wheel, or an rpath that finds one in
  a wheel before the driver's, breaks every machine whose driver differs. They are also absent
  from build machines without a GPU, so the model must not call them missing.
- The manylinux policy's libraries (glibc's, libstdc++, libgcc_s, libz, X11/GL) are what every
  compliant Linux system provides; a wheel may link them and nothing else from the system.
  An rpath to a sibling's copy of libc.so.6 or libstdc++.so.6 would replace the system's.
"""

from __future__ import annotations

import re

# The NVIDIA driver's user-space libraries, by SONAME: libcuda (CUDA driver API),
# libcudadebugger, libnvidia-* (ml, ptxjitcompiler, nvvm, encode, opticalflow, ...),
# libnvcuvid (video decode), libnvoptix (OptiX), and the GLX/EGL vendor libraries.
# Names follow the files the driver package installs (e.g. Debian's libcuda1,
# libnvidia-ml1, libnvcuvid1, libnvoptix1): lib<name>.so with an optional numeric version.
DRIVER_LIBS = re.compile(
    r"^lib(cuda|cudadebugger|nvidia-[A-Za-z0-9_.-]+|nvcuvid|nvoptix|nvidia|GLX_nvidia|EGL_nvidia)\.so(\.[0-9]+)*$"
)

# The union of `lib_whitelist` over every manylinux policy (manylinux_2_5 ... manylinux_2_41)
# in auditwheel 6.8.2's src/auditwheel/policy/manylinux-policy.json, plus musllinux's libc.so
# (musllinux-policy.json). auditwheel never vendors these; neither does rpathfix add paths for them.
MANYLINUX_SYSTEM_LIBS = frozenset({
    "libGL.so.1", "libICE.so.6", "libSM.so.6", "libX11.so.6", "libXext.so.6", "libXrender.so.1",
    "libanl.so.1", "libatomic.so.1", "libc.so.6", "libdl.so.2", "libexpat.so.1", "libgcc_s.so.1",
    "libglib-2.0.so.0", "libgobject-2.0.so.0", "libgthread-2.0.so.0", "libm.so.6", "libmvec.so.1",
    "libnsl.so.1", "libpthread.so.0", "libresolv.so.2", "librt.so.1", "libstdc++.so.6", "libutil.so.1",
    "libz.so.1",
    "libc.so",  # musllinux
})

# The dynamic loaders themselves, which a library may list as DT_NEEDED (glibc's per machine,
# and musl's ld-musl-<arch>.so.1): the system's by definition.
_LOADER_NAMES = re.compile(r"^(ld-linux[A-Za-z0-9_.-]*\.so\.[0-9]+|ld64\.so\.[0-9]+|ld\.so\.[0-9]+|ld-musl-[A-Za-z0-9_]+\.so\.1)$")


def is_driver_lib(name: str) -> bool:
    """True for a GPU driver library's SONAME (or file name): never from a wheel."""
    return DRIVER_LIBS.match(name.rsplit("/", 1)[-1]) is not None


def is_system_lib(name: str) -> bool:
    """True for a library the manylinux/musllinux policy lets a wheel take from the system,
    or a dynamic loader."""
    leaf = name.rsplit("/", 1)[-1]
    return leaf in MANYLINUX_SYSTEM_LIBS or _LOADER_NAMES.match(leaf) is not None


def system_reason(name: str) -> str | None:
    """"driver" or "system" when `name` must come from the system, else None."""
    if is_driver_lib(name):
        return "driver"
    if is_system_lib(name):
        return "system"
    return None
