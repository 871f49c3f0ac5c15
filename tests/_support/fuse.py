"""Helpers for the fuse tier: a daemon handle and the one cleanup path.

`stop_daemon` unmounts and stops a daemon whatever state it is in (alive,
hung, stopped, dead; mount present, gone or stale) and reports what it had
to do; conftest.py's fixtures use it and test_lifecycle.py tests it.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from zramfs.fuse import is_mounted
from zramfs.fuse._mount import unmount

# Small enough to fill in a test, big enough for 1 MiB requests and holes.
DISKSIZE = 64 << 20
STOP_TIMEOUT_S = 10.0


@dataclass
class Daemon:
    """A running daemon and where it serves."""

    proc: subprocess.Popen
    mountpoint: Path
    log: Path
    disksize: int

    @property
    def disk(self):
        return self.mountpoint / "disk"

    def attr(self, name):
        """An attribute file's text, as `cat` shows it."""
        return (self.mountpoint / name).read_text()

    def store(self, name, text):
        """Write `text` (str or bytes) to an attribute file with one write(2); OSError on refusal."""
        fd = os.open(self.mountpoint / name, os.O_WRONLY)
        try:
            return os.write(fd, text if isinstance(text, bytes) else text.encode())
        finally:
            os.close(fd)

    def mm_stat(self):
        keys = (
            "orig_data_size compr_data_size mem_used_total mem_limit mem_used_max "
            "same_pages pages_compacted huge_pages huge_pages_since"
        ).split()
        return dict(zip(keys, map(int, self.attr("mm_stat").split()), strict=True))

    def io_stat(self):
        keys = "failed_reads failed_writes invalid_io notify_free".split()
        return dict(zip(keys, map(int, self.attr("io_stat").split()), strict=True))

    def assert_alive(self):
        """The daemon still answers (a bad request must not have killed it)."""
        assert self.proc.poll() is None, self.log.read_text()
        assert os.stat(self.disk).st_size == self.disksize


def stop_daemon(proc, mountpoint, timeout=STOP_TIMEOUT_S):
    """Unmount and stop a daemon whatever state it is in; returns the steps taken.

    Steps: "unmounted" (it was still mounted), "killed" (it did not exit
    within `timeout` of the unmount), "unmounted-after-kill".
    """
    steps = []
    mountpoint = os.fspath(mountpoint)
    if is_mounted(mountpoint):
        # Lazy: works even if the daemon is hung or stopped.
        unmount(mountpoint)
        steps.append("unmounted")
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # SIGKILL also ends a SIGSTOPped process
        proc.wait(timeout=timeout)
        steps.append("killed")
    if is_mounted(mountpoint):
        unmount(mountpoint)
        steps.append("unmounted-after-kill")
    return steps
