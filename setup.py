"""Build the compiled twin of the data plane (_fastpath/core.pyx, which
includes the other _fastpath parts -> udpoverlay.dataplane._c).

io_uring: when liburing's static library and header are there
(Debian: liburing-dev), it is linked in statically, so neither the wheel nor
the host needs liburing at run time. Without it the extension still builds;
its io_uring calls then report "built without liburing" and the data plane
uses read()/write() (`--io auto` -> epoll). UDPOVERLAY_NO_LIBURING=1 builds
without it on purpose (to test that fallback).

libcrypto (OpenSSL >= 1.1; Debian: libssl-dev to build, libssl3 at run time):
the WireGuard transport AEAD (_fastpath/wgcrypto.pxi) calls its EVP
interface, linked dynamically (the system's OpenSSL, patched with it).
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

LIBURING_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                 "/usr/lib", "/usr/local/lib")


def liburing() -> tuple[list[str], list[tuple[str, str]]]:
    """(extra objects, macros) for a static liburing, or nothing."""
    if os.environ.get("UDPOVERLAY_NO_LIBURING") == "1":
        return [], []
    header = any(Path(d, "liburing.h").is_file() for d in ("/usr/include", "/usr/local/include"))
    for d in LIBURING_DIRS:
        lib = Path(d, "liburing.a")
        if header and lib.is_file():
            return [str(lib)], [("UO_HAVE_LIBURING", "1")]
    return [], []


objects, macros = liburing()
setup(
    ext_modules=cythonize(
        [Extension("udpoverlay.dataplane._c", ["_fastpath/core.pyx"],
                   include_dirs=["_fastpath"], extra_objects=objects,
                   define_macros=macros, libraries=["crypto"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    ),
)
