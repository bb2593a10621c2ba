"""Build the compiled twin of the data plane (_fastpath/core.pyx, which
includes the other _fastpath parts -> udpoverlay.dataplane._c)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("udpoverlay.dataplane._c", ["_fastpath/core.pyx"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    ),
)
