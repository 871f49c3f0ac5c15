"""``zramfs swapon [NAME]``: mount a device under the run directory, losetup, mkswap, swapon.

Anything done before a failure is undone in reverse order (swapoff,
losetup -d, umount, daemon stopped, directories removed) before the error
is reported: a failed swapon leaves the machine as it found it.
"""

import os
import sys

from zramfs import tuning
from zramfs.config import ConfigError, default_swap_size
from zramfs.system import System

from ._common import (
    Undo,
    backend_supports_discard,
    check_options,
    claim,
    device_config,
    disksize,
    human,
    need_fuse,
    need_root,
    rmdir_if_empty,
    run_tool,
    start_daemon,
)
from ._errors import EXIT_OK
from ._teardown import UNMOUNT_BUSY_TIMEOUT, execute, plan_swapoff

# swapon's default priority, zram-generator's default: above any disk swap
# (which the kernel numbers from -2 down), so zramfs is used first.
DEFAULT_PRIORITY = 100


def cmd_swapon(args):
    """Set up one compressed swap device; print what was set up."""
    sys_ = System()
    size = disksize(args.size) if args.size is not None else default_swap_size(sys_.mem_total())
    check_options(args)
    if not -1 <= args.priority <= 32767:
        raise ConfigError(f"priority {args.priority} is not between -1 and 32767")
    need_root("swapon")
    need_fuse(args.fuse_backend)
    discard = backend_supports_discard(args.fuse_backend)
    undo = Undo()
    try:
        name, held = claim(sys_, args.name, undo)
        mountpoint = sys_.swap_mountpoint(name)
        if not os.path.isdir(mountpoint):
            os.mkdir(mountpoint, 0o700)
            undo.push("remove " + mountpoint, rmdir_if_empty, mountpoint)
        config = device_config(args, size=size, mountpoint=mountpoint, name=name, sys_=sys_)
        start_daemon(sys_, config, held)
        # One undo for everything from here on: the plan is made when it
        # runs, from what is there (a loop device, swap on it, the mount).
        undo.push("take down " + name, lambda: execute(sys_, _without_forget(plan_swapoff(sys_, name)),
                                                      busy_timeout=UNMOUNT_BUSY_TIMEOUT))  # fmt: skip
        disk = os.path.join(mountpoint, "disk")
        loop = run_tool(
            ["losetup", "--find", "--show", "--direct-io=on", "--sector-size", "4096", disk],
            what=f"losetup {disk}",
        ).strip()
        run_tool(["mkswap", "--label", name, loop], what=f"mkswap {loop}")
        swapon = ["swapon", "--priority", str(args.priority)]
        if discard:
            swapon.append("--discard")
        else:
            print(
                f"zramfs: notice: the {args.fuse_backend} backend cannot discard, "
                "so swap runs without --discard and freed slots keep their memory until rewritten",
                file=sys.stderr,
            )
        run_tool(swapon + [loop], what=f"swapon {loop}")
        # Last, so a failed swapon never leaves a setting changed.
        refused = []
        tuning.apply(sys_.run_dir, refused=refused)
        for e in refused:
            print(f"zramfs: notice: {e.strerror}; swap runs without that tuning", file=sys.stderr)
    except BaseException:
        undo.run()
        raise
    print(
        f"{name}: {human(size, long=True)} {config.algorithm} swap on {loop} "
        f"(priority {args.priority}{'' if discard else ', no discard'}), mounted at {mountpoint}"
    )
    return EXIT_OK


def _without_forget(steps):
    # The claim's own undo removes the device directory, after this.
    return [s for s in steps if s.action not in ("forget", "rmdir")]
