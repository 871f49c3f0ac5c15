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


class PoolLimitError(PoolError):
    """Raised when ``Pool.store_many`` took ``pages_used`` past its caller's limit.

    The caller's limit is the ``max_pages`` argument of ``store_many`` (the
    block device's ``mem_limit``), not the pool's own cap.  zram checks right
    after each zs_malloc whether the pool went past the limit; store_many
    does the same and, when it did, frees everything it had stored in that
    call before raising, so nothing in the pool has changed.  ``pages_used``
    is the count the allocation reached and ``max_pages`` the limit, for the
    caller's message.
    """

    def __init__(self, pages_used: int, max_pages: int):
        super().__init__(
            f"store would take the pool to {pages_used} pages, past the limit of {max_pages}"
        )
        self.pages_used = pages_used
        self.max_pages = max_pages


class PoolStateError(PoolError):
    """Base class of the errors ``Pool.attach`` raises: the memfds it was
    given cannot be taken over.  Nothing was changed in them."""


class PoolFormatError(PoolStateError):
    """Raised when the memfds were written by a pool of another state format
    (or are no pool's at all): the message says which format was found and
    which this code reads.  Taking them over would misread every table."""


class PoolDamagedError(PoolStateError):
    """Raised when the tables contradict themselves in a way no crash can
    leave behind (two handles on one slot, a handle outside the arena, an
    object whose size does not belong in its zspage's class): a bug or
    memory corruption, not an interrupted update."""


class PoolCorruptError(AssertionError):
    """Raised when ``check_pool`` (``_check``) finds the pool's tables disagreeing."""
