"""The allocator's exceptions.

Data flow: raised by ``Pool`` to its caller (the block device), which turns
them into its own errors; only the FUSE layer maps them to errno (ENOSPC).
Bad arguments (sizes, handles, data lengths, modes) raise plain ValueError,
as the API contract says.
"""


class PoolError(Exception):
    """Base class of the errors that only a pool raises."""


class PoolFullError(PoolError, MemoryError):
    """Raised when an allocation would take the pool past ``max_pages``.

    Nothing in the pool has changed when it is raised.  It is a MemoryError
    too, so code that treats any out-of-memory alike keeps working.
    """
