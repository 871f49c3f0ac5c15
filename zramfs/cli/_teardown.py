"""Teardown planning: what `swapoff` and `umount` must undo, decided from what is there.

Where this sits: between the commands and `zramfs.system`.  `plan_swapoff`
and `plan_umount` only read (so the tests check plans against fake trees,
without root); `execute` carries a plan out.  Each step is planned only if
its part is still there, so a device that is half gone (a daemon killed,
a loop device detached by hand) is still taken down completely.

Order, the reverse of setting up: swapoff, detach the loop device, unmount,
wait for the daemon to exit (SIGTERM if it does not), remove swapon's
mountpoint, forget the device (its directory, which an exiting daemon
removes itself: this step only takes what a killed one left).
"""

import errno
import os
import signal
import time
from dataclasses import dataclass

from zramfs.fuse._mount import unmount
from zramfs.system import FSTYPE, start_time

from ._common import forget, rmdir_if_empty, run_tool
from ._errors import CommandError, DaemonError, DeviceNotFoundError, DiskBusyError

# How long to wait for a daemon to exit after its filesystem is gone before
# sending SIGTERM, and then before giving up.  An unmounted daemon exits
# within milliseconds; the margin is for a loaded machine.
DAEMON_EXIT_TIMEOUT = 30.0

# How long swapoff retries an unmount that fails with EBUSY: `losetup -d`
# only sets autoclear while udev or blkid still has the loop device open,
# and the loop lets go of `disk` a moment later.
UNMOUNT_BUSY_TIMEOUT = 10.0


@dataclass(frozen=True)
class Step:
    """One teardown step: swapoff, detach, unmount, stop, rmdir or forget, and what it acts on."""

    action: str
    target: str
    # stop: the daemon's pid and start time, from its record.
    pid: int | None = None
    start_time: int | None = None


def _device_steps(sys_, name, mountpoint, mounted):
    steps = []
    if mounted:
        steps.append(Step("unmount", mountpoint))
    record = sys_.daemon_record(name)
    if record is not None and record.config.mountpoint == mountpoint:
        # The supervisor first (it stops its daemon), then a daemon whose
        # supervisor was killed: each is waited for, SIGTERMed if it stays.
        for pid, started in sys_.live_processes(record):
            steps.append(Step("stop", mountpoint, pid, started))
    return steps


def loop_steps(sys_, mountpoint):
    """Swapoff (if it is active swap) and detach, for each loop device on the disk at `mountpoint`."""
    steps = []
    swaps = sys_.active_swaps()
    for loop in sys_.loops_for(os.path.join(mountpoint, "disk")):
        if loop in swaps:
            steps.append(Step("swapoff", loop))
        steps.append(Step("detach", loop))
    return steps


def plan_swapoff(sys_, name):
    """The steps that take down swapon's device `name`; DeviceNotFoundError if nothing of it is there."""
    mountpoint = sys_.swap_mountpoint(name)
    m = sys_.mount_at(mountpoint)
    if m is not None and m.fstype != FSTYPE:
        raise DeviceNotFoundError(f"{mountpoint} is a {m.fstype} mount, not zramfs")
    has_mountpoint = os.path.isdir(sys_.path(mountpoint))
    has_dir = os.path.isdir(sys_.path(sys_.device_dir(name)))
    record = sys_.daemon_record(name)
    if record is not None and record.config.mountpoint != mountpoint:
        raise DeviceNotFoundError(
            f"{name!r} is mounted at {record.config.mountpoint}, not made by swapon (zramfs umount it)"
        )
    if m is None and not has_mountpoint and not has_dir:
        raise DeviceNotFoundError(f"no zramfs device named {name!r} (nothing at {mountpoint})")
    steps = loop_steps(sys_, mountpoint)
    steps += _device_steps(sys_, name, mountpoint, m is not None)
    # A dead mount (its daemon gone) hides its directory: stat says
    # ENOTCONN, so isdir is False until the unmount step has run.
    if has_mountpoint or m is not None:
        steps.append(Step("rmdir", mountpoint))
    if has_dir:
        steps.append(Step("forget", name))
    return steps


def plan_umount(sys_, path):
    """The steps that unmount the zramfs mount at `path` (or where it resolves to).

    DeviceNotFoundError if no zramfs mount is there; DiskBusyError while a loop
    device holds its disk (that is swapoff's or the user's to undo first).
    """
    mountpoint = path
    m = sys_.mount_at(mountpoint)
    if m is None or m.fstype != FSTYPE:
        mountpoint = os.path.realpath(path)
        m = sys_.mount_at(mountpoint)
    if m is None or m.fstype != FSTYPE:
        raise DeviceNotFoundError(f"{path} is not a zramfs mount")
    loops = sys_.loops_for(os.path.join(mountpoint, "disk"))
    if loops:
        raise DiskBusyError(
            f"{mountpoint}/disk is still attached to {', '.join(loops)} "
            f"(zramfs swapoff {m.source}, or swapoff/umount it and losetup -d)"
        )
    steps = _device_steps(sys_, m.source, mountpoint, True)
    if os.path.isdir(sys_.path(sys_.device_dir(m.source))):
        steps.append(Step("forget", m.source))
    return steps


def unmount_now(mountpoint, *, busy_timeout=0.0):
    """umount(2) (fusermount3 -u without root), not lazy: refuse while a loop device or a file holds it."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            unmount(mountpoint, lazy=False)
            return  # unmounted, or nothing mounted there any more
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise CommandError(f"umount {mountpoint} failed: {e.strerror}") from None
        if time.monotonic() >= deadline:
            raise DiskBusyError(f"{mountpoint} is busy (a process or loop device has files open)")
        time.sleep(0.05)


def _wait_gone(sys_, step, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if start_time(step.pid, sys_.root) != step.start_time:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def stop_daemon(sys_, step):
    """Wait for the daemon of an unmounted device to exit; SIGTERM it if it does not."""
    if _wait_gone(sys_, step, DAEMON_EXIT_TIMEOUT):
        return
    try:
        os.kill(step.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not _wait_gone(sys_, step, DAEMON_EXIT_TIMEOUT):
        raise DaemonError(f"the daemon for {step.target} (pid {step.pid}) did not exit")


def execute(sys_, steps, *, busy_timeout=0.0):
    """Carry out a plan, in order; the first failure stops it (what is left is planned again next time)."""
    for step in steps:
        if step.action == "swapoff":
            run_tool(["swapoff", step.target])
        elif step.action == "detach":
            try:
                run_tool(["losetup", "-d", step.target])
            except CommandError:
                if sys_.loop_attached(step.target):
                    raise  # still attached: a real failure
        elif step.action == "unmount":
            unmount_now(step.target, busy_timeout=busy_timeout)
        elif step.action == "stop":
            stop_daemon(sys_, step)
        elif step.action == "rmdir":
            rmdir_if_empty(sys_.path(step.target))
        elif step.action == "forget":
            forget(sys_, step.target)
        else:  # pragma: no cover - plans only hold the actions above
            raise AssertionError(step.action)
