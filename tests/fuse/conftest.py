"""Fixtures for the fuse tier: a real zramfs daemon on a temporary mountpoint.

Every test here runs against a mount made by ``python -m zramfs.daemon``,
started the way the CLI starts it (`zramfs.daemon.spawn_daemon`, readiness
over --ready-fd).  The `backend` fixture runs each test once per FUSE
backend in `zramfs.fuse.BACKENDS`.

`stop_daemon` is the one cleanup path: whatever state the test left (daemon
alive, hung, stopped, dead; mount present, gone, stale), it unmounts, waits
with a timeout, kills if it must, and reports what it had to do.
test_lifecycle.py tests it directly.
"""

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from zramfs.daemon import spawn_daemon
from zramfs.fuse import BACKENDS, is_mounted
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
        """Write `text` to an attribute file with one write(2); OSError on refusal."""
        fd = os.open(self.mountpoint / name, os.O_WRONLY)
        try:
            return os.write(fd, text.encode())
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


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def start(tmp_path, backend):
    """A factory: start(**spawn_daemon kwargs) -> Daemon; all are stopped at teardown."""
    started = []

    def _start(mountpoint=None, size=DISKSIZE, **kwargs):
        if mountpoint is None:
            mountpoint = tmp_path / f"mnt{len(started)}"
            mountpoint.mkdir()
        log = tmp_path / f"daemon{len(started)}.log"
        with open(log, "w") as stderr:
            kwargs.setdefault("fuse_backend", backend)
            proc = spawn_daemon(mountpoint, size, stderr=stderr, timeout=20, **kwargs)
        d = Daemon(proc, Path(mountpoint), log, size)
        started.append(d)
        return d

    yield _start
    for d in started:
        if d.proc.returncode is None:
            try:
                os.kill(d.proc.pid, signal.SIGCONT)  # in case a test stopped it
            except ProcessLookupError:
                pass
        stop_daemon(d.proc, d.mountpoint)


@pytest.fixture
def zram(start):
    """One running daemon with a DISKSIZE disk."""
    return start()
