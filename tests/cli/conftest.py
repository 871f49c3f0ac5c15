"""Fixtures for the cli tier: fake machines rendered into a tmp dir, read by zramfs.system.

Nothing here needs root: a fake tree holds the files zramfs.system reads
(proc/self/mountinfo, proc/swaps, proc/PID/stat, sys/block/loopN, the run
directory, the attribute files at each mountpoint), the way zram-generator's
tests render a root and run discovery against it.
"""

import os

import pytest

from zramfs.config import DeviceConfig
from zramfs.system import DaemonRecord, System

RUN_DIR = "/run/zramfs"


class FakeMachine:
    """A root directory with just the files zramfs.system reads, written by the test."""

    def __init__(self, root):
        self.root = str(root)
        self._mounts = []
        self._swaps = []
        self._write("/proc/self/mountinfo", "")
        self._write("/proc/swaps", "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n")

    def _write(self, path, text):
        full = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(text)

    def system(self):
        return System(self.root, RUN_DIR)

    def mount(self, mountpoint, source, fstype="fuse.zramfs"):
        os.makedirs(os.path.join(self.root, mountpoint.lstrip("/")), exist_ok=True)
        n = len(self._mounts)
        escaped = mountpoint.replace("\\", "\\134").replace(" ", "\\040")
        self._mounts.append(
            f"{100 + n} 1 0:{60 + n} / {escaped} rw,nosuid,nodev,relatime shared:{n} - {fstype} {source} rw,user_id=0,group_id=0\n"
        )
        self._write(
            "/proc/self/mountinfo",
            "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n" + "".join(self._mounts),
        )

    def attrs(self, mountpoint, **files):
        for name, text in files.items():
            self._write(os.path.join(mountpoint, name), text)

    def loop(self, n, backing):
        self._write(f"/sys/block/loop{n}/loop/backing_file", backing + "\n")

    def swap(self, device):
        self._swaps.append(f"{device}\tpartition\t65532\t\t0\t\t100\n")
        self._write(
            "/proc/swaps",
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n" + "".join(self._swaps),
        )

    def process(self, pid, start_time, state="S"):
        self._write(
            f"/proc/{pid}/stat", f"{pid} (python3) {state} " + "1 " * 18 + f"{start_time} 0 0\n"
        )

    def device_dir(self, name):
        path = os.path.join(self.root, RUN_DIR.lstrip("/"), "." + name)
        os.makedirs(path, exist_ok=True)
        return path

    def daemon(self, name, mountpoint, pid, start_time=5000, backend="dev", alive=True,
               daemon_pid=None, daemon_alive=True):  # fmt: skip
        """A daemon's record (and, if alive, its process) for device `name`;
        with `daemon_pid`, `pid` is its supervisor's (zramfs.supervisor)."""
        config = DeviceConfig(mountpoint=mountpoint, size=64 << 20, name=name, fuse_backend=backend,
                              run_dir=f"{RUN_DIR}/.{name}")  # fmt: skip
        extra = {}
        if daemon_pid is not None:
            extra = {"daemon_pid": daemon_pid, "daemon_start_time": start_time + 1, "restarts": 2}
            if daemon_alive:
                self.process(daemon_pid, start_time + 1)
        DaemonRecord(pid, start_time, config, **extra).write(self.device_dir(name))
        if alive:
            self.process(pid, start_time)


@pytest.fixture
def machine(tmp_path):
    return FakeMachine(tmp_path / "root")
