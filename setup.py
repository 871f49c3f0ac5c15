"""Build hook: compiles the allocator's hot modules with mypyc.

Where this sits: only in `pip install` (scripts/setup.sh runs it); nothing
imports it.  Everything else about the package is in pyproject.toml.

The modules listed are compiled to C extension modules from their own typed
Python source, which stays in the package as the fallback: a module whose
extension is absent is imported from source, and ZRAMFS_PURE_PYTHON=1 at run
time imports every one from source even when built (allocator/__init__.py).
ZRAMFS_PURE_PYTHON=1 at install time builds none.  BENCHMARKS.md ("mypyc")
has what compiling saves and why these modules and no others.
"""

import os

from setuptools import setup

# Pool and the parts it is built from (a compiled class can only derive
# from compiled traits), and the layout constants they inline.  Not
# _errors (exception classes), _arena and _tables (weak references), nor
# the rest: they are off the I/O path.
COMPILED = [
    "allocator/_fields.py",
    "allocator/_layout.py",
    "allocator/_compact.py",
    "allocator/_check.py",
    "allocator/_rebuild.py",
    "allocator/_pool.py",
]

ext_modules = []
if os.environ.get("ZRAMFS_PURE_PYTHON") != "1":
    from mypyc.build import mypycify

    # group_name puts mypyc's shared runtime library inside the package
    # (allocator/_mypyc__mypyc...so), not at the top level of site-packages.
    ext_modules = mypycify(COMPILED, group_name="allocator._mypyc")

setup(ext_modules=ext_modules)
