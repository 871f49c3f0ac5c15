"""The CLI's exit codes and the one table from typed errors to them.

The layers below raise typed exceptions; only the CLI turns them into one
line on stderr (``zramfs: error: ...``) and an exit code, through
`EXIT_CODES`.  The codes are listed in the package docstring and the README.
"""

from zramfs import fuse, tuning
from zramfs.codecs import InvalidCodecParamsError, UnknownAlgorithmError
from zramfs.config import ConfigError
from zramfs.launch import DaemonStartError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_ROOT = 3
EXIT_NO_FUSE = 4
EXIT_IN_USE = 5
EXIT_NOT_FOUND = 6
EXIT_INCOMPATIBLE = 7
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


class CliError(Exception):
    """Base of the errors the CLI raises itself; the message is one line."""


class NameInUseError(CliError):
    """Raised when a device name or mountpoint is already taken."""


class DiskBusyError(CliError):
    """Raised when a loop device, swap or an open file still holds a zramfs mount."""


class DeviceNotFoundError(CliError):
    """Raised when no zramfs device has the given name, or no zramfs mount is at a path."""


class NeedsRootError(CliError):
    """Raised when a command that sets devices up runs without root."""


class BackendUnavailableError(CliError):
    """Raised when /dev/fuse is missing or the chosen FUSE backend is not installed."""


class CommandError(CliError):
    """Raised when a system tool (losetup, mkswap, swapon, swapoff) fails."""


class DaemonError(CliError):
    """Raised when a daemon does not exit when its device is unmounted."""


class RestartRefusedError(CliError):
    """Raised when `zramfs restart` finds that the code installed now cannot read the device's state."""


class RunDirError(CliError):
    """Raised when the run directory cannot be made or used (a user's is not private to them)."""


# (exception class, exit code); walked along the MRO, so the most specific wins.
EXIT_CODES: dict[type, int] = {
    ConfigError: EXIT_USAGE,  # SizeError, InvalidNameError, a bad mountpoint
    UnknownAlgorithmError: EXIT_USAGE,
    InvalidCodecParamsError: EXIT_USAGE,
    NameInUseError: EXIT_IN_USE,
    DiskBusyError: EXIT_IN_USE,
    DeviceNotFoundError: EXIT_NOT_FOUND,
    NeedsRootError: EXIT_NOT_ROOT,
    BackendUnavailableError: EXIT_NO_FUSE,
    CommandError: EXIT_FAILURE,
    DaemonError: EXIT_FAILURE,
    RunDirError: EXIT_FAILURE,
    RestartRefusedError: EXIT_INCOMPATIBLE,
    DaemonStartError: EXIT_FAILURE,
    tuning.TuningError: EXIT_FAILURE,
    fuse.MountpointPermissionError: EXIT_NOT_ROOT,
    fuse.NoFuseDeviceError: EXIT_NO_FUSE,
    fuse.FusermountMissingError: EXIT_NO_FUSE,
    fuse.MountpointBusyError: EXIT_IN_USE,
    fuse.MountpointMissingError: EXIT_USAGE,
    fuse.MountpointNotDirectoryError: EXIT_USAGE,
    fuse.MountError: EXIT_FAILURE,
}


def exit_code_for(exc):
    """The exit code for a typed error, walking its MRO; None if it is not one we know (a bug)."""
    for cls in type(exc).__mro__:
        code = EXIT_CODES.get(cls)
        if code is not None:
            return code
    return None
