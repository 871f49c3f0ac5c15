"""``zramfs swapon [NAME]``: mount a device under the run directory, losetup, mkswap, swapon.

Anything done before a failure is undone in reverse order (swapoff,
losetup -d, umount, daemon stopped, directories removed) before the error
is reported: a failed swapon leaves the machine as it found it.

``--loop /dev/loopN`` attaches at a loop device named in advance, and
``--mkswap-only`` stops before swapon: together they let a systemd
``.swap`` unit, whose ``What=`` is written before the device exists, do the
swapon (zramfs-generator's units, outside containers).
"""

import os
import sys

from zramfs import tuning
from zramfs.config import ConfigError, default_swap_size
from zramfs.system import System, add_loop_device, loop_index

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
from ._errors import EXIT_OK, CommandError, DiskBusyError
from ._teardown import UNMOUNT_BUSY_TIMEOUT, execute, plan_swapoff

# swapon's default priority, zram-generator's default: above any disk swap
# (which the kernel numbers from -2 down), so zramfs is used first.
DEFAULT_PRIORITY = 100


def cmd_swapon(args):
    """Set up one compressed swap device; print what was set up."""
    sys_ = System()
    size = disksize(args.size) if args.size is not None else default_swap_size(sys_.mem_total())
    check_options(args)
    priority = DEFAULT_PRIORITY if args.priority is None else args.priority
    if not -1 <= priority <= 32767:
        raise ConfigError(f"priority {priority} is not between -1 and 32767")
    if args.mkswap_only and args.priority is not None:
        raise ConfigError("--priority is swapon's: with --mkswap-only, whoever runs swapon sets it")
    index = None
    if args.loop is not None:
        try:
            index = loop_index(args.loop)
        except ValueError as bad:
            raise ConfigError(f"--loop: {bad}") from None
    need_root("swapon")
    need_fuse(args.fuse_backend)
    discard = backend_supports_discard(args.fuse_backend)
    if index is not None and sys_.loop_attached(args.loop):
        raise DiskBusyError(
            f"{args.loop} is attached already (losetup -d it, or give another --loop)"
        )
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
        losetup = ["losetup", "--show", "--direct-io=on", "--sector-size", "4096"]
        if index is None:
            losetup.append("--find")
        else:
            try:
                add_loop_device(index)
            except OSError as err:
                raise CommandError(f"cannot make {args.loop}: {err.strerror}") from None
            # Someone may attach it between the check above and here:
            # losetup then fails (busy) and the undo takes the rest down.
            losetup.append(args.loop)
        loop = run_tool(losetup + [disk], what=f"losetup {disk}").strip()
        run_tool(["mkswap", "--label", name, loop], what=f"mkswap {loop}")
        if not discard:
            print(
                f"zramfs: notice: the {args.fuse_backend} backend cannot discard, "
                "so swap runs without --discard and freed slots keep their memory until rewritten",
                file=sys.stderr,
            )
        if not args.mkswap_only:
            swapon = ["swapon", "--priority", str(priority)] + (["--discard"] if discard else [])
            run_tool(swapon + [loop], what=f"swapon {loop}")
        # Last, so a failed swapon never leaves a setting changed.
        refused = []
        tuning.apply(sys_.run_dir, refused=refused)
        for e in refused:
            print(f"zramfs: notice: {e.strerror}; swap runs without that tuning", file=sys.stderr)
    except BaseException:
        undo.run()
        raise
    if args.mkswap_only:
        what = f"swap area on {loop} (not swapped on{'' if discard else ', cannot discard'})"
    else:
        what = f"swap on {loop} (priority {priority}{'' if discard else ', no discard'})"
    print(f"{name}: {human(size, long=True)} {config.algorithm} {what}, mounted at {mountpoint}")
    return EXIT_OK


def _without_forget(steps):
    # The claim's own undo removes the device directory, after this.
    return [s for s in steps if s.action not in ("forget", "rmdir")]
