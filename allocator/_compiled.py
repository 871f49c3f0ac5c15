"""Whether the allocator's modules are imported compiled (mypyc) or from source.

Where this sits: ``allocator/__init__.py`` imports it before any other
module of the package, so it can choose for all of them.  setup.py compiles
some modules to extensions next to their source, and Python's import system
takes an extension over a source file.  This module turns that around, for
this package only, when the source is wanted instead: with
``ZRAMFS_PURE_PYTHON=1``, or when a source file is newer than its extension
(edited since the build: the extension would run the old code).
"""

import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, SOURCE_SUFFIXES, FileFinder, SourceFileLoader

PACKAGE = __name__.rpartition(".")[0]
DIRECTORY = os.path.dirname(os.path.abspath(__file__))


def stale() -> bool:
    """True when a source file was changed after its extension was built.

    Two seconds of slack: an install writes both files at about the same
    time, in no fixed order; a build writes the extension after the source.
    """
    for entry in os.scandir(DIRECTORY):
        stem, _, suffix = entry.name.partition(".")
        if "." + suffix not in EXTENSION_SUFFIXES:
            continue
        try:
            source = os.stat(os.path.join(DIRECTORY, stem + ".py"))
        except FileNotFoundError:
            continue  # mypyc's runtime library has no source
        if source.st_mtime > entry.stat().st_mtime + 2:
            return True
    return False


class SourceOnly:
    """A meta path finder: this package's modules as source files only."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if not name.startswith(PACKAGE + "."):
            return None
        return FileFinder(DIRECTORY, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name)


if os.environ.get("ZRAMFS_PURE_PYTHON") == "1" or stale():
    sys.meta_path.insert(0, SourceOnly)
