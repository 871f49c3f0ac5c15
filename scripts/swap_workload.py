#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-only
"""Build and run the swap workload, ``scripts/swap_workload.c``.

Where it sits: outside zramfs, test and benchmark tooling.  The workload
itself is C (what it does and what it prints are described there) so that
its own CPU time stays small beside the swap device's: in Python it was most
of kernel zram's wall time.  This module is the one place the scripts
compile C: ``compile_c`` builds a program of this folder with the system
``cc`` into a directory the caller owns (never into the tree), and turns
any failure into one ``BuildError`` line.  bench.py also builds its C
libfuse memory server with it.

Run as a script it compiles the workload into a temporary directory, runs
it with the same arguments, passes its JSON through and exits with its code:

    scripts/memcg.py --limit-mib 96 -- python3 scripts/swap_workload.py --mib 256 --touches 100000
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildError(RuntimeError):
    """A C program of scripts/ could not be compiled (the message is one line)."""


def compile_c(name, directory, packages=()):
    """Compile ``scripts/NAME.c`` to ``DIRECTORY/NAME`` with -O2; return its path.

    ``packages`` are pkg-config names whose flags are added (``fuse3``)."""
    cc = shutil.which("cc")
    if cc is None:
        raise BuildError(
            f"cannot build {name}.c: no C compiler (cc); scripts/setup.sh installs gcc"
        )
    flags = []
    if packages:
        pc = (
            subprocess.run(
                ["pkg-config", "--cflags", "--libs", *packages], capture_output=True, text=True
            )
            if shutil.which("pkg-config")
            else None
        )
        if pc is None or pc.returncode:
            raise BuildError(
                f"cannot build {name}.c: pkg-config finds no {' '.join(packages)} "
                "(apt-get install pkg-config libfuse3-dev)"
            )
        flags = pc.stdout.split()
    out = os.path.join(directory, name)
    proc = subprocess.run(
        [cc, "-O2", "-Wall", "-o", out, os.path.join(HERE, f"{name}.c"), *flags],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        first = next(
            (line for line in proc.stderr.splitlines() if "error" in line), proc.stderr.strip()
        )
        raise BuildError(f"cannot build {name}.c: {first}")
    return out


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="swap-workload-") as tmp:
        try:
            binary = compile_c("swap_workload", tmp)
        except BuildError as e:
            print(f"swap_workload.py: error: {e}", file=sys.stderr)
            return 3
        return subprocess.run([binary, *argv]).returncode


if __name__ == "__main__":
    sys.exit(main())
