"""``zramfs reset NAME [--force]``: like ``zramctl --reset``, the device is torn down and gone.

Where this sits: a command over `_teardown` (the planning swapoff and
umount use) and `zramfs.system` (what is there).  Whatever state the
device is in -- uninitialised, mounted by ``mount``, swap made by
``swapon``, half gone after a crash -- reset undoes all of it: swapoff,
unmount of a filesystem on its loop device, losetup -d, unmount of the FUSE
mount, the daemon stopped, swapon's mountpoint and the device's directory
removed.  A ``mount`` device's MOUNTPOINT directory is the user's and stays.

While the device is in use -- its loop device active swap or a mounted
filesystem -- reset refuses (exit 5) unless ``--force``, which swapoffs and
unmounts those first, as the kernel's reset refuses while /dev/zramN is
open.
"""

import os

from zramfs.config import check_name
from zramfs.system import System

from ._common import need_root
from ._errors import EXIT_OK, DeviceNotFoundError, DiskBusyError
from ._swapoff import after_swap_teardown
from ._teardown import UNMOUNT_BUSY_TIMEOUT, Step, _device_steps, execute, loop_steps, plan_swapoff

# Steps that take a device from its users; reset plans them only with --force.
_IN_USE = ("swapoff", "unmount-fs")


def plan_reset(sys_, name):
    """Every step that removes device `name`, users first; DeviceNotFoundError if nothing of it is there."""
    mounts = [m for m in sys_.zramfs_mounts() if m.source == name]
    record = sys_.daemon_record(name)
    if mounts:
        mountpoint = mounts[0].mountpoint
    else:  # not mounted (any more): where its record says, else swapon's place
        mountpoint = record.config.mountpoint if record else sys_.swap_mountpoint(name)
    if mountpoint == sys_.swap_mountpoint(name):
        steps = plan_swapoff(sys_, name)
    else:
        steps = loop_steps(sys_, mountpoint)
        steps += _device_steps(sys_, name, mountpoint, bool(mounts))
        if os.path.isdir(sys_.path(sys_.device_dir(name))):
            steps.append(Step("forget", name))
        if not steps:
            raise DeviceNotFoundError(f"no zramfs device named {name!r}")
    # A filesystem mounted on a loop device: unmounted before the loop goes.
    planned = []
    mounts = sys_.mounts()
    for step in steps:
        if step.action == "detach":
            planned += [
                Step("unmount-fs", m.mountpoint)
                for m in reversed(mounts)
                if m.source == step.target
            ]
        planned.append(step)
    return planned


def in_use(steps):
    """What the --force steps of a plan act on (empty: the device is not in use)."""
    return [
        ("swap" if s.action == "swapoff" else "mounted at " + s.target)
        for s in steps
        if s.action in _IN_USE
    ]


def cmd_reset(args):
    """Tear device NAME down; refuse while it is swap or mounted unless --force."""
    check_name(args.name)
    sys_ = System()
    try:
        steps = plan_reset(sys_, args.name)
    except DeviceNotFoundError:
        raise DeviceNotFoundError(f"no zramfs device named {args.name!r}") from None
    was_swap = args.name in sys_.swap_names()
    users = in_use(steps)
    if users and not args.force:
        raise DiskBusyError(
            f"{args.name} is in use ({', '.join(users)}); zramfs reset --force {args.name} swapoffs/unmounts it first"
        )
    if any(s.action in ("swapoff", "detach", "unmount-fs") for s in steps):
        need_root("reset")
    execute(
        sys_,
        [Step("unmount", s.target) if s.action == "unmount-fs" else s for s in steps],
        busy_timeout=UNMOUNT_BUSY_TIMEOUT,
    )
    if was_swap:
        after_swap_teardown(sys_)
    return EXIT_OK
