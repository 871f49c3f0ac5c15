"""``zramfs mount MOUNTPOINT [--size SIZE]``: one device, its `disk` on MOUNTPOINT.

Without --size the device is mounted uninitialised, as zram's devices are
before their disksize is written: ``echo 1G > MOUNTPOINT/disksize``
initialises it.
"""

import os
import sys

from zramfs import launch
from zramfs.fuse._mount import check_mountpoint
from zramfs.system import System

from ._common import (
    Undo,
    check_options,
    claim,
    device_config,
    disksize,
    human,
    mountpoint_arg,
    need_fuse,
    start_daemon,
)
from ._errors import EXIT_OK


def cmd_mount(args):
    """Mount a device; return once it answers (or become its daemon, with --foreground)."""
    mountpoint = mountpoint_arg(args.mountpoint)
    size = disksize(args.size) if args.size is not None else None
    check_options(args)
    need_fuse(args.fuse_backend)
    # Missing, not a directory, already a mount point: typed MountErrors.
    check_mountpoint(mountpoint)
    sys_ = System()
    undo = Undo()
    try:
        name, held = claim(sys_, args.name, undo)
        config = device_config(args, size=size, mountpoint=mountpoint, name=name, sys_=sys_)
        if args.foreground:
            # The daemon becomes this process: systemd (Type=notify) or the
            # terminal sees its readiness, logs and exit status directly.
            command = launch.daemon_command(config)
            sys.stdout.flush()
            sys.stderr.flush()
            os.chdir("/")
            os.set_inheritable(held, True)  # the daemon holds the claim
            os.execve(command[0], command, launch.clean_env())
        start_daemon(sys_, config, held)
    except BaseException:
        undo.run()
        raise
    if size is None:
        print(f"{name}: uninitialised, mounted at {mountpoint} (write its disksize to start)")
    else:
        print(f"{name}: {human(size, long=True)} {config.algorithm}, mounted at {mountpoint}")
    return EXIT_OK
