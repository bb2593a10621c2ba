"""Build the compiled fast path (_fastpath/fastpath.pyx -> udpoverlay._fastpath_c)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("udpoverlay._fastpath_c", ["_fastpath/fastpath.pyx"],
                   extra_compile_args=["-O2"])],
        compiler_directives={"language_level": "3"},
    ),
)
