"""The ``zramfs`` command: mount, umount, swapon, swapoff, status, reset, restart.

Where this sits: beside the data path, never in it.  The CLI starts
``zramfs.daemon`` (which owns the FUSE session, the Filesystem, the
BlockDevice and the pool) and drives the kernel's own tools around it --
``losetup --direct-io=on --sector-size 4096``, ``mkswap``, ``swapon``,
``swapoff`` -- the way ``zramctl`` and ``zram-generator`` drive ``/dev/zramN``.
It keeps no state of its own: what ``status`` and ``swapoff`` know comes
from the system as it is now, read through `zramfs.system` (``fuse.zramfs``
mounts, whose source is the device NAME; the attribute files at the
mountpoint; loop devices' ``backing_file``; ``/proc/swaps``; the record each
daemon writes into its device directory).

``swapon`` mounts at ``$ZRAMFS_RUN_DIR/NAME`` (default ``/run/zramfs/NAME``);
``swapoff --all`` acts on every device under that directory and nothing else.
Every device, mounted or swap, has its directory ``$ZRAMFS_RUN_DIR/.NAME``
(the daemon's record and log); making it claims the name.

One module per command (``_mount``, ``_umount``, ``_swapon``, ``_swapoff``,
``_status``, ``_reset``, ``_restart``), the shared pieces in ``_common``, teardown planning in
``_teardown``, the argument parser and `main` in ``_parser``.

Errors: the layers below raise typed exceptions; only this package turns
them into one line on stderr (``zramfs: error: ...``) and an exit code,
through the one table ``EXIT_CODES`` (``_errors``).  Anything ``mount`` or
``swapon`` set up before a failure is undone in reverse order (swapoff,
losetup -d, umount, daemon stopped, directories removed) before the line is
printed.

Exit codes:

====  =======================================================================
0     success
1     runtime failure: a system tool, the daemon or the kernel refused, or
      the daemon could not be started (what was set up has been undone)
2     bad input: usage, size, name, algorithm, priority, mountpoint missing
      or empty
3     needs root: swapon and swapoff; mount (without root, through
      fusermount3) on a directory this user may not write
4     FUSE unavailable: no /dev/fuse, no fusermount3 for a mount without
      root, or the --fuse-backend is not installed
5     in use: the name is taken, the mountpoint is busy, or a loop device
      (or swap) still holds the disk; reset without --force of a device in
      use as swap or mounted; swapon's --loop device is attached already
6     not found: no zramfs device by that name, no zramfs mount there
7     restart refused: the code installed now cannot read the device's
      state (its format changed); the old daemon serves on
130   interrupted (Ctrl-C); what swapon had set up has been undone
====  =======================================================================
"""

from ._errors import (
    EXIT_CODES,
    EXIT_FAILURE,
    EXIT_IN_USE,
    EXIT_INCOMPATIBLE,
    EXIT_INTERRUPTED,
    EXIT_NO_FUSE,
    EXIT_NOT_FOUND,
    EXIT_NOT_ROOT,
    EXIT_OK,
    EXIT_USAGE,
    BackendUnavailableError,
    CliError,
    CommandError,
    DaemonError,
    DeviceNotFoundError,
    DiskBusyError,
    NameInUseError,
    NeedsRootError,
    RestartRefusedError,
    RunDirError,
    exit_code_for,
)
from ._parser import build_parser, main
from ._status import STATUS_COLUMNS

__all__ = [
    "main",
    "build_parser",
    "exit_code_for",
    "EXIT_CODES",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_NOT_ROOT",
    "EXIT_NO_FUSE",
    "EXIT_IN_USE",
    "EXIT_NOT_FOUND",
    "EXIT_INCOMPATIBLE",
    "EXIT_INTERRUPTED",
    "STATUS_COLUMNS",
    "CliError",
    "NameInUseError",
    "DiskBusyError",
    "DeviceNotFoundError",
    "NeedsRootError",
    "BackendUnavailableError",
    "CommandError",
    "DaemonError",
    "RestartRefusedError",
    "RunDirError",
]
