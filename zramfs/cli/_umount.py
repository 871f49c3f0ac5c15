"""``zramfs umount MOUNTPOINT``: unmount, wait for the daemon to exit, remove its directory."""

from zramfs.system import System

from ._common import mountpoint_arg, rmdir_if_empty
from ._errors import EXIT_OK
from ._teardown import execute, plan_umount


def cmd_umount(args):
    """Unmount a zramfs mount (refused while a loop device holds its disk) and wait for its daemon."""
    sys_ = System()
    execute(sys_, plan_umount(sys_, mountpoint_arg(args.mountpoint)))
    rmdir_if_empty(sys_.path(sys_.run_dir))
    return EXIT_OK
