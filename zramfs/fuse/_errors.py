"""The one table that turns exceptions from the layers below into errno.

Where this sits: every FUSE backend catches what `zramfs.fs.Filesystem` (and
through it `zramfs.device` and `allocator`) raise while answering a request
and replies with ``-errno_for(exc)``.  Nothing else in zramfs picks errnos.
"""

import errno
import operator

from allocator import PoolFullError
from zramfs import fs as _fs
from zramfs.config import BackingDevError
from zramfs.device import (
    BackingIOError,
    BackingStoreError,
    BackingStoreFullError,
    InvalidArgumentError,
    InvalidIdleAgeError,
    MemLimitError,
    NoBackingDevError,
    NoRecompAlgorithmError,
    OutOfRangeError,
    PostProcessBusyError,
    WritebackLimitError,
)

# An error that carries the errno zram would answer (or the system gave).
_ITS_ERRNO = operator.attrgetter("errno")

# Walked along the exception's MRO, so the most specific class wins.  A
# value is the errno, or a function of the exception that gives it.
ERRNO_TABLE = {
    _fs.NotFoundError: errno.ENOENT,
    _fs.NotPermittedError: errno.EPERM,
    _fs.ReadOnlyError: errno.EACCES,
    _fs.InvalidValueError: errno.EINVAL,
    _fs.BusyError: errno.EBUSY,
    _fs.ValueRangeError: errno.ERANGE,
    _fs.ArgumentTooLongError: errno.E2BIG,
    _fs.OutOfMemoryError: errno.ENOMEM,
    _fs.NotSupportedError: errno.EOPNOTSUPP,
    _fs.IsADirectoryError: errno.EISDIR,
    _fs.NotADirectoryError: errno.ENOTDIR,
    # Kernel zram fails a write over mem_limit with -ENOMEM on the bio; for a
    # file, "no space" is what a writer (loop, dd, swap) understands.
    MemLimitError: errno.ENOSPC,
    PoolFullError: errno.ENOSPC,
    # Only writes can see it: the fs clamps reads at the end of disk to EOF.
    OutOfRangeError: errno.ENOSPC,
    # Post-processing (idle, writeback, recompress), with zram's errnos.
    NoBackingDevError: errno.ENODEV,
    PostProcessBusyError: errno.EBUSY,
    WritebackLimitError: errno.EIO,  # writeback_store: limit used up
    InvalidArgumentError: _ITS_ERRNO,  # EINVAL, or ERANGE for a page index
    NoRecompAlgorithmError: errno.EINVAL,
    InvalidIdleAgeError: errno.EINVAL,
    BackingDevError: _ITS_ERRNO,  # a backing_dev path refused, as filp_open would
    # The backing store: full is writeback_store's ENOSPC; a failed read or
    # write gives the system's errno (EIO from a failing disk, ENOSPC from
    # a full filesystem under a file); a store that cannot be set up, EINVAL.
    BackingStoreFullError: errno.ENOSPC,
    BackingIOError: _ITS_ERRNO,
    BackingStoreError: errno.EINVAL,
}


def errno_for(exc):
    """The positive errno a FUSE reply should carry for `exc`; EIO if unknown."""
    for cls in type(exc).__mro__:
        e = ERRNO_TABLE.get(cls)
        if e is not None:
            return e if isinstance(e, int) else e(exc)
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO
