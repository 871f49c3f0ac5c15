"""Fixtures for the fuse tier: a real zramfs daemon on a temporary mountpoint.

Every test here runs against a mount made by ``python -m zramfs.daemon``,
started the way the CLI starts it (`zramfs.launch.spawn_daemon`, readiness
over --ready-fd).  The `backend` fixture runs each test once per FUSE
backend in `zramfs.fuse.BACKENDS`.

`stop_daemon` is the one cleanup path: whatever state the test left (daemon
alive, hung, stopped, dead; mount present, gone, stale), it unmounts, waits
with a timeout, kills if it must, and reports what it had to do.
test_lifecycle.py tests it directly.
"""

import os
import signal
from pathlib import Path

import pytest

from tests._support.fuse import DISKSIZE, Daemon, stop_daemon
from zramfs.fuse import BACKENDS
from zramfs.launch import spawn_daemon


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
        d = Daemon(proc, Path(mountpoint), log, size or 0)
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


@pytest.fixture
def uninitialised(start):
    """One running daemon whose device is uninitialised (initstate 0, disk
    of size 0): started without a size, as `zramfs mount` without --size."""
    return start(size=None)
