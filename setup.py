"""Build of the optional compiled hot path (``detector/_fastpath.pyx``, see detector/fastpath.py).

Everything else about the package is in pyproject.toml. Without a working C compiler the
extension is skipped with a warning and the detector runs on its pure-Python path.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build the extension when possible; a failure leaves the pure-Python path in place."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # any compiler failure means "no fast path"
            print(f"warning: detector._fastpath not built ({e}); pure-Python path", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"warning: {ext.name} not built ({e}); pure-Python path", file=sys.stderr)


def _extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython missing: detector._fastpath not built", file=sys.stderr)
        return []
    ext = Extension("detector._fastpath", ["detector/_fastpath.pyx"], extra_compile_args=["-O2"])
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
