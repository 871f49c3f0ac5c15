"""The mypyc build: which modules run compiled, and ZRAMFS_PURE_PYTHON.

setup.py compiles the allocator's hot modules; allocator/__init__.py imports
them from source instead when ZRAMFS_PURE_PYTHON=1 (scripts/test.sh runs the
allocator and device tiers both ways).  These tests check, in fresh
interpreters, that the switch does what it says in both directions, and
that ``allocator.COMPILED`` tells the truth.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import allocator

PACKAGE = Path(allocator.__file__).parent

# A fresh interpreter's view: COMPILED, and each allocator module's file.
PROBE = """
import json, sys
import allocator
from allocator import Pool
pool = Pool(max_objects=8)
h = pool.store(b"x" * 100)
assert pool.read(h) == b"x" * 100
pool.close()
files = {n: m.__file__ for n, m in sys.modules.items() if n.startswith("allocator.")}
print(json.dumps({"compiled": allocator.COMPILED, "files": files}))
"""


def probe(pure: bool, path: Path | None = None) -> dict:
    """What a fresh interpreter imports; ``path``: a directory holding a copy of the package."""
    env = dict(os.environ)
    env.pop("ZRAMFS_PURE_PYTHON", None)
    if pure:
        env["ZRAMFS_PURE_PYTHON"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        cwd=path,  # first on sys.path (None: this process's directory)
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def built() -> set[str]:
    """Names of the package's extension modules (with mypyc's runtime library)."""
    return {
        "allocator." + p.name.split(".", 1)[0]
        for p in PACKAGE.iterdir()
        if any(p.name.endswith(s) for s in EXTENSION_SUFFIXES)
    }


def test_pure_python_imports_every_module_from_source():
    result = probe(pure=True)
    assert result["compiled"] is False
    assert result["files"]
    assert all(f.endswith(".py") for f in result["files"].values()), result["files"]


def test_default_imports_every_built_module_compiled():
    result = probe(pure=False)
    compiled = {n for n, f in result["files"].items() if not f.endswith(".py")}
    # Every module that has an extension runs from it, and no other.
    assert compiled == built() & result["files"].keys()
    assert result["compiled"] is ("allocator._pool" in compiled)


@pytest.mark.skipif(
    not built(), reason="the allocator is not compiled (ZRAMFS_PURE_PYTHON=1 at install)"
)
def test_pool_and_its_parts_are_compiled_together():
    # A compiled Pool is a native class; its traits must be compiled with it.
    assert {
        "allocator._pool",
        "allocator._compact",
        "allocator._check",
        "allocator._rebuild",
    } <= built()


@pytest.mark.skipif(
    not built(), reason="the allocator is not compiled (ZRAMFS_PURE_PYTHON=1 at install)"
)
def test_a_source_edited_after_the_build_is_imported_from_source(tmp_path):
    # In a copy, so that this tree's own build stays as it is.
    copy = tmp_path / "allocator"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    result = probe(pure=False, path=tmp_path)
    assert result["compiled"] is True
    assert all(f.startswith(str(copy)) for f in result["files"].values())
    later = time.time() + 10
    os.utime(copy / "_compact.py", (later, later))
    result = probe(pure=False, path=tmp_path)
    assert result["compiled"] is False
    assert all(f.startswith(str(copy)) and f.endswith(".py") for f in result["files"].values())


def test_this_process_matches_its_setting():
    pure = os.environ.get("ZRAMFS_PURE_PYTHON") == "1"
    assert allocator.COMPILED is (not pure and "allocator._pool" in built())
