"""A real systemd in a container, running zramfs from this tree: no install.

test_systemd.py boots one after a real ``scripts/setup.sh --system`` (minutes:
it builds a wheel).  The units that only need ``/opt/zramfs/bin/zramfs``
boot the same container (its `Container`: nsenter, unit properties,
power-off) with this tree bound in instead:

- the interpreter's virtual environment at /opt/zramfs, where the units
  look for it, and at its own path, with this tree and the base
  interpreter (its shebang and editable install point there);
- the units given, over /etc/systemd/system, and /etc/zramfs from a
  temporary directory;
- /dev/fuse, as test_systemd.py binds it.

So a boot takes seconds, and the code under test is the tree's.
"""

import os
import subprocess
import sys

from tests.system.test_systemd import PATH, REPO, Container

BOOT = r"""
exec systemd-nspawn --quiet --register=no --keep-unit -D / --volatile=yes \
    --console=read-only --kill-signal=SIGRTMIN+3 \
    --capability=CAP_IPC_LOCK,CAP_SYS_RESOURCE \
    --bind=/dev/fuse $BINDS \
    --bind-ro="$T/units:/etc/systemd/system" --bind-ro="$T/etc-zramfs:/etc/zramfs" \
    -b systemd.firstboot=off
"""


def _binds():
    """--bind-ro options: this tree, the venv (also at /opt/zramfs), the base interpreter."""
    paths = [REPO]
    for prefix in (sys.prefix, sys.base_prefix):
        if not prefix.startswith("/usr") and not any(
            prefix == p or prefix.startswith(p + os.sep) for p in paths
        ):
            paths.append(prefix)
    binds = [f"--bind-ro={p}" for p in paths]
    return [*binds, f"--bind-ro={sys.prefix}:/opt/zramfs"]


def _check_installed():
    """Fail unless the venv's own interpreter (what the units run, -I: no
    PYTHONPATH) imports zramfs from this tree (scripts/setup.sh --test)."""
    python = os.path.join(sys.prefix, "bin", "python")
    found = subprocess.run(
        [python, "-I", "-c", "import zramfs; print(zramfs.__file__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not found.startswith(os.path.join(REPO, "zramfs") + os.sep):
        raise AssertionError(f"{python} imports zramfs from {found!r}, not from {REPO}")


class TreeContainer(Container):
    """`Container`, booted with this tree's zramfs and `units` ({file name: text})."""

    def start(self, units, env_files=None):
        _check_installed()
        os.makedirs(os.path.join(self.tmp, "units"))
        for name, text in units.items():
            with open(os.path.join(self.tmp, "units", name), "w") as f:
                f.write(text)
        for name, text in (env_files or {}).items():
            with open(os.path.join(self.tmp, "etc-zramfs", name), "w") as f:
                f.write(text)
        self.proc = subprocess.Popen(
            ["bash", "-c", BOOT],
            cwd="/",
            env={"PATH": PATH, "T": self.tmp, "BINDS": " ".join(_binds())},
            stdout=self.console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.wait_for_systemd(timeout=60, interval=0.1)

    def journal(self, unit):
        return self.run("journalctl", "-o", "cat", "-u", unit, check=False).stdout
